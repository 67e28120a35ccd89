#include "daemon/node.h"

#include <openssl/rand.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>

#include "common/sync_wire.h"
#include "daemon/version.h"

namespace atomdisk {

namespace asio = boost::asio;
using asio::ip::tcp;

namespace {
bool SameMessage(const SystemMessage& a, const SystemMessage& b) {
  return a.sender == b.sender && a.op_id == b.op_id && a.sector == b.sector &&
         a.content == b.content && a.tag == b.tag && a.data == b.data;
}
}  // namespace

Node::Node(asio::io_context& io, ClusterConfig config, Rank self,
           std::unique_ptr<SectorStore> store, NodeMembership membership)
    : io_(io),
      config_(std::move(config)),
      self_(self),
      store_(std::move(store)),
      membership_(std::move(membership)),
      client_mac_(config_.client_key),
      system_mac_(config_.system_key),
      acceptor_(io),
      tick_timer_(io),
      started_(std::chrono::steady_clock::now()) {
  register_config_.self = self_;
  for (const auto& n : config_.nodes) register_config_.ranks.push_back(n.rank);
  // ReadProc to everyone until a peer's HelloReply says it understands ReadTag.
  register_config_.tag_peers.assign(register_config_.ranks.size(), false);
  register_config_.thrifty_collect = true;  // asks only a quorum's worth of responsive peers
  ATOMDISK_CHECK(RAND_bytes(reinterpret_cast<unsigned char*>(&boot_nonce_), sizeof(boot_nonce_)) ==
                 1);
  for (const auto& n : config_.nodes) {
    if (n.rank == self_) continue;
    peers_.emplace(n.rank, std::make_unique<PeerLink>(io_, n.rank, n.host, n.port, this));
  }
  SyncerOptions so;
  so.self = self_;
  so.ranks = register_config_.ranks;
  so.sectors = config_.sectors;
  so.cluster_id = config_.ClusterId();
  so.rate_bytes_per_s = config_.resync_rate_mb * 1e6;
  so.resync_interval_ms = config_.resync_interval_s * 1000;
  so.scrub_interval_ms = config_.scrub_interval_s * 1000;
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

Node::~Node() {
  if (store_) store_->Close();
}

Status Node::Listen() {
  const NodeConfig* me = config_.FindNode(self_);
  ATOMDISK_CHECK(me != nullptr);
  boost::system::error_code ec;
  tcp::resolver resolver(io_);
  auto results = resolver.resolve(me->host, std::to_string(me->port), ec);
  if (ec || results.empty()) {
    return Status::IOError("cannot resolve listen address " + me->Address() + ": " + ec.message());
  }
  tcp::endpoint ep = results.begin()->endpoint();
  acceptor_.open(ep.protocol(), ec);
  if (!ec) acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor_.bind(ep, ec);
  if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return Status::IOError("cannot listen on " + me->Address() + ": " + ec.message());
  return Status::Ok();
}

std::uint16_t Node::listen_port() const {
  boost::system::error_code ec;
  return acceptor_.local_endpoint(ec).port();
}

Status Node::Start() {
  asio::co_spawn(io_, AcceptLoop(), asio::detached);
  asio::co_spawn(io_, TickLoop(), asio::detached);
  for (auto& [rank, link] : peers_) link->Start();
  // The Syncer starts at the first tick at which every peer link is up, or 500 ms from now:
  // its first Hellos and Digests then reach the peers instead of being dropped by links
  // still connecting (and waiting for a retry).
  sync_start_deadline_ms_ = NowMs() + 500;
  return Status::Ok();
}

void Node::MaybeStartSyncer(std::int64_t now) {
  if (sync_started_) return;
  bool all_up = true;
  for (const auto& [rank, link] : peers_) all_up = all_up && link->connected();
  if (!all_up && now < sync_start_deadline_ms_) return;
  sync_started_ = true;
  Status s = syncer_->Start(now);
  if (!s.ok()) Fatal("cannot start: " + s.ToString());
}

void Node::Fatal(const std::string& why) {
  if (!on_fatal_) return;  // already on its way out
  auto fatal = std::move(on_fatal_);
  on_fatal_ = nullptr;
  fatal(why);
}

bool Node::StopIfStoreFailed(const Status& status) {
  if (status.ok() || !store_->Failed() || !on_fatal_) return false;
  Fatal("the data file failed an fdatasync: " + status.message());
  return true;
}

void Node::Stop() {
  if (stopped_) return;
  stopped_ = true;
  boost::system::error_code ec;
  acceptor_.close(ec);
  tick_timer_.cancel();
  for (auto& [rank, link] : peers_) link->Stop();
  for (auto& weak : accepted_) {
    if (auto conn = weak.lock()) conn->Close("");
  }
  accepted_.clear();
}

asio::awaitable<void> Node::AcceptLoop() {
  while (!stopped_) {
    boost::system::error_code ec;
    tcp::socket socket =
        co_await acceptor_.async_accept(asio::redirect_error(asio::use_awaitable, ec));
    if (stopped_) co_return;
    if (ec) {
      LogRateLimited("accept", "accept failed: " + ec.message());
      // Out of file descriptors and similar: back off instead of spinning.
      asio::steady_timer pause(io_, std::chrono::milliseconds(50));
      co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      continue;
    }
    std::string name;
    auto remote = socket.remote_endpoint(ec);
    name = ec ? "?" : remote.address().to_string() + ":" + std::to_string(remote.port());
    auto conn = std::make_shared<Connection>(std::move(socket), this, name, Connection::Options{});
    conn->Start();
    std::erase_if(accepted_, [](const std::weak_ptr<Connection>& w) { return w.expired(); });
    accepted_.push_back(conn);
  }
}

asio::awaitable<void> Node::TickLoop() {
  std::vector<SectorIdx> idle;
  while (!stopped_) {
    boost::system::error_code ec;
    tick_timer_.expires_after(std::chrono::milliseconds(10));
    co_await tick_timer_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (stopped_) co_return;
    std::int64_t now = NowMs();
    idle.clear();
    for (auto& [sector, slot] : registers_) {
      slot.reg->Tick(now);
      bool idle_now = slot.reg->Idle();
      if (idle_now && slot.idle_at_last_tick) idle.push_back(sector);
      slot.idle_at_last_tick = idle_now;
    }
    for (SectorIdx s : idle) registers_.erase(s);
    MaybeStartSyncer(now);
    if (sync_started_) syncer_->Tick(now);
    PublishMetrics(now);
  }
}

std::int64_t Node::NowMs() const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void Node::OnFrame(Connection& conn, std::span<const std::uint8_t> body) {
  auto payload = body.first(body.size() - kMacSize);
  auto kind = PeekCommandKind(payload);
  if (!kind.ok()) {
    ++counters_.bad_frames;
    conn.Close(kind.status().message());
    return;
  }
  if (*kind == CommandKind::kClient) {
    HandleClient(conn, body);
  } else if (*kind == CommandKind::kSync) {
    HandleSync(conn, body);
  } else {
    HandleSystem(conn, body);
  }
}

void Node::Respond(Connection& conn, const ClientResponse& resp) {
  conn.Send(std::make_shared<const Frame>(EncodeFrame(resp, client_mac_)));
}

void Node::HandleClient(Connection& conn, std::span<const std::uint8_t> body) {
  auto payload = VerifyFrameBody(body, client_mac_);
  if (!payload.ok()) {
    ++counters_.auth_failures;
    auto header = DecodeClientCommandHeader(body.first(body.size() - kMacSize));
    if (!header.ok()) {
      ++counters_.bad_frames;
      conn.Close("unauthenticated and malformed client frame");
      return;
    }
    LogRateLimited("auth", "client " + conn.name() + ": command with a bad HMAC tag");
    Respond(conn,
            ClientResponse{ResponseStatus::kAuthFailure, header->request_id, header->op, {}, {}});
    return;
  }
  auto cmd = DecodeClientCommand(*payload);
  if (!cmd.ok()) {
    ++counters_.bad_frames;
    conn.Close(cmd.status().message());
    return;
  }
  ++counters_.client_ops;
  const auto arrived = std::chrono::steady_clock::now();
  if (metrics_ && HasJsonResponse(cmd->op)) metrics_->AdminRequest(cmd->op);
  if (cmd->op == ClientOp::kInfo) {
    Respond(conn,
            ClientResponse{ResponseStatus::kOk, cmd->request_id, ClientOp::kInfo, {}, InfoJson()});
    return;
  }
  if (cmd->op == ClientOp::kScrub) {
    Status started = sync_started_ ? syncer_->StartScrub(NowMs())
                                   : Status::Unavailable("the node is starting; try again");
    nlohmann::json j = {{"started", started.ok()}};
    if (!started.ok()) j["error"] = started.message();
    spdlog::info("scrub requested by {}: {}", conn.name(),
                 started.ok() ? "started" : started.message());
    Respond(conn,
            ClientResponse{ResponseStatus::kOk, cmd->request_id, ClientOp::kScrub, {}, j.dump()});
    return;
  }
  if (cmd->sector >= config_.sectors) {
    ++counters_.invalid_sector;
    if (metrics_) metrics_->ClientRequest(cmd->op, NodeMetrics::Outcome::kInvalidSector, arrived);
    Respond(conn,
            ClientResponse{ResponseStatus::kInvalidSectorIndex, cmd->request_id, cmd->op, {}, {}});
    return;
  }
  Register* reg = GetRegister(cmd->sector);
  if (!reg) {  // unreadable here: stay silent, the client fails over to another node
    if (metrics_) metrics_->ClientRequest(cmd->op, NodeMetrics::Outcome::kUnreadable, arrived);
    return;
  }
  std::uint64_t token = next_token_++;
  client_ops_.emplace(token,
                      ClientOpRef{conn.shared_from_this(), cmd->request_id, cmd->op, arrived});
  conn.OpStarted();
  if (cmd->op == ClientOp::kWrite) {
    ++counters_.writes;
    reg->StartWrite(token, std::move(cmd->data), NowMs());
  } else {
    ++counters_.reads;
    reg->StartRead(token, NowMs());
  }
}

void Node::HandleSystem(Connection& conn, std::span<const std::uint8_t> body) {
  // Decoded before its tag is checked, only to drop early the Values no operation waits for
  // any more (the last peer's answer to a quorum that was complete without it: one of the
  // two Values of every read and write here). The register would ignore them anyway, and
  // dropping a frame unchecked is no more than an attacker on the path could do: what it acts
  // on is still verified first. That saves a 4 KiB HMAC, a fifth of a read's. (ReadTag and
  // Tag, docs/PROTOCOL.md, carry no data: they go through like ReadProc and Ack.)
  auto msg = DecodeSystemMessage(body.first(body.size() - kMacSize));
  if (msg.ok() && msg->content == SystemContent::kValue) {
    auto it = registers_.find(msg->sector);
    if (it == registers_.end() || !it->second.reg->WantsValue(*msg)) {
      ++counters_.unwanted_values;
      return;
    }
  }
  if (!VerifyFrameBody(body, system_mac_).ok()) {
    ++counters_.auth_failures;
    LogRateLimited("sysauth", "system frame with a bad HMAC tag from " + conn.name() + " dropped");
    return;
  }
  if (!msg.ok()) {
    ++counters_.bad_frames;
    conn.Close(msg.status().message());
    return;
  }
  ++counters_.system_msgs;
  if (msg->sender == self_ || !config_.FindNode(msg->sender)) {
    LogRateLimited("sender", "system message from unknown rank " +
                                 std::to_string(static_cast<int>(msg->sender)) + " dropped");
    return;
  }
  if (msg->sector >= config_.sectors) {
    LogRateLimited("syssector", "system message for sector " + std::to_string(msg->sector) +
                                    " beyond the device dropped");
    return;
  }
  NoteInbound(msg->sender, conn);
  if (msg->content == SystemContent::kValue || msg->content == SystemContent::kTag ||
      msg->content == SystemContent::kAck) {
    // Only answers count for PeerResponsive: a joining peer sends Hellos, ReadProcs and
    // WriteProcs but answers no collect, and must not be picked as the one peer to ask.
    heard_ms_[msg->sender] = NowMs();
  }
  if (msg->content == SystemContent::kReadTag && AnswerReadTagFromCache(*msg)) return;
  Register* reg = GetRegister(msg->sector);
  if (!reg) return;
  reg->OnMessage(*msg, NowMs());
}

bool Node::AnswerReadTagFromCache(const SystemMessage& msg) {
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
  Send(msg.sender, reply);
  ++counters_.tags_from_cache;
  return true;
}

bool Node::PeerResponsive(Rank peer) {
  // Answered us within the last few ms: under load every peer answers many times a ms, so a
  // quorum's worth of asks suffices; a peer gone quiet (dead, partitioned, or an idle
  // cluster) is asked with everyone else until it is heard again.
  constexpr std::int64_t kResponsiveWindowMs = 20;
  auto it = peers_.find(peer);
  if (it == peers_.end() || !it->second->connected()) return false;
  return NowMs() - heard_ms_[peer] <= kResponsiveWindowMs;
}

void Node::HandleSync(Connection& conn, std::span<const std::uint8_t> body) {
  auto payload = VerifyFrameBody(body, system_mac_);
  if (!payload.ok()) {
    ++counters_.auth_failures;
    LogRateLimited("sysauth", "system frame with a bad HMAC tag from " + conn.name() + " dropped");
    return;
  }
  auto msg = DecodeSyncMessage(*payload);
  if (!msg.ok()) {
    ++counters_.bad_frames;
    conn.Close(msg.status().message());
    return;
  }
  ++counters_.sync_msgs;
  if (msg->sender == self_ || !config_.FindNode(msg->sender)) {
    LogRateLimited("sender", "sync message from unknown rank " +
                                 std::to_string(static_cast<int>(msg->sender)) + " dropped");
    return;
  }
  NoteInbound(msg->sender, conn);
  if (!sync_started_) return;  // a few ms after start-up: the peer asks again
  syncer_->OnMessage(*msg, NowMs());
}

Register* Node::GetRegister(SectorIdx sector) {
  auto it = registers_.find(sector);
  if (it != registers_.end()) {
    it->second.idle_at_last_tick = false;
    return it->second.reg.get();
  }
  if (direct_absorbs_.count(sector)) return nullptr;  // being repaired: not durable yet
  auto stored = store_->Read(sector);
  if (!stored.ok()) {
    ++counters_.unreadable_sectors;
    LogRateLimited("read", "sector " + std::to_string(sector) +
                               " unreadable, not answering for it: " + stored.status().ToString());
    return nullptr;
  }
  auto reg = std::make_unique<Register>(sector, std::move(stored).value(), &register_config_, this);
  Register* raw = reg.get();
  registers_.emplace(sector, RegisterSlot{std::move(reg), false});
  return raw;
}

void Node::Send(Rank to, const SystemMessage& msg) {
  auto it = peers_.find(to);
  if (it == peers_.end()) return;
  if (!last_frame_ || !SameMessage(msg, last_msg_)) {
    last_msg_ = msg;
    last_frame_ = std::make_shared<const Frame>(EncodeFrame(msg, system_mac_));
  }
  SendToPeer(to, *it->second, last_frame_);
}

void Node::SendToPeer(Rank to, PeerLink& link, SharedFrame frame) {
  if (link.connected()) {
    link.Send(std::move(frame));
    return;
  }
  // Our link to a peer that just restarted may sit in its reconnect back-off for up to a
  // second, while the peer's own link to us is up: answer on that one meanwhile.
  auto in = inbound_.find(to);
  if (in == inbound_.end()) return;
  auto conn = in->second.lock();
  if (!conn || conn->closed()) {
    inbound_.erase(in);
    return;
  }
  conn->Send(std::move(frame));
}

void Node::NoteInbound(Rank from, Connection& conn) {
  auto& slot = inbound_[from];
  if (slot.lock().get() != &conn) slot = conn.weak_from_this();
}

void Node::Persist(SectorIdx sector, const Triple& value) {
  syncer_->OnLocalWrite(sector);
  Tag tag = value.tag;
  const auto persist_start = std::chrono::steady_clock::now();
  store_->Write(sector, value, [this, sector, tag, persist_start](Status status) {
    if (metrics_) metrics_->StoreWrite(persist_start);
    // On the store's sync thread: hand the completion back to the io thread.
    asio::post(io_, [this, sector, tag, status = std::move(status)]() {
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
      it->second.reg->OnPersisted(tag, status, NowMs());
    });
  });
}

void Node::Complete(std::uint64_t token, SectorPtr data) {
  auto it = client_ops_.find(token);
  if (it == client_ops_.end()) return;
  ClientOpRef ref = std::move(it->second);
  client_ops_.erase(it);
  auto conn = ref.conn.lock();
  const bool gone = !conn || conn->closed();
  if (metrics_) {
    metrics_->ClientRequest(
        ref.op, gone ? NodeMetrics::Outcome::kClientGone : NodeMetrics::Outcome::kOk, ref.started);
  }
  if (!conn) return;  // the client went away; the operation still completed
  conn->OpFinished();
  if (conn->closed()) return;
  Respond(*conn, ClientResponse{ResponseStatus::kOk, ref.request_id, ref.op, std::move(data), {}});
}

Uuid Node::NewOpId() {
  Uuid id;
  std::uint64_t counter = ++op_counter_;
  std::memcpy(id.bytes.data(), &boot_nonce_, 8);
  std::memcpy(id.bytes.data() + 8, &counter, 8);
  return id;
}

void Node::SendSync(Rank to, const SyncMessage& msg) {
  auto it = peers_.find(to);
  if (it == peers_.end()) return;
  SendToPeer(to, *it->second, std::make_shared<const Frame>(EncodeFrame(msg, system_mac_)));
}

// The store also reports values still on their way to the disk. A pending value lives in its
// sector's register until it is durable, so the register says what each view sees: its
// durable triple (kDurable), or Register::Served (kServed; docs/RESYNC.md, "What resync sees").
Status Node::ScanTags(SectorIdx first, std::uint64_t count, bool verify_all, TagView view,
                      const std::function<void(SectorIdx, Tag, bool ok)>& fn) {
  return store_->ScanRange(first, count, verify_all, [&](SectorIdx sector, Tag tag, bool ok) {
    auto it = registers_.find(sector);
    if (it == registers_.end()) return fn(sector, tag, ok);
    const Register& reg = *it->second.reg;
    fn(sector, view == TagView::kServed ? reg.Served().tag : reg.durable().tag, ok);
  });
}

void Node::ForEachServedAhead(const std::function<void(SectorIdx)>& fn) {
  for (const auto& [sector, slot] : registers_) {
    if (slot.reg->Served().tag > slot.reg->durable().tag) fn(sector);
  }
}

Result<Triple> Node::ReadSector(SectorIdx sector) {
  auto it = registers_.find(sector);
  if (it != registers_.end()) return it->second.reg->Served();
  if (direct_absorbs_.count(sector)) {
    return Status::Unavailable("sector " + std::to_string(sector) + " is being repaired");
  }
  return store_->Read(sector);
}

void Node::Absorb(SectorIdx sector, const Triple& value, std::uint64_t token) {
  // Through the sector's register, built if needed, which then holds the value as stored but
  // not durable until the store says so (a register built from the store meanwhile would take
  // the pending value for a durable one and could report it in a Value). The store write
  // below writes nothing more; it reports when this value, or a newer one, is durable.
  // A sector whose copy is unreadable (scrub repairs it) has no register: the store takes
  // the value directly, and no register is built for the sector until it is durable.
  syncer_->OnLocalWrite(sector);
  Register* reg = direct_absorbs_.count(sector) ? nullptr : GetRegister(sector);
  bool direct = reg == nullptr;
  if (reg) {
    reg->Absorb(value);
  } else {
    ++direct_absorbs_[sector];
  }
  store_->Write(sector, value, [this, token, sector, direct](Status status) {
    asio::post(io_, [this, token, sector, direct, status = std::move(status)]() {
      if (direct) {
        auto d = direct_absorbs_.find(sector);
        if (d != direct_absorbs_.end() && --d->second == 0) direct_absorbs_.erase(d);
      }
      if (StopIfStoreFailed(status)) return;
      syncer_->OnAbsorbed(token, status, NowMs());
    });
  });
}

Status Node::SaveIdentity(const Identity& identity) {
  return ::atomdisk::SaveIdentity(membership_.data_dir, identity);
}

void Node::SetVoting(bool voting) {
  if (voting != register_config_.votes) {
    spdlog::info("{}", voting ? "voting: answering as a quorum member"
                              : "not voting until caught up (docs/RESYNC.md)");
  }
  register_config_.votes = voting;
  if (voting) {
    for (auto& [sector, slot] : registers_) slot.reg->OnVotesChanged(NowMs());
  }
}

void Node::Note(const std::string& line) { spdlog::info("{}", line); }

std::uint64_t Node::WallClockMicros() {
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(
                std::chrono::system_clock::now().time_since_epoch())
                .count();
  return us > 0 ? static_cast<std::uint64_t>(us) : 0;
}

void Node::SetWriteTsFloor(std::uint64_t floor) {
  if (floor != register_config_.min_write_ts) {
    spdlog::info(
        "own writes use ts >= {} (write ts floor after a disk replacement, "
        "docs/RESYNC.md)",
        floor);
  }
  register_config_.min_write_ts = floor;
}

void Node::SetWriteTsLease(std::uint64_t lease) { register_config_.write_ts_lease = lease; }

void Node::SetPeerFeatures(Rank peer, std::uint8_t features) {
  auto it = std::find(register_config_.ranks.begin(), register_config_.ranks.end(), peer);
  if (it == register_config_.ranks.end() || peer == self_) return;
  std::size_t i = static_cast<std::size_t>(it - register_config_.ranks.begin());
  bool tag_reads = (features & kFeatureTagReads) != 0;
  if (register_config_.tag_peers[i] != tag_reads) {
    spdlog::info("peer {} {} tag-only reads (HelloReply features {:#04x})", peer,
                 tag_reads ? "answers" : "no longer answers", features);
  }
  register_config_.tag_peers[i] = tag_reads;
}

void Node::WantWriteTsLease(std::uint64_t ts) {
  if (sync_started_) syncer_->RaiseWriteTsLease(ts);
}

std::string Node::InfoJson() const {
  nlohmann::json j;
  j["rank"] = self_;
  j["version"] = kAtomdiskVersion;
  j["sectors"] = config_.sectors;
  j["nodes"] = config_.nodes.size();
  j["uptime_s"] =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - started_)
          .count();
  j["active_registers"] = registers_.size();
  j["ops_in_flight"] = client_ops_.size();
  nlohmann::json peers = nlohmann::json::array();
  for (const auto& [rank, link] : peers_) {
    auto r = std::find(register_config_.ranks.begin(), register_config_.ranks.end(), rank);
    std::size_t i = static_cast<std::size_t>(r - register_config_.ranks.begin());
    peers.push_back({{"rank", rank},
                     {"connected", link->connected()},
                     {"dropped", link->dropped()},
                     {"tag_reads", register_config_.IsTagPeer(i)}});
  }
  j["peers"] = peers;
  SyncStatus ss = syncer_->GetStatus(NowMs());
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
  j["scrub"] = {{"active", ss.scrub.active},         {"bucket", ss.scrub.bucket},
                {"buckets", ss.scrub.buckets},       {"sectors_checked", ss.scrub.sectors_checked},
                {"corrupt", ss.scrub.corrupt},       {"repaired", ss.scrub.repaired},
                {"unrepaired", ss.scrub.unrepaired}, {"stale", ss.scrub.stale},
                {"runs_done", ss.scrub.runs_done}};
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
                   {"unwanted_values", counters_.unwanted_values},
                   {"tags_from_cache", counters_.tags_from_cache}};
  std::string s = j.dump();
  if (s.size() > kMaxInfoSize)
    s = nlohmann::json{{"rank", self_}, {"version", kAtomdiskVersion}}.dump();
  return s;
}

void Node::LogRateLimited(const std::string& kind, const std::string& message) {
  auto now = std::chrono::steady_clock::now();
  auto& [last, suppressed] = log_limits_[kind];
  if (now - last < std::chrono::seconds(1)) {
    ++suppressed;
    return;
  }
  if (suppressed > 0) {
    spdlog::warn("{} ({} similar messages suppressed)", message, suppressed);
  } else {
    spdlog::warn("{}", message);
  }
  last = now;
  suppressed = 0;
}

}  // namespace atomdisk
