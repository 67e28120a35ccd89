// atomdiskd's GET /metrics (issue 19) on real daemons: the counters move by what a known load
// implies, promtool accepts a live scrape, and hostile HTTP gets a 4xx while the node serves.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "common/build_info.h"
#include "tests/daemon/daemon_test_util.h"
#include "tests/harness/http.h"

namespace atomdisk::itest {
namespace {

using atomdisk::testing::HttpExchange;
using atomdisk::testing::ParseSamples;
using atomdisk::testing::Samples;
using atomdisk::testing::ScrapeMetrics;
using atomdisk::testing::Value;
using atomdisk::testing::WaitFor;

class MetricsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    cluster_ =
        std::make_unique<LiveCluster>(3, TestClusterOptions{.sectors = 65536, .metrics = true});
    ASSERT_TRUE(cluster_->ok());
  }
  std::uint16_t MetricsPort(int rank) {
    return cluster_->harness().config().FindNode(static_cast<Rank>(rank))->metrics_port;
  }
  Samples Scrape(int rank) {
    auto text = ScrapeMetrics(MetricsPort(rank));
    EXPECT_TRUE(text.ok()) << text.status().ToString();
    return text.ok() ? ParseSamples(*text) : Samples{};
  }
  std::unique_ptr<LiveCluster> cluster_;
};

SectorPtr Filled(std::uint8_t byte) {
  auto d = std::make_shared<SectorData>();
  d->fill(byte);
  return d;
}

TEST_F(MetricsTest, CountersMoveByTheLoad) {
  constexpr int kWrites = 120, kReads = 80, kBadTags = 3;
  const Samples before1 = Scrape(1);
  const Samples before2 = Scrape(2);
  ASSERT_FALSE(before1.empty());
  auto c = cluster_->Connect(1);
  ASSERT_NE(c, nullptr);
  for (int i = 0; i < kWrites; ++i) {
    ASSERT_TRUE(c->Write(1000 + i, Filled(static_cast<std::uint8_t>(i))).ok());
  }
  for (int i = 0; i < kReads; ++i) ASSERT_TRUE(c->Read(1000 + i).ok());
  // Two reads beyond the device, refused.
  for (int i = 0; i < 2; ++i) {
    auto r = c->Call(ClientCommand{.request_id = 77u + i, .sector = cluster_->sectors() + i});
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->status, ResponseStatus::kInvalidSectorIndex);
  }
  // Commands signed with a wrong key: AuthFailure answers, counted.
  auto bad = cluster_->Connect(1);
  ASSERT_NE(bad, nullptr);
  std::vector<std::uint8_t> wrong_key(kClientKeySize, 0x5a);
  for (int i = 0; i < kBadTags; ++i) {
    ASSERT_TRUE(
        bad->SendSignedWith(ClientCommand{.request_id = 900u + i, .sector = 1}, wrong_key).ok());
  }
  for (int i = 0; i < kBadTags; ++i) ASSERT_TRUE(bad->ReadFrame().ok());

  // Counted where they happen: before the answer left the node.
  Samples after1 = Scrape(1);
  auto delta = [&](const std::string& key) { return Value(after1, key) - Value(before1, key); };
  const std::string w = "{op=\"write\"", r = "{op=\"read\"";
  EXPECT_EQ(delta("atomdisk_client_requests_total" + w + ",outcome=\"ok\"}"), kWrites);
  EXPECT_EQ(delta("atomdisk_client_requests_total" + r + ",outcome=\"ok\"}"), kReads);
  EXPECT_EQ(delta("atomdisk_client_requests_total" + r + ",outcome=\"invalid_sector\"}"), 2);
  EXPECT_EQ(delta("atomdisk_client_bytes_total" + w + "}"), kWrites * 4096.0);
  EXPECT_EQ(delta("atomdisk_client_bytes_total" + r + "}"), kReads * 4096.0);
  EXPECT_EQ(delta("atomdisk_client_request_duration_seconds_count" + w + "}"), kWrites);
  EXPECT_EQ(delta("atomdisk_client_request_duration_seconds_count" + r + "}"), kReads);
  EXPECT_GT(delta("atomdisk_client_request_duration_seconds_sum" + w + "}"), 0);
  EXPECT_EQ(delta("atomdisk_client_request_duration_seconds_bucket" + w + ",le=\"+Inf\"}"),
            kWrites);
  // Every write was stored here once at least (reads may write back too), each covered by a
  // group commit whose fdatasync was timed.
  EXPECT_GE(delta("atomdisk_store_write_duration_seconds_count"), kWrites);
  EXPECT_GE(delta("atomdisk_store_group_commit_sectors_sum"), kWrites);
  EXPECT_GE(delta("atomdisk_store_fdatasync_duration_seconds_count"), 1);
  EXPECT_LE(delta("atomdisk_store_fdatasync_duration_seconds_count"),
            delta("atomdisk_store_group_commit_sectors_sum"));

  // Published by the io thread every 100 ms: wait for the snapshot to catch up.
  ASSERT_TRUE(WaitFor(
      [&] {
        after1 = Scrape(1);
        return delta("atomdisk_auth_failures_total") == kBadTags;
      },
      std::chrono::seconds(5)))
      << "auth failures moved by " << delta("atomdisk_auth_failures_total");
  EXPECT_EQ(Value(after1, "atomdisk_client_requests_in_flight"), 0);
  // One operation at a time, each on a sector of its own: none ever waited for another.
  EXPECT_EQ(Value(after1, "atomdisk_client_requests_queued"), 0);
  EXPECT_EQ(delta("atomdisk_client_requests_queued_total"), 0);
  EXPECT_EQ(Value(after1, "atomdisk_voting"), 1);
  EXPECT_EQ(Value(after1, "atomdisk_peer_up{peer=\"2\"}"), 1);
  EXPECT_EQ(Value(after1, "atomdisk_peer_up{peer=\"3\"}"), 1);
  EXPECT_GE(Value(after1, "atomdisk_peer_connects_total{peer=\"2\"}"), 1);
  EXPECT_GE(Value(after1, "atomdisk_peer_last_heard_seconds{peer=\"2\"}"), 0);
  EXPECT_EQ(Value(after1, "atomdisk_node_rank"), 1);
  EXPECT_EQ(Value(after1, "atomdisk_bad_frames_total"), 0);

  // The peers stored the writes too and heard node 1's messages. The message counters come
  // from node 2's 100 ms snapshot as well, so wait for it.
  Samples after2;
  auto delta2 = [&](const std::string& key) { return Value(after2, key) - Value(before2, key); };
  EXPECT_TRUE(WaitFor(
      [&] {
        after2 = Scrape(2);
        return delta2("atomdisk_system_messages_total") > kWrites;
      },
      std::chrono::seconds(5)))
      << "node 2 heard " << delta2("atomdisk_system_messages_total") << " system messages";
  EXPECT_GE(delta2("atomdisk_store_group_commit_sectors_sum"),
            kWrites / 2);  // node 2 or 3 may miss some (a majority suffices), not most
  // It coordinated nothing.
  EXPECT_EQ(Value(after2, "atomdisk_client_requests_total{op=\"write\",outcome=\"ok\"}"),
            Value(before2, "atomdisk_client_requests_total{op=\"write\",outcome=\"ok\"}"));
}

// Many writes at once to one sector: its register coordinates one at a time, so the rest
// wait, and the queued gauge shows them (at most the batch less the one in progress) while
// the in-flight gauge counts them too; once the load stops both are 0 again.
TEST_F(MetricsTest, WritesToOneSectorQueue) {
  constexpr int kBatch = 32;
  constexpr SectorIdx kSector = 4242;
  const Samples before = Scrape(1);
  std::atomic<int> batches{0};
  std::atomic<bool> load_failed{false};
  StoppableThreads load;
  load.Spawn([&] {
    auto c = cluster_->Connect(1);
    if (!c) {
      load_failed = true;
      return;
    }
    while (!load.stopping()) {
      // The whole batch pipelined on one connection, then every answer.
      for (int i = 0; i < kBatch; ++i) {
        ClientCommand cmd{.request_id = c->NextRequestId(),
                          .sector = kSector,
                          .op = ClientOp::kWrite,
                          .data = Filled(static_cast<std::uint8_t>(i))};
        if (!c->Send(cmd).ok()) {
          load_failed = true;
          return;
        }
      }
      for (int i = 0; i < kBatch; ++i) {
        auto r = c->ReadResponse();
        if (!r.ok() || r->status != ResponseStatus::kOk) {
          load_failed = true;
          return;
        }
      }
      ++batches;
    }
  });
  double max_queued = 0;
  ASSERT_TRUE(WaitFor(
      [&] {
        const Samples s = Scrape(1);
        const double queued = Value(s, "atomdisk_client_requests_queued");
        const double in_flight = Value(s, "atomdisk_client_requests_in_flight");
        // Both from one 100 ms snapshot: the queued ones are in flight too.
        EXPECT_LE(queued, in_flight);
        EXPECT_LE(queued, kBatch - 1);
        EXPECT_LE(in_flight, kBatch);
        max_queued = std::max(max_queued, queued);
        return max_queued > 0 || load_failed;
      },
      std::chrono::seconds(20)))
      << "no queue seen in 20 s";
  load.StopAndJoin();
  ASSERT_FALSE(load_failed);
  EXPECT_GT(max_queued, 0);
  Samples after;
  ASSERT_TRUE(WaitFor(
      [&] {
        after = Scrape(1);
        return Value(after, "atomdisk_client_requests_in_flight") == 0;
      },
      std::chrono::seconds(5)));
  EXPECT_EQ(Value(after, "atomdisk_client_requests_queued"), 0);
  // Every write but the first of each batch may have waited; at least the ones seen waiting.
  const double waited = Value(after, "atomdisk_client_requests_queued_total") -
                        Value(before, "atomdisk_client_requests_queued_total");
  const double writes =
      Value(after, "atomdisk_client_requests_total{op=\"write\",outcome=\"ok\"}") -
      Value(before, "atomdisk_client_requests_total{op=\"write\",outcome=\"ok\"}");
  EXPECT_EQ(writes, batches * kBatch);
  EXPECT_GE(waited, max_queued);
  EXPECT_LE(waited, batches * (kBatch - 1));
}

TEST_F(MetricsTest, PeerDownShowsAndReconnectCounts) {
  ASSERT_TRUE(WaitFor([&] { return Value(Scrape(1), "atomdisk_peer_up{peer=\"3\"}") == 1; },
                      std::chrono::seconds(5)));
  const double connects = Value(Scrape(1), "atomdisk_peer_connects_total{peer=\"3\"}");
  ASSERT_TRUE(cluster_->Kill9(3));
  EXPECT_TRUE(WaitFor([&] { return Value(Scrape(1), "atomdisk_peer_up{peer=\"3\"}") == 0; },
                      std::chrono::seconds(5)));
  ASSERT_TRUE(cluster_->StartNode(3));
  EXPECT_TRUE(WaitFor(
      [&] {
        Samples s = Scrape(1);
        return Value(s, "atomdisk_peer_up{peer=\"3\"}") == 1 &&
               Value(s, "atomdisk_peer_connects_total{peer=\"3\"}") == connects + 1;
      },
      std::chrono::seconds(10)));
}

TEST_F(MetricsTest, BuildInfoNamesTheVersion) {
  auto text = ScrapeMetrics(MetricsPort(2));
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  EXPECT_NE(text->find("atomdisk_build_info{version=\"0."), std::string::npos) << *text;
  // The revision --version prints, taken at build time (tests/scripts/build_info_test.sh
  // checks it against git).
  EXPECT_NE(BuildRevision(), std::string());
  EXPECT_NE(text->find(",revision=\"" + std::string(BuildRevision()) + "\""), std::string::npos)
      << *text;
  EXPECT_NE(text->find("# TYPE atomdisk_client_request_duration_seconds histogram"),
            std::string::npos);
}

// promtool (Debian's prometheus package; scripts/install-deps.sh installs it) lints a scrape
// taken while the node is busy.
TEST_F(MetricsTest, PromtoolAcceptsALiveScrape) {
  if (::access("/usr/bin/promtool", X_OK) != 0) {
    GTEST_SKIP() << "promtool not installed (apt-get install prometheus, or "
                    "scripts/install-deps.sh)";
  }
  StoppableThreads load;
  load.Spawn([&] {
    auto c = cluster_->Connect(1);
    if (!c) return;
    for (int i = 0; !load.stopping(); ++i) {
      if (!c->Write(i % 512, Filled(static_cast<std::uint8_t>(i))).ok()) return;
    }
  });
  ASSERT_TRUE(WaitFor(
      [&] {
        return Value(Scrape(1), "atomdisk_client_requests_total{op=\"write\",outcome=\"ok\"}") > 50;
      },
      std::chrono::seconds(10)));
  auto text = ScrapeMetrics(MetricsPort(1));
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  const std::string path = cluster_->dir() + "/scrape.txt";
  std::ofstream(path) << *text;
  auto result =
      atomdisk::testing::RunProcess({"/bin/sh", "-c", "promtool check metrics < " + path});
  EXPECT_EQ(result.exit_code, 0) << result.Describe() << "\n" << result.out;
}

TEST_F(MetricsTest, HostileRequestsGet4xxAndTheNodeServesOn) {
  const std::uint16_t port = MetricsPort(1);
  auto expect_status = [&](const std::string& request, int status, const char* what) {
    auto a = HttpExchange(port, request);
    ASSERT_TRUE(a.ok()) << what << ": " << a.status().ToString();
    EXPECT_EQ(a->status, status) << what << ": " << a->head;
  };
  expect_status("GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404, "other path");
  expect_status(
      "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: "
      "close\r\n\r\n",
      405, "POST");
  expect_status("GARBAGE\r\n\r\n", 400, "no request line");
  expect_status("GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n", 400,
                "bad Content-Length");
  expect_status(
      "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(20000, 'a') + "\r\n\r\n", 431,
      "20 kB header");
  expect_status("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nabc", 413,
                "1 MB body");
  {
    auto head =
        HttpExchange(port, "HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    ASSERT_TRUE(head.ok()) << head.status().ToString();
    EXPECT_EQ(head->status, 200);
    EXPECT_TRUE(head->body.empty());
    EXPECT_NE(head->head.find("version=0.0.4"), std::string::npos) << head->head;
  }
  // Idle connections past the cap: the node serves on, scrapes work again once they close.
  std::vector<int> idle;
  for (int i = 0; i < 20; ++i) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    idle.push_back(fd);
  }
  EXPECT_TRUE(ServesWriteAndRead(*cluster_, 1, 7, 42));
  for (int fd : idle) ::close(fd);
  EXPECT_TRUE(WaitFor([&] { return ScrapeMetrics(port).ok(); }, std::chrono::seconds(3)));
  // And after all of it, the data path is untouched.
  EXPECT_TRUE(ServesWriteAndRead(*cluster_, 1, 8, 43));
  EXPECT_TRUE(cluster_->IsRunning(1));
  const Samples s = Scrape(1);
  EXPECT_EQ(Value(s, "atomdisk_client_requests_total{op=\"write\",outcome=\"ok\"}"), 2);
}

}  // namespace
}  // namespace atomdisk::itest
