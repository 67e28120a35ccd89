#include "daemon/core/node_core.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

namespace atomdisk {

#ifdef ATOMDISK_SIM_BUGS
#define CORE_BUG(name) (options_.bugs.name)
#else
#define CORE_BUG(name) false
#endif

NodeCoreOptions NodeCoreOptions::FromConfig(const ClusterConfig& config) {
  NodeCoreOptions o;
  o.registers.thrifty_collect = true;  // asks only a quorum's worth of responsive peers
  o.syncer.rate_bytes_per_s = config.resync_rate_mb * 1e6;
  o.syncer.serve_bytes_per_s = config.sync_serve_rate_mb * 1e6;
  o.syncer.resync_interval_ms = config.resync_interval_s * 1000;
  o.syncer.scrub_interval_ms = config.scrub_interval_s * 1000;
  return o;
}

NodeCore::NodeCore(ClusterConfig config, Rank self, std::unique_ptr<SectorStore> store,
                   NodeMembership membership, NodeCoreEnv* env, NodeCoreOptions options)
    : config_(std::move(config)),
      self_(self),
      store_(std::move(store)),
      membership_(std::move(membership)),
      env_(env),
      options_(std::move(options)),
      register_config_(options_.registers),
      client_mac_(config_.client_key) {
  register_config_.self = self_;
  register_config_.ranks.clear();
  for (const auto& n : config_.nodes) register_config_.ranks.push_back(n.rank);
  std::sort(register_config_.ranks.begin(), register_config_.ranks.end());
  // ReadProc to everyone until a peer's HelloReply says it understands ReadTag.
  register_config_.tag_peers.assign(register_config_.ranks.size(), false);
  SyncerOptions so = options_.syncer;
  so.self = self_;
  so.ranks = register_config_.ranks;
  so.sectors = config_.sectors;
  so.cluster_id = config_.ClusterId();
  so.id_seed = options_.boot_nonce ^ 0x5359'4e43'4944'5331ULL;  // not the op ids' nonce itself
  // Until the Syncer decides, this node answers nothing: it may have lost its disk.
  register_config_.votes = false;
  // Writes this node coordinates before the Syncer starts already stay above the ts its
  // earlier runs may have used (docs/REGISTER.md); the Syncer raises the floor no lower.
  if (membership_.identity) {
    register_config_.min_write_ts =
        std::max(membership_.identity->write_ts_floor, membership_.identity->write_ts_lease);
  }
  syncer_ =
      std::make_unique<Syncer>(std::move(so), membership_.identity, membership_.store_empty, this);
}

NodeCore::~NodeCore() {
  if (store_) store_->Close();
}

void NodeCore::Start() {
  started_ms_ = env_->NowMs();
  sync_start_deadline_ms_ = started_ms_ + 500;
  // Without IDENTITY the Syncer starts now, before this node stores anything: it saves the
  // IDENTITY that says what this data_dir is (joining, or a store from before identities).
  // Were a WriteProc persisted first and the node to crash, the next start would find data
  // and no IDENTITY and take the store for one from before identities, which votes at once:
  // a replaced disk would then vote without its join pass (docs/RESYNC.md). With IDENTITY,
  // it waits for the links (MaybeStartSyncer), so that its first Hellos reach the peers.
  if (!membership_.identity && !CORE_BUG(serve_before_identity)) {
    sync_start_deadline_ms_ = started_ms_;
    MaybeStartSyncer(started_ms_);
  }
}

void NodeCore::MaybeStartSyncer(std::int64_t now) {
  if (sync_started_) return;
  bool all_up = true;
  for (Rank r : register_config_.ranks) {
    if (r != self_) all_up = all_up && env_->PeerConnected(r);
  }
  if (!all_up && now < sync_start_deadline_ms_) return;
  sync_started_ = true;
  Status s = syncer_->Start(now);
  if (!s.ok()) {
    fatal_ = true;
    env_->Fatal("cannot start: " + s.ToString());
  }
}

bool NodeCore::StopIfStoreFailed(const Status& status) {
  if (status.ok() || !store_->Failed()) return false;
  if (!fatal_) {
    fatal_ = true;
    env_->Fatal("the data file failed an fdatasync: " + status.message());
  }
  return true;
}

void NodeCore::Tick() {
  if (fatal_) return;  // on its way out: nothing more is decided or stored
  std::int64_t now = env_->NowMs();
  idle_scratch_.clear();
  for (auto& [sector, slot] : registers_) {
    slot.reg->Tick(now);
    if (slot.reg->NeedsDurableData()) LoadDurableData(sector, *slot.reg);
    bool idle_now = slot.reg->Idle();
    if (idle_now && slot.idle_at_last_tick) idle_scratch_.push_back(sector);
    slot.idle_at_last_tick = idle_now;
  }
  for (SectorIdx s : idle_scratch_) {
    auto it = registers_.find(s);
    observer_->OnRegisterDropped(s, it->second.reg->durable().tag);
    registers_.erase(it);
  }
  if (CORE_BUG(refuse_started_extents) && !extents_.empty() && !QuorumReachable()) {
    for (auto& [id, e] : extents_) {
      if (e.answered || e.op == ClientOp::kReadExtent) continue;
      e.answered = true;
      auto channel = e.channel.lock();
      if (!channel || channel->channel_closed()) continue;
      ClientResponse resp{ResponseStatus::kOk, e.request_id, e.op, {}, {}};
      resp.outcomes.assign(e.outcomes.size(), ExtentOutcome::kNotDone);
      Respond(*channel, resp);
    }
  }
  MaybeStartSyncer(now);
  if (sync_started_) syncer_->Tick(now);
  PublishMetrics(now);
}

void NodeCore::PublishMetrics(std::int64_t now) {
  constexpr std::int64_t kPublishIntervalMs = 100;
  if (!metrics_ || now - metrics_published_ms_ < kPublishIntervalMs) return;
  metrics_published_ms_ = now;
  NodeMetricsSnapshot s;
  s.ops_in_flight = client_ops_.size();
  s.ops_queued = QueuedClientOps();
  s.registers_active = registers_.size();
  s.counters = counters_;
  for (Rank rank : register_config_.ranks) {
    if (rank == self_) continue;
    const NodeCoreEnv::PeerLinkStats link = env_->PeerStats(rank);
    const std::int64_t heard = std::max(heard_ms_[rank], started_ms_);
    s.peers.push_back({rank, link.connected, static_cast<double>(now - heard) / 1000.0,
                       link.connects, link.dropped, link.dropped_bytes});
  }
  if (sync_started_) s.sync = syncer_->GetStatus(now);
  metrics_->Publish(s);
}

void NodeCore::Respond(ClientChannel& channel, const ClientResponse& resp) {
  channel.SendFrame(
      std::make_shared<const Frame>(EncodeFrame(resp, MacFor(client_mac_, channel.channel_tls()))));
}

void NodeCore::OnClientFrame(ClientChannel& channel, std::span<const std::uint8_t> body) {
  if (fatal_) return;  // the client times out and fails over
  auto payload = VerifyFrameBodyOn(body, client_mac_, channel.channel_tls());
  if (!payload.ok()) {
    ++counters_.auth_failures;
    auto header = DecodeClientCommandHeader(body.first(body.size() - kMacSize));
    if (!header.ok()) {
      ++counters_.bad_frames;
      channel.CloseChannel("unauthenticated and malformed client frame");
      return;
    }
    LogRateLimited("auth", "client " + channel.channel_name() + ": command with a bad HMAC tag");
    Respond(channel,
            ClientResponse{ResponseStatus::kAuthFailure, header->request_id, header->op, {}, {}});
    return;
  }
  channel.MarkAuthenticated();
  auto cmd = DecodeClientCommand(*payload);
  if (!cmd.ok()) {
    ++counters_.bad_frames;
    channel.CloseChannel(cmd.status().message());
    return;
  }
  ++counters_.client_ops;
  NodeMetrics::Clock::time_point arrived{};
  if (metrics_) {
    arrived = NodeMetrics::Clock::now();
    if (HasJsonResponse(cmd->op)) metrics_->AdminRequest(cmd->op);
  }
  if (cmd->op == ClientOp::kInfo) {
    Respond(channel,
            ClientResponse{ResponseStatus::kOk, cmd->request_id, ClientOp::kInfo, {}, InfoJson()});
    return;
  }
  if (cmd->op == ClientOp::kScrub) {
    Status started = sync_started_ ? syncer_->StartScrub(env_->NowMs())
                                   : Status::Unavailable("the node is starting; try again");
    nlohmann::json j = {{"started", started.ok()}};
    if (!started.ok()) j["error"] = started.message();
    env_->Log(NodeCoreEnv::Level::kInfo, "scrub requested by " + channel.channel_name() + ": " +
                                             (started.ok() ? "started" : started.message()));
    Respond(channel,
            ClientResponse{ResponseStatus::kOk, cmd->request_id, ClientOp::kScrub, {}, j.dump()});
    return;
  }
  if (IsExtentOp(cmd->op)) {
    StartExtent(channel, std::move(cmd).value(), arrived);
    return;
  }
  if (cmd->sector >= config_.sectors) {
    ++counters_.invalid_sector;
    if (metrics_) metrics_->ClientRequest(cmd->op, NodeMetrics::Outcome::kInvalidSector, arrived);
    Respond(channel,
            ClientResponse{ResponseStatus::kInvalidSectorIndex, cmd->request_id, cmd->op, {}, {}});
    return;
  }
  Register* reg = GetRegister(cmd->sector, nullptr, cmd->op == ClientOp::kWrite);
  if (!reg) {  // unreadable here: stay silent, the client fails over to another node
    if (metrics_) metrics_->ClientRequest(cmd->op, NodeMetrics::Outcome::kUnreadable, arrived);
    return;
  }
  std::uint64_t token = next_token_++;
  client_ops_.emplace(token, ClientOpRef{channel.WeakChannel(), cmd->request_id, cmd->op, arrived});
  channel.OpStarted();
  StartClientOp(*reg, token, cmd->op, std::move(cmd->data));
}

void NodeCore::StartClientOp(Register& reg, std::uint64_t token, ClientOp op, SectorPtr data) {
  // A register coordinates one client operation at a time: with one in progress or queued
  // on this sector, this one waits in the register's queue (QueuedClientOps counts it).
  if (reg.HasClientWork()) ++counters_.queued_ops;
  if (op == ClientOp::kWrite) {
    ++counters_.writes;
    reg.StartWrite(token, std::move(data), env_->NowMs());
  } else {
    ++counters_.reads;
    reg.StartRead(token, env_->NowMs());
  }
}

void NodeCore::StartExtent(ClientChannel& channel, ClientCommand cmd,
                           NodeMetrics::Clock::time_point arrived) {
  const ClientOp member_op = cmd.op == ClientOp::kReadExtent ? ClientOp::kRead : ClientOp::kWrite;
  // The decoder holds count to 1..kMaxExtentSectors; the run must lie inside the device.
  if (cmd.sector >= config_.sectors || config_.sectors - cmd.sector < cmd.count) {
    ++counters_.invalid_sector;
    if (metrics_) metrics_->ClientRequest(member_op, NodeMetrics::Outcome::kInvalidSector, arrived);
    Respond(channel,
            ClientResponse{ResponseStatus::kInvalidSectorIndex, cmd.request_id, cmd.op, {}, {}});
    return;
  }
  if (!QuorumReachable()) {
    // Fast failover (docs/PROTOCOL.md, "No quorum here"): nothing is started, so every
    // sector is known not written by this command, and the client retries the run on another
    // node at once instead of waiting out its attempt timeout here.
    ++counters_.no_quorum_extents;
    if (metrics_) {
      for (std::uint32_t i = 0; i < cmd.count; ++i) {
        metrics_->ClientRequest(member_op, NodeMetrics::Outcome::kNoQuorum, arrived);
      }
    }
    LogRateLimited("noquorum", "client " + channel.channel_name() +
                                   ": extent not run, this node's links reach no quorum");
    ClientResponse resp{ResponseStatus::kOk, cmd.request_id, cmd.op, {}, {}};
    resp.outcomes.assign(cmd.count, ExtentOutcome::kNotDone);
    if (cmd.op == ClientOp::kReadExtent) resp.sectors.resize(cmd.count);
    Respond(channel, resp);
    return;
  }
  const std::uint64_t id = next_extent_++;
  ExtentOp& e = extents_[id];
  e.channel = channel.WeakChannel();
  e.request_id = cmd.request_id;
  e.op = cmd.op;
  e.remaining = cmd.count;
  e.outcomes.assign(cmd.count, ExtentOutcome::kNotDone);
  if (cmd.op == ClientOp::kReadExtent) e.sectors.resize(cmd.count);
  const SectorPtr zeros = cmd.op == ClientOp::kWriteZeros ? ZeroSector() : nullptr;
  for (std::uint32_t i = 0; i < cmd.count; ++i) {
    const SectorIdx sector = cmd.sector + i;
    Register* reg = GetRegister(sector, nullptr, cmd.op != ClientOp::kReadExtent);
    if (!reg) {
      // Unreadable here, as for a lone command; but the extent still answers, with this
      // sector known not written by it, so the client retries just this one elsewhere.
      if (metrics_) metrics_->ClientRequest(member_op, NodeMetrics::Outcome::kUnreadable, arrived);
      FinishExtentMember(id, i, ExtentOutcome::kNotDone, nullptr);
      continue;
    }
    const std::uint64_t token = next_token_++;
    client_ops_.emplace(
        token, ClientOpRef{channel.WeakChannel(), cmd.request_id, member_op, arrived, id, i});
    // Every member counts against the connection's in-flight cap (docs/PROTOCOL.md,
    // "Extents"), so a client's extents hold at most as much as its lone commands could.
    channel.OpStarted();
    SectorPtr data;
    if (cmd.op == ClientOp::kWriteExtent) {
      data = std::move(cmd.sectors[i]);
      if (!data) data = ZeroSector();
    } else if (cmd.op == ClientOp::kWriteZeros) {
      data = zeros;
    }
    StartClientOp(*reg, token, member_op, std::move(data));
  }
}

void NodeCore::FinishExtentMember(std::uint64_t id, std::uint32_t index, ExtentOutcome outcome,
                                  SectorPtr data) {
  auto it = extents_.find(id);
  ATOMDISK_CHECK(it != extents_.end());
  ExtentOp& e = it->second;
  ATOMDISK_CHECK(index < e.outcomes.size() && e.remaining > 0);
  e.outcomes[index] = outcome;
  if (e.op == ClientOp::kReadExtent && outcome == ExtentOutcome::kDone) {
    e.sectors[index] = std::move(data);
  }
  if (CORE_BUG(extent_early_answer) && !e.answered && e.op != ClientOp::kReadExtent &&
      outcome == ExtentOutcome::kDone && e.remaining > 1) {
    e.answered = true;
    if (auto channel = e.channel.lock(); channel && !channel->channel_closed()) {
      ClientResponse resp{ResponseStatus::kOk, e.request_id, e.op, {}, {}};
      resp.outcomes.assign(e.outcomes.size(), ExtentOutcome::kDone);
      Respond(*channel, resp);
    }
  }
  if (--e.remaining > 0) return;
  ExtentOp done = std::move(e);
  extents_.erase(it);
  if (done.answered) return;
  auto channel = done.channel.lock();
  if (!channel || channel->channel_closed()) return;  // the members still completed
  ClientResponse resp{ResponseStatus::kOk, done.request_id, done.op, {}, {}};
  resp.outcomes = std::move(done.outcomes);
  resp.sectors = std::move(done.sectors);
  Respond(*channel, resp);
}

bool NodeCore::WantsValue(const SystemMessage& msg) {
  auto it = registers_.find(msg.sector);
  if (it != registers_.end() && it->second.reg->WantsValue(msg)) return true;
  ++counters_.unwanted_values;
  return false;
}

bool NodeCore::KnownSender(Rank sender, const char* what) {
  if (sender != self_ && config_.FindNode(sender)) return true;
  LogRateLimited("sender", std::string(what) + " message from unknown rank " +
                               std::to_string(static_cast<int>(sender)) + " dropped");
  return false;
}

bool NodeCore::OnSystemMessage(const SystemMessage& msg) {
  if (fatal_) return true;
  ++counters_.system_msgs;
  if (!KnownSender(msg.sender, "system")) return false;
  if (msg.sector >= config_.sectors) {
    LogRateLimited("syssector", "system message for sector " + std::to_string(msg.sector) +
                                    " beyond the device dropped");
    return true;
  }
  if (HasTag(msg.content) && msg.tag.ts > kMaxTagTs && !CORE_BUG(accept_top_tags)) {
    // No node writes above kMaxTagTs (docs/REGISTER.md, "Timestamp range"): a forged or
    // corrupt message. Taking it would leave the sector no tag to write above.
    ++counters_.bad_frames;
    LogRateLimited("tagrange", std::string(SystemContentName(msg.content)) + " from rank " +
                                   std::to_string(static_cast<int>(msg.sender)) + " for sector " +
                                   std::to_string(msg.sector) + " with tag " + msg.tag.ToString() +
                                   " above the timestamp range dropped");
    return true;
  }
  if (msg.content == SystemContent::kValue || msg.content == SystemContent::kTag ||
      msg.content == SystemContent::kAck) {
    // Only answers count for PeerResponsive: a joining peer sends Hellos, ReadProcs and
    // WriteProcs but answers no collect, and must not be picked as the one peer to ask.
    heard_ms_[msg.sender] = env_->NowMs();
  }
  if (msg.content == SystemContent::kReadTag && AnswerReadTagFromCache(msg)) return true;
  Register* reg = GetRegister(msg.sector, &msg);
  if (!reg) return true;
  reg->OnMessage(msg, env_->NowMs());
  return true;
}

bool NodeCore::OnSyncMessage(const SyncMessage& msg) {
  if (fatal_) return true;
  ++counters_.sync_msgs;
  if (!KnownSender(msg.sender, "sync")) return false;
  if (!sync_started_) return true;  // a few ms after start-up: the peer asks again
  syncer_->OnMessage(msg, env_->NowMs());
  return true;
}

bool NodeCore::AnswerReadTagFromCache(const SystemMessage& msg) {
  // What the register built from the store would answer (Register::OnMessage): its durable
  // tag, in the same AnswerTo message. With no register there is no pending value of ours, and
  // while a resync absorb is pending the cache says nothing; not voting, the register stays silent.
  if (!register_config_.votes || registers_.count(msg.sector) ||
      direct_absorbs_.count(msg.sector)) {
    return false;
  }
  std::optional<Tag> tag = store_->CachedDurableTag(msg.sector);
  if (!tag) return false;
  SystemMessage reply = AnswerTo(self_, msg.op_id, msg.sector, SystemContent::kTag);
  reply.tag = *tag;
  observer_->OnTagFromCache(msg.sector, *tag);
  Send(msg.sender, reply);
  ++counters_.tags_from_cache;
  return true;
}

void NodeCore::OnPeerLinkUp(Rank peer) {
  if (fatal_ || peer == self_ || !config_.FindNode(peer)) return;
  // It may be another process now, perhaps an older version: no batches until its next
  // HelloReply says it takes them (the Syncer's next Hello, within hello_interval_ms).
  batch_peers_[peer] = false;
  const std::int64_t now = env_->NowMs();
  for (auto& [sector, slot] : registers_) slot.reg->RetransmitSoon(now);
}

bool NodeCore::QuorumReachable() {
  std::size_t reachable = register_config_.votes ? 1 : 0;
  for (Rank rank : register_config_.ranks) {
    if (rank != self_ && env_->PeerConnected(rank)) ++reachable;
  }
  return reachable >= config_.Majority();
}

bool NodeCore::PeerResponsive(Rank peer) {
  // Answered us within the last few ms: under load every peer answers many times a ms, so a
  // quorum's worth of asks suffices; a peer gone quiet (dead, partitioned, or an idle
  // cluster) is asked with everyone else until it is heard again.
  constexpr std::int64_t kResponsiveWindowMs = 20;
  if (peer == self_ || !config_.FindNode(peer) || !env_->PeerConnected(peer)) return false;
  return env_->NowMs() - heard_ms_[peer] <= kResponsiveWindowMs;
}

Register* NodeCore::GetRegister(SectorIdx sector, const SystemMessage* incoming,
                                bool client_write) {
  auto it = registers_.find(sector);
  if (it != registers_.end()) {
    it->second.idle_at_last_tick = false;
    return it->second.reg.get();
  }
  if (direct_absorbs_.count(sector)) return nullptr;  // being repaired: not durable yet
  const bool overwrite =
      client_write ||
      (incoming && incoming->content == SystemContent::kWriteProc && incoming->data);
  if (overwrite) {
    std::optional<Tag> tag = store_->CachedDurableTag(sector);
    if (tag && (client_write || incoming->tag > *tag)) {
      Triple durable{*tag, nullptr};
      observer_->OnRegisterLoaded(sector, durable);
      auto reg = std::make_unique<Register>(sector, durable, &register_config_, this);
      Register* raw = reg.get();
      registers_.emplace(sector, RegisterSlot{std::move(reg), false});
      ++counters_.registers_from_cached_tag;
      return raw;
    }
  }
  auto stored =
      CORE_BUG(serve_suspect_older) ? store_->ReadNewestValid(sector) : store_->Read(sector);
  if (!stored.ok()) {
    OnUnreadable(sector, stored.status());
    return nullptr;
  }
  observer_->OnRegisterLoaded(sector, *stored);
  auto reg = std::make_unique<Register>(sector, std::move(stored).value(), &register_config_, this);
  Register* raw = reg.get();
  registers_.emplace(sector, RegisterSlot{std::move(reg), false});
  return raw;
}

void NodeCore::OnUnreadable(SectorIdx sector, const Status& status) {
  ++counters_.unreadable_sectors;
  LogRateLimited("read", "sector " + std::to_string(sector) +
                             " unreadable, not answering for it: " + status.ToString());
  // A failed or suspect slot (not an I/O error): the peers' copies repair it now, not at the
  // next scrub (docs/RESYNC.md, "Read repair").
  if (sync_started_ && status.code() == StatusCode::kCorruption) {
    syncer_->OnUnreadable(sector, env_->NowMs());
  }
}

Result<Triple> NodeCore::ReadStoredAt(SectorIdx sector, Tag tag) {
  auto stored = store_->Read(sector);
  if (stored.ok() && stored->tag != tag) {
    return Status::Unavailable("sector " + std::to_string(sector) + ": the store holds " +
                               stored->tag.ToString() + ", not " + tag.ToString());
  }
  return stored;
}

void NodeCore::LoadDurableData(SectorIdx sector, Register& reg) {
  // Nothing of the register's is in flight, so the store holds its durable value.
  auto stored = ReadStoredAt(sector, reg.durable().tag);
  if (!stored.ok()) {
    OnUnreadable(sector, stored.status());
    return;  // tried again at the next tick
  }
  reg.SetDurableData(*stored, env_->NowMs());
}

void NodeCore::Send(Rank to, const SystemMessage& msg) {
  if (to == self_ || !config_.FindNode(to)) return;
  if (!BatchesTo(to) || msg.content == SystemContent::kValue) {
    env_->SendSystem(to, msg);
    return;
  }
  if (outbox_.WouldOverflow(to, msg)) FlushOutbox();
  outbox_.Add(to, msg);
  RequestFlushOnce();
}

void NodeCore::RequestFlushOnce() {
  if (flush_requested_) return;
  flush_requested_ = true;
  env_->RequestFlush();
}

void NodeCore::HoldStoreSyncs() {
  if (store_held_) return;
  store_->HoldSyncs();
  store_held_ = true;
  RequestFlushOnce();
}

bool NodeCore::BatchesTo(Rank peer) const {
  return batch_peers_[peer] || CORE_BUG(batch_ignores_features);
}

void NodeCore::FlushOutbox() {
  flush_requested_ = false;
  if (store_held_ && !(CORE_BUG(release_only_with_outbox) && outbox_.empty())) {
    // First, so that the batch's fdatasync runs while the frames below are sent.
    store_held_ = false;
    store_->ReleaseSyncs();
  }
  if (outbox_.empty()) return;
  std::vector<Rank> batch_to;
  for (const PeerOutbox::Batch& b : outbox_.Take()) {
    batch_to.clear();
    for (Rank to : b.to) {
      // A peer that stopped taking batches since (a new link, a HelloReply without the bit)
      // gets its queue one message at a time.
      if (b.msgs.size() > 1 && BatchesTo(to)) {
        batch_to.push_back(to);
      } else {
        for (const SystemMessage& m : b.msgs) env_->SendSystem(to, m);
      }
    }
    if (batch_to.empty()) continue;
    counters_.batches_sent += batch_to.size();
    counters_.batched_msgs += batch_to.size() * b.msgs.size();
    env_->SendSystemBatch(batch_to, b.msgs);
  }
}

void NodeCore::Persist(SectorIdx sector, const Triple& value) {
  syncer_->OnLocalWrite(sector);
  Tag tag = value.tag;
  observer_->OnStoreWrite(sector, value, false);
  NodeMetrics::Clock::time_point persist_start{};
  if (metrics_) persist_start = NodeMetrics::Clock::now();
  HoldStoreSyncs();
  store_->Write(sector, value, [this, sector, tag, persist_start](Status status) {
    observer_->OnStoreWriteDone(sector, tag, status, false);
    if (metrics_) metrics_->StoreWrite(persist_start);
    // On the store's sync thread: hand the completion back to the core's thread.
    env_->Post([this, sector, tag, status = std::move(status)]() {
      if (!status.ok()) {
        ++counters_.persist_errors;
        LogRateLimited("persist", "persisting sector " + std::to_string(sector) +
                                      " failed: " + status.ToString());
        if (StopIfStoreFailed(status)) return;
      }
      // The register's durable tag (what resync reports) may have moved.
      syncer_->OnLocalWrite(sector);
      auto it = registers_.find(sector);
      if (it == registers_.end()) return;
      it->second.reg->OnPersisted(tag, status, env_->NowMs());
    });
  });
}

void NodeCore::Complete(std::uint64_t token, SectorPtr data) {
  auto it = client_ops_.find(token);
  if (it == client_ops_.end()) return;
  ClientOpRef ref = std::move(it->second);
  client_ops_.erase(it);
  auto channel = ref.channel.lock();
  if (metrics_) {
    const bool gone = !channel || channel->channel_closed();
    metrics_->ClientRequest(
        ref.op, gone ? NodeMetrics::Outcome::kClientGone : NodeMetrics::Outcome::kOk, ref.started);
  }
  if (channel) channel->OpFinished();
  if (ref.extent != 0) {
    FinishExtentMember(ref.extent, ref.index, ExtentOutcome::kDone, std::move(data));
    return;
  }
  if (!channel || channel->channel_closed()) return;  // the operation still completed
  Respond(*channel,
          ClientResponse{ResponseStatus::kOk, ref.request_id, ref.op, std::move(data), {}});
}

void NodeCore::Refuse(std::uint64_t token, const std::string& why) {
  auto it = client_ops_.find(token);
  if (it == client_ops_.end()) return;
  ClientOpRef ref = std::move(it->second);
  client_ops_.erase(it);
  LogRateLimited("refused", "write refused, not written: " + why);
  if (metrics_) metrics_->ClientRequest(ref.op, NodeMetrics::Outcome::kRefused, ref.started);
  // The atdd protocol has no error status for a write: no response, so the client times out
  // with the outcome unknown, and every other node refuses it too. Never an Ack for a value
  // that was not stored.
  if (auto channel = ref.channel.lock()) channel->OpFinished();
  // In an extent the refusal is an answer: this sector is known not written.
  if (ref.extent != 0) FinishExtentMember(ref.extent, ref.index, ExtentOutcome::kNotDone, nullptr);
}

Uuid NodeCore::NewOpId() {
  Uuid id;
  std::uint64_t counter = ++op_counter_;
  std::memcpy(id.bytes.data(), &options_.boot_nonce, 8);
  std::memcpy(id.bytes.data() + 8, &counter, 8);
  return id;
}

void NodeCore::SendSync(Rank to, const SyncMessage& msg) {
  if (to == self_ || !config_.FindNode(to)) return;
  env_->SendSync(to, msg);
}

// The store also reports values still on their way to the disk. A pending value lives in its
// sector's register until it is durable, so the register says what each view sees: its
// durable triple (kDurable), or Register::Served (kServed; docs/RESYNC.md, "What resync sees").
Status NodeCore::ScanTags(SectorIdx first, std::uint64_t count, bool verify_all, TagView view,
                          const std::function<void(SectorIdx, Tag, bool ok)>& fn) {
  return store_->ScanRange(first, count, verify_all, [&](SectorIdx sector, Tag tag, bool ok) {
    auto it = registers_.find(sector);
    if (it == registers_.end()) return fn(sector, tag, ok);
    const Register& reg = *it->second.reg;
    fn(sector, view == TagView::kServed ? reg.Served().tag : reg.durable().tag, ok);
  });
}

void NodeCore::ForEachServedAhead(const std::function<void(SectorIdx)>& fn) {
  for (const auto& [sector, slot] : registers_) {
    if (slot.reg->Served().tag > slot.reg->durable().tag) fn(sector);
  }
}

Result<Triple> NodeCore::ReadSector(SectorIdx sector) {
  auto it = registers_.find(sector);
  if (it != registers_.end()) {
    const Triple& served = it->second.reg->Served();
    if (served.data) return served;
    // A register built from a cached tag: its durable value's data was not read. With
    // nothing of ours in flight the store holds it; otherwise the peer asks again later.
    return ReadStoredAt(sector, served.tag);
  }
  if (direct_absorbs_.count(sector)) {
    return Status::Unavailable("sector " + std::to_string(sector) + " is being repaired");
  }
  // A suspect sector's valid slot is durable all the same, and a peer's repair, which takes
  // the newest of several answers, needs it. A write torn by a crash over it is no lost copy:
  // without it, a sector torn here and rotted there would be repaired there from the other
  // peers alone, older than a write that completed on both (simulator, seed 251 --bit-rot).
  return store_->ReadNewestValid(sector);
}

void NodeCore::Absorb(SectorIdx sector, const Triple& value, std::uint64_t token) {
  StoreFromPeers(sector, value, token, /*repair=*/false);
}

void NodeCore::Repair(SectorIdx sector, const std::optional<Triple>& value, std::uint64_t token) {
  if (value) return StoreFromPeers(sector, *value, token, /*repair=*/true);
  // Nothing newer at the peers: our own newest valid copy, written over the failed slot.
  Result<Triple> own = store_->ReadNewestValid(sector);
  if (!own.ok()) {
    env_->Post([this, token, status = own.status()]() {
      syncer_->OnAbsorbed(token, status, env_->NowMs());
    });
    return;
  }
  StoreFromPeers(sector, *own, token, /*repair=*/true);
}

void NodeCore::StoreFromPeers(SectorIdx sector, const Triple& value, std::uint64_t token,
                              bool repair) {
  // Through the sector's register, built if needed, which then holds the value as stored but
  // not durable until the store says so (a register built from the store meanwhile would take
  // the pending value for a durable one and could report it in a Value). The store write
  // below writes nothing more; it reports when this value, or a newer one, is durable.
  // A sector whose copy is unreadable (scrub repairs it) has no register: the store takes
  // the value directly, and no register is built for the sector until it is durable.
  if (value.tag.ts > kMaxTagTs) {
    // The same rule as for system messages: nothing above the timestamp range is stored.
    LogRateLimited("tagrange", "resync value for sector " + std::to_string(sector) + " with tag " +
                                   value.tag.ToString() + " above the timestamp range refused");
    env_->Post([this, token]() {
      syncer_->OnAbsorbed(token, Status::Corruption("tag above the timestamp range"),
                          env_->NowMs());
    });
    return;
  }
  syncer_->OnLocalWrite(sector);
  // The catalogue's absorb-unguarded (simulator builds only): straight to the store, with
  // nothing to stop a register being built from the pending value meanwhile.
  const bool unguarded =
      CORE_BUG(absorb_unguarded) && !registers_.count(sector) && !direct_absorbs_.count(sector);
  // A repair without a register goes direct too: the sector is unreadable here, so building
  // one would only read the store again and fail.
  Register* reg = nullptr;
  if (!unguarded && !direct_absorbs_.count(sector)) {
    auto it = registers_.find(sector);
    if (it != registers_.end()) {
      reg = it->second.reg.get();
    } else if (!repair) {
      reg = GetRegister(sector);
    }
  }
  bool direct = reg == nullptr && !unguarded;
  if (reg) {
    reg->Absorb(value);
  } else if (direct) {
    ++direct_absorbs_[sector];
  }
  observer_->OnStoreWrite(sector, value, true);
  auto done = [this, token, sector, direct, value](Status status) {
    observer_->OnStoreWriteDone(sector, value.tag, status, true);
    env_->Post([this, token, sector, direct, value, status = std::move(status)]() {
      if (direct) {
        auto d = direct_absorbs_.find(sector);
        if (d != direct_absorbs_.end() && --d->second == 0) direct_absorbs_.erase(d);
      }
      if (StopIfStoreFailed(status)) return;
      if (status.ok() && !CORE_BUG(absorb_durable_unreported)) {
        // The register's own Persist of this value may have failed where this write did not.
        auto it = registers_.find(sector);
        if (it != registers_.end()) it->second.reg->OnDurableElsewhere(value, env_->NowMs());
      }
      syncer_->OnAbsorbed(token, status, env_->NowMs());
    });
  };
  HoldStoreSyncs();
  if (repair) {
    store_->Repair(sector, value, std::move(done));
  } else {
    store_->Write(sector, value, std::move(done));
  }
}

Status NodeCore::SaveIdentity(const Identity& identity) { return env_->SaveIdentity(identity); }

void NodeCore::SetVoting(bool voting) {
  if (voting != register_config_.votes) {
    env_->Log(NodeCoreEnv::Level::kInfo, voting ? "voting: answering as a quorum member"
                                                : "not voting until caught up (docs/RESYNC.md)");
  }
  register_config_.votes = voting;
  observer_->OnVotingChanged(voting);
  if (voting) {
    for (auto& [sector, slot] : registers_) slot.reg->OnVotesChanged(env_->NowMs());
  }
}

void NodeCore::Note(const std::string& line) { env_->Log(NodeCoreEnv::Level::kInfo, line); }

std::uint64_t NodeCore::WallClockMicros() { return env_->WallClockMicros(); }

void NodeCore::SetWriteTsFloor(std::uint64_t floor) {
  if (floor != register_config_.min_write_ts) {
    env_->Log(NodeCoreEnv::Level::kInfo,
              "own writes use ts >= " + std::to_string(floor) +
                  " (write ts floor after a disk replacement, docs/RESYNC.md)");
  }
  register_config_.min_write_ts = floor;
}

void NodeCore::SetWriteTsLease(std::uint64_t lease) { register_config_.write_ts_lease = lease; }

void NodeCore::SetPeerFeatures(Rank peer, std::uint8_t features) {
  if (peer != self_ && config_.FindNode(peer)) env_->OnPeerFeatures(peer, features);
  if (!options_.tag_reads) return;
  if (peer != self_ && config_.FindNode(peer)) {
    batch_peers_[peer] = (features & kFeatureBatches) != 0;
  }
  auto it = std::find(register_config_.ranks.begin(), register_config_.ranks.end(), peer);
  if (it == register_config_.ranks.end() || peer == self_) return;
  std::size_t i = static_cast<std::size_t>(it - register_config_.ranks.begin());
  bool tag_reads = (features & kFeatureTagReads) != 0;
  if (register_config_.tag_peers[i] != tag_reads) {
    char hex[8];
    std::snprintf(hex, sizeof(hex), "0x%02x", static_cast<unsigned>(features));
    env_->Log(NodeCoreEnv::Level::kInfo, "peer " + std::to_string(peer) +
                                             (tag_reads ? " answers" : " no longer answers") +
                                             " tag-only reads (HelloReply features " + hex + ")");
  }
  register_config_.tag_peers[i] = tag_reads;
}

void NodeCore::WantWriteTsLease(std::uint64_t ts) {
  if (sync_started_) syncer_->RaiseWriteTsLease(ts);
}

std::string NodeCore::InfoJson() {
  std::int64_t now = env_->NowMs();
  nlohmann::json j;
  j["rank"] = self_;
  j["version"] = options_.version;
  j["revision"] = options_.revision;
  j["sectors"] = config_.sectors;
  j["nodes"] = config_.nodes.size();
  // The client protocol extensions this node takes (docs/PROTOCOL.md): a client sends extent
  // commands only to a node that lists "extents" here.
  j["features"] = nlohmann::json::array({kExtentsFeature});
  j["uptime_s"] = (now - started_ms_) / 1000;
  j["active_registers"] = registers_.size();
  j["ops_in_flight"] = client_ops_.size();
  j["ops_queued"] = QueuedClientOps();
  nlohmann::json peers = nlohmann::json::array();
  std::size_t reachable = 1;  // ourselves
  for (std::size_t i = 0; i < register_config_.ranks.size(); ++i) {
    Rank rank = register_config_.ranks[i];
    if (rank == self_) continue;
    const NodeCoreEnv::PeerLinkStats link = env_->PeerStats(rank);
    if (link.connected) ++reachable;
    nlohmann::json p = {{"rank", rank},
                        {"connected", link.connected},
                        {"dropped", link.dropped},
                        {"tag_reads", register_config_.IsTagPeer(i)},
                        {"batches", batch_peers_[rank]},
                        {"reconnects", link.losses}};
    // null when unknown: never heard, no round trip measured, never down.
    p["last_heard_ms"] = link.heard_ago_ms >= 0 ? nlohmann::json(link.heard_ago_ms) : nullptr;
    p["rtt_ms"] =
        link.rtt_ms >= 0 ? nlohmann::json(std::round(link.rtt_ms * 1000) / 1000) : nullptr;
    p["down_reason"] =
        link.down_reason.empty() ? nlohmann::json(nullptr) : nlohmann::json(link.down_reason);
    peers.push_back(std::move(p));
  }
  j["peers"] = peers;
  // Whether this node's links reach a majority (QuorumReachable: itself counted while it
  // votes): without, it can coordinate nothing (the CLI's status exits 1).
  j["reachable_nodes"] = reachable;
  j["quorum_reachable"] = QuorumReachable();
  SyncStatus ss = syncer_->GetStatus(now);
  j["voting"] = ss.voting;
  j["state"] = ss.state;
  j["resync"] = {{"active", ss.resync.active},
                 {"join", ss.resync.join},
                 {"window", ss.resync.window},
                 {"windows", ss.resync.windows},
                 {"sectors_pulled", ss.resync.sectors_pulled},
                 {"bytes_pulled", ss.resync.bytes_pulled},
                 {"sectors_to_go", ss.resync.sectors_to_go},
                 {"bytes_per_s", ss.resync.bytes_per_s},
                 {"eta_s", ss.resync.eta_s},
                 {"passes_done", ss.resync.passes_done}};
  j["scrub"] = {{"active", ss.scrub.active},
                {"bucket", ss.scrub.bucket},
                {"buckets", ss.scrub.buckets},
                {"sectors_checked", ss.scrub.sectors_checked},
                {"corrupt", ss.scrub.corrupt},
                {"repaired", ss.scrub.repaired},
                {"unrepaired", ss.scrub.unrepaired},
                {"stale", ss.scrub.stale},
                {"runs_done", ss.scrub.runs_done},
                {"read_repairs", ss.scrub.read_repairs},
                {"read_repaired", ss.scrub.read_repaired},
                {"read_unrepaired", ss.scrub.read_unrepaired},
                {"pending_repairs", ss.scrub.pending_repairs}};
  j["sync_serve"] = {{"served", ss.serve.served},
                     {"deferred", ss.serve.deferred},
                     {"dropped", ss.serve.dropped},
                     {"queued", ss.serve.queued}};
  j["counters"] = {{"client_ops", counters_.client_ops},
                   {"reads", counters_.reads},
                   {"writes", counters_.writes},
                   {"auth_failures", counters_.auth_failures},
                   {"invalid_sector", counters_.invalid_sector},
                   {"bad_frames", counters_.bad_frames},
                   {"system_msgs", counters_.system_msgs},
                   {"sync_msgs", counters_.sync_msgs},
                   {"persist_errors", counters_.persist_errors},
                   {"unreadable_sectors", counters_.unreadable_sectors},
                   {"queued_ops", counters_.queued_ops},
                   {"unwanted_values", counters_.unwanted_values},
                   {"tags_from_cache", counters_.tags_from_cache},
                   {"registers_from_cached_tag", counters_.registers_from_cached_tag},
                   {"batches_sent", counters_.batches_sent},
                   {"batched_msgs", counters_.batched_msgs},
                   {"no_quorum_extents", counters_.no_quorum_extents}};
  std::string s = j.dump();
  if (s.size() > kMaxInfoSize)
    s = nlohmann::json{{"rank", self_}, {"version", options_.version}}.dump();
  return s;
}

std::size_t NodeCore::QueuedClientOps() const {
  std::size_t n = 0;
  for (const auto& [sector, slot] : registers_) n += slot.reg->QueuedClientOps();
  return n;
}

const Register* NodeCore::FindRegisterForChecks(SectorIdx sector) const {
  auto it = registers_.find(sector);
  return it == registers_.end() ? nullptr : it->second.reg.get();
}

void NodeCore::ForEachRegisterForChecks(
    const std::function<void(SectorIdx, const Register&)>& fn) const {
  for (const auto& [sector, slot] : registers_) fn(sector, *slot.reg);
}

void NodeCore::LogRateLimited(const std::string& kind, const std::string& message,
                              NodeCoreEnv::Level level) {
  std::int64_t now = env_->NowMs();
  auto [it, fresh] = log_limits_.try_emplace(kind, 0, 0);
  auto& [last, suppressed] = it->second;
  if (!fresh && now - last < 1000) {
    ++suppressed;
    return;
  }
  if (suppressed > 0) {
    env_->Log(level, message + " (" + std::to_string(suppressed) + " similar messages suppressed)");
  } else {
    env_->Log(level, message);
  }
  last = now;
  suppressed = 0;
}

}  // namespace atomdisk
