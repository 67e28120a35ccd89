#include "daemon/net/node_server.h"

#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>

#include "common/build_info.h"
#include "common/hmac.h"
#include "common/sync_wire.h"

namespace atomdisk {

namespace asio = boost::asio;
using asio::ip::tcp;

namespace {
// How long an accepted connection may go without a frame whose tag verifies (client or
// system key). Every atomdisk program sends one at once (the client library its Info probe,
// a peer its Hello); an atdd client sends its first command. A stranger's connection is
// closed then, so idle strangers cannot hold buffers and descriptors (issue 17).
constexpr std::chrono::milliseconds kAuthTimeout{10000};
// How long a response may wait, queued, for the connection's reader to take it whole. A
// client that reads a little now and then (a slow-loris reader) is closed then, instead of
// holding its queued responses for as long as it trickles (issue 17 measured 363 MB pinned).
constexpr std::chrono::milliseconds kResponseDeadline{10000};

// config.max_connections, but never so many that accept would run out of descriptors first
// (64 are kept for the store, the peer links, the metrics endpoint and logs).
std::size_t MaxConnections(const ClusterConfig& config) {
  auto max = static_cast<std::size_t>(config.max_connections);
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) {
    const std::size_t fit = limit.rlim_cur > 128 ? limit.rlim_cur - 64 : 64;
    if (fit < max) {
      spdlog::warn(
          "max_connections {} is above what the descriptor limit ({}) allows: holding at most {} "
          "(raise LimitNOFILE / ulimit -n)",
          max, limit.rlim_cur, fit);
      max = fit;
    }
  }
  return max;
}

// IPv4 clients of a dual-stack listener show up as ::ffff:a.b.c.d; count them as a.b.c.d.
asio::ip::address Plain(const asio::ip::address& a) {
  if (a.is_v6() && a.to_v6().is_v4_mapped()) {
    return asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6());
  }
  return a;
}
}  // namespace

NodeServer::NodeServer(asio::io_context& io, ClusterConfig config, Rank self,
                       std::unique_ptr<SectorStore> store, NodeMembership membership)
    : io_(io),
      self_(self),
      data_dir_(membership.data_dir),
      system_mac_(config.system_key),
      config_(config),
      tls_mode_(config.tls),
      plaintext_clients_(config.tls != TlsMode::kRequire || config.plaintext_clients),
      acceptor_(io),
      tick_timer_(io),
      max_connections_(MaxConnections(config)),
      max_per_source_(
          std::min(max_connections_, static_cast<std::size_t>(config.max_connections_per_source))),
      max_queued_total_(static_cast<std::size_t>(config.max_queued_response_mb) << 20),
      peer_timeout_ms_(config.peer_timeout_ms) {
  for (const auto& n : config.nodes) {
    boost::system::error_code ec;
    auto literal = asio::ip::make_address(n.host, ec);
    if (!ec) {
      node_addresses_.push_back(Plain(literal));
      continue;
    }
    tcp::resolver resolver(io_);
    auto found = resolver.resolve(n.host, "", ec);
    if (ec) {
      spdlog::warn(
          "cannot resolve node {}'s host {} ({}): connections from it count against "
          "max_connections_per_source",
          n.rank, n.host, ec.message());
      continue;
    }
    for (const auto& e : found) node_addresses_.push_back(Plain(e.endpoint().address()));
  }
  for (const auto& n : config.nodes) {
    if (n.rank == self_) continue;
    auto link = std::make_unique<PeerLink>(io_, n.rank, n.host, n.port, this, peer_timeout_ms_);
    link->SetOnConnected([this, rank = n.rank] {
      if (core_) core_->OnPeerLinkUp(rank);
    });
    peers_.emplace(n.rank, std::move(link));
  }
  NodeCoreOptions options = NodeCoreOptions::FromConfig(config);
  options.boot_nonce = RandomU64();
  options.version = BuildVersion();
  options.revision = BuildRevision();
  core_ = std::make_unique<NodeCore>(std::move(config), self, std::move(store),
                                     std::move(membership), this, std::move(options));
}

NodeServer::~NodeServer() = default;

Status NodeServer::Listen() {
  const NodeConfig* me = core_->config().FindNode(self_);
  ATOMDISK_CHECK(me != nullptr);
  if (tls_mode_ != TlsMode::kOff && !tls_) {
    auto tls = TlsContext::ForNode(config_, self_);
    if (!tls.ok()) return Status::InvalidArgument(config_.path + ": " + tls.status().message());
    tls_ = *tls;
    for (auto& [rank, link] : peers_) link->SetTls(tls_, tls_mode_ == TlsMode::kAccept);
  }
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

std::uint16_t NodeServer::listen_port() const {
  boost::system::error_code ec;
  return acceptor_.local_endpoint(ec).port();
}

Status NodeServer::Start() {
  asio::co_spawn(io_, AcceptLoop(), asio::detached);
  asio::co_spawn(io_, TickLoop(), asio::detached);
  for (auto& [rank, link] : peers_) link->Start();
  core_->Start();
  return Status::Ok();
}

void NodeServer::Fatal(const std::string& why) {
  if (!on_fatal_) return;  // already on its way out
  auto fatal = std::move(on_fatal_);
  on_fatal_ = nullptr;
  fatal(why);
}

void NodeServer::Stop() {
  if (stopped_) return;
  stopped_ = true;
  boost::system::error_code ec;
  acceptor_.close(ec);
  tick_timer_.cancel();
  for (auto& [rank, link] : peers_) link->Stop();
  for (auto& a : accepted_) {
    if (auto conn = a.conn.lock()) conn->Close("");
  }
  accepted_.clear();
}

asio::awaitable<void> NodeServer::AcceptLoop() {
  while (!stopped_) {
    boost::system::error_code ec;
    tcp::socket socket =
        co_await acceptor_.async_accept(asio::redirect_error(asio::use_awaitable, ec));
    if (stopped_) co_return;
    if (ec) {
      core_->LogRateLimited("accept", "accept failed: " + ec.message());
      // Out of file descriptors and similar: back off instead of spinning.
      asio::steady_timer pause(io_, std::chrono::milliseconds(50));
      co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      continue;
    }
    std::string name;
    auto remote = socket.remote_endpoint(ec);
    if (ec) {  // reset before we looked: nothing to serve
      socket.close(ec);
      continue;
    }
    const asio::ip::address source = Plain(remote.address());
    name = source.to_string() + ":" + std::to_string(remote.port());
    if (std::string refused = MakeRoomForConnection(source); !refused.empty()) {
      core_->LogRateLimited("connlimit", "connection from " + name + " refused: " + refused);
      socket.close(ec);
      continue;
    }
    Connection::Options options;
    options.auth_timeout = kAuthTimeout;
    options.response_deadline = kResponseDeadline;
    options.on_queued_bytes = [this](std::int64_t delta) { QueuedBytesChanged(delta); };
    // At most one line a second, with a count of the rest: strangers opening and dropping
    // connections must not fill the disk with log lines (issue 17 measured 3.3 MB in 80 s).
    options.close_log = [this](const std::string& line) {
      core_->LogRateLimited("close", line, NodeCoreEnv::Level::kInfo);
    };
    if (tls_) {
      options.tls = tls_;
      options.tls_refusal_log = [this](const std::string& line) {
        core_->LogRateLimited("tlsrefused", line);
      };
      options.tls_admit = [this](const TlsPeer& peer) -> std::string {
        if (peer.identity.role == TlsIdentity::Role::kNode &&
            core_->config().FindNode(peer.identity.rank) == nullptr) {
          return "not a node of this cluster";
        }
        return "";
      };
    }
    auto conn = std::make_shared<Connection>(std::move(socket), this, name, std::move(options));
    conn->Start();
    accepted_.push_back({conn, source});
  }
}

std::string NodeServer::MakeRoomForConnection(const asio::ip::address& source) {
  std::erase_if(accepted_, [](const Accepted& a) {
    auto c = a.conn.lock();
    return !c || c->closed();
  });
  // The oldest open connection that has not shown a key (and matches `which`) is closed to
  // make room: a flood of strangers cannot lock out peers and clients, whose connections
  // authenticate within a round trip.
  auto evict = [&](auto which, const std::string& why) {
    for (auto it = accepted_.begin(); it != accepted_.end(); ++it) {
      auto c = it->conn.lock();
      if (c && !c->closed() && !c->authenticated() && which(*it)) {
        c->Close("evicted: " + why + " and none sent a frame with a valid tag");
        accepted_.erase(it);
        return true;
      }
    }
    return false;
  };
  const bool node =
      std::find(node_addresses_.begin(), node_addresses_.end(), source) != node_addresses_.end();
  if (!node) {
    const auto same = [&](const Accepted& a) { return a.source == source; };
    const auto from_source =
        static_cast<std::size_t>(std::count_if(accepted_.begin(), accepted_.end(), same));
    if (from_source >= max_per_source_) {
      const std::string why = std::to_string(from_source) + " connections open from " +
                              source.to_string() + " (max_connections_per_source)";
      if (!evict(same, why)) return why + ", every one authenticated";
    }
  }
  if (accepted_.size() < max_connections_) return "";
  const std::string why = std::to_string(max_connections_) + " connections open (max_connections)";
  if (!evict([](const Accepted&) { return true; }, why)) return why + ", every one authenticated";
  return "";
}

void NodeServer::QueuedBytesChanged(std::int64_t delta) {
  queued_total_ = static_cast<std::size_t>(static_cast<std::int64_t>(queued_total_) + delta);
  if (delta <= 0 || queued_total_ <= max_queued_total_) return;
  // Peers' links are not candidates: what they carry is small and their reader is a node.
  auto is_peer = [&](const Connection* c) {
    for (const auto& [rank, weak] : inbound_) {
      if (weak.lock().get() == c) return true;
    }
    return false;
  };
  std::shared_ptr<Connection> slowest;
  for (const auto& a : accepted_) {
    auto c = a.conn.lock();
    if (c && !c->closed() && c->queued_bytes() > 0 &&
        (!slowest || c->oldest_queued() < slowest->oldest_queued()) && !is_peer(c.get())) {
      slowest = c;
    }
  }
  if (!slowest) return;
  const auto waited_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::steady_clock::now() - slowest->oldest_queued())
                             .count();
  const std::string why = "the slowest reader: " + std::to_string(queued_total_ >> 20) +
                          " MiB of responses queued on this node (max_queued_response_mb), its "
                          "oldest for " +
                          std::to_string(waited_ms) + " ms";
  // Its own log key: routine closes share "close" and must not hide this one.
  core_->LogRateLimited("slowreader", "connection " + slowest->name() + " closed: " + why);
  slowest->set_log_close(false);
  slowest->Close(why);
}

asio::awaitable<void> NodeServer::TickLoop() {
  while (!stopped_) {
    boost::system::error_code ec;
    tick_timer_.expires_after(std::chrono::milliseconds(10));
    co_await tick_timer_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (stopped_) co_return;
    core_->Tick();
    const std::int64_t now_us = SteadyMicros();
    for (auto& [rank, link] : peers_) {
      link->MaybePing(now_us,
                      [this, tls = link->tls()](std::uint64_t id) { return PingFrame(id, tls); });
    }
  }
}

std::int64_t NodeServer::NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::uint64_t NodeServer::WallClockMicros() {
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(
                std::chrono::system_clock::now().time_since_epoch())
                .count();
  return us > 0 ? static_cast<std::uint64_t>(us) : 0;
}

void NodeServer::Post(std::function<void()> fn) { asio::post(io_, std::move(fn)); }

Status NodeServer::SaveIdentity(const Identity& identity) {
  return ::atomdisk::SaveIdentity(data_dir_, identity);
}

void NodeServer::Log(Level level, const std::string& line) {
  if (level == Level::kWarn) {
    spdlog::warn("{}", line);
  } else {
    spdlog::info("{}", line);
  }
}

bool NodeServer::PeerConnected(Rank peer) {
  auto it = peers_.find(peer);
  return it != peers_.end() && it->second->connected();
}

NodeCoreEnv::PeerLinkStats NodeServer::PeerStats(Rank peer) {
  auto it = peers_.find(peer);
  if (it == peers_.end()) return {};
  const PeerLink& link = *it->second;
  PeerLinkStats s;
  s.connected = link.connected();
  s.connects = link.connects();
  s.dropped = link.dropped();
  s.dropped_bytes = link.dropped_bytes();
  const PeerLiveness& live = link.liveness();
  const std::int64_t now_us = SteadyMicros();
  if (auto ago = live.heard_ago_us(now_us)) s.heard_ago_ms = *ago / 1000;
  if (auto rtt = live.rtt_us()) s.rtt_ms = static_cast<double>(*rtt) / 1000.0;
  s.losses = live.losses();
  if (!s.connected) s.down_reason = live.last_loss();
  return s;
}

void NodeServer::OnPeerFeatures(Rank peer, std::uint8_t features) {
  auto it = peers_.find(peer);
  if (it != peers_.end()) it->second->SetPeerFeatures(features);
}

SharedFrame NodeServer::PingFrame(std::uint64_t id, bool tls) {
  SyncMessage ping;
  ping.sender = self_;
  ping.kind = SyncKind::kPing;
  ping.request_id = id;
  return std::make_shared<const Frame>(EncodeFrame(ping, MacFor(system_mac_, tls)));
}

void NodeServer::HandlePing(Connection& conn, const SyncMessage& msg) {
  // The peer pings: it will keep this connection busy, so silence here means it is gone.
  // Set once per connection (SetSilenceTimeout ignores the same value again).
  conn.SetSilenceTimeout(std::chrono::milliseconds(peer_timeout_ms_));
  conn.set_log_close(false);  // our own link to the peer logs the loss
  conn.SetPeerSocketOptions(std::chrono::milliseconds(peer_timeout_ms_));
  SyncMessage pong;
  pong.sender = self_;
  pong.kind = SyncKind::kPong;
  pong.request_id = msg.request_id;
  conn.Send(std::make_shared<const Frame>(
      EncodeFrame(pong, MacFor(system_mac_, conn.tls_peer() != nullptr))));
}

void NodeServer::HandlePong(const SyncMessage& msg) {
  auto it = peers_.find(msg.sender);
  if (it == peers_.end()) return;
  auto rtt_us = it->second->OnPong(msg.request_id, SteadyMicros());
  if (rtt_us && metrics_) {
    metrics_->PeerRoundTrip(msg.sender, static_cast<double>(*rtt_us) / 1e6);
  }
}

void NodeServer::OnFrame(Connection& conn, std::span<const std::uint8_t> body) {
  auto payload = body.first(body.size() - kMacSize);
  auto kind = PeekCommandKind(payload);
  if (!kind.ok()) {
    core_->CountBadFrame();
    conn.Close(kind.status().message());
    return;
  }
  if (std::string why = RefuseFrame(conn, *kind, 0); !why.empty()) {
    Refuse(conn, why);
    return;
  }
  if (*kind == CommandKind::kClient) {
    core_->OnClientFrame(conn, body);
  } else if (*kind == CommandKind::kSync) {
    HandleSync(conn, body);
  } else if (*kind == CommandKind::kSystemBatch) {
    HandleSystemBatch(conn, body);
  } else {
    HandleSystem(conn, body);
  }
}

std::string NodeServer::RefuseFrame(const Connection& conn, CommandKind kind, Rank sender) const {
  const TlsPeer* peer = conn.tls_peer();
  if (kind == CommandKind::kClient) {
    if (peer != nullptr) {
      return peer->identity.role == TlsIdentity::Role::kClient
                 ? ""
                 : "a node's certificate (" + peer->identity.ToString() + ") sent a client command";
    }
    return plaintext_clients_ ? "" : "client commands in clear are off (plaintext_clients = false)";
  }
  if (peer == nullptr) {
    return tls_mode_ == TlsMode::kRequire ? "system frames in clear are refused (tls = \"require\")"
                                          : "";
  }
  if (peer->identity.role != TlsIdentity::Role::kNode) {
    return "a client certificate (" + peer->identity.ToString() + ") sent a system frame";
  }
  if (sender != 0 && sender != peer->identity.rank) {
    return "node " + std::to_string(peer->identity.rank) + "'s certificate sent a frame as node " +
           std::to_string(sender);
  }
  return "";
}

void NodeServer::Refuse(Connection& conn, const std::string& why) {
  core_->CountAuthFailure();
  core_->LogRateLimited("refused", "connection " + conn.name() + " closed: " + why);
  conn.set_log_close(false);
  conn.Close(why);
}

void NodeServer::HandleSystem(Connection& conn, std::span<const std::uint8_t> body) {
  // Decoded before its tag is checked, only to drop early the Values no operation waits for
  // any more (the last peer's answer to a quorum that was complete without it: one of the
  // two Values of every read and write here). The register would ignore them anyway, and
  // dropping a frame unchecked is no more than an attacker on the path could do: what it acts
  // on is still verified first. That saves a 4 KiB HMAC, a fifth of a read's. (ReadTag and
  // Tag, docs/PROTOCOL.md, carry no data: they go through like ReadProc and Ack.)
  auto msg = DecodeSystemMessage(body.first(body.size() - kMacSize));
  if (msg.ok() && msg->content == SystemContent::kValue && !core_->WantsValue(*msg)) return;
  if (!VerifySystemFrame(conn, body, "system frame")) return;
  if (!msg.ok()) {
    core_->CountBadFrame();
    conn.Close(msg.status().message());
    return;
  }
  if (std::string why = RefuseFrame(conn, CommandKind::kSystem, msg->sender); !why.empty()) {
    Refuse(conn, why);
    return;
  }
  if (core_->OnSystemMessage(*msg)) {
    NoteInbound(msg->sender, conn);
    NoteHeard(msg->sender);
  }
}

std::optional<std::span<const std::uint8_t>> NodeServer::VerifySystemFrame(
    Connection& conn, std::span<const std::uint8_t> body, const char* what) {
  auto payload = VerifyFrameBodyOn(body, system_mac_, conn.tls_peer() != nullptr);
  if (payload.ok()) {
    conn.MarkAuthenticated();
    return *payload;
  }
  core_->CountAuthFailure();
  core_->LogRateLimited(
      "sysauth", std::string(what) + " with a bad HMAC tag from " + conn.name() + " dropped");
  return std::nullopt;
}

void NodeServer::HandleSystemBatch(Connection& conn, std::span<const std::uint8_t> body) {
  // One tag for the whole batch (docs/PROTOCOL.md, "Extension: system batches"): checked
  // before any member is decoded; then every member goes to the core as if it had come alone.
  auto payload = VerifySystemFrame(conn, body, "system batch");
  if (!payload) return;
  auto msgs = DecodeSystemBatch(*payload);
  if (!msgs.ok()) {
    core_->CountBadFrame();
    conn.Close(msgs.status().message());
    return;
  }
  if (std::string why = RefuseFrame(conn, CommandKind::kSystemBatch, msgs->front().sender);
      !why.empty()) {
    Refuse(conn, why);
    return;
  }
  bool accepted = false;  // the decoder guarantees one sender for all members
  for (const SystemMessage& msg : *msgs) accepted = core_->OnSystemMessage(msg) || accepted;
  if (accepted) {
    NoteInbound(msgs->front().sender, conn);
    NoteHeard(msgs->front().sender);
  }
}

void NodeServer::HandleSync(Connection& conn, std::span<const std::uint8_t> body) {
  auto payload = VerifySystemFrame(conn, body, "system frame");
  if (!payload) return;
  auto msg = DecodeSyncMessage(*payload);
  if (!msg.ok()) {
    core_->CountBadFrame();
    conn.Close(msg.status().message());
    return;
  }
  if (std::string why = RefuseFrame(conn, CommandKind::kSync, msg->sender); !why.empty()) {
    Refuse(conn, why);
    return;
  }
  if (msg->kind == SyncKind::kPing || msg->kind == SyncKind::kPong) {
    // Transport traffic: the core never sees it. Only a cluster member's counts.
    auto peer = peers_.find(msg->sender);
    if (peer == peers_.end()) {
      core_->LogRateLimited("pingsender", "heartbeat from unknown rank " +
                                              std::to_string(msg->sender) + " on " + conn.name() +
                                              " dropped");
      return;
    }
    peer->second->NoteHeard(SteadyMicros());
    if (msg->kind == SyncKind::kPing) {
      HandlePing(conn, *msg);
    } else {
      HandlePong(*msg);
    }
    return;
  }
  if (core_->OnSyncMessage(*msg)) {
    NoteInbound(msg->sender, conn);
    NoteHeard(msg->sender);
  }
}

void NodeServer::SendSystem(Rank to, const SystemMessage& msg) {
  if ((!last_frame_ && !last_tls_frame_) || !SameSystemMessage(msg, last_msg_)) {
    last_msg_ = msg;
    last_frame_.reset();
    last_tls_frame_.reset();
  }
  const bool tls = TlsTo(to);
  SharedFrame& frame = tls ? last_tls_frame_ : last_frame_;
  if (!frame) frame = std::make_shared<const Frame>(EncodeFrame(msg, MacFor(system_mac_, tls)));
  SendToPeer(to, frame);
}

void NodeServer::SendSystemBatch(std::span<const Rank> to, std::span<const SystemMessage> msgs) {
  SharedFrame sealed, zero;  // each made once, for the peers that need it
  for (Rank r : to) {
    const bool tls = TlsTo(r);
    SharedFrame& frame = tls ? zero : sealed;
    if (!frame) {
      frame = std::make_shared<const Frame>(EncodeBatchFrame(msgs, MacFor(system_mac_, tls)));
    }
    SendToPeer(r, frame);
  }
}

bool NodeServer::TlsTo(Rank to) {
  auto it = peers_.find(to);
  if (it == peers_.end()) return false;
  if (it->second->connected()) return it->second->tls();
  auto in = inbound_.find(to);
  if (in == inbound_.end()) return false;
  auto conn = in->second.lock();
  return conn && !conn->closed() && conn->tls_peer() != nullptr;
}

void NodeServer::RequestFlush() {
  // After the handlers already queued (the rest of this batch of reads and completions), so
  // that what they send joins the same frames.
  asio::post(io_, [this] { core_->FlushOutbox(); });
}

void NodeServer::SendSync(Rank to, const SyncMessage& msg) {
  SendToPeer(to, std::make_shared<const Frame>(EncodeFrame(msg, MacFor(system_mac_, TlsTo(to)))));
}

void NodeServer::SendToPeer(Rank to, SharedFrame frame) {
  auto it = peers_.find(to);
  if (it == peers_.end()) return;
  if (it->second->connected()) {
    it->second->Send(std::move(frame));
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

void NodeServer::NoteHeard(Rank from) {
  auto it = peers_.find(from);
  if (it != peers_.end()) it->second->NoteHeard(SteadyMicros());
}

void NodeServer::NoteInbound(Rank from, Connection& conn) {
  auto& slot = inbound_[from];
  if (slot.lock().get() != &conn) slot = conn.weak_from_this();
}

}  // namespace atomdisk
