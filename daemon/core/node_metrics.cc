#include "daemon/core/node_metrics.h"

#include <chrono>
#include <string>

#include "common/build_info.h"

namespace atomdisk {

namespace {

double SecondsSince(NodeMetrics::Clock::time_point start) {
  return std::chrono::duration<double>(NodeMetrics::Clock::now() - start).count();
}

int OpIndex(ClientOp op) {
  return op == ClientOp::kWrite || op == ClientOp::kWriteExtent || op == ClientOp::kWriteZeros ? 1
                                                                                               : 0;
}

}  // namespace

void NodeMetrics::Accumulated::Update(std::uint64_t now) {
  counter->Add(now >= last ? now - last : now);
  last = now;
}

NodeMetrics::NodeMetrics(const ClusterConfig& config, Rank self) {
  metrics::Registry& r = registry_;
  r.AddGauge("atomdisk_build_info", "Version and git revision of this atomdiskd (always 1).",
             {{"version", BuildVersion()}, {"revision", BuildRevision()}})
      .Set(1);
  r.AddGauge("atomdisk_node_rank", "This node's rank in cluster.toml.").Set(self);
  r.AddGauge("atomdisk_cluster_nodes", "Nodes in cluster.toml.")
      .Set(static_cast<double>(config.nodes.size()));
  r.AddGauge("process_start_time_seconds", "When this process started, in Unix seconds.")
      .Set(std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
               .count());

  static constexpr const char* kOps[2] = {"read", "write"};
  static constexpr const char* kOutcomeNames[kOutcomes] = {
      "ok", "invalid_sector", "unreadable", "client_gone", "refused", "no_quorum"};
  for (int op = 0; op < 2; ++op) {
    for (int o = 0; o < kOutcomes; ++o) {
      requests_[op][o] = &r.AddCounter(
          "atomdisk_client_requests_total",
          "Client reads and writes that reached this node, by how they ended: ok (answered), "
          "invalid_sector (refused), unreadable (not answered: this copy is unreadable), "
          "client_gone (completed after the client left), refused (a write not done: the "
          "sector's tag is at the top of the timestamp range), no_quorum (an extent's sector "
          "not run: this node's peer links reach no quorum, so the client went elsewhere).",
          {{"op", kOps[op]}, {"outcome", kOutcomeNames[o]}});
    }
  }
  for (int op = 0; op < 2; ++op) {
    bytes_[op] = &r.AddCounter("atomdisk_client_bytes_total",
                               "Sector bytes of the client reads and writes answered ok.",
                               {{"op", kOps[op]}});
  }
  for (int op = 0; op < 2; ++op) {
    latency_[op] = &r.AddHistogram(
        "atomdisk_client_request_duration_seconds",
        "Client reads and writes this node coordinated, from arrival to completion.",
        metrics::LatencyBuckets(), {{"op", kOps[op]}});
  }
  admin_[0] = &r.AddCounter("atomdisk_admin_requests_total", "Info and scrub requests answered.",
                            {{"op", "info"}});
  admin_[1] = &r.AddCounter("atomdisk_admin_requests_total", "Info and scrub requests answered.",
                            {{"op", "scrub"}});
  in_flight_ =
      &r.AddGauge("atomdisk_client_requests_in_flight",
                  "Client reads and writes this node accepted and has not answered yet (the queued "
                  "ones included).");
  queued_ = &r.AddGauge(
      "atomdisk_client_requests_queued",
      "Of the client reads and writes in flight, those waiting behind an earlier one on the "
      "same sector (its register coordinates one at a time).");
  queued_total_ = &r.AddCounter(
      "atomdisk_client_requests_queued_total",
      "Client reads and writes that had to wait behind an earlier one on the same sector.");
  registers_ = &r.AddGauge("atomdisk_registers_active",
                           "Per-sector registers in memory (sectors with recent work).");

  store_write_ = &r.AddHistogram(
      "atomdisk_store_write_duration_seconds",
      "Writes to this node's store, from the write to durable (includes the fdatasync).",
      metrics::LatencyBuckets());
  fdatasync_ =
      &r.AddHistogram("atomdisk_store_fdatasync_duration_seconds",
                      "Each group commit's fdatasync of the data file.", metrics::LatencyBuckets());
  group_commit_ = &r.AddHistogram("atomdisk_store_group_commit_sectors",
                                  "Sector writes covered by each group commit's fdatasync.",
                                  metrics::ExponentialBuckets(1, 2, 12));
  persist_errors_ = &r.AddCounter("atomdisk_store_write_errors_total",
                                  "Store writes that failed (the write or its sync).");
  unreadable_sectors_ = &r.AddCounter(
      "atomdisk_store_unreadable_total",
      "Times a sector was needed and its stored copy was unreadable (corrupt or I/O error).");

  read_repairs_ = &r.AddCounter(
      "atomdisk_read_repairs_total",
      "Repairs outside a scrub run started (retries counted): a read or a scan found a stored "
      "copy failed or suspect and asked the peers.");
  read_repaired_ = &r.AddCounter("atomdisk_read_repaired_total",
                                 "Read repairs that stored a value (the peers' or our own copy).");
  read_unrepaired_ = &r.AddCounter("atomdisk_read_unrepaired_total",
                                   "Read repairs that ended without storing a value (each is "
                                   "tried again later).");
  sync_served_ = &r.AddCounter("atomdisk_sync_requests_served_total",
                               "Peers' Digest, Entries and Fetch requests answered.");
  sync_deferred_ = &r.AddCounter(
      "atomdisk_sync_requests_deferred_total",
      "Of those, answered late: over the serve budget (sync_serve_rate_mb), queued first.");
  sync_dropped_ = &r.AddCounter(
      "atomdisk_sync_requests_dropped_total",
      "Peers' sync requests dropped: over the serve budget with the sender's queue full (the "
      "peer asks again). Growing while no peer resyncs: replayed requests.");
  pending_repairs_ = &r.AddGauge(
      "atomdisk_pending_repairs",
      "Sectors whose stored copy failed its checks and is not repaired yet (being repaired or "
      "waiting to be tried again). Above 0 for long: this node is one copy short there.");

  auth_failures_ = &r.AddCounter("atomdisk_auth_failures_total",
                                 "Frames whose HMAC tag did not verify (client or node key).");
  bad_frames_ =
      &r.AddCounter("atomdisk_bad_frames_total", "Malformed frames (the connection was closed).");
  system_msgs_ = &r.AddCounter("atomdisk_system_messages_total",
                               "Authenticated register messages received from peers.");
  sync_msgs_ = &r.AddCounter("atomdisk_sync_messages_total",
                             "Authenticated resync and scrub messages received from peers.");
  unwanted_values_ = &r.AddCounter(
      "atomdisk_unwanted_values_total",
      "Peer Values dropped unchecked: the operation they answered had its quorum already.");
  tags_from_cache_ = &r.AddCounter("atomdisk_tags_from_cache_total",
                                   "Tag requests answered from the store's slot cache.");
  registers_from_cached_tag_ = &r.AddCounter(
      "atomdisk_registers_from_cached_tag_total",
      "Registers built for a write from the slot cache's tag, without reading the sector.");
  batches_sent_ = &r.AddCounter("atomdisk_system_batches_sent_total",
                                "System batch frames sent to peers (one per peer).");
  batched_msgs_ = &r.AddCounter("atomdisk_batched_messages_sent_total",
                                "Register messages sent to peers inside system batches.");

  for (const NodeConfig& n : config.nodes) {
    if (n.rank == self) continue;
    const metrics::Labels peer = {{"peer", std::to_string(n.rank)}};
    peers_[n.rank] = Peer{
        &r.AddGauge("atomdisk_peer_up", "1 while this node's link to the peer is connected.", peer),
        &r.AddGauge("atomdisk_peer_last_heard_seconds",
                    "Seconds since the peer last answered one of this node's operations (or "
                    "since this node started); grows on an idle cluster.",
                    peer),
        &r.AddCounter("atomdisk_peer_connects_total",
                      "Connections made on the link to the peer (1 + reconnects).", peer),
        &r.AddCounter("atomdisk_peer_dropped_messages_total",
                      "Messages to the peer dropped: link down or its queue full.", peer),
        &r.AddCounter("atomdisk_peer_dropped_bytes_total", "Bytes of those dropped messages.",
                      peer),
        &r.AddHistogram("atomdisk_peer_round_trip_seconds",
                        "Heartbeat round trips on the link to the peer (Ping to Pong; peers "
                        "that advertise the liveness feature only).",
                        metrics::ExponentialBuckets(0.00005, 2, 16), peer)};
  }

  voting_ = &r.AddGauge("atomdisk_voting",
                        "1 while this node answers as a quorum member (docs/RESYNC.md).");
  resync_active_ = &r.AddGauge("atomdisk_resync_active", "1 while a resync pass runs.");
  resync_join_ =
      &r.AddGauge("atomdisk_resync_join", "1 while the pass is a join (the node does not vote).");
  resync_to_go_ = &r.AddGauge("atomdisk_resync_sectors_to_go",
                              "Sectors found newer at a peer and not yet durable here.");
  resync_rate_ = &r.AddGauge("atomdisk_resync_pull_bytes_per_second", "Recent resync pull rate.");
  resync_passes_ = &r.AddCounter("atomdisk_resync_passes_total", "Resync passes finished.");
  resync_sectors_ = {&r.AddCounter("atomdisk_resync_sectors_pulled_total",
                                   "Sectors pulled from peers by resync.")};
  resync_bytes_ = {&r.AddCounter("atomdisk_resync_bytes_pulled_total",
                                 "Sector bytes pulled from peers by resync.")};
  scrub_active_ = &r.AddGauge("atomdisk_scrub_active", "1 while a scrub runs.");
  scrub_unrepaired_now_ =
      &r.AddGauge("atomdisk_scrub_unrepaired_sectors",
                  "Sectors the current or last scrub found corrupt and could not repair.");
  scrub_runs_ = &r.AddCounter("atomdisk_scrub_runs_total", "Scrubs finished.");
  scrub_checked_ = {
      &r.AddCounter("atomdisk_scrub_sectors_checked_total", "Sectors checked by scrubs.")};
  scrub_corrupt_ = {
      &r.AddCounter("atomdisk_scrub_corrupt_total", "Corrupt sectors found by scrubs.")};
  scrub_repaired_ = {&r.AddCounter("atomdisk_scrub_repaired_total",
                                   "Corrupt sectors repaired from peers by scrubs.")};
  scrub_unrepaired_ = {
      &r.AddCounter("atomdisk_scrub_unrepaired_total", "Corrupt sectors scrubs could not repair.")};
}

void NodeMetrics::ClientRequest(ClientOp op, Outcome outcome, Clock::time_point start) {
  const int i = OpIndex(op);
  requests_[i][static_cast<int>(outcome)]->Add();
  if (outcome == Outcome::kOk) bytes_[i]->Add(kSectorSize);
  if (outcome == Outcome::kOk || outcome == Outcome::kClientGone) {
    latency_[i]->Observe(SecondsSince(start));
  }
}

void NodeMetrics::AdminRequest(ClientOp op) { admin_[op == ClientOp::kScrub ? 1 : 0]->Add(); }

void NodeMetrics::StoreWrite(Clock::time_point start) {
  store_write_->Observe(SecondsSince(start));
}

void NodeMetrics::StoreSync(std::size_t sectors, double seconds) {
  fdatasync_->Observe(seconds);
  group_commit_->Observe(static_cast<double>(sectors));
}

void NodeMetrics::PeerRoundTrip(Rank peer, double seconds) {
  auto it = peers_.find(peer);
  if (it != peers_.end()) it->second.round_trip->Observe(seconds);
}

void NodeMetrics::Publish(const NodeMetricsSnapshot& s) {
  // One snapshot: a scrape sees all of it or none (metrics::Registry::Publication).
  const metrics::Registry::Publication publication(registry_);
  in_flight_->Set(static_cast<double>(s.ops_in_flight));
  queued_->Set(static_cast<double>(s.ops_queued));
  queued_total_->Set(s.counters.queued_ops);
  registers_->Set(static_cast<double>(s.registers_active));
  auth_failures_->Set(s.counters.auth_failures);
  bad_frames_->Set(s.counters.bad_frames);
  system_msgs_->Set(s.counters.system_msgs);
  sync_msgs_->Set(s.counters.sync_msgs);
  persist_errors_->Set(s.counters.persist_errors);
  unreadable_sectors_->Set(s.counters.unreadable_sectors);
  unwanted_values_->Set(s.counters.unwanted_values);
  tags_from_cache_->Set(s.counters.tags_from_cache);
  registers_from_cached_tag_->Set(s.counters.registers_from_cached_tag);
  batches_sent_->Set(s.counters.batches_sent);
  batched_msgs_->Set(s.counters.batched_msgs);
  for (const NodeMetricsSnapshot::Peer& p : s.peers) {
    auto it = peers_.find(p.rank);
    if (it == peers_.end()) continue;
    it->second.up->Set(p.up ? 1 : 0);
    it->second.last_heard->Set(p.last_heard_s);
    it->second.connects->Set(p.connects);
    it->second.dropped->Set(p.dropped);
    it->second.dropped_bytes->Set(p.dropped_bytes);
  }
  voting_->Set(s.sync.voting ? 1 : 0);
  resync_active_->Set(s.sync.resync.active ? 1 : 0);
  resync_join_->Set(s.sync.resync.active && s.sync.resync.join ? 1 : 0);
  resync_to_go_->Set(static_cast<double>(s.sync.resync.sectors_to_go));
  resync_rate_->Set(s.sync.resync.active ? s.sync.resync.bytes_per_s : 0);
  resync_passes_->Set(s.sync.resync.passes_done);
  resync_sectors_.Update(s.sync.resync.sectors_pulled);
  resync_bytes_.Update(s.sync.resync.bytes_pulled);
  scrub_active_->Set(s.sync.scrub.active ? 1 : 0);
  scrub_unrepaired_now_->Set(static_cast<double>(s.sync.scrub.unrepaired));
  scrub_runs_->Set(s.sync.scrub.runs_done);
  scrub_checked_.Update(s.sync.scrub.sectors_checked);
  scrub_corrupt_.Update(s.sync.scrub.corrupt);
  scrub_repaired_.Update(s.sync.scrub.repaired);
  scrub_unrepaired_.Update(s.sync.scrub.unrepaired);
  read_repairs_->Set(s.sync.scrub.read_repairs);
  read_repaired_->Set(s.sync.scrub.read_repaired);
  read_unrepaired_->Set(s.sync.scrub.read_unrepaired);
  pending_repairs_->Set(static_cast<double>(s.sync.scrub.pending_repairs));
  sync_served_->Set(s.sync.serve.served);
  sync_deferred_->Set(s.sync.serve.deferred);
  sync_dropped_->Set(s.sync.serve.dropped);
}

}  // namespace atomdisk
