#include "daemon/node.h"

#include <openssl/rand.h>
#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>

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
           std::unique_ptr<SectorStore> store)
    : io_(io),
      config_(std::move(config)),
      self_(self),
      store_(std::move(store)),
      client_mac_(config_.client_key),
      system_mac_(config_.system_key),
      acceptor_(io),
      tick_timer_(io),
      started_(std::chrono::steady_clock::now()) {
  register_config_.self = self_;
  for (const auto& n : config_.nodes) register_config_.ranks.push_back(n.rank);
  ATOMDISK_CHECK(RAND_bytes(reinterpret_cast<unsigned char*>(&boot_nonce_), sizeof(boot_nonce_)) ==
                 1);
  for (const auto& n : config_.nodes) {
    if (n.rank == self_) continue;
    peers_.emplace(n.rank, std::make_unique<PeerLink>(io_, n.rank, n.host, n.port, this));
  }
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

void Node::Start() {
  asio::co_spawn(io_, AcceptLoop(), asio::detached);
  asio::co_spawn(io_, TickLoop(), asio::detached);
  for (auto& [rank, link] : peers_) link->Start();
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
  if (cmd->op == ClientOp::kInfo) {
    Respond(conn,
            ClientResponse{ResponseStatus::kOk, cmd->request_id, ClientOp::kInfo, {}, InfoJson()});
    return;
  }
  if (cmd->sector >= config_.sectors) {
    ++counters_.invalid_sector;
    Respond(conn,
            ClientResponse{ResponseStatus::kInvalidSectorIndex, cmd->request_id, cmd->op, {}, {}});
    return;
  }
  Register* reg = GetRegister(cmd->sector);
  if (!reg) return;  // unreadable here: stay silent, the client fails over to another node
  std::uint64_t token = next_token_++;
  client_ops_.emplace(token, ClientOpRef{conn.shared_from_this(), cmd->request_id, cmd->op});
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
  // on is still verified first. That saves a 4 KiB HMAC, a fifth of a read's.
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
  Register* reg = GetRegister(msg->sector);
  if (!reg) return;
  reg->OnMessage(*msg, NowMs());
}

Register* Node::GetRegister(SectorIdx sector) {
  auto it = registers_.find(sector);
  if (it != registers_.end()) {
    it->second.idle_at_last_tick = false;
    return it->second.reg.get();
  }
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
  it->second->Send(last_frame_);
}

void Node::Persist(SectorIdx sector, const Triple& value) {
  Tag tag = value.tag;
  store_->Write(sector, value, [this, sector, tag](Status status) {
    // On the store's sync thread: hand the completion back to the io thread.
    asio::post(io_, [this, sector, tag, status = std::move(status)]() {
      if (!status.ok()) {
        ++counters_.persist_errors;
        LogRateLimited("persist", "persisting sector " + std::to_string(sector) +
                                      " failed: " + status.ToString());
        if (store_->Failed() && on_fatal_) {
          auto fatal = std::move(on_fatal_);
          on_fatal_ = nullptr;
          fatal("the data file failed an fdatasync: " + status.message());
          return;
        }
      }
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
    peers.push_back(
        {{"rank", rank}, {"connected", link->connected()}, {"dropped", link->dropped()}});
  }
  j["peers"] = peers;
  j["counters"] = {{"client_ops", counters_.client_ops},
                   {"reads", counters_.reads},
                   {"writes", counters_.writes},
                   {"auth_failures", counters_.auth_failures},
                   {"invalid_sector", counters_.invalid_sector},
                   {"bad_frames", counters_.bad_frames},
                   {"system_msgs", counters_.system_msgs},
                   {"persist_errors", counters_.persist_errors},
                   {"unreadable_sectors", counters_.unreadable_sectors},
                   {"unwanted_values", counters_.unwanted_values}};
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
