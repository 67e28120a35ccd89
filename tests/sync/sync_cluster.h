// A tiny in-memory cluster of Syncers for the tests of tests/sync/ (one file per part of
// daemon/sync/): several Syncers, each over its own in-memory "store" (a map of sector ->
// Triple), joined by a cluster that queues their messages and delivers them in order (or,
// under SetChaos, drops, duplicates, delays and reorders them from one seed). Absorbs
// complete on the next pump; identity saves are recorded. CheckInvariants() runs after
// every step.
#pragma once

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
#include "daemon/sync/syncer.h"

namespace atomdisk::synctest {

inline Uuid ClusterId(std::uint8_t b) {
  Uuid u;
  u.bytes.fill(b);
  return u;
}

inline Triple Value(std::uint64_t ts, Rank wr) {
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
  std::uint64_t request_id = 0;
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
  // As Absorb; with no value, the node's own copy (what data holds) goes over the bad slot.
  void Repair(SectorIdx sector, const std::optional<Triple>& value, std::uint64_t token) override {
    ++repairs;
    if (value) return Absorb(sector, *value, token);
    auto it = data.find(sector);
    absorbs.emplace_back(sector, it == data.end() ? Triple{Tag{}, ZeroSector()} : it->second,
                         token);
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
  int repairs = 0;                   // Repair calls
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
    log.push_back({from, to, msg.kind, msg.first, msg.count, msg.sectors.size(), msg.request_id});
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

inline void FakeNode::SendSync(Rank to, const SyncMessage& msg) { cluster_->Send(rank_, to, msg); }

inline std::size_t FakeNode::PumpAbsorbs(std::int64_t now_ms) {
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

inline Identity VotingIdentity(Rank self, std::vector<Rank> voters) {
  Identity id;
  id.cluster_id = ClusterId(0xab);
  id.rank = self;
  id.voting = true;
  id.voters = std::move(voters);
  return id;
}

inline constexpr std::uint64_t kWindowSectors = kWindowBuckets * kBucketSectors;

}  // namespace atomdisk::synctest
