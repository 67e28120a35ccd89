// ClientCore: everything the client library decides, with no socket, timer, thread or clock of
// its own. It holds the operations (a FIFO waiting for an in-flight slot, the active ones with
// their deadlines), picks a node for each attempt, encodes and signs the request frames,
// verifies and matches the responses, retries and fails over (docs/CLIENT.md), runs extents
// whole or sector by sector, and probes each connection for the "extents" feature.
//
// Who drives it: the client library's Asio adapter (client/net/client_asio.cc), which owns the
// sockets, the reconnect loops, the 10 ms tick and the thread, and feeds connection events and
// frame bodies in; and the deterministic simulator (tests/sim/), whose simulated clients are this
// same core over a simulated network and clock (docs/SIMULATION.md). Nothing the client
// decides exists only in one of them.
//
// Threading: one thread makes every call (the client's io thread, or the simulator's). The
// operation callbacks run through ClientCoreEnv::Post, never inside a core call.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "client/client.h"
#include "common/hmac.h"
#include "common/request_id.h"
#include "common/wire.h"

namespace atomdisk::client {

using Clock = std::chrono::steady_clock;

// What the core needs from its world. Every call is made on the core's thread.
class ClientCoreEnv {
 public:
  virtual ~ClientCoreEnv() = default;
  virtual Clock::time_point Now() = 0;
  // Starts connecting to every node (once, at the first operation); the world then reports
  // OnConnected / OnDialFailed / OnConnectionLost and redials after NextDialDelay.
  virtual void StartConnecting() = 0;
  // Queues a frame on node `node`'s current connection (one the core was told is up).
  virtual void SendFrame(int node, std::shared_ptr<const Frame> frame) = 0;
  // Closes node `node`'s current connection; no OnConnectionLost follows for it.
  virtual void CloseConnection(int node) = 0;
  // Runs `fn` later on the core's thread (operation callbacks).
  virtual void Post(std::function<void()> fn) = 0;
};

// Deliberate mistakes for the simulator's catalogue (tests/sim/, docs/SIMULATION.md), honoured
// only by the build with ATOMDISK_SIM_BUGS (atomdisk_client_core_sim, linked by atomdisk-sim,
// never by a program users run).
struct ClientCoreBugs {
  // A write whose outcome is unknown is retried on another node although the caller asked
  // not to (OpOptions::retry_unknown_write = false), and reported as if sent once.
  bool retry_unknown_write = false;
  // A write extent answered with some or all sectors "not done" is reported written.
  bool not_done_as_done = false;
};

// One operation as the adapter hands it in (validated: kRead, kWrite or an extent op with a
// count in 1..kMaxExtentSectors). A lone kRead or kWrite goes as an extent of one sector to
// nodes that take extents (docs/CLIENT.md, "Fast failover"), as the atdd command to others.
struct OpRequest {
  ClientOp kind = ClientOp::kRead;
  SectorIdx sector = 0;
  SectorPtr data;                  // kWrite: the sector (not null)
  std::uint32_t count = 0;         // extent ops: the run's length
  std::vector<SectorPtr> sectors;  // write extents: one per sector (none null)
  bool retry_unknown_write = true;
  std::chrono::milliseconds timeout{0};  // 0: ClientOptions::op_timeout
  Clock::time_point submitted;           // the deadline counts from here
  Client::OpCallback done;
};

class ClientCore {
 public:
  // `seed` feeds the reconnect jitter and picks the first request id (common/request_id.h): give
  // each client a fresh random one (client_asio.cc draws 64 bits from OpenSSL's RAND_bytes), so
  // that no two sessions share request ids and a response recorded from one is never taken as the
  // answer to a request of another (README, "Security model").
  ClientCore(ClientOptions options, ClientCoreEnv& env, std::uint64_t seed,
             ClientCoreBugs bugs = {});
  ClientCore(const ClientCore&) = delete;
  ClientCore& operator=(const ClientCore&) = delete;
  ~ClientCore();

  const ClientOptions& options() const { return options_; }

  // A new operation. Completes at once (through Post) when the core is shut down or the
  // sectors lie outside the device.
  void Submit(OpRequest request);

  // The world's events about node `node`'s connection.
  // `tls`: the connection is TLS with a verified node certificate, so frames on it carry a
  // zero tag instead of an HMAC (docs/TLS.md, "No HMAC inside TLS").
  void OnConnected(int node, bool tls = false);
  // A dial (resolve or connect) failed; returns how long to wait before the next one.
  std::chrono::milliseconds OnDialFailed(int node, const std::string& why);
  // The current connection dropped (`why` says how; empty: closed).
  void OnConnectionLost(int node, const std::string& why);
  // How long to wait before redialling after the connection dropped.
  std::chrono::milliseconds NextDialDelay(int node);
  // One whole response frame's body (after its length prefix) on the current connection.
  void OnFrameBody(int node, std::span<const std::uint8_t> body);
  // The byte stream on the current connection is not frames (a bad length prefix).
  void OnMalformedStream(int node, const std::string& why);

  // Deadlines, slow nodes, silent connections, delayed retries: every 10 ms or so.
  void Tick();
  static constexpr std::chrono::milliseconds kTickPeriod{10};

  // Fails every operation with Unavailable("client closed") and closes every connection.
  // Operations submitted afterwards fail at once.
  void Shutdown();
  bool shut_down() const { return closing_; }

  // Any thread.
  std::size_t ReachableNodes() const { return reachable_.load(); }
  ClientStats Stats() const;
  // Operations holding a slot or waiting for one (the core's thread).
  std::size_t OpsOutstanding() const { return active_.size() + pending_.size(); }

 private:
  struct Op;
  struct Node;

  void Enqueue(std::unique_ptr<Op> op);
  void StartPending();
  void Dispatch(Op& op);
  void StartFeatureProbe(Node& n);
  void RunAsSingles(Op& op, const std::vector<std::uint32_t>& which, int avoid);
  void ChildDone(std::uint64_t parent, std::uint32_t index, OpResult r);
  void ExtentAnswered(Op& op, Node& n, ClientResponse& resp);
  void Refused(Op& op, Node& n);
  int PickNode(const Op& op) const;
  void Send(Op& op, Node& n);
  void AttemptFailed(Op& op, const std::string& why);
  void Finish(Op& op, Status status, SectorPtr data = nullptr, Rank by = 0, std::string info = {});
  void Complete(Op& op, Status status, SectorPtr data = nullptr, Rank by = 0,
                std::string info = {});
  Status DeadlineStatus(const Op& op) const;
  std::chrono::milliseconds Backoff(int failures);
  void DispatchParked();
  // Closes node n's current connection, if it has one, and fails its in-flight ops over;
  // `tell_world`: ask the world to close it too (not when the world reported it lost).
  void CloseConn(Node& n, const std::string& why, bool tell_world);

  ClientOptions options_;
  ClientCoreEnv& env_;
  ClientCoreBugs bugs_;
  Hmac mac_;
  std::mt19937_64 rng_;
  std::vector<std::unique_ptr<Node>> nodes_;
  std::unordered_map<std::uint64_t, std::unique_ptr<Op>> active_;  // holding a slot
  std::deque<std::unique_ptr<Op>> pending_;                        // waiting for a slot
  std::deque<std::uint64_t> parked_;  // active ids waiting for any connection
  // Active ids refused by every node in turn (Refused), with when to try them again.
  std::vector<std::pair<Clock::time_point, std::uint64_t>> delayed_;
  std::uint64_t next_request_id_;
  bool connecting_started_ = false;
  bool closing_ = false;
  Clock::time_point next_pending_scan_;

  std::atomic<std::size_t> reachable_{0};
  std::atomic<std::uint64_t> ops_ok_{0}, ops_failed_{0}, retries_{0}, connects_{0}, drops_{0},
      bad_frames_{0};
};

// The error text for a response whose tag did not verify with our key (read leniently, only
// to explain the failure); shared with the adapter's probes.
std::string ExplainBadTag(std::span<const std::uint8_t> body);

}  // namespace atomdisk::client
