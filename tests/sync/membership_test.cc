// Tests of membership (daemon/sync/membership.cc) through the Syncer, on the in-memory
// cluster of sync_cluster.h: when a node votes, Hello and voter registration, the write ts
// floor and lease.
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

TEST(MembershipTest, FreshClusterVotesOnlyOnceEveryNodeAnswered) {
  Cluster c(3, 1000);
  c.StartNode(1);
  c.StartNode(2);
  c.RunFor(2000);
  // Node 3 never answered: nobody may decide that 1 and 2 never voted.
  EXPECT_FALSE(c.node(1).voting());
  EXPECT_FALSE(c.node(2).voting());
  EXPECT_EQ(c.node(1).syncer->GetStatus(c.now).state,
            "joining: waiting for every peer to answer (1 of 2; a new cluster can start with a "
            "majority: atomdiskd --bootstrap)");
  EXPECT_EQ(c.node(1).voting_calls, std::vector<bool>{false});

  c.StartNode(3);
  ASSERT_TRUE(
      c.RunUntil([&] { return c.node(1).voting() && c.node(2).voting() && c.node(3).voting(); }));
  // Voting-mode Hellos re-register with whoever does not list us yet: voters converge.
  c.RunFor(2000);
  for (Rank r : {1, 2, 3}) {
    FakeNode& n = c.node(r);
    ASSERT_TRUE(n.saved.has_value());
    EXPECT_TRUE(n.saved->voting);
    EXPECT_EQ(n.saved->voters, (std::vector<Rank>{1, 2, 3})) << "rank " << int(r);
    EXPECT_EQ(n.syncer->GetStatus(c.now).state, "voting");
    EXPECT_EQ(n.voting_calls, (std::vector<bool>{false, true}));
  }
}

TEST(MembershipTest, SingleNodeVotesAtOnce) {
  Cluster c(1, 1000);
  c.StartNode(1);
  EXPECT_TRUE(c.node(1).voting());
  ASSERT_TRUE(c.node(1).saved.has_value());
  EXPECT_TRUE(c.node(1).saved->voting);
  EXPECT_EQ(c.node(1).saved->voters, std::vector<Rank>{1});
  EXPECT_EQ(c.node(1).syncer->GetStatus(c.now).resync.passes_done, 1u);
}

TEST(MembershipTest, LegacyStoreVotesAndMismatchedIdentityIsRefused) {
  Cluster c(3, 1000);
  c.node(1).data[3] = Value(1, 1);
  c.StartNode(1);  // no IDENTITY but data: predates identities
  EXPECT_TRUE(c.node(1).voting());
  EXPECT_EQ(c.node(1).saved->voters, std::vector<Rank>{1});

  FakeNode& n = c.node(2);
  Identity other = VotingIdentity(2, {2});
  other.cluster_id = ClusterId(0x11);
  Syncer wrong_cluster(c.Options(2), other, true, &n);
  Status s = wrong_cluster.Start(0);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("cluster"), std::string::npos);
  Syncer wrong_rank(c.Options(2), VotingIdentity(3, {3}), true, &n);
  s = wrong_rank.Start(0);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("rank"), std::string::npos);
}

TEST(MembershipTest, StartFailsWhenIdentityCannotBeSaved) {
  Cluster c(3, 1000);
  c.node(1).fail_save = true;
  Syncer s(c.Options(1), std::nullopt, true, &c.node(1));
  EXPECT_EQ(s.Start(0).code(), StatusCode::kIOError);
}

// Node 1 lost its disk; 2 and 3 remember it voted. It must pull before it votes.
TEST(MembershipTest, ReplacedDiskJoinsAfterPullingEverythingNewer) {
  const std::uint64_t sectors = 2 * kWindowSectors + 1000;
  Cluster c(3, sectors);
  std::map<SectorIdx, Tag> newest;
  for (SectorIdx s = 0; s < sectors; s += 97) {
    c.node(2).data[s] = Value(s % 5 + 1, 2);
    c.node(3).data[s] = Value(s % 7 + 1, 3);
    newest[s] = std::max(c.node(2).data[s].tag, c.node(3).data[s].tag);
  }
  c.node(3).data[sectors - 1] = Value(9, 3);  // only on node 3, in the last partial bucket
  newest[sectors - 1] = Tag{9, 3};
  c.node(2).saved = VotingIdentity(2, {1, 2, 3});
  c.node(3).saved = VotingIdentity(3, {1, 2, 3});

  bool checked = false;
  c.node(1).on_vote = [&] {
    // SetVoting(true) only once every newer value is durable here.
    checked = true;
    for (const auto& [s, t] : newest) ASSERT_EQ(c.node(1).TagOf(s), t) << "sector " << s;
    EXPECT_TRUE(c.node(1).absorbs.empty());
    ASSERT_TRUE(c.node(1).saved.has_value());
    EXPECT_TRUE(c.node(1).saved->voting);  // persisted before voting
  };
  c.StartNode(2);
  c.StartNode(3);
  c.StartNode(1);
  EXPECT_FALSE(c.node(1).voting());
  ASSERT_TRUE(c.RunUntil([&] { return c.node(1).voting(); }));
  EXPECT_TRUE(checked);
  EXPECT_EQ(c.node(1).voting_calls, (std::vector<bool>{false, true}));
  for (const auto& [s, t] : newest) {
    EXPECT_EQ(c.node(1).TagOf(s), t);
    EXPECT_EQ(*c.node(1).data[s].data,
              *(c.node(2).TagOf(s) == t ? c.node(2) : c.node(3)).data[s].data);
  }
  EXPECT_EQ(c.node(1).data.size(), newest.size());
  EXPECT_FALSE(c.node(1).saved->resync_active);
  EXPECT_GE(c.node(1).CountNotes("join pass done"), 1);
  // The join pass started durably marked as one.
  EXPECT_EQ(c.node(1).older_absorbs, 0);
}

// A write that went out under the write ts lease may be durable only on the replaced disk
// while its writer still persists its own copy: the joiner must pull it from the writer
// (TagView::kServed), even when the durable digests of joiner and writer agree, and must
// compare against its own durable tags only (docs/RESYNC.md, "What resync sees").
TEST(MembershipTest, JoinPullsAValueItsWriterStillPersists) {
  Cluster c(3, 1000);
  for (Rank r : {1, 2, 3}) c.node(r).data[5] = Value(3, 2);  // agreed on everywhere
  c.node(2).served_ahead[5] = Value(4, 2);                   // node 2's write, own persist pending
  // (sector 300 lies in another bucket, so that bucket 0's durable digests agree)
  c.node(2).saved = VotingIdentity(2, {1, 2, 3});
  c.node(3).saved = VotingIdentity(3, {1, 2, 3});
  FakeNode& n = c.node(1);
  n.saved = VotingIdentity(1, {1, 2, 3});
  n.saved->voting = false;  // its join was interrupted: it joins again
  n.data[300] = Value(1, 1);
  n.served_ahead[300] = Value(9, 1);  // the joiner's own pending write: not a durable copy
  c.node(2).data[300] = Value(8, 2);
  bool checked = false;
  n.on_vote = [&] {
    checked = true;
    EXPECT_EQ(n.TagOf(5), (Tag{4, 2}));
    EXPECT_EQ(n.TagOf(300), (Tag{8, 2}));
  };
  c.StartNode(2);
  c.StartNode(3);
  c.StartNode(1);
  ASSERT_TRUE(c.RunUntil([&] { return n.voting(); }));
  EXPECT_TRUE(checked);
}

// The old incarnation of a replaced disk may have tags out there that the join pass did not
// see: the new one's writes take ts from a floor above them (docs/RESYNC.md), saved with
// voting = true, applied before it votes, and applied again after a restart.
TEST(MembershipTest, JoinPassSetsAWriteTsFloorBeforeVoting) {
  for (std::uint64_t big_ts : {std::uint64_t{7}, std::uint64_t{5'000'000}}) {
    SCOPED_TRACE(big_ts);
    Cluster c(3, 1000);
    c.node(2).data[5] = Value(3, 2);
    c.node(3).data[9] = Value(big_ts, 1);  // written by node 1's old incarnation
    c.node(2).saved = VotingIdentity(2, {1, 2, 3});
    c.node(3).saved = VotingIdentity(3, {1, 2, 3});
    FakeNode& n = c.node(1);
    n.wall_clock_us = 1'000'000;
    bool checked = false;
    n.on_vote = [&] {
      checked = true;
      ASSERT_TRUE(n.saved.has_value());
      EXPECT_TRUE(n.saved->voting);
      EXPECT_GE(n.saved->write_ts_floor, n.wall_clock_us);
      EXPECT_GT(n.saved->write_ts_floor, big_ts);
      ASSERT_FALSE(n.floor_calls.empty()) << "voting before the floor was applied";
      EXPECT_EQ(n.floor_calls.back(), n.saved->write_ts_floor);
    };
    c.StartNode(2);
    c.StartNode(3);
    c.StartNode(1);
    EXPECT_FALSE(n.voting());
    ASSERT_TRUE(c.RunUntil([&] { return n.voting(); }));
    EXPECT_TRUE(checked);
    const std::uint64_t floor = n.saved->write_ts_floor;
    EXPECT_EQ(floor, std::max<std::uint64_t>(n.wall_clock_us, big_ts + 1));
    EXPECT_EQ(n.syncer->identity().write_ts_floor, floor);
    // While joining (it coordinates writes with peer quorums) the clock floor held already.
    ASSERT_FALSE(n.floor_calls.empty());
    EXPECT_EQ(n.floor_calls.front(), n.wall_clock_us);
    EXPECT_TRUE(std::is_sorted(n.floor_calls.begin(), n.floor_calls.end()));
    // Nodes that kept their disks never need a floor.
    EXPECT_TRUE(c.node(2).floor_calls.empty());
    EXPECT_TRUE(c.node(3).floor_calls.empty());
    EXPECT_EQ(c.node(2).saved->write_ts_floor, 0u);

    // A restart applies the saved floor before it votes, whatever the clock says now (and
    // the saved write ts lease, when that is higher: docs/REGISTER.md).
    const std::uint64_t lease = n.saved->write_ts_lease;
    const std::uint64_t restart_floor = std::max(floor, lease);
    c.StopNode(1);
    n.floor_calls.clear();
    n.wall_clock_us = 10;
    checked = false;
    n.on_vote = [&] {
      checked = true;
      EXPECT_EQ(n.floor_calls, std::vector<std::uint64_t>{restart_floor});
    };
    c.StartNode(1);
    EXPECT_TRUE(n.voting());
    EXPECT_TRUE(checked);
    c.RunFor(1000);
    EXPECT_EQ(n.floor_calls, std::vector<std::uint64_t>{restart_floor});
    EXPECT_EQ(n.saved->write_ts_floor, floor);
    EXPECT_EQ(n.saved->write_ts_lease, restart_floor + kWriteTsLeaseStep);
  }
}

// The write ts lease (docs/REGISTER.md): saved at every start above the earlier one (which
// becomes the floor), raised on request only once durable, never lowered, and left alone when
// the save fails.
TEST(MembershipTest, WriteTsLeaseIsSavedBeforeItIsApplied) {
  Cluster c(3, 1000);
  for (Rank r : {1, 2, 3}) c.node(r).saved = VotingIdentity(r, {1, 2, 3});
  FakeNode& n = c.node(1);
  n.saved->write_ts_lease = 5000;
  c.StartNode(2);
  c.StartNode(3);
  c.StartNode(1);
  ASSERT_TRUE(n.voting());
  EXPECT_EQ(n.floor_calls, std::vector<std::uint64_t>{5000});
  EXPECT_EQ(n.saved->write_ts_lease, 5000 + kWriteTsLeaseStep);
  EXPECT_EQ(n.lease_calls, std::vector<std::uint64_t>{5000 + kWriteTsLeaseStep});

  n.syncer->RaiseWriteTsLease(100);  // already covered: nothing saved
  EXPECT_EQ(n.lease_calls.size(), 1u);
  const std::uint64_t ts = 5000 + kWriteTsLeaseStep;  // a write at the lease
  n.fail_save = true;
  n.syncer->RaiseWriteTsLease(ts);
  EXPECT_EQ(n.lease_calls.size(), 1u) << "a lease that is not durable must not be used";
  EXPECT_EQ(n.CountNotes("cannot save IDENTITY to raise the write ts lease"), 1);
  n.fail_save = false;
  n.syncer->RaiseWriteTsLease(ts);
  EXPECT_EQ(n.saved->write_ts_lease, ts + kWriteTsLeaseStep);
  EXPECT_EQ(n.lease_calls.back(), ts + kWriteTsLeaseStep);
  n.syncer->CheckInvariants();

  // A restart starts above the raised lease.
  c.StopNode(1);
  n.floor_calls.clear();
  c.StartNode(1);
  EXPECT_EQ(n.floor_calls, std::vector<std::uint64_t>{ts + kWriteTsLeaseStep});
}

// A node that never voted promised nothing: it registers and votes without a floor.
TEST(MembershipTest, NewNodeNeedsNoWriteTsFloor) {
  Cluster c(3, 1000);
  for (Rank r : {1, 2, 3}) c.StartNode(r);
  ASSERT_TRUE(
      c.RunUntil([&] { return c.node(1).voting() && c.node(2).voting() && c.node(3).voting(); }));
  for (Rank r : {1, 2, 3}) {
    EXPECT_TRUE(c.node(r).floor_calls.empty());
    EXPECT_EQ(c.node(r).saved->write_ts_floor, 0u);
  }
}

// A replaced disk takes the wall-clock floor as soon as a peer lists it as a voter, before
// its join pass can start (here: it waits for a second voting peer), so that writes it
// coordinates meanwhile cannot mint a tag of its old incarnation (simulator seed 20438, 3
// nodes, 10000 steps: (t, 2) minted again while the old (t, 2) waited on a peer's slow disk).
TEST(MembershipTest, ReplacedDiskTakesTheClockFloorAtTheFirstListing) {
  Cluster c(3, 1000);
  c.node(2).saved = VotingIdentity(2, {1, 2, 3});
  c.node(2).data[5] = Value(3, 2);
  FakeNode& n = c.node(1);
  n.wall_clock_us = 1'000'000;
  c.StartNode(2);
  c.StartNode(1);  // node 3 stays down: no join pass (it needs 2 voting peers)
  EXPECT_TRUE(n.floor_calls.empty()) << "nothing known before the first reply";
  c.RunFor(1000);
  EXPECT_FALSE(n.voting());
  EXPECT_EQ(n.CountNotes("a join pass is needed"), 1);
  EXPECT_EQ(n.floor_calls, std::vector<std::uint64_t>{n.wall_clock_us});
  EXPECT_FALSE(n.saved.has_value() && n.saved->write_ts_floor != 0) << "nothing saved yet";
}

TEST(MembershipTest, JoinWaitsForEnoughVotingPeers) {
  Cluster c(3, 1000);
  c.node(2).data[5] = Value(3, 2);
  c.node(2).saved = VotingIdentity(2, {1, 2, 3});
  c.node(3).saved = VotingIdentity(3, {1, 2, 3});
  c.StartNode(2);
  c.StartNode(1);
  c.RunFor(3000);
  EXPECT_FALSE(c.node(1).voting());
  EXPECT_EQ(c.node(1).syncer->GetStatus(c.now).state,
            "joining: waiting for 2 voting peers (have 1)");
  EXPECT_EQ(c.node(1).TagOf(5), Tag{});  // no pass started with too few sources

  c.StartNode(3);
  ASSERT_TRUE(c.RunUntil([&] { return c.node(1).voting(); }));
  EXPECT_EQ(c.node(1).TagOf(5), (Tag{3, 2}));
}

TEST(MembershipTest, JoinReplacesASourceThatStopsAnswering) {
  Cluster c(5, 2 * kWindowSectors);  // K = 5 - 3 + 1 = 3 sources of 4 voting peers
  for (Rank r : {2, 3, 4, 5}) {
    c.node(r).saved = VotingIdentity(r, {1, 2, 3, 4, 5});
    for (SectorIdx s = 0; s < 2 * kWindowSectors; s += 1000) c.node(r).data[s] = Value(2, r);
  }
  c.node(5).data[kWindowSectors + 7] = Value(9, 5);
  for (Rank r : {2, 3, 4, 5}) c.StartNode(r);
  c.StartNode(1);
  ASSERT_TRUE(c.MicroRunUntil(
      [&] { return c.node(1).syncer->GetStatus(c.now).state.starts_with("joining: pulling"); }));
  c.StopNode(2);
  ASSERT_TRUE(c.RunUntil([&] { return c.node(1).voting(); }));
  EXPECT_EQ(c.node(1).CountNotes("peer 2 does not answer, pulling from peer 5 instead"), 1);
  EXPECT_EQ(c.node(1).TagOf(kWindowSectors + 7), (Tag{9, 5}));
  EXPECT_EQ(c.node(1).TagOf(0), (Tag{2, 5}));
}

TEST(MembershipTest, JoinWaitsForASourceWithNoReplacement) {
  Cluster c(3, 2 * kWindowSectors);
  for (Rank r : {2, 3}) {
    c.node(r).saved = VotingIdentity(r, {1, 2, 3});
    c.node(r).data[kWindowSectors + 5] = Value(3, r);
  }
  c.StartNode(2);
  c.StartNode(3);
  c.StartNode(1);
  ASSERT_TRUE(c.MicroRunUntil(
      [&] { return c.node(1).syncer->GetStatus(c.now).state.starts_with("joining: pulling"); }));
  c.StopNode(3);
  c.RunFor(3000);
  EXPECT_FALSE(c.node(1).voting());
  std::string state = c.node(1).syncer->GetStatus(c.now).state;
  EXPECT_NE(state.find("waiting for peer 3"), std::string::npos) << state;
  EXPECT_EQ(c.node(1).CountNotes("waiting for peer 3"), 1);
  c.StartNode(3);
  ASSERT_TRUE(c.RunUntil([&] { return c.node(1).voting(); }));
  EXPECT_EQ(c.node(1).TagOf(kWindowSectors + 5), (Tag{3, 3}));
}

TEST(MembershipTest, BugJoinerVotesVotesBeforePulling) {
  Cluster c(3, 1000);
  c.node(2).data[5] = Value(3, 2);
  c.node(2).saved = VotingIdentity(2, {1, 2, 3});
  c.node(3).saved = VotingIdentity(3, {1, 2, 3});
  c.StartNode(2);
  c.StartNode(3);
  SyncerOptions o = c.Options(1);
  o.bug_joiner_votes = true;
  c.StartNode(1, o);
  EXPECT_TRUE(c.node(1).voting());  // the deliberate bug: votes with an empty disk
  EXPECT_EQ(c.node(1).TagOf(5), Tag{});
  ASSERT_TRUE(c.RunUntil([&] { return c.node(1).TagOf(5) == Tag{3, 2}; }));  // pulls later
}

TEST(MembershipTest, RepliesOfAnotherClusterAreIgnored) {
  Cluster c(3, 1000);
  SyncerOptions o2 = c.Options(2);
  o2.cluster_id = ClusterId(0x11);
  Identity id2 = VotingIdentity(2, {1, 2, 3});
  id2.cluster_id = o2.cluster_id;
  c.node(2).saved = id2;
  c.node(2).data[1] = Value(1, 2);
  c.node(3).saved = VotingIdentity(3, {2, 3});
  c.node(3).data[1] = Value(1, 3);
  c.StartNode(2, o2);
  c.StartNode(3);
  c.StartNode(1);
  c.RunFor(3000);
  // Node 2 lists node 1, but in another cluster: neither a join nor a registration.
  EXPECT_FALSE(c.node(1).voting());
  EXPECT_EQ(c.node(1).syncer->GetStatus(c.now).state,
            "joining: waiting for every peer to answer (1 of 2; a new cluster can start with a "
            "majority: atomdiskd --bootstrap)");
  EXPECT_EQ(c.node(1).CountNotes("belongs to cluster"), 1);
  EXPECT_EQ(c.node(1).peer_features.count(2), 0u) << "another cluster's reply tells nothing";
  EXPECT_EQ(c.node(1).peer_features.at(3), kFeatureTagReads | kFeatureLiveness | kFeatureBatches);
  EXPECT_TRUE(c.SentBy(1, SyncKind::kRegisterVoter).empty());
  EXPECT_TRUE(c.SentBy(1, SyncKind::kDigest).empty());
}

// Every feature this build speaks (daemon/sync/membership.cc sends them in its HelloReply).
constexpr std::uint8_t kOurFeatures = kFeatureTagReads | kFeatureLiveness | kFeatureBatches;

// Hello replies advertise tag-only reads and liveness; each reply of this cluster's newest round
// tells the env what its sender understands, so a peer that stops advertising (downgraded) is
// withdrawn.
TEST(MembershipTest, HelloRepliesTellThePeersFeatures) {
  Cluster c(3, 1000);
  for (Rank r : {1, 2, 3}) c.node(r).saved = VotingIdentity(r, {1, 2, 3});
  for (Rank r : {1, 2, 3}) c.StartNode(r);
  c.RunFor(1000);
  for (Rank r : {1, 2, 3}) {
    std::map<Rank, std::uint8_t> want;
    for (Rank p : {1, 2, 3}) {
      if (p != r) want[p] = kOurFeatures;
    }
    EXPECT_EQ(c.node(r).peer_features, want) << "rank " << int(r);
  }
  // Node 2 now answers like an older node (no features byte decodes as 0).
  c.rewrite = [](Rank from, SyncMessage& m) {
    if (from == 2 && m.kind == SyncKind::kHelloReply) m.features = 0;
  };
  c.RunFor(1000);
  EXPECT_EQ(c.node(1).peer_features.at(2), 0u);
  EXPECT_EQ(c.node(3).peer_features.at(2), 0u);
  EXPECT_EQ(c.node(1).peer_features.at(3), kOurFeatures);
  // And back: the next reply with the bit turns tag reads on again.
  c.rewrite = nullptr;
  c.RunFor(1000);
  EXPECT_EQ(c.node(1).peer_features.at(2), kOurFeatures);
}

TEST(MembershipTest, RegisterVoterIsDurableBeforeItsAck) {
  Cluster c(3, 1000);
  c.node(1).saved = VotingIdentity(1, {1});
  c.StartNode(1);
  c.StartNode(2);  // so that messages to 2 are queued, not dropped
  FakeNode& n = c.node(1);
  std::size_t log_before = c.log.size();
  SyncMessage reg;
  reg.sender = 2;
  reg.kind = SyncKind::kRegisterVoter;
  reg.request_id = 77;

  n.fail_save = true;
  n.events.clear();
  n.syncer->OnMessage(reg, c.now);
  n.syncer->CheckInvariants();
  EXPECT_EQ(c.SentBy(1, SyncKind::kRegisterVoterAck).size(), 0u);
  EXPECT_FALSE(n.syncer->identity().HasVoter(2));
  EXPECT_EQ(n.events, std::vector<std::string>{"save"});

  n.fail_save = false;
  n.syncer->OnMessage(reg, c.now);
  auto acks = c.SentBy(1, SyncKind::kRegisterVoterAck);
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_EQ(acks[0].to, 2);
  EXPECT_TRUE(n.saved->HasVoter(2));
  EXPECT_TRUE(n.syncer->identity().HasVoter(2));
  // Already registered: acknowledged again without another save.
  int saves = n.saves;
  n.syncer->OnMessage(reg, c.now);
  EXPECT_EQ(n.saves, saves);
  EXPECT_EQ(c.SentBy(1, SyncKind::kRegisterVoterAck).size(), 2u);
  EXPECT_GT(c.log.size(), log_before);
}

TEST(MembershipTest, RegistrationWaitsForQuorumAcks) {
  // 5 nodes: a fresh node needs Quorum()-1 = 2 durable registrations before it votes.
  Cluster c(5, 1000);
  for (Rank r : {2, 3, 4, 5}) c.node(r).saved = VotingIdentity(r, {2, 3, 4, 5});
  for (Rank r : {1, 2, 3, 4, 5}) c.StartNode(r);
  for (Rank r : {3, 4, 5}) c.node(r).fail_save = true;  // registrations fail there
  c.RunFor(2000);
  EXPECT_FALSE(c.node(1).voting());
  EXPECT_EQ(c.node(1).syncer->GetStatus(c.now).state,
            "joining: registering as a voter (1 of 2 acknowledged)");
  c.node(4).fail_save = false;
  ASSERT_TRUE(c.RunUntil([&] { return c.node(1).voting(); }));
  EXPECT_TRUE(c.node(2).saved->HasVoter(1));
  EXPECT_TRUE(c.node(4).saved->HasVoter(1));
}

Identity GenesisIdentity(Rank self) {
  Identity id;
  id.cluster_id = ClusterId(0xab);
  id.rank = self;
  id.genesis = true;
  return id;
}

TEST(MembershipTest, BootstrappedClusterVotesWithAMajority) {
  Cluster c(3, 1000);
  for (Rank r : {1, 2, 3}) c.node(r).saved = GenesisIdentity(r);
  c.StartNode(1);
  EXPECT_EQ(c.node(1).syncer->GetStatus(c.now).state,
            "joining (founding member): waiting for a majority to answer (0 of 2 peers, 1 "
            "needed)");
  c.StartNode(2);
  ASSERT_TRUE(c.RunUntil([&] { return c.node(1).voting() && c.node(2).voting(); }));
  for (Rank r : {1, 2}) {
    EXPECT_TRUE(c.node(r).saved->voting);
    EXPECT_FALSE(c.node(r).saved->genesis);      // cleared once it voted
    EXPECT_FALSE(c.node(r).saved->registering);  // likewise
    EXPECT_EQ(c.node(r).CountNotes("join pass"), 0);
  }
  // The founding member that was down starts later: nobody lists it, it registers and votes.
  c.StartNode(3);
  ASSERT_TRUE(c.RunUntil([&] { return c.node(3).voting(); }));
  EXPECT_EQ(c.node(3).CountNotes("join pass"), 0);
}

TEST(MembershipTest, GenesisClaimOfAReplacedDiskIsRefusedAndRemembered) {
  const std::uint64_t sectors = 1000;
  Cluster c(3, sectors);
  c.node(2).saved = VotingIdentity(2, {1, 2, 3});
  c.node(3).saved = VotingIdentity(3, {1, 2, 3});
  c.node(2).data[7] = Value(4, 1);       // a write node 1's old disk acknowledged
  c.node(1).saved = GenesisIdentity(1);  // the operator bootstrapped the new disk by mistake
  c.StartNode(2);
  c.StartNode(3);
  c.StartNode(1);
  ASSERT_TRUE(c.RunUntil([&] { return c.node(1).CountNotes("although its IDENTITY says") > 0; }));
  ASSERT_TRUE(c.node(1).saved.has_value());
  EXPECT_FALSE(c.node(1).saved->genesis);  // a restart does not try the shortcut again
  ASSERT_TRUE(c.RunUntil([&] { return c.node(1).voting(); }));
  EXPECT_GE(c.node(1).CountNotes("join pass done"), 1);
  EXPECT_EQ(c.node(1).TagOf(7), (Tag{4, 1}));
}

TEST(MembershipTest, BugGenesisTrustedVotesWithoutAJoinPass) {
  Cluster c(3, 1000);
  c.node(2).saved = VotingIdentity(2, {1, 2, 3});
  c.node(3).saved = VotingIdentity(3, {1, 2, 3});
  c.node(1).saved = GenesisIdentity(1);
  SyncerOptions o = c.Options(1);
  o.bug_genesis_trusted = true;
  c.StartNode(2);
  c.StartNode(3);
  c.StartNode(1, o);
  ASSERT_TRUE(c.RunUntil([&] { return c.node(1).voting(); }));
  EXPECT_EQ(c.node(1).CountNotes("join pass"), 0);
}

// A node that found it never voted and crashed while registering: the peers list it because
// of that registration, which is no sign of a replaced disk.
TEST(MembershipTest, RegisteringNodeRestartedRegistersAgainWithoutAJoinPass) {
  Cluster c(3, 1000);
  Identity registering;
  registering.cluster_id = ClusterId(0xab);
  registering.rank = 1;
  registering.registering = true;
  c.node(1).saved = registering;
  c.node(2).saved = VotingIdentity(2, {1, 2, 3});
  c.node(3).saved = VotingIdentity(3, {1, 2, 3});
  c.StartNode(2);
  c.StartNode(3);
  c.StartNode(1);
  ASSERT_TRUE(c.RunUntil([&] { return c.node(1).voting(); }));
  EXPECT_EQ(c.node(1).CountNotes("registering again"), 1);
  EXPECT_EQ(c.node(1).CountNotes("join pass"), 0);
  EXPECT_FALSE(c.node(1).saved->registering);
}

TEST(MembershipTest, FreshNodeMarksItselfRegisteringBeforeItsFirstRegisterVoter) {
  Cluster c(3, 1000);
  for (Rank r : {1, 2, 3}) c.StartNode(r);
  bool marked_before_send = true;
  c.rewrite = [&](Rank from, SyncMessage& msg) {
    if (msg.kind == SyncKind::kRegisterVoter && c.node(from).saved && !c.node(from).saved->voting &&
        !c.node(from).saved->registering) {
      marked_before_send = false;
    }
  };
  ASSERT_TRUE(c.RunUntil([&] { return c.node(1).voting() && c.node(2).voting(); }));
  EXPECT_TRUE(marked_before_send);
}

// Voters a peer knows of are remembered: node 4 is down, only node 1 knows it voted, and
// after one Hello round nodes 2 and 3 know it too (durably).
TEST(MembershipTest, VotersKnownToAPeerAreLearned) {
  Cluster c(5, 1000);
  c.node(1).saved = VotingIdentity(1, {1, 2, 3, 4});
  c.node(2).saved = VotingIdentity(2, {1, 2, 3});
  c.node(3).saved = VotingIdentity(3, {1, 2, 3});
  for (Rank r : {1, 2, 3}) c.StartNode(r);
  ASSERT_TRUE(
      c.RunUntil([&] { return c.node(2).saved->HasVoter(4) && c.node(3).saved->HasVoter(4); }));
  EXPECT_FALSE(c.node(2).saved->HasVoter(5));  // nobody knows of 5
}

}  // namespace
}  // namespace atomdisk::synctest
