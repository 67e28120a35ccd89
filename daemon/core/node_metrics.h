// NodeMetrics: what atomdiskd exports at `GET /metrics` (docs/OPERATIONS.md, "Metrics"), and
// the few calls through which the node, its store and its peer links feed it.
//
// Two ways in: events counted where they happen (client operations by kind and outcome and
// their latency, store write and fdatasync latency, group commit sizes), and a snapshot of
// the node's own state and counters (Node::Counters, the peer links, the Syncer's status)
// that the io thread publishes about every 100 ms (Publish). The HTTP endpoint only reads the
// registry's atomics on its own thread, so a scrape never waits for the io thread nor holds
// anything the io thread needs; it shows a whole snapshot or none of it (the registry's
// publication seqlock), never gauges of one with counters of the next.
//
// Ownership: atomdiskd's main() owns it (it exists before the store opens, whose sync hook
// feeds it), and it outlives the Node and the MetricsServer. Threading: the event calls and
// Publish are relaxed atomic updates, safe from any thread (the store's sync thread calls
// StoreSync); Publish itself is io-thread only (it keeps the last pass's values).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <vector>

#include "common/config.h"
#include "common/metrics.h"
#include "common/wire.h"
#include "daemon/sync/syncer.h"

namespace atomdisk {

// What the node core counts (NodeCore's Info answer and the metrics both show it).
struct NodeCounters {
  std::uint64_t client_ops = 0, reads = 0, writes = 0, auth_failures = 0, invalid_sector = 0,
                bad_frames = 0, system_msgs = 0, sync_msgs = 0, persist_errors = 0,
                unreadable_sectors = 0;
  std::uint64_t queued_ops = 0;       // client operations that waited behind another on their
                                      // sector's register
  std::uint64_t unwanted_values = 0;  // Values dropped unchecked: no operation waited for them
  std::uint64_t tags_from_cache = 0;  // ReadTags answered from the store's slot cache
  // Registers built for a WriteProc or a client write from the cached durable tag, without
  // reading the sector
  std::uint64_t registers_from_cached_tag = 0;
  // System batches sent (one per peer it went to) and the messages they carried.
  std::uint64_t batches_sent = 0, batched_msgs = 0;
  // Extent commands answered "not done" for every sector at once because this node's links
  // reached no quorum (NodeCore::QuorumReachable), so that the client went elsewhere.
  std::uint64_t no_quorum_extents = 0;
};

// The core's state, as NodeCore::PublishMetrics copies it out.
struct NodeMetricsSnapshot {
  std::uint64_t ops_in_flight = 0;  // accepted and not answered, queued ones included
  std::uint64_t ops_queued = 0;     // of those, waiting behind another on their sector
  std::uint64_t registers_active = 0;
  NodeCounters counters;
  struct Peer {
    Rank rank = 0;
    bool up = false;
    double last_heard_s = 0;  // since its last answer to us (or since start if none yet)
    std::uint64_t connects = 0, dropped = 0, dropped_bytes = 0;
  };
  std::vector<Peer> peers;
  SyncStatus sync;
};

class NodeMetrics {
 public:
  using Clock = std::chrono::steady_clock;
  enum class Outcome {
    kOk,             // answered
    kInvalidSector,  // refused: the sector is beyond the device
    kUnreadable,     // not answered: this node's copy is unreadable (the client fails over)
    kClientGone,     // completed after the client's connection closed
    kRefused,        // a write not done: the sector's tag is at the top of its range
    kNoQuorum,       // an extent's member not run: this node's links reach no quorum
  };
  static constexpr int kOutcomes = 6;

  NodeMetrics(const ClusterConfig& config, Rank self);
  NodeMetrics(const NodeMetrics&) = delete;
  NodeMetrics& operator=(const NodeMetrics&) = delete;

  metrics::Registry& registry() { return registry_; }

  // A client read or write that arrived at `start` ended with `outcome` (latency observed for
  // kOk and kClientGone: operations this node coordinated to the end).
  void ClientRequest(ClientOp op, Outcome outcome, Clock::time_point start);
  // An info or scrub request answered.
  void AdminRequest(ClientOp op);
  // One Persist from Write() to its completion callback.
  void StoreWrite(Clock::time_point start);
  // One group commit: `sectors` writes covered by one fdatasync of `seconds` (the store's
  // sync thread calls it through SectorStore::Options::on_sync).
  void StoreSync(std::size_t sectors, double seconds);
  // The io thread's snapshot (see NodeMetricsSnapshot).
  void Publish(const NodeMetricsSnapshot& s);
  // A heartbeat round trip to `peer` (a Ping answered by its Pong), in seconds.
  void PeerRoundTrip(Rank peer, double seconds);

 private:
  struct Peer {
    metrics::Gauge* up;
    metrics::Gauge* last_heard;
    metrics::Counter* connects;
    metrics::Counter* dropped;
    metrics::Counter* dropped_bytes;
    metrics::Histogram* round_trip;
  };
  // Per-pass values (the Syncer restarts them at each resync pass or scrub run) summed into
  // a counter: what grew since the last Publish, or all of it once the pass restarted.
  struct Accumulated {
    metrics::Counter* counter;
    std::uint64_t last = 0;
    void Update(std::uint64_t now);
  };

  metrics::Registry registry_;
  metrics::Counter* requests_[2][kOutcomes];  // [read, write][outcome]
  metrics::Counter* bytes_[2];
  metrics::Histogram* latency_[2];
  metrics::Counter* admin_[2];  // info, scrub
  metrics::Histogram* store_write_;
  metrics::Histogram* fdatasync_;
  metrics::Histogram* group_commit_;
  metrics::Gauge* in_flight_;
  metrics::Gauge* queued_;
  metrics::Counter* queued_total_;
  metrics::Gauge* registers_;
  metrics::Counter *auth_failures_, *bad_frames_, *system_msgs_, *sync_msgs_, *persist_errors_,
      *unreadable_sectors_, *unwanted_values_, *tags_from_cache_, *registers_from_cached_tag_,
      *batches_sent_, *batched_msgs_, *read_repairs_, *read_repaired_, *read_unrepaired_;
  std::map<Rank, Peer> peers_;
  metrics::Gauge* voting_;
  metrics::Gauge* resync_active_;
  metrics::Gauge* resync_join_;
  metrics::Gauge* resync_to_go_;
  metrics::Gauge* resync_rate_;
  metrics::Gauge* pending_repairs_;
  metrics::Counter *sync_served_, *sync_deferred_, *sync_dropped_;
  metrics::Counter* resync_passes_;
  Accumulated resync_sectors_, resync_bytes_;
  metrics::Gauge* scrub_active_;
  metrics::Gauge* scrub_unrepaired_now_;
  metrics::Counter* scrub_runs_;
  Accumulated scrub_checked_, scrub_corrupt_, scrub_repaired_, scrub_unrepaired_;
};

}  // namespace atomdisk
