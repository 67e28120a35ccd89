// NodeServer: the Asio adapter around one node's NodeCore (daemon/core/node_core.h). It owns
// what the core must not: the listening socket and the accepted connections, the outgoing
// peer links, the 10 ms tick timer and the clocks. It checks frames before the core sees
// them (system and sync frames are verified with the system key and decoded here; client
// frames go to the core whole) and encodes what the core sends to peers.
//
// Threading: everything runs on the io_context's single thread, except the store's sync
// thread, whose completions the core posts back to it (Post).
#pragma once

#include <boost/asio.hpp>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/config.h"
#include "common/hmac.h"
#include "daemon/core/node_core.h"
#include "daemon/net/connection.h"
#include "daemon/net/peer_link.h"

namespace atomdisk {

class NodeServer final : public FrameSink, public NodeCoreEnv {
 public:
  NodeServer(boost::asio::io_context& io, ClusterConfig config, Rank self,
             std::unique_ptr<SectorStore> store, NodeMembership membership);
  ~NodeServer() override;

  // Loads the TLS material (tls not "off") and binds the listening socket (the node's
  // configured address). IOError if it cannot bind, InvalidArgument for bad TLS files.
  Status Listen();
  // Starts accepting, the peer links and the tick timer; the core starts its Syncer (which
  // decides whether this node votes) at a tick once the links are up.
  Status Start();
  // Stops accepting, closes every connection and link, cancels timers. The io_context's
  // run() then returns once pending handlers finish.
  void Stop();

  std::uint16_t listen_port() const;

  // Called (once, on the io thread) when the node cannot go on: its store failed a sync, or
  // its Syncer could not start. The owner stops the loop and exits non-zero so that the
  // service manager restarts it.
  void SetOnFatal(std::function<void(const std::string&)> fn) { on_fatal_ = std::move(fn); }
  // Feeds `metrics` (owned by the caller, outliving the node); none by default.
  void SetMetrics(NodeMetrics* metrics) {
    metrics_ = metrics;
    core_->SetMetrics(metrics);
  }

  // FrameSink
  void OnFrame(Connection& conn, std::span<const std::uint8_t> body) override;

  // NodeCoreEnv
  void SendSystem(Rank to, const SystemMessage& msg) override;
  void SendSync(Rank to, const SyncMessage& msg) override;
  void SendSystemBatch(std::span<const Rank> to, std::span<const SystemMessage> msgs) override;
  void RequestFlush() override;
  bool PeerConnected(Rank peer) override;
  PeerLinkStats PeerStats(Rank peer) override;
  void OnPeerFeatures(Rank peer, std::uint8_t features) override;
  std::int64_t NowMs() override;
  std::uint64_t WallClockMicros() override;
  void Post(std::function<void()> fn) override;
  Status SaveIdentity(const Identity& identity) override;
  void Log(Level level, const std::string& line) override;
  void Fatal(const std::string& why) override;

 private:
  boost::asio::awaitable<void> AcceptLoop();
  boost::asio::awaitable<void> TickLoop();
  void HandleSystem(Connection& conn, std::span<const std::uint8_t> body);
  // The payload of a frame signed with the system key; nullopt (counted and logged as a
  // `what` with a bad tag) if its tag does not verify.
  std::optional<std::span<const std::uint8_t>> VerifySystemFrame(Connection& conn,
                                                                 std::span<const std::uint8_t> body,
                                                                 const char* what);
  void HandleSystemBatch(Connection& conn, std::span<const std::uint8_t> body);
  void HandleSync(Connection& conn, std::span<const std::uint8_t> body);
  // Who may send what (docs/TLS.md, "Identities"): empty if `conn` may carry a frame of `kind`
  // (and, for system and sync frames, one sent as `sender`: 0 before it is decoded), else why
  // not. The connection is then closed and the refusal counted as an authentication failure.
  std::string RefuseFrame(const Connection& conn, CommandKind kind, Rank sender) const;
  // Closes `conn` over a refused frame (RefuseFrame's reason), counted and logged.
  void Refuse(Connection& conn, const std::string& why);
  // Sends to a peer on our link to it, or, while that link is down, on the last connection
  // the peer itself opened to us (remembered by NoteInbound for authenticated senders).
  void SendToPeer(Rank to, SharedFrame frame);
  void NoteInbound(Rank from, Connection& conn);
  void NoteHeard(Rank from);
  // Heartbeats: a Ping is answered at once on its own connection (which from then on is
  // held to the peer timeout), a Pong gives the link its round trip.
  void HandlePing(Connection& conn, const SyncMessage& msg);
  void HandlePong(const SyncMessage& msg);
  SharedFrame PingFrame(std::uint64_t id, bool tls);
  // Whether a frame for `to` would go on a TLS connection now (SendToPeer's choice): it is
  // then sealed with a zero tag instead of the system key's HMAC.
  bool TlsTo(Rank to);
  // Makes room for one more accepted connection from `source`. The per-source cap first (for
  // an address that is not a node's): at max_per_source_ connections from it, its oldest one
  // that has not authenticated is closed, or the new one is refused. Then the same for
  // max_connections_ over every source. Returns why the new one is refused, or empty to take
  // it.
  std::string MakeRoomForConnection(const boost::asio::ip::address& source);
  // Bytes queued on accepted connections changed by `delta`; over max_queued_total_, the
  // connection whose oldest queued frame has waited longest is closed.
  void QueuedBytesChanged(std::int64_t delta);

  boost::asio::io_context& io_;
  Rank self_;
  std::string data_dir_;
  Hmac system_mac_;
  ClusterConfig config_;             // for Listen: the TLS files
  std::shared_ptr<TlsContext> tls_;  // null when tls = "off"
  TlsMode tls_mode_;
  bool plaintext_clients_;
  boost::asio::ip::tcp::acceptor acceptor_;
  boost::asio::steady_timer tick_timer_;
  std::unordered_map<Rank, std::unique_ptr<PeerLink>> peers_;
  // Accepted connections still open, oldest first, with the address each came from; at most
  // max_connections_ of them, and max_per_source_ from one address that is not a node's.
  struct Accepted {
    std::weak_ptr<Connection> conn;
    boost::asio::ip::address source;
  };
  std::vector<Accepted> accepted_;
  std::size_t max_connections_;
  std::size_t max_per_source_;
  // Response bytes queued on every accepted connection together, and the cap.
  std::size_t queued_total_ = 0;
  std::size_t max_queued_total_;
  // The cluster's nodes' addresses (config hosts, resolved at start): exempt from the
  // per-source cap, since peers' links and their hosts' mounts share them.
  std::vector<boost::asio::ip::address> node_addresses_;
  std::unordered_map<Rank, std::weak_ptr<Connection>> inbound_;
  bool stopped_ = false;
  std::function<void(const std::string&)> on_fatal_;
  std::int64_t peer_timeout_ms_;
  NodeMetrics* metrics_ = nullptr;
  // The last system frame encoded, reused when a register sends the same message to several
  // peers (a WriteProc is signed once, not once per peer).
  SystemMessage last_msg_;
  SharedFrame last_frame_;      // sealed with the system key, for peers in clear
  SharedFrame last_tls_frame_;  // with a zero tag, for peers on TLS
  // Last: built from the other members, destroyed first (its store completions post here).
  std::unique_ptr<NodeCore> core_;
};

}  // namespace atomdisk
