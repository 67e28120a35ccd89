// Unit tests of the core's outbox (daemon/core/peer_outbox.h): a message for several peers
// held once, batches per set of peers with the order kept, and the caps that keep a batch
// inside a frame.
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

TEST(PeerOutboxTest, AMessageForSeveralPeersIsHeldOnceAndBatchedForAll) {
  PeerOutbox box;
  EXPECT_TRUE(box.empty());
  auto data = std::make_shared<SectorData>();
  for (SectorIdx s = 0; s < 3; ++s) {
    const SystemMessage m = Msg(SystemContent::kWriteProc, s, data);
    EXPECT_EQ(box.Add(2, m), s == 0) << "only the first Add finds the outbox empty";
    EXPECT_FALSE(box.Add(3, m));
  }
  EXPECT_EQ(box.pending(), 3u);
  auto batches = box.Take();
  EXPECT_TRUE(box.empty());
  ASSERT_EQ(batches.size(), 1u);
  EXPECT_EQ(batches[0].to, (std::vector<Rank>{2, 3}));
  ASSERT_EQ(batches[0].msgs.size(), 3u);
  for (SectorIdx s = 0; s < 3; ++s) EXPECT_EQ(batches[0].msgs[s].sector, s);
  EXPECT_TRUE(box.Take().empty());
  EXPECT_TRUE(box.Add(2, Msg(SystemContent::kAck, 9))) << "empty again after Take";
}

// What a coordinator sends while it also answers as a peer: ReadTags to one peer (a thrifty
// collect), WriteProcs to both, Acks to the other. The WriteProcs still share one batch.
TEST(PeerOutboxTest, MessagesAreGroupedByTheirSetOfPeers) {
  PeerOutbox box;
  auto data = std::make_shared<SectorData>();
  box.Add(2, Msg(SystemContent::kReadTag, 1));
  box.Add(2, Msg(SystemContent::kWriteProc, 2, data));
  box.Add(3, Msg(SystemContent::kWriteProc, 2, data));
  box.Add(3, Msg(SystemContent::kAck, 3));
  box.Add(2, Msg(SystemContent::kReadTag, 4));
  box.Add(2, Msg(SystemContent::kWriteProc, 5, data));
  box.Add(3, Msg(SystemContent::kWriteProc, 5, data));
  // Equal bytes are not the same message: another data buffer is another message (the
  // shared frame relies on the same buffer), and so is one not sent right after.
  box.Add(2, Msg(SystemContent::kWriteProc, 6, std::make_shared<SectorData>()));
  box.Add(3, Msg(SystemContent::kWriteProc, 6, std::make_shared<SectorData>()));
  auto batches = box.Take();
  ASSERT_EQ(batches.size(), 3u);
  EXPECT_EQ(batches[0].to, (std::vector<Rank>{2}));
  ASSERT_EQ(batches[0].msgs.size(), 3u);
  EXPECT_EQ(batches[0].msgs[0].sector, 1u);
  EXPECT_EQ(batches[0].msgs[1].sector, 4u);
  EXPECT_EQ(batches[0].msgs[2].sector, 6u);
  EXPECT_EQ(batches[1].to, (std::vector<Rank>{2, 3}));
  ASSERT_EQ(batches[1].msgs.size(), 2u);
  EXPECT_EQ(batches[1].msgs[0].sector, 2u);
  EXPECT_EQ(batches[1].msgs[1].sector, 5u);
  EXPECT_EQ(batches[2].to, (std::vector<Rank>{3}));
  ASSERT_EQ(batches[2].msgs.size(), 2u);
  EXPECT_EQ(batches[2].msgs[0].content, SystemContent::kAck);
  EXPECT_EQ(batches[2].msgs[1].sector, 6u);
}

TEST(PeerOutboxTest, AMessageSentTwiceToOnePeerGoesTwice) {
  PeerOutbox box;
  const SystemMessage m = Msg(SystemContent::kAck, 1);
  box.Add(2, m);
  box.Add(2, m);  // a retransmission in the same flush: still two messages
  auto batches = box.Take();
  ASSERT_EQ(batches.size(), 1u);
  EXPECT_EQ(batches[0].msgs.size(), 2u);
}

TEST(PeerOutboxTest, APeerOverflowsBeforeItPassesTheCaps) {
  PeerOutbox box;
  auto data = std::make_shared<SectorData>();
  const SystemMessage wp = Msg(SystemContent::kWriteProc, 1, data);
  std::size_t added = 0;
  while (!box.WouldOverflow(2, wp)) {
    box.Add(2, wp);
    box.Add(3, Msg(SystemContent::kAck, added));
    ++added;
    ASSERT_LT(added, 100u);
  }
  // 64 KiB of 4150-byte members: 15.
  EXPECT_EQ(added, PeerOutbox::kFlushBytes / (4 + SystemPayloadSize(wp)));
  EXPECT_FALSE(box.WouldOverflow(3, wp)) << "the cap is per peer";
  for (const auto& b : box.Take()) {
    EXPECT_LE(EncodeBatchPayload(b.msgs).size(), kMaxBatchPayload);
  }
  EXPECT_FALSE(box.WouldOverflow(2, wp)) << "Take starts every peer afresh";
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
