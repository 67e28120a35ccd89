// The `atomdisk` CLI, run as a program (RunProcess) against real clusters (TestCluster):
// help for every command, exit codes and messages for bad input, round trips, a 20 MiB
// upload that survives kill -9 of every node, status, bench (with a history checked for
// linearizability under a node kill), inspect, and tls issue/show.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "client/client.h"
#include "common/hmac.h"
#include "common/lincheck.h"
#include "common/tls_certs.h"
#include "tests/harness/cluster.h"

namespace atomdisk::client {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using std::chrono::milliseconds;
using testing::ProcessResult;
using testing::RunOptions;
using testing::TestCluster;

ProcessResult Cli(std::vector<std::string> args, RunOptions options = {}) {
  args.insert(args.begin(), ATOMDISK_CLI_BIN);
  bool has_config = false;
  for (const auto& e : options.env) has_config |= e.rfind("ATOMDISK_CONFIG=", 0) == 0;
  if (!has_config) options.env.push_back("ATOMDISK_CONFIG=");  // not the developer's cluster
  return testing::RunProcess(args, options);
}

bool Contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
}

std::string RandomBytes(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

// A scratch directory removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "atomdisk-cli-XXXXXX").string();
    std::vector<char> buf(pattern.begin(), pattern.end());
    buf.push_back('\0');
    EXPECT_NE(::mkdtemp(buf.data()), nullptr);
    path_ = buf.data();
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// ---- Without a cluster ----

TEST(CliTest, EveryCommandHasHelp) {
  for (const char* cmd :
       {"init", "status", "read", "write", "upload", "download", "bench", "inspect", "tls"}) {
    ProcessResult r = Cli({cmd, "--help"});
    EXPECT_EQ(r.exit_code, 0) << cmd << ": " << r.Describe();
    EXPECT_TRUE(Contains(r.out, "Usage")) << cmd << ": " << r.out;
    EXPECT_TRUE(Contains(r.out, "Exit codes")) << cmd << ": " << r.out;
  }
  ProcessResult top = Cli({"--help"});
  EXPECT_EQ(top.exit_code, 0);
  EXPECT_TRUE(Contains(top.out, "bench"));
}

TEST(CliTest, UsageErrorsExitWith2) {
  EXPECT_EQ(Cli({}).exit_code, 2);
  EXPECT_EQ(Cli({"frobnicate"}).exit_code, 2);
  EXPECT_EQ(Cli({"read"}).exit_code, 2);            // missing SECTOR
  EXPECT_EQ(Cli({"read", "banana"}).exit_code, 2);  // not a number
  EXPECT_EQ(Cli({"write", "0", "--fill", "300"}).exit_code, 2);
  EXPECT_EQ(Cli({"bench", "--write-ratio", "2"}).exit_code, 2);
}

// Every usage error is one line of ours, "atomdisk: ..." with exit code 2: never CLI11's
// own text ("A subcommand is required", a range with a 300-digit float).
void ExpectUsageError(const std::vector<std::string>& args, const std::string& needle) {
  std::string cmd;
  for (const auto& a : args) cmd += " " + a;
  ProcessResult r = Cli(args);
  EXPECT_EQ(r.exit_code, 2) << cmd << ": " << r.Describe();
  EXPECT_TRUE(r.err.rfind("atomdisk: ", 0) == 0) << cmd << ": " << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << cmd << ": " << r.err;
  EXPECT_LT(r.err.size(), 260u) << cmd << ": " << r.err;
  EXPECT_TRUE(Contains(r.err, needle)) << cmd << ": " << r.err;
  EXPECT_FALSE(Contains(r.err, "Run with --help")) << cmd << ": " << r.err;
}

TEST(CliTest, UsageErrorsAreOneClearLineOfOurs) {
  ExpectUsageError({"read", "0", "--count", "0"}, "--count must be a whole number from 1 to");
  ExpectUsageError({"read", "0", "--count", "-1"}, "--count must be a whole number");
  // Negative numbers are refused, not wrapped to 2^64-1.
  ExpectUsageError({"read", "-1"}, "sector must be a whole number from 0 to");
  ExpectUsageError({"write", "-1", "--fill", "1"}, "sector must be a whole number");
  ExpectUsageError({"read", "banana"}, "not \"banana\"");
  ExpectUsageError({"bogus"}, "unknown command \"bogus\"");
  ExpectUsageError({"bogus"}, "init, status, read, write, upload, download, bench, scrub, inspect");
  ExpectUsageError({}, "no command given");
  ExpectUsageError({"--frob"}, "unknown option --frob");
  ExpectUsageError({"read"}, "read: sector is required");
  ExpectUsageError({"read", "0", "1"}, "unexpected argument 1");
  ExpectUsageError({"read", "0", "--count"}, "--count needs a value");
  ExpectUsageError({"write", "0", "--in", "f", "--fill", "1"}, "cannot be given together");
  ExpectUsageError({"--timeout", "-5", "read", "0"}, "--timeout must be a duration");
  ExpectUsageError({"status", "--wait", "0"}, "--wait must be a duration");
  ExpectUsageError({"bench", "--inflight", "0"},
                   "--inflight must be a whole number from 1 to 4096");
  ExpectUsageError({"bench", "--write-ratio", "2"}, "--write-ratio must be a number from 0 to 1");
  ExpectUsageError({"bench", "--duration", "0"}, "--duration must be a duration");
  ExpectUsageError({"scrub", "--timeout", "5x"}, "--timeout must be a duration");
  ExpectUsageError({"init", "--nodes", "127.0.0.1:1", "--sectors", "-3"}, "--sectors must be");
  // A digest that cannot be one is refused before any config or I/O.
  ExpectUsageError({"download", "f", "--length", "1", "--sha256", "abc"},
                   "is not a SHA-256 digest (64 hex characters)");
}

TEST(CliTest, TestScriptHelpIsAUsageText) {
  ProcessResult r = testing::RunProcess(
      {"/bin/bash", std::string(ATOMDISK_SOURCE_DIR) + "/scripts/test.sh", "--help"});
  EXPECT_EQ(r.exit_code, 0) << r.Describe();
  EXPECT_TRUE(r.out.rfind("Usage: scripts/test.sh", 0) == 0) << r.out;
  EXPECT_TRUE(Contains(r.out, "--sanitize")) << r.out;
  // No lines of the script itself.
  for (const char* code : {"set -euo", "cd \"$(dirname", "#!/", "sanitize=\"\""}) {
    EXPECT_FALSE(Contains(r.out, code)) << code << " in:\n" << r.out;
  }
}

TEST(CliTest, InitWarnsThatTwoNodesSurviveNoFailure) {
  TempDir dir;
  ProcessResult two =
      Cli({"init", "--nodes", "127.0.0.1:7001,127.0.0.1:7002", "--dir", dir / "two"});
  EXPECT_EQ(two.exit_code, 0) << two.Describe();
  EXPECT_TRUE(Contains(two.err, "atomdisk: warning: ")) << two.err;
  EXPECT_TRUE(Contains(two.err, "cannot survive the failure of any node")) << two.err;
  EXPECT_TRUE(fs::exists(dir / "two/cluster.toml"));
  ProcessResult three = Cli(
      {"init", "--nodes", "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003", "--dir", dir / "three"});
  EXPECT_EQ(three.exit_code, 0) << three.Describe();
  EXPECT_EQ(three.err, "");
}

TEST(CliTest, MissingConfigIsAClearError) {
  TempDir dir;
  ProcessResult r = Cli({"--config", dir / "nope.toml", "read", "0"});
  EXPECT_EQ(r.exit_code, 2) << r.Describe();
  EXPECT_TRUE(Contains(r.err, "cannot load the cluster config")) << r.err;
  EXPECT_TRUE(Contains(r.err, "nope.toml")) << r.err;
  // The default is ./cluster.toml.
  RunOptions in_dir;
  in_dir.cwd = dir.path();
  ProcessResult d = Cli({"status"}, in_dir);
  EXPECT_EQ(d.exit_code, 2) << d.Describe();
  EXPECT_TRUE(Contains(d.err, "cluster.toml")) << d.err;
  EXPECT_TRUE(Contains(d.err, "atomdisk init")) << d.err;
}

TEST(CliTest, InitWritesAConfigAndPrivateKeys) {
  TempDir dir;
  std::string d = dir / "c";
  ProcessResult r = Cli({"init", "--nodes", "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003",
                         "--sectors", "1000", "--dir", d});
  ASSERT_EQ(r.exit_code, 0) << r.Describe();
  EXPECT_TRUE(Contains(r.out, "atomdiskd --config")) << r.out;
  EXPECT_TRUE(Contains(r.out, "--rank 3")) << r.out;
  struct stat st;
  ASSERT_EQ(::stat((d + "/client.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat((d + "/system.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  Result<ClusterConfig> c = LoadClusterConfig(d + "/cluster.toml");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->sectors, 1000u);
  EXPECT_EQ(c->nodes.size(), 3u);
  // Never overwrites.
  ProcessResult again = Cli({"init", "--nodes", "127.0.0.1:7001", "--dir", d});
  EXPECT_EQ(again.exit_code, 2) << again.Describe();
  EXPECT_TRUE(Contains(again.err, "already exists")) << again.err;
  ProcessResult bad = Cli({"init", "--nodes", "localhost", "--dir", dir / "x"});
  EXPECT_EQ(bad.exit_code, 2) << bad.Describe();
  EXPECT_TRUE(Contains(bad.err, "host:port")) << bad.err;
}

// The line "fingerprint HEX" of `tls issue`'s output.
std::string FingerprintLine(const std::string& out) {
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("fingerprint ", 0) == 0) return line.substr(12);
  }
  return "";
}

std::string FingerprintOfFile(const std::string& path) {
  Result<X509Ptr> cert = ParseCertificatePem(ReadFile(path));
  EXPECT_TRUE(cert.ok()) << path << ": " << cert.status().ToString();
  return cert.ok() ? CertificateFingerprint(cert->get()) : "";
}

TEST(CliTest, TlsIssueWritesCertificatesAndShowDescribesThem) {
  TempDir dir;
  const std::string tls = dir / "tls";
  ASSERT_TRUE(WriteClusterTls(tls, "00112233445566778899aabbccddeeff", {1, 2, 3}).ok());
  for (const char* sub : {"issue", "show"}) {
    ProcessResult help = Cli({"tls", sub, "--help"});
    EXPECT_EQ(help.exit_code, 0) << help.Describe();
    EXPECT_TRUE(Contains(help.out, "Exit codes")) << help.out;
  }

  ProcessResult node = Cli({"tls", "issue", "--dir", tls, "--node", "4"});
  ASSERT_EQ(node.exit_code, 0) << node.Describe();
  EXPECT_TRUE(Contains(node.out, tls + "/node-4.crt")) << node.out;
  EXPECT_TRUE(Contains(node.out, tls + "/node-4.key")) << node.out;
  EXPECT_EQ(FingerprintLine(node.out), FingerprintOfFile(tls + "/node-4.crt")) << node.out;
  ProcessResult client =
      Cli({"tls", "issue", "--dir", tls, "--client", "laptop-7", "--days", "30"});
  ASSERT_EQ(client.exit_code, 0) << client.Describe();
  EXPECT_EQ(FingerprintLine(client.out), FingerprintOfFile(tls + "/client-laptop-7.crt"));
  for (const char* f : {"node-4.crt", "node-4.key", "client-laptop-7.crt", "client-laptop-7.key"}) {
    struct stat st;
    ASSERT_EQ(::stat((tls + "/" + f).c_str(), &st), 0) << f;
    EXPECT_EQ(st.st_mode & 0777, 0600u) << f;
  }

  ProcessResult show = Cli({"tls", "show", tls + "/node-4.crt"});
  ASSERT_EQ(show.exit_code, 0) << show.Describe();
  EXPECT_TRUE(Contains(show.out, "node 4 (atomdisk:node:4)")) << show.out;
  EXPECT_TRUE(Contains(show.out, FingerprintOfFile(tls + "/node-4.crt"))) << show.out;
  EXPECT_TRUE(Contains(show.out, "not before")) << show.out;
  EXPECT_TRUE(Contains(show.out, "not after")) << show.out;
  EXPECT_TRUE(Contains(show.out, "(valid now)")) << show.out;
  ProcessResult ca = Cli({"tls", "show", tls + "/ca.crt"});
  EXPECT_EQ(ca.exit_code, 0) << ca.Describe();
  EXPECT_TRUE(Contains(ca.out, "a CA certificate")) << ca.out;

  // Never over an existing certificate; a file that is none is named and refused.
  const std::string before = ReadFile(tls + "/node-4.key");
  ProcessResult again = Cli({"tls", "issue", "--dir", tls, "--node", "4"});
  EXPECT_EQ(again.exit_code, 2) << again.Describe();
  EXPECT_TRUE(Contains(again.err, "already exists")) << again.err;
  EXPECT_EQ(ReadFile(tls + "/node-4.key"), before);
  WriteFile(dir / "notes.txt", "not a certificate\n");
  ProcessResult bad = Cli({"tls", "show", dir / "notes.txt"});
  EXPECT_EQ(bad.exit_code, 2) << bad.Describe();
  EXPECT_TRUE(Contains(bad.err, dir / "notes.txt")) << bad.err;
  EXPECT_TRUE(Contains(bad.err, "not a certificate file")) << bad.err;
}

TEST(CliTest, TlsIssueRefusesHostileInputAndAMissingCaKey) {
  TempDir dir;
  const std::string tls = dir / "tls";
  ASSERT_TRUE(WriteClusterTls(tls, "00112233445566778899aabbccddeeff", {1}).ok());
  ExpectUsageError({"tls", "issue", "--dir", tls, "--node", "0"},
                   "--node must be a whole number from 1 to 254");
  ExpectUsageError({"tls", "issue", "--dir", tls, "--node", "255"}, "--node must be");
  ExpectUsageError({"tls", "issue", "--dir", tls, "--client", "../x"},
                   "--client must be a client name");
  ExpectUsageError({"tls", "issue", "--dir", tls, "--client", "a/b"}, "--client must be");
  ExpectUsageError({"tls", "issue", "--dir", tls, "--client", ""}, "--client must be");
  ExpectUsageError({"tls", "issue", "--dir", tls, "--client", std::string(5000, 'x')},
                   "--client must be");
  ExpectUsageError({"tls", "issue", "--dir", tls, "--node", "2", "--client", "a"},
                   "cannot be given together");
  ExpectUsageError({"tls", "issue", "--dir", tls}, "give either --node RANK or --client NAME");
  ExpectUsageError({"tls", "issue", "--dir", tls, "--node", "2", "--days", "0"}, "--days must be");
  ExpectUsageError({"tls"}, "give a subcommand, issue or show");
  ExpectUsageError({"tls", "show"}, "file is required");
  // Nothing was written, here or next to it.
  std::size_t files = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(tls)) ++files;
  EXPECT_EQ(files, 6u);  // ca, node-1 and client: .crt and .key
  EXPECT_FALSE(fs::exists(dir / "x.crt"));

  // Without the CA's key: says what is needed and where `atomdisk init` put it.
  ProcessResult up = Cli({"tls", "issue", "--dir", dir.path(), "--node", "2"});
  EXPECT_EQ(up.exit_code, 2) << up.Describe();
  EXPECT_TRUE(Contains(up.err, dir / "ca.key")) << up.err;
  EXPECT_TRUE(Contains(up.err, "CA's private key")) << up.err;
  EXPECT_TRUE(Contains(up.err, "atomdisk init")) << up.err;
  EXPECT_TRUE(Contains(up.err, "it is in " + tls)) << up.err;
  fs::remove(tls + "/ca.key");
  ProcessResult gone = Cli({"tls", "issue", "--dir", tls, "--client", "ops"});
  EXPECT_EQ(gone.exit_code, 2) << gone.Describe();
  EXPECT_TRUE(Contains(gone.err, tls + "/ca.key")) << gone.err;
  EXPECT_FALSE(fs::exists(tls + "/client-ops.crt"));
}

// ---- On a cluster ----

class CliClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!TestCluster::DaemonAvailable()) {
      GTEST_SKIP() << "atomdiskd not built at " << TestCluster::DaemonPath();
    }
    testing::TestClusterOptions o;
    o.nodes = 3;
    o.sectors = 8192;  // 32 MiB
    auto c = TestCluster::Start(o);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    cluster_ = std::move(c).value();
  }

  // Runs the CLI with this cluster's config.
  ProcessResult Run(std::vector<std::string> args, RunOptions options = {}) {
    args.insert(args.begin(), {"--config", cluster_->config_path()});
    return Cli(args, options);
  }

  std::unique_ptr<TestCluster> cluster_;
  TempDir tmp_;
};

TEST_F(CliClusterTest, WriteFillAndReadBack) {
  ProcessResult w = Run({"write", "10", "--fill", "0xab", "--count", "3"});
  ASSERT_EQ(w.exit_code, 0) << w.Describe();
  EXPECT_TRUE(Contains(w.out, "sectors 10..12")) << w.out;
  ProcessResult r = Run({"read", "10", "--count", "3", "--out", tmp_ / "out"});
  ASSERT_EQ(r.exit_code, 0) << r.Describe();
  EXPECT_EQ(ReadFile(tmp_ / "out"), std::string(3 * 4096, '\xab'));
  ProcessResult raw = Run({"read", "11"});  // a pipe: raw bytes
  ASSERT_EQ(raw.exit_code, 0) << raw.Describe();
  EXPECT_EQ(raw.out, std::string(4096, '\xab'));
  ProcessResult hex = Run({"read", "12", "--hex"});
  ASSERT_EQ(hex.exit_code, 0) << hex.Describe();
  EXPECT_TRUE(Contains(hex.out, "0000c000  ab ab ab ab")) << hex.out;
  ProcessResult zero = Run({"read", "13"});
  EXPECT_EQ(zero.out, std::string(4096, '\0'));
}

TEST_F(CliClusterTest, WriteFromAFile) {
  std::string data = RandomBytes(8192, 1);
  WriteFile(tmp_ / "in", data);
  ProcessResult w = Run({"write", "20", "--in", tmp_ / "in"});
  ASSERT_EQ(w.exit_code, 0) << w.Describe();
  ProcessResult r = Run({"read", "20", "--count", "2"});
  EXPECT_EQ(r.out, data);
  // A short last block is refused before anything is written, unless --pad.
  WriteFile(tmp_ / "short", RandomBytes(5000, 2));
  ProcessResult s = Run({"write", "40", "--in", tmp_ / "short"});
  EXPECT_EQ(s.exit_code, 2) << s.Describe();
  EXPECT_TRUE(Contains(s.err, "not a multiple of 4096")) << s.err;
  EXPECT_EQ(Run({"read", "40"}).out, std::string(4096, '\0'));
  ProcessResult p = Run({"write", "40", "--in", tmp_ / "short", "--pad"});
  ASSERT_EQ(p.exit_code, 0) << p.Describe();
  std::string back = Run({"read", "40", "--count", "2"}).out;
  EXPECT_EQ(back.substr(0, 5000), ReadFile(tmp_ / "short"));
  EXPECT_EQ(back.substr(5000), std::string(8192 - 5000, '\0'));
}

TEST_F(CliClusterTest, BadInputGivesClearMessagesAndNoWrite) {
  ProcessResult out_of_range = Run({"read", "8192"});
  EXPECT_EQ(out_of_range.exit_code, 2) << out_of_range.Describe();
  EXPECT_TRUE(Contains(out_of_range.err, "outside the device")) << out_of_range.err;
  ProcessResult past_end = Run({"write", "8191", "--fill", "1", "--count", "2"});
  EXPECT_EQ(past_end.exit_code, 2) << past_end.Describe();
  EXPECT_TRUE(Contains(past_end.err, "run past the end")) << past_end.err;
  EXPECT_EQ(Run({"read", "8191"}).out, std::string(4096, '\0'));

  ProcessResult missing = Run({"upload", tmp_ / "nonexistent"});
  EXPECT_EQ(missing.exit_code, 2) << missing.Describe();
  EXPECT_TRUE(Contains(missing.err, "cannot open")) << missing.err;
  ProcessResult dir = Run({"upload", tmp_.path()});
  EXPECT_EQ(dir.exit_code, 2) << dir.Describe();
  EXPECT_TRUE(Contains(dir.err, "not a regular file")) << dir.err;
  ProcessResult misaligned = Run({"download", tmp_ / "x", "--offset", "100", "--length", "1"});
  EXPECT_EQ(misaligned.exit_code, 2) << misaligned.Describe();
  EXPECT_TRUE(Contains(misaligned.err, "multiple of 4096")) << misaligned.err;
  ProcessResult beyond = Run({"download", tmp_ / "x", "--offset", "32M", "--length", "1"});
  EXPECT_EQ(beyond.exit_code, 2) << beyond.Describe();
  EXPECT_FALSE(fs::exists(tmp_ / "x"));
  ProcessResult bench = Run({"bench", "--first", "8190", "--sectors", "10", "--duration", "1"});
  EXPECT_EQ(bench.exit_code, 2) << bench.Describe();
  ProcessResult node = Run({"--node", "9", "read", "0"});
  EXPECT_EQ(node.exit_code, 2) << node.Describe();
  EXPECT_TRUE(Contains(node.err, "no node with that rank")) << node.err;

  // A file larger than the device: refused before anything is written.
  std::string big = tmp_ / "big";
  {
    int fd = ::open(big.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, 8192 * 4096 + 1), 0);
    ::close(fd);
  }
  ProcessResult too_big = Run({"upload", big});
  EXPECT_EQ(too_big.exit_code, 2) << too_big.Describe();
  EXPECT_TRUE(Contains(too_big.err, "does not fit")) << too_big.err;
  EXPECT_TRUE(Contains(too_big.err, "nothing was written")) << too_big.err;
  WriteFile(tmp_ / "small", "x");
  ProcessResult too_far = Run({"upload", tmp_ / "small", "--offset", "32M"});
  EXPECT_EQ(too_far.exit_code, 2) << too_far.Describe();
  EXPECT_TRUE(Contains(too_far.err, "does not fit")) << too_far.err;
}

TEST_F(CliClusterTest, WrongKeyIsAClearConfigError) {
  // The same cluster, but a client key of our own.
  std::string dir = tmp_ / "wrong";
  fs::create_directories(dir);
  // In clear (tls = "off" on this client; the nodes serve plaintext clients too): inside TLS
  // the certificate is the credential and the HMAC key is not used (docs/TLS.md).
  {
    std::ifstream in(cluster_->config_path());
    std::stringstream text;
    text << in.rdbuf();
    std::string toml = text.str();
    const std::string line = "tls = \"require\"";
    ASSERT_NE(toml.find(line), std::string::npos);
    toml.replace(toml.find(line), line.size(), "tls = \"off\"");
    WriteFile(dir + "/cluster.toml", toml);
  }
  // No system.key: a client host does not need it.
  WriteFile(dir + "/client.key", ToHex(atomdisk::RandomBytes(32)) + "\n");
  auto t0 = std::chrono::steady_clock::now();
  ProcessResult r = Cli({"--config", dir + "/cluster.toml", "write", "0", "--fill", "7"});
  EXPECT_EQ(r.exit_code, 2) << r.Describe();
  EXPECT_TRUE(Contains(r.err, "the client key does not match the cluster's")) << r.err;
  // The nodes refused every request: nothing may be partly written.
  EXPECT_FALSE(Contains(r.err, "partly written")) << r.err;
  EXPECT_TRUE(Contains(r.err, "nothing was written")) << r.err;
  EXPECT_FALSE(Contains(r.out, "wrote")) << r.out;
  EXPECT_LT(std::chrono::steady_clock::now() - t0, milliseconds(4500));
  WriteFile(tmp_ / "up", RandomBytes(3 * 4096, 9));
  ProcessResult up = Cli({"--config", dir + "/cluster.toml", "upload", tmp_ / "up"});
  EXPECT_EQ(up.exit_code, 2) << up.Describe();
  EXPECT_TRUE(Contains(up.err, "the client key does not match the cluster's")) << up.err;
  EXPECT_FALSE(Contains(up.err, "partly written")) << up.err;
  // A configuration error: exit code 2, as docs/CLI.md says.
  ProcessResult status = Cli({"--config", dir + "/cluster.toml", "status"});
  EXPECT_EQ(status.exit_code, 2) << status.Describe();
  EXPECT_TRUE(Contains(status.out, "client key does not match")) << status.out;
  EXPECT_TRUE(Contains(status.err, "atomdisk: status: the client key does not match"))
      << status.err;
  // The FUSE mount says the same at start-up, within the probe, and mounts nothing (the
  // probe runs before the mount, so this needs no /dev/fuse).
  fs::create_directories(tmp_ / "mnt");
  auto f0 = std::chrono::steady_clock::now();
  ProcessResult fuse = testing::RunProcess(
      {ATOMDISK_FUSE_BIN, "--config", dir + "/cluster.toml", tmp_ / "mnt", "-f"},
      RunOptions{.timeout = milliseconds(30000)});
  EXPECT_EQ(fuse.exit_code, 2) << fuse.Describe();
  EXPECT_TRUE(Contains(fuse.err, "the client key does not match the cluster's")) << fuse.err;
  EXPECT_FALSE(Contains(fuse.err, "no node answered")) << fuse.err;
  EXPECT_LT(std::chrono::steady_clock::now() - f0, milliseconds(2500));
  // And the cluster did not take the write.
  EXPECT_EQ(Run({"read", "0"}).out, std::string(4096, '\0'));
}

TEST_F(CliClusterTest, NoNodeReachableFailsCleanly) {
  cluster_->KillAll();
  ProcessResult w = Run({"--timeout", "1000", "write", "0", "--fill", "1"});
  EXPECT_EQ(w.exit_code, 1) << w.Describe();
  EXPECT_TRUE(Contains(w.err, "no node reachable")) << w.err;
  EXPECT_FALSE(Contains(w.out, "wrote")) << w.out;
  ProcessResult r = Run({"--timeout", "1000", "read", "0", "--out", tmp_ / "r"});
  EXPECT_EQ(r.exit_code, 1) << r.Describe();
  EXPECT_FALSE(fs::exists(tmp_ / "r"));
  EXPECT_FALSE(fs::exists(tmp_ / "r.partial"));
  ProcessResult s = Run({"status"});
  EXPECT_EQ(s.exit_code, 1) << s.Describe();
  EXPECT_TRUE(Contains(s.out, "quorum: LOST, 0 of 3 nodes up")) << s.out;
  EXPECT_TRUE(Contains(s.out, "connection refused")) << s.out;
}

TEST_F(CliClusterTest, ConfigComesFromTheEnvironmentOrTheCurrentFolder) {
  RunOptions env;
  env.env = {"ATOMDISK_CONFIG=" + cluster_->config_path()};
  ProcessResult r = Cli({"status"}, env);
  EXPECT_EQ(r.exit_code, 0) << r.Describe();
  RunOptions cwd;
  cwd.cwd = cluster_->dir();
  ProcessResult d = Cli({"status"}, cwd);
  EXPECT_EQ(d.exit_code, 0) << d.Describe();
  // --config wins over the environment.
  env.env = {"ATOMDISK_CONFIG=/nonexistent.toml"};
  ProcessResult flag = Cli({"status", "--config", cluster_->config_path()}, env);
  EXPECT_EQ(flag.exit_code, 0) << flag.Describe();
}

TEST_F(CliClusterTest, StatusShowsNodesAndQuorum) {
  ProcessResult ok = Run({"status"});
  ASSERT_EQ(ok.exit_code, 0) << ok.Describe();
  EXPECT_TRUE(Contains(ok.out, "quorum: OK, 3 of 3 nodes up")) << ok.out;
  EXPECT_TRUE(Contains(ok.out, "rtt")) << ok.out;
  EXPECT_TRUE(Contains(ok.out, "version")) << ok.out;
  ProcessResult j = Run({"status", "--json"});
  ASSERT_EQ(j.exit_code, 0) << j.Describe();
  json parsed = json::parse(j.out);
  EXPECT_EQ(parsed["quorum"]["up"], 3);
  EXPECT_EQ(parsed["nodes"].size(), 3u);
  EXPECT_TRUE(parsed["nodes"][0]["info"].contains("version"));
  ASSERT_TRUE(cluster_->Kill9(1).ok());
  ASSERT_TRUE(cluster_->Stop(2).ok());
  ProcessResult lost = Run({"status"});
  EXPECT_EQ(lost.exit_code, 1) << lost.Describe();
  EXPECT_TRUE(
      Contains(lost.out, "quorum: LOST, 1 of 3 nodes up: writes and reads will not complete"))
      << lost.out;
}

// The acceptance test of the data path: a 20 MiB file (plus a ragged tail) survives kill -9
// of every node and comes back intact through a different node.
TEST_F(CliClusterTest, UploadSurvivesKill9OfEveryNodeAndDownloadsThroughAnotherNode) {
  const std::size_t size = 20 * 1024 * 1024 + 1234;
  std::string data = RandomBytes(size, 42);
  WriteFile(tmp_ / "file", data);
  // Something after the upload's ragged end that the read-modify-write must keep.
  const std::uint64_t first = 1;
  const std::uint64_t tail_sector = first + size / 4096;
  ASSERT_EQ(Run({"write", std::to_string(tail_sector), "--fill", "0x5a"}).exit_code, 0);
  ProcessResult up = Run({"--node", "1", "upload", tmp_ / "file", "--offset", "4096", "--json"},
                         RunOptions{.timeout = milliseconds(240000)});
  ASSERT_EQ(up.exit_code, 0) << up.Describe();
  json summary = json::parse(up.out);
  std::string sha = summary["sha256"];
  EXPECT_EQ(summary["bytes"], size);

  cluster_->KillAll();
  ASSERT_TRUE(cluster_->StartAll().ok());

  ProcessResult down = Run({"--node", "3", "download", tmp_ / "copy", "--offset", "4096",
                            "--length", std::to_string(size), "--sha256", sha},
                           RunOptions{.timeout = milliseconds(240000)});
  ASSERT_EQ(down.exit_code, 0) << down.Describe();
  EXPECT_TRUE(Contains(down.out, sha)) << down.out;
  EXPECT_TRUE(ReadFile(tmp_ / "copy") == data) << "downloaded bytes differ";
  std::string tail = Run({"read", std::to_string(tail_sector)}).out;
  ASSERT_EQ(tail.size(), 4096u);
  EXPECT_EQ(tail.substr(size % 4096), std::string(4096 - size % 4096, '\x5a'));
  // A wrong expectation is an integrity failure (exit code 3).
  ProcessResult mismatch = Run(
      {"download", "-", "--offset", "4096", "--length", "4096", "--sha256", std::string(64, '0')});
  EXPECT_EQ(mismatch.exit_code, 3) << mismatch.err;
  EXPECT_TRUE(Contains(mismatch.err, "MISMATCH")) << mismatch.err;
}

TEST_F(CliClusterTest, UploadVerifyAndStdoutDownload) {
  std::string data = RandomBytes(3 * 4096 + 7, 5);
  WriteFile(tmp_ / "f", data);
  ProcessResult up = Run({"upload", tmp_ / "f", "--offset", "1M", "--verify"});
  ASSERT_EQ(up.exit_code, 0) << up.Describe();
  EXPECT_TRUE(Contains(up.out, "verified")) << up.out;
  ProcessResult down =
      Run({"download", "-", "--offset", "1M", "--length", std::to_string(data.size())});
  ASSERT_EQ(down.exit_code, 0) << down.Describe();
  EXPECT_TRUE(down.out == data);
  EXPECT_TRUE(Contains(down.err, "sha256")) << down.err;  // the summary goes to stderr
}

TEST_F(CliClusterTest, BenchReportsThroughputAndLatency) {
  ProcessResult r =
      Run({"bench", "--duration", "1", "--inflight", "8", "--sectors", "64", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.Describe();
  json j = json::parse(r.out);
  EXPECT_GT(j["ops"].get<double>(), 0);
  EXPECT_GT(j["ops_per_s"].get<double>(), 0);
  EXPECT_GT(j["latency"]["p50_ms"].get<double>(), 0);
  EXPECT_GE(j["latency"]["p99_ms"].get<double>(), j["latency"]["p50_ms"].get<double>());
  EXPECT_EQ(j["integrity_errors"], 0);
  ProcessResult text = Run({"bench", "--duration", "0.5", "--write-ratio", "0"});
  ASSERT_EQ(text.exit_code, 0) << text.Describe();
  EXPECT_TRUE(Contains(text.out, "ops/s")) << text.out;
  EXPECT_TRUE(Contains(text.out, "p99.9")) << text.out;
}

TEST_F(CliClusterTest, BenchWritesOnlyANamedRangeOrWithConsent) {
  // What a user keeps at the start of the device (a partition table, a superblock).
  ASSERT_EQ(Run({"write", "0", "--fill", "0x77", "--count", "8"}).exit_code, 0);
  const std::string kept = std::string(8 * 4096, '\x77');
  for (std::vector<std::string> args :
       {std::vector<std::string>{"bench", "--duration", "0.5"},
        {"bench", "--duration", "0.5", "--inflight", "4", "--write-ratio", "1"},
        {"bench", "--duration", "0.5", "--write-ratio", "0", "--history", tmp_ / "h.jsonl"}}) {
    ProcessResult r = Run(args);
    EXPECT_EQ(r.exit_code, 2) << r.Describe();
    EXPECT_TRUE(Contains(r.err, "atomdisk: bench: refusing to overwrite sectors 0..1023")) << r.err;
    EXPECT_TRUE(Contains(r.err, "--destroy-data")) << r.err;
    EXPECT_FALSE(Contains(r.out, "ops/s")) << r.out;
  }
  EXPECT_TRUE(Run({"read", "0", "--count", "8"}).out == kept);
  // A bench that only reads runs anywhere and changes nothing.
  ProcessResult reads = Run({"bench", "--duration", "0.5", "--write-ratio", "0", "--json"});
  ASSERT_EQ(reads.exit_code, 0) << reads.Describe();
  EXPECT_GT(json::parse(reads.out)["ops"].get<double>(), 0);
  // A named range: only those sectors change.
  ProcessResult named = Run({"bench", "--duration", "0.5", "--first", "100", "--sectors", "16"});
  ASSERT_EQ(named.exit_code, 0) << named.Describe();
  EXPECT_TRUE(Run({"read", "0", "--count", "8"}).out == kept);
  // Consent: the default range, sectors 0..1023, is overwritten.
  ProcessResult consent =
      Run({"bench", "--duration", "1", "--write-ratio", "1", "--sectors", "8", "--destroy-data"});
  ASSERT_EQ(consent.exit_code, 0) << consent.Describe();
  EXPECT_FALSE(Run({"read", "0", "--count", "8"}).out == kept);
  ProcessResult help = Run({"bench", "--help"});
  EXPECT_TRUE(Contains(help.out, "--destroy-data")) << help.out;
  EXPECT_TRUE(Contains(help.out, "WRITES DESTROY DATA")) << help.out;
}

TEST_F(CliClusterTest, DownloadChecksTheDigestBeforeAndAfter) {
  std::string data = RandomBytes(2 * 4096, 11);
  WriteFile(tmp_ / "f", data);
  ASSERT_EQ(Run({"upload", tmp_ / "f", "--offset", "64K"}).exit_code, 0);
  // Not a digest at all: refused before anything is read or created.
  ProcessResult bad =
      Run({"download", tmp_ / "out", "--offset", "64K", "--length", "8K", "--sha256", "abc"});
  EXPECT_EQ(bad.exit_code, 2) << bad.Describe();
  EXPECT_TRUE(Contains(bad.err, "not a SHA-256 digest")) << bad.err;
  EXPECT_FALSE(fs::exists(tmp_ / "out.partial"));
  EXPECT_FALSE(fs::exists(tmp_ / "out"));
  // A well-formed digest that does not match: exit 3, no success summary, no file.
  ProcessResult mismatch = Run({"download", tmp_ / "out", "--offset", "64K", "--length", "8K",
                                "--sha256", std::string(64, 'a')});
  EXPECT_EQ(mismatch.exit_code, 3) << mismatch.Describe();
  EXPECT_TRUE(Contains(mismatch.err, "atomdisk: download: MISMATCH")) << mismatch.err;
  EXPECT_FALSE(Contains(mismatch.out, "downloaded")) << mismatch.out;
  EXPECT_FALSE(fs::exists(tmp_ / "out"));
  EXPECT_FALSE(fs::exists(tmp_ / "out.partial"));
  // The right digest, in capitals: accepted.
  ProcessResult first = Run({"download", "-", "--offset", "64K", "--length", "8K"});
  ASSERT_EQ(first.exit_code, 0) << first.Describe();
  std::string sha = first.err.substr(first.err.find("sha256 ") + 7, 64);
  std::string upper = sha;
  for (auto& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  ProcessResult good =
      Run({"download", tmp_ / "out", "--offset", "64K", "--length", "8K", "--sha256", upper});
  ASSERT_EQ(good.exit_code, 0) << good.Describe();
  EXPECT_TRUE(Contains(good.out, "downloaded")) << good.out;
  EXPECT_TRUE(ReadFile(tmp_ / "out") == data);
}

TEST_F(CliClusterTest, UploadReadsStandardInput) {
  std::string data = RandomBytes(5 * 4096 + 100, 12);
  ProcessResult up =
      Run({"upload", "-", "--offset", "1M", "--verify", "--json"}, RunOptions{.stdin_data = data});
  ASSERT_EQ(up.exit_code, 0) << up.Describe();
  json j = json::parse(up.out);
  EXPECT_EQ(j["bytes"], data.size());
  EXPECT_EQ(j["sectors"], 6);
  ProcessResult down =
      Run({"download", "-", "--offset", "1M", "--length", std::to_string(data.size())});
  ASSERT_EQ(down.exit_code, 0) << down.Describe();
  EXPECT_TRUE(down.out == data);
  EXPECT_EQ(j["sha256"], down.err.substr(down.err.find("sha256 ") + 7, 64));
  // More than fits between the offset and the end of the device (32 MiB): an error that
  // says so, after writing what fits.
  ProcessResult too_long = Run({"upload", "-", "--offset", "32700K"},
                               RunOptions{.stdin_data = RandomBytes(200 * 1024, 13)});
  EXPECT_EQ(too_long.exit_code, 2) << too_long.Describe();
  EXPECT_TRUE(Contains(too_long.err, "longer than")) << too_long.err;
  EXPECT_FALSE(Contains(too_long.out, "uploaded")) << too_long.out;
}

// A progress bar drawn on a terminal of `columns` columns never fills a line: every redraw
// (after "\r\033[K") is shorter than the terminal is wide, so nothing wraps.
TEST_F(CliClusterTest, ProgressBarFitsTheTerminal) {
  if (::access("/usr/bin/script", X_OK) != 0) GTEST_SKIP() << "needs script(1) for a terminal";
  WriteFile(tmp_ / "big", RandomBytes(16 * 1024 * 1024, 14));
  for (int columns : {80, 40}) {
    // script(1) runs the upload on a pseudo-terminal and copies what it prints to stdout.
    std::string cmd = std::string("COLUMNS=") + std::to_string(columns) + " " + ATOMDISK_CLI_BIN +
                      " --config " + cluster_->config_path() + " upload " + (tmp_ / "big") +
                      " >/dev/null";
    ProcessResult r = testing::RunProcess({"/usr/bin/script", "-qfec", cmd, "/dev/null"},
                                          RunOptions{.timeout = milliseconds(120000)});
    ASSERT_EQ(r.exit_code, 0) << r.Describe();
    std::size_t drawn = 0;
    for (std::size_t pos = 0; (pos = r.out.find("\r\033[K", pos)) != std::string::npos;) {
      pos += 4;
      std::size_t end = r.out.find_first_of("\r\n", pos);
      std::string line =
          r.out.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
      if (line.empty()) continue;
      ++drawn;
      EXPECT_LT(line.size(), static_cast<std::size_t>(columns)) << columns << ": " << line;
      EXPECT_TRUE(Contains(line, "upload")) << line;
    }
    EXPECT_GT(drawn, 0u) << "no progress drawn: " << r.out;
  }
}

TEST_F(CliClusterTest, ScrubSummaryCountsStaleSlotsAndTakesUnits) {
  ASSERT_EQ(Run({"write", "3", "--fill", "1", "--count", "4"}).exit_code, 0);
  ProcessResult r = Run({"scrub", "--timeout", "60s"}, RunOptions{.timeout = milliseconds(90000)});
  ASSERT_EQ(r.exit_code, 0) << r.Describe();
  EXPECT_TRUE(Contains(r.out, "0 stale")) << r.out;
  EXPECT_TRUE(Contains(r.out, "0 unrepaired")) << r.out;
}

// The client ops node `rank` has served, from its kInfo counters (0 if unknown).
std::uint64_t ClientOpsServed(const TestCluster& c, int rank) {
  Result<ClientOptions> o = OptionsFromConfig(c.config(), {std::to_string(rank)});
  if (!o.ok()) return 0;
  auto client = Client::Create(*o);
  std::vector<NodeInfo> info = client->Probe(milliseconds(1000));
  if (info.empty() || !info[0].reachable) return 0;
  json j = json::parse(info[0].info_json, nullptr, false);
  if (!j.is_object() || !j.contains("counters")) return 0;
  return j["counters"].value("client_ops", std::uint64_t{0});
}

TEST_F(CliClusterTest, BenchHistoryUnderANodeKillIsLinearizable) {
  std::string history = tmp_ / "history.jsonl";
  ProcessResult bench;
  std::thread runner([&] {
    bench = Run({"bench", "--duration", "4", "--inflight", "8", "--sectors", "6", "--write-ratio",
                 "0.5", "--history", history, "--check", "--json"},
                RunOptions{.timeout = milliseconds(120000)});
  });
  // Kill the preferred node once the bench is well under way.
  bool busy =
      testing::WaitFor([&] { return ClientOpsServed(*cluster_, 1) > 2000; }, milliseconds(30000));
  Status killed = cluster_->Kill9(1);
  runner.join();
  ASSERT_TRUE(busy) << "the bench did not get going";
  ASSERT_TRUE(killed.ok());
  ASSERT_EQ(bench.exit_code, 0) << bench.Describe();
  json j = json::parse(bench.out);
  EXPECT_EQ(j["linearizability"], "linearizable") << bench.out;
  EXPECT_GT(j["ops"].get<double>(), 100);
  // Check the file independently too.
  std::ifstream in(history);
  Result<std::vector<HistoryOp>> ops = ParseHistory(in);
  ASSERT_TRUE(ops.ok()) << ops.status().ToString();
  EXPECT_GT(ops->size(), 100u);
  LinCheckResult lr = CheckLinearizable(*ops);
  EXPECT_EQ(lr.verdict, LinCheckResult::Verdict::kLinearizable)
      << "sector " << lr.bad_key << ": " << lr.explanation;
}

TEST_F(CliClusterTest, InspectReadsAStoppedNodesStore) {
  ASSERT_EQ(Run({"write", "5", "--fill", "0x11", "--count", "2"}).exit_code, 0);
  std::string data_dir = cluster_->DataDir(1);
  ProcessResult busy = Run({"inspect", data_dir});
  EXPECT_EQ(busy.exit_code, 1) << busy.Describe();
  EXPECT_TRUE(Contains(busy.err, "stop the node first")) << busy.err;
  ASSERT_TRUE(cluster_->Stop(1).ok());
  ASSERT_TRUE(cluster_->Stop(2).ok());
  ProcessResult list = Run({"inspect", data_dir});
  ASSERT_EQ(list.exit_code, 0) << list.Describe();
  ProcessResult one = Run({"inspect", data_dir, "--sector", "5", "--json"});
  ASSERT_EQ(one.exit_code, 0) << one.Describe();
  json j = json::parse(one.out);
  ProcessResult digest1 = Run({"inspect", data_dir, "--digest", "--json"});
  ProcessResult digest2 = Run({"inspect", cluster_->DataDir(2), "--digest", "--json"});
  ASSERT_EQ(digest1.exit_code, 0) << digest1.Describe();
  ASSERT_EQ(digest2.exit_code, 0) << digest2.Describe();
  json d1 = json::parse(digest1.out), d2 = json::parse(digest2.out);
  EXPECT_EQ(d1["sha256"].get<std::string>().size(), 64u);
  EXPECT_EQ(d1["unreadable"], 0);
  // Every write reached a majority; with two of three nodes inspected, at least one of them
  // holds each of the two sectors.
  EXPECT_GE(d1["stored_sectors"].get<int>() + d2["stored_sectors"].get<int>(), 2);
  if (j["stored"].get<bool>()) {
    EXPECT_GE(j["ts"].get<int>(), 1);
    EXPECT_TRUE(j["readable"].get<bool>());
  }
  ProcessResult not_dir = Run({"inspect", tmp_ / "nothing"});
  EXPECT_EQ(not_dir.exit_code, 2) << not_dir.Describe();
  ProcessResult empty = Run({"inspect", tmp_.path()});
  EXPECT_EQ(empty.exit_code, 2) << empty.Describe();
  EXPECT_TRUE(Contains(empty.err, "sectors.dat")) << empty.err;
}

}  // namespace
}  // namespace atomdisk::client
