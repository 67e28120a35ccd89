// Node: the shell around the registers of one atomdiskd. It decodes and verifies frames,
// feeds client commands and system messages to per-sector Registers, and carries out their
// effects: frames to peers, persists to the SectorStore, responses to clients. It reads the
// clock and ticks registers; the registers themselves stay pure.
//
// Registers exist only for sectors with recent work: one is built from the store when a
// sector is touched and dropped once it has been idle for a tick or two, so memory follows
// the work, not the device size.
//
// Threading: everything runs on the io_context's single thread, except the store's sync
// thread, whose completions are posted back to it.
#pragma once

#include <boost/asio.hpp>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/config.h"
#include "common/hmac.h"
#include "daemon/net/connection.h"
#include "daemon/net/peer_link.h"
#include "daemon/node_metrics.h"
#include "daemon/register/register.h"
#include "daemon/store/identity.h"
#include "daemon/store/sector_store.h"
#include "daemon/sync/syncer.h"

namespace atomdisk {

// What the node's data_dir says about its membership (docs/RESYNC.md).
struct NodeMembership {
  std::string data_dir;              // where IDENTITY is saved
  std::optional<Identity> identity;  // as loaded; nullopt if there is no IDENTITY file
  bool store_empty = true;           // the store holds no written sector
};

class Node : public FrameSink, public RegisterEnv, public SyncEnv {
 public:
  Node(boost::asio::io_context& io, ClusterConfig config, Rank self,
       std::unique_ptr<SectorStore> store, NodeMembership membership);
  ~Node() override;

  // Binds the listening socket (the node's configured address). IOError if it cannot.
  Status Listen();
  // Starts accepting, the peer links and the tick timer; the Syncer (which decides whether
  // this node votes) follows at a tick once the links are up. A Syncer that cannot start
  // (its identity cannot be saved) is fatal (SetOnFatal).
  Status Start();
  // Stops accepting, closes every connection and link, cancels timers. The io_context's
  // run() then returns once pending handlers finish.
  void Stop();

  // FrameSink
  void OnFrame(Connection& conn, std::span<const std::uint8_t> body) override;
  // RegisterEnv
  void Send(Rank to, const SystemMessage& msg) override;
  void Persist(SectorIdx sector, const Triple& value) override;
  void Complete(std::uint64_t token, SectorPtr data) override;
  Uuid NewOpId() override;
  void WantWriteTsLease(std::uint64_t ts) override;
  bool PeerResponsive(Rank peer) override;
  // SyncEnv
  void SendSync(Rank to, const SyncMessage& msg) override;
  Status ScanTags(SectorIdx first, std::uint64_t count, bool verify_all, TagView view,
                  const std::function<void(SectorIdx, Tag, bool ok)>& fn) override;
  Result<Triple> ReadSector(SectorIdx sector) override;
  void ForEachServedAhead(const std::function<void(SectorIdx)>& fn) override;
  void Absorb(SectorIdx sector, const Triple& value, std::uint64_t token) override;
  Status SaveIdentity(const Identity& identity) override;
  void SetVoting(bool voting) override;
  void Note(const std::string& line) override;
  std::uint64_t WallClockMicros() override;
  void SetWriteTsFloor(std::uint64_t floor) override;
  void SetWriteTsLease(std::uint64_t lease) override;
  void SetPeerFeatures(Rank peer, std::uint8_t features) override;

  std::uint16_t listen_port() const;

  // Called (once, on the io thread) when the node cannot go on: its store failed a sync.
  // The owner stops the loop and exits non-zero so that the service manager restarts it.
  void SetOnFatal(std::function<void(const std::string&)> fn) { on_fatal_ = std::move(fn); }

  // Feeds `metrics` (owned by the caller, outliving the node) from now on; none by default.
  void SetMetrics(NodeMetrics* metrics) { metrics_ = metrics; }

 private:
  struct ClientOpRef {
    std::weak_ptr<Connection> conn;
    std::uint64_t request_id;
    ClientOp op;
    std::chrono::steady_clock::time_point started;  // for the latency metric
  };
  boost::asio::awaitable<void> AcceptLoop();
  boost::asio::awaitable<void> TickLoop();
  void HandleClient(Connection& conn, std::span<const std::uint8_t> body);
  void HandleSystem(Connection& conn, std::span<const std::uint8_t> body);
  void HandleSync(Connection& conn, std::span<const std::uint8_t> body);
  void Respond(Connection& conn, const ClientResponse& resp);
  // The register of `sector`, built from the store if needed; null if the stored sector is
  // unreadable (corrupt or I/O error: this node then stays silent for that sector).
  Register* GetRegister(SectorIdx sector);
  // Sends to a peer on our link to it, or, while that link is down, on the last connection
  // the peer itself opened to us (remembered by NoteInbound for authenticated senders).
  void SendToPeer(Rank to, PeerLink& link, SharedFrame frame);
  void NoteInbound(Rank from, Connection& conn);
  // A ReadTag for a sector with no register, answered from the store's slot cache (no read,
  // no register built); false when the cache does not know (the register answers then).
  bool AnswerReadTagFromCache(const SystemMessage& msg);
  // Calls the SetOnFatal function once (later calls do nothing).
  void Fatal(const std::string& why);
  // After a failed fdatasync the store refuses everything: ends the node (true) instead of
  // going on with `status`. False for any other outcome.
  bool StopIfStoreFailed(const Status& status);
  // Starts the Syncer once the peer links are up (or a short deadline passed).
  void MaybeStartSyncer(std::int64_t now);
  std::int64_t NowMs() const;
  std::string InfoJson() const;
  // Copies the io thread's state into metrics_ (at most every 100 ms; daemon/node_metrics.cc).
  void PublishMetrics(std::int64_t now);
  // Logs at most once per second per kind of problem, counting the rest.
  void LogRateLimited(const std::string& kind, const std::string& message);

  boost::asio::io_context& io_;
  ClusterConfig config_;
  Rank self_;
  std::unique_ptr<SectorStore> store_;
  RegisterConfig register_config_;
  NodeMembership membership_;
  std::unique_ptr<Syncer> syncer_;
  bool sync_started_ = false;
  std::int64_t sync_start_deadline_ms_ = 0;
  Hmac client_mac_;
  Hmac system_mac_;
  boost::asio::ip::tcp::acceptor acceptor_;
  boost::asio::steady_timer tick_timer_;
  std::unordered_map<Rank, std::unique_ptr<PeerLink>> peers_;
  struct RegisterSlot {
    std::unique_ptr<Register> reg;
    bool idle_at_last_tick = false;
  };
  // Registers of recently touched sectors. An idle one stays until it has been idle at two
  // consecutive ticks (10-20 ms), so the ReadProc and the WriteProc of one operation, or
  // back-to-back operations on a sector, find it without reading the store again; memory
  // stays bounded by the operation rate times 20 ms.
  std::unordered_map<SectorIdx, RegisterSlot> registers_;
  std::unordered_map<std::uint64_t, ClientOpRef> client_ops_;
  std::vector<std::weak_ptr<Connection>> accepted_;
  std::unordered_map<Rank, std::weak_ptr<Connection>> inbound_;
  // Sectors with resync values written straight to the store (their copy was unreadable, so
  // they have no register), by count, until durable.
  std::unordered_map<SectorIdx, int> direct_absorbs_;
  // When each peer last answered us (NowMs of its last authenticated Value, Tag or Ack).
  std::array<std::int64_t, 256> heard_ms_{};
  std::uint64_t next_token_ = 1;
  std::uint64_t op_counter_ = 0;
  std::uint64_t boot_nonce_ = 0;
  bool stopped_ = false;
  std::function<void(const std::string&)> on_fatal_;
  // The last system frame encoded, reused when the register sends the same message to
  // several peers (a WriteProc is signed once, not once per peer).
  SystemMessage last_msg_;
  SharedFrame last_frame_;
  std::chrono::steady_clock::time_point started_;
  struct Counters {
    std::uint64_t client_ops = 0, reads = 0, writes = 0, auth_failures = 0, invalid_sector = 0,
                  bad_frames = 0, system_msgs = 0, sync_msgs = 0, persist_errors = 0,
                  unreadable_sectors = 0,
                  unwanted_values = 0,  // Values dropped unchecked: no operation waited for them
        tags_from_cache = 0;            // ReadTags answered from the store's slot cache
  } counters_;
  std::unordered_map<std::string, std::pair<std::chrono::steady_clock::time_point, std::uint64_t>>
      log_limits_;
  NodeMetrics* metrics_ = nullptr;
  std::int64_t metrics_published_ms_ = 0;
};

}  // namespace atomdisk
