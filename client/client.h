// atomdisk client library: asynchronous sector reads and writes against a cluster.
//
// A Client owns one Asio io_context and one thread that runs it. It keeps a connection to
// each node it may use, pipelines many requests per connection (request ids, responses
// matched in any order), bounds how many operations are in flight (callers of the
// asynchronous calls are never blocked; excess operations wait in a queue inside), and gives
// every operation a deadline. When a connection drops or a node does not answer within the
// attempt timeout, the operation is retried on the next node.
//
// Retry semantics (docs/CLIENT.md "Retries and concurrent writers"): a read is simply
// retried. A write whose outcome is unknown (the node died or went silent after receiving
// it) is retried on another node with the same data; the register then may apply that write
// twice, which is harmless for the writer but means a concurrent writer's value to the same
// sector written between the two applications can be overwritten by the retry: the write is
// still linearizable as one write that took effect at the retry. If the deadline passes, the
// callback gets Timeout and the write may or may not have taken effect. Callers that must
// know (a linearizability history, a compare-and-swap built on top) use WriteWith() with
// OpOptions::retry_unknown_write = false and read OpResult::maybe_applied.
//
// Connections: the first operation (or Probe) starts one connection loop per node; each
// loop connects (TCP_NODELAY), runs one reader and one writer coroutine (the writer gathers
// every queued frame into one scatter/gather write), and after the connection drops
// reconnects with exponential backoff (ClientOptions::reconnect_backoff_*) until Close().
// Every response's HMAC tag is verified; a bad tag or malformed bytes close that connection
// and its in-flight operations fail over. A node that leaves requests unanswered for the
// attempt timeout is demoted: new operations prefer other nodes for a while.
//
// Thread-safety: every public method may be called from any thread. Callbacks run on the
// client's own thread; they must not block (post elsewhere for blocking work) but may issue
// further operations. Close(), Probe() and the *Sync calls must not be called from a
// callback (they would wait for the thread they run on; that is checked and aborts).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/status.h"
#include "common/types.h"
#include "common/wire.h"

namespace atomdisk {
class TlsContext;  // common/tls_context.h (the client core never touches it)
}  // namespace atomdisk

namespace atomdisk::client {

struct Endpoint {
  std::string host;
  std::uint16_t port = 0;
  Rank rank = 0;  // 0 when given as HOST:PORT that the config does not name
  // "node 2 (127.0.0.1:7002)", or "127.0.0.1:7002" when the rank is unknown.
  std::string ToString() const;
  // "127.0.0.1:7002" ("[::1]:7002" for IPv6).
  std::string Address() const;
};

struct ClientOptions {
  // TLS towards the nodes (docs/TLS.md); null: frames in clear, HMAC-signed (tls = "off").
  std::shared_ptr<TlsContext> tls;
  // tls = "accept": a node whose handshake fails is dialled in clear next (an older binary
  // during a rolling upgrade), and with TLS again after that connection ends.
  bool tls_fallback = false;
  std::vector<Endpoint> nodes;           // tried in this order; the first is the preferred node
  std::vector<std::uint8_t> client_key;  // 32 bytes
  std::uint64_t sectors = 0;
  // The whole budget of one operation, from the call to the callback, across retries on
  // other nodes (time spent waiting for an in-flight slot counts too).
  std::chrono::milliseconds op_timeout{5000};
  // How long one node may take before the operation is retried elsewhere. Also the connect
  // timeout.
  std::chrono::milliseconds attempt_timeout{1500};
  // Operations on the wire at once; more wait in the client's queue.
  std::size_t max_inflight = 512;
  // Reconnect delay after a failed or dropped connection: doubles per consecutive failure
  // from min to max (with +-25% jitter); reset by a good response.
  std::chrono::milliseconds reconnect_backoff_min{50};
  std::chrono::milliseconds reconnect_backoff_max{2000};
  // Nodes in the whole cluster, for error messages ("1 of 3 nodes reachable") and the
  // no-quorum diagnosis; 0 means nodes.size().
  std::size_t cluster_nodes = 0;
};

// Builds options from a loaded cluster config and the --node selections ("RANK" or
// "HOST:PORT", empty = every node of the config in rank order). InvalidArgument for a rank
// the config does not have or a malformed address.
Result<ClientOptions> OptionsFromConfig(const ClusterConfig& config,
                                        const std::vector<std::string>& node_args);

struct NodeInfo {
  Endpoint endpoint;
  bool reachable = false;
  double rtt_ms = 0;      // the fastest of a few kInfo round trips
  std::string info_json;  // the node's kInfo answer (version, rank, counters)
  std::string error;      // why it is unreachable
  // The node answered, but with AuthFailure or with a tag that does not verify with our
  // client key: the key does not match the cluster's (a configuration error, not an outage).
  bool key_rejected = false;
};

// Per-operation settings for ReadWith / WriteWith.
struct OpOptions {
  // This operation's whole budget; 0 means ClientOptions::op_timeout.
  std::chrono::milliseconds timeout{0};
  // Whether a write whose outcome is unknown (sent to a node that then dropped the
  // connection or did not answer in time) is retried on another node, as Write() does. When
  // false, such a write completes at once with a Timeout or Unavailable status and
  // maybe_applied = true, and the caller decides (e.g. a benchmark that records every
  // attempt as its own operation in a linearizability history).
  bool retry_unknown_write = true;
};

// How an operation ended.
struct OpResult {
  Status status;
  SectorPtr data;  // reads with an OK status: the sector's 4096 bytes
  // For a write that did not succeed: true if it may have taken effect (it reached a node
  // whose answer never came), false if it certainly did not (it never left the client, or
  // every node that got it refused it). Always false for reads and for OK writes.
  bool maybe_applied = false;
  int attempts = 0;      // how many times it was sent (to one node or another)
  Rank answered_by = 0;  // rank of the node whose answer completed it (0: none or unknown)
  // Extent reads with an OK status: each sector's 4096 bytes, in order.
  std::vector<SectorPtr> sectors;
  // An Info answer's JSON (the client's own feature probes); empty otherwise.
  std::string info;
};

// Counters since Create(); a consistent-enough snapshot for reporting.
struct ClientStats {
  std::uint64_t ops_ok = 0;
  std::uint64_t ops_failed = 0;
  std::uint64_t retries = 0;           // attempts beyond each operation's first
  std::uint64_t connects = 0;          // successful connections made
  std::uint64_t connection_drops = 0;  // connections closed by errors or the peer
  std::uint64_t bad_frames = 0;        // responses with a bad tag or malformed bytes
};

class Client {
 public:
  using ReadCallback = std::function<void(Result<SectorPtr>)>;
  using WriteCallback = std::function<void(Status)>;
  using OpCallback = std::function<void(OpResult)>;

  // Starts the client thread. Connections are made lazily on first use. Aborts on options
  // only a bug can produce (no nodes, a key that is not 32 bytes, max_inflight 0); validate
  // user input with OptionsFromConfig first.
  static std::unique_ptr<Client> Create(ClientOptions options);
  virtual ~Client() = default;

  // Asynchronous operations. Errors: InvalidArgument (sector out of range, reported by the
  // client or the node), AuthFailure (the node rejected our key, or no node's answers carry
  // a tag that verifies with it), Timeout ("no quorum: the operation did not finish within
  // 5 s; 1 of 3 nodes reachable"), Unavailable (no node could be reached before the
  // deadline, or the client was closed). A write's `data` must not be null (a bug: checked,
  // aborts).
  virtual void Read(SectorIdx sector, ReadCallback done) = 0;
  virtual void Write(SectorIdx sector, SectorPtr data, WriteCallback done) = 0;

  // The same with per-operation options and a fuller result. The defaults here forward to
  // Read/Write (so test doubles need not implement them); the real client overrides them.
  virtual void ReadWith(SectorIdx sector, const OpOptions& options, OpCallback done);
  virtual void WriteWith(SectorIdx sector, SectorPtr data, const OpOptions& options,
                         OpCallback done);

  // Extents: `count` (1..kMaxExtentSectors) consecutive sectors from `first` in one
  // operation. Against nodes that list "extents" in their Info (docs/PROTOCOL.md, "Extents")
  // each is one command; against older nodes, and for the sectors a node reports not done,
  // the client runs one single-sector operation per sector instead. Each sector is atomic
  // on its own; the extent is not atomic as a whole: a failed write extent may have written
  // any subset of its sectors (maybe_applied says whether any may have been). The status is
  // OK only if every sector was read or written; InvalidArgument for a count outside
  // 1..kMaxExtentSectors or a run that does not lie inside the device. For WriteExtentWith,
  // `data` holds one sector per entry (none null: a bug, checked); WriteZerosWith writes
  // zeros without sending any. The defaults run single-sector operations (for test doubles).
  virtual void ReadExtentWith(SectorIdx first, std::uint32_t count, const OpOptions& options,
                              OpCallback done);
  virtual void WriteExtentWith(SectorIdx first, std::vector<SectorPtr> data,
                               const OpOptions& options, OpCallback done);
  virtual void WriteZerosWith(SectorIdx first, std::uint32_t count, const OpOptions& options,
                              OpCallback done);

  // Blocking conveniences (must not be called from a callback).
  Result<SectorPtr> ReadSync(SectorIdx sector);
  Status WriteSync(SectorIdx sector, SectorPtr data);

  // Asks every configured node for its kInfo on a fresh connection of its own, with this
  // timeout for the whole probe; blocking. Never fails as a whole: each NodeInfo says.
  virtual std::vector<NodeInfo> Probe(std::chrono::milliseconds timeout) = 0;
  // Like Probe, but sends one admin request `op` (ClientOp::kScrub: start a scrub) to every
  // configured node; info_json holds each node's answer. Clients without admin support
  // report every node unreachable.
  virtual std::vector<NodeInfo> Admin(std::chrono::milliseconds timeout, ClientOp op) {
    (void)timeout;
    std::vector<NodeInfo> out;
    for (std::size_t i = 0; i < ConfiguredNodes(); ++i) {
      out.emplace_back().error = "admin requests are not supported by this client";
    }
    (void)op;
    return out;
  }

  // Nodes currently connected (for error messages and status).
  virtual std::size_t ReachableNodes() const = 0;
  virtual std::size_t ConfiguredNodes() const = 0;
  virtual ClientStats Stats() const { return {}; }

  // Fails every pending operation with Unavailable("client closed"), closes connections and
  // joins the thread. Idempotent; the destructor calls it. Operations issued afterwards fail
  // at once (their callback runs on the caller's thread) with the same status.
  virtual void Close() = 0;
};

// "5 s", "1.5 s", "300 ms": how the client spells durations in its messages.
std::string FormatDuration(std::chrono::milliseconds d);

}  // namespace atomdisk::client
