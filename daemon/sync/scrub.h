// Scrub: reads every stored sector with full checksum checks and repairs bad ones from peers
// (docs/RESYNC.md, "Scrub"); and repairs outside a run: a sector that a read found failed or
// suspect (SectorStore::Read), or that a scan of another part met (SyncContext::found_failed:
// the start-up resync pass meets every write a power cut tore), is repaired the same way at
// once (docs/RESYNC.md, "Read repair"). Internal to daemon/sync/ (see sync_context.h).
//
// A run checks scrub_buckets_per_tick buckets per Tick. A sector with a bad slot is fetched
// from every peer (its own Fetch requests, apart from the resync pass's); once
// RequiredSources() peers answered, the newest value any of them holds replaces ours if it is
// newer than our valid copy, else our valid copy is written over the bad slot (counted stale);
// both through SyncEnv::Repair, the only write that lifts a suspect sector's suspicion. Why
// that is safe: any completed write or read is on a quorum, which meets every RequiredSources()
// peers, so the newest among their answers and our valid copy is at least every completed
// value. A repair whose peers do not answer within kScrubRepairTimeouts request timeouts counts
// as unrepaired, and is tried again later (a back-off from one request timeout, doubling, to
// kMaxRetryMs), as long as the sector is failed: a node one copy short is one fault from an
// unavailable sector, so it never gives up. At most kMaxScrubRepairs repairs are pending at
// once and kMaxRetries sectors wait for a retry (beyond that, the next scrub run finds them);
// a run waits for its repairs before it scans on. Periodic runs every scrub_interval_ms after
// the previous one ended. Thread-compatible.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <vector>

#include "common/status.h"
#include "common/sync_wire.h"
#include "common/types.h"
#include "daemon/sync/bucket_digests.h"
#include "daemon/sync/sync_context.h"
#include "daemon/sync/syncer.h"

namespace atomdisk {

class Scrub {
 public:
  Scrub(SyncContext& ctx, BucketDigests& digests) : ctx_(ctx), digests_(digests) {}

  // At Syncer start: schedules the first periodic run (if any).
  void Schedule(std::int64_t now_ms);
  // Starts a run; Busy if one is running.
  Status Start(std::int64_t now_ms);
  // Starts a periodic run when due, then scans a chunk, times out repairs and re-sends
  // unanswered fetches.
  void Tick(std::int64_t now_ms);
  // A reply from a peer: true if it answers a request of the scrub (handled), false if the
  // request id is not the scrub's.
  bool OnReply(const SyncMessage& msg, std::int64_t now_ms);
  // A read found `sector` failed or suspect: repairs it now (a read repair), unless a repair
  // of it is pending or one was started within the last request timeout.
  void RepairNow(SectorIdx sector, std::int64_t now_ms);
  // Sectors known failed and not yet repaired: being repaired, or waiting for a (re)try.
  std::uint64_t PendingRepairs() const;
  // An Absorb finished: true if `token` was the scrub's (handled), false otherwise.
  bool OnAbsorbed(std::uint64_t token, const Status& status, std::int64_t now_ms);

  void FillStatus(SyncStatus::Scrub& out) const;
  void CheckInvariants() const;

 private:
  struct Repair {
    Tag own;
    std::map<Rank, std::optional<Triple>> answers;
    std::int64_t start_ms = 0;
    bool absorbing = false;
    bool read_repair = false;  // outside a run: asked by a read or a scan (counted apart)
  };
  // A sector found failed, to repair (again) from due_ms on.
  struct Retry {
    std::int64_t due_ms = 0;
    std::uint32_t attempts = 0;  // repairs of it started
  };
  // A Fetch request to one peer, by request id.
  struct Request {
    Rank to = 0;
    std::vector<SectorIdx> sectors;
    std::int64_t sent_ms = 0;
    int sends = 1;
  };
  struct AbsorbToken {
    SectorIdx sector = 0;
    Tag tag;
    bool own = false;  // our own valid copy, rewritten over the bad slot
  };
  struct Run {
    bool active = false;
    std::uint64_t bucket = 0;
    std::uint64_t checked = 0, corrupt = 0, repaired = 0, unrepaired = 0, stale = 0;
    std::uint64_t runs_done = 0;
    std::int64_t start_ms = 0;
  };
  struct ReadRepairs {
    std::uint64_t started = 0, repaired = 0, unrepaired = 0;
  };
  enum class Outcome { kRepaired, kStale, kUnrepaired };

  void ScanChunk(std::int64_t now_ms);
  // Remembers `sector` to repair from due_ms on (or earlier, if it is due earlier already).
  void Remember(SectorIdx sector, std::int64_t due_ms);
  // Starts the repairs that are due (those found by scans first join the retries).
  void StartDue(std::int64_t now_ms);
  // Starts a repair of the sector `it` names, outside a run; erases `it` if the sector turns
  // out to be fine. Not within a request timeout of the last start.
  void Attempt(std::map<SectorIdx, Retry>::iterator it, std::int64_t now_ms);
  // Whether the repair of `sector` is a retry (its notes were logged on the first attempt).
  bool Retrying(SectorIdx sector) const;
  std::int64_t Backoff(std::uint32_t attempts) const;
  // Starts repairs of `found` (sectors now in repairs_): Fetches to every peer.
  void FetchFromPeers(const std::vector<SectorIdx>& found, std::int64_t now_ms);
  void Progress(std::int64_t now_ms);
  void OnFetchReply(const SyncMessage& msg, const Request& req, std::int64_t now_ms);
  // Ends the repair `it` points to with `outcome`, counted where it belongs; an unrepaired
  // sector is tried again later, a repaired one forgotten.
  void EndRepair(std::map<SectorIdx, Repair>::iterator it, Outcome outcome, std::int64_t now_ms);
  void MaybeFinish(std::int64_t now_ms);

  SyncContext& ctx_;
  BucketDigests& digests_;
  Run run_;
  ReadRepairs read_;
  // Pending repairs, of the run's and read repairs.
  std::map<SectorIdx, Repair> repairs_;
  // Sectors found failed outside a run, and unrepaired ones, to repair (again).
  std::map<SectorIdx, Retry> retries_;
  // When a repair outside a run last started, per sector (at most one per request timeout,
  // also after a success: a sector that keeps failing is not repaired in a loop). Bounded:
  // cleared when large.
  std::map<SectorIdx, std::int64_t> start_ms_;
  std::map<std::uint64_t, Request> requests_;
  std::map<std::uint64_t, AbsorbToken> absorb_tokens_;
  std::int64_t next_run_ms_ = -1;
};

}  // namespace atomdisk
