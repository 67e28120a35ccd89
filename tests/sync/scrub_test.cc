// Tests of scrub (daemon/sync/scrub.cc) through the Syncer, on the in-memory cluster of
// sync_cluster.h.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/sync_wire.h"
#include "common/types.h"
#include "daemon/sync/identity.h"
#include "daemon/sync/syncer.h"
#include "tests/sync/sync_cluster.h"

namespace atomdisk::synctest {
namespace {

TEST(ScrubTest, ScrubRepairsCorruptSectorsFromPeers) {
  Cluster c(3, 1000);
  for (Rank r : {1, 2, 3}) {
    c.node(r).saved = VotingIdentity(r, {1, 2, 3});
    for (SectorIdx s : {5, 7, 300}) c.node(r).data[s] = Value(4, 2);
  }
  for (Rank r : {1, 2, 3}) c.StartNode(r);
  ASSERT_TRUE(c.RunUntil([&] {
    for (Rank r : {1, 2, 3}) {
      if (c.node(r).syncer->GetStatus(c.now).resync.passes_done < 1) return false;
    }
    return true;
  }));
  // Bit rot on node 1 (the store does not notice, so no OnLocalWrite): sector 5 lost both
  // slots; sector 7 has a bad old slot next to a valid newest one (a stale slot).
  c.node(1).data.erase(5);
  c.node(1).corrupt[5] = Tag{};
  c.node(1).corrupt[7] = Tag{4, 2};
  ASSERT_TRUE(c.node(1).syncer->StartScrub(c.now).ok());
  EXPECT_EQ(c.node(1).syncer->StartScrub(c.now).code(), StatusCode::kBusy);
  ASSERT_TRUE(c.RunUntil([&] { return c.node(1).syncer->GetStatus(c.now).scrub.runs_done == 1; }));
  SyncStatus::Scrub st = c.node(1).syncer->GetStatus(c.now).scrub;
  EXPECT_EQ(st.sectors_checked, 3u);
  EXPECT_EQ(st.corrupt, 2u);
  EXPECT_EQ(st.repaired, 1u);
  EXPECT_EQ(st.stale, 1u);
  EXPECT_EQ(st.unrepaired, 0u);
  EXPECT_FALSE(st.active);
  EXPECT_EQ(st.bucket, st.buckets);
  EXPECT_EQ(c.node(1).TagOf(5), (Tag{4, 2}));
  EXPECT_EQ(c.node(1).corrupt.count(5), 0u);
  EXPECT_EQ(c.node(1).CountNotes("scrub done"), 1);
}

TEST(ScrubTest, ScrubCountsUnrepairedWhenPeersAreSilent) {
  Cluster c(3, 1000);
  for (Rank r : {1, 2, 3}) c.node(r).saved = VotingIdentity(r, {1, 2, 3});
  c.node(1).corrupt[5] = Tag{};
  c.StartNode(1);  // peers down
  ASSERT_TRUE(c.node(1).syncer->StartScrub(c.now).ok());
  ASSERT_TRUE(c.RunUntil([&] { return c.node(1).syncer->GetStatus(c.now).scrub.runs_done == 1; }));
  SyncStatus::Scrub st = c.node(1).syncer->GetStatus(c.now).scrub;
  EXPECT_EQ(st.corrupt, 1u);
  EXPECT_EQ(st.unrepaired, 1u);
  EXPECT_EQ(st.repaired, 0u);
}

TEST(ScrubTest, PeriodicScrubAndResync) {
  Cluster c(2, 1000);
  for (Rank r : {1, 2}) c.node(r).saved = VotingIdentity(r, {1, 2});
  SyncerOptions o = c.Options(1);
  o.scrub_interval_ms = 1000;
  o.resync_interval_ms = 1000;
  c.StartNode(2);
  c.StartNode(1, o);
  c.RunFor(3500);
  SyncStatus st = c.node(1).syncer->GetStatus(c.now);
  EXPECT_GE(st.scrub.runs_done, 2u);
  EXPECT_GE(st.resync.passes_done, 3u);
}

// A read found sector 5 suspect on node 1 (its valid copy is older than what the peers
// hold) and sector 9 corrupt with nothing newer anywhere: both are repaired at once, without a
// scrub run; asking again while a repair is pending, or right after, starts nothing.
TEST(ScrubTest, ReadRepairFixesASectorAtOnce) {
  Cluster c(3, 1000);
  for (Rank r : {1, 2, 3}) {
    c.node(r).saved = VotingIdentity(r, {1, 2, 3});
    c.node(r).data[5] = Value(4, 2);
    c.node(r).data[9] = Value(3, 1);
  }
  for (Rank r : {1, 2, 3}) c.StartNode(r);
  ASSERT_TRUE(
      c.RunUntil([&] { return c.node(1).syncer->GetStatus(c.now).resync.passes_done >= 1; }));
  c.node(1).data[5] = Value(2, 2);  // the valid slot behind the failed one
  c.node(1).corrupt[5] = Tag{2, 2};
  c.node(1).corrupt[9] = Tag{3, 1};
  c.node(1).syncer->OnUnreadable(5, c.now);
  c.node(1).syncer->OnUnreadable(9, c.now);
  c.node(1).syncer->OnUnreadable(5, c.now);  // pending: nothing more
  EXPECT_EQ(c.node(1).syncer->GetStatus(c.now).scrub.read_repairs, 2u);
  ASSERT_TRUE(
      c.RunUntil([&] { return c.node(1).syncer->GetStatus(c.now).scrub.read_repaired == 2; }));
  SyncStatus::Scrub st = c.node(1).syncer->GetStatus(c.now).scrub;
  EXPECT_EQ(st.read_unrepaired, 0u);
  EXPECT_EQ(st.runs_done, 0u);                 // no scrub run was involved
  EXPECT_EQ(c.node(1).TagOf(5), (Tag{4, 2}));  // the peers' newer value
  EXPECT_EQ(c.node(1).TagOf(9), (Tag{3, 1}));  // its own copy, rewritten
  EXPECT_TRUE(c.node(1).corrupt.empty());
  EXPECT_EQ(c.node(1).repairs, 2);
  EXPECT_EQ(c.node(1).CountNotes("read repair: sector 5 repaired"), 1);
  EXPECT_EQ(c.node(1).CountNotes("read repair: sector 9 rewritten from our copy"), 1);
  // Found bad again within the request timeout: not asked again so soon.
  c.node(1).corrupt[9] = Tag{3, 1};
  c.node(1).syncer->OnUnreadable(9, c.now);
  EXPECT_EQ(c.node(1).syncer->GetStatus(c.now).scrub.read_repairs, 2u);
}

// With its peers down a read repair cannot decide: it ends unrepaired, and the sector is left
// as it was (never "repaired" from too few answers).
TEST(ScrubTest, ReadRepairWithoutPeersLeavesTheSectorAlone) {
  Cluster c(3, 1000);
  for (Rank r : {1, 2, 3}) c.node(r).saved = VotingIdentity(r, {1, 2, 3});
  c.node(1).data[5] = Value(2, 2);
  c.node(1).corrupt[5] = Tag{2, 2};
  c.StartNode(1);  // peers down
  c.node(1).syncer->OnUnreadable(5, c.now);
  ASSERT_TRUE(
      c.RunUntil([&] { return c.node(1).syncer->GetStatus(c.now).scrub.read_unrepaired == 1; }));
  EXPECT_EQ(c.node(1).repairs, 0);
  EXPECT_EQ(c.node(1).corrupt.count(5), 1u);
  EXPECT_EQ(c.node(1).syncer->GetStatus(c.now).scrub.pending_repairs, 1u);
}

// An unrepaired sector is not forgotten: the node is one copy short there, so it tries again,
// backing off, and logs once (not at every attempt), until its peers answer.
TEST(ScrubTest, AnUnrepairedSectorIsTriedAgainUntilThePeersAnswer) {
  Cluster c(3, 1000);
  for (Rank r : {1, 2, 3}) {
    c.node(r).saved = VotingIdentity(r, {1, 2, 3});
    c.node(r).data[5] = Value(4, 2);
  }
  c.node(1).data[5] = Value(2, 2);
  c.node(1).corrupt[5] = Tag{2, 2};
  c.StartNode(1);  // peers down
  c.node(1).syncer->OnUnreadable(5, c.now);
  c.RunFor(60'000);
  SyncStatus::Scrub st = c.node(1).syncer->GetStatus(c.now).scrub;
  EXPECT_GE(st.read_unrepaired, 3u);               // tried again...
  EXPECT_LE(st.read_unrepaired, 8u);               // ...backing off
  EXPECT_GE(st.read_repairs, st.read_unrepaired);  // the last attempt may be pending
  EXPECT_LE(st.read_repairs, st.read_unrepaired + 1);
  EXPECT_EQ(st.pending_repairs, 1u);
  EXPECT_EQ(c.node(1).CountNotes("asking the peers"), 1);
  EXPECT_EQ(c.node(1).CountNotes("too few peers answered"), 1);
  EXPECT_EQ(c.node(1).repairs, 0);

  c.StartNode(2);
  c.StartNode(3);
  ASSERT_TRUE(c.RunUntil([&] {
    SyncStatus::Scrub now = c.node(1).syncer->GetStatus(c.now).scrub;
    return now.read_repaired == 1 && now.pending_repairs == 0;
  }));
  EXPECT_EQ(c.node(1).TagOf(5), (Tag{4, 2}));
  EXPECT_TRUE(c.node(1).corrupt.empty());
  EXPECT_EQ(c.node(1).syncer->GetStatus(c.now).scrub.runs_done, 0u);
}

// A failed slot met by a scan (here the start-up pass's bucket digests) is repaired at once:
// no read and no scrub run needed. This is how a write torn by a power cut gets its copy back.
TEST(ScrubTest, ASectorAScanFoundFailedIsRepairedWithoutARead) {
  Cluster c(3, 1000);
  for (Rank r : {1, 2, 3}) {
    c.node(r).saved = VotingIdentity(r, {1, 2, 3});
    c.node(r).data[5] = Value(4, 2);
    c.node(r).data[700] = Value(3, 1);
  }
  c.node(1).data[5] = Value(2, 2);  // torn: the valid slot behind holds an older value
  c.node(1).corrupt[5] = Tag{2, 2};
  c.node(1).corrupt[700] = Tag{3, 1};  // torn over the same value (written twice)
  for (Rank r : {1, 2, 3}) c.StartNode(r);
  ASSERT_TRUE(c.RunUntil([&] {
    SyncStatus::Scrub st = c.node(1).syncer->GetStatus(c.now).scrub;
    return st.read_repaired == 2 && st.pending_repairs == 0;
  }));
  SyncStatus::Scrub st = c.node(1).syncer->GetStatus(c.now).scrub;
  EXPECT_EQ(st.read_unrepaired, 0u);
  EXPECT_EQ(st.runs_done, 0u);
  EXPECT_EQ(c.node(1).TagOf(5), (Tag{4, 2}));
  EXPECT_EQ(c.node(1).TagOf(700), (Tag{3, 1}));
  EXPECT_TRUE(c.node(1).corrupt.empty());
}

}  // namespace
}  // namespace atomdisk::synctest
