// The client library's decisions (client/core/client_core.h): operations, attempts, retries,
// failover, extents and their feature probes, deadlines. No Asio here: the adapter
// (client/net/client_asio.cc) and the simulator (tests/sim/) feed it.
#include "client/core/client_core.h"

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "common/status.h"

namespace atomdisk::client {

using std::chrono::milliseconds;

namespace {

// The back-off before a node whose feature probe went unanswered is probed again.
constexpr milliseconds kMinReprobe{30'000};
constexpr milliseconds kMaxReprobe{600'000};

std::string Plural(std::size_t n, const char* word) {
  return std::to_string(n) + " " + word + (n == 1 ? "" : "s");
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

struct ClientCore::Op {
  std::uint64_t id = 0;  // the request id on the wire; unique in this client
  ClientOp kind = ClientOp::kRead;
  SectorIdx sector = 0;
  SectorPtr data;
  bool retry_unknown_write = true;
  milliseconds timeout{0};
  Client::OpCallback done;
  Clock::time_point deadline;
  Clock::time_point attempt_deadline = Clock::time_point::max();
  std::shared_ptr<const Frame> frame;      // encoded on first send, re-sent as is on retries
  std::shared_ptr<const Frame> tls_frame;  // the same with a zero tag, for TLS connections
  int node = -1;                           // node of the current attempt; -1 while parked or queued
  int avoid_node = -1;  // the node whose attempt failed last: try another one first
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

// A node as the core sees it: its current connection's state (the world owns the socket),
// its standing (demotion, failures) and its features.
struct ClientCore::Node {
  int index = 0;
  Endpoint endpoint;
  bool connected = false;
  bool tls = false;                            // the current connection is TLS (OnConnected)
  std::unordered_set<std::uint64_t> inflight;  // op ids sent on this connection, unanswered
  Clock::time_point busy_since;                // when inflight last became non-empty
  Clock::time_point last_rx;                   // when the last valid response arrived
  Clock::time_point connected_at;
  Clock::time_point demoted_until;
  // Whether the node takes extent commands (its Info lists "extents"): asked with an Info on
  // each new connection. kNo also for a node that closed the connection instead of answering
  // (an atdd node: unknown op) or did not answer in time; such a node is asked again only on
  // a connection made after reprobe_at (each time it does not answer, twice as long later,
  // up to kMaxReprobe), since asking an atdd node costs a connection.
  enum class Extents { kUnknown, kProbing, kYes, kNo } extents = Extents::kUnknown;
  Clock::time_point reprobe_at;
  milliseconds reprobe_backoff{0};
  int failures = 0;         // consecutive connection failures without a good response
  int timeouts_in_row = 0;  // consecutive attempt timeouts
  std::string last_error;
};

ClientCore::ClientCore(ClientOptions options, ClientCoreEnv& env, std::uint64_t seed,
                       ClientCoreBugs bugs)
    : options_(std::move(options)),
      env_(env),
      bugs_(bugs),
      mac_(options_.client_key),
      rng_(seed),
      next_request_id_(FirstRequestId(seed)) {
  ATOMDISK_CHECK(!options_.nodes.empty());
  ATOMDISK_CHECK(options_.client_key.size() == kClientKeySize);
  ATOMDISK_CHECK(options_.max_inflight > 0);
  if (options_.cluster_nodes == 0) options_.cluster_nodes = options_.nodes.size();
  for (std::size_t i = 0; i < options_.nodes.size(); ++i) {
    auto n = std::make_unique<Node>();
    n->index = static_cast<int>(i);
    n->endpoint = options_.nodes[i];
    nodes_.push_back(std::move(n));
  }
}

ClientCore::~ClientCore() = default;

ClientStats ClientCore::Stats() const {
  ClientStats s;
  s.ops_ok = ops_ok_.load();
  s.ops_failed = ops_failed_.load();
  s.retries = retries_.load();
  s.connects = connects_.load();
  s.connection_drops = drops_.load();
  s.bad_frames = bad_frames_.load();
  return s;
}

// ---- Operations ----

void ClientCore::Submit(OpRequest request) {
  auto op = std::make_unique<Op>();
  op->kind = request.kind;
  op->sector = request.sector;
  op->count = request.count;
  op->sectors = std::move(request.sectors);
  if (request.kind == ClientOp::kRead || request.kind == ClientOp::kWrite) {
    op->single = true;
    op->count = 1;
    op->sectors.clear();
    if (request.kind == ClientOp::kWrite) {
      ATOMDISK_CHECK(request.data != nullptr);
      op->sectors.push_back(std::move(request.data));
    }
    op->kind = request.kind == ClientOp::kRead ? ClientOp::kReadExtent : ClientOp::kWriteExtent;
  }
  op->retry_unknown_write = request.retry_unknown_write;
  op->timeout = request.timeout.count() > 0 ? request.timeout : options_.op_timeout;
  op->deadline = request.submitted + op->timeout;
  op->done = std::move(request.done);
  Enqueue(std::move(op));
}

void ClientCore::Enqueue(std::unique_ptr<Op> op) {
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
  if (!connecting_started_) {
    connecting_started_ = true;
    env_.StartConnecting();
  }
  pending_.push_back(std::move(op));
  StartPending();
}

void ClientCore::StartPending() {
  while (active_.size() < options_.max_inflight && !pending_.empty()) {
    std::unique_ptr<Op> op = std::move(pending_.front());
    pending_.pop_front();
    if (env_.Now() >= op->deadline) {
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
void ClientCore::Dispatch(Op& op) {
  if (op.probe_node >= 0) {
    Node& n = *nodes_[op.probe_node];
    if (!n.connected) return AttemptFailed(op, "connection lost");
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
void ClientCore::StartFeatureProbe(Node& n) {
  n.extents = Node::Extents::kProbing;
  auto op = std::make_unique<Op>();
  op->kind = ClientOp::kInfo;
  op->internal = true;
  op->probe_node = n.index;
  op->timeout = options_.attempt_timeout;
  op->deadline = env_.Now() + op->timeout;
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
    node.extents = yes ? Node::Extents::kYes : Node::Extents::kNo;
    if (r.status.ok()) {
      // An answer, with or without extents: asked again on its next connection (an upgrade).
      node.reprobe_at = Clock::time_point::min();
      node.reprobe_backoff = milliseconds(0);
    } else {
      // No answer (an atdd node closes the connection on an unknown op; or a node that
      // restarted or was slow just then): single-sector commands for this node, and a new
      // probe only on a connection made after the back-off. Before, one lost probe kept a
      // client off extents for its whole life.
      node.reprobe_backoff = std::clamp(node.reprobe_backoff * 2, kMinReprobe, kMaxReprobe);
      node.reprobe_at = env_.Now() + node.reprobe_backoff;
    }
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
void ClientCore::RunAsSingles(Op& op, const std::vector<std::uint32_t>& which, int avoid) {
  ATOMDISK_CHECK(!which.empty());
  op.node = -1;
  op.attempt_deadline = Clock::time_point::max();
  for (auto& n : nodes_) n->inflight.erase(op.id);
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

void ClientCore::ChildDone(std::uint64_t parent, std::uint32_t index, OpResult r) {
  auto it = active_.find(parent);
  if (it == active_.end()) return;  // the extent already ended (its deadline, Shutdown)
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
void ClientCore::ExtentAnswered(Op& op, Node& n, ClientResponse& resp) {
  if (resp.outcomes.size() != op.count ||
      (op.kind == ClientOp::kReadExtent && resp.sectors.size() != op.count)) {
    ++bad_frames_;
    return CloseConn(n,
                     "protocol error: an extent of " + std::to_string(op.count) +
                         " sectors answered with " + std::to_string(resp.outcomes.size()) +
                         " outcomes",
                     true);
  }
  std::vector<std::uint32_t> not_done;
  if (op.kind == ClientOp::kReadExtent) op.read = std::move(resp.sectors);
  for (std::uint32_t i = 0; i < op.count; ++i) {
    if (resp.outcomes[i] != ExtentOutcome::kDone) not_done.push_back(i);
  }
#ifdef ATOMDISK_SIM_BUGS
  if (bugs_.not_done_as_done && op.kind != ClientOp::kReadExtent) not_done.clear();
#endif
  if (not_done.empty()) return Finish(op, Status::Ok(), nullptr, n.endpoint.rank);
  if (not_done.size() == op.count) return Refused(op, n);
  RunAsSingles(op, not_done, n.index);
}

// `n` ran none of the extent's sectors: it reaches no quorum (docs/PROTOCOL.md, "No quorum
// here"), or it cannot read any of them. Nothing was written by this attempt, so the extent
// moves whole to another node at once, and `n` is demoted for an attempt timeout, so that
// the next operations go elsewhere first. Once every node has refused it in turn, the next
// round waits 20 ms, doubling up to 320 ms, until the deadline.
void ClientCore::Refused(Op& op, Node& n) {
  if (op.node != n.index) return;  // a late answer to an earlier attempt: the current goes on
  for (auto& node : nodes_) node->inflight.erase(op.id);
  const auto now = env_.Now();
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
int ClientCore::PickNode(const Op& op) const {
  auto now = env_.Now();
  int best = -1;
  int best_score = 0;
  for (const auto& n : nodes_) {
    if (!n->connected) continue;
    int score = (n->demoted_until > now ? 2 : 0) + (n->index == op.avoid_node ? 1 : 0);
    if (best < 0 || score < best_score) {
      best = n->index;
      best_score = score;
    }
  }
  return best;
}

void ClientCore::Send(Op& op, Node& n) {
  std::shared_ptr<const Frame>& frame = n.tls ? op.tls_frame : op.frame;
  if (!frame) {
    ClientCommand cmd;
    cmd.request_id = op.id;
    cmd.sector = op.sector;
    cmd.op = op.kind;
    cmd.data = op.data;
    cmd.count = op.count;
    cmd.sectors = op.sectors;
    frame = std::make_shared<const Frame>(EncodeFrame(cmd, MacFor(mac_, n.tls)));
  }
  // An extent's single-sector children count (one of them may be a lone Read or Write
  // that went as an extent of one to a node without extents); feature probes do not.
  if (op.attempts > 0 && (!op.internal || op.parent != 0)) ++retries_;
  op.attempts++;
  op.node = n.index;
  const auto now = env_.Now();
  op.attempt_deadline = now + options_.attempt_timeout;
  op.maybe_applied_before = op.maybe_applied;
  op.last_refused = false;
  if (IsWriteOp(op.kind)) op.maybe_applied = true;
  if (n.inflight.empty()) n.busy_since = now;
  n.inflight.insert(op.id);
  env_.SendFrame(n.index, frame);
}

// The current attempt of `op` failed without an answer (connection lost, no answer in
// time, bad frame). Retries it on another node unless it is a write that must not be.
void ClientCore::AttemptFailed(Op& op, const std::string& why) {
  op.last_error = why;
  op.last_refused = false;
  op.avoid_node = op.node;
  op.node = -1;
  op.attempt_deadline = Clock::time_point::max();
  if (closing_) return Finish(op, Status::Unavailable("client closed"));
  if (op.probe_node >= 0) return Finish(op, Status::Unavailable(why));
  bool retry = op.retry_unknown_write;
#ifdef ATOMDISK_SIM_BUGS
  if (bugs_.retry_unknown_write) retry = true;
#endif
  if (IsWriteOp(op.kind) && !retry) {
    return Finish(op, Status::Unavailable("the write's outcome is unknown: " + why));
  }
  if (!op.auth_failed_nodes.empty() && op.auth_failed_nodes.size() >= nodes_.size()) {
    return Finish(op, Status::AuthFailure(why));
  }
  Dispatch(op);
}

// Removes an active op, completes it, and lets a queued one in.
void ClientCore::Finish(Op& op, Status status, SectorPtr data, Rank by, std::string info) {
  auto it = active_.find(op.id);
  ATOMDISK_CHECK(it != active_.end());
  std::unique_ptr<Op> owned = std::move(it->second);
  active_.erase(it);
  // Earlier attempts may have left the id on other connections too.
  for (auto& n : nodes_) n->inflight.erase(owned->id);
  Complete(*owned, std::move(status), std::move(data), by, std::move(info));
  StartPending();
}

// Runs the callback (posted, so it never runs inside the core's own calls).
void ClientCore::Complete(Op& op, Status status, SectorPtr data, Rank by, std::string info) {
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
#ifdef ATOMDISK_SIM_BUGS
    // The bug's retries are not reported: the caller believes the write was sent once.
    if (bugs_.retry_unknown_write && !op.retry_unknown_write) r.maybe_applied = true;
#endif
  }
  r.status = std::move(status);
  env_.Post([done = std::move(op.done), r = std::move(r)]() mutable { done(std::move(r)); });
}

// Why an op whose deadline passed failed.
Status ClientCore::DeadlineStatus(const Op& op) const {
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

milliseconds ClientCore::Backoff(int failures) {
  auto d = options_.reconnect_backoff_min;
  for (int i = 1; i < failures && d < options_.reconnect_backoff_max; ++i) d *= 2;
  d = std::min(d, options_.reconnect_backoff_max);
  std::uniform_int_distribution<long> jitter(-d.count() / 4, d.count() / 4);
  return milliseconds(std::max<long>(1, d.count() + jitter(rng_)));
}

void ClientCore::OnConnected(int node, bool tls) {
  Node& n = *nodes_[node];
  ATOMDISK_CHECK(!n.connected);
  const auto now = env_.Now();
  n.connected = true;
  n.tls = tls;
  n.connected_at = now;
  n.last_rx = now;
  n.inflight.clear();
  // A new connection may be a new version of the node (a rolling upgrade or downgrade): it is
  // asked again before the next extent, unless its last probe went unanswered within the
  // back-off (see Node::reprobe_at).
  if (n.extents != Node::Extents::kNo || now >= n.reprobe_at) n.extents = Node::Extents::kUnknown;
  n.last_error.clear();
  ++reachable_;  // CloseConn takes it back
  ++connects_;
  if (closing_) return CloseConn(n, "client closed", true);
  // Asked at once, not when an extent first needs the node: the Info is also this
  // connection's first authenticated frame, which a node wants within seconds of the
  // connect (docs/PROTOCOL.md, "What every node does with a frame"), and a connection that no
  // operation uses may stay idle for hours.
  if (n.extents == Node::Extents::kUnknown) StartFeatureProbe(n);
  DispatchParked();
}

milliseconds ClientCore::OnDialFailed(int node, const std::string& why) {
  Node& n = *nodes_[node];
  n.last_error = why;
  n.failures++;
  return Backoff(n.failures);
}

void ClientCore::OnConnectionLost(int node, const std::string& why) {
  CloseConn(*nodes_[node], why, false);
}

milliseconds ClientCore::NextDialDelay(int node) {
  Node& n = *nodes_[node];
  // A connection that stayed up for a whole attempt timeout was a working session, not a
  // failed connect: the next dial comes after the shortest backoff. Otherwise a node that
  // accepts but cannot answer (cut off from its quorum, or frozen) gets its connection
  // closed every attempt timeout, and the backoff grew to its cap (2 s): once the node could
  // answer again the client was still waiting to dial (the netns test saw 2 s from heal to
  // serving).
  if (env_.Now() - n.connected_at >= options_.attempt_timeout) n.failures = 0;
  n.failures++;
  return Backoff(n.failures);
}

void ClientCore::DispatchParked() {
  std::deque<std::uint64_t> parked;
  parked.swap(parked_);
  for (std::uint64_t id : parked) {
    auto it = active_.find(id);
    if (it != active_.end() && it->second->node < 0 && it->second->children_left == 0) {
      Dispatch(*it->second);
    }
  }
}

void ClientCore::OnMalformedStream(int node, const std::string& why) {
  Node& n = *nodes_[node];
  if (!n.connected) return;
  ++bad_frames_;
  CloseConn(n, "malformed response from the node: " + why, true);
}

void ClientCore::OnFrameBody(int node, std::span<const std::uint8_t> body) {
  Node& n = *nodes_[node];
  if (!n.connected) return;
  Result<std::span<const std::uint8_t>> payload = VerifyFrameBodyOn(body, mac_, n.tls);
  if (!payload.ok()) {
    ++bad_frames_;
    std::string why = payload.status().code() == StatusCode::kAuthFailure
                          ? ExplainBadTag(body)
                          : "malformed response: " + payload.status().message();
    // Every op on this connection learns that this node fails verification.
    if (payload.status().code() == StatusCode::kAuthFailure) {
      for (std::uint64_t id : n.inflight) {
        auto it = active_.find(id);
        if (it == active_.end()) continue;
        auto& failed = it->second->auth_failed_nodes;
        if (std::find(failed.begin(), failed.end(), n.index) == failed.end()) {
          failed.push_back(n.index);
        }
      }
    }
    return CloseConn(n, why, true);
  }
  Result<ClientResponse> resp = DecodeClientResponse(*payload);
  if (!resp.ok()) {
    ++bad_frames_;
    return CloseConn(n, "malformed response: " + resp.status().message(), true);
  }
  n.last_rx = env_.Now();
  n.failures = 0;
  n.timeouts_in_row = 0;
  auto it = active_.find(resp->request_id);
  if (it == active_.end()) return;  // a late answer to an op already finished
  Op& op = *it->second;
  if (resp->op != op.kind) {
    ++bad_frames_;
    return CloseConn(n,
                     "protocol error: the node answered a " +
                         std::string(op.kind == ClientOp::kRead ? "read" : "write") +
                         " request with a different kind of response",
                     true);
  }
  if (op.children_left > 0) return;  // a late answer to an extent now run sector by sector
  // (This may be a late answer from an earlier attempt's node: as good as any other.)
  Rank by = n.endpoint.rank;
  switch (resp->status) {
    case ResponseStatus::kOk:
      if (IsExtentOp(op.kind)) return ExtentAnswered(op, n, *resp);
      return Finish(op, Status::Ok(), std::move(resp->data), by, std::move(resp->info));
    case ResponseStatus::kInvalidSectorIndex:
      return Finish(op,
                    Status::InvalidArgument(n.endpoint.ToString() + " says sector " +
                                            std::to_string(op.sector) + " is outside the device"));
    case ResponseStatus::kAuthFailure:
      op.maybe_applied = false;  // refused: not executed
      return Finish(op, Status::AuthFailure(n.endpoint.ToString() +
                                            " rejected our request's HMAC tag: the "
                                            "client key does not match the cluster's"));
  }
}

void ClientCore::CloseConn(Node& n, const std::string& why, bool tell_world) {
  if (!n.connected) return;
  n.connected = false;
  if (tell_world) env_.CloseConnection(n.index);
  if (!closing_) ++drops_;
  std::string reason = n.endpoint.ToString() + ": " + (why.empty() ? "connection closed" : why);
  n.last_error = why.empty() ? "connection closed" : why;
  --reachable_;
  std::vector<std::uint64_t> ids(n.inflight.begin(), n.inflight.end());
  n.inflight.clear();
  std::sort(ids.begin(), ids.end());  // keep issue order for the retries
  for (std::uint64_t id : ids) {
    auto it = active_.find(id);
    if (it != active_.end() && it->second->node == n.index) AttemptFailed(*it->second, reason);
  }
}

// ---- Deadlines ----

void ClientCore::Tick() {
  if (closing_) return;
  auto now = env_.Now();
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
  // In id order, so that a simulated run replays the same way.
  std::sort(expired.begin(), expired.end());
  std::sort(slow.begin(), slow.end());
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
    if (!n->connected || n->inflight.empty()) continue;
    auto quiet_since = std::max(n->last_rx, n->busy_since);
    if (now - quiet_since >= options_.attempt_timeout) {
      CloseConn(*n,
                "stopped answering: no response for " + FormatDuration(options_.attempt_timeout) +
                    " with " + Plural(n->inflight.size(), "request") + " outstanding",
                true);
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

void ClientCore::Shutdown() {
  if (closing_) return;
  closing_ = true;
  for (auto& op : pending_) Complete(*op, Status::Unavailable("client closed"));
  pending_.clear();
  std::vector<std::uint64_t> ids;
  for (auto& [id, op] : active_) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  for (std::uint64_t id : ids) {
    auto it = active_.find(id);
    if (it != active_.end()) Finish(*it->second, Status::Unavailable("client closed"));
  }
  for (auto& n : nodes_) CloseConn(*n, "client closed", true);
}

}  // namespace atomdisk::client
