// Syncer: a node's membership, resync and scrub logic as a pure state machine
// (docs/RESYNC.md), driven like the Register: inputs are sync messages from peers, store
// completions (OnAbsorbed) and ticks carrying the time; effects go through SyncEnv. It owns
// no socket, file, clock or thread, so the simulator runs the real thing.
//
// Membership. A node votes (answers ReadProc/ReadTag with a Value/Tag, WriteProc with an Ack,
// counts itself in its own quorums) only once it holds everything it may have promised:
// - IDENTITY says voting: it votes at once (its disk kept every promise it made).
// - No IDENTITY and an empty store (new node or replaced disk): it asks every peer (Hello).
//   If any peer lists it among the voters, it has voted before and lost its disk: it must
//   pull, window by window, everything newer from RequiredSources() voting peers (a "join
//   pass") before it votes. If every peer answers and none lists it, it never voted (a new
//   cluster, or a node that never joined): it registers as a voter with the peers
//   (RegisterVoter, stored durably by each before its Ack), and votes once Quorum()-1 of
//   them acknowledged; then it pulls in the background like any restarted node.
// - No IDENTITY but a non-empty store: data from before identities existed: it votes.
// A voting node re-registers with any peer whose Hello reply does not list it (a peer with a
// replaced disk forgot).
//
// Resync pass. Windows of kWindowBuckets buckets, in order: for each source peer, one
// Digest request per window; for each bucket whose digest differs from ours an Entries
// request; every sector whose peer tag is newer than ours is fetched (kMaxFetchSectors per
// Fetch, fetch_window Fetches in flight, rate-limited) and handed to SyncEnv::Absorb. A
// window is done when every source answered and every absorbed value is durable; the
// resume point (Identity::resync_next_window) is then saved, at most every
// checkpoint_interval_ms and at the end, so a restarted pass resumes. Voting nodes run a pass
// against every peer at start and every resync_interval_ms; an unresponsive peer is dropped
// from that pass. A join pass needs RequiredSources() voting peers; a source that stops
// answering is replaced by another voting peer or waited for.
//
// Write ts floor. A node with a replaced disk may have started writes in its old incarnation
// whose tags (ts, self) survive where its join pass did not look; its new writes must not
// reuse such a tag. When a join pass ends, the floor max(previous floor, WallClockMicros(),
// max ts the pass saw + 1) is saved in IDENTITY with voting = true, and SetWriteTsFloor is
// called before SetVoting(true); Start re-applies a saved floor. From the first HelloReply that
// lists this node as a voter, and while the join pass runs (it coordinates writes with peer
// quorums all along) the floor is max(saved, WallClockMicros()), in memory only.
//
// Scrub. Reads every stored sector with full checksum checks, scrub_buckets_per_tick
// buckets per tick; a sector with a bad slot is fetched from RequiredSources() peers and the
// newest value found is absorbed if it is newer than ours (the store writes it over the
// corrupt slot). Counts what it found, repaired, and could not repair.
//
// Code: syncer.cc routes events to the parts, each in its own file of this folder and
// internal to it: membership.h, resync_pass.h (with rate_limiter.h), sync_server.h,
// scrub.h, bucket_digests.h, over the shared sync_context.h; identity.h is the IDENTITY file.
//
// Thread-compatible: one thread (the node's loop) makes every call.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/sync_wire.h"
#include "common/types.h"
#include "daemon/sync/identity.h"

namespace atomdisk {

// Buckets compared per Digest request (64 x 256 sectors = 64 MiB of device per window).
inline constexpr std::uint64_t kWindowBuckets = 64;

struct SyncerOptions {
  Rank self = 0;
  std::vector<Rank> ranks;  // every node of the cluster, self included, sorted
  std::uint64_t sectors = 0;
  Uuid cluster_id;
  double rate_bytes_per_s = 0;  // resync pull rate limit (sector data bytes); 0 = unlimited
  // What serving peers' Digest, Entries and Fetch requests may cost, in sector bytes scanned
  // or read per second, all peers together (sync_server.h); 0 = unlimited.
  double serve_bytes_per_s = 512e6;
  // Where this run's request ids start (common/request_id.h): the node core passes its boot
  // nonce, drawn with RAND_bytes (the simulator's, from its seed). 0: from the start time.
  std::uint64_t id_seed = 0;
  std::uint32_t fetch_batch = kMaxFetchSectors;
  std::uint32_t fetch_window = 8;  // Fetch requests in flight
  std::int64_t hello_interval_ms = 1000;
  std::int64_t joining_hello_interval_ms = 200;
  std::int64_t request_timeout_ms = 3000;
  std::int64_t checkpoint_interval_ms = 500;
  std::int64_t resync_interval_ms = 0;  // periodic pass for voting nodes; 0 = only at start
  std::int64_t scrub_interval_ms = 0;   // periodic scrub; 0 = only on request
  std::uint32_t scrub_buckets_per_tick = 4;
  bool bug_joiner_votes = false;  // simulator only: a joining node votes at once
  // Simulator only: a founding member (IDENTITY genesis) ignores peers that list it as a voter.
  bool bug_genesis_trusted = false;
  // Simulator only: a scrub or read repair decides on the first peer's answer, not on
  // RequiredSources() answers.
  bool bug_repair_one_peer = false;
  // Simulator only: scans do not hand sectors with a failed slot to the scrub
  // (SyncContext::FoundFailed does nothing).
  bool bug_scan_finds_ignored = false;
  // Simulator only: a queued sync request waits for the serve budget alone, never going after
  // half a request timeout (SyncServer::Tick).
  bool bug_serve_without_deadline = false;

  std::size_t Quorum() const { return ranks.size() / 2 + 1; }
  // Voting peers a join pass must pull from: N - Quorum + 1 (every acknowledged write is on
  // at least one of any such set of peers).
  std::size_t RequiredSources() const { return ranks.size() - Quorum() + 1; }
};

// Which value of a sector resync looks at (docs/RESYNC.md, "What resync sees").
enum class TagView {
  // What is durable here: this node's own state, which a join or pass compares against.
  kDurable,
  // What this node serves to peers: the durable value, or a newer one still being persisted
  // when its tag can never be reused (a value from another writer, or our own write under the
  // write ts lease, which has gone out in WriteProcs already).
  kServed,
};

// Effects of a Syncer, carried out by its owner.
class SyncEnv {
 public:
  virtual ~SyncEnv() = default;
  // Sends `msg` to node `to` (never self). Delivery may fail; the Syncer retries.
  virtual void SendSync(Rank to, const SyncMessage& msg) = 0;
  // Calls fn(sector, tag, ok) for each sector in [first, first + count) with a written slot
  // (SectorStore::ScanRange; tag (0,0) when no slot is valid; ok false when a slot fails its
  // checks, all slots with verify_all), with the tag `view` gives.
  virtual Status ScanTags(SectorIdx first, std::uint64_t count, bool verify_all, TagView view,
                          const std::function<void(SectorIdx, Tag, bool ok)>& fn) = 0;
  // The value of `sector` this node serves (TagView::kServed; for Fetch replies): for a
  // suspect sector its newest valid copy (durable, though a failed slot may have held
  // something newer). An error if it is unreadable.
  virtual Result<Triple> ReadSector(SectorIdx sector) = 0;
  // Calls fn(sector) for every sector whose kServed tag lies above its kDurable tag (a handful:
  // values being persisted), so that bucket digests served to peers can account for them.
  virtual void ForEachServedAhead(const std::function<void(SectorIdx)>& fn) = 0;
  // Stores `value` for `sector` unless a newer or equal tag is stored (a tag never goes
  // down; through the sector's register if it has one). Later calls
  // Syncer::OnAbsorbed(token, status) exactly once, when the value or a newer one is durable
  // (or the write failed). Never calls back from inside Absorb().
  virtual void Absorb(SectorIdx sector, const Triple& value, std::uint64_t token) = 0;
  // A repair's verdict on `sector`, whose stored copy failed its checks (scrub or a read
  // repair asked the peers): `value` (the newest a peer holds, newer than ours) or, with
  // nullopt, this node's own newest valid copy is written over the failed slot
  // (SectorStore::Repair), which lifts a suspect sector's suspicion. Later calls
  // Syncer::OnAbsorbed(token, status) exactly once, as Absorb does.
  virtual void Repair(SectorIdx sector, const std::optional<Triple>& value,
                      std::uint64_t token) = 0;
  // Writes the identity durably before returning.
  virtual Status SaveIdentity(const Identity& identity) = 0;
  // From now on this node votes (or not): registers answer ReadProc/WriteProc and count
  // themselves in quorums only while voting.
  virtual void SetVoting(bool voting) = 0;
  // One line for the log (the node logs it; the simulator traces it).
  virtual void Note(const std::string& line) = 0;
  // Wall-clock time in microseconds since the Unix epoch (the simulator's is virtual). Read
  // only to pick the write ts floor after a join pass.
  virtual std::uint64_t WallClockMicros() = 0;
  // From now on this node's own writes use ts >= floor (RegisterConfig::min_write_ts;
  // docs/RESYNC.md, "Tags after a disk replacement"). Called with a non-decreasing floor.
  virtual void SetWriteTsFloor(std::uint64_t floor) = 0;
  // From now on own writes with ts below `lease` may go out before they are durable here
  // (RegisterConfig::write_ts_lease; docs/REGISTER.md). Called only once the lease is saved in
  // IDENTITY, with a non-decreasing lease.
  virtual void SetWriteTsLease(std::uint64_t lease) = 0;
  // `peer`'s latest HelloReply (of this cluster) advertised these kFeature* bits
  // (common/sync_wire.h; 0 from an older node). Called at every such reply, so a feature a
  // peer stops advertising (it was downgraded) is withdrawn at its next reply.
  virtual void SetPeerFeatures(Rank peer, std::uint8_t features) {
    (void)peer;
    (void)features;
  }
};

// How far above a write's ts a raised write ts lease lies: a restart moves this node's write
// ts floor up by at most this much, and the lease is saved again only after writes reach it.
inline constexpr std::uint64_t kWriteTsLeaseStep = std::uint64_t{1} << 24;

struct SyncStatus {
  bool voting = false;
  std::string state;  // "voting", "joining: waiting for peers (1 of 2 answered)", ...
  struct Pass {
    bool active = false;
    bool join = false;
    std::uint64_t window = 0, windows = 0;
    std::uint64_t sectors_pulled = 0, bytes_pulled = 0;
    std::uint64_t sectors_to_go = 0;  // found newer at a peer, not yet durable here
    double bytes_per_s = 0;           // recent pull rate
    double eta_s = -1;                // -1: unknown
    std::uint64_t passes_done = 0;
  } resync;
  // Serving peers' sync requests (since start): served, served late (over budget, queued
  // first), dropped (over budget with a full queue), queued now.
  struct Serve {
    std::uint64_t served = 0, deferred = 0, dropped = 0, queued = 0;
  } serve;
  struct Scrub {
    bool active = false;
    std::uint64_t bucket = 0, buckets = 0;
    std::uint64_t sectors_checked = 0, corrupt = 0, repaired = 0, unrepaired = 0;
    // Corrupt sectors where no peer held anything newer than our valid copy: that copy was
    // written over the bad slot.
    std::uint64_t stale = 0;
    std::uint64_t runs_done = 0;
    // Read repairs (since start): sectors a read or a scan found failed or suspect, repaired
    // at once from the peers without waiting for a scrub run. Started (each retry of an
    // unrepaired one counted again), stored, failed (and tried again later).
    std::uint64_t read_repairs = 0, read_repaired = 0, read_unrepaired = 0;
    // Sectors known failed and not yet repaired (being repaired, or waiting for a retry).
    std::uint64_t pending_repairs = 0;
  } scrub;
};

class Syncer {
 public:
  // `identity` is what data_dir/IDENTITY holds (nullopt: no file); `store_empty` whether the
  // store holds any written sector. Start() decides and saves the initial identity.
  Syncer(SyncerOptions options, std::optional<Identity> identity, bool store_empty, SyncEnv* env);

  // Decides the initial state (see the header comment), calls SetVoting, starts Hello
  // rounds and, for a voting node, a resync pass. IOError if the identity cannot be saved.
  Status Start(std::int64_t now_ms);

  // A sync message from a peer (sender is a cluster member other than self; the owner
  // checks the HMAC and the sender).
  void OnMessage(const SyncMessage& msg, std::int64_t now_ms);
  // The Absorb(token) finished.
  void OnAbsorbed(std::uint64_t token, const Status& status, std::int64_t now_ms);
  // Reading `sector` found a slot that failed its checks (corrupt, or suspect:
  // SectorStore::Read): it is repaired from the peers now, as scrub would (a "read repair"),
  // unless a repair of it is under way or was tried within the last request timeout.
  void OnUnreadable(SectorIdx sector, std::int64_t now_ms);
  // A new value of `sector` was handed to the store (by a register or an Absorb): the
  // cached digest of its bucket is stale.
  void OnLocalWrite(SectorIdx sector);
  // A write of this node needs ts `ts`, at or above the write ts lease: saves a lease above it
  // in IDENTITY and applies it (SetWriteTsLease). Nothing before Start, or if `ts` is below
  // the lease already; a failed save is noted once and leaves the lease as it was.
  void RaiseWriteTsLease(std::uint64_t ts);
  // Sends Hellos, retries unanswered requests, issues rate-limited fetches, scrubs a chunk.
  void Tick(std::int64_t now_ms);

  // Starts a scrub (Busy if one is running).
  Status StartScrub(std::int64_t now_ms);
  // Starts a resync pass against every peer now (Busy if one is running; joining nodes run
  // their own).
  Status StartResync(std::int64_t now_ms);

  bool voting() const;
  const Identity& identity() const;
  SyncStatus GetStatus(std::int64_t now_ms) const;

  // Aborts if an internal invariant is broken (tests and the simulator call it).
  void CheckInvariants() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;

 public:
  ~Syncer();
  Syncer(Syncer&&) noexcept;
  Syncer& operator=(Syncer&&) noexcept;
};

}  // namespace atomdisk
