// Unit tests of the client library (client/client.h: its core in client/core, the Asio adapter
// in client/net) against FakeNode servers on loopback:
// pipelining and out-of-order matching, the in-flight bound, deadlines and their messages,
// failover on dropped connections, silent nodes, bad tags and malformed frames, write retry
// semantics, reconnection, Probe, Close.
#include "client/client.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

#include "common/hmac.h"
#include "tests/client/fake_node.h"

namespace atomdisk::client {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

constexpr std::uint64_t kSectors = 1024;

std::vector<std::uint8_t> Key() { return std::vector<std::uint8_t>(32, 0x42); }

SectorPtr Filled(std::uint8_t b) {
  auto s = std::make_shared<SectorData>();
  s->fill(b);
  return s;
}

// An unused loopback port: nothing listens there (connections are refused).
std::uint16_t DeadPort() {
  FakeNode n(Key(), kSectors);
  std::uint16_t p = n.port();
  n.Stop();
  return p;
}

ClientOptions Options(const std::vector<std::uint16_t>& ports) {
  ClientOptions o;
  Rank rank = 1;
  for (auto p : ports) o.nodes.push_back({"127.0.0.1", p, rank++});
  o.client_key = Key();
  o.sectors = kSectors;
  o.op_timeout = milliseconds(3000);
  o.attempt_timeout = milliseconds(300);
  o.reconnect_backoff_min = milliseconds(5);
  o.reconnect_backoff_max = milliseconds(50);
  return o;
}

// Waits for `n` callbacks.
class Latch {
 public:
  explicit Latch(std::size_t n) : n_(n) {}
  void CountDown() {
    std::lock_guard<std::mutex> lock(mu_);
    if (--n_ == 0) cv_.notify_all();
  }
  bool Wait(milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return n_ == 0; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::size_t n_;
};

// Polls until the client has `n` connections up (bounded).
bool WaitForReachable(Client& c, std::size_t n) {
  auto deadline = Clock::now() + milliseconds(5000);
  while (c.ReachableNodes() != n) {
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(milliseconds(2));
  }
  return true;
}

OpResult WriteWithSync(Client& c, SectorIdx s, SectorPtr d, OpOptions o) {
  std::promise<OpResult> p;
  auto f = p.get_future();
  c.WriteWith(s, std::move(d), o, [&p](OpResult r) { p.set_value(std::move(r)); });
  return f.get();
}

TEST(ClientTest, WriteThenReadRoundTrip) {
  FakeNode node(Key(), kSectors);
  auto client = Client::Create(Options({node.port()}));
  ASSERT_TRUE(client->WriteSync(7, Filled(0xab)).ok());
  Result<SectorPtr> r = client->ReadSync(7);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(**r, *Filled(0xab));
  Result<SectorPtr> zero = client->ReadSync(8);
  ASSERT_TRUE(zero.ok());
  EXPECT_EQ(**zero, *ZeroSector());
  EXPECT_EQ(client->ReachableNodes(), 1u);
  EXPECT_EQ(client->ConfiguredNodes(), 1u);
}

TEST(ClientTest, PipelinesAndMatchesResponsesOutOfOrder) {
  FakeNode node(Key(), kSectors);
  FakeNode::Behaviour b;
  b.reverse_batches = true;
  node.SetBehaviour(b);
  auto client = Client::Create(Options({node.port()}));
  constexpr int kOps = 1000;
  Latch latch(kOps);
  std::atomic<int> bad{0};
  for (int i = 0; i < kOps; ++i) {
    client->Write(static_cast<SectorIdx>(i), Filled(static_cast<std::uint8_t>(i)), [&](Status s) {
      if (!s.ok()) ++bad;
      latch.CountDown();
    });
  }
  ASSERT_TRUE(latch.Wait(milliseconds(20000)));
  EXPECT_EQ(bad.load(), 0);
  Latch reads(kOps);
  for (int i = 0; i < kOps; ++i) {
    client->Read(static_cast<SectorIdx>(i), [&, i](Result<SectorPtr> r) {
      if (!r.ok() || **r != *Filled(static_cast<std::uint8_t>(i))) ++bad;
      reads.CountDown();
    });
  }
  ASSERT_TRUE(reads.Wait(milliseconds(20000)));
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GT(node.max_batch(), 1u) << "requests were not pipelined";
}

TEST(ClientTest, BoundsOperationsInFlight) {
  FakeNode node(Key(), kSectors);
  FakeNode::Behaviour b;
  b.delay_ms = 2;
  node.SetBehaviour(b);
  ClientOptions o = Options({node.port()});
  o.max_inflight = 8;
  auto client = Client::Create(o);
  constexpr int kOps = 200;
  Latch latch(kOps);
  std::atomic<int> bad{0};
  for (int i = 0; i < kOps; ++i) {
    client->Read(static_cast<SectorIdx>(i), [&](Result<SectorPtr> r) {
      if (!r.ok()) ++bad;
      latch.CountDown();
    });
  }
  ASSERT_TRUE(latch.Wait(milliseconds(20000)));
  EXPECT_EQ(bad.load(), 0);
  EXPECT_LE(node.max_outstanding(), 8u);
  EXPECT_GT(node.max_outstanding(), 1u);
}

TEST(ClientTest, SectorOutOfRangeIsInvalidArgument) {
  FakeNode node(Key(), /*sectors=*/100);
  ClientOptions o = Options({node.port()});
  o.sectors = 200;  // the client believes in a bigger device than the node
  auto client = Client::Create(o);
  Result<SectorPtr> r = client->ReadSync(500);  // refused by the client
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("outside the device"), std::string::npos);
  EXPECT_EQ(node.requests(), 0u);
  Status s = client->WriteSync(150, Filled(1));  // refused by the node
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  EXPECT_NE(s.message().find("node 1"), std::string::npos) << s.ToString();
}

TEST(ClientTest, FailsOverWhenAConnectionDrops) {
  FakeNode a(Key(), kSectors, 1), b(Key(), kSectors, 2);
  FakeNode::Behaviour drop;
  drop.drop_after = 10;
  a.SetBehaviour(drop);
  auto client = Client::Create(Options({a.port(), b.port()}));
  constexpr int kOps = 300;
  Latch latch(kOps);
  std::atomic<int> bad{0};
  for (int i = 0; i < kOps; ++i) {
    client->Write(static_cast<SectorIdx>(i % 50), Filled(static_cast<std::uint8_t>(i)),
                  [&](Status s) {
                    if (!s.ok()) ++bad;
                    latch.CountDown();
                  });
  }
  ASSERT_TRUE(latch.Wait(milliseconds(20000)));
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GT(b.requests(), 0u);
  EXPECT_GT(client->Stats().retries, 0u);
  EXPECT_GT(client->Stats().connection_drops, 0u);
}

TEST(ClientTest, FailsOverFromASilentNodeWithinTheAttemptTimeout) {
  FakeNode a(Key(), kSectors, 1), b(Key(), kSectors, 2);
  FakeNode::Behaviour silent;
  silent.silent = true;
  a.SetBehaviour(silent);
  auto client = Client::Create(Options({a.port(), b.port()}));
  auto t0 = Clock::now();
  ASSERT_TRUE(client->WriteSync(1, Filled(9)).ok());
  auto first = Clock::now() - t0;
  EXPECT_GE(first, milliseconds(250));  // waited for the attempt timeout (300 ms)
  EXPECT_LT(first, milliseconds(2500));
  // The silent node is demoted: the next operations go straight to b.
  t0 = Clock::now();
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(client->ReadSync(1).ok());
  EXPECT_LT(Clock::now() - t0, milliseconds(250));
}

TEST(ClientTest, BadTagClosesTheConnectionAndFailsOver) {
  FakeNode a(Key(), kSectors, 1), b(Key(), kSectors, 2);
  FakeNode::Behaviour bad;
  bad.bad_tag = true;
  a.SetBehaviour(bad);
  auto client = Client::Create(Options({a.port(), b.port()}));
  ASSERT_TRUE(client->WriteSync(3, Filled(3)).ok());
  Result<SectorPtr> r = client->ReadSync(3);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(**r, *Filled(3));
  EXPECT_GT(client->Stats().bad_frames, 0u);
}

TEST(ClientTest, MalformedFrameAndWrongKindFailOver) {
  FakeNode a(Key(), kSectors, 1), b(Key(), kSectors, 2), c(Key(), kSectors, 3);
  FakeNode::Behaviour garbage, wrong;
  garbage.garbage = true;
  wrong.wrong_kind = true;
  a.SetBehaviour(garbage);
  b.SetBehaviour(wrong);
  auto client = Client::Create(Options({a.port(), b.port(), c.port()}));
  Result<SectorPtr> r = client->ReadSync(5);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_GT(c.requests(), 0u);
  EXPECT_GE(client->Stats().bad_frames, 2u);
}

TEST(ClientTest, WrongKeyOnEveryNodeIsAuthFailure) {
  FakeNode a(std::vector<std::uint8_t>(32, 1), kSectors, 1);
  FakeNode b(std::vector<std::uint8_t>(32, 1), kSectors, 2);
  auto client = Client::Create(Options({a.port(), b.port()}));
  auto t0 = Clock::now();
  Status s = client->WriteSync(1, Filled(1));
  EXPECT_EQ(s.code(), StatusCode::kAuthFailure) << s.ToString();
  EXPECT_NE(s.message().find("client key"), std::string::npos) << s.ToString();
  EXPECT_LT(Clock::now() - t0, milliseconds(2000));  // not the whole op timeout
}

TEST(ClientTest, NoNodeReachableIsUnavailableAfterTheDeadline) {
  ClientOptions o = Options({DeadPort(), DeadPort()});
  o.op_timeout = milliseconds(500);
  auto client = Client::Create(o);
  auto t0 = Clock::now();
  OpResult r = WriteWithSync(*client, 1, Filled(1), OpOptions{});
  auto took = Clock::now() - t0;
  EXPECT_EQ(r.status.code(), StatusCode::kUnavailable) << r.status.ToString();
  EXPECT_NE(r.status.message().find("no node reachable"), std::string::npos);
  EXPECT_NE(r.status.message().find("connection refused"), std::string::npos)
      << r.status.ToString();
  EXPECT_FALSE(r.maybe_applied);  // never sent
  EXPECT_GE(took, milliseconds(450));
  EXPECT_LT(took, milliseconds(2000));
}

TEST(ClientTest, NoQuorumMessageNamesReachableNodes) {
  FakeNode a(Key(), kSectors, 1);
  FakeNode::Behaviour silent;
  silent.silent = true;
  a.SetBehaviour(silent);
  ClientOptions o = Options({a.port(), DeadPort(), DeadPort()});
  o.op_timeout = milliseconds(1000);
  auto client = Client::Create(o);
  Status s = client->WriteSync(1, Filled(1));
  EXPECT_EQ(s.code(), StatusCode::kTimeout) << s.ToString();
  EXPECT_NE(s.message().find("no quorum: the operation did not finish within 1 s; 1 of 3 nodes "
                             "reachable"),
            std::string::npos)
      << s.ToString();
}

TEST(ClientTest, WriteRetryCanBeDisabledAndReportsUnknownOutcome) {
  FakeNode a(Key(), kSectors, 1), b(Key(), kSectors, 2);
  FakeNode::Behaviour silent;
  silent.silent = true;
  a.SetBehaviour(silent);
  auto client = Client::Create(Options({a.port(), b.port()}));
  OpOptions no_retry;
  no_retry.retry_unknown_write = false;
  OpResult r = WriteWithSync(*client, 2, Filled(2), no_retry);
  EXPECT_FALSE(r.status.ok());
  EXPECT_TRUE(r.maybe_applied) << r.status.ToString();
  EXPECT_NE(r.status.message().find("outcome is unknown"), std::string::npos);
  EXPECT_EQ(b.writes_applied(2), 0u);  // not silently retried elsewhere
  // With retries (the default) the same write completes on b.
  OpResult ok = WriteWithSync(*client, 2, Filled(2), OpOptions{});
  EXPECT_TRUE(ok.status.ok()) << ok.status.ToString();
  EXPECT_FALSE(ok.maybe_applied);
  EXPECT_EQ(ok.answered_by, 2);
}

TEST(ClientTest, ReconnectsAfterTheNodeComesBack) {
  FakeNode node(Key(), kSectors);
  auto client = Client::Create(Options({node.port()}));
  ASSERT_TRUE(client->WriteSync(1, Filled(1)).ok());
  node.Stop();
  ASSERT_TRUE(WaitForReachable(*client, 0));
  node.Start();
  Status s = client->WriteSync(1, Filled(2));
  EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_GE(node.connections(), 2u);
  EXPECT_GE(client->Stats().connects, 2u);
}

// A node that accepts connections but answers nothing (cut off from its quorum, or frozen)
// has its connection closed after each attempt timeout. Those closes are not failed connects:
// the client dials again after the shortest backoff, every time, so once the node answers
// again the client is back within about one attempt timeout, not after a backoff grown to
// its cap.
TEST(ClientTest, ASilentNodeIsRedialledAtTheShortestBackoff) {
  FakeNode node(Key(), kSectors);
  FakeNode::Behaviour silent;
  silent.silent = true;
  node.SetBehaviour(silent);
  ClientOptions o = Options({node.port()});
  o.attempt_timeout = milliseconds(100);
  o.reconnect_backoff_min = milliseconds(50);
  o.reconnect_backoff_max = milliseconds(2000);  // the defaults' shape
  o.op_timeout = milliseconds(5000);
  auto client = Client::Create(o);
  std::promise<OpResult> p;
  auto f = p.get_future();
  client->WriteWith(1, Filled(7), OpOptions{}, [&p](OpResult r) { p.set_value(std::move(r)); });
  std::this_thread::sleep_for(milliseconds(2500));
  // 150-200 ms a cycle: at least 10 connections; a backoff doubling from 50 ms to 1.6 s
  // would have made 6 or 7.
  EXPECT_GE(node.connections(), 10u);
  node.SetBehaviour(FakeNode::Behaviour{});
  const auto answering = Clock::now();
  OpResult r = f.get();
  EXPECT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_LT(Clock::now() - answering, milliseconds(1000));
  client->Close();
}

TEST(ClientTest, ProbeReportsInfoRttAndErrors) {
  FakeNode a(Key(), kSectors, 1);
  auto client = Client::Create(Options({a.port(), DeadPort()}));
  std::vector<NodeInfo> info = client->Probe(milliseconds(1000));
  ASSERT_EQ(info.size(), 2u);
  EXPECT_TRUE(info[0].reachable) << info[0].error;
  EXPECT_GT(info[0].rtt_ms, 0);
  EXPECT_NE(info[0].info_json.find("\"version\":\"fake\""), std::string::npos);
  EXPECT_FALSE(info[1].reachable);
  EXPECT_NE(info[1].error.find("connection refused"), std::string::npos) << info[1].error;
}

TEST(ClientTest, ProbeOfASilentNodeTimesOut) {
  FakeNode a(Key(), kSectors, 1);
  FakeNode::Behaviour silent;
  silent.silent = true;
  a.SetBehaviour(silent);
  auto client = Client::Create(Options({a.port()}));
  auto t0 = Clock::now();
  std::vector<NodeInfo> info = client->Probe(milliseconds(300));
  EXPECT_LT(Clock::now() - t0, milliseconds(2000));
  ASSERT_EQ(info.size(), 1u);
  EXPECT_FALSE(info[0].reachable);
  EXPECT_NE(info[0].error.find("probe timeout"), std::string::npos) << info[0].error;
}

TEST(ClientTest, CloseFailsPendingOperationsAndLaterOnes) {
  FakeNode a(Key(), kSectors, 1);
  FakeNode::Behaviour silent;
  silent.silent = true;
  a.SetBehaviour(silent);
  ClientOptions o = Options({a.port()});
  o.op_timeout = milliseconds(60000);
  o.attempt_timeout = milliseconds(60000);
  auto client = Client::Create(o);
  std::promise<Status> p;
  client->Write(1, Filled(1), [&](Status s) { p.set_value(s); });
  client->Close();
  Status s = p.get_future().get();
  EXPECT_EQ(s.code(), StatusCode::kUnavailable);
  EXPECT_EQ(s.message(), "client closed");
  Result<SectorPtr> later = client->ReadSync(1);  // completes inline
  EXPECT_EQ(later.status().code(), StatusCode::kUnavailable);
  client->Close();  // idempotent
}

TEST(ClientTest, CallbacksMayIssueFurtherOperations) {
  FakeNode a(Key(), kSectors, 1);
  auto client = Client::Create(Options({a.port()}));
  std::promise<int> done;
  std::function<void(int)> chain = [&](int left) {
    if (left == 0) return done.set_value(0);
    client->Write(static_cast<SectorIdx>(left), Filled(1), [&, left](Status s) {
      if (!s.ok()) return done.set_value(left);
      chain(left - 1);
    });
  };
  chain(100);
  EXPECT_EQ(done.get_future().get(), 0);
}

TEST(ClientTest, OptionsFromConfigSelectsNodes) {
  ClusterConfig c;
  c.path = "cluster.toml";
  c.sectors = 10;
  c.client_key = Key();
  c.nodes = {{1, "127.0.0.1", 7001, ""}, {2, "127.0.0.1", 7002, ""}, {3, "::1", 7003, ""}};
  Result<ClientOptions> all = OptionsFromConfig(c, {});
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->nodes.size(), 3u);
  EXPECT_EQ(all->cluster_nodes, 3u);
  EXPECT_EQ(all->nodes[2].ToString(), "node 3 ([::1]:7003)");
  Result<ClientOptions> two = OptionsFromConfig(c, {"2", "127.0.0.1:7001"});
  ASSERT_TRUE(two.ok());
  ASSERT_EQ(two->nodes.size(), 2u);
  EXPECT_EQ(two->nodes[0].rank, 2);
  EXPECT_EQ(two->nodes[1].rank, 1);
  Result<ClientOptions> other = OptionsFromConfig(c, {"10.1.1.1:9"});
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(other->nodes[0].rank, 0);
  EXPECT_EQ(other->nodes[0].ToString(), "10.1.1.1:9");
  EXPECT_EQ(OptionsFromConfig(c, {"4"}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(OptionsFromConfig(c, {"nonsense"}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(OptionsFromConfig(c, {"1", "1"}).status().code(), StatusCode::kInvalidArgument);
}

TEST(ClientTest, FormatDuration) {
  EXPECT_EQ(FormatDuration(milliseconds(5000)), "5 s");
  EXPECT_EQ(FormatDuration(milliseconds(1500)), "1.5 s");
  EXPECT_EQ(FormatDuration(milliseconds(300)), "300 ms");
}

// --- Extents (docs/PROTOCOL.md, "Extents") ---------------------------------------------------

OpResult Await(const std::function<void(Client::OpCallback)>& start) {
  auto p = std::make_shared<std::promise<OpResult>>();
  auto f = p->get_future();
  start([p](OpResult r) { p->set_value(std::move(r)); });
  return f.get();
}

std::vector<SectorPtr> Sectors(std::uint32_t count, std::uint8_t base) {
  std::vector<SectorPtr> v;
  for (std::uint32_t i = 0; i < count; ++i)
    v.push_back(Filled(static_cast<std::uint8_t>(base + i)));
  return v;
}

// A node that lists "extents": one command per extent, and the sectors it reports not done
// are written or read again one by one.
TEST(ClientTest, ExtentsGoAsOneCommandAndNotDoneSectorsAreRetriedAlone) {
  FakeNode node(Key(), kSectors);
  FakeNode::Behaviour b;
  b.extents = true;
  b.not_done_every = 5;
  node.SetBehaviour(b);
  auto client = Client::Create(Options({node.port()}));
  OpResult w = Await([&](Client::OpCallback cb) {
    client->WriteExtentWith(100, Sectors(kMaxExtentSectors, 3), OpOptions{}, std::move(cb));
  });
  ASSERT_TRUE(w.status.ok()) << w.status.ToString();
  EXPECT_EQ(node.extent_requests(), 1u);
  for (std::uint32_t i = 0; i < kMaxExtentSectors; ++i) {
    ASSERT_NE(node.Get(100 + i), nullptr) << i;
    EXPECT_EQ(*node.Get(100 + i), *Filled(static_cast<std::uint8_t>(3 + i))) << i;
  }
  OpResult r = Await([&](Client::OpCallback cb) {
    client->ReadExtentWith(100, kMaxExtentSectors, OpOptions{}, std::move(cb));
  });
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  ASSERT_EQ(r.sectors.size(), kMaxExtentSectors);
  for (std::uint32_t i = 0; i < kMaxExtentSectors; ++i) {
    ASSERT_NE(r.sectors[i], nullptr) << i;
    EXPECT_EQ(*r.sectors[i], *Filled(static_cast<std::uint8_t>(3 + i))) << i;
  }
  OpResult z = Await(
      [&](Client::OpCallback cb) { client->WriteZerosWith(110, 20, OpOptions{}, std::move(cb)); });
  ASSERT_TRUE(z.status.ok()) << z.status.ToString();
  EXPECT_EQ(node.extent_requests(), 3u);
  EXPECT_EQ(*node.Get(115), *ZeroSector());
  EXPECT_EQ(*node.Get(130), *Filled(static_cast<std::uint8_t>(3 + 30)));
}

// Nodes without the feature: an older atomdisk (Info without "extents") and an atdd node
// (closes the connection on Info). Extents then run as single-sector commands, correctly.
TEST(ClientTest, ExtentsFallBackToSingleSectorsOnNodesWithout) {
  for (bool atdd : {false, true}) {
    SCOPED_TRACE(atdd ? "atdd node" : "older atomdisk node");
    FakeNode node(Key(), kSectors);
    FakeNode::Behaviour b;
    b.atdd = atdd;
    node.SetBehaviour(b);
    auto client = Client::Create(Options({node.port()}));
    OpResult w = Await([&](Client::OpCallback cb) {
      client->WriteExtentWith(10, Sectors(40, 9), OpOptions{}, std::move(cb));
    });
    ASSERT_TRUE(w.status.ok()) << w.status.ToString();
    OpResult r = Await(
        [&](Client::OpCallback cb) { client->ReadExtentWith(10, 40, OpOptions{}, std::move(cb)); });
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
    ASSERT_EQ(r.sectors.size(), 40u);
    for (std::uint32_t i = 0; i < 40; ++i) {
      EXPECT_EQ(*r.sectors[i], *Filled(static_cast<std::uint8_t>(9 + i))) << i;
    }
    EXPECT_EQ(node.extent_requests(), 0u);
    // The client asked once (one probe), not at every extent: an atdd node dropped one
    // connection at most.
    EXPECT_LE(node.connections(), 2u);
  }
}

// Fast failover (docs/CLIENT.md): a node that answers an extent "not done" for every sector
// (it reaches no quorum) is left at once for another node, and demoted, so the next
// operations go elsewhere first. Lone reads and writes go as extents of one sector, so they
// fail over the same way. The attempt timeout is far beyond the op's deadline here: an op
// that waited for it would fail.
TEST(ClientTest, ANodeWithoutAQuorumIsLeftAtOnce) {
  FakeNode cut(Key(), kSectors, 1), good(Key(), kSectors, 2);
  FakeNode::Behaviour b;
  b.extents = true;
  good.SetBehaviour(b);
  cut.SetBehaviour(b);
  ClientOptions o = Options({cut.port(), good.port()});
  o.attempt_timeout = milliseconds(60000);
  o.op_timeout = milliseconds(2000);
  auto client = Client::Create(o);
  // Connections are made on first use: one read while node 1 still serves, so that both are
  // up and node 1, the first configured, is picked next.
  ASSERT_TRUE(client->ReadSync(0).ok());
  ASSERT_TRUE(WaitForReachable(*client, 2));
  const std::uint64_t before = cut.extent_requests();
  b.no_quorum = true;
  cut.SetBehaviour(b);
  OpResult w = WriteWithSync(*client, 7, Filled(0x5a), OpOptions{});
  ASSERT_TRUE(w.status.ok()) << w.status.ToString();
  EXPECT_EQ(w.answered_by, 2);
  EXPECT_EQ(w.attempts, 2);
  EXPECT_EQ(cut.extent_requests(), before + 1);
  EXPECT_EQ(cut.writes_applied(7), 0u);
  EXPECT_EQ(good.writes_applied(7), 1u);
  EXPECT_EQ(*good.Get(7), *Filled(0x5a));
  // The refusing node is demoted: what follows goes to the other node first.
  OpResult r =
      Await([&](Client::OpCallback cb) { client->ReadWith(7, OpOptions{}, std::move(cb)); });
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  ASSERT_NE(r.data, nullptr);
  EXPECT_EQ(*r.data, *Filled(0x5a));
  EXPECT_TRUE(r.sectors.empty());
  OpResult e = Await([&](Client::OpCallback cb) {
    client->WriteExtentWith(40, Sectors(16, 1), OpOptions{}, std::move(cb));
  });
  ASSERT_TRUE(e.status.ok()) << e.status.ToString();
  EXPECT_EQ(e.attempts, 1);
  EXPECT_EQ(cut.extent_requests(), before + 1);
  EXPECT_GE(good.extent_requests(), 3u);
}

// Every node refuses (no quorum anywhere): the op is tried round after round with growing
// pauses, not in a tight loop, and fails at its deadline with "no quorum", known not applied.
TEST(ClientTest, WhenEveryNodeRefusesTheOpFailsAtItsDeadlineWithNoQuorum) {
  FakeNode n1(Key(), kSectors, 1), n2(Key(), kSectors, 2);
  FakeNode::Behaviour b;
  b.extents = true;
  b.no_quorum = true;
  n1.SetBehaviour(b);
  n2.SetBehaviour(b);
  ClientOptions o = Options({n1.port(), n2.port()});
  o.attempt_timeout = milliseconds(60000);
  o.op_timeout = milliseconds(700);
  auto client = Client::Create(o);
  const auto start = Clock::now();
  OpResult w = WriteWithSync(*client, 3, Filled(1), OpOptions{});
  EXPECT_GE(Clock::now() - start, milliseconds(650));
  EXPECT_EQ(w.status.code(), StatusCode::kTimeout) << w.status.ToString();
  EXPECT_NE(w.status.message().find("no quorum"), std::string::npos) << w.status.ToString();
  EXPECT_NE(w.status.message().find("reaches no quorum"), std::string::npos) << w.status.ToString();
  EXPECT_FALSE(w.maybe_applied);
  // Pauses of 20, 40, 80, 160, 320 ms after each round of two: about a dozen tries in 0.7 s,
  // where a tight loop would make thousands.
  const std::uint64_t tries = n1.extent_requests() + n2.extent_requests();
  EXPECT_GE(tries, 4u);
  EXPECT_LE(tries, 16u);
  EXPECT_EQ(n1.writes_applied(3), 0u);
  EXPECT_EQ(n2.writes_applied(3), 0u);
}

TEST(ClientTest, BadExtentsAreInvalidArgument) {
  FakeNode node(Key(), kSectors);
  auto client = Client::Create(Options({node.port()}));
  for (auto [first, count] : {std::pair<SectorIdx, std::uint32_t>{0, 0},
                              {0, kMaxExtentSectors + 1},
                              {kSectors - 2, 3},
                              {kSectors, 1}}) {
    OpResult r = Await([&](Client::OpCallback cb) {
      client->ReadExtentWith(first, count, OpOptions{}, std::move(cb));
    });
    EXPECT_EQ(r.status.code(), StatusCode::kInvalidArgument) << first << "+" << count;
    EXPECT_FALSE(r.maybe_applied);
  }
  OpResult w = Await(
      [&](Client::OpCallback cb) { client->WriteExtentWith(0, {}, OpOptions{}, std::move(cb)); });
  EXPECT_EQ(w.status.code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace atomdisk::client
