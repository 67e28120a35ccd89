// Tests of the sync server (daemon/sync/sync_server.cc) and the digest cache
// (bucket_digests.cc): through the Syncer on the in-memory cluster of sync_cluster.h, and
// directly, over a recording env, for hostile ranges.
#include "daemon/sync/sync_server.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "common/sync_wire.h"
#include "common/types.h"
#include "daemon/sync/bucket_digests.h"
#include "daemon/sync/identity.h"
#include "daemon/sync/sync_context.h"
#include "daemon/sync/syncer.h"
#include "tests/sync/sync_cluster.h"

namespace atomdisk::synctest {
namespace {

TEST(SyncServerTest, HostileRequestsAreIgnored) {
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

TEST(SyncServerTest, DigestsFollowLocalWrites) {
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

// ------------------------------------------------- SyncServer on its own, over a recording env

// A store of `sectors` sectors whose ScanTags reports what `scan` holds (even sectors
// outside the range asked for, as a broken store might), and that records every reply.
class ServerEnv : public SyncEnv {
 public:
  void SendSync(Rank to, const SyncMessage& msg) override { sent.emplace_back(to, msg); }
  Status ScanTags(SectorIdx first, std::uint64_t count, bool, TagView view,
                  const std::function<void(SectorIdx, Tag, bool ok)>& fn) override {
    ++scans;
    if (scan_fails) return Status::IOError("scan fails on cue");
    for (const auto& [s, t] : scan) {
      if (!report_outside && (s < first || s - first >= count)) continue;
      auto ahead = served_ahead.find(s);
      fn(s, view == TagView::kServed && ahead != served_ahead.end() ? ahead->second : t, true);
    }
    return Status::Ok();
  }
  Result<Triple> ReadSector(SectorIdx sector) override {
    if (unreadable.count(sector) != 0) return Status::IOError("unreadable on cue");
    auto it = scan.find(sector);
    return Value(it == scan.end() ? 0 : it->second.ts, 1);
  }
  void ForEachServedAhead(const std::function<void(SectorIdx)>& fn) override {
    for (const auto& [s, t] : served_ahead) fn(s);
  }
  void Absorb(SectorIdx, const Triple&, std::uint64_t) override { ADD_FAILURE(); }
  void Repair(SectorIdx, const std::optional<Triple>&, std::uint64_t) override { ADD_FAILURE(); }
  Status SaveIdentity(const Identity&) override {
    ADD_FAILURE();
    return Status::Ok();
  }
  void SetVoting(bool) override { ADD_FAILURE(); }
  void Note(const std::string& line) override { notes.push_back(line); }
  std::uint64_t WallClockMicros() override { return 0; }
  void SetWriteTsFloor(std::uint64_t) override { ADD_FAILURE(); }
  void SetWriteTsLease(std::uint64_t) override { ADD_FAILURE(); }

  std::multimap<SectorIdx, Tag> scan;  // a multimap: a broken store may report a sector twice
  std::map<SectorIdx, Tag> served_ahead;
  std::set<SectorIdx> unreadable;
  bool scan_fails = false;
  bool report_outside = false;
  int scans = 0;
  std::vector<std::pair<Rank, SyncMessage>> sent;
  std::vector<std::string> notes;
};

struct ServerFixture {
  explicit ServerFixture(std::uint64_t sectors, double serve_bytes_per_s = 0)
      : ctx(Options(sectors, serve_bytes_per_s), &env) {}
  static SyncerOptions Options(std::uint64_t sectors, double serve_bytes_per_s) {
    SyncerOptions o;
    o.serve_bytes_per_s = serve_bytes_per_s;
    o.self = 1;
    o.ranks = {1, 2, 3};
    o.sectors = sectors;
    o.cluster_id = ClusterId(0xab);
    return o;
  }
  SyncMessage Request(Rank sender, SyncKind kind, std::uint64_t first, std::uint32_t count) {
    SyncMessage m;
    m.sender = sender;
    m.kind = kind;
    m.request_id = 77;
    m.first = first;
    m.count = count;
    return m;
  }

  ServerEnv env;
  SyncContext ctx;
  BucketDigests digests{ctx};
  SyncServer server{ctx, digests};
};

// Ranges that would overflow, end past the device or exceed the per-message limits are
// refused before the store is touched; each is counted, and noted once per peer.
TEST(SyncServerTest, HostileRangesTouchNothing) {
  ServerFixture f(5000);  // 20 buckets
  const std::uint64_t kMax = ~std::uint64_t{0};
  std::vector<SyncMessage> bad = {
      f.Request(2, SyncKind::kDigest, kMax, kMaxDigestBuckets),   // first + count wraps
      f.Request(2, SyncKind::kDigest, 1, ~std::uint32_t{0}),      // count over the limit
      f.Request(2, SyncKind::kEntries, kMax - 5, 10),             // wraps
      f.Request(2, SyncKind::kEntries, 4990, 11),                 // one past the end
      f.Request(2, SyncKind::kEntries, 0, kMaxEntrySectors + 1),  // over the limit
      f.Request(3, SyncKind::kEntries, 5000, 1),                  // starts at the end
  };
  SyncMessage fetch_edge = f.Request(3, SyncKind::kFetch, 0, 0);
  fetch_edge.sectors = {0, 4999, 5000};  // the last one is one past the end
  bad.push_back(fetch_edge);
  for (const SyncMessage& m : bad) f.server.Serve(m, 0);
  EXPECT_TRUE(f.env.sent.empty());
  EXPECT_EQ(f.env.scans, 0);
  EXPECT_EQ(f.server.rejected_requests(), bad.size());
  ASSERT_EQ(f.env.notes.size(), 2u);  // once for peer 2, once for peer 3
  EXPECT_NE(f.env.notes[0].find("from peer 2"), std::string::npos) << f.env.notes[0];
  EXPECT_NE(f.env.notes[1].find("from peer 3"), std::string::npos) << f.env.notes[1];

  // The largest ranges that fit are served.
  f.server.Serve(f.Request(2, SyncKind::kDigest, 0, 20), 0);
  f.server.Serve(f.Request(2, SyncKind::kEntries, 5000 - kMaxEntrySectors, kMaxEntrySectors), 0);
  EXPECT_EQ(f.env.sent.size(), 2u);
  EXPECT_EQ(f.server.rejected_requests(), bad.size());
}

// An Entries reply carries only the range asked for, sorted, one entry per sector, and no
// unwritten sector, whatever the store's scan reports.
TEST(SyncServerTest, EntriesReplyHoldsOnlyTheRangeAskedFor) {
  ServerFixture f(1000);
  f.env.report_outside = true;
  f.env.scan = {{5, Tag{9, 2}},   {100, Tag{3, 1}}, {300, Tag{4, 1}}, {301, Tag{4, 2}},
                {301, Tag{4, 2}}, {302, Tag{}},     {555, Tag{1, 1}}};
  f.env.served_ahead[300] = Tag{6, 1};  // being persisted: served, not the durable tag
  f.server.Serve(f.Request(2, SyncKind::kEntries, 256, 256), 0);
  ASSERT_EQ(f.env.sent.size(), 1u);
  const auto& [to, r] = f.env.sent[0];
  EXPECT_EQ(to, 2);
  EXPECT_EQ(r.kind, SyncKind::kEntriesReply);
  EXPECT_EQ(r.request_id, 77u);
  EXPECT_EQ(r.first, 256u);
  EXPECT_EQ(r.count, 256u);
  ASSERT_EQ(r.entries.size(), 2u);
  EXPECT_EQ(r.entries[0].sector, 300u);
  EXPECT_EQ(r.entries[0].tag, (Tag{6, 1}));
  EXPECT_EQ(r.entries[1].sector, 301u);
  EXPECT_EQ(r.entries[1].tag, (Tag{4, 2}));
}

// A store that cannot be read gets no reply (the requester retries or drops this source);
// that is not a malformed request.
TEST(SyncServerTest, UnreadableStoreSendsNoReply) {
  ServerFixture f(1000);
  f.env.scan_fails = true;
  f.server.Serve(f.Request(2, SyncKind::kEntries, 0, 10), 0);
  f.server.Serve(f.Request(2, SyncKind::kDigest, 0, 1), 0);
  EXPECT_TRUE(f.env.sent.empty());
  EXPECT_EQ(f.server.rejected_requests(), 0u);
  EXPECT_TRUE(f.env.notes.empty());
}

// A Fetch answers every sector asked for, in order; an unreadable one comes back not ok.
TEST(SyncServerTest, FetchMarksUnreadableSectors) {
  ServerFixture f(1000);
  f.env.scan = {{3, Tag{5, 2}}, {4, Tag{6, 3}}};
  f.env.unreadable = {4};
  SyncMessage m = f.Request(2, SyncKind::kFetch, 0, 0);
  m.sectors = {4, 3, 999};
  f.server.Serve(m, 0);
  ASSERT_EQ(f.env.sent.size(), 1u);
  const SyncMessage& r = f.env.sent[0].second;
  EXPECT_EQ(r.kind, SyncKind::kFetchReply);
  ASSERT_EQ(r.fetched.size(), 3u);
  EXPECT_EQ(r.fetched[0].sector, 4u);
  EXPECT_FALSE(r.fetched[0].ok);
  EXPECT_EQ(r.fetched[1].sector, 3u);
  EXPECT_TRUE(r.fetched[1].ok);
  EXPECT_EQ(r.fetched[1].value.tag.ts, 5u);
  EXPECT_EQ(r.fetched[2].sector, 999u);
  EXPECT_TRUE(r.fetched[2].ok);
}

// Digests: the durable ones are cached until a local write invalidates the bucket; a bucket
// with a value being persisted is served over the kServed tags (uncached).
TEST(SyncServerTest, DigestsAreCachedAndAccountForServedValues) {
  ServerFixture f(1000);
  f.env.scan = {{3, Tag{5, 2}}, {700, Tag{2, 1}}};
  f.server.Serve(f.Request(2, SyncKind::kDigest, 0, 4), 0);
  ASSERT_EQ(f.env.sent.size(), 1u);
  std::vector<std::uint64_t> d = f.env.sent[0].second.digests;
  ASSERT_EQ(d.size(), 4u);
  EXPECT_EQ(d[0], SectorTagDigest(3, Tag{5, 2}));
  EXPECT_EQ(d[1], 0u);
  EXPECT_EQ(d[2], SectorTagDigest(700, Tag{2, 1}));
  EXPECT_EQ(f.env.scans, 4);

  f.server.Serve(f.Request(2, SyncKind::kDigest, 0, 4), 0);  // all cached
  EXPECT_EQ(f.env.scans, 4);
  EXPECT_EQ(f.env.sent[1].second.digests, d);

  f.env.scan = {{3, Tag{7, 1}}, {700, Tag{2, 1}}};  // a write the store reports...
  f.server.Serve(f.Request(2, SyncKind::kDigest, 0, 1), 0);
  EXPECT_EQ(f.env.sent[2].second.digests[0], d[0]);  // ...not seen until invalidated
  f.digests.Invalidate(3);
  f.server.Serve(f.Request(2, SyncKind::kDigest, 0, 1), 0);
  EXPECT_EQ(f.env.sent[3].second.digests[0], SectorTagDigest(3, Tag{7, 1}));

  f.env.served_ahead[700] = Tag{9, 2};
  f.server.Serve(f.Request(2, SyncKind::kDigest, 2, 1), 0);
  EXPECT_EQ(f.env.sent[4].second.digests[0], SectorTagDigest(700, Tag{9, 2}));
  EXPECT_EQ(f.digests.Own(2), SectorTagDigest(700, Tag{2, 1}));  // the cache stays durable
}

// Requests over the serve budget wait in their sender's queue and go as it refills; beyond
// kMaxQueuedPerPeer they are dropped (noted once). What a replayed request costs a node is
// bounded by the budget, not by how fast someone replays it.
TEST(SyncServerTest, RequestsOverTheBudgetWaitAndTheExcessIsDropped) {
  // 4096 sectors' worth a second: one full Entries request a second (and a bucket of one).
  const double rate = static_cast<double>(kMaxEntrySectors) * kSectorSize;
  ServerFixture f(100000, rate);
  f.ctx.options.request_timeout_ms = 60'000;  // nothing waits long enough to go regardless
  // Every sector of the range written: each Entries scan of it costs 4096 sectors.
  for (SectorIdx s = 0; s < kMaxEntrySectors; ++s) f.env.scan.emplace(s, Tag{1, 2});
  const std::size_t kSent = 1 + SyncServer::kMaxQueuedPerPeer + 3;
  for (std::size_t i = 0; i < kSent; ++i) {
    f.server.Serve(f.Request(2, SyncKind::kEntries, 0, kMaxEntrySectors), 0);
  }
  SyncStatus::Serve st;
  f.server.FillStatus(st);
  EXPECT_EQ(f.env.sent.size(), 1u);  // went on a full bucket, and spent more than it held
  EXPECT_EQ(st.served, 1u);
  EXPECT_EQ(st.queued, SyncServer::kMaxQueuedPerPeer);
  EXPECT_EQ(st.dropped, 3u);
  EXPECT_EQ(f.env.scans, 1);
  EXPECT_EQ(std::count_if(f.env.notes.begin(), f.env.notes.end(),
                          [](const std::string& n) {
                            return n.find("exceed the serve budget") != std::string::npos;
                          }),
            1);
  // Ticks every 10 ms for 3 s: a request goes whenever the budget is above zero and is
  // charged its 4096 sectors after, a second's worth: the debt is paid about once a second.
  for (std::int64_t t = 10; t <= 3000; t += 10) f.server.Tick(t);
  f.server.FillStatus(st);
  EXPECT_EQ(st.served, 4u);
  EXPECT_EQ(st.deferred, 3u);
  EXPECT_EQ(f.env.sent.size(), 4u);
  EXPECT_EQ(f.env.scans, 4);
  // Any request waits behind the queue (no overtaking).
  f.server.Serve(f.Request(3, SyncKind::kEntries, 0, 1), 3000);
  f.server.FillStatus(st);
  EXPECT_EQ(st.queued, SyncServer::kMaxQueuedPerPeer - 3 + 1);
  f.server.CheckInvariants();
}

// The senders' queues are served in turn: a peer whose requests (or requests replayed in its
// name) fill its queue does not starve another's.
TEST(SyncServerTest, QueuedSendersAreServedInTurn) {
  const double rate = static_cast<double>(kMaxEntrySectors) * kSectorSize;
  ServerFixture f(100000, rate);
  f.ctx.options.request_timeout_ms = 60'000;
  for (SectorIdx s = 0; s < kMaxEntrySectors; ++s) f.env.scan.emplace(s, Tag{1, 2});
  f.server.Serve(f.Request(2, SyncKind::kEntries, 0, kMaxEntrySectors), 0);  // takes the bucket
  for (int i = 0; i < 4; ++i) f.server.Serve(f.Request(2, SyncKind::kEntries, 0, 4096), 0);
  for (int i = 0; i < 2; ++i) f.server.Serve(f.Request(3, SyncKind::kEntries, 0, 4096), 0);
  f.env.sent.clear();
  for (std::int64_t t = 10; t <= 4000; t += 10) f.server.Tick(t);
  std::vector<Rank> order;
  for (const auto& [to, m] : f.env.sent) order.push_back(to);
  EXPECT_EQ(order, (std::vector<Rank>{2, 3, 2, 3}));  // not 2, 2, 2, 2
}

// A queued request that has waited half a request timeout is served whatever the budget: a
// requester gives up on a source after two unanswered sends, so a budget set too low slows
// the peers' passes and never makes them skip this node.
TEST(SyncServerTest, AQueuedRequestGoesAfterHalfARequestTimeoutWhateverTheBudget) {
  ServerFixture f(100000, 4096.0 * kSectorSize / 100);  // one full Entries per 100 s
  f.ctx.options.request_timeout_ms = 3000;
  for (SectorIdx s = 0; s < kMaxEntrySectors; ++s) f.env.scan.emplace(s, Tag{1, 2});
  f.server.Serve(f.Request(2, SyncKind::kEntries, 0, kMaxEntrySectors), 0);  // a 100 s debt
  f.server.Serve(f.Request(2, SyncKind::kEntries, 0, kMaxEntrySectors), 0);
  f.server.Serve(f.Request(3, SyncKind::kEntries, 0, kMaxEntrySectors), 500);
  EXPECT_EQ(f.env.sent.size(), 1u);
  f.server.Tick(1499);
  EXPECT_EQ(f.env.sent.size(), 1u);
  f.server.Tick(1500);  // peer 2's has waited 1.5 s
  EXPECT_EQ(f.env.sent.size(), 2u);
  f.server.Tick(2000);  // peer 3's has waited 1.5 s
  ASSERT_EQ(f.env.sent.size(), 3u);
  EXPECT_EQ(f.env.sent.back().first, 3);
  SyncStatus::Serve st;
  f.server.FillStatus(st);
  EXPECT_EQ(st.deferred, 2u);
  EXPECT_EQ(st.queued, 0u);
}

// A request is charged what it cost: scanning holes costs nothing, so a pass over an empty
// range never waits, while a scan of written sectors spends the budget.
TEST(SyncServerTest, HolesCostNothingWrittenSectorsSpendTheBudget) {
  const double rate = static_cast<double>(kMaxEntrySectors) * kSectorSize;
  ServerFixture f(100000, rate);
  f.ctx.options.request_timeout_ms = 60'000;
  for (SectorIdx s = 50000; s < 50000 + 2 * kMaxEntrySectors; ++s) {
    f.env.scan.emplace(s, Tag{1, 2});
  }
  for (int i = 0; i < 50; ++i) f.server.Serve(f.Request(2, SyncKind::kEntries, 0, 4096), 0);
  EXPECT_EQ(f.env.sent.size(), 50u);  // holes: all at once
  f.server.Serve(f.Request(2, SyncKind::kEntries, 50000, kMaxEntrySectors), 0);
  f.server.Serve(f.Request(2, SyncKind::kEntries, 50000 + kMaxEntrySectors, 8), 0);
  EXPECT_EQ(f.env.sent.size(), 51u);  // the first scan spent the bucket
  for (std::int64_t t = 10; t <= 1000; t += 10) f.server.Tick(t);
  EXPECT_EQ(f.env.sent.size(), 52u);
}

// Without a budget every request is served at once, as before.
TEST(SyncServerTest, WithoutABudgetEveryRequestIsServedAtOnce) {
  ServerFixture f(100000, 0);
  for (int i = 0; i < 100; ++i) {
    f.server.Serve(f.Request(2, SyncKind::kEntries, 0, kMaxEntrySectors), 0);
  }
  SyncStatus::Serve st;
  f.server.FillStatus(st);
  EXPECT_EQ(st.served, 100u);
  EXPECT_EQ(st.queued + st.dropped + st.deferred, 0u);
}

}  // namespace
}  // namespace atomdisk::synctest
