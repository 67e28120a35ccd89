// Mutual TLS between atomdisk's programs, on real daemons (issue 17, docs/TLS.md): who may
// connect, who may send what, and what a recording is worth. Every other integration test
// runs over TLS too (the harness makes clusters as `atomdisk init` does, tls = "require");
// these are the refusals.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "common/hmac.h"
#include "common/sync_wire.h"
#include "common/tls_certs.h"
#include "common/wire.h"
#include "tests/daemon/daemon_test_util.h"
#include "tests/daemon/raw_client.h"
#include "tests/daemon/tls_conn.h"

namespace atomdisk::itest {
namespace {

namespace asio = boost::asio;
namespace fs = std::filesystem;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr SectorIdx kVictim = 30;
constexpr std::uint64_t kVictimId = 5151;

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

Status WriteText(const std::string& path, const std::string& text, fs::perms perms) {
  {
    std::ofstream out(path, std::ios::trunc);
    out << text;
    if (!out.flush()) return Status::IOError("cannot write " + path);
  }
  std::error_code ec;
  fs::permissions(path, perms, ec);
  return ec ? Status::IOError(ec.message()) : Status::Ok();
}

// Waits (bounded) until node `rank`'s log contains `needle`.
bool LogSays(LiveCluster& cluster, int rank, const std::string& needle) {
  for (int i = 0; i < 100; ++i) {
    if (ReadText(cluster.harness().LogPath(rank)).find(needle) != std::string::npos) return true;
    std::this_thread::sleep_for(milliseconds(50));
  }
  return false;
}

class DaemonTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    cluster_ =
        std::make_unique<LiveCluster>(3, TestClusterOptions{.sectors = 65536, .log_level = "info"});
    ASSERT_TRUE(cluster_->ok());
    tls_ = cluster_->dir() + "/tls";
    ASSERT_TRUE(ServesWriteAndRead(*cluster_, 1, kVictim, kVictimId));
  }

  // A TLS connection to node `rank` with the given certificate (relative to the tls folder).
  Result<std::unique_ptr<TlsConn>> ConnectAs(int rank, const std::string& cert,
                                             const std::string& key) {
    return TlsConn::Connect(cluster_->port(rank), tls_ + "/ca.crt",
                            cert.empty() ? "" : tls_ + "/" + cert,
                            key.empty() ? "" : tls_ + "/" + key);
  }

  // The node refused the connection: an Info on it gets no answer, the connection closes.
  void ExpectRefused(TlsConn& conn) {
    auto info = conn.Info(cluster_->client_key());
    EXPECT_FALSE(info.ok()) << "the node answered a connection it should refuse";
    if (!info.ok()) {
      EXPECT_EQ(info.status().code(), StatusCode::kUnavailable) << info.status().ToString();
    }
  }

  // The victim sector is unchanged, and node 1 still serves (a fresh connection).
  void ExpectUnchanged() {
    ASSERT_TRUE(cluster_->IsRunning(1)) << cluster_->harness().LogTail(1);
    auto client = cluster_->Connect(1);
    ASSERT_NE(client, nullptr);
    auto data = client->Read(kVictim);
    ASSERT_TRUE(data.ok()) << data.status().ToString();
    EXPECT_EQ(CheckedId(**data), kVictimId) << "the attack changed data";
  }

  // A WriteProc that would overwrite the victim with a high timestamp, signed with the
  // system key: what only a node may send.
  Bytes SignedWriteProc(Rank sender) {
    SystemMessage m;
    m.sender = sender;
    for (std::size_t i = 0; i < 16; ++i) m.op_id.bytes[i] = static_cast<std::uint8_t>(i + 9);
    m.sector = kVictim;
    m.content = SystemContent::kWriteProc;
    m.tag = Tag{2'000'000, sender};
    m.data = IdSector(666);
    Hmac mac(cluster_->system_key());
    return EncodeFrame(m, mac);
  }

  std::unique_ptr<LiveCluster> cluster_;
  std::string tls_;
};

TEST_F(DaemonTlsTest, TheClusterCertificateIsServed) {
  // The setup itself wrote and read over TLS (the RawClient above is plaintext: atdd clients
  // are served as plaintext_clients = true says). A client certificate is served on TLS.
  auto conn = ConnectAs(1, "client.crt", "client.key");
  ASSERT_TRUE(conn.ok()) << conn.status().ToString();
  auto info = (*conn)->Info(cluster_->client_key());
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_EQ(*info, ResponseStatus::kOk);
}

// Inside TLS a frame's tag is 32 zero bytes both ways (docs/TLS.md, "No HMAC inside TLS");
// in clear a zero tag is a bad tag.
TEST_F(DaemonTlsTest, FramesInsideTlsCarryZeroTags) {
  auto conn = ConnectAs(1, "client.crt", "client.key");
  ASSERT_TRUE(conn.ok()) << conn.status().ToString();
  ClientCommand read;
  read.request_id = 31;
  read.op = ClientOp::kRead;
  read.sector = kVictim;
  ASSERT_TRUE((*conn)->Send(EncodeFrame(read, Hmac::ZeroTag())).ok());
  auto frame = (*conn)->ReadFrame();
  ASSERT_TRUE(frame.ok()) << frame.status().ToString();
  const auto tag = std::span<const std::uint8_t>(*frame).last(kMacSize);
  EXPECT_TRUE(std::all_of(tag.begin(), tag.end(), [](std::uint8_t b) { return b == 0; }))
      << "the node signed its answer inside TLS";
  auto payload = VerifyFrameBody(std::span<const std::uint8_t>(*frame).subspan(8), Hmac::ZeroTag());
  ASSERT_TRUE(payload.ok());
  auto resp = DecodeClientResponse(*payload);
  ASSERT_TRUE(resp.ok());
  EXPECT_EQ(resp->status, ResponseStatus::kOk);
  EXPECT_EQ(CheckedId(*resp->data), kVictimId);

  // The same zero-tagged command in clear: a bad tag.
  auto plain = cluster_->Connect(1);
  ASSERT_NE(plain, nullptr);
  ASSERT_TRUE(plain->SendBytes(EncodeFrame(read, Hmac::ZeroTag())).ok());
  auto refused = plain->ReadFrame();
  ASSERT_TRUE(refused.ok()) << refused.status().ToString();
  auto status = DecodeClientResponse(refused->payload());
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(status->status, ResponseStatus::kAuthFailure);
}

TEST_F(DaemonTlsTest, AHandshakeWithoutACertificateIsRefusedAndLogged) {
  auto conn = ConnectAs(1, "", "");
  // TLS 1.3: the client's side of the handshake completes before the server checks the
  // client's certificate; the refusal arrives as an alert on the first read.
  if (conn.ok()) ExpectRefused(**conn);
  EXPECT_TRUE(LogSays(*cluster_, 1, "did not return a certificate"))
      << cluster_->harness().LogTail(1);
  ExpectUnchanged();
}

TEST_F(DaemonTlsTest, AForeignCertificateIsRefusedAndLogged) {
  const std::string dir = cluster_->dir() + "/attacker";
  fs::create_directories(dir);
  // A client certificate from a CA of the attacker's own.
  auto foreign_ca = MakeClusterCa(std::string(32, 'a'), 30);
  ASSERT_TRUE(foreign_ca.ok()) << foreign_ca.status().ToString();
  TlsIdentity client;
  client.role = TlsIdentity::Role::kClient;
  client.name = "client";
  auto foreign = IssueCertificate(*foreign_ca, client, 30);
  ASSERT_TRUE(foreign.ok()) << foreign.status().ToString();
  ASSERT_TRUE(WriteText(dir + "/foreign.crt", foreign->cert_pem, fs::perms::owner_read).ok());
  ASSERT_TRUE(WriteText(dir + "/foreign.key", foreign->key_pem, fs::perms::owner_read).ok());
  {
    auto conn = TlsConn::Connect(cluster_->port(1), tls_ + "/ca.crt", dir + "/foreign.crt",
                                 dir + "/foreign.key");
    if (conn.ok()) ExpectRefused(**conn);
  }
  EXPECT_TRUE(LogSays(*cluster_, 1, "certificate verify failed")) << cluster_->harness().LogTail(1);
  ExpectUnchanged();
}

TEST_F(DaemonTlsTest, AnExpiredCertificateIsRefusedAndLogged) {
  const std::string dir = cluster_->dir() + "/attacker";
  fs::create_directories(dir);
  TlsIdentity client;
  client.role = TlsIdentity::Role::kClient;
  client.name = "client";
  // From the cluster's own CA, but expired (valid for a day, ten days ago).
  PemPair ca{ReadText(tls_ + "/ca.crt"), ReadText(tls_ + "/ca.key")};
  auto expired = IssueCertificate(ca, client, 1, -10 * 86400);
  ASSERT_TRUE(expired.ok()) << expired.status().ToString();
  ASSERT_TRUE(WriteText(dir + "/expired.crt", expired->cert_pem, fs::perms::owner_read).ok());
  ASSERT_TRUE(WriteText(dir + "/expired.key", expired->key_pem, fs::perms::owner_read).ok());
  {
    auto conn = TlsConn::Connect(cluster_->port(1), tls_ + "/ca.crt", dir + "/expired.crt",
                                 dir + "/expired.key");
    if (conn.ok()) ExpectRefused(**conn);
  }
  EXPECT_TRUE(LogSays(*cluster_, 1, "certificate has expired")) << cluster_->harness().LogTail(1);
  ExpectUnchanged();
}

TEST_F(DaemonTlsTest, AClientCertificateCannotSendSystemOrSyncFrames) {
  // Even with the system key: the certificate says client, so system frames are refused.
  auto conn = ConnectAs(1, "client.crt", "client.key");
  ASSERT_TRUE(conn.ok()) << conn.status().ToString();
  ASSERT_TRUE((*conn)->Send(SignedWriteProc(2)).ok());
  auto after = (*conn)->ReadFrame(milliseconds(3000));
  EXPECT_EQ(after.status().code(), StatusCode::kUnavailable) << after.status().ToString();
  EXPECT_TRUE(LogSays(*cluster_, 1, "a client certificate (client client) sent a system frame"))
      << cluster_->harness().LogTail(1);

  auto sync = ConnectAs(1, "client.crt", "client.key");
  ASSERT_TRUE(sync.ok()) << sync.status().ToString();
  SyncMessage ping;
  ping.sender = 2;
  ping.kind = SyncKind::kPing;
  ping.request_id = 5;
  Hmac mac(cluster_->system_key());
  ASSERT_TRUE((*sync)->Send(EncodeFrame(ping, mac)).ok());
  auto pong = (*sync)->ReadFrame(milliseconds(3000));
  EXPECT_EQ(pong.status().code(), StatusCode::kUnavailable) << "a client got a Pong";
  ExpectUnchanged();
}

TEST_F(DaemonTlsTest, ANodeCertificateSpeaksOnlyAsItsOwnRank) {
  auto conn = ConnectAs(1, "node-2.crt", "node-2.key");
  ASSERT_TRUE(conn.ok()) << conn.status().ToString();
  ASSERT_TRUE((*conn)->Send(SignedWriteProc(3)).ok());
  auto after = (*conn)->ReadFrame(milliseconds(3000));
  EXPECT_EQ(after.status().code(), StatusCode::kUnavailable) << after.status().ToString();
  EXPECT_TRUE(LogSays(*cluster_, 1, "node 2's certificate sent a frame as node 3"))
      << cluster_->harness().LogTail(1);
  // Nor may a node's certificate act as a client.
  auto as_client = ConnectAs(1, "node-2.crt", "node-2.key");
  ASSERT_TRUE(as_client.ok()) << as_client.status().ToString();
  ExpectRefused(**as_client);
  ExpectUnchanged();
}

TEST_F(DaemonTlsTest, SystemFramesInClearAreRefusedUnderRequire) {
  // With the system key but without TLS: the node closes the connection unread.
  auto attacker = cluster_->Connect(1);
  ASSERT_NE(attacker, nullptr);
  ASSERT_TRUE(attacker->SendBytes(SignedWriteProc(2)).ok());
  EXPECT_TRUE(attacker->WaitForClose(milliseconds(3000)));
  EXPECT_TRUE(LogSays(*cluster_, 1, "system frames in clear are refused"))
      << cluster_->harness().LogTail(1);
  ExpectUnchanged();
}

TEST_F(DaemonTlsTest, RevokedCertificatesAndPlaintextClientsCanBeSwitchedOff) {
  // A second client credential, then revoked (docs/TLS.md, "Revoking a client"), and clients
  // in clear switched off, on node 1.
  TlsIdentity laptop;
  laptop.role = TlsIdentity::Role::kClient;
  laptop.name = "laptop";
  auto fingerprint = IssueFromClusterCa(tls_, laptop, 30);
  ASSERT_TRUE(fingerprint.ok()) << fingerprint.status().ToString();
  {
    auto conn = ConnectAs(1, "client-laptop.crt", "client-laptop.key");
    ASSERT_TRUE(conn.ok()) << conn.status().ToString();
    auto info = (*conn)->Info(cluster_->client_key());
    ASSERT_TRUE(info.ok()) << "a fresh credential is served: " << info.status().ToString();
  }
  const std::string path = cluster_->harness().config_path();
  std::string toml = ReadText(path);
  const std::string on = "plaintext_clients = true\n";
  ASSERT_NE(toml.find(on), std::string::npos);
  toml.replace(toml.find(on), on.size(), "plaintext_clients = false\n");
  toml = "tls_revoked = [\"" + *fingerprint + "\"]\n" + toml;
  ASSERT_TRUE(WriteText(path, toml,
                        fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
                            fs::perms::others_read)
                  .ok());
  ASSERT_TRUE(cluster_->Restart(1));

  auto revoked = ConnectAs(1, "client-laptop.crt", "client-laptop.key");
  if (revoked.ok()) ExpectRefused(**revoked);
  EXPECT_TRUE(LogSays(*cluster_, 1, "is revoked")) << cluster_->harness().LogTail(1);
  auto plain = cluster_->Connect(1, /*quiet=*/true);
  if (plain != nullptr) {
    auto read = plain->Read(kVictim, milliseconds(3000));
    EXPECT_FALSE(read.ok()) << "a client in clear was served with plaintext_clients = false";
  }
  EXPECT_TRUE(LogSays(*cluster_, 1, "plaintext_clients = false")) << cluster_->harness().LogTail(1);
  // The cluster's own client credential still works.
  auto good = ConnectAs(1, "client.crt", "client.key");
  ASSERT_TRUE(good.ok()) << good.status().ToString();
  auto info = (*good)->Info(cluster_->client_key());
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_EQ(*info, ResponseStatus::kOk);
}

// A TCP proxy on 127.0.0.1 that forwards one connection to `port` and records what the
// client sent: what an attacker on the path sees.
class RecordingProxy {
 public:
  explicit RecordingProxy(std::uint16_t port) : target_(port) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    ::listen(listen_fd_, 4);
    socklen_t len = sizeof(a);
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { Run(); });
  }
  ~RecordingProxy() {
    stop_ = true;
    ::shutdown(listen_fd_, SHUT_RDWR);
    thread_.join();
    ::close(listen_fd_);
  }
  std::uint16_t port() const { return port_; }
  Bytes recorded() {
    std::lock_guard<std::mutex> lock(mu_);
    return recorded_;
  }

 private:
  static int Dial(std::uint16_t port) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
      ::close(fd);
      return -1;
    }
    return fd;
  }
  void Run() {
    while (!stop_) {
      pollfd lp{listen_fd_, POLLIN, 0};
      if (::poll(&lp, 1, 100) <= 0) continue;
      int client = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (client < 0) continue;
      int server = Dial(target_);
      if (server < 0) {
        ::close(client);
        continue;
      }
      std::uint8_t buf[16384];
      bool open = true;
      while (open && !stop_) {
        pollfd p[2] = {{client, POLLIN, 0}, {server, POLLIN, 0}};
        if (::poll(p, 2, 100) <= 0) continue;
        for (int i = 0; i < 2 && open; ++i) {
          if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
          ssize_t n = ::read(p[i].fd, buf, sizeof(buf));
          if (n <= 0) {
            open = false;
            break;
          }
          if (i == 0) {
            std::lock_guard<std::mutex> lock(mu_);
            recorded_.insert(recorded_.end(), buf, buf + n);
          }
          if (::write(p[1 - i].fd, buf, static_cast<std::size_t>(n)) != n) open = false;
        }
      }
      ::close(client);
      ::close(server);
    }
  }

  std::uint16_t target_;
  std::uint16_t port_ = 0;
  int listen_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  Bytes recorded_;
  std::thread thread_;
};

TEST_F(DaemonTlsTest, ARecordedSessionReplayedIntoANewConnectionDoesNothing) {
  // Through a proxy that records: a client writes A to the victim over TLS.
  RecordingProxy proxy(cluster_->port(1));
  {
    auto conn = TlsConn::Connect(proxy.port(), tls_ + "/ca.crt", tls_ + "/client.crt",
                                 tls_ + "/client.key");
    ASSERT_TRUE(conn.ok()) << conn.status().ToString();
    ClientCommand write;
    write.request_id = 901;
    write.op = ClientOp::kWrite;
    write.sector = kVictim;
    write.data = IdSector(7001);
    Hmac mac(cluster_->client_key());
    ASSERT_TRUE((*conn)->Send(EncodeFrame(write, mac)).ok());
    auto resp = (*conn)->ReadFrame();
    ASSERT_TRUE(resp.ok()) << resp.status().ToString();
  }
  const Bytes recording = proxy.recorded();
  ASSERT_GT(recording.size(), kSectorSize) << "the proxy saw the write";
  // Then B, by a good client.
  auto good = cluster_->Connect(1);
  ASSERT_NE(good, nullptr);
  ASSERT_TRUE(good->Write(kVictim, IdSector(7002)).ok());
  // The recording replayed into a new connection: its handshake cannot complete (the node's
  // new key share makes the recorded Finished wrong), so the write inside never decrypts.
  {
    auto replay = RawClient::Connect(cluster_->port(1), cluster_->client_key());
    ASSERT_TRUE(replay.ok()) << replay.status().ToString();
    (void)(*replay)->SendBytes(recording);
    EXPECT_TRUE((*replay)->WaitForClose(milliseconds(5000)));
  }
  auto data = good->Read(kVictim);
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  EXPECT_EQ(CheckedId(**data), 7002u) << "the replayed session rolled the sector back";
  EXPECT_TRUE(LogSays(*cluster_, 1, "TLS handshake failed")) << cluster_->harness().LogTail(1);
}

// Switching a running cluster from tls = "off" to "require" one node at a time
// (docs/TLS.md, "Switching TLS on"): first every node to "accept" (serves TLS and clear, dials
// with TLS and falls back to clear for a node still "off"), then every node to "require". At
// every step, with one more node stopped, the two left still form a quorum: their links work
// across the mixed settings.
TEST(DaemonTlsUpgradeTest, ARunningClusterSwitchesToTlsOneNodeAtATime) {
  auto created = Harness::Create({.nodes = 3, .sectors = 4096, .log_level = "info"});
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  Harness& h = **created;
  const std::string require = h.config_path();
  const std::string text = ReadText(require);
  const std::string line = "tls = \"require\"\n";
  ASSERT_NE(text.find(line), std::string::npos);
  auto with_mode = [&](const std::string& mode) {
    std::string t = text;
    t.replace(t.find(line), line.size(), "tls = \"" + mode + "\"\n");
    const std::string path = h.dir() + "/cluster-" + mode + ".toml";
    EXPECT_TRUE(
        WriteText(path, t, fs::perms::owner_read | fs::perms::owner_write | fs::perms::others_read)
            .ok());
    return path;
  };
  const std::string off = with_mode("off");
  const std::string accept = with_mode("accept");
  for (int r = 1; r <= 3; ++r) {
    h.SetNodeConfig(r, off);
    ASSERT_TRUE(h.StartNode(r).ok()) << h.LogTail(r);
  }
  for (int r = 1; r <= 3; ++r) ASSERT_TRUE(h.WaitVoting(r, seconds(20)).ok()) << h.LogTail(r);

  std::uint64_t next_id = 100;
  std::map<SectorIdx, std::uint64_t> written;
  // With `down` stopped, a write through each of the other two (each one's coordinator needs
  // the link to the other), read back through the other.
  auto quorum_of_two = [&](int down, const std::string& step) {
    SCOPED_TRACE(step + ", node " + std::to_string(down) + " down");
    ASSERT_TRUE(h.Stop(down).ok());
    for (int via = 1; via <= 3; ++via) {
      if (via == down) continue;
      const SectorIdx sector = static_cast<SectorIdx>(next_id % 4096);
      const std::uint64_t id = next_id++;
      auto client = RawClient::Connect(h.config().FindNode(static_cast<Rank>(via))->port,
                                       h.config().client_key);
      ASSERT_TRUE(client.ok()) << client.status().ToString();
      Status s = (*client)->Write(sector, IdSector(id), milliseconds(10000));
      ASSERT_TRUE(s.ok()) << "write via node " << via << ": " << s.ToString() << "\n"
                          << h.LogTail(via);
      written[sector] = id;
    }
    ASSERT_TRUE(h.StartNode(down).ok()) << h.LogTail(down);
    ASSERT_TRUE(h.WaitVoting(down, seconds(20)).ok()) << h.LogTail(down);
  };
  auto switch_node = [&](int rank, const std::string& config) {
    ASSERT_TRUE(h.Stop(rank).ok());
    h.SetNodeConfig(rank, config);
    ASSERT_TRUE(h.StartNode(rank).ok()) << h.LogTail(rank);
    ASSERT_TRUE(h.WaitVoting(rank, seconds(20)).ok()) << h.LogTail(rank);
  };

  quorum_of_two(3, "all off");
  switch_node(1, accept);
  quorum_of_two(2, "1 accept, 2 and 3 off");  // 1 <-> 3: TLS refused by 3, then in clear
  switch_node(2, accept);
  quorum_of_two(1, "1 and 2 accept, 3 off");
  switch_node(3, accept);
  switch_node(1, require);
  quorum_of_two(2, "1 require, 2 and 3 accept");  // 3 dials 1 with TLS now
  switch_node(2, require);
  switch_node(3, require);
  quorum_of_two(1, "all require");
  EXPECT_TRUE(ReadText(h.LogPath(1)).find("system frames in clear are refused") ==
              std::string::npos)
      << "a node in the middle of the switch sent system frames in clear to a node on require";

  // Everything written on the way is there.
  auto reader = RawClient::Connect(h.config().FindNode(1)->port, h.config().client_key);
  ASSERT_TRUE(reader.ok());
  for (const auto& [sector, id] : written) {
    auto data = (*reader)->Read(sector);
    ASSERT_TRUE(data.ok()) << data.status().ToString();
    EXPECT_EQ(CheckedId(**data), id) << "sector " << sector;
  }
}

}  // namespace
}  // namespace atomdisk::itest
