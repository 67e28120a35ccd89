// The client library against real atomdiskd clusters on loopback (tests/harness): round
// trips across nodes, failover while the preferred node is killed, the no-quorum error, and
// a linearizability check of a concurrent history recorded under a node crash.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <future>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>
#include <vector>

#include "client/client.h"
#include "common/lincheck.h"
#include "tests/harness/cluster.h"

namespace atomdisk::client {
namespace {

using std::chrono::milliseconds;
using testing::TestCluster;

#define REQUIRE_DAEMON()                                                    \
  if (!TestCluster::DaemonAvailable()) {                                    \
    GTEST_SKIP() << "atomdiskd not built at " << TestCluster::DaemonPath(); \
  }

std::unique_ptr<TestCluster> StartCluster(int nodes = 3, std::uint64_t sectors = 4096) {
  testing::TestClusterOptions o;
  o.nodes = nodes;
  o.sectors = sectors;
  auto c = TestCluster::Start(o);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? std::move(c).value() : nullptr;
}

std::unique_ptr<Client> Connect(const TestCluster& c, std::vector<std::string> nodes = {},
                                milliseconds op_timeout = milliseconds(5000)) {
  Result<ClientOptions> o = OptionsFromConfig(c.config(), nodes);
  EXPECT_TRUE(o.ok()) << o.status().ToString();
  o->op_timeout = op_timeout;
  o->attempt_timeout = milliseconds(1000);
  return Client::Create(*o);
}

// Closes a client when the test body leaves (also through a failed ASSERT), before the
// locals its callbacks use go away: declare it after them.
struct CloseOnExit {
  Client* client;
  ~CloseOnExit() { client->Close(); }
};

SectorPtr Pattern(std::uint64_t seed) {
  auto s = std::make_shared<SectorData>();
  std::mt19937_64 rng(seed);
  for (auto& b : *s) b = static_cast<std::uint8_t>(rng());
  return s;
}

TEST(ClientClusterTest, WritesThroughOneNodeReadThroughAnother) {
  REQUIRE_DAEMON();
  auto cluster = StartCluster();
  ASSERT_NE(cluster, nullptr);
  auto via1 = Connect(*cluster, {"1"});
  auto via3 = Connect(*cluster, {"3"});
  for (SectorIdx s : {0ull, 1ull, 77ull, 4095ull}) {
    Status w = via1->WriteSync(s, Pattern(s));
    ASSERT_TRUE(w.ok()) << w.ToString();
    Result<SectorPtr> r = via3->ReadSync(s);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(**r, *Pattern(s)) << "sector " << s;
  }
  Result<SectorPtr> unwritten = via3->ReadSync(5);
  ASSERT_TRUE(unwritten.ok());
  EXPECT_EQ(**unwritten, *ZeroSector());
  Result<SectorPtr> outside = via1->ReadSync(4096);
  EXPECT_EQ(outside.status().code(), StatusCode::kInvalidArgument);
  std::vector<NodeInfo> probe = via1->Probe(milliseconds(2000));
  ASSERT_EQ(probe.size(), 1u);
  EXPECT_TRUE(probe[0].reachable) << probe[0].error;
  EXPECT_NE(probe[0].info_json.find("\"version\""), std::string::npos) << probe[0].info_json;
}

TEST(ClientClusterTest, KeepsWorkingWhileThePreferredNodeIsKilled) {
  REQUIRE_DAEMON();
  auto cluster = StartCluster();
  ASSERT_NE(cluster, nullptr);
  // Sanitizer-built daemons run several times slower on two cores: a smaller load keeps the
  // test about failover, not about how fast a TSan build drains 3000 writes.
  const bool slow = testing::UnderSanitizer();
  const int ops = slow ? 900 : 3000;
  constexpr int kSectors = 512;
  auto client = Connect(*cluster, {}, milliseconds(slow ? 30000 : 5000));
  std::mutex mu;
  std::condition_variable cv;
  int done = 0, failed = 0;
  std::string first_error;
  // Invocation and response order of each write (one counter for both), to tell which
  // writes of a sector the final read may return.
  std::atomic<std::uint64_t> clock{0};
  std::vector<std::uint64_t> invoked(ops), responded(ops);
  CloseOnExit closer{client.get()};
  for (int i = 0; i < ops; ++i) {
    invoked[i] = clock.fetch_add(1);
    client->Write(static_cast<SectorIdx>(i % kSectors), Pattern(i), [&, i](Status s) {
      std::lock_guard<std::mutex> lock(mu);
      responded[i] = clock.fetch_add(1);
      ++done;
      if (!s.ok()) {
        ++failed;
        if (first_error.empty()) first_error = s.ToString();
      }
      cv.notify_all();
    });
    if (i == ops / 3) {
      // Kill once a good part of the load went through node 1.
      std::unique_lock<std::mutex> lock(mu);
      ASSERT_TRUE(cv.wait_for(lock, milliseconds(30000), [&] { return done >= ops / 6; }));
      lock.unlock();
      ASSERT_TRUE(cluster->Kill9(1).ok());
    }
  }
  std::unique_lock<std::mutex> lock(mu);
  ASSERT_TRUE(cv.wait_for(lock, milliseconds(90000), [&] { return done == ops; }));
  ASSERT_EQ(failed, 0) << first_error;
  lock.unlock();
  // Everything is readable through the survivors. Writes to one sector overlap (up to
  // max_inflight are on the wire, and a write cut off by the kill is retried), so the read
  // returns one the linearizable outcomes: a write of that sector that no other write of it
  // began after (the last one issued is always among them).
  for (int s = 0; s < kSectors; s += 37) {
    std::vector<int> writes;
    for (int i = s; i < ops; i += kSectors) writes.push_back(i);
    Result<SectorPtr> r = client->ReadSync(static_cast<SectorIdx>(s));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    bool allowed = false;
    for (int j : writes) {
      bool superseded = false;
      for (int k : writes) superseded = superseded || invoked[k] > responded[j];
      if (!superseded && **r == *Pattern(j)) allowed = true;
    }
    EXPECT_TRUE(allowed) << "sector " << s << " holds no write that could have been last";
  }
  EXPECT_GT(client->Stats().connection_drops, 0u);
}

// Extent commands through real daemons: 1 MiB writes and reads, each sector readable alone
// at another node, and extents keep working while the preferred node is killed.
TEST(ClientClusterTest, ExtentsRoundTripAndFailOver) {
  REQUIRE_DAEMON();
  auto cluster = StartCluster(3, 8192);
  ASSERT_NE(cluster, nullptr);
  auto client = Connect(*cluster, {}, milliseconds(testing::UnderSanitizer() ? 30000 : 10000));
  CloseOnExit closer{client.get()};
  auto await = [](const std::function<void(Client::OpCallback)>& start) {
    auto p = std::make_shared<std::promise<OpResult>>();
    auto f = p->get_future();
    start([p](OpResult r) { p->set_value(std::move(r)); });
    return f.get();
  };
  constexpr int kExtents = 24;
  for (int e = 0; e < kExtents; ++e) {
    if (e == kExtents / 2) {
      // Node 1 coordinated the first half as extent commands: one client op per extent (plus
      // Info probes, the harness's included), not one per sector; one register write per
      // sector.
      std::vector<NodeInfo> info = Connect(*cluster, {"1"})->Probe(milliseconds(5000));
      ASSERT_EQ(info.size(), 1u);
      auto j = nlohmann::json::parse(info[0].info_json, nullptr, false);
      ASSERT_TRUE(j.is_object()) << info[0].info_json;
      EXPECT_LE(j["counters"]["client_ops"].get<std::uint64_t>(), 100u);
      EXPECT_GE(j["counters"]["writes"].get<std::uint64_t>(), kExtents / 2 * kMaxExtentSectors);
      ASSERT_TRUE(cluster->Kill9(1).ok());
    }
    std::vector<SectorPtr> data;
    for (std::uint32_t i = 0; i < kMaxExtentSectors; ++i) {
      data.push_back(Pattern(static_cast<std::uint64_t>(e) * kMaxExtentSectors + i));
    }
    OpResult w = await([&](Client::OpCallback cb) {
      client->WriteExtentWith(static_cast<SectorIdx>(e) * kMaxExtentSectors, std::move(data),
                              OpOptions{}, std::move(cb));
    });
    ASSERT_TRUE(w.status.ok()) << "extent " << e << ": " << w.status.ToString();
  }
  auto via3 = Connect(*cluster, {"3"});
  for (int e = 0; e < kExtents; ++e) {
    const SectorIdx first = static_cast<SectorIdx>(e) * kMaxExtentSectors;
    OpResult r = await([&](Client::OpCallback cb) {
      client->ReadExtentWith(first, kMaxExtentSectors, OpOptions{}, std::move(cb));
    });
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
    ASSERT_EQ(r.sectors.size(), kMaxExtentSectors);
    for (std::uint32_t i = 0; i < kMaxExtentSectors; ++i) {
      ASSERT_EQ(*r.sectors[i], *Pattern(first + i)) << "sector " << first + i;
    }
    Result<SectorPtr> one = via3->ReadSync(first + static_cast<SectorIdx>(e));
    ASSERT_TRUE(one.ok()) << one.status().ToString();
    EXPECT_EQ(**one, *Pattern(first + static_cast<SectorIdx>(e)));
  }
  via3->Close();
}

TEST(ClientClusterTest, NoQuorumIsAClearTimeout) {
  REQUIRE_DAEMON();
  auto cluster = StartCluster();
  ASSERT_NE(cluster, nullptr);
  auto client = Connect(*cluster, {}, milliseconds(2000));
  ASSERT_TRUE(client->WriteSync(1, Pattern(1)).ok());
  ASSERT_TRUE(cluster->Kill9(2).ok());
  ASSERT_TRUE(cluster->Kill9(3).ok());
  auto t0 = std::chrono::steady_clock::now();
  Status s = client->WriteSync(1, Pattern(2));
  auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_EQ(s.code(), StatusCode::kTimeout) << s.ToString();
  EXPECT_NE(s.message().find("no quorum: the operation did not finish within 2 s; 1 of 3 nodes "
                             "reachable"),
            std::string::npos)
      << s.ToString();
  EXPECT_LT(took, milliseconds(4000));
  // Quorum back: the client recovers by itself.
  ASSERT_TRUE(cluster->StartNode(2).ok());
  Status again = client->WriteSync(1, Pattern(3));
  EXPECT_TRUE(again.ok()) << again.ToString();
}

// Concurrent writers and readers on a few sectors, one history, node 1 killed and restarted
// in the middle; writes are never retried silently (unknown outcomes are recorded as such).
TEST(ClientClusterTest, HistoryUnderANodeCrashIsLinearizable) {
  REQUIRE_DAEMON();
  auto cluster = StartCluster();
  ASSERT_NE(cluster, nullptr);
  auto client = Connect(*cluster);
  constexpr int kClients = 12;
  constexpr int kOpsPerClient = 400;
  constexpr SectorIdx kKeys = 4;
  std::mutex mu;
  std::condition_variable cv;
  std::vector<HistoryOp> history;
  std::atomic<std::uint64_t> next_value{1};
  int finished = 0;
  std::atomic<int> completed{0};
  auto now_ns = [] {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  };
  std::function<void(int, int, std::uint64_t)> step = [&](int c, int left, std::uint64_t seed) {
    if (left == 0) {
      std::lock_guard<std::mutex> lock(mu);
      ++finished;
      cv.notify_all();
      return;
    }
    std::mt19937_64 rng(seed);
    SectorIdx key = rng() % kKeys;
    HistoryOp op;
    op.client = static_cast<std::uint64_t>(c);
    op.key = key;
    op.call_ns = now_ns();
    auto record = [&, c, left, seed](HistoryOp op, const OpResult& r) {
      op.return_ns = now_ns();
      op.outcome = r.status.ok() ? HistoryOp::Outcome::kOk
                   : (op.kind == HistoryOp::Kind::kWrite && !r.maybe_applied)
                       ? HistoryOp::Outcome::kFailed
                       : HistoryOp::Outcome::kUnknown;
      {
        std::lock_guard<std::mutex> lock(mu);
        history.push_back(op);
      }
      ++completed;
      step(c, left - 1, seed * 6364136223846793005ULL + 1442695040888963407ULL);
    };
    if (rng() % 2 == 0) {
      std::uint64_t v = next_value++;
      auto data = std::make_shared<SectorData>();
      data->fill(0);
      std::memcpy(data->data(), &v, sizeof v);
      op.kind = HistoryOp::Kind::kWrite;
      op.value = std::to_string(v);
      OpOptions o;
      o.retry_unknown_write = false;
      client->WriteWith(key, data, o, [record, op](OpResult r) { record(op, r); });
    } else {
      op.kind = HistoryOp::Kind::kRead;
      client->ReadWith(key, OpOptions{}, [record, op](OpResult r) mutable {
        if (r.status.ok()) {
          std::uint64_t v = 0;
          std::memcpy(&v, r.data->data(), sizeof v);
          op.value = v == 0 ? "" : std::to_string(v);
        }
        record(op, r);
      });
    }
  };
  CloseOnExit closer{client.get()};
  for (int c = 0; c < kClients; ++c) step(c, kOpsPerClient, 1000 + static_cast<std::uint64_t>(c));
  ASSERT_TRUE(testing::WaitFor([&] { return completed.load() >= kClients * kOpsPerClient / 4; },
                               milliseconds(60000)));
  ASSERT_TRUE(cluster->Kill9(1).ok());
  ASSERT_TRUE(testing::WaitFor([&] { return completed.load() >= kClients * kOpsPerClient / 2; },
                               milliseconds(60000)));
  ASSERT_TRUE(cluster->StartNode(1).ok());
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, milliseconds(120000), [&] { return finished == kClients; }));
  }
  client->Close();
  std::size_t ok = 0;
  for (const auto& op : history) ok += op.outcome == HistoryOp::Outcome::kOk ? 1 : 0;
  EXPECT_GT(ok, history.size() / 2);
  LinCheckResult result = CheckLinearizable(history);
  EXPECT_EQ(result.verdict, LinCheckResult::Verdict::kLinearizable)
      << "key " << result.bad_key << ": " << result.explanation;
}

}  // namespace
}  // namespace atomdisk::client
