// Unit tests of the core's outbox (daemon/core/peer_outbox.h): per-peer order, grouping of
// peers with the same queue, and the caps that keep a batch inside a frame.
#include "daemon/core/peer_outbox.h"

#include <gtest/gtest.h>

#include <vector>

namespace atomdisk {
namespace {

SystemMessage Msg(SystemContent content, SectorIdx sector, SectorPtr data = nullptr) {
  SystemMessage m;
  m.sender = 1;
  m.op_id.bytes[0] = static_cast<std::uint8_t>(sector);
  m.sector = sector;
  m.content = content;
  if (HasTag(content)) m.tag = Tag{7, 1};
  if (HasData(content)) m.data = data ? data : ZeroSector();
  return m;
}

TEST(PeerOutboxTest, PeersWithTheSameQueueShareOneBatch) {
  PeerOutbox box;
  EXPECT_TRUE(box.empty());
  auto data = std::make_shared<SectorData>();
  for (SectorIdx s = 0; s < 3; ++s) {
    const SystemMessage m = Msg(SystemContent::kWriteProc, s, data);
    EXPECT_EQ(box.Add(2, m), s == 0) << "only the first Add finds the outbox empty";
    EXPECT_FALSE(box.Add(3, m));
  }
  EXPECT_EQ(box.pending(), 6u);
  auto batches = box.Take();
  EXPECT_TRUE(box.empty());
  ASSERT_EQ(batches.size(), 1u);
  EXPECT_EQ(batches[0].to, (std::vector<Rank>{2, 3}));
  ASSERT_EQ(batches[0].msgs.size(), 3u);
  for (SectorIdx s = 0; s < 3; ++s) EXPECT_EQ(batches[0].msgs[s].sector, s);
  EXPECT_TRUE(box.Take().empty());
  EXPECT_TRUE(box.Add(2, Msg(SystemContent::kAck, 9))) << "empty again after Take";
}

TEST(PeerOutboxTest, DifferentQueuesGoApartInTheirOwnOrder) {
  PeerOutbox box;
  box.Add(2, Msg(SystemContent::kAck, 1));
  box.Add(3, Msg(SystemContent::kReadTag, 5));
  box.Add(2, Msg(SystemContent::kReadTag, 5));
  // Equal bytes are not the same message: another data buffer is another message (the
  // shared frame relies on the same buffer).
  box.Add(4, Msg(SystemContent::kWriteProc, 6, std::make_shared<SectorData>()));
  box.Add(5, Msg(SystemContent::kWriteProc, 6, std::make_shared<SectorData>()));
  auto batches = box.Take();
  ASSERT_EQ(batches.size(), 4u);
  EXPECT_EQ(batches[0].to, (std::vector<Rank>{2}));
  ASSERT_EQ(batches[0].msgs.size(), 2u);
  EXPECT_EQ(batches[0].msgs[0].content, SystemContent::kAck);
  EXPECT_EQ(batches[0].msgs[1].content, SystemContent::kReadTag);
  EXPECT_EQ(batches[1].to, (std::vector<Rank>{3}));
  EXPECT_EQ(batches[2].to, (std::vector<Rank>{4}));
  EXPECT_EQ(batches[3].to, (std::vector<Rank>{5}));
}

TEST(PeerOutboxTest, AQueueOverflowsBeforeItPassesTheCaps) {
  PeerOutbox box;
  const SystemMessage wp = Msg(SystemContent::kWriteProc, 1);
  std::size_t added = 0;
  while (!box.WouldOverflow(2, wp)) {
    box.Add(2, wp);
    ++added;
    ASSERT_LT(added, 100u);
  }
  // 64 KiB of 4150-byte members: 15.
  EXPECT_EQ(added, PeerOutbox::kFlushBytes / (4 + SystemPayloadSize(wp)));
  EXPECT_FALSE(box.WouldOverflow(3, wp)) << "the cap is per peer";
  auto batches = box.Take();
  ASSERT_EQ(batches.size(), 1u);
  EXPECT_LE(EncodeBatchPayload(batches[0].msgs).size(), kMaxBatchPayload);
  // Small messages stop at kMaxBatchMessages.
  const SystemMessage ack = Msg(SystemContent::kAck, 1);
  added = 0;
  while (!box.WouldOverflow(2, ack)) {
    box.Add(2, ack);
    ++added;
    ASSERT_LE(added, kMaxBatchMessages);
  }
  EXPECT_EQ(added, kMaxBatchMessages);
  EXPECT_LE(EncodeBatchPayload(box.Take()[0].msgs).size(), kMaxBatchPayload);
}

}  // namespace
}  // namespace atomdisk
