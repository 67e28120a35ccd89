// Tests for the cluster configuration file (common/config.h): a valid file, hostile files that
// must each produce one clear error naming the file, and WriteNewCluster.
#include "common/config.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/hmac.h"

namespace atomdisk {
namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<std::uint8_t>;

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class ConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/atomdisk-config-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    client_key_ = RandomBytes(kClientKeySize);
    system_key_ = RandomBytes(kSystemKeySize);
    WriteFile("client.key", ToHex(client_key_) + "\n");
    WriteFile("system.key", ToHex(system_key_) + "\n");
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // Key files (*.key) get mode 0600, as `atomdisk init` makes them; others keep the umask's.
  std::string WriteFile(const std::string& name, const std::string& contents) {
    fs::path p = dir_ / name;
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << contents;
    if (p.extension() == ".key") {
      fs::permissions(p, fs::perms::owner_read | fs::perms::owner_write);
    }
    return p.string();
  }

  // A config with the standard key files and the given body (sectors, nodes, ...).
  std::string WriteConfig(const std::string& body) {
    return WriteFile("cluster.toml",
                     "client_key_file = \"client.key\"\nsystem_key_file = \"system.key\"\n" + body);
  }

  static std::string Node(int rank, const std::string& address) {
    return "\n[[nodes]]\nrank = " + std::to_string(rank) + "\naddress = \"" + address + "\"\n";
  }

  // Loads `path`, expects exactly one error line that names the file and contains `needle`.
  static void ExpectError(const std::string& path, const std::string& needle,
                          StatusCode code = StatusCode::kInvalidArgument) {
    auto r = LoadClusterConfig(path);
    ASSERT_FALSE(r.ok()) << "loaded a bad config; expected an error containing: " << needle;
    const std::string& msg = r.status().message();
    EXPECT_EQ(r.status().code(), code) << r.status().ToString();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << "no \"" << needle << "\" in: " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "not one line: " << msg;
  }

  void ExpectBadConfig(const std::string& body, const std::string& needle) {
    SCOPED_TRACE(body);
    ExpectError(WriteConfig(body), needle);
  }

  fs::path dir_;
  Bytes client_key_;
  Bytes system_key_;
};

TEST_F(ConfigTest, ValidFile) {
  fs::path abs_data = dir_ / "elsewhere" / "one";
  WriteFile("keys/sys.key", ToHex(system_key_));
  std::string path = WriteFile("conf/cluster.toml",
                               "# a comment\n"
                               "sectors = 1024\n"
                               "client_key_file = \"../client.key\"\n"
                               "system_key_file = \"" +
                                   (dir_ / "keys" / "sys.key").string() +
                                   "\"\n"
                                   "\n[[nodes]]\nrank = 3\naddress = \"127.0.0.1:7003\"\n"
                                   "data_dir = \"data/./3\"\n"
                                   "\n[[nodes]]\nrank = 1\naddress = \"[::1]:7001\"\n"
                                   "data_dir = \"" +
                                   abs_data.string() +
                                   "\"\n"
                                   "\n[[nodes]]\nrank = 2\naddress = \"node2.example:65535\"\n");
  auto r = LoadClusterConfig(path);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const ClusterConfig& c = r.value();
  EXPECT_EQ(c.path, path);
  EXPECT_EQ(c.sectors, 1024u);
  EXPECT_EQ(c.client_key, client_key_);
  EXPECT_EQ(c.system_key, system_key_);
  ASSERT_EQ(c.nodes.size(), 3u);
  EXPECT_EQ(c.Majority(), 2u);

  // Sorted by rank.
  EXPECT_EQ(c.nodes[0].rank, 1);
  EXPECT_EQ(c.nodes[1].rank, 2);
  EXPECT_EQ(c.nodes[2].rank, 3);

  EXPECT_EQ(c.nodes[0].host, "::1");
  EXPECT_EQ(c.nodes[0].port, 7001);
  EXPECT_EQ(c.nodes[0].Address(), "[::1]:7001");
  EXPECT_EQ(c.nodes[0].data_dir, abs_data.string());  // absolute stays as written

  EXPECT_EQ(c.nodes[1].host, "node2.example");
  EXPECT_EQ(c.nodes[1].port, 65535);
  EXPECT_EQ(c.nodes[1].Address(), "node2.example:65535");
  EXPECT_EQ(c.nodes[1].data_dir, "");  // none given

  EXPECT_EQ(c.nodes[2].host, "127.0.0.1");
  EXPECT_EQ(c.nodes[2].port, 7003);
  EXPECT_EQ(c.nodes[2].Address(), "127.0.0.1:7003");
  // Relative to the config's folder (not to the working directory), normalised.
  EXPECT_EQ(c.nodes[2].data_dir, (dir_ / "conf" / "data" / "3").string());

  ASSERT_NE(c.FindNode(2), nullptr);
  EXPECT_EQ(c.FindNode(2)->host, "node2.example");
  EXPECT_EQ(c.FindNode(0), nullptr);
  EXPECT_EQ(c.FindNode(4), nullptr);
}

TEST_F(ConfigTest, RelativeConfigPathResolvesAgainstItsFolder) {
  std::string path =
      WriteConfig("sectors = 8\n" + Node(1, "localhost:7001") + "data_dir = \"d1\"\n");
  // The same file named relative to the working directory.
  std::string rel = fs::relative(path, fs::current_path()).string();
  ASSERT_FALSE(fs::path(rel).is_absolute());
  auto r = LoadClusterConfig(rel);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->nodes[0].data_dir, (dir_ / "d1").string());
  EXPECT_TRUE(fs::path(r->nodes[0].data_dir).is_absolute());
  EXPECT_EQ(r->client_key, client_key_);
}

TEST_F(ConfigTest, BoundaryValuesAccepted) {
  std::string body =
      "sectors = " + std::to_string(kMaxSectors) + "\n" + Node(254, "h:1") + Node(1, "h:65535");
  auto r = LoadClusterConfig(WriteConfig(body));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->sectors, kMaxSectors);
  EXPECT_EQ(r->nodes[0].rank, 1);
  EXPECT_EQ(r->nodes[1].rank, 254);
  EXPECT_EQ(r->nodes[1].port, 1);

  auto one = LoadClusterConfig(WriteConfig("sectors = 1\n" + Node(1, "h:7000")));
  ASSERT_TRUE(one.ok()) << one.status().ToString();
  EXPECT_EQ(one->sectors, 1u);
  EXPECT_EQ(one->Majority(), 1u);
}

TEST(ClusterConfig, Majority) {
  ClusterConfig c;
  const std::size_t expected[] = {1, 1, 2, 2, 3, 3, 4};  // for 0..6 nodes
  for (std::size_t n = 0; n <= 6; ++n) {
    c.nodes.resize(n);
    EXPECT_EQ(c.Majority(), expected[n]) << n << " nodes";
  }
}

TEST_F(ConfigTest, MissingFile) {
  std::string missing = (dir_ / "nope.toml").string();
  ExpectError(missing, "no such file", StatusCode::kNotFound);
  std::string missing_dir = (dir_ / "nope" / "cluster.toml").string();
  ExpectError(missing_dir, "no such file", StatusCode::kNotFound);
}

TEST_F(ConfigTest, NotAFile) {
  // A folder, and a name far too long for the OS: errors, not exceptions.
  auto r = LoadClusterConfig(dir_.string());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find(dir_.string()), std::string::npos);
  std::string long_name = (dir_ / std::string(5000, 'x')).string();
  auto l = LoadClusterConfig(long_name);
  ASSERT_FALSE(l.ok());
  EXPECT_NE(l.status().message().find(long_name), std::string::npos);
}

TEST_F(ConfigTest, TomlSyntaxError) {
  ExpectBadConfig("sectors = 1024\nnodes = [\n", "line");
  std::string path = WriteFile("syntax.toml", "sectors = 1024\n\nclient_key_file = \n");
  ExpectError(path, "line 3");
  ExpectBadConfig("sectors = 10\nsectors = 20\n" + Node(1, "h:1"), "line");
  ExpectBadConfig("sectors = 99999999999999999999999\n" + Node(1, "h:1"), "line");
  ExpectError(WriteFile("binary.toml", std::string("\0\xff\xfe", 3)), "line");
}

TEST_F(ConfigTest, Sectors) {
  std::string nodes = Node(1, "h:7001");
  ExpectBadConfig(nodes, "sectors");  // missing
  ExpectBadConfig("sectors = 0\n" + nodes, "sectors");
  ExpectBadConfig("sectors = -1\n" + nodes, "sectors");
  ExpectBadConfig("sectors = -9223372036854775808\n" + nodes, "sectors");
  ExpectBadConfig("sectors = " + std::to_string(kMaxSectors + 1) + "\n" + nodes, "sectors");
  ExpectBadConfig("sectors = 9223372036854775807\n" + nodes, "sectors");
  ExpectBadConfig("sectors = \"1024\"\n" + nodes, "sectors");
  ExpectBadConfig("sectors = 1.5\n" + nodes, "sectors");
  ExpectBadConfig("sectors = 8.0\n" + nodes, "sectors");
  ExpectBadConfig("sectors = true\n" + nodes, "sectors");  // toml++'s value<> would say 1
  ExpectBadConfig("sectors = [1]\n" + nodes, "sectors");
}

TEST_F(ConfigTest, UnknownKeys) {
  ExpectBadConfig("sectors = 8\nsector = 8\n" + Node(1, "h:7001"), "unknown key \"sector\"");
  ExpectBadConfig("sectors = 8\n" + Node(1, "h:7001") + "prot = 5\n", "unknown key \"prot\"");
  ExpectBadConfig("sectors = 8\n[extra]\na = 1\n" + Node(1, "h:7001"), "unknown key \"extra\"");
}

TEST_F(ConfigTest, MetricsAddress) {
  auto c =
      LoadClusterConfig(WriteConfig("sectors = 8\n" + Node(1, "h:7001") +
                                    "metrics_address = \"127.0.0.1:9101\"\n" + Node(2, "h:7002")));
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->nodes[0].metrics_host, "127.0.0.1");
  EXPECT_EQ(c->nodes[0].metrics_port, 9101);
  EXPECT_EQ(c->nodes[1].metrics_port, 0);  // absent: off
  ExpectBadConfig("sectors = 8\n" + Node(1, "h:1") + "metrics_address = 9101\n",
                  "\"metrics_address\" is not a string");
  ExpectBadConfig("sectors = 8\n" + Node(1, "h:1") + "metrics_address = \"h\"\n",
                  "nodes[1]: metrics_address: address \"h\" is not host:port");
  ExpectBadConfig("sectors = 8\n" + Node(1, "h:1") + "metrics_address = \"h:0\"\n",
                  "metrics_address");
  ExpectBadConfig("sectors = 8\n" + Node(1, "h:1") + Node(2, "h:2") + "metrics_address = \"h:1\"\n",
                  "node 2: metrics_address h:1 is also a node address");
  // The same local address on every host is fine.
  auto same = LoadClusterConfig(
      WriteConfig("sectors = 8\n" + Node(1, "a:1") + "metrics_address = \"127.0.0.1:9101\"\n" +
                  Node(2, "b:1") + "metrics_address = \"127.0.0.1:9101\"\n"));
  EXPECT_TRUE(same.ok()) << same.status().ToString();
}

TEST_F(ConfigTest, Nodes) {
  ExpectBadConfig("sectors = 8\n", "nodes");
  ExpectBadConfig("sectors = 8\nnodes = []\n", "nodes");
  ExpectBadConfig("sectors = 8\nnodes = 5\n", "nodes");
  ExpectBadConfig("sectors = 8\nnodes = [1, 2]\n", "nodes[1]");
  ExpectBadConfig("sectors = 8\n[[nodes]]\naddress = \"h:1\"\n", "rank");
  ExpectBadConfig("sectors = 8\n[[nodes]]\nrank = 1\n", "address");
  ExpectBadConfig("sectors = 8\n[[nodes]]\nrank = 1\naddress = 7001\n", "address");
  ExpectBadConfig("sectors = 8\n" + Node(1, "h:1") + "data_dir = \"\"\n", "data_dir");
  ExpectBadConfig("sectors = 8\n" + Node(1, "h:1") + "data_dir = 3\n", "data_dir");
  std::string many = "sectors = 8\n";
  for (int i = 1; i <= 255; ++i) many += Node(i % 254 + 1, "h:" + std::to_string(1000 + i));
  ExpectBadConfig(many, "nodes");
}

TEST_F(ConfigTest, Ranks) {
  ExpectBadConfig("sectors = 8\n" + Node(1, "a:1") + Node(2, "b:1") + Node(1, "c:1"),
                  "nodes[3]: rank 1 used twice");
  ExpectBadConfig("sectors = 8\n" + Node(0, "a:1"), "rank 0");
  ExpectBadConfig("sectors = 8\n" + Node(255, "a:1"), "rank 255");
  ExpectBadConfig("sectors = 8\n" + Node(-1, "a:1"), "rank -1");
  ExpectBadConfig("sectors = 8\n" + Node(1, "a:1") + Node(256, "b:1"), "nodes[2]: rank 256");
  ExpectBadConfig("sectors = 8\n[[nodes]]\nrank = \"1\"\naddress = \"a:1\"\n", "rank");
  ExpectBadConfig("sectors = 8\n[[nodes]]\nrank = true\naddress = \"a:1\"\n", "rank");
  ExpectBadConfig("sectors = 8\n[[nodes]]\nrank = 1.0\naddress = \"a:1\"\n", "rank");
}

TEST_F(ConfigTest, BadAddresses) {
  for (const std::string bad : {"127.0.0.1",
                                ":7000",
                                "host:0",
                                "host:70000",
                                "host:65536",
                                "host:abc",
                                "host:",
                                "host",
                                "",
                                "::1:7001",
                                "[::1]",
                                "[::1]7001",
                                "[::1:7001",
                                "[]:7001",
                                "host:-1",
                                "host:+80",
                                "host:123456",
                                "host: 80",
                                "h\xc3\xa9:7\xc3\xa9",
                                "a b:7001",
                                " h:7001",
                                "a\tb:7001",
                                "[a b]:7001"}) {
    SCOPED_TRACE(bad);
    ExpectBadConfig("sectors = 8\n" + Node(1, bad), "nodes[1]: address");
    std::string host;
    std::uint16_t port = 0;
    Status s = ParseHostPort(bad, &host, &port);
    EXPECT_FALSE(s.ok());
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find(bad), std::string::npos) << s.message();
  }
}

TEST(ParseHostPort, ValidForms) {
  struct Case {
    std::string text, host;
    std::uint16_t port;
    std::string address;
  };
  for (const Case& c : std::vector<Case>{
           {"127.0.0.1:7001", "127.0.0.1", 7001, "127.0.0.1:7001"},
           {"[::1]:7001", "::1", 7001, "[::1]:7001"},
           {"[fe80::1%eth0]:9", "fe80::1%eth0", 9, "[fe80::1%eth0]:9"},
           {"node-1.example.com:1", "node-1.example.com", 1, "node-1.example.com:1"},
           {"localhost:65535", "localhost", 65535, "localhost:65535"},
           {"h:00080", "h", 80, "h:80"},
       }) {
    SCOPED_TRACE(c.text);
    std::string host = "unchanged";
    std::uint16_t port = 0;
    Status s = ParseHostPort(c.text, &host, &port);
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(host, c.host);
    EXPECT_EQ(port, c.port);
    NodeConfig n{.rank = 1, .host = host, .port = port};
    EXPECT_EQ(n.Address(), c.address);
  }
  // Quotes, backslashes and control characters in a host are refused.
  for (const std::string& bad : std::vector<std::string>{"a\"b:1", "a\\b:1", "a\nb:1", "a\x7f:1",
                                                         "[a\"]:1", std::string("a\0b:1", 6)}) {
    std::string host;
    std::uint16_t port = 0;
    EXPECT_FALSE(ParseHostPort(bad, &host, &port).ok()) << bad;
  }
  // A failure leaves the outputs alone.
  std::string host = "unchanged";
  std::uint16_t port = 5;
  EXPECT_FALSE(ParseHostPort("host:0", &host, &port).ok());
  EXPECT_EQ(host, "unchanged");
  EXPECT_EQ(port, 5);
}

TEST_F(ConfigTest, DuplicateAddress) {
  ExpectBadConfig("sectors = 8\n" + Node(1, "127.0.0.1:7001") + Node(2, "127.0.0.1:7001"),
                  "nodes[2]: address 127.0.0.1:7001 used twice");
  // The same endpoint spelled differently.
  ExpectBadConfig("sectors = 8\n" + Node(1, "[::1]:7001") + Node(2, "[::1]:07001"), "used twice");
  ExpectBadConfig("sectors = 8\n" + Node(1, "h:7001") + Node(2, "[h]:7001"), "used twice");
  // Same host, other port, is fine.
  auto r = LoadClusterConfig(
      WriteConfig("sectors = 8\n" + Node(1, "127.0.0.1:7001") + Node(2, "127.0.0.1:7002")));
  EXPECT_TRUE(r.ok()) << r.status().ToString();
}

TEST_F(ConfigTest, KeyFiles) {
  std::string nodes = Node(1, "h:7001");
  // Missing key file names both the config and the key file.
  std::string path = WriteFile("missing.toml",
                               "sectors = 8\nclient_key_file = \"absent.key\"\n"
                               "system_key_file = \"system.key\"\n" +
                                   nodes);
  ExpectError(path, (dir_ / "absent.key").string());
  path = WriteFile("missing2.toml",
                   "sectors = 8\nclient_key_file = \"client.key\"\n"
                   "system_key_file = \"sub/absent.key\"\n" +
                       nodes);
  ExpectError(path, (dir_ / "sub" / "absent.key").string());
  // Key file settings missing or of the wrong type.
  ExpectError(WriteFile("nock.toml", "sectors = 8\nsystem_key_file = \"system.key\"\n" + nodes),
              "client_key_file");
  ExpectError(WriteFile("nosk.toml", "sectors = 8\nclient_key_file = \"client.key\"\n" + nodes),
              "system_key_file");
  ExpectError(
      WriteFile("numk.toml",
                "sectors = 8\nclient_key_file = 1\nsystem_key_file = \"system.key\"\n" + nodes),
      "client_key_file");
  // Keys swapped: each has the other's length.
  path = WriteFile("swapped.toml",
                   "sectors = 8\nclient_key_file = \"system.key\"\n"
                   "system_key_file = \"client.key\"\n" +
                       nodes);
  ExpectError(path, (dir_ / "system.key").string());
  // A client key one byte short, and a system key that is not hex.
  WriteFile("short.key", ToHex(RandomBytes(31)));
  path = WriteFile("short.toml",
                   "sectors = 8\nclient_key_file = \"short.key\"\n"
                   "system_key_file = \"system.key\"\n" +
                       nodes);
  ExpectError(path, "short.key");
  WriteFile("nothex.key", std::string(128, 'q'));
  path = WriteFile("nothex.toml",
                   "sectors = 8\nclient_key_file = \"client.key\"\n"
                   "system_key_file = \"nothex.key\"\n" +
                       nodes);
  ExpectError(path, "nothex.key");
}

TEST_F(ConfigTest, KeyFileModes) {
  const std::string path = WriteConfig("sectors = 8\n" + Node(1, "h:7001"));
  const fs::path ck = dir_ / "client.key", sk = dir_ / "system.key";
  auto chmod = [](const fs::path& p, unsigned mode) {
    ASSERT_EQ(::chmod(p.c_str(), static_cast<mode_t>(mode)), 0) << p;
  };
  // Owner only, or a group: no complaint.
  chmod(ck, 0640);
  chmod(sk, 0640);
  // Every file here has tls off, which warns too: only the key warnings count.
  auto key_warnings = [](const ClusterConfig& c) {
    std::vector<std::string> out;
    for (const auto& w : c.warnings) {
      if (w.find("key file") != std::string::npos) out.push_back(w);
    }
    return out;
  };
  auto ok = LoadClusterConfig(path);
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_TRUE(key_warnings(*ok).empty());

  // A client key every user may read: loaded, with a warning that says how to fix it.
  chmod(ck, 0644);
  for (ConfigUse use : {ConfigUse::kNode, ConfigUse::kClient}) {
    auto loaded = LoadClusterConfig(path, use);
    ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
    const std::vector<std::string> warned = key_warnings(*loaded);
    ASSERT_EQ(warned.size(), 1u);
    EXPECT_NE(warned[0].find(ck.string()), std::string::npos) << warned[0];
    EXPECT_NE(warned[0].find("0644"), std::string::npos) << warned[0];
    EXPECT_NE(warned[0].find("chmod 600"), std::string::npos) << warned[0];
  }

  // A system key every user may read: refused where it is read (nodes), ignored by clients.
  chmod(ck, 0600);
  chmod(sk, 0604);
  ExpectError(path, sk.string());
  ExpectError(path, "pose as a node");
  auto client = LoadClusterConfig(path, ConfigUse::kClient);
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  EXPECT_TRUE(key_warnings(*client).empty());

  // Writable by the group: refused too (issue 17), saying which and the fix.
  chmod(sk, 0620);
  ExpectError(path, "writable by its group");
  ExpectError(path, "chmod 600");
  chmod(sk, 0600);
  // Owned by another user (neither us nor root): refused, naming the owner.
  if (::geteuid() == 0) {
    ASSERT_EQ(::chown(sk.c_str(), 4321, static_cast<gid_t>(-1)), 0);
    ExpectError(path, "owned by uid 4321");
    ASSERT_EQ(::chown(sk.c_str(), 0, static_cast<gid_t>(-1)), 0);
  }
  // In a folder every user may write (no sticky bit): refused; with the sticky bit (as /tmp)
  // others cannot replace our file, and it loads.
  chmod(dir_, 0777);
  ExpectError(path, "a folder every user may write");
  chmod(dir_, 01777);
  EXPECT_TRUE(LoadClusterConfig(path).ok());
  chmod(dir_, 0700);

  // Either key writable by every user: refused.
  chmod(sk, 0602);
  ExpectError(path, "writable by every user");
  chmod(sk, 0600);
  chmod(ck, 0622);
  ExpectError(path, ck.string());
  ExpectError(path, "writable by every user");
  auto client_writable = LoadClusterConfig(path, ConfigUse::kClient);
  EXPECT_FALSE(client_writable.ok());
}

// --- WriteNewCluster ------------------------------------------------------------------------

TEST_F(ConfigTest, WriteNewClusterRoundTrip) {
  fs::path out = dir_ / "new" / "cluster";
  std::vector<std::string> addresses = {"127.0.0.1:7002", "[::1]:7001", "node3.example:7003"};
  Status s = WriteNewCluster(out.string(), addresses, 262144);
  ASSERT_TRUE(s.ok()) << s.ToString();

  for (const char* key : {"client.key", "system.key"}) {
    struct stat st {};
    ASSERT_EQ(::stat((out / key).c_str(), &st), 0) << key;
    EXPECT_EQ(st.st_mode & 07777, 0600u) << key;
  }

  auto r = LoadClusterConfig((out / "cluster.toml").string());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const ClusterConfig& c = r.value();
  EXPECT_EQ(c.sectors, 262144u);
  EXPECT_EQ(c.client_key.size(), kClientKeySize);
  EXPECT_EQ(c.system_key.size(), kSystemKeySize);
  EXPECT_NE(c.client_key, Bytes(kClientKeySize, 0));
  EXPECT_EQ(ToHex(c.client_key) + "\n", ReadAll(out / "client.key"));
  EXPECT_EQ(ToHex(c.system_key) + "\n", ReadAll(out / "system.key"));
  ASSERT_EQ(c.nodes.size(), 3u);
  EXPECT_EQ(c.Majority(), 2u);
  for (std::size_t i = 0; i < 3; ++i) {
    SCOPED_TRACE(i);
    // Ranked 1.. in the order given.
    EXPECT_EQ(c.nodes[i].rank, i + 1);
    EXPECT_EQ(c.nodes[i].Address(), addresses[i]);
    EXPECT_EQ(c.nodes[i].data_dir, (out / "data" / std::to_string(i + 1)).string());
  }
  // The data_dirs' parent exists (atomdiskd creates a data_dir, never its parent); the
  // data_dirs themselves do not yet.
  EXPECT_TRUE(fs::is_directory(out / "data"));
  EXPECT_FALSE(fs::exists(out / "data" / "1"));

  // A second cluster elsewhere gets different keys.
  ASSERT_TRUE(WriteNewCluster((dir_ / "other").string(), {"h:1"}, 8).ok());
  auto other = LoadClusterConfig((dir_ / "other" / "cluster.toml").string());
  ASSERT_TRUE(other.ok()) << other.status().ToString();
  EXPECT_NE(other->client_key, c.client_key);
  EXPECT_NE(other->system_key, c.system_key);
  // ... and a cluster id of its own, which ties each node's data_dir to its cluster.
  EXPECT_EQ(c.cluster_id_hex.size(), 32u);
  EXPECT_NE(other->cluster_id_hex, c.cluster_id_hex);
  EXPECT_NE(other->ClusterId(), c.ClusterId());
}

TEST_F(ConfigTest, ResyncSettings) {
  std::string base = "sectors = 8\n";
  std::string nodes = Node(1, "h:7001");
  auto ok = LoadClusterConfig(WriteConfig(base + nodes));
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->resync_rate_mb, 200);  // the defaults
  EXPECT_EQ(ok->sync_serve_rate_mb, 512);
  EXPECT_EQ(ok->resync_interval_s, 600);
  EXPECT_EQ(ok->scrub_interval_s, 0);
  EXPECT_TRUE(ok->cluster_id_hex.empty());

  auto set = LoadClusterConfig(WriteConfig(
      base + "cluster_id = \"00112233445566778899AABBCCDDEEFF\"\nresync_rate_mb = 12.5\n" +
      "resync_interval_s = 0\nscrub_interval_s = 86400\nsync_serve_rate_mb = 0\n" + nodes));
  ASSERT_TRUE(set.ok()) << set.status().ToString();
  EXPECT_EQ(set->resync_rate_mb, 12.5);
  EXPECT_EQ(set->sync_serve_rate_mb, 0);
  EXPECT_EQ(set->resync_interval_s, 0);
  EXPECT_EQ(set->scrub_interval_s, 86400);
  EXPECT_EQ(set->ClusterId().ToString(), "00112233445566778899aabbccddeeff");

  for (const char* bad :
       {"cluster_id = \"0011\"", "cluster_id = \"zz112233445566778899aabbccddeeff\"",
        "cluster_id = 5", "cluster_id = \"00112233445566778899aabbccddeeff00\""}) {
    ExpectBadConfig(base + bad + "\n" + nodes, "cluster_id");
  }
  for (const char* bad : {"resync_rate_mb = -1", "resync_rate_mb = \"fast\"",
                          "resync_rate_mb = nan", "resync_rate_mb = 1e9"}) {
    ExpectBadConfig(base + bad + "\n" + nodes, "resync_rate_mb");
  }
  for (const char* bad :
       {"sync_serve_rate_mb = -3", "sync_serve_rate_mb = \"lots\"", "sync_serve_rate_mb = inf"}) {
    ExpectBadConfig(base + bad + "\n" + nodes, "sync_serve_rate_mb");
  }
  for (const char* bad : {"resync_interval_s = -5", "resync_interval_s = 1.5",
                          "resync_interval_s = 99999999999", "resync_interval_s = true"}) {
    ExpectBadConfig(base + bad + "\n" + nodes, "resync_interval_s");
  }
  ExpectBadConfig(base + "scrub_interval_s = -1\n" + nodes, "scrub_interval_s");
}

TEST_F(ConfigTest, PeerTimeout) {
  std::string base = "sectors = 8\n";
  std::string nodes = Node(1, "h:7001");
  auto def = LoadClusterConfig(WriteConfig(base + nodes));
  ASSERT_TRUE(def.ok()) << def.status().ToString();
#if defined(__SANITIZE_THREAD__)
  EXPECT_EQ(def->peer_timeout_ms, 10000);  // common/config.h: TSan builds run slower
#else
  EXPECT_EQ(def->peer_timeout_ms, 1000);
#endif
  for (std::int64_t ms : {kMinPeerTimeoutMs, std::int64_t{2500}, kMaxPeerTimeoutMs}) {
    auto set = LoadClusterConfig(
        WriteConfig(base + "peer_timeout_ms = " + std::to_string(ms) + "\n" + nodes));
    ASSERT_TRUE(set.ok()) << set.status().ToString();
    EXPECT_EQ(set->peer_timeout_ms, ms);
  }
  for (const char* bad : {"peer_timeout_ms = 0", "peer_timeout_ms = 199", "peer_timeout_ms = -1",
                          "peer_timeout_ms = 60001", "peer_timeout_ms = 1.5",
                          "peer_timeout_ms = \"1s\"", "peer_timeout_ms = true"}) {
    ExpectBadConfig(base + bad + "\n" + nodes, "peer_timeout_ms");
  }
}

TEST_F(ConfigTest, MaxConnections) {
  std::string base = "sectors = 8\n";
  std::string nodes = Node(1, "h:7001");
  auto def = LoadClusterConfig(WriteConfig(base + nodes));
  ASSERT_TRUE(def.ok()) << def.status().ToString();
  EXPECT_EQ(def->max_connections, 4096);
  for (std::int64_t n : {kMinMaxConnections, std::int64_t{100}, kMaxMaxConnections}) {
    auto set = LoadClusterConfig(
        WriteConfig(base + "max_connections = " + std::to_string(n) + "\n" + nodes));
    ASSERT_TRUE(set.ok()) << set.status().ToString();
    EXPECT_EQ(set->max_connections, n);
  }
  for (const char* bad : {"max_connections = 0", "max_connections = 15", "max_connections = -1",
                          "max_connections = 1000001", "max_connections = 1.5",
                          "max_connections = \"many\"", "max_connections = true"}) {
    ExpectBadConfig(base + bad + "\n" + nodes, "max_connections");
  }
}

TEST_F(ConfigTest, MaxConnectionsPerSource) {
  std::string base = "sectors = 8\n";
  std::string nodes = Node(1, "h:7001");
  auto def = LoadClusterConfig(WriteConfig(base + nodes));
  ASSERT_TRUE(def.ok()) << def.status().ToString();
  EXPECT_EQ(def->max_connections_per_source, 256);
  // The default follows a lower max_connections.
  auto low = LoadClusterConfig(WriteConfig(base + "max_connections = 32\n" + nodes));
  ASSERT_TRUE(low.ok()) << low.status().ToString();
  EXPECT_EQ(low->max_connections_per_source, 32);
  auto set = LoadClusterConfig(WriteConfig(base + "max_connections_per_source = 1\n" + nodes));
  ASSERT_TRUE(set.ok()) << set.status().ToString();
  EXPECT_EQ(set->max_connections_per_source, 1);
  for (const char* bad :
       {"max_connections_per_source = 0", "max_connections_per_source = -3",
        "max_connections_per_source = 2.5", "max_connections_per_source = \"all\"",
        "max_connections = 32\nmax_connections_per_source = 33"}) {
    ExpectBadConfig(base + bad + "\n" + nodes, "max_connections_per_source");
  }
}

TEST_F(ConfigTest, MaxQueuedResponseMb) {
  std::string base = "sectors = 8\n";
  std::string nodes = Node(1, "h:7001");
  auto def = LoadClusterConfig(WriteConfig(base + nodes));
  ASSERT_TRUE(def.ok()) << def.status().ToString();
  EXPECT_EQ(def->max_queued_response_mb, 256);
  auto set = LoadClusterConfig(WriteConfig(base + "max_queued_response_mb = 16\n" + nodes));
  ASSERT_TRUE(set.ok()) << set.status().ToString();
  EXPECT_EQ(set->max_queued_response_mb, 16);
  for (const char* bad : {"max_queued_response_mb = 0", "max_queued_response_mb = 15",
                          "max_queued_response_mb = 65537", "max_queued_response_mb = 0.5",
                          "max_queued_response_mb = \"lots\""}) {
    ExpectBadConfig(base + bad + "\n" + nodes, "max_queued_response_mb");
  }
}

TEST_F(ConfigTest, ClusterIdWithoutTheKeyIsDerivedFromTheSystemKey) {
  auto a = LoadClusterConfig(WriteConfig("sectors = 8\n" + Node(1, "h:7001")));
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  auto b = LoadClusterConfig(WriteConfig("sectors = 16\n" + Node(1, "h:7002")));
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(a->ClusterId(), b->ClusterId()) << "same system key, same cluster";
  WriteFile("system.key", ToHex(RandomBytes(kSystemKeySize)) + "\n");
  auto c = LoadClusterConfig(WriteConfig("sectors = 8\n" + Node(1, "h:7001")));
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_NE(a->ClusterId(), c->ClusterId());
}

TEST_F(ConfigTest, WriteNewClusterRefusesToOverwrite) {
  fs::path out = dir_ / "c";
  ASSERT_TRUE(WriteNewCluster(out.string(), {"h:7001"}, 16).ok());
  std::string toml = ReadAll(out / "cluster.toml");
  std::string ck = ReadAll(out / "client.key");
  std::string sk = ReadAll(out / "system.key");

  Status again = WriteNewCluster(out.string(), {"h:7001", "h:7002"}, 32);
  ASSERT_FALSE(again.ok());
  EXPECT_NE(again.message().find("already exists"), std::string::npos) << again.message();
  EXPECT_EQ(ReadAll(out / "cluster.toml"), toml);
  EXPECT_EQ(ReadAll(out / "client.key"), ck);
  EXPECT_EQ(ReadAll(out / "system.key"), sk);

  // Any one of the three files present is enough to refuse.
  for (const char* f : {"cluster.toml", "client.key", "system.key"}) {
    fs::path d = dir_ / (std::string("only-") + f);
    fs::create_directories(d);
    std::ofstream(d / f) << "keep me";
    Status s = WriteNewCluster(d.string(), {"h:7001"}, 16);
    ASSERT_FALSE(s.ok()) << f;
    EXPECT_NE(s.message().find((d / f).string()), std::string::npos) << s.message();
    EXPECT_EQ(ReadAll(d / f), "keep me");
  }
}

TEST_F(ConfigTest, WriteNewClusterRejectsBadInput) {
  struct Case {
    std::vector<std::string> addresses;
    std::uint64_t sectors;
  };
  std::vector<std::string> too_many;
  for (int i = 0; i < 255; ++i) too_many.push_back("h:" + std::to_string(1000 + i));
  int n = 0;
  for (const Case& c : std::vector<Case>{
           {{}, 8},
           {{"h:7001"}, 0},
           {{"h:7001"}, kMaxSectors + 1},
           {{"h:7001", "127.0.0.1"}, 8},
           {{"h:7001", "h:70000"}, 8},
           {{"h:7001", "h:7001"}, 8},
           {{"h:7001", "h:07001"}, 8},  // the same endpoint, spelled differently
           {{"h:7001", "[h]:7001"}, 8},
           {too_many, 8},
           // Hosts that cannot be written into TOML as they are (and are never valid anyway).
           {{"a\"b:7001"}, 8},
           {{"a\\b:7001"}, 8},
           {{"a\nb:7001"}, 8},
           {{"a b:7001"}, 8},
       }) {
    fs::path d = dir_ / ("bad" + std::to_string(n++));
    SCOPED_TRACE(d.string());
    Status s = WriteNewCluster(d.string(), c.addresses, c.sectors);
    EXPECT_FALSE(s.ok());
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
    EXPECT_FALSE(fs::exists(d / "cluster.toml"));
    EXPECT_FALSE(fs::exists(d / "client.key"));
  }
}

TEST_F(ConfigTest, WriteNewClusterMaxSizes) {
  fs::path d = dir_ / "max";
  std::vector<std::string> addresses;
  for (int i = 0; i < kMaxRank; ++i) addresses.push_back("h:" + std::to_string(1000 + i));
  ASSERT_TRUE(WriteNewCluster(d.string(), addresses, kMaxSectors).ok());
  auto r = LoadClusterConfig((d / "cluster.toml").string());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->sectors, kMaxSectors);
  ASSERT_EQ(r->nodes.size(), static_cast<std::size_t>(kMaxRank));
  EXPECT_EQ(r->nodes.back().rank, kMaxRank);
  EXPECT_EQ(r->Majority(), 128u);
}

namespace atomdisk {
namespace {

class ConfigUseTest : public ConfigTest {};

TEST_F(ConfigUseTest, ClientNeedsNoSystemKey) {
  std::string path = WriteConfig("sectors = 8\n" + Node(1, "127.0.0.1:7001"));
  fs::remove(dir_ / "system.key");
  auto client = LoadClusterConfig(path, ConfigUse::kClient);
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  EXPECT_EQ(client->client_key, client_key_);
  EXPECT_TRUE(client->system_key.empty());
  // A node cannot run without it, and says which file is missing.
  auto node = LoadClusterConfig(path, ConfigUse::kNode);
  ASSERT_FALSE(node.ok());
  EXPECT_NE(node.status().message().find("system.key"), std::string::npos)
      << node.status().ToString();
}

}  // namespace
}  // namespace atomdisk

TEST_F(ConfigTest, TlsSettings) {
  const std::string base = "sectors = 8\n";
  const std::string nodes = Node(1, "h:7001") + Node(2, "h:7002");
  // Absent: off, with a warning that says what that means and where to read on.
  auto off = LoadClusterConfig(WriteConfig(base + nodes));
  ASSERT_TRUE(off.ok()) << off.status().ToString();
  EXPECT_EQ(off->tls, TlsMode::kOff);
  ASSERT_EQ(off->warnings.size(), 1u);
  EXPECT_NE(off->warnings[0].find("tls = \"off\""), std::string::npos) << off->warnings[0];
  EXPECT_NE(off->warnings[0].find("docs/TLS.md"), std::string::npos) << off->warnings[0];
  // The default file names, resolved against the config's folder; {rank} expanded per node.
  EXPECT_EQ(off->tls_ca_file, (dir_ / "tls/ca.crt").string());
  EXPECT_EQ(off->NodeCertFile(2), (dir_ / "tls/node-2.crt").string());
  EXPECT_EQ(off->NodeKeyFile(12), (dir_ / "tls/node-12.key").string());
  EXPECT_TRUE(off->plaintext_clients);

  // require without the certificates: one line naming the missing file and the fix.
  ExpectBadConfig(base + "tls = \"require\"\n" + nodes, "tls/ca.crt");
  ExpectBadConfig(base + "tls = \"require\"\n" + nodes, "atomdisk tls issue");
  // Bad values.
  for (const char* bad : {"tls = \"on\"", "tls = true", "tls = 1", "tls = \"\""}) {
    ExpectBadConfig(base + bad + "\n" + nodes, "\"tls\" must be");
  }
  ExpectBadConfig(base + "plaintext_clients = \"no\"\n" + nodes, "plaintext_clients");
  ExpectBadConfig(base + "tls_ca_file = \"\"\n" + nodes, "tls_ca_file");
  for (const std::string& bad : std::vector<std::string>{
           "tls_revoked = \"abc\"", "tls_revoked = [\"abc\"]", "tls_revoked = [7]",
           "tls_revoked = [\"" + std::string(63, 'a') + "\"]",
           "tls_revoked = [\"" + std::string(64, 'g') + "\"]"}) {
    ExpectBadConfig(base + bad + "\n" + nodes, "tls_revoked");
  }
  // Fingerprints as `openssl x509 -fingerprint -sha256` prints them are taken too.
  std::string colons;
  for (int i = 0; i < 32; ++i) colons += std::string(i ? ":" : "") + "AB";
  auto revoked = LoadClusterConfig(WriteConfig(base + "tls_revoked = [\"" + colons + "\", \"" +
                                               std::string(64, 'c') + "\"]\n" + nodes));
  ASSERT_TRUE(revoked.ok()) << revoked.status().ToString();
  ASSERT_EQ(revoked->tls_revoked.size(), 2u);
  EXPECT_EQ(revoked->tls_revoked[0], [] {
    std::string s;
    for (int i = 0; i < 32; ++i) s += "ab";
    return s;
  }());

  // A new cluster from WriteNewCluster: require, with every file there and its keys private.
  fs::path out = dir_ / "new";
  ASSERT_TRUE(WriteNewCluster(out.string(), {"h:7001", "h:7002", "h:7003"}, 16).ok());
  auto made = LoadClusterConfig((out / "cluster.toml").string());
  ASSERT_TRUE(made.ok()) << made.status().ToString();
  EXPECT_EQ(made->tls, TlsMode::kRequire);
  EXPECT_TRUE(made->warnings.empty());
  for (const std::string& f : {made->tls_ca_file, made->NodeCertFile(3), made->NodeKeyFile(3),
                               made->tls_client_cert_file, made->tls_client_key_file}) {
    struct stat st;
    ASSERT_EQ(::stat(f.c_str(), &st), 0) << f;
    EXPECT_EQ(st.st_mode & 077, 0u) << f;
  }
  // A client key readable by every user: a client refuses to load it (a node's TLS key is
  // checked where the node loads it: tests/daemon/tls_test.cc).
  ::chmod(made->tls_client_key_file.c_str(), 0644);
  auto client = LoadClusterConfig((out / "cluster.toml").string(), ConfigUse::kClient);
  ASSERT_FALSE(client.ok());
  EXPECT_NE(client.status().message().find("TLS key file"), std::string::npos)
      << client.status().ToString();
  // Without TLS: "off" in the file, no tls folder.
  fs::path plain = dir_ / "plain";
  ASSERT_TRUE(WriteNewCluster(plain.string(), {"h:7001"}, 16, /*tls=*/false).ok());
  EXPECT_FALSE(fs::exists(plain / "tls"));
  auto plain_loaded = LoadClusterConfig((plain / "cluster.toml").string());
  ASSERT_TRUE(plain_loaded.ok()) << plain_loaded.status().ToString();
  EXPECT_EQ(plain_loaded->tls, TlsMode::kOff);
}

}  // namespace
}  // namespace atomdisk
