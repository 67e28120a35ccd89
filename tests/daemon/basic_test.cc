// Integration tests on real atomdiskd processes: byte-exact responses, concurrent writers,
// pipelining on one connection.
#include <gtest/gtest.h>

#include <atomic>
#include <barrier>
#include <map>
#include <set>
#include <thread>

#include "common/hmac.h"
#include "common/wire.h"
#include "tests/daemon/daemon_test_util.h"
#include "tests/daemon/raw_client.h"

namespace atomdisk::itest {
namespace {

Bytes U32Be(std::uint32_t v) {
  return {static_cast<std::uint8_t>(v >> 24), static_cast<std::uint8_t>(v >> 16),
          static_cast<std::uint8_t>(v >> 8), static_cast<std::uint8_t>(v)};
}

void Append(Bytes& out, const Bytes& more) { out.insert(out.end(), more.begin(), more.end()); }

// The exact frame a node must send: u64 L | payload | HMAC-SHA256(client key, payload).
Bytes ExpectedResponseFrame(std::uint32_t status, std::uint64_t request_id, std::uint32_t op,
                            const SectorData* data, std::span<const std::uint8_t> key) {
  Bytes payload = U32Be(status);
  Append(payload, BigEndian64(request_id));
  Append(payload, U32Be(op));
  if (data) payload.insert(payload.end(), data->begin(), data->end());
  return SignPayload(payload, key);
}

TEST(DaemonBasicTest, SingleNodeWriteAndReadAreByteExact) {
  LiveCluster cluster(1);
  ASSERT_TRUE(cluster.ok());
  auto client = cluster.Connect(1);
  ASSERT_NE(client, nullptr);

  const std::uint64_t write_id = 0x0102030405060708ULL;
  SectorPtr data = IdSector(0xABCDEF);
  ASSERT_TRUE(client->Send(ClientCommand{write_id, 12, ClientOp::kWrite, data}).ok());
  auto wframe = client->ReadFrame();
  ASSERT_TRUE(wframe.ok()) << wframe.status().ToString();
  EXPECT_EQ(wframe->length, 48u);
  EXPECT_EQ(wframe->bytes, ExpectedResponseFrame(0, write_id, 1, nullptr, cluster.client_key()));
  // The same, decoded field by field (a clearer message if the bytes differ).
  auto wresp = DecodeClientResponse(wframe->payload());
  ASSERT_TRUE(wresp.ok());
  EXPECT_EQ(wresp->status, ResponseStatus::kOk);
  EXPECT_EQ(wresp->request_id, write_id);
  EXPECT_EQ(wresp->op, ClientOp::kWrite);
  Hmac mac(cluster.client_key());
  EXPECT_TRUE(mac.Verify(wframe->payload(), wframe->tag()));

  const std::uint64_t read_id = 0xF0E0D0C0B0A09080ULL;
  ASSERT_TRUE(client->Send(ClientCommand{read_id, 12, ClientOp::kRead, nullptr}).ok());
  auto rframe = client->ReadFrame();
  ASSERT_TRUE(rframe.ok()) << rframe.status().ToString();
  EXPECT_EQ(rframe->length, 4144u);
  EXPECT_EQ(rframe->bytes, ExpectedResponseFrame(0, read_id, 0, data.get(), cluster.client_key()));

  // An unwritten sector reads as zeros.
  auto zero = client->Read(13);
  ASSERT_TRUE(zero.ok()) << zero.status().ToString();
  EXPECT_EQ(**zero, *ZeroSector());
}

TEST(DaemonBasicTest, ConcurrentWritersOneSectorReadReturnsOneOfTheirValues) {
  LiveCluster cluster(3);
  ASSERT_TRUE(cluster.ok());
  constexpr int kClients = 16;
  constexpr SectorIdx kSector = 7;
  std::barrier start(kClients);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      // Connections spread over all three nodes: several coordinators race.
      auto client = cluster.Connect(static_cast<Rank>(1 + i % 3));
      start.arrive_and_wait();
      if (!client) {
        ++failures;
        return;
      }
      Status s = client->Write(kSector, IdSector(1000 + static_cast<std::uint64_t>(i)));
      if (!s.ok()) {
        ADD_FAILURE() << "client " << i << ": " << s.ToString();
        ++failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_EQ(failures.load(), 0);

  std::set<std::uint64_t> seen;
  for (Rank r = 1; r <= 3; ++r) {
    auto client = cluster.Connect(r);
    ASSERT_NE(client, nullptr);
    auto data = client->Read(kSector);
    ASSERT_TRUE(data.ok()) << data.status().ToString();
    std::uint64_t id = CheckedId(**data);
    EXPECT_GE(id, 1000u);
    EXPECT_LT(id, 1000u + kClients);
    seen.insert(id);
  }
  // Every write has finished: all nodes' reads see the same, last value.
  EXPECT_EQ(seen.size(), 1u);
}

TEST(DaemonBasicTest, PipelinedWritesThenReadsMatchedByRequestId) {
  LiveCluster cluster(3);
  ASSERT_TRUE(cluster.ok());
  auto client = cluster.Connect(2);
  ASSERT_NE(client, nullptr);
  constexpr int kOps = 32;
  Hmac mac(cluster.client_key());

  // All 32 writes in one send: they are in flight at once.
  Bytes batch;
  std::map<std::uint64_t, SectorIdx> pending;
  for (int i = 0; i < kOps; ++i) {
    std::uint64_t rid = 5000 + static_cast<std::uint64_t>(i) * 3;
    SectorIdx sector = 100 + static_cast<SectorIdx>(i);
    Frame f = EncodeFrame(ClientCommand{rid, sector, ClientOp::kWrite, IdSector(sector * 11)}, mac);
    batch.insert(batch.end(), f.begin(), f.end());
    pending.emplace(rid, sector);
  }
  ASSERT_TRUE(client->SendBytes(batch).ok());
  for (int i = 0; i < kOps; ++i) {
    auto resp = client->ReadResponse();
    ASSERT_TRUE(resp.ok()) << "response " << i << ": " << resp.status().ToString();
    EXPECT_EQ(resp->status, ResponseStatus::kOk);
    EXPECT_EQ(resp->op, ClientOp::kWrite);
    EXPECT_EQ(pending.erase(resp->request_id), 1u) << "unexpected id " << resp->request_id;
  }
  EXPECT_TRUE(pending.empty());

  batch.clear();
  for (int i = 0; i < kOps; ++i) {
    std::uint64_t rid = 9000 + static_cast<std::uint64_t>(i) * 7;
    SectorIdx sector = 100 + static_cast<SectorIdx>(i);
    Frame f = EncodeFrame(ClientCommand{rid, sector, ClientOp::kRead, nullptr}, mac);
    batch.insert(batch.end(), f.begin(), f.end());
    pending.emplace(rid, sector);
  }
  ASSERT_TRUE(client->SendBytes(batch).ok());
  for (int i = 0; i < kOps; ++i) {
    auto resp = client->ReadResponse();
    ASSERT_TRUE(resp.ok()) << "response " << i << ": " << resp.status().ToString();
    EXPECT_EQ(resp->status, ResponseStatus::kOk);
    EXPECT_EQ(resp->op, ClientOp::kRead);
    auto it = pending.find(resp->request_id);
    ASSERT_NE(it, pending.end()) << "unexpected id " << resp->request_id;
    ASSERT_TRUE(resp->data);
    EXPECT_EQ(CheckedId(*resp->data), it->second * 11) << "sector " << it->second;
    pending.erase(it);
  }
  EXPECT_TRUE(pending.empty());
}

}  // namespace
}  // namespace atomdisk::itest
