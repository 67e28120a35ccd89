// The client library's Asio adapter: one io_context thread, one connection loop per node
// (resolve, connect, reader + writer coroutines, reconnect after the delay the core gives), a
// 10 ms tick, and the public API's hand-off to that thread. What the client decides (which
// node, retries, failover, extents, deadlines) is in ClientCore (client/core/client_core.h),
// which the simulator runs too. Everything below ClientImpl's public methods runs on the io
// thread only, so it needs no locks; the public methods post to it.
#include <algorithm>
#include <boost/asio.hpp>
#include <boost/asio/ssl/error.hpp>
#include <cstring>
#include <future>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "client/client.h"
#include "client/core/client_core.h"
#include "common/frame_buffer.h"
#include "common/hmac.h"
#include "common/tls_context.h"
#include "common/tls_stream.h"
#include "common/wire.h"

namespace atomdisk::client {
namespace {

namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;
using asio::ip::tcp;
using std::chrono::milliseconds;

constexpr int kProbePings = 3;
// Reads in a row, each small and leaving nothing buffered, before a connection's grown read
// buffer is given back (common/frame_buffer.h).
constexpr int kClientShrinkAfter = 16;

// The error text Asio gives, without the "asio.misc" style prefixes.
std::string ErrorText(const boost::system::error_code& ec) {
  if (ec == asio::error::eof || ec == asio::ssl::error::stream_truncated) {
    return "the node closed the connection";
  }
  if (ec == asio::error::connection_refused) return "connection refused";
  if (ec == asio::error::connection_reset) return "connection reset by the node";
  if (ec == asio::error::operation_aborted) return "timed out";
  return ec.message();
}

// A TCP socket, with TLS over it once Secure ran (docs/TLS.md, common/tls_stream.h).
struct Stream {
  explicit Stream(asio::io_context& io) : socket(io) {}
  Stream(const Stream&) = delete;  // `tls` refers to `socket`
  Stream& operator=(const Stream&) = delete;
  tcp::socket socket;
  std::unique_ptr<TlsStream> tls;
  // Set by a failed Secure when the node hung up on our ClientHello before showing a
  // certificate: a node without TLS (tls = "accept" then dials it in clear next).
  bool refused_tls = false;

  void Close() {
    boost::system::error_code ignored;
    socket.shutdown(tcp::socket::shutdown_both, ignored);
    socket.close(ignored);
  }
  // A client handshake and the node's certificate checked: it must name node `rank` (any
  // node of the cluster when 0). Empty on success, else why not.
  awaitable<std::string> Secure(TlsContext& context, Rank rank) {
    tls = std::make_unique<TlsStream>(socket, context, TlsStream::Side::kClient);
    boost::system::error_code ec;
    co_await tls->Handshake(ec);
    if (ec) {
      refused_tls = tls->PeerRefusedTls(ec);
      co_return "TLS handshake failed: " + (ec == asio::error::operation_aborted
                                                ? std::string("timed out")
                                                : TlsErrorText(ec, tls->native_handle()));
    }
    auto peer = context.PeerOf(tls->native_handle());
    if (!peer.ok()) co_return peer.status().message();
    if (peer->identity.role != TlsIdentity::Role::kNode ||
        (rank != 0 && peer->identity.rank != rank)) {
      co_return "the node's certificate is " + peer->identity.ToString() +
          (rank != 0 ? ", not node " + std::to_string(rank) : ", not a node's");
    }
    co_return std::string();
  }
  awaitable<std::size_t> ReadSome(std::span<std::uint8_t> room, boost::system::error_code& ec) {
    if (tls) co_return co_await tls->ReadSome(room, ec);
    co_return co_await socket.async_read_some(asio::buffer(room.data(), room.size()),
                                              asio::redirect_error(use_awaitable, ec));
  }
  awaitable<void> Write(const std::vector<std::shared_ptr<const Frame>>& frames,
                        boost::system::error_code& ec) {
    std::vector<asio::const_buffer> buffers;
    buffers.reserve(frames.size());
    for (const auto& f : frames) buffers.push_back(asio::buffer(*f));
    if (tls) {
      co_await tls->Write(buffers, ec);
    } else {
      co_await asio::async_write(socket, buffers, asio::redirect_error(use_awaitable, ec));
    }
  }
};

// One TCP connection to a node. Owned (shared) by its node and its two coroutines.
struct Conn {
  explicit Conn(asio::io_context& io) : stream(io), wake(io) {
    wake.expires_at(Clock::time_point::max());
  }
  Stream stream;
  asio::steady_timer wake;  // the writer sleeps on it; cancel_one() wakes it
  std::vector<std::shared_ptr<const Frame>> queue;  // frames the writer has not taken yet
  bool open = true;
};

// A node's connection loop state; what the client decides about the node is in the core.
struct Node {
  int index = 0;
  Endpoint endpoint;
  enum class State { kIdle, kConnecting, kConnected, kBackoff } state = State::kIdle;
  std::shared_ptr<Conn> conn;        // set while connected
  std::shared_ptr<Conn> connecting;  // the socket being connected (to close on timeout)
  std::unique_ptr<tcp::resolver> resolver;
  std::unique_ptr<asio::steady_timer> backoff;
  Clock::time_point connect_deadline;
  bool next_in_clear = false;  // tls_fallback: the last TLS handshake with this node failed
};

// The Asio adapter: the public API's thread hand-off, the io thread, the sockets, the
// reconnect loops and the tick, around the ClientCore (client/core/client_core.h) that makes
// every decision.
class ClientImpl final : public Client, private ClientCoreEnv {
 public:
  explicit ClientImpl(ClientOptions options)
      : core_(std::move(options), *this, RandomU64()),
        mac_(core_.options().client_key),
        tick_(io_),
        work_(asio::make_work_guard(io_)) {
    const ClientOptions& o = core_.options();
    for (std::size_t i = 0; i < o.nodes.size(); ++i) {
      auto n = std::make_unique<Node>();
      n->index = static_cast<int>(i);
      n->endpoint = o.nodes[i];
      n->resolver = std::make_unique<tcp::resolver>(io_);
      n->backoff = std::make_unique<asio::steady_timer>(io_);
      nodes_.push_back(std::move(n));
    }
    thread_ = std::thread([this] { io_.run(); });
  }

  ~ClientImpl() override { Close(); }

  void Read(SectorIdx sector, ReadCallback done) override {
    ReadWith(sector, OpOptions{}, [done = std::move(done)](OpResult r) {
      if (r.status.ok()) {
        done(std::move(r.data));
      } else {
        done(std::move(r.status));
      }
    });
  }

  void Write(SectorIdx sector, SectorPtr data, WriteCallback done) override {
    WriteWith(sector, std::move(data), OpOptions{},
              [done = std::move(done)](OpResult r) { done(std::move(r.status)); });
  }

  void ReadWith(SectorIdx sector, const OpOptions& options, OpCallback done) override {
    Submit(ClientOp::kRead, sector, 0, {}, options, std::move(done));
  }

  void WriteWith(SectorIdx sector, SectorPtr data, const OpOptions& options,
                 OpCallback done) override {
    ATOMDISK_CHECK(data != nullptr);
    Submit(ClientOp::kWrite, sector, 0, {}, options, std::move(done), std::move(data));
  }

  void ReadExtentWith(SectorIdx first, std::uint32_t count, const OpOptions& options,
                      OpCallback done) override {
    SubmitExtent(ClientOp::kReadExtent, first, count, {}, options, std::move(done));
  }

  void WriteExtentWith(SectorIdx first, std::vector<SectorPtr> data, const OpOptions& options,
                       OpCallback done) override {
    for (const SectorPtr& d : data) ATOMDISK_CHECK(d != nullptr);
    const auto count = static_cast<std::uint32_t>(
        std::min<std::size_t>(data.size(), std::size_t{kMaxExtentSectors} + 1));
    SubmitExtent(ClientOp::kWriteExtent, first, count, std::move(data), options, std::move(done));
  }

  void WriteZerosWith(SectorIdx first, std::uint32_t count, const OpOptions& options,
                      OpCallback done) override {
    SubmitExtent(ClientOp::kWriteZeros, first, count, {}, options, std::move(done));
  }

  std::vector<NodeInfo> Probe(milliseconds timeout) override {
    return Admin(timeout, ClientOp::kInfo);
  }
  std::vector<NodeInfo> Admin(milliseconds timeout, ClientOp op) override;

  std::size_t ReachableNodes() const override { return core_.ReachableNodes(); }
  std::size_t ConfiguredNodes() const override { return nodes_.size(); }
  ClientStats Stats() const override { return core_.Stats(); }

  void Close() override;

 private:
  // ---- Submission (any thread) ----
  void SubmitExtent(ClientOp kind, SectorIdx first, std::uint32_t count,
                    std::vector<SectorPtr> data, const OpOptions& options, OpCallback done) {
    if (count == 0 || count > kMaxExtentSectors) {
      OpResult r;
      r.status = Status::InvalidArgument(
          "an extent covers 1.." + std::to_string(kMaxExtentSectors) + " sectors, not " +
          (count > kMaxExtentSectors ? "more" : std::to_string(count)));
      done(std::move(r));
      return;
    }
    Submit(kind, first, count, std::move(data), options, std::move(done));
  }

  void Submit(ClientOp kind, SectorIdx sector, std::uint32_t count, std::vector<SectorPtr> sectors,
              const OpOptions& options, OpCallback done, SectorPtr data = nullptr) {
    OpRequest req;
    req.kind = kind;
    req.sector = sector;
    req.data = std::move(data);
    req.count = count;
    req.sectors = std::move(sectors);
    req.retry_unknown_write = options.retry_unknown_write;
    req.timeout = options.timeout;
    req.submitted = Clock::now();
    req.done = std::move(done);
    {
      std::lock_guard<std::mutex> lock(submit_mu_);
      if (!closed_) {
        asio::post(io_, [this, req = std::move(req)]() mutable { core_.Submit(std::move(req)); });
        return;
      }
    }
    OpResult r;
    r.status = Status::Unavailable("client closed");
    req.done(std::move(r));
  }

  // ---- ClientCoreEnv: everything below runs on the io thread ----
  Clock::time_point Now() override { return Clock::now(); }

  void StartConnecting() override {
    for (auto& n : nodes_) asio::co_spawn(io_, NodeLoop(n.get()), asio::detached);
    ScheduleTick();
  }

  void SendFrame(int node, std::shared_ptr<const Frame> frame) override {
    Node& n = *nodes_[node];
    ATOMDISK_CHECK(n.conn != nullptr);
    n.conn->queue.push_back(std::move(frame));
    n.conn->wake.cancel_one();
  }

  void CloseConnection(int node) override {
    Node& n = *nodes_[node];
    if (n.conn) Shut(n, n.conn);
  }

  void Post(std::function<void()> fn) override { asio::post(io_, std::move(fn)); }

  // Closes a connection's socket (idempotent); it stops being the node's current one.
  void Shut(Node& n, const std::shared_ptr<Conn>& c) {
    if (!c->open) return;
    c->open = false;
    c->stream.Close();
    c->wake.cancel();
    c->queue.clear();
    if (n.conn == c) {
      n.conn.reset();
      n.state = Node::State::kBackoff;
    }
  }

  // The connection failed under us: closed here and reported to the core, unless the core
  // closed it first.
  void Lost(Node& n, const std::shared_ptr<Conn>& c, const std::string& why) {
    if (!c->open) return;
    Shut(n, c);
    core_.OnConnectionLost(n.index, why);
  }

  // ---- Connections ----
  awaitable<void> NodeLoop(Node* n) {
    const milliseconds attempt_timeout = core_.options().attempt_timeout;
    while (!closing_) {
      n->state = Node::State::kConnecting;
      n->connect_deadline = Clock::now() + attempt_timeout;
      milliseconds delay{0};
      boost::system::error_code ec;
      auto endpoints =
          co_await n->resolver->async_resolve(n->endpoint.host, std::to_string(n->endpoint.port),
                                              asio::redirect_error(use_awaitable, ec));
      if (closing_) break;
      if (ec) {
        delay = core_.OnDialFailed(n->index,
                                   "cannot resolve " + n->endpoint.host + ": " + ErrorText(ec));
      } else {
        auto conn = std::make_shared<Conn>(io_);
        n->connecting = conn;
        co_await asio::async_connect(conn->stream.socket, endpoints,
                                     asio::redirect_error(use_awaitable, ec));
        std::string refused;
        const ClientOptions& o = core_.options();
        if (!ec && !closing_) {
          conn->stream.socket.set_option(tcp::no_delay(true), ec);
          ec = {};
          if (o.tls && !n->next_in_clear) {
            // Under the same deadline as the connect (the tick closes `connecting`).
            refused = co_await conn->stream.Secure(*o.tls, n->endpoint.rank);
            if (!refused.empty() && o.tls_fallback && conn->stream.refused_tls) {
              n->next_in_clear = true;
            }
          } else {
            n->next_in_clear = false;  // TLS again after this connection in clear
          }
        }
        n->connecting.reset();
        if (closing_) break;
        if (ec || !refused.empty()) {
          if (!refused.empty()) conn->stream.Close();
          delay = core_.OnDialFailed(
              n->index, !refused.empty() ? refused
                        : ec == asio::error::operation_aborted
                            ? "connect timed out after " + FormatDuration(attempt_timeout)
                            : ErrorText(ec));
        } else {
          n->conn = conn;
          n->state = Node::State::kConnected;
          asio::co_spawn(io_, Writer(n, conn), asio::detached);
          core_.OnConnected(n->index, conn->stream.tls != nullptr);
          co_await Reader(n, conn);
          Lost(*n, conn, "");
          delay = core_.NextDialDelay(n->index);
        }
      }
      if (closing_) break;
      n->state = Node::State::kBackoff;
      n->backoff->expires_after(delay);
      co_await n->backoff->async_wait(asio::redirect_error(use_awaitable, ec));
    }
    n->state = Node::State::kIdle;
  }

  awaitable<void> Writer(Node* n, std::shared_ptr<Conn> c) {
    std::vector<std::shared_ptr<const Frame>> batch;
    while (c->open) {
      boost::system::error_code ec;
      if (c->queue.empty()) {
        co_await c->wake.async_wait(asio::redirect_error(use_awaitable, ec));
        continue;
      }
      batch.swap(c->queue);
      co_await c->stream.Write(batch, ec);
      batch.clear();
      if (ec) {
        Lost(*n, c, "write failed: " + ErrorText(ec));
        break;
      }
    }
  }

  // Reads whole frames (common/frame_buffer.h) and hands their bodies to the core, until the
  // connection ends.
  awaitable<void> Reader(Node* n, std::shared_ptr<Conn> c) {
    // One per node: it may keep a grown buffer between 1 MiB responses (kClientShrinkAfter).
    FrameBuffer frames(DecodeResponseFrameLength, kClientShrinkAfter);
    while (c->open) {
      boost::system::error_code ec;
      std::span<std::uint8_t> room = frames.Room();
      std::size_t got = co_await c->stream.ReadSome(room, ec);
      if (ec) {
        Lost(*n, c, ErrorText(ec));
        co_return;
      }
      frames.Filled(got);
      while (c->open) {
        auto frame = frames.Next();
        if (!frame.ok()) {
          core_.OnMalformedStream(n->index, frame.status().message());
          Shut(*n, c);
          co_return;
        }
        if (!frame->has_value()) break;
        core_.OnFrameBody(n->index, **frame);
      }
    }
  }

  // ---- The tick: connect timeouts here, everything else in the core ----
  void ScheduleTick() {
    tick_.expires_after(ClientCore::kTickPeriod);
    tick_.async_wait([this](const boost::system::error_code& ec) {
      if (ec || closing_) return;
      auto now = Clock::now();
      for (auto& n : nodes_) {
        if (n->state == Node::State::kConnecting && now >= n->connect_deadline) {
          boost::system::error_code ignored;
          n->resolver->cancel();
          if (n->connecting) n->connecting->stream.Close();
        }
      }
      core_.Tick();
      ScheduleTick();
    });
  }

  awaitable<void> ProbeNode(std::size_t index, ClientOp op, Clock::time_point deadline,
                            NodeInfo* out);

  asio::io_context io_;
  ClientCore core_;  // io thread only, but for its atomic counters
  Hmac mac_;         // the probes' (io thread only)
  asio::steady_timer tick_;
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  std::vector<std::unique_ptr<Node>> nodes_;
  // Random too, as the core's ids (client_core.h): a recorded probe answer is never taken.
  std::uint64_t next_probe_id_ = FirstRequestId(RandomU64());
  bool closing_ = false;  // io thread's view

  std::mutex submit_mu_;
  bool closed_ = false;  // guarded by submit_mu_
  std::once_flag close_once_;
  std::thread thread_;
};

void ClientImpl::Close() {
  std::call_once(close_once_, [this] {
    ATOMDISK_CHECK(std::this_thread::get_id() != thread_.get_id());
    {
      std::lock_guard<std::mutex> lock(submit_mu_);
      closed_ = true;
    }
    asio::post(io_, [this] {
      closing_ = true;
      core_.Shutdown();
      boost::system::error_code ignored;
      tick_.cancel();
      for (auto& n : nodes_) {
        n->resolver->cancel();
        n->backoff->cancel();
        if (n->connecting) n->connecting->stream.Close();
        if (n->conn) Shut(*n, n->conn);
      }
      work_.reset();
    });
    thread_.join();
    // Anything posted while the loop wound down (callbacks issuing new operations).
    io_.restart();
    io_.run();
  });
}

// Fresh connection, kInfo a few times; the fastest round trip is the RTT.
awaitable<void> ClientImpl::ProbeNode(std::size_t index, ClientOp op, Clock::time_point deadline,
                                      NodeInfo* out) {
  const Endpoint& ep = core_.options().nodes[index];
  out->endpoint = ep;
  // Shared with the watchdog's handler, which may run after this frame is gone.
  struct State {
    explicit State(asio::io_context& io)
        : resolver(io), stream(std::make_unique<Stream>(io)), watchdog(io) {}
    tcp::resolver resolver;
    std::unique_ptr<Stream> stream;
    asio::steady_timer watchdog;
    bool timed_out = false;
  };
  auto st = std::make_shared<State>(io_);
  st->watchdog.expires_at(deadline);
  st->watchdog.async_wait([st](const boost::system::error_code& ec) {
    if (ec) return;
    st->timed_out = true;
    boost::system::error_code ignored;
    st->resolver.cancel();
    st->stream->Close();
  });
  // The reason for a failed step: the probe's deadline, or what the OS said.
  auto why = [&](const std::string& step, const boost::system::error_code& ec) {
    if (st->timed_out) return step + ": no answer within the probe timeout";
    return step + ": " + ErrorText(ec);
  };
  std::string error;
  double best_ms = -1;
  boost::system::error_code ec;
  auto endpoints = co_await st->resolver.async_resolve(ep.host, std::to_string(ep.port),
                                                       asio::redirect_error(use_awaitable, ec));
  if (ec) {
    error = why("cannot resolve " + ep.host, ec);
  } else {
    const ClientOptions& o = core_.options();
    // With TLS, and under tls = "accept" once more in clear if the node hung up on the
    // ClientHello (a node without TLS yet), as the connection loop does.
    for (int attempt = 0; attempt < 2; ++attempt) {
      const bool secure = o.tls && attempt == 0;
      if (attempt > 0) st->stream = std::make_unique<Stream>(io_);
      co_await asio::async_connect(st->stream->socket, endpoints,
                                   asio::redirect_error(use_awaitable, ec));
      if (ec) {
        error = why("cannot connect", ec);
        break;
      }
      st->stream->socket.set_option(tcp::no_delay(true), ec);
      ec = {};
      error.clear();
      if (!secure) break;
      std::string refused = co_await st->stream->Secure(*o.tls, ep.rank);
      if (refused.empty()) break;
      error = st->timed_out ? why("TLS handshake", ec) : refused;
      if (st->timed_out || !o.tls_fallback || !st->stream->refused_tls) break;
      st->stream->Close();
    }
  }
  // kInfo is harmless to repeat (the fastest answer is the RTT); other admin ops go once.
  const int pings = op == ClientOp::kInfo ? kProbePings : 1;
  FrameBuffer frames(DecodeResponseFrameLength);
  for (int ping = 0; error.empty() && ping < pings; ++ping) {
    ClientCommand cmd;
    cmd.request_id = next_probe_id_++;
    cmd.op = op;
    Frame frame = EncodeFrame(cmd, MacFor(mac_, st->stream->tls != nullptr));
    auto t0 = Clock::now();
    const std::vector<std::shared_ptr<const Frame>> one = {
        std::make_shared<const Frame>(std::move(frame))};
    co_await st->stream->Write(one, ec);
    if (ec) {
      error = why("cannot send", ec);
      break;
    }
    std::span<const std::uint8_t> body;
    while (error.empty()) {
      auto frame = frames.Next();
      if (!frame.ok()) {
        error = "malformed answer: " + frame.status().message();
        break;
      }
      if (frame->has_value()) {
        body = **frame;
        break;
      }
      std::span<std::uint8_t> room = frames.Room();
      std::size_t got = co_await st->stream->ReadSome(room, ec);
      if ((ec == asio::error::eof || ec == asio::ssl::error::stream_truncated) &&
          frames.buffered() == 0) {
        error =
            "the node closed the connection instead of answering the info request (not an "
            "atomdisk node, or it rejects our frames)";
      } else if (ec) {
        error = frames.buffered() == 0 ? why("no answer", ec) : why("truncated answer", ec);
      } else {
        frames.Filled(got);
      }
    }
    if (!error.empty()) break;
    double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    Result<std::span<const std::uint8_t>> payload =
        VerifyFrameBodyOn(body, mac_, st->stream->tls != nullptr);
    if (!payload.ok()) {
      const bool auth = payload.status().code() == StatusCode::kAuthFailure;
      out->key_rejected = auth;
      error = auth ? ExplainBadTag(body) : "malformed answer: " + payload.status().message();
      break;
    }
    Result<ClientResponse> resp = DecodeClientResponse(*payload);
    if (!resp.ok()) {
      error = "malformed answer: " + resp.status().message();
    } else if (resp->request_id != cmd.request_id || resp->op != op) {
      error = "the node answered the info request with something else";
    } else if (resp->status == ResponseStatus::kAuthFailure) {
      out->key_rejected = true;
      error = "the node rejected our HMAC tag: the client key does not match the cluster's";
    } else if (resp->status != ResponseStatus::kOk) {
      error = "the node refused the info request";
    } else {
      out->info_json = resp->info;
      if (best_ms < 0 || ms < best_ms) best_ms = ms;
    }
  }
  out->error = error;
  out->reachable = error.empty() && best_ms >= 0;
  out->rtt_ms = out->reachable ? best_ms : 0;
  st->watchdog.cancel();
  st->stream->Close();
}

std::vector<NodeInfo> ClientImpl::Admin(milliseconds timeout, ClientOp op) {
  ATOMDISK_CHECK(std::this_thread::get_id() != thread_.get_id());
  std::vector<NodeInfo> out(nodes_.size());
  for (std::size_t i = 0; i < out.size(); ++i) {
    out[i].endpoint = nodes_[i]->endpoint;
    out[i].error = "client closed";
  }
  auto done = std::make_shared<std::promise<void>>();
  std::future<void> finished = done->get_future();
  {
    std::lock_guard<std::mutex> lock(submit_mu_);
    if (closed_) return out;
    asio::post(io_, [this, timeout, op, done, &out] {
      auto deadline = Clock::now() + timeout;
      auto remaining = std::make_shared<std::size_t>(out.size());
      for (std::size_t i = 0; i < out.size(); ++i) {
        out[i].error.clear();
        asio::co_spawn(io_, ProbeNode(i, op, deadline, &out[i]),
                       [remaining, done](std::exception_ptr) {
                         if (--*remaining == 0) done->set_value();
                       });
      }
    });
  }
  finished.wait();
  return out;
}

}  // namespace

Result<ClientOptions> OptionsFromConfig(const ClusterConfig& config,
                                        const std::vector<std::string>& node_args) {
  ClientOptions o;
  if (config.tls != TlsMode::kOff) {
    auto tls = TlsContext::ForClient(config);
    if (!tls.ok()) return Status::InvalidArgument(config.path + ": " + tls.status().message());
    o.tls = *tls;
    o.tls_fallback = config.tls == TlsMode::kAccept;
  }
  o.client_key = config.client_key;
  o.sectors = config.sectors;
  o.cluster_nodes = config.nodes.size();
  if (config.client_key.size() != kClientKeySize) {
    return Status::InvalidArgument("the client key is not " + std::to_string(kClientKeySize) +
                                   " bytes");
  }
  if (node_args.empty()) {
    for (const auto& n : config.nodes) o.nodes.push_back({n.host, n.port, n.rank});
  }
  for (const std::string& arg : node_args) {
    Endpoint ep;
    if (!arg.empty() && std::all_of(arg.begin(), arg.end(), ::isdigit)) {
      int rank = arg.size() > 3 ? -1 : std::stoi(arg);
      const NodeConfig* n =
          rank >= 1 && rank <= kMaxRank ? config.FindNode(static_cast<Rank>(rank)) : nullptr;
      if (n == nullptr) {
        std::string ranks;
        for (const auto& c : config.nodes) {
          ranks += (ranks.empty() ? "" : ", ") + std::to_string(c.rank);
        }
        return Status::InvalidArgument("--node " + arg + ": " + config.path +
                                       " has no node with that rank (ranks: " + ranks + ")");
      }
      ep = {n->host, n->port, n->rank};
    } else {
      Status s = ParseHostPort(arg, &ep.host, &ep.port);
      if (!s.ok()) return Status::InvalidArgument("--node: " + s.message());
      for (const auto& n : config.nodes) {
        if (n.host == ep.host && n.port == ep.port) ep.rank = n.rank;
      }
    }
    for (const auto& prev : o.nodes) {
      if (prev.host == ep.host && prev.port == ep.port) {
        return Status::InvalidArgument("--node " + arg + " given twice");
      }
    }
    o.nodes.push_back(ep);
  }
  if (o.nodes.empty()) return Status::InvalidArgument(config.path + " names no nodes");
  return o;
}

std::unique_ptr<Client> Client::Create(ClientOptions options) {
  return std::make_unique<ClientImpl>(std::move(options));
}

void Client::ReadWith(SectorIdx sector, const OpOptions& /*options*/, OpCallback done) {
  Read(sector, [done = std::move(done)](Result<SectorPtr> r) {
    OpResult out;
    if (r.ok()) {
      out.data = std::move(r).value();
    } else {
      out.status = r.status();
    }
    done(std::move(out));
  });
}

void Client::WriteWith(SectorIdx sector, SectorPtr data, const OpOptions& /*options*/,
                       OpCallback done) {
  Write(sector, std::move(data), [done = std::move(done)](Status s) {
    OpResult out;
    out.maybe_applied = s.code() == StatusCode::kTimeout || s.code() == StatusCode::kUnavailable;
    out.status = std::move(s);
    done(std::move(out));
  });
}

namespace {

// An extent run as one single-sector operation per sector; `done` runs once, after the last.
// Thread-safe: the operations' callbacks may run on any thread.
struct FanOut {
  std::mutex mu;
  std::uint32_t left = 0;
  OpResult result;
  Client::OpCallback done;
};

Status CheckExtentCount(std::uint32_t count) {
  if (count == 0 || count > kMaxExtentSectors) {
    return Status::InvalidArgument("an extent covers 1.." + std::to_string(kMaxExtentSectors) +
                                   " sectors, not " + std::to_string(count));
  }
  return Status::Ok();
}

void FanOutExtent(Client& client, SectorIdx first, std::uint32_t count, bool read,
                  const std::function<SectorPtr(std::uint32_t)>& data, const OpOptions& options,
                  Client::OpCallback done) {
  if (Status s = CheckExtentCount(count); !s.ok()) {
    OpResult r;
    r.status = std::move(s);
    done(std::move(r));
    return;
  }
  auto f = std::make_shared<FanOut>();
  f->left = count;
  f->done = std::move(done);
  if (read) f->result.sectors.resize(count);
  for (std::uint32_t i = 0; i < count; ++i) {
    auto one = [f, i, read](OpResult r) {
      Client::OpCallback finish;
      OpResult out;
      {
        std::lock_guard<std::mutex> lock(f->mu);
        f->result.attempts = std::max(f->result.attempts, r.attempts);
        if (r.status.ok()) {
          if (read) f->result.sectors[i] = std::move(r.data);
        } else {
          if (f->result.status.ok()) f->result.status = r.status;
          f->result.maybe_applied = f->result.maybe_applied || r.maybe_applied;
        }
        if (--f->left > 0) return;
        out = std::move(f->result);
        if (!out.status.ok()) out.sectors.clear();
        finish = std::move(f->done);
      }
      finish(std::move(out));
    };
    if (read) {
      client.ReadWith(first + i, options, std::move(one));
    } else {
      client.WriteWith(first + i, data(i), options, std::move(one));
    }
  }
}

}  // namespace

void Client::ReadExtentWith(SectorIdx first, std::uint32_t count, const OpOptions& options,
                            OpCallback done) {
  FanOutExtent(*this, first, count, true, nullptr, options, std::move(done));
}

void Client::WriteExtentWith(SectorIdx first, std::vector<SectorPtr> data, const OpOptions& options,
                             OpCallback done) {
  for (const SectorPtr& d : data) ATOMDISK_CHECK(d != nullptr);
  auto shared = std::make_shared<std::vector<SectorPtr>>(std::move(data));
  FanOutExtent(
      *this, first, static_cast<std::uint32_t>(shared->size()), false,
      [shared](std::uint32_t i) { return (*shared)[i]; }, options, std::move(done));
}

void Client::WriteZerosWith(SectorIdx first, std::uint32_t count, const OpOptions& options,
                            OpCallback done) {
  FanOutExtent(
      *this, first, count, false, [](std::uint32_t) { return ZeroSector(); }, options,
      std::move(done));
}

Result<SectorPtr> Client::ReadSync(SectorIdx sector) {
  std::promise<Result<SectorPtr>> p;
  auto f = p.get_future();
  Read(sector, [&p](Result<SectorPtr> r) { p.set_value(std::move(r)); });
  return f.get();
}

Status Client::WriteSync(SectorIdx sector, SectorPtr data) {
  std::promise<Status> p;
  auto f = p.get_future();
  Write(sector, std::move(data), [&p](Status s) { p.set_value(std::move(s)); });
  return f.get();
}

}  // namespace atomdisk::client
