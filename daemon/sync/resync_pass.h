// ResyncPass: the resync passes, which pull every sector a peer holds newer than this node
// (docs/RESYNC.md, "Resync pass"). Internal to daemon/sync/ (see sync_context.h).
//
// At most one pass runs. It walks the device in windows of kWindowBuckets buckets: for each
// source peer one Digest request per window; for each bucket whose digest differs from ours
// an Entries request; every sector whose peer tag is newer than our durable one is fetched
// (fetch_batch sectors per Fetch, fetch_window Fetches in flight, round-robin over the
// sources, RateLimiter-bounded) and handed to SyncEnv::Absorb. A window is done when every
// source answered and every absorbed value is durable; the resume point
// (Identity::resync_next_window) is saved at most every checkpoint_interval_ms and at the
// end. A request unanswered for a request timeout is sent once more; a second timeout fails
// its source: a normal pass drops it, a join pass replaces it by another voting peer or, with
// none, keeps asking.
//
// Membership starts passes (at start, for a join, in the background after registering) and
// learns through JoinHooks when a join pass starts and ends; the periodic pass of a voting
// node (every resync_interval_ms) and `atomdisk resync` requests start here.
// Thread-compatible.
#pragma once

#include <cstdint>
#include <deque>
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
#include "daemon/sync/rate_limiter.h"
#include "daemon/sync/sync_context.h"
#include "daemon/sync/syncer.h"

namespace atomdisk {

// What a pass needs from membership (implemented by Membership).
class JoinHooks {
 public:
  virtual ~JoinHooks() = default;
  // A join pass is starting (called before its IDENTITY save): the node is in its join pass.
  virtual void OnJoinPassStart() = 0;
  // A join pass pulled every window; `max_ts_seen` is the highest ts it saw (the write ts
  // floor lies above it). The pass is over when this is called.
  virtual void OnJoinPassDone(std::uint64_t max_ts_seen, std::int64_t now_ms) = 0;
  // Voting peers that answered a recent Hello: where a join pass finds a replacement source.
  virtual std::vector<Rank> FreshVotingPeers(std::int64_t now_ms) const = 0;
};

class ResyncPass {
 public:
  ResyncPass(SyncContext& ctx, BucketDigests& digests, JoinHooks& hooks);

  // At Syncer start, before any pass: fills the rate limiter.
  void Begin(std::int64_t now_ms);
  // Starts a pass (none may be running) from window `from` against `sources` (a join pass
  // if `join`). Ends at once if there is nothing to pull from.
  void Start(bool join, const std::vector<Rank>& sources, std::uint64_t from, std::int64_t now_ms);
  // A voting node's next periodic pass: resync_interval_ms from now (if set).
  void SchedulePeriodic(std::int64_t now_ms);
  // Starts a pass against every peer now; Busy if one is running.
  Status StartNow(std::int64_t now_ms);
  // Retries and pumps a running pass; with none, starts the periodic one when due (only if
  // `voting`).
  void Tick(std::int64_t now_ms, bool voting);
  // A reply from a peer: true if it answers a request of the pass (handled), false if the
  // request id is not the pass's.
  bool OnReply(const SyncMessage& msg, std::int64_t now_ms);
  // An Absorb finished: true if `token` was the pass's (handled), false otherwise.
  bool OnAbsorbed(std::uint64_t token, const Status& status, std::int64_t now_ms);

  bool active() const { return pass_.has_value(); }
  bool join() const { return pass_.has_value() && pass_->join; }
  // "joining: pulling from voting peers (window 3/8), waiting for peer 2"; a join pass runs.
  std::string JoinStateLine() const;
  // The running pass, or the last one's figures, and the passes done.
  void FillStatus(SyncStatus::Pass& out, std::int64_t now_ms) const;
  void CheckInvariants() const;

 private:
  enum class ReqKind { kDigest, kEntries, kFetch };
  // An outstanding request of the pass, by request id.
  struct Request {
    ReqKind kind = ReqKind::kDigest;
    Rank to = 0;
    std::uint64_t first = 0;  // kDigest: first bucket; kEntries: first sector
    std::uint32_t count = 0;
    std::vector<SectorIdx> sectors;  // kFetch
    std::int64_t sent_ms = 0;
    int sends = 1;
  };

  // One source peer of a pass, for the current window.
  struct Source {
    Rank rank = 0;
    bool digest_done = false;
    std::deque<std::uint64_t> pending_buckets;  // differ; Entries not yet sent
    std::size_t entries_in_flight = 0;
    bool dropped = false;  // non-join pass: unresponsive, out for the rest of the pass
    bool waiting = false;  // join pass: unresponsive and nobody to replace it
  };

  // A sector found newer at some source, not yet durable here.
  struct Want {
    enum class State { kQueued, kFetching, kAbsorbing };
    Tag tag;                    // newest tag seen at a source
    std::vector<Rank> holders;  // sources that reported `tag`; front = where it is fetched
    State state = State::kQueued;
    int absorb_failures = 0;
  };

  struct Pass {
    bool join = false;
    std::uint64_t window = 0;
    std::uint64_t start_window = 0;
    std::vector<Source> sources;
    std::map<SectorIdx, Want> wants;
    std::map<Rank, std::set<SectorIdx>> queued;  // kQueued wants by holders.front()
    Rank last_fetch_source = 0;
    std::size_t fetches_in_flight = 0;
    std::size_t sectors_in_flight = 0;
    std::size_t absorbing = 0;
    std::int64_t start_ms = 0;
    std::int64_t last_checkpoint_ms = 0;
    std::int64_t last_progress_ms = 0;
    std::uint64_t windows_done = 0;
    std::uint64_t sectors_pulled = 0, bytes_pulled = 0;
    // Join pass: the highest ts in any Entries reply, fetched value or own tag compared
    // (the write ts floor lies above it).
    std::uint64_t max_ts_seen = 0;
  };

  struct AbsorbToken {
    SectorIdx sector = 0;
    Tag tag;
  };

  void SendDigest(Source& src, std::int64_t now_ms);
  void StartWindow(std::int64_t now_ms);
  bool WindowDone() const;
  void MaybeAdvance(std::int64_t now_ms);
  void Checkpoint(std::int64_t now_ms);
  void RecordPassStatus(SyncStatus::Pass& out, std::int64_t now_ms) const;
  double RecentRate(std::int64_t now_ms) const;
  std::string ProgressLine(std::int64_t now_ms) const;
  void FinishPass(std::int64_t now_ms);
  void AbortPass(std::int64_t now_ms, const std::string& why);
  static Source NewSource(Rank r);
  Source* FindSource(Rank r);
  void SendEntries(Source& src, std::int64_t now_ms);
  void OnDigestReply(const SyncMessage& msg, const Request& req, std::int64_t now_ms);
  void OnEntriesReply(const SyncMessage& msg, const Request& req, std::int64_t now_ms);
  void Enqueue(SectorIdx s, Want& w);
  void Unqueue(SectorIdx s, Want& w);
  void AddWant(SectorIdx s, Tag t, Rank from);
  void FetchFailed(SectorIdx s, Rank from, const char* why);
  void PumpFetches(std::int64_t now_ms);
  void OnFetchReply(const SyncMessage& msg, Request req, std::int64_t now_ms);
  void OnPassAbsorbed(const AbsorbToken& tok, const Status& status, std::int64_t now_ms);
  void SourceFailed(Rank r, std::int64_t now_ms);
  void Resend(std::uint64_t id, Request& req, std::int64_t now_ms);
  void RetryRequests(std::int64_t now_ms);

  SyncContext& ctx_;
  BucketDigests& digests_;
  JoinHooks& hooks_;
  RateLimiter rate_;

  std::optional<Pass> pass_;
  std::map<std::uint64_t, Request> requests_;
  std::map<std::uint64_t, AbsorbToken> absorb_tokens_;
  std::uint64_t passes_done_ = 0;
  std::int64_t next_pass_ms_ = -1;  // a voting node's next periodic (or retried) pass
  std::deque<std::pair<std::int64_t, std::uint64_t>> pulled_samples_;  // (ms, bytes)
  SyncStatus::Pass last_pass_;                                         // shown once a pass ended
};

}  // namespace atomdisk
