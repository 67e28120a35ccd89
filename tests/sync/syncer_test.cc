// Unit tests of the Syncer state machine (daemon/sync/syncer.cc): several Syncers, each over
// its own in-memory "store" (a map of sector -> Triple), joined by a tiny in-memory cluster
// that queues their messages and delivers them in order. Absorbs complete on the next pump;
// identity saves are recorded. CheckInvariants() runs after every step.
#include "daemon/sync/syncer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "common/status.h"
#include "common/sync_wire.h"
#include "common/types.h"
#include "daemon/sync/identity.h"

namespace atomdisk {
namespace {

Uuid ClusterId(std::uint8_t b) {
  Uuid u;
  u.bytes.fill(b);
  return u;
}

Triple Value(std::uint64_t ts, Rank wr) {
  SectorData d;
  d.fill(static_cast<std::uint8_t>(ts * 31 + wr));
  return Triple{Tag{ts, wr}, MakeSector(d.data())};
}

// What one node sent, without sector data.
struct SentRecord {
  Rank from = 0;
  Rank to = 0;
  SyncKind kind = SyncKind::kHello;
  std::uint64_t first = 0;
  std::uint32_t count = 0;
  std::size_t sectors = 0;
};

class Cluster;

// One node: its store, its identity file and its Syncer.
class FakeNode : public SyncEnv {
 public:
  FakeNode(Cluster* cluster, Rank rank) : cluster_(cluster), rank_(rank) {}

  void SendSync(Rank to, const SyncMessage& msg) override;
  Status ScanTags(SectorIdx first, std::uint64_t count, bool verify_all, TagView view,
                  const std::function<void(SectorIdx, Tag, bool ok)>& fn) override {
    if (scan_fails) return Status::IOError("scan fails on cue");
    std::set<SectorIdx> keys;
    for (auto it = data.lower_bound(first); it != data.end() && it->first < first + count; ++it) {
      keys.insert(it->first);
    }
    for (auto it = corrupt.lower_bound(first); it != corrupt.end() && it->first < first + count;
         ++it) {
      keys.insert(it->first);
    }
    for (SectorIdx s : keys) {
      auto c = corrupt.find(s);
      auto ahead = served_ahead.find(s);
      if (c != corrupt.end()) {
        fn(s, c->second, false);
      } else if (view == TagView::kServed && ahead != served_ahead.end()) {
        fn(s, ahead->second.tag, true);
      } else {
        fn(s, data.at(s).tag, true);
      }
    }
    (void)verify_all;
    return Status::Ok();
  }
  Result<Triple> ReadSector(SectorIdx sector) override {
    auto c = corrupt.find(sector);
    if (c != corrupt.end() && c->second == Tag{}) return Status::Corruption("both slots bad");
    if (unreadable.count(sector) != 0) return Status::IOError("unreadable on cue");
    if (auto ahead = served_ahead.find(sector); ahead != served_ahead.end()) return ahead->second;
    auto it = data.find(sector);
    if (it == data.end()) return Triple{Tag{}, ZeroSector()};
    return it->second;
  }
  void ForEachServedAhead(const std::function<void(SectorIdx)>& fn) override {
    for (const auto& [sector, value] : served_ahead) fn(sector);
  }
  void Absorb(SectorIdx sector, const Triple& value, std::uint64_t token) override {
    if (value.tag <= TagOf(sector)) ++older_absorbs;
    absorbs.emplace_back(sector, value, token);
  }
  Status SaveIdentity(const Identity& identity) override {
    events.push_back("save");
    if (fail_save) return Status::IOError("save fails on cue");
    saved = identity;
    ++saves;
    return Status::Ok();
  }
  void SetVoting(bool v) override {
    voting_calls.push_back(v);
    if (v && on_vote) on_vote();
  }
  void Note(const std::string& line) override { notes.push_back(line); }
  std::uint64_t WallClockMicros() override { return wall_clock_us; }
  void SetWriteTsFloor(std::uint64_t floor) override { floor_calls.push_back(floor); }
  void SetWriteTsLease(std::uint64_t lease) override { lease_calls.push_back(lease); }
  void SetPeerFeatures(Rank peer, std::uint8_t features) override {
    peer_features[peer] = features;
    ++peer_feature_calls;
  }

  Tag TagOf(SectorIdx s) const {
    auto it = data.find(s);
    return it == data.end() ? Tag{} : it->second.tag;
  }
  bool voting() const { return syncer != nullptr && syncer->voting(); }
  int CountNotes(const std::string& part) const {
    return static_cast<int>(std::count_if(notes.begin(), notes.end(), [&](const std::string& n) {
      return n.find(part) != std::string::npos;
    }));
  }
  // Completes the pending absorbs (durable at once); returns how many.
  std::size_t PumpAbsorbs(std::int64_t now_ms);

  Rank rank() const { return rank_; }

  std::map<SectorIdx, Triple> data;
  std::map<SectorIdx, Tag> corrupt;  // sector -> tag its scan reports (ok = false)
  std::set<SectorIdx> unreadable;    // ReadSector fails
  // Values being persisted that this node serves (TagView::kServed) above data's durable
  // ones; a sector here must also be in data.
  std::map<SectorIdx, Triple> served_ahead;
  std::optional<Identity> saved;
  int saves = 0;
  bool fail_save = false;
  bool scan_fails = false;
  int absorb_failures_left = 0;
  int older_absorbs = 0;
  std::vector<bool> voting_calls;
  std::uint64_t wall_clock_us = 1'000'000;
  std::vector<std::uint64_t> floor_calls;      // SetWriteTsFloor arguments
  std::vector<std::uint64_t> lease_calls;      // SetWriteTsLease arguments
  std::map<Rank, std::uint8_t> peer_features;  // the last SetPeerFeatures of each peer
  int peer_feature_calls = 0;
  std::vector<std::string> notes;
  std::vector<std::string> events;
  std::function<void()> on_vote;
  std::deque<std::tuple<SectorIdx, Triple, std::uint64_t>> absorbs;
  std::unique_ptr<Syncer> syncer;

 private:
  Cluster* cluster_;
  Rank rank_;
};

struct Envelope {
  Rank from;
  Rank to;
  SyncMessage msg;
  std::int64_t deliver_ms = 0;
};

class Cluster {
 public:
  static constexpr std::int64_t kStepMs = 10;

  Cluster(int n, std::uint64_t sectors) : sectors_(sectors) {
    for (int i = 1; i <= n; ++i) ranks_.push_back(static_cast<Rank>(i));
    for (Rank r : ranks_) nodes_[r] = std::make_unique<FakeNode>(this, r);
  }

  SyncerOptions Options(Rank r) const {
    SyncerOptions o;
    o.self = r;
    o.ranks = ranks_;
    o.sectors = sectors_;
    o.cluster_id = ClusterId(0xab);
    o.request_timeout_ms = 300;
    o.hello_interval_ms = 500;
    o.joining_hello_interval_ms = 100;
    o.checkpoint_interval_ms = 0;
    return o;
  }

  FakeNode& node(Rank r) { return *nodes_.at(r); }

  // Creates node r's Syncer over its current identity file and store, and starts it.
  void StartNode(Rank r, std::optional<SyncerOptions> options = std::nullopt) {
    FakeNode& n = node(r);
    n.syncer = std::make_unique<Syncer>(options ? *options : Options(r), n.saved,
                                        n.data.empty() && n.corrupt.empty(), &n);
    ASSERT_TRUE(n.syncer->Start(now).ok());
    n.syncer->CheckInvariants();
  }
  // Drops node r's Syncer (a crash): its queued messages and unfinished absorbs are lost.
  void StopNode(Rank r) {
    node(r).syncer.reset();
    node(r).absorbs.clear();
    std::erase_if(queue_, [&](const Envelope& e) { return e.from == r || e.to == r; });
  }

  void Send(Rank from, Rank to, const SyncMessage& sent) {
    EXPECT_NE(from, to);
    SyncMessage msg = sent;
    if (rewrite) rewrite(from, msg);
    log.push_back({from, to, msg.kind, msg.first, msg.count, msg.sectors.size()});
    if (node(from).syncer == nullptr || node(to).syncer == nullptr) return;  // down
    if (!chaos_) {
      queue_.push_back({from, to, msg, now});
      return;
    }
    if (Chance(drop_)) return;
    int copies = Chance(duplicate_) ? 2 : 1;
    for (int i = 0; i < copies; ++i) {
      queue_.push_back({from, to, msg, now + static_cast<std::int64_t>(rng_() % max_delay_ms_)});
    }
  }

  // Drops, duplicates, delays and reorders messages, from one seed; Heal() stops it.
  void SetChaos(std::uint64_t seed, double drop, double duplicate, std::uint64_t max_delay_ms) {
    chaos_ = true;
    rng_.seed(seed);
    drop_ = drop;
    duplicate_ = duplicate;
    max_delay_ms_ = std::max<std::uint64_t>(1, max_delay_ms);
  }
  void Heal() { chaos_ = false; }
  std::uint64_t Random(std::uint64_t n) { return rng_() % n; }

  bool DeliverOne() {
    // The first message due (any due one under chaos).
    std::vector<std::size_t> due;
    for (std::size_t i = 0; i < queue_.size() && due.size() < 8; ++i) {
      if (queue_[i].deliver_ms <= now) due.push_back(i);
    }
    if (due.empty()) return false;
    std::size_t pick = due[chaos_ ? Random(due.size()) : 0];
    Envelope e = std::move(queue_[pick]);
    queue_.erase(queue_.begin() + static_cast<std::ptrdiff_t>(pick));
    FakeNode& to = node(e.to);
    if (to.syncer != nullptr) {
      to.syncer->OnMessage(e.msg, now);
      to.syncer->CheckInvariants();
    }
    return true;
  }

  bool PumpAbsorbs() {
    std::size_t n = 0;
    for (auto& [r, node] : nodes_) n += node->PumpAbsorbs(now);
    return n > 0;
  }

  void TickAll() {
    now += kStepMs;
    for (auto& [r, n] : nodes_) {
      if (n->syncer == nullptr) continue;
      n->syncer->Tick(now);
      n->syncer->CheckInvariants();
    }
  }

  // One step: every queued message (and the ones they cause), the absorbs, then a tick.
  void Step() {
    for (int guard = 0; guard < 1000000; ++guard) {
      bool any = DeliverOne();
      if (!any) any = PumpAbsorbs();
      if (!any) break;
    }
    TickAll();
  }
  // Smallest unit of progress: one message, else the absorbs, else a tick.
  void MicroStep() {
    if (DeliverOne()) return;
    if (PumpAbsorbs()) return;
    TickAll();
  }

  void RunFor(std::int64_t ms) {
    std::int64_t end = now + ms;
    while (now < end) Step();
  }
  bool RunUntil(const std::function<bool()>& done, std::int64_t max_ms = 60000) {
    std::int64_t end = now + max_ms;
    while (now < end) {
      if (done()) return true;
      Step();
    }
    return done();
  }

  // RunUntil at the granularity of single messages.
  bool MicroRunUntil(const std::function<bool()>& done, std::int64_t max_ms = 60000) {
    std::int64_t end = now + max_ms;
    while (now < end) {
      if (done()) return true;
      MicroStep();
    }
    return done();
  }

  std::vector<SentRecord> SentBy(Rank from, SyncKind kind) const {
    std::vector<SentRecord> out;
    for (const SentRecord& s : log) {
      if (s.from == from && s.kind == kind) out.push_back(s);
    }
    return out;
  }

  std::int64_t now = 0;
  std::vector<SentRecord> log;
  // Changes a message on its way (e.g. a HelloReply as an older node would send it).
  std::function<void(Rank from, SyncMessage&)> rewrite;

 private:
  bool Chance(double p) { return static_cast<double>(rng_() % 1000000) < p * 1e6; }

  std::uint64_t sectors_;
  std::vector<Rank> ranks_;
  std::map<Rank, std::unique_ptr<FakeNode>> nodes_;
  std::deque<Envelope> queue_;
  bool chaos_ = false;
  std::mt19937_64 rng_;
  double drop_ = 0, duplicate_ = 0;
  std::uint64_t max_delay_ms_ = 1;
};

void FakeNode::SendSync(Rank to, const SyncMessage& msg) { cluster_->Send(rank_, to, msg); }

std::size_t FakeNode::PumpAbsorbs(std::int64_t now_ms) {
  auto pending = std::exchange(absorbs, {});
  for (auto& [sector, value, token] : pending) {
    Status st;
    if (absorb_failures_left > 0) {
      --absorb_failures_left;
      st = Status::IOError("absorb fails on cue");
    } else if (value.tag > TagOf(sector) || corrupt.count(sector) != 0) {
      data[sector] = value;
      corrupt.erase(sector);
      if (syncer) syncer->OnLocalWrite(sector);
    }
    if (syncer) {
      events.push_back("absorbed");
      syncer->OnAbsorbed(token, st, now_ms);
      syncer->CheckInvariants();
    }
  }
  return pending.size();
}

Identity VotingIdentity(Rank self, std::vector<Rank> voters) {
  Identity id;
  id.cluster_id = ClusterId(0xab);
  id.rank = self;
  id.voting = true;
  id.voters = std::move(voters);
  return id;
}

constexpr std::uint64_t kWindowSectors = kWindowBuckets * kBucketSectors;

// ------------------------------------------------------------------------- membership

TEST(SyncerTest, FreshClusterVotesOnlyOnceEveryNodeAnswered) {
  Cluster c(3, 1000);
  c.StartNode(1);
  c.StartNode(2);
  c.RunFor(2000);
  // Node 3 never answered: nobody may decide that 1 and 2 never voted.
  EXPECT_FALSE(c.node(1).voting());
  EXPECT_FALSE(c.node(2).voting());
  EXPECT_EQ(c.node(1).syncer->GetStatus(c.now).state,
            "joining: waiting for every peer to answer (1 of 2)");
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

TEST(SyncerTest, SingleNodeVotesAtOnce) {
  Cluster c(1, 1000);
  c.StartNode(1);
  EXPECT_TRUE(c.node(1).voting());
  ASSERT_TRUE(c.node(1).saved.has_value());
  EXPECT_TRUE(c.node(1).saved->voting);
  EXPECT_EQ(c.node(1).saved->voters, std::vector<Rank>{1});
  EXPECT_EQ(c.node(1).syncer->GetStatus(c.now).resync.passes_done, 1u);
}

TEST(SyncerTest, LegacyStoreVotesAndMismatchedIdentityIsRefused) {
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

TEST(SyncerTest, StartFailsWhenIdentityCannotBeSaved) {
  Cluster c(3, 1000);
  c.node(1).fail_save = true;
  Syncer s(c.Options(1), std::nullopt, true, &c.node(1));
  EXPECT_EQ(s.Start(0).code(), StatusCode::kIOError);
}

// Node 1 lost its disk; 2 and 3 remember it voted. It must pull before it votes.
TEST(SyncerTest, ReplacedDiskJoinsAfterPullingEverythingNewer) {
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
TEST(SyncerTest, JoinPullsAValueItsWriterStillPersists) {
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
TEST(SyncerTest, JoinPassSetsAWriteTsFloorBeforeVoting) {
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
TEST(SyncerTest, WriteTsLeaseIsSavedBeforeItIsApplied) {
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
TEST(SyncerTest, NewNodeNeedsNoWriteTsFloor) {
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
TEST(SyncerTest, ReplacedDiskTakesTheClockFloorAtTheFirstListing) {
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

TEST(SyncerTest, JoinWaitsForEnoughVotingPeers) {
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

TEST(SyncerTest, JoinReplacesASourceThatStopsAnswering) {
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

TEST(SyncerTest, JoinWaitsForASourceWithNoReplacement) {
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

TEST(SyncerTest, BugJoinerVotesVotesBeforePulling) {
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

TEST(SyncerTest, RepliesOfAnotherClusterAreIgnored) {
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
            "joining: waiting for every peer to answer (1 of 2)");
  EXPECT_EQ(c.node(1).CountNotes("belongs to cluster"), 1);
  EXPECT_EQ(c.node(1).peer_features.count(2), 0u) << "another cluster's reply tells nothing";
  EXPECT_EQ(c.node(1).peer_features.at(3), kFeatureTagReads);
  EXPECT_TRUE(c.SentBy(1, SyncKind::kRegisterVoter).empty());
  EXPECT_TRUE(c.SentBy(1, SyncKind::kDigest).empty());
}

// Hello replies advertise tag-only reads; each reply of this cluster's newest round tells the
// env what its sender understands, so a peer that stops advertising (downgraded) is withdrawn.
TEST(SyncerTest, HelloRepliesTellThePeersFeatures) {
  Cluster c(3, 1000);
  for (Rank r : {1, 2, 3}) c.node(r).saved = VotingIdentity(r, {1, 2, 3});
  for (Rank r : {1, 2, 3}) c.StartNode(r);
  c.RunFor(1000);
  for (Rank r : {1, 2, 3}) {
    std::map<Rank, std::uint8_t> want;
    for (Rank p : {1, 2, 3}) {
      if (p != r) want[p] = kFeatureTagReads;
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
  EXPECT_EQ(c.node(1).peer_features.at(3), kFeatureTagReads);
  // And back: the next reply with the bit turns tag reads on again.
  c.rewrite = nullptr;
  c.RunFor(1000);
  EXPECT_EQ(c.node(1).peer_features.at(2), kFeatureTagReads);
}

TEST(SyncerTest, RegisterVoterIsDurableBeforeItsAck) {
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

TEST(SyncerTest, RegistrationWaitsForQuorumAcks) {
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

// ------------------------------------------------------------------------- resync

TEST(SyncerTest, RestartedNodePullsOnlyWhatDiffers) {
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

TEST(SyncerTest, UnresponsivePeerIsDroppedFromAPass) {
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

TEST(SyncerTest, PassResumesFromSavedWindow) {
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

TEST(SyncerTest, JoinPassResumesFromSavedWindow) {
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

TEST(SyncerTest, RateLimitBoundsBytesPulled) {
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

TEST(SyncerTest, FailedAbsorbIsRetried) {
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

TEST(SyncerTest, UnreadableSectorAtOneSourceIsFetchedFromAnother) {
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

// ------------------------------------------------------------------------- server side

TEST(SyncerTest, HostileRequestsAreIgnored) {
  const std::uint64_t sectors = 1000;  // 4 buckets
  Cluster c(3, sectors);
  for (Rank r : {1, 2}) c.node(r).saved = VotingIdentity(r, {1, 2, 3});
  c.node(1).data[999] = Value(2, 1);
  c.StartNode(1);
  c.StartNode(2);
  c.RunFor(2000);
  Syncer& s = *c.node(1).syncer;
  auto replies = [&] {
    std::size_t n = 0;
    for (const auto& r : c.log) {
      n += r.from == 1 && (r.kind == SyncKind::kDigestReply || r.kind == SyncKind::kEntriesReply ||
                           r.kind == SyncKind::kFetchReply)
               ? 1
               : 0;
    }
    return n;
  };
  std::size_t before = replies();
  auto msg = [](Rank sender, SyncKind kind, std::uint64_t first, std::uint32_t count) {
    SyncMessage m;
    m.sender = sender;
    m.kind = kind;
    m.request_id = 999;
    m.first = first;
    m.count = count;
    return m;
  };
  const std::uint64_t kHuge = ~std::uint64_t{0};
  std::vector<SyncMessage> bad = {
      msg(2, SyncKind::kDigest, 0, 0),
      msg(2, SyncKind::kDigest, 0, kMaxDigestBuckets + 1),
      msg(2, SyncKind::kDigest, 4, 1),
      msg(2, SyncKind::kDigest, 3, 2),
      msg(2, SyncKind::kDigest, kHuge, 1),
      msg(2, SyncKind::kDigest, kHuge - 1, 5),
      msg(2, SyncKind::kEntries, 0, 0),
      msg(2, SyncKind::kEntries, 0, kMaxEntrySectors + 1),
      msg(2, SyncKind::kEntries, 1000, 1),
      msg(2, SyncKind::kEntries, 999, 2),
      msg(2, SyncKind::kEntries, kHuge - 1, 10),
      msg(2, SyncKind::kFetch, 0, 0),
      msg(1, SyncKind::kDigest, 0, 1),       // from self
      msg(9, SyncKind::kDigest, 0, 1),       // not a member
      msg(2, SyncKind::kDigestReply, 0, 1),  // answers nothing we asked
      msg(2, SyncKind::kFetchReply, 0, 0),
  };
  SyncMessage fetch_far = msg(2, SyncKind::kFetch, 0, 0);
  fetch_far.sectors = {1, 1000};
  bad.push_back(fetch_far);
  SyncMessage fetch_many = msg(2, SyncKind::kFetch, 0, 0);
  fetch_many.sectors.assign(kMaxFetchSectors + 1, 1);
  bad.push_back(fetch_many);
  SyncMessage fetch_huge = msg(2, SyncKind::kFetch, 0, 0);
  fetch_huge.sectors = {kHuge};
  bad.push_back(fetch_huge);
  for (const SyncMessage& m : bad) {
    s.OnMessage(m, c.now);
    s.CheckInvariants();
  }
  EXPECT_EQ(replies(), before);
  EXPECT_EQ(c.node(1).CountNotes("ignoring an out-of-range"), 1);

  // Well-formed requests at the edges are answered.
  s.OnMessage(msg(2, SyncKind::kDigest, 0, 4), c.now);
  s.OnMessage(msg(2, SyncKind::kEntries, 744, 256), c.now);
  SyncMessage fetch_ok = msg(2, SyncKind::kFetch, 0, 0);
  fetch_ok.sectors = {999, 0};
  s.OnMessage(fetch_ok, c.now);
  EXPECT_EQ(replies(), before + 3);
}

TEST(SyncerTest, DigestsFollowLocalWrites) {
  Cluster c(2, 1000);
  for (Rank r : {1, 2}) c.node(r).saved = VotingIdentity(r, {1, 2});
  c.node(1).data[3] = Value(2, 1);
  c.node(2).data[3] = Value(2, 1);
  c.StartNode(1);
  c.StartNode(2);
  ASSERT_TRUE(
      c.RunUntil([&] { return c.node(1).syncer->GetStatus(c.now).resync.passes_done == 1; }));
  EXPECT_TRUE(c.SentBy(1, SyncKind::kEntries).empty());
  // A write on node 2 (through its register) invalidates its cached digest.
  c.node(2).data[4] = Value(3, 2);
  c.node(2).syncer->OnLocalWrite(4);
  ASSERT_TRUE(c.node(1).syncer->StartResync(c.now).ok());
  EXPECT_EQ(c.node(1).syncer->StartResync(c.now).code(), StatusCode::kBusy);
  ASSERT_TRUE(
      c.RunUntil([&] { return c.node(1).syncer->GetStatus(c.now).resync.passes_done == 2; }));
  EXPECT_EQ(c.node(1).TagOf(4), (Tag{3, 2}));
  EXPECT_EQ(c.SentBy(1, SyncKind::kEntries).size(), 1u);
}

// ------------------------------------------------------------------------- scrub

TEST(SyncerTest, ScrubRepairsCorruptSectorsFromPeers) {
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

TEST(SyncerTest, ScrubCountsUnrepairedWhenPeersAreSilent) {
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

TEST(SyncerTest, PeriodicScrubAndResync) {
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

// ------------------------------------------------------------------------- chaos

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

}  // namespace
}  // namespace atomdisk
