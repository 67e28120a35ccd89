// Tests of the resync pass (daemon/sync/resync_pass.cc) through the Syncer, on the in-memory
// cluster of sync_cluster.h: what a pass pulls, dropped sources, resuming, the rate limit,
// failed absorbs and fetches.
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

TEST(ResyncPassTest, RestartedNodePullsOnlyWhatDiffers) {
  const std::uint64_t sectors = 3 * kWindowSectors;
  Cluster c(3, sectors);
  for (SectorIdx s = 0; s < sectors; s += 211) {
    for (Rank r : {1, 2, 3}) c.node(r).data[s] = Value(2, 1);
  }
  // Node 1 missed three writes, in two buckets.
  const std::vector<SectorIdx> missed = {211 * 3, 211 * 4, 211 * 200};
  for (SectorIdx s : missed) {
    c.node(2).data[s] = Value(5, 2);
    c.node(3).data[s] = Value(5, 2);
  }
  // And holds one newer than its peers: it must keep it (and they pull it).
  const SectorIdx mine = 211 * 100;
  c.node(1).data[mine] = Value(8, 1);
  for (Rank r : {1, 2, 3}) c.node(r).saved = VotingIdentity(r, {1, 2, 3});
  for (Rank r : {1, 2, 3}) c.StartNode(r);
  ASSERT_TRUE(c.RunUntil([&] {
    for (Rank r : {1, 2, 3}) {
      if (c.node(r).syncer->GetStatus(c.now).resync.passes_done < 1) return false;
    }
    return true;
  }));
  for (SectorIdx s : missed) EXPECT_EQ(c.node(1).TagOf(s), (Tag{5, 2}));
  EXPECT_EQ(c.node(1).TagOf(mine), (Tag{8, 1}));
  EXPECT_EQ(c.node(2).TagOf(mine), (Tag{8, 1}));
  EXPECT_EQ(c.node(3).TagOf(mine), (Tag{8, 1}));

  // One Digest per window and source (the first ones were re-sent: 2 and 3 were not up
  // yet); Entries only for buckets that differ: 2 and 3 (sectors 633, 844), 164 (42200) and,
  // unless the peers pulled sector 21100 from node 1 before node 1 compared window 1, 82.
  std::set<std::pair<Rank, std::uint64_t>> digests;
  for (const auto& d : c.SentBy(1, SyncKind::kDigest)) digests.insert({d.to, d.first});
  EXPECT_EQ(digests.size(), 2u * 3u);
  std::set<std::uint64_t> entry_buckets;
  std::set<std::pair<Rank, std::uint64_t>> entries;
  for (const auto& e : c.SentBy(1, SyncKind::kEntries)) {
    entry_buckets.insert(e.first / kBucketSectors);
    EXPECT_TRUE(entries.insert({e.to, e.first}).second) << "asked twice";
    EXPECT_EQ(e.count, kBucketSectors);
  }
  entry_buckets.erase(82);
  EXPECT_EQ(entry_buckets, (std::set<std::uint64_t>{2, 3, 164}));
  std::size_t fetched = 0;
  for (const auto& f : c.SentBy(1, SyncKind::kFetch)) fetched += f.sectors;
  EXPECT_EQ(fetched, missed.size());  // each once, though both peers hold it
  for (Rank r : {1, 2, 3}) EXPECT_EQ(c.node(r).older_absorbs, 0) << "rank " << int(r);
  SyncStatus st = c.node(1).syncer->GetStatus(c.now);
  EXPECT_EQ(st.resync.sectors_pulled, missed.size());
  EXPECT_EQ(st.resync.bytes_pulled, missed.size() * kSectorSize);
  EXPECT_FALSE(st.resync.active);
}

TEST(ResyncPassTest, UnresponsivePeerIsDroppedFromAPass) {
  Cluster c(3, 2 * kWindowSectors);
  c.node(2).data[10] = Value(4, 2);
  c.node(2).data[kWindowSectors + 10] = Value(4, 2);
  for (Rank r : {1, 2, 3}) c.node(r).saved = VotingIdentity(r, {1, 2, 3});
  c.StartNode(2);
  c.StartNode(1);  // node 3 is down
  ASSERT_TRUE(
      c.RunUntil([&] { return c.node(1).syncer->GetStatus(c.now).resync.passes_done == 1; }));
  EXPECT_EQ(c.node(1).TagOf(10), (Tag{4, 2}));
  EXPECT_EQ(c.node(1).TagOf(kWindowSectors + 10), (Tag{4, 2}));
  EXPECT_EQ(c.node(1).CountNotes("peer 3 does not answer"), 1);
  // Node 3's first digest was sent twice (once re-sent), then it was dropped.
  std::size_t to3 = 0;
  for (const auto& d : c.SentBy(1, SyncKind::kDigest)) to3 += d.to == 3 ? 1 : 0;
  EXPECT_EQ(to3, 2u);
}

TEST(ResyncPassTest, PassResumesFromSavedWindow) {
  const std::uint64_t sectors = 4 * kWindowSectors;
  Cluster c(2, sectors);
  for (SectorIdx s = 0; s < sectors; s += 500) c.node(2).data[s] = Value(3, 2);
  for (Rank r : {1, 2}) c.node(r).saved = VotingIdentity(r, {1, 2});
  c.StartNode(2);
  c.StartNode(1);
  for (int guard = 0; guard < 1000000; ++guard) {
    if (c.node(1).saved->resync_next_window >= 2) break;
    c.MicroStep();
  }
  ASSERT_EQ(c.node(1).saved->resync_next_window, 2u);
  EXPECT_TRUE(c.node(1).saved->resync_active);
  EXPECT_FALSE(c.node(1).saved->resync_join);
  for (SectorIdx s = 0; s < 2 * kWindowSectors; s += 500) {
    ASSERT_EQ(c.node(1).TagOf(s), (Tag{3, 2})) << s;  // saved windows are durable
  }

  c.StopNode(1);
  std::size_t log_mark = c.log.size();
  c.StartNode(1);
  ASSERT_TRUE(
      c.RunUntil([&] { return c.node(1).syncer->GetStatus(c.now).resync.passes_done == 1; }));
  std::vector<SentRecord> after(c.log.begin() + static_cast<std::ptrdiff_t>(log_mark), c.log.end());
  std::size_t digests = 0;
  for (const auto& s : after) {
    if (s.from != 1) continue;
    if (s.kind == SyncKind::kDigest) {
      ++digests;
      EXPECT_GE(s.first, 2 * kWindowBuckets);
    }
    if (s.kind == SyncKind::kEntries) {
      EXPECT_GE(s.first, 2 * kWindowSectors);
    }
  }
  EXPECT_EQ(digests, 2u);
  for (SectorIdx s = 0; s < sectors; s += 500) EXPECT_EQ(c.node(1).TagOf(s), (Tag{3, 2})) << s;
  EXPECT_FALSE(c.node(1).saved->resync_active);
  EXPECT_EQ(c.node(1).saved->resync_next_window, 0u);
}

TEST(ResyncPassTest, JoinPassResumesFromSavedWindow) {
  const std::uint64_t sectors = 3 * kWindowSectors;
  Cluster c(2, sectors);  // N = 2: one voting source suffices
  for (SectorIdx s = 0; s < sectors; s += 700) c.node(2).data[s] = Value(3, 2);
  c.node(2).saved = VotingIdentity(2, {1, 2});
  c.StartNode(2);
  c.StartNode(1);
  for (int guard = 0; guard < 1000000; ++guard) {
    if (c.node(1).saved && c.node(1).saved->resync_next_window >= 1) break;
    c.MicroStep();
  }
  ASSERT_TRUE(c.node(1).saved->resync_active);
  ASSERT_TRUE(c.node(1).saved->resync_join);
  ASSERT_FALSE(c.node(1).saved->voting);
  c.StopNode(1);
  std::size_t log_mark = c.log.size();
  c.StartNode(1);
  EXPECT_FALSE(c.node(1).voting());
  ASSERT_TRUE(c.RunUntil([&] { return c.node(1).voting(); }));
  for (std::size_t i = log_mark; i < c.log.size(); ++i) {
    if (c.log[i].from == 1 && c.log[i].kind == SyncKind::kDigest) {
      EXPECT_GE(c.log[i].first, kWindowBuckets);
    }
  }
  for (SectorIdx s = 0; s < sectors; s += 700) EXPECT_EQ(c.node(1).TagOf(s), (Tag{3, 2})) << s;
}

TEST(ResyncPassTest, RateLimitBoundsBytesPulled) {
  const std::uint64_t sectors = kWindowSectors;
  Cluster c(2, sectors);
  for (SectorIdx s = 0; s < 2000; ++s) c.node(2).data[s] = Value(3, 2);
  for (Rank r : {1, 2}) c.node(r).saved = VotingIdentity(r, {1, 2});
  SyncerOptions o = c.Options(1);
  o.rate_bytes_per_s = 100 * kSectorSize;  // 100 sectors/s
  const double burst = std::max(o.rate_bytes_per_s * 0.1, 16.0 * kSectorSize);
  c.StartNode(2);
  c.StartNode(1, o);
  const std::int64_t start = c.now;
  for (int i = 0; i < 500; ++i) {  // 5 s
    c.Step();
    SyncStatus st = c.node(1).syncer->GetStatus(c.now);
    double limit = o.rate_bytes_per_s * static_cast<double>(c.now - start) / 1000.0 + burst;
    ASSERT_LE(static_cast<double>(st.resync.bytes_pulled), limit) << "at " << c.now;
  }
  SyncStatus st = c.node(1).syncer->GetStatus(c.now);
  // Not starved either: close to the allowed rate.
  EXPECT_GE(static_cast<double>(st.resync.bytes_pulled), 0.8 * o.rate_bytes_per_s * 5);
  EXPECT_TRUE(st.resync.active);
  EXPECT_GT(st.resync.sectors_to_go, 0u);
  EXPECT_GT(st.resync.bytes_per_s, 0.5 * o.rate_bytes_per_s);
  EXPECT_LT(st.resync.bytes_per_s, 1.5 * o.rate_bytes_per_s);
  // 2000 sectors at 100/s: about 15 s to go after 5 s.
  EXPECT_GT(st.resync.eta_s, 10);
  EXPECT_LT(st.resync.eta_s, 20);
  EXPECT_EQ(st.resync.windows, 1u);
  EXPECT_GE(c.node(1).CountNotes("resync pass: window 0/1"), 1);
  ASSERT_TRUE(
      c.RunUntil([&] { return c.node(1).syncer->GetStatus(c.now).resync.passes_done == 1; }));
  for (SectorIdx s = 0; s < 2000; ++s) ASSERT_EQ(c.node(1).TagOf(s), (Tag{3, 2}));
}

TEST(ResyncPassTest, FailedAbsorbIsRetried) {
  Cluster c(2, 1000);
  c.node(2).data[7] = Value(3, 2);
  for (Rank r : {1, 2}) c.node(r).saved = VotingIdentity(r, {1, 2});
  c.node(1).absorb_failures_left = 2;
  c.StartNode(2);
  c.StartNode(1);
  ASSERT_TRUE(
      c.RunUntil([&] { return c.node(1).syncer->GetStatus(c.now).resync.passes_done == 1; }));
  EXPECT_EQ(c.node(1).TagOf(7), (Tag{3, 2}));
  EXPECT_EQ(c.SentBy(1, SyncKind::kFetch).size(), 3u);
}

TEST(ResyncPassTest, UnreadableSectorAtOneSourceIsFetchedFromAnother) {
  Cluster c(3, 1000);
  for (Rank r : {2, 3}) c.node(r).data[7] = Value(3, 2);
  c.node(2).data[8] = Value(3, 2);
  c.node(2).unreadable = {7, 8};  // listed in its entries, but Fetch cannot read them
  for (Rank r : {1, 2, 3}) c.node(r).saved = VotingIdentity(r, {1, 2, 3});
  c.StartNode(2);
  c.StartNode(3);
  c.StartNode(1);
  ASSERT_TRUE(
      c.RunUntil([&] { return c.node(1).syncer->GetStatus(c.now).resync.passes_done == 1; }));
  EXPECT_EQ(c.node(1).TagOf(7), (Tag{3, 2}));  // from node 3
  EXPECT_EQ(c.node(1).TagOf(8), Tag{});        // nobody else has it: skipped, said so
  EXPECT_EQ(c.node(1).CountNotes("sector 8 could not be fetched"), 1);
  std::set<Rank> asked;
  for (const auto& f : c.SentBy(1, SyncKind::kFetch)) asked.insert(f.to);
  EXPECT_EQ(asked, (std::set<Rank>{2, 3}));
}

}  // namespace
}  // namespace atomdisk::synctest
