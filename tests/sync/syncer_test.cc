// Tests of the whole Syncer (daemon/sync/syncer.cc wires the parts together): a replaced
// disk joining under a lossy, duplicating, reordering network, on the in-memory cluster of
// sync_cluster.h. The parts have their own files: membership_test.cc, resync_pass_test.cc,
// sync_server_test.cc, scrub_test.cc, rate_limiter_test.cc, identity_test.cc.
#include "daemon/sync/syncer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "common/request_id.h"
#include "common/status.h"
#include "common/sync_wire.h"
#include "common/types.h"
#include "daemon/sync/identity.h"
#include "tests/sync/sync_cluster.h"

namespace atomdisk::synctest {
namespace {

// One seed of a replaced disk (node 1) joining under a lossy, duplicating, reordering
// network, with writes going on (each on the quorum {2, 3}) and node 1 crashing once
// mid-way. Returns whether node 1 ever voted while missing a write acknowledged before it
// started; checks that after healing every node votes and all hold the same newest tags.
bool ChaosRunVotedEarly(std::uint64_t seed, bool bug_joiner_votes) {
  const std::uint64_t sectors = 2 * kWindowSectors + 300;
  Cluster c(3, sectors);
  c.SetChaos(seed, 0.15, 0.05, 150);
  std::uint64_t ts = 1;
  auto write = [&](SectorIdx s, std::vector<Rank> on) {
    ++ts;
    for (Rank r : on) {
      FakeNode& n = c.node(r);
      if (Value(ts, 2).tag > n.TagOf(s)) n.data[s] = Value(ts, 2);
      if (n.syncer) n.syncer->OnLocalWrite(s);
    }
  };
  for (int i = 0; i < 300; ++i) write(c.Random(sectors), {2, 3});
  for (int i = 0; i < 50; ++i) write(c.Random(sectors), {2});  // not acknowledged
  std::map<SectorIdx, Tag> acked;                              // on both 2 and 3 when node 1 starts
  for (const auto& [s, v] : c.node(2).data) acked[s] = std::min(v.tag, c.node(3).TagOf(s));
  for (Rank r : {2, 3}) c.node(r).saved = VotingIdentity(r, {1, 2, 3});
  bool early = false;
  c.node(1).on_vote = [&] {
    for (const auto& [s, t] : acked) early = early || c.node(1).TagOf(s) < t;
  };
  auto options = [&](Rank r) {
    SyncerOptions o = c.Options(r);
    o.resync_interval_ms = 2000;
    o.fetch_batch = 4;
    o.fetch_window = 3;
    o.bug_joiner_votes = bug_joiner_votes;
    return o;
  };
  c.StartNode(2, options(2));
  c.StartNode(3, options(3));
  c.StartNode(1, options(1));
  for (int step = 0; step < 1000; ++step) {  // 10 s
    if (step % 5 == 0) write(c.Random(sectors), {2, 3});
    if (step == 150) c.StopNode(1);
    if (step == 200) c.StartNode(1, options(1));
    c.Step();
  }
  c.Heal();
  EXPECT_TRUE(c.RunUntil(
      [&] {
        for (Rank r : {1, 2, 3}) {
          if (!c.node(r).voting()) return false;
        }
        return true;
      },
      20000));
  c.RunFor(6000);  // a periodic pass after the last write
  for (Rank r : {1, 2, 3}) {
    for (Rank q : {1, 2, 3}) {
      EXPECT_EQ(c.node(r).data.size(), c.node(q).data.size()) << int(r) << " vs " << int(q);
      for (const auto& [s, v] : c.node(q).data) {
        if (c.node(r).TagOf(s) != v.tag) {
          ADD_FAILURE() << "sector " << s << " differs between " << int(r) << " and " << int(q);
          return early;
        }
      }
    }
    EXPECT_EQ(c.node(r).older_absorbs, 0);
    EXPECT_EQ(c.node(r).saved->voters, (std::vector<Rank>{1, 2, 3}));
    // Marked active only while a (periodic) pass runs.
    EXPECT_TRUE(!c.node(r).saved->resync_active ||
                c.node(r).syncer->GetStatus(c.now).resync.active);
  }
  return early;
}

TEST(SyncerTest, ChaosJoinConvergesAndNeverVotesEarly) {
  for (std::uint64_t seed = 1; seed <= 30; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    EXPECT_FALSE(ChaosRunVotedEarly(seed, false));
  }
}

// The same harness catches the deliberate bug: a joiner that votes before it pulled.
TEST(SyncerTest, ChaosCatchesBugJoinerVotes) {
  int caught = 0;
  for (std::uint64_t seed = 1; seed <= 5; ++seed) caught += ChaosRunVotedEarly(seed, true) ? 1 : 0;
  EXPECT_GT(caught, 0);
}

// A node's sync request ids start at a random point drawn per run (SyncerOptions::id_seed; the
// daemon's comes from RAND_bytes), not at the start time: a reply recorded in an earlier run,
// even one before a reboot (the steady clock restarts), matches no request of this run.
TEST(SyncerTest, RequestIdsStartWhereTheSeedSays) {
  auto first_hello_id = [](std::uint64_t seed) {
    Cluster c(2, 1000);
    for (Rank r : {1, 2}) c.node(r).saved = VotingIdentity(r, {1, 2});
    SyncerOptions o = c.Options(1);
    o.id_seed = seed;
    c.StartNode(1, o);
    c.RunFor(10);
    std::vector<SentRecord> hellos = c.SentBy(1, SyncKind::kHello);
    EXPECT_FALSE(hellos.empty());
    return hellos.empty() ? 0 : hellos.front().request_id;
  };
  const std::uint64_t a = first_hello_id(7), b = first_hello_id(8);
  EXPECT_NE(a, b);
  EXPECT_GE(a, FirstRequestId(7));
  EXPECT_LT(a, FirstRequestId(7) + 16);
  EXPECT_EQ(first_hello_id(7), a);  // the same seed, the same run (the simulator replays)
}

}  // namespace
}  // namespace atomdisk::synctest
