// The client library's implementation: one io_context thread, one connection loop per node
// (connect, reader + writer coroutines, reconnect with backoff), a table of active
// operations with deadlines checked by a periodic tick, and a FIFO of operations waiting
// for an in-flight slot. Everything below ClientImpl's public methods runs on the io thread
// only, so it needs no locks; the public methods post to it.
#include "client/client.h"

#include <algorithm>
#include <atomic>
#include <boost/asio.hpp>
#include <cerrno>
#include <cstring>
#include <deque>
#include <future>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "common/hmac.h"
#include "common/wire.h"

namespace atomdisk::client {
namespace {

namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr milliseconds kTickPeriod{10};
// Room for the largest response (an extent read of 1 MiB) and more behind it.
constexpr std::size_t kReadBufferSize = kFrameLengthSize + kMaxResponseFrameBody + 256 * 1024;
constexpr int kProbePings = 3;

std::string Plural(std::size_t n, const char* word) {
  return std::to_string(n) + " " + word + (n == 1 ? "" : "s");
}

// The error text Asio gives, without the "asio.misc" style prefixes.
std::string ErrorText(const boost::system::error_code& ec) {
  if (ec == asio::error::eof) return "the node closed the connection";
  if (ec == asio::error::connection_refused) return "connection refused";
  if (ec == asio::error::connection_reset) return "connection reset by the node";
  if (ec == asio::error::operation_aborted) return "timed out";
  return ec.message();
}

// A response's payload whose tag did not verify, read leniently only to explain the failure.
std::string ExplainBadTag(std::span<const std::uint8_t> body) {
  std::string msg = "the node's response tag does not verify with our client key";
  if (body.size() >= kMacSize + 4) {
    std::uint32_t status = 0;
    for (int i = 0; i < 4; ++i) status = status << 8 | body[i];
    if (status == static_cast<std::uint32_t>(ResponseStatus::kAuthFailure)) {
      msg += ", and it says our tag does not verify either";
    }
  }
  return msg + ": the client key does not match the cluster's";
}

struct Op {
  std::uint64_t id = 0;  // the request id on the wire; unique in this client
  ClientOp kind = ClientOp::kRead;
  SectorIdx sector = 0;
  SectorPtr data;
  bool retry_unknown_write = true;
  milliseconds timeout{0};
  Client::OpCallback done;
  Clock::time_point deadline;
  Clock::time_point attempt_deadline = Clock::time_point::max();
  std::shared_ptr<const Frame> frame;  // encoded on first send, re-sent as is on retries
  int node = -1;                       // node of the current attempt; -1 while parked or queued
  int avoid_node = -1;                 // the node whose attempt failed last: try another one first
  int attempts = 0;
  bool maybe_applied = false;          // a write that reached some node without an answer
  bool maybe_applied_before = false;   // the same before the current attempt was sent
  std::vector<int> auth_failed_nodes;  // nodes whose answers failed tag verification
  std::string last_error;
  // Extent ops (kReadExtent, kWriteExtent, kWriteZeros): the run's length and, for writes,
  // its data; the sectors read so far. An extent that runs as single-sector children (an
  // older node, or sectors a node reported not done) counts those still out.
  std::uint32_t count = 0;
  std::vector<SectorPtr> sectors;
  std::vector<SectorPtr> read;
  std::uint32_t children_left = 0;
  Status child_error;
  // Internal ops: an extent's single-sector children (parent != 0) and feature probes (not
  // retried, not counted in the stats).
  std::uint64_t parent = 0;
  bool internal = false;
  int probe_node = -1;  // a feature probe pinned to this node
  // A single-sector Read or Write that goes as an extent of one sector to nodes that take
  // extents, so that a node without a quorum refuses it at once (docs/CLIENT.md, "Fast
  // failover"); a node without extents gets it as the atdd command (RunAsSingles: one child).
  bool single = false;
  // Whole-extent refusals ("not done" for every sector: the node reaches no quorum) of this
  // op so far; after each round in which every node could have refused it, it waits a little
  // before the next try (Refused).
  int refusals = 0;
  bool last_refused = false;  // the latest attempt ended in such a refusal
};

// One TCP connection to a node. Owned (shared) by its node and its two coroutines.
struct Conn {
  explicit Conn(asio::io_context& io) : socket(io), wake(io) {
    wake.expires_at(Clock::time_point::max());
  }
  tcp::socket socket;
  asio::steady_timer wake;  // the writer sleeps on it; cancel_one() wakes it
  std::vector<std::shared_ptr<const Frame>> queue;  // frames the writer has not taken yet
  std::unordered_set<std::uint64_t> inflight;       // op ids sent here and not answered
  Clock::time_point busy_since;                     // when inflight last became non-empty
  Clock::time_point last_rx;                        // when the last valid response arrived
  bool open = true;
};

struct Node {
  int index = 0;
  Endpoint endpoint;
  enum class State { kIdle, kConnecting, kConnected, kBackoff } state = State::kIdle;
  std::shared_ptr<Conn> conn;        // set while connected
  std::shared_ptr<Conn> connecting;  // the socket being connected (to close on timeout)
  std::unique_ptr<tcp::resolver> resolver;
  std::unique_ptr<asio::steady_timer> backoff;
  Clock::time_point connect_deadline;
  Clock::time_point demoted_until;
  // Whether the node takes extent commands (its Info lists "extents"): asked once, with an
  // Info on the pipelined connection, when an extent first needs this node. kNo also for a
  // node that closed the connection instead of answering (an atdd node: unknown op).
  enum class Extents { kUnknown, kProbing, kYes, kNo } extents = Extents::kUnknown;
  int failures = 0;         // consecutive connection failures without a good response
  int timeouts_in_row = 0;  // consecutive attempt timeouts
  std::string last_error;
};

class ClientImpl final : public Client {
 public:
  explicit ClientImpl(ClientOptions options)
      : options_(std::move(options)),
        mac_(options_.client_key),
        tick_(io_),
        work_(asio::make_work_guard(io_)),
        rng_(std::random_device{}()) {
    ATOMDISK_CHECK(!options_.nodes.empty());
    ATOMDISK_CHECK(options_.client_key.size() == kClientKeySize);
    ATOMDISK_CHECK(options_.max_inflight > 0);
    if (options_.cluster_nodes == 0) options_.cluster_nodes = options_.nodes.size();
    for (std::size_t i = 0; i < options_.nodes.size(); ++i) {
      auto n = std::make_unique<Node>();
      n->index = static_cast<int>(i);
      n->endpoint = options_.nodes[i];
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

  // A single sector goes as an extent of one (Op::single).
  void ReadWith(SectorIdx sector, const OpOptions& options, OpCallback done) override {
    Submit(ClientOp::kReadExtent, sector, nullptr, options, std::move(done), 1, {},
           /*single=*/true);
  }

  void WriteWith(SectorIdx sector, SectorPtr data, const OpOptions& options,
                 OpCallback done) override {
    ATOMDISK_CHECK(data != nullptr);
    std::vector<SectorPtr> one;
    one.push_back(std::move(data));
    Submit(ClientOp::kWriteExtent, sector, nullptr, options, std::move(done), 1, std::move(one),
           /*single=*/true);
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

  std::size_t ReachableNodes() const override { return reachable_.load(); }
  std::size_t ConfiguredNodes() const override { return nodes_.size(); }

  ClientStats Stats() const override {
    ClientStats s;
    s.ops_ok = ops_ok_.load();
    s.ops_failed = ops_failed_.load();
    s.retries = retries_.load();
    s.connects = connects_.load();
    s.connection_drops = drops_.load();
    s.bad_frames = bad_frames_.load();
    return s;
  }

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
    Submit(kind, first, nullptr, options, std::move(done), count, std::move(data));
  }

  void Submit(ClientOp kind, SectorIdx sector, SectorPtr data, const OpOptions& options,
              OpCallback done, std::uint32_t count = 0, std::vector<SectorPtr> sectors = {},
              bool single = false) {
    auto op = std::make_unique<Op>();
    op->kind = kind;
    op->single = single;
    op->sector = sector;
    op->data = std::move(data);
    op->count = count;
    op->sectors = std::move(sectors);
    op->retry_unknown_write = options.retry_unknown_write;
    op->timeout = options.timeout.count() > 0 ? options.timeout : options_.op_timeout;
    op->deadline = Clock::now() + op->timeout;
    op->done = std::move(done);
    {
      std::lock_guard<std::mutex> lock(submit_mu_);
      if (!closed_) {
        asio::post(io_, [this, op = std::move(op)]() mutable { Enqueue(std::move(op)); });
        return;
      }
    }
    OpResult r;
    r.status = Status::Unavailable("client closed");
    op->done(std::move(r));
  }

  // ---- Everything below runs on the io thread ----
  void Enqueue(std::unique_ptr<Op> op) {
    if (closing_) return Complete(*op, Status::Unavailable("client closed"));
    if (op->sector >= options_.sectors) {
      return Complete(*op, Status::InvalidArgument("sector " + std::to_string(op->sector) +
                                                   " is outside the device (sectors 0.." +
                                                   std::to_string(options_.sectors - 1) + ")"));
    }
    if (IsExtentOp(op->kind) && options_.sectors - op->sector < op->count) {
      return Complete(*op, Status::InvalidArgument("sectors " + std::to_string(op->sector) + ".." +
                                                   std::to_string(op->sector + op->count - 1) +
                                                   " are not all inside the device (sectors 0.." +
                                                   std::to_string(options_.sectors - 1) + ")"));
    }
    StartLoops();
    pending_.push_back(std::move(op));
    StartPending();
  }

  void StartPending() {
    while (active_.size() < options_.max_inflight && !pending_.empty()) {
      std::unique_ptr<Op> op = std::move(pending_.front());
      pending_.pop_front();
      if (Clock::now() >= op->deadline) {
        Complete(*op, DeadlineStatus(*op));
        continue;
      }
      op->id = next_request_id_++;
      Op* raw = op.get();
      active_.emplace(raw->id, std::move(op));
      Dispatch(*raw);
    }
  }

  // Sends the op to the best node, or parks it until a connection comes up. An extent goes
  // as one command to a node that takes them, waits for the answer to the node's feature
  // probe, or runs as single-sector operations on a node that does not.
  void Dispatch(Op& op) {
    if (op.probe_node >= 0) {
      Node& n = *nodes_[op.probe_node];
      if (!n.conn || !n.conn->open) return AttemptFailed(op, "connection lost");
      return Send(op, n);
    }
    int best = PickNode(op);
    if (best < 0) {
      parked_.push_back(op.id);
      return;
    }
    Node& n = *nodes_[best];
    if (IsExtentOp(op.kind)) {
      switch (n.extents) {
        case Node::Extents::kYes:
          break;
        case Node::Extents::kUnknown:
          StartFeatureProbe(n);
          [[fallthrough]];
        case Node::Extents::kProbing:
          parked_.push_back(op.id);
          return;
        case Node::Extents::kNo: {
          std::vector<std::uint32_t> all(op.count);
          for (std::uint32_t i = 0; i < op.count; ++i) all[i] = i;
          return RunAsSingles(op, all, -1);
        }
      }
    }
    Send(op, n);
  }

  // Asks `n` for its Info on its pipelined connection, to learn whether it takes extents.
  void StartFeatureProbe(Node& n) {
    n.extents = Node::Extents::kProbing;
    auto op = std::make_unique<Op>();
    op->kind = ClientOp::kInfo;
    op->internal = true;
    op->probe_node = n.index;
    op->timeout = options_.attempt_timeout;
    op->deadline = Clock::now() + op->timeout;
    const int index = n.index;
    op->done = [this, index](OpResult r) {
      Node& node = *nodes_[index];
      if (node.extents != Node::Extents::kProbing) return;
      bool yes = false;
      if (r.status.ok()) {
        auto j = nlohmann::json::parse(r.info, nullptr, /*allow_exceptions=*/false);
        if (j.is_object() && j.contains("features") && j["features"].is_array()) {
          for (const auto& f : j["features"]) yes = yes || (f.is_string() && f == kExtentsFeature);
        }
      }
      // No answer (an atdd node closes the connection on an unknown op; a silent node):
      // single-sector commands for this node from now on.
      node.extents = yes ? Node::Extents::kYes : Node::Extents::kNo;
      DispatchParked();
    };
    op->id = next_request_id_++;
    Op* raw = op.get();
    active_.emplace(raw->id, std::move(op));
    Send(*raw, n);
  }

  // Runs the sectors `which` of extent `op` as single-sector operations (children), each
  // with the extent's deadline; `op` completes when the last of them has. `avoid`: the node
  // that reported them not done (-1: none).
  void RunAsSingles(Op& op, const std::vector<std::uint32_t>& which, int avoid) {
    ATOMDISK_CHECK(!which.empty());
    op.node = -1;
    op.attempt_deadline = Clock::time_point::max();
    for (auto& n : nodes_) {
      if (n->conn) n->conn->inflight.erase(op.id);
    }
    if (op.kind == ClientOp::kReadExtent) op.read.resize(op.count);
    op.children_left = static_cast<std::uint32_t>(which.size());
    const std::uint64_t parent = op.id;
    for (std::uint32_t i : which) {
      auto child = std::make_unique<Op>();
      child->kind = op.kind == ClientOp::kReadExtent ? ClientOp::kRead : ClientOp::kWrite;
      child->sector = op.sector + i;
      if (op.kind == ClientOp::kWriteExtent) child->data = op.sectors[i];
      if (op.kind == ClientOp::kWriteZeros) child->data = ZeroSector();
      child->retry_unknown_write = op.retry_unknown_write;
      child->timeout = op.timeout;
      child->deadline = op.deadline;
      child->avoid_node = avoid;
      child->parent = parent;
      child->internal = true;
      child->done = [this, parent, i](OpResult r) { ChildDone(parent, i, std::move(r)); };
      child->id = next_request_id_++;
      Op* raw = child.get();
      active_.emplace(raw->id, std::move(child));
      Dispatch(*raw);
    }
  }

  void ChildDone(std::uint64_t parent, std::uint32_t index, OpResult r) {
    auto it = active_.find(parent);
    if (it == active_.end()) return;  // the extent already ended (its deadline, Close)
    Op& op = *it->second;
    op.attempts = std::max(op.attempts, r.attempts);
    if (r.status.ok()) {
      if (op.kind == ClientOp::kReadExtent) op.read[index] = std::move(r.data);
    } else {
      if (op.child_error.ok()) op.child_error = r.status;
      if (r.maybe_applied) op.maybe_applied = true;
    }
    if (--op.children_left > 0) return;
    Status status = op.child_error;
    Finish(op, std::move(status), nullptr, r.answered_by);
  }

  // An extent's answer: done when every sector is; the sectors the node did not run go on
  // as single-sector operations elsewhere.
  void ExtentAnswered(Op& op, Node& n, ClientResponse& resp) {
    if (resp.outcomes.size() != op.count ||
        (op.kind == ClientOp::kReadExtent && resp.sectors.size() != op.count)) {
      ++bad_frames_;
      return CloseConn(n, n.conn,
                       "protocol error: an extent of " + std::to_string(op.count) +
                           " sectors answered with " + std::to_string(resp.outcomes.size()) +
                           " outcomes");
    }
    std::vector<std::uint32_t> not_done;
    if (op.kind == ClientOp::kReadExtent) op.read = std::move(resp.sectors);
    for (std::uint32_t i = 0; i < op.count; ++i) {
      if (resp.outcomes[i] != ExtentOutcome::kDone) not_done.push_back(i);
    }
    if (not_done.empty()) return Finish(op, Status::Ok(), nullptr, n.endpoint.rank);
    if (not_done.size() == op.count) return Refused(op, n);
    RunAsSingles(op, not_done, n.index);
  }

  // `n` ran none of the extent's sectors: it reaches no quorum (docs/PROTOCOL.md, "No quorum
  // here"), or it cannot read any of them. Nothing was written by this attempt, so the extent
  // moves whole to another node at once, and `n` is demoted for an attempt timeout, so that
  // the next operations go elsewhere first. Once every node has refused it in turn, the next
  // round waits 20 ms, doubling up to 320 ms, until the deadline.
  void Refused(Op& op, Node& n) {
    if (op.node != n.index) return;  // a late answer to an earlier attempt: the current goes on
    for (auto& node : nodes_) {
      if (node->conn) node->conn->inflight.erase(op.id);
    }
    const auto now = Clock::now();
    n.demoted_until = std::max(n.demoted_until, now + options_.attempt_timeout);
    op.maybe_applied = op.maybe_applied_before;
    op.last_error = n.endpoint.ToString() + " reaches no quorum (it ran none of the sectors)";
    op.last_refused = true;
    op.avoid_node = n.index;
    op.node = -1;
    op.attempt_deadline = Clock::time_point::max();
    const int nodes = static_cast<int>(nodes_.size());
    if (++op.refusals % nodes != 0) return Dispatch(op);
    const int round = std::min(op.refusals / nodes - 1, 4);
    delayed_.emplace_back(now + milliseconds(20) * (1 << round), op.id);
  }

  // The connected node to use: not demoted before demoted, not the one that just failed
  // this op before it, then configuration order. -1 when nothing is connected.
  int PickNode(const Op& op) const {
    auto now = Clock::now();
    int best = -1;
    int best_score = 0;
    for (const auto& n : nodes_) {
      if (!n->conn || !n->conn->open) continue;
      int score = (n->demoted_until > now ? 2 : 0) + (n->index == op.avoid_node ? 1 : 0);
      if (best < 0 || score < best_score) {
        best = n->index;
        best_score = score;
      }
    }
    return best;
  }

  void Send(Op& op, Node& n) {
    Conn& c = *n.conn;
    if (!op.frame) {
      ClientCommand cmd;
      cmd.request_id = op.id;
      cmd.sector = op.sector;
      cmd.op = op.kind;
      cmd.data = op.data;
      cmd.count = op.count;
      cmd.sectors = op.sectors;
      op.frame = std::make_shared<const Frame>(EncodeFrame(cmd, mac_));
    }
    // An extent's single-sector children count (one of them may be a lone Read or Write
    // that went as an extent of one to a node without extents); feature probes do not.
    if (op.attempts > 0 && (!op.internal || op.parent != 0)) ++retries_;
    op.attempts++;
    op.node = n.index;
    op.attempt_deadline = Clock::now() + options_.attempt_timeout;
    op.maybe_applied_before = op.maybe_applied;
    op.last_refused = false;
    if (IsWriteOp(op.kind)) op.maybe_applied = true;
    if (c.inflight.empty()) c.busy_since = Clock::now();
    c.inflight.insert(op.id);
    c.queue.push_back(op.frame);
    c.wake.cancel_one();
  }

  // The current attempt of `op` failed without an answer (connection lost, no answer in
  // time, bad frame). Retries it on another node unless it is a write that must not be.
  void AttemptFailed(Op& op, const std::string& why) {
    op.last_error = why;
    op.last_refused = false;
    op.avoid_node = op.node;
    op.node = -1;
    op.attempt_deadline = Clock::time_point::max();
    if (closing_) return Finish(op, Status::Unavailable("client closed"));
    if (op.probe_node >= 0) return Finish(op, Status::Unavailable(why));
    if (IsWriteOp(op.kind) && !op.retry_unknown_write) {
      return Finish(op, Status::Unavailable("the write's outcome is unknown: " + why));
    }
    if (!op.auth_failed_nodes.empty() && op.auth_failed_nodes.size() >= nodes_.size()) {
      return Finish(op, Status::AuthFailure(why));
    }
    Dispatch(op);
  }

  // Removes an active op, completes it, and lets a queued one in.
  void Finish(Op& op, Status status, SectorPtr data = nullptr, Rank by = 0, std::string info = {}) {
    auto it = active_.find(op.id);
    ATOMDISK_CHECK(it != active_.end());
    std::unique_ptr<Op> owned = std::move(it->second);
    active_.erase(it);
    // Earlier attempts may have left the id on other connections too.
    for (auto& n : nodes_) {
      if (n->conn) n->conn->inflight.erase(owned->id);
    }
    Complete(*owned, std::move(status), std::move(data), by, std::move(info));
    StartPending();
  }

  // Runs the callback (posted, so it never runs inside our own loops).
  void Complete(Op& op, Status status, SectorPtr data = nullptr, Rank by = 0,
                std::string info = {}) {
    OpResult r;
    r.attempts = op.attempts;
    r.answered_by = by;
    if (status.ok()) {
      if (!op.internal) ++ops_ok_;
      r.data = std::move(data);
      r.info = std::move(info);
      if (op.kind == ClientOp::kReadExtent && op.single) {
        if (!op.read.empty()) r.data = std::move(op.read[0]);
      } else if (op.kind == ClientOp::kReadExtent) {
        r.sectors = std::move(op.read);
      }
    } else {
      if (!op.internal) ++ops_failed_;
      r.maybe_applied =
          IsWriteOp(op.kind) && op.maybe_applied && status.code() != StatusCode::kInvalidArgument;
    }
    r.status = std::move(status);
    asio::post(io_,
               [done = std::move(op.done), r = std::move(r)]() mutable { done(std::move(r)); });
  }

  // Why an op whose deadline passed failed.
  Status DeadlineStatus(const Op& op) const {
    std::string within = "within " + FormatDuration(op.timeout);
    std::size_t up = reachable_.load();
    std::string of =
        std::to_string(up) + " of " + std::to_string(options_.cluster_nodes) + " nodes reachable";
    if (nodes_.size() != options_.cluster_nodes) {
      of = std::to_string(up) + " of " + std::to_string(nodes_.size()) +
           " selected nodes reachable (the cluster has " + std::to_string(options_.cluster_nodes) +
           ")";
    }
    std::string detail = op.last_error.empty() ? "" : " (last error: " + op.last_error + ")";
    if (op.attempts == 0 && up > 0) {
      return Status::Timeout(
          "timeout: the operation waited for an in-flight slot and did not "
          "finish " +
          within + "; " + of);
    }
    if (op.attempts == 0) {
      std::string last;
      for (const auto& n : nodes_) {
        if (!n->last_error.empty()) {
          last += (last.empty() ? "" : "; ") + n->endpoint.ToString() + ": " + n->last_error;
        }
      }
      return Status::Unavailable("no node reachable: the operation could not be sent " + within +
                                 " (" + (last.empty() ? of : last) + ")");
    }
    std::size_t majority = options_.cluster_nodes / 2 + 1;
    if ((nodes_.size() == options_.cluster_nodes && up < majority) || op.last_refused) {
      return Status::Timeout("no quorum: the operation did not finish " + within + "; " + of +
                             detail);
    }
    return Status::Timeout("timeout: the operation did not finish " + within + "; " + of + detail);
  }

  // ---- Connections ----
  void StartLoops() {
    if (loops_started_) return;
    loops_started_ = true;
    for (auto& n : nodes_) asio::co_spawn(io_, NodeLoop(n.get()), asio::detached);
    ScheduleTick();
  }

  milliseconds Backoff(int failures) {
    auto d = options_.reconnect_backoff_min;
    for (int i = 1; i < failures && d < options_.reconnect_backoff_max; ++i) d *= 2;
    d = std::min(d, options_.reconnect_backoff_max);
    std::uniform_int_distribution<long> jitter(-d.count() / 4, d.count() / 4);
    return milliseconds(std::max<long>(1, d.count() + jitter(rng_)));
  }

  awaitable<void> NodeLoop(Node* n) {
    while (!closing_) {
      n->state = Node::State::kConnecting;
      n->connect_deadline = Clock::now() + options_.attempt_timeout;
      boost::system::error_code ec;
      auto endpoints =
          co_await n->resolver->async_resolve(n->endpoint.host, std::to_string(n->endpoint.port),
                                              asio::redirect_error(use_awaitable, ec));
      if (closing_) break;
      if (ec) {
        n->last_error = "cannot resolve " + n->endpoint.host + ": " + ErrorText(ec);
      } else {
        auto conn = std::make_shared<Conn>(io_);
        n->connecting = conn;
        co_await asio::async_connect(conn->socket, endpoints,
                                     asio::redirect_error(use_awaitable, ec));
        n->connecting.reset();
        if (closing_) break;
        if (ec) {
          n->last_error = ErrorText(ec);
          if (ec == asio::error::operation_aborted) {
            n->last_error = "connect timed out after " + FormatDuration(options_.attempt_timeout);
          }
        } else {
          conn->socket.set_option(tcp::no_delay(true), ec);
          conn->last_rx = Clock::now();
          n->conn = conn;
          n->state = Node::State::kConnected;
          // A new connection may be a new version of the node (a rolling upgrade or
          // downgrade): a node that took extents is asked again before the next one. A node
          // that refused the probe stays on single-sector commands for this client's life.
          if (n->extents != Node::Extents::kNo) n->extents = Node::Extents::kUnknown;
          n->last_error.clear();
          ++reachable_;  // CloseConn takes it back
          ++connects_;
          asio::co_spawn(io_, Writer(n, conn), asio::detached);
          // Asked at once, not when an extent first needs the node: the Info is also this
          // connection's first authenticated frame, which a node wants within seconds of the
          // connect (docs/PROTOCOL.md, "What every node does with a frame"), and a connection
          // that no operation uses may stay idle for hours.
          if (n->extents == Node::Extents::kUnknown) StartFeatureProbe(*n);
          DispatchParked();
          const auto connected_at = Clock::now();
          co_await Reader(n, conn);
          CloseConn(*n, conn, "");
          // A connection that stayed up for a whole attempt timeout was a working session,
          // not a failed connect: the next dial comes after the shortest backoff. Otherwise a
          // node that accepts but cannot answer (cut off from its quorum, or frozen) gets
          // its connection closed every attempt timeout, and the backoff grew to its cap
          // (2 s): once the node could answer again the client was still waiting to dial
          // (the netns test saw 2 s from heal to serving).
          if (Clock::now() - connected_at >= options_.attempt_timeout) n->failures = 0;
        }
      }
      if (closing_) break;
      n->failures++;
      n->state = Node::State::kBackoff;
      n->backoff->expires_after(Backoff(n->failures));
      co_await n->backoff->async_wait(asio::redirect_error(use_awaitable, ec));
    }
    n->state = Node::State::kIdle;
  }

  void DispatchParked() {
    std::deque<std::uint64_t> parked;
    parked.swap(parked_);
    for (std::uint64_t id : parked) {
      auto it = active_.find(id);
      if (it != active_.end() && it->second->node < 0 && it->second->children_left == 0) {
        Dispatch(*it->second);
      }
    }
  }

  awaitable<void> Writer(Node* n, std::shared_ptr<Conn> c) {
    std::vector<std::shared_ptr<const Frame>> batch;
    std::vector<asio::const_buffer> buffers;
    while (c->open) {
      boost::system::error_code ec;
      if (c->queue.empty()) {
        co_await c->wake.async_wait(asio::redirect_error(use_awaitable, ec));
        continue;
      }
      batch.swap(c->queue);
      buffers.clear();
      for (const auto& f : batch) buffers.push_back(asio::buffer(*f));
      co_await asio::async_write(c->socket, buffers, asio::redirect_error(use_awaitable, ec));
      batch.clear();
      if (ec) {
        CloseConn(*n, c, "write failed: " + ErrorText(ec));
        break;
      }
    }
  }

  awaitable<void> Reader(Node* n, std::shared_ptr<Conn> c) {
    std::vector<std::uint8_t> buf(kReadBufferSize);
    std::size_t have = 0;
    while (c->open) {
      boost::system::error_code ec;
      std::size_t got =
          co_await c->socket.async_read_some(asio::buffer(buf.data() + have, buf.size() - have),
                                             asio::redirect_error(use_awaitable, ec));
      if (ec) {
        CloseConn(*n, c, ErrorText(ec));
        co_return;
      }
      have += got;
      std::size_t pos = 0;
      while (c->open && have - pos >= kFrameLengthSize) {
        std::span<const std::uint8_t, kFrameLengthSize> prefix(buf.data() + pos, kFrameLengthSize);
        Result<std::uint64_t> len = DecodeResponseFrameLength(prefix);
        if (!len.ok()) {
          ++bad_frames_;
          CloseConn(*n, c, "malformed response from the node: " + len.status().message());
          co_return;
        }
        if (have - pos < kFrameLengthSize + *len) break;
        std::span<const std::uint8_t> body(buf.data() + pos + kFrameLengthSize, *len);
        pos += kFrameLengthSize + *len;
        HandleFrame(*n, c, body);
      }
      if (pos > 0) {
        std::memmove(buf.data(), buf.data() + pos, have - pos);
        have -= pos;
      }
    }
  }

  void HandleFrame(Node& n, const std::shared_ptr<Conn>& c, std::span<const std::uint8_t> body) {
    Result<std::span<const std::uint8_t>> payload = VerifyFrameBody(body, mac_);
    if (!payload.ok()) {
      ++bad_frames_;
      std::string why = payload.status().code() == StatusCode::kAuthFailure
                            ? ExplainBadTag(body)
                            : "malformed response: " + payload.status().message();
      // Every op on this connection learns that this node fails verification.
      if (payload.status().code() == StatusCode::kAuthFailure) {
        for (std::uint64_t id : c->inflight) {
          auto it = active_.find(id);
          if (it == active_.end()) continue;
          auto& failed = it->second->auth_failed_nodes;
          if (std::find(failed.begin(), failed.end(), n.index) == failed.end()) {
            failed.push_back(n.index);
          }
        }
      }
      return CloseConn(n, c, why);
    }
    Result<ClientResponse> resp = DecodeClientResponse(*payload);
    if (!resp.ok()) {
      ++bad_frames_;
      return CloseConn(n, c, "malformed response: " + resp.status().message());
    }
    c->last_rx = Clock::now();
    n.failures = 0;
    n.timeouts_in_row = 0;
    auto it = active_.find(resp->request_id);
    if (it == active_.end()) return;  // a late answer to an op already finished
    Op& op = *it->second;
    if (resp->op != op.kind) {
      ++bad_frames_;
      return CloseConn(n, c,
                       "protocol error: the node answered a " +
                           std::string(op.kind == ClientOp::kRead ? "read" : "write") +
                           " request with a different kind of response");
    }
    if (op.children_left > 0) return;  // a late answer to an extent now run sector by sector
    // (This may be a late answer from an earlier attempt's node: as good as any other.)
    Rank by = n.endpoint.rank;
    switch (resp->status) {
      case ResponseStatus::kOk:
        if (IsExtentOp(op.kind)) return ExtentAnswered(op, n, *resp);
        return Finish(op, Status::Ok(), std::move(resp->data), by, std::move(resp->info));
      case ResponseStatus::kInvalidSectorIndex:
        return Finish(
            op, Status::InvalidArgument(n.endpoint.ToString() + " says sector " +
                                        std::to_string(op.sector) + " is outside the device"));
      case ResponseStatus::kAuthFailure:
        op.maybe_applied = false;  // refused: not executed
        return Finish(op, Status::AuthFailure(n.endpoint.ToString() +
                                              " rejected our request's HMAC tag: the "
                                              "client key does not match the cluster's"));
    }
  }

  // Closes a connection (idempotent) and fails its in-flight ops over. `c` is taken by value:
  // callers pass n.conn itself, which this resets.
  void CloseConn(Node& n, std::shared_ptr<Conn> c, const std::string& why) {
    if (!c->open) return;
    c->open = false;
    boost::system::error_code ignored;
    c->socket.shutdown(tcp::socket::shutdown_both, ignored);
    c->socket.close(ignored);
    c->wake.cancel();
    if (!closing_) ++drops_;
    std::string reason = n.endpoint.ToString() + ": " + (why.empty() ? "connection closed" : why);
    n.last_error = why.empty() ? "connection closed" : why;
    if (n.conn == c) {
      n.conn.reset();
      n.state = Node::State::kBackoff;
      --reachable_;
    }
    std::vector<std::uint64_t> ids(c->inflight.begin(), c->inflight.end());
    c->inflight.clear();
    c->queue.clear();
    std::sort(ids.begin(), ids.end());  // keep issue order for the retries
    for (std::uint64_t id : ids) {
      auto it = active_.find(id);
      if (it != active_.end() && it->second->node == n.index) AttemptFailed(*it->second, reason);
    }
  }

  // ---- Deadlines ----
  void ScheduleTick() {
    tick_.expires_after(kTickPeriod);
    tick_.async_wait([this](const boost::system::error_code& ec) {
      if (ec || closing_) return;
      Tick();
      ScheduleTick();
    });
  }

  void Tick() {
    auto now = Clock::now();
    for (auto& n : nodes_) {
      if (n->state == Node::State::kConnecting && now >= n->connect_deadline) {
        boost::system::error_code ignored;
        n->resolver->cancel();
        if (n->connecting) n->connecting->socket.close(ignored);
      }
    }
    std::vector<std::uint64_t> expired, slow;
    for (auto& [id, op] : active_) {
      if (now >= op->deadline) {
        // An extent run as single-sector children ends through them (they share its
        // deadline), with their status: theirs were the attempts.
        if (op->children_left == 0) expired.push_back(id);
      } else if (op->node >= 0 && now >= op->attempt_deadline) {
        slow.push_back(id);
      }
    }
    for (std::uint64_t id : expired) {
      auto it = active_.find(id);
      if (it != active_.end()) Finish(*it->second, DeadlineStatus(*it->second));
    }
    for (std::uint64_t id : slow) {
      auto it = active_.find(id);
      if (it == active_.end() || it->second->node < 0) continue;
      Op& op = *it->second;
      Node& n = *nodes_[op.node];
      if (n.demoted_until <= now) {
        // Demoted for 1x, 2x, 4x .. 16x the attempt timeout on consecutive episodes. The id
        // stays in the connection's in-flight set: a late answer still counts, and a node
        // that answers nothing at all gets its connection recycled below.
        n.demoted_until = now + options_.attempt_timeout * (1 << std::min(n.timeouts_in_row, 4));
        n.timeouts_in_row++;
      }
      AttemptFailed(op, n.endpoint.ToString() + " did not answer within " +
                            FormatDuration(options_.attempt_timeout));
    }
    // A connection with requests outstanding and no answer for a whole attempt timeout: the
    // node stopped answering; drop it so everything on it fails over at once.
    for (auto& n : nodes_) {
      auto c = n->conn;
      if (!c || c->inflight.empty()) continue;
      auto quiet_since = std::max(c->last_rx, c->busy_since);
      if (now - quiet_since >= options_.attempt_timeout) {
        CloseConn(*n, c,
                  "stopped answering: no response for " + FormatDuration(options_.attempt_timeout) +
                      " with " + Plural(c->inflight.size(), "request") + " outstanding");
      }
    }
    // Ops refused by every node in turn, due for their next round.
    if (!delayed_.empty()) {
      std::vector<std::pair<Clock::time_point, std::uint64_t>> due;
      due.swap(delayed_);
      for (const auto& [at, id] : due) {
        if (now < at) {
          delayed_.emplace_back(at, id);
          continue;
        }
        auto it = active_.find(id);
        if (it != active_.end() && it->second->node < 0 && it->second->children_left == 0) {
          Dispatch(*it->second);
        }
      }
    }
    // Queued ops whose whole budget went by while they waited for a slot.
    if (!pending_.empty() && now >= next_pending_scan_) {
      next_pending_scan_ = now + milliseconds(100);
      std::deque<std::unique_ptr<Op>> keep;
      for (auto& op : pending_) {
        if (now >= op->deadline) {
          Complete(*op, DeadlineStatus(*op));
        } else {
          keep.push_back(std::move(op));
        }
      }
      pending_.swap(keep);
    }
  }

  awaitable<void> ProbeNode(std::size_t index, ClientOp op, Clock::time_point deadline,
                            NodeInfo* out);

  ClientOptions options_;
  asio::io_context io_;
  Hmac mac_;  // io thread only
  asio::steady_timer tick_;
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  std::mt19937_64 rng_;
  std::vector<std::unique_ptr<Node>> nodes_;
  std::unordered_map<std::uint64_t, std::unique_ptr<Op>> active_;  // holding a slot
  std::deque<std::unique_ptr<Op>> pending_;                        // waiting for a slot
  std::deque<std::uint64_t> parked_;  // active ids waiting for any connection
  // Active ids refused by every node in turn (Refused), with when to try them again.
  std::vector<std::pair<Clock::time_point, std::uint64_t>> delayed_;
  std::uint64_t next_request_id_ = 1;
  bool loops_started_ = false;
  bool closing_ = false;  // io thread's view
  Clock::time_point next_pending_scan_;

  std::mutex submit_mu_;
  bool closed_ = false;  // guarded by submit_mu_
  std::once_flag close_once_;
  std::thread thread_;

  std::atomic<std::size_t> reachable_{0};
  std::atomic<std::uint64_t> ops_ok_{0}, ops_failed_{0}, retries_{0}, connects_{0}, drops_{0},
      bad_frames_{0};
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
      for (auto& op : pending_) Complete(*op, Status::Unavailable("client closed"));
      pending_.clear();
      std::vector<std::uint64_t> ids;
      for (auto& [id, op] : active_) ids.push_back(id);
      for (std::uint64_t id : ids) {
        auto it = active_.find(id);
        if (it != active_.end()) Finish(*it->second, Status::Unavailable("client closed"));
      }
      boost::system::error_code ignored;
      tick_.cancel();
      for (auto& n : nodes_) {
        n->resolver->cancel();
        n->backoff->cancel();
        if (n->connecting) n->connecting->socket.close(ignored);
        if (n->conn) CloseConn(*n, n->conn, "client closed");
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
  const Endpoint& ep = options_.nodes[index];
  out->endpoint = ep;
  // Shared with the watchdog's handler, which may run after this frame is gone.
  struct State {
    explicit State(asio::io_context& io) : resolver(io), socket(io), watchdog(io) {}
    tcp::resolver resolver;
    tcp::socket socket;
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
    st->socket.close(ignored);
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
    co_await asio::async_connect(st->socket, endpoints, asio::redirect_error(use_awaitable, ec));
    if (ec) error = why("cannot connect", ec);
    if (!ec) st->socket.set_option(tcp::no_delay(true), ec);
  }
  // kInfo is harmless to repeat (the fastest answer is the RTT); other admin ops go once.
  const int pings = op == ClientOp::kInfo ? kProbePings : 1;
  for (int ping = 0; error.empty() && ping < pings; ++ping) {
    ClientCommand cmd;
    cmd.request_id = next_request_id_++;
    cmd.op = op;
    Frame frame = EncodeFrame(cmd, mac_);
    auto t0 = Clock::now();
    co_await asio::async_write(st->socket, asio::buffer(frame),
                               asio::redirect_error(use_awaitable, ec));
    if (ec) {
      error = why("cannot send", ec);
      break;
    }
    std::array<std::uint8_t, kFrameLengthSize> prefix;
    co_await asio::async_read(st->socket, asio::buffer(prefix),
                              asio::redirect_error(use_awaitable, ec));
    if (ec == asio::error::eof) {
      error =
          "the node closed the connection instead of answering the info request (not an "
          "atomdisk node, or it rejects our frames)";
      break;
    }
    if (ec) {
      error = why("no answer", ec);
      break;
    }
    Result<std::uint64_t> len = DecodeResponseFrameLength(prefix);
    if (!len.ok()) {
      error = "malformed answer: " + len.status().message();
      break;
    }
    std::vector<std::uint8_t> body(*len);
    co_await asio::async_read(st->socket, asio::buffer(body),
                              asio::redirect_error(use_awaitable, ec));
    if (ec) {
      error = why("truncated answer", ec);
      break;
    }
    double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    Result<std::span<const std::uint8_t>> payload = VerifyFrameBody(body, mac_);
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
  boost::system::error_code ignored;
  st->socket.close(ignored);
}

std::vector<NodeInfo> ClientImpl::Admin(milliseconds timeout, ClientOp op) {
  ATOMDISK_CHECK(std::this_thread::get_id() != thread_.get_id());
  std::vector<NodeInfo> out(options_.nodes.size());
  for (std::size_t i = 0; i < out.size(); ++i) {
    out[i].endpoint = options_.nodes[i];
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

std::string Endpoint::Address() const {
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

std::string Endpoint::ToString() const {
  if (rank == 0) return Address();
  return "node " + std::to_string(rank) + " (" + Address() + ")";
}

std::string FormatDuration(milliseconds d) {
  auto ms = d.count();
  if (ms >= 1000 && ms % 1000 == 0) return std::to_string(ms / 1000) + " s";
  if (ms >= 1000) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f s", static_cast<double>(ms) / 1000.0);
    return buf;
  }
  return std::to_string(ms) + " ms";
}

Result<ClientOptions> OptionsFromConfig(const ClusterConfig& config,
                                        const std::vector<std::string>& node_args) {
  ClientOptions o;
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
