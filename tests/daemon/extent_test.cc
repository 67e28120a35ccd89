// Extent commands (docs/PROTOCOL.md, "Extents") on real atomdiskd processes: a run of sectors
// written, read and zeroed in one frame, mixed with the atdd single-sector commands on the
// same connection and on other nodes; bad extents refused; a client that does not read its
// extent responses stalls itself, not the node, and loses none of them.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tests/daemon/daemon_test_util.h"

namespace atomdisk::itest {
namespace {

SectorPtr Pattern(SectorIdx sector, std::uint8_t round) {
  auto d = std::make_shared<SectorData>();
  for (std::size_t i = 0; i < d->size(); ++i) {
    d->at(i) = static_cast<std::uint8_t>(sector * 31 + i * 7 + round);
  }
  return d;
}

ClientCommand Extent(std::uint64_t id, ClientOp op, SectorIdx first, std::uint32_t count,
                     std::uint8_t round = 0) {
  ClientCommand c{id, first, op, nullptr};
  c.count = count;
  if (op == ClientOp::kWriteExtent) {
    for (std::uint32_t i = 0; i < count; ++i) c.sectors.push_back(Pattern(first + i, round));
  }
  return c;
}

class ExtentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    cluster_ = std::make_unique<LiveCluster>(3, TestClusterOptions{.sectors = 65536});
    ASSERT_TRUE(cluster_->ok());
  }
  std::unique_ptr<LiveCluster> cluster_;
};

TEST_F(ExtentTest, InfoListsTheFeature) {
  auto c = cluster_->Connect(1);
  ASSERT_NE(c, nullptr);
  auto info = c->Info();
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  ASSERT_TRUE(info->contains("features")) << info->dump();
  bool found = false;
  for (const auto& f : (*info)["features"]) found = found || f == kExtentsFeature;
  EXPECT_TRUE(found) << info->dump();
}

// 256 sectors in one write and one read; each sector is also read alone, at another node,
// with the atdd command; then part of the run is zeroed with one write-zeros.
TEST_F(ExtentTest, WriteReadAndZeroARunOfSectors) {
  auto c = cluster_->Connect(1);
  ASSERT_NE(c, nullptr);
  constexpr SectorIdx kFirst = 4000;
  auto w =
      c->Call(Extent(1, ClientOp::kWriteExtent, kFirst, kMaxExtentSectors, 5), milliseconds(20000));
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  ASSERT_EQ(w->status, ResponseStatus::kOk);
  ASSERT_EQ(w->outcomes.size(), kMaxExtentSectors);
  for (ExtentOutcome o : w->outcomes) ASSERT_EQ(o, ExtentOutcome::kDone);

  auto r =
      c->Call(Extent(2, ClientOp::kReadExtent, kFirst, kMaxExtentSectors), milliseconds(20000));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->outcomes.size(), kMaxExtentSectors);
  ASSERT_EQ(r->sectors.size(), kMaxExtentSectors);
  for (std::uint32_t i = 0; i < kMaxExtentSectors; ++i) {
    ASSERT_EQ(r->outcomes[i], ExtentOutcome::kDone) << i;
    ASSERT_NE(r->sectors[i], nullptr) << i;
    ASSERT_EQ(*r->sectors[i], *Pattern(kFirst + i, 5)) << "sector " << kFirst + i;
  }

  auto other = cluster_->Connect(3);
  ASSERT_NE(other, nullptr);
  for (std::uint32_t i = 0; i < kMaxExtentSectors; i += 17) {
    auto one = other->Read(kFirst + i);
    ASSERT_TRUE(one.ok()) << one.status().ToString();
    EXPECT_EQ(**one, *Pattern(kFirst + i, 5)) << "sector " << kFirst + i << " read alone";
  }

  // Zero sectors 10..99 of the run; an atdd write on the same connection, in between.
  ASSERT_TRUE(c->Write(kFirst + 200, Pattern(kFirst + 200, 9)).ok());
  auto z = c->Call(Extent(3, ClientOp::kWriteZeros, kFirst + 10, 90));
  ASSERT_TRUE(z.ok()) << z.status().ToString();
  ASSERT_EQ(z->outcomes.size(), 90u);
  r = other->Call(Extent(4, ClientOp::kReadExtent, kFirst, kMaxExtentSectors), milliseconds(20000));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->sectors.size(), kMaxExtentSectors);
  for (std::uint32_t i = 0; i < kMaxExtentSectors; ++i) {
    SectorPtr want = i >= 10 && i < 100 ? ZeroSector() : Pattern(kFirst + i, i == 200 ? 9 : 5);
    ASSERT_EQ(*r->sectors[i], *want) << "sector " << kFirst + i;
  }
}

// Between the nodes an extent travels in system batches (docs/PROTOCOL.md, "Extension:
// system batches"), once the peers' Hello replies advertised them: a 256-sector write costs
// the coordinator a few dozen frames to its peers, not a thousand.
TEST_F(ExtentTest, NodesBatchTheRegisterMessagesOfAnExtent) {
  auto c = cluster_->Connect(1);
  ASSERT_NE(c, nullptr);
  auto counters = [&]() -> nlohmann::json {
    auto info = c->Info();
    EXPECT_TRUE(info.ok()) << info.status().ToString();
    return info.ok() ? (*info)["counters"] : nlohmann::json::object();
  };
  // Hellos go out every second: wait until node 1 batches to both peers.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  bool both = false;
  while (!both && std::chrono::steady_clock::now() < deadline) {
    auto info = c->Info();
    ASSERT_TRUE(info.ok()) << info.status().ToString();
    both = (*info)["peers"].size() == 2;
    for (const auto& p : (*info)["peers"]) both = both && p.value("batches", false);
    if (!both) std::this_thread::sleep_for(milliseconds(50));
  }
  ASSERT_TRUE(both) << "node 1 does not batch to its peers";
  const nlohmann::json before = counters();
  auto w =
      c->Call(Extent(1, ClientOp::kWriteExtent, 8000, kMaxExtentSectors, 3), milliseconds(20000));
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  ASSERT_EQ(w->status, ResponseStatus::kOk);
  for (ExtentOutcome o : w->outcomes) ASSERT_EQ(o, ExtentOutcome::kDone);
  const nlohmann::json after = counters();
  const auto batches = after.value("batches_sent", 0) - before.value("batches_sent", 0);
  const auto members = after.value("batched_msgs", 0) - before.value("batched_msgs", 0);
  // At least a WriteProc per sector to each peer went in batches (thrifty collects may ask
  // one peer only for the first phase).
  EXPECT_GE(members, 2 * kMaxExtentSectors) << after.dump();
  EXPECT_GT(batches, 0) << after.dump();
  EXPECT_LE(batches, members / 4) << "batches of fewer than four messages: " << after.dump();
  // And every sector reads back, at another node, alone.
  auto other = cluster_->Connect(2);
  ASSERT_NE(other, nullptr);
  for (std::uint32_t i = 0; i < kMaxExtentSectors; i += 13) {
    auto one = other->Read(8000 + i);
    ASSERT_TRUE(one.ok()) << one.status().ToString();
    EXPECT_EQ(**one, *Pattern(8000 + i, 3)) << "sector " << 8000 + i;
  }
}

// A run past the end of the device is refused as a whole (InvalidSectorIndex, nothing
// written); counts outside 1..256 and sizes that do not match close the connection, and the
// node serves on.
TEST_F(ExtentTest, BadExtentsAreRefusedAndTheNodeServesOn) {
  auto c = cluster_->Connect(2);
  ASSERT_NE(c, nullptr);
  const SectorIdx last = cluster_->sectors() - 1;
  for (SectorIdx first : {last, cluster_->sectors(), ~SectorIdx{0} - 1}) {
    auto r = c->Call(Extent(10, ClientOp::kWriteExtent, first, 2));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->status, ResponseStatus::kInvalidSectorIndex) << first;
    EXPECT_TRUE(r->outcomes.empty());
  }
  // The last sector alone was not written by the refused extent.
  auto tail = c->Read(last);
  ASSERT_TRUE(tail.ok());
  EXPECT_EQ(*tail.value(), *ZeroSector());

  for (std::uint32_t count : {0u, kMaxExtentSectors + 1}) {
    auto bad = cluster_->Connect(2);
    ASSERT_NE(bad, nullptr);
    ClientCommand cmd = Extent(11, ClientOp::kReadExtent, 0, 1);
    cmd.count = count;  // encoded as given: the node's decoder must refuse it
    ASSERT_TRUE(bad->Send(cmd).ok());
    EXPECT_TRUE(bad->WaitForClose(milliseconds(5000))) << "count " << count;
  }
  // A write extent that says 3 sectors and carries 2.
  {
    auto bad = cluster_->Connect(2);
    ASSERT_NE(bad, nullptr);
    Bytes payload = EncodePayload(Extent(12, ClientOp::kWriteExtent, 50, 2));
    payload[24 + 3] = 3;  // the count, big-endian: a well-signed frame with the wrong size
    ASSERT_FALSE(DecodeClientCommand(payload).ok());
    Bytes resigned = SignPayload(payload, cluster_->client_key());
    ASSERT_TRUE(bad->SendBytes(resigned).ok());
    EXPECT_TRUE(bad->WaitForClose(milliseconds(5000)));
  }
  EXPECT_TRUE(ServesWriteAndRead(*cluster_, 2, 77, 4242));
}

// A client that sends extent reads and reads nothing back: the node stops reading from it
// (its queued responses are capped in bytes, not only in frames) and later delivers every
// response once the client reads; another client is served meanwhile.
TEST_F(ExtentTest, AClientThatDoesNotReadStallsItselfAndLosesNothing) {
  auto c = cluster_->Connect(1);
  ASSERT_NE(c, nullptr);
  constexpr int kExtents = 48;  // 48 MiB of responses, three times the 16 MiB queue cap
  for (int i = 0; i < kExtents; ++i) {
    ClientCommand cmd = Extent(100 + i, ClientOp::kReadExtent,
                               static_cast<SectorIdx>(i) * kMaxExtentSectors, kMaxExtentSectors);
    ASSERT_TRUE(c->Send(cmd).ok()) << i;
  }
  EXPECT_TRUE(ServesWriteAndRead(*cluster_, 1, 65000, 99));
  // Pipelined responses come in the order their extents finish, matched by request id.
  std::set<std::uint64_t> answered;
  for (int i = 0; i < kExtents; ++i) {
    auto r = c->ReadResponse(milliseconds(30000));
    ASSERT_TRUE(r.ok()) << "response " << i << ": " << r.status().ToString();
    EXPECT_TRUE(answered.insert(r->request_id).second) << "answered twice: " << r->request_id;
    ASSERT_EQ(r->outcomes.size(), kMaxExtentSectors);
    EXPECT_EQ(*r->sectors[0], *ZeroSector());
  }
  ASSERT_EQ(answered.size(), static_cast<std::size_t>(kExtents));
  EXPECT_EQ(*answered.begin(), 100u);
  EXPECT_EQ(*answered.rbegin(), 100u + kExtents - 1);
}

}  // namespace
}  // namespace atomdisk::itest
