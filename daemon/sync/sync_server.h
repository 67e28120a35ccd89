// SyncServer: answers peers' resync and scrub requests (Digest, Entries, Fetch) from this
// node's store, the data side of docs/RESYNC.md; Hello and RegisterVoter are membership's
// (membership.h). Internal to daemon/sync/ (see sync_context.h).
//
// Every request is checked against the device before anything is read: an empty or
// oversized range, one past the end of the device or one whose end overflows is not
// answered, counted in rejected_requests(), and noted once per peer (a peer must not flood
// the log). A request the store cannot serve (a failed scan) gets no reply either: the
// requester retries or drops this node as a source.
//
// Serving costs: a Digest scans the buckets whose digest is not cached, an Entries request
// scans up to kMaxEntrySectors sectors, a Fetch reads up to kMaxFetchSectors; a recorded
// request replayed by someone on the network path costs the same each time (a 66-byte Entries
// request replayed 94 times a second once took half a node's CPU, issue 17). So requests are
// served within a budget of sector bytes per second, all peers together
// (SyncerOptions::serve_bytes_per_s, sync_serve_rate_mb in cluster.toml; 0 = unlimited). A
// request is charged what it cost once served (the written sectors its scans met, the sectors
// it read; holes cost nothing to skip), and the next goes while the budget is above zero. A
// request that finds it spent waits in its sender's queue (at most kMaxQueuedPerPeer; the
// queues are served in turn, one request each, as the budget refills every Tick) and one
// beyond that is dropped, and the requester asks again after its request timeout. A request
// that has waited half a request timeout is served whatever the budget: a requester gives up
// on a source whose request went unanswered twice (resync_pass.h), so a budget set too low
// for the peers' passes slows them but never makes them skip this node. So the cost is
// bounded by the budget plus kMaxQueuedPerPeer requests per sender per half request timeout.
// The default, 512 MB/s, is above what a resync pass pulls (each pulled sector costs about
// two: its Entries scan and its Fetch). Thread-compatible.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <set>

#include "common/sync_wire.h"
#include "common/types.h"
#include "daemon/sync/bucket_digests.h"
#include "daemon/sync/rate_limiter.h"
#include "daemon/sync/sync_context.h"

namespace atomdisk {

class SyncServer {
 public:
  static constexpr std::size_t kMaxQueuedPerPeer = 16;

  SyncServer(SyncContext& ctx, BucketDigests& digests);

  // A kDigest, kEntries or kFetch request from a peer (the caller checked the sender is
  // one); replies through SyncEnv::SendSync now, later (over budget), or not at all (see
  // above).
  void Serve(const SyncMessage& msg, std::int64_t now_ms);
  // Serves queued requests as far as the budget allows.
  void Tick(std::int64_t now_ms);

  // Malformed requests seen so far.
  std::uint64_t rejected_requests() const { return rejected_requests_; }
  void FillStatus(SyncStatus::Serve& out) const;
  void CheckInvariants() const;

 private:
  void Reject(const SyncMessage& msg);
  // Serves `msg` and charges the budget what it cost.
  void ServeNow(const SyncMessage& msg);
  // Each returns the sectors it read or scanned.
  std::uint64_t ServeDigest(const SyncMessage& msg);
  std::uint64_t ServeEntries(const SyncMessage& msg);
  std::uint64_t ServeFetch(const SyncMessage& msg);

  SyncContext& ctx_;
  BucketDigests& digests_;
  std::uint64_t rejected_requests_ = 0;
  std::set<Rank> rejected_noted_;
  RateLimiter budget_;
  struct Queued {
    SyncMessage msg;
    std::int64_t since_ms = 0;
  };
  std::map<Rank, std::deque<Queued>> queued_;  // over budget, by sender
  Rank next_turn_ = 0;                         // the sender served first next Tick
  std::set<Rank> dropped_noted_;
  std::uint64_t served_ = 0, deferred_ = 0, dropped_ = 0;
};

}  // namespace atomdisk
