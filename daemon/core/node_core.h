// NodeCore: everything one atomdiskd decides, with no socket, timer, thread or clock of its
// own. It routes client commands and system messages to per-sector Registers (built from the
// store on first touch, dropped once idle), carries out their effects (messages to peers
// through NodeCoreEnv, persists to the SectorStore, responses on the client's channel),
// answers ReadTags from the store's slot cache, absorbs resync values, keeps the voting
// state, and hosts the Syncer (membership, resync, scrub) as its SyncEnv.
//
// Who drives it: the daemon's Asio adapter (daemon/net/node_server.h), which owns the
// sockets, the peer links, the 10 ms tick and the signals, verifies frames and feeds decoded
// messages in; and the same calls can be made by a simulated world (tests/sim/), which is
// the point of the split (docs/SIMULATION.md). Client frames come in whole (the core checks
// their HMAC and answers AuthFailure itself), system and sync messages decoded and verified.
//
// Threading: one thread makes every call (the daemon's io thread). Store completions, which
// arrive on the store's sync thread, are handed back through NodeCoreEnv::Post.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>

#include "common/config.h"
#include "common/hmac.h"
#include "common/status.h"
#include "common/sync_wire.h"
#include "common/types.h"
#include "common/wire.h"
#include "daemon/core/client_channel.h"
#include "daemon/core/node_metrics.h"
#include "daemon/core/peer_outbox.h"
#include "daemon/register/register.h"
#include "daemon/store/sector_store.h"
#include "daemon/sync/identity.h"
#include "daemon/sync/syncer.h"

namespace atomdisk {

// What the core needs from its world. Every call is made on the core's thread.
class NodeCoreEnv {
 public:
  virtual ~NodeCoreEnv() = default;
  // Sends to a peer; silently dropped when it cannot go (registers and the Syncer retransmit).
  virtual void SendSystem(Rank to, const SystemMessage& msg) = 0;
  virtual void SendSync(Rank to, const SyncMessage& msg) = 0;
  // Sends the same system batch (common/wire.h: two or more messages, in order) to each of
  // `to`, peers that advertised kFeatureBatches; encoded and signed once for all of them.
  virtual void SendSystemBatch(std::span<const Rank> to, std::span<const SystemMessage> msgs) = 0;
  // The core holds system messages for batching (daemon/core/peer_outbox.h) and its store
  // writes for one group commit (SectorStore::HoldSyncs): call NodeCore::FlushOutbox once the
  // events at hand are handled, before waiting for more (the daemon posts it to its io loop;
  // the simulator calls it after each event), also when there is nothing to send: the
  // store's writes are not synced until then. Called once per turn, when the first message
  // enters the outbox or the first store write is made.
  virtual void RequestFlush() = 0;
  // Whether our link to `peer` is up now.
  virtual bool PeerConnected(Rank peer) = 0;
  // What status and metrics show of our link to `peer`.
  struct PeerLinkStats {
    bool connected = false;
    std::uint64_t connects = 0, dropped = 0, dropped_bytes = 0;
    // Liveness (docs/PROTOCOL.md, "Peer liveness"): milliseconds since anything was heard
    // from the peer (-1: never), the last heartbeat round trip (-1: none measured), links
    // lost since start, and why the link went down last (empty: never down).
    std::int64_t heard_ago_ms = -1;
    double rtt_ms = -1;
    std::uint64_t losses = 0;
    std::string down_reason;
  };
  virtual PeerLinkStats PeerStats(Rank peer) = 0;
  // `peer`'s latest HelloReply advertised these kFeature* bits (the transport may turn on
  // heartbeats for it); nothing to do by default.
  virtual void OnPeerFeatures(Rank /*peer*/, std::uint8_t /*features*/) {}
  // Monotonic milliseconds, and the wall clock in microseconds since the epoch.
  virtual std::int64_t NowMs() = 0;
  virtual std::uint64_t WallClockMicros() = 0;
  // Runs `fn` later on the core's thread (called from the store's sync thread).
  virtual void Post(std::function<void()> fn) = 0;
  // Saves data_dir/IDENTITY durably (daemon/sync/identity.h).
  virtual Status SaveIdentity(const Identity& identity) = 0;
  // An event worth one log line.
  enum class Level { kInfo, kWarn };
  virtual void Log(Level level, const std::string& line) = 0;
  // The node cannot go on (its store failed a sync): its owner ends it.
  virtual void Fatal(const std::string& why) = 0;
};

// Watches what a core does, for the simulator's checkers and for nothing else: no decision
// depends on it, and a daemon has none. Each hook is called on the core's thread, except
// OnStoreWriteDone (see there); every hook has an empty default.
class NodeCoreObserver {
 public:
  virtual ~NodeCoreObserver() = default;
  // A register was built from `stored`, the value the store read for its sector; or, with
  // stored.data null, from the durable tag in the store's slot cache alone (for a WriteProc or
  // a client write).
  virtual void OnRegisterLoaded(SectorIdx /*sector*/, const Triple& /*stored*/) {}
  // An idle register is dropped; `durable` is its durable tag.
  virtual void OnRegisterDropped(SectorIdx /*sector*/, Tag /*durable*/) {}
  // A value goes to the store: a register's persist, or a resync absorb.
  virtual void OnStoreWrite(SectorIdx /*sector*/, const Triple& /*value*/, bool /*absorb*/) {}
  // The store reports a write done, from inside the store's callback: on the store's sync
  // thread in a daemon, inside SectorStore::SyncNow in a simulation, so before the core hears
  // of it and before the other completions of the same sync are handed on.
  virtual void OnStoreWriteDone(SectorIdx /*sector*/, Tag /*tag*/, const Status& /*status*/,
                                bool /*absorb*/) {}
  // A ReadTag answered from the store's slot cache with `tag`.
  virtual void OnTagFromCache(SectorIdx /*sector*/, Tag /*tag*/) {}
  // The node starts or stops voting.
  virtual void OnVotingChanged(bool /*voting*/) {}
};

// What the node's data_dir says about its membership (docs/RESYNC.md).
struct NodeMembership {
  std::string data_dir;              // where IDENTITY is saved
  std::optional<Identity> identity;  // as loaded; nullopt if there is no IDENTITY file
  bool store_empty = true;           // the store holds no written sector
};

// How a core is tuned. FromConfig gives the daemon's settings; the simulator scales the
// timings down and may switch on a catalogue bug (tests/sim/). The cluster's ranks, this
// node's rank, the device size and the cluster id always come from the ClusterConfig.
// Deliberate mistakes in the core for the simulator's catalogue (tests/sim/, docs/SIMULATION.md);
// ignored unless the core is built with ATOMDISK_SIM_BUGS (atomdisk_core_sim, never the daemon).
struct NodeCoreBugs {
  // A node without IDENTITY serves (and persists WriteProcs) before its Syncer has saved one.
  bool serve_before_identity = false;
  // A resync absorb of a sector without a register goes straight to the store without
  // keeping registers away until it is durable.
  bool absorb_unguarded = false;
  // An absorb's own successful store write is not reported to the sector's register.
  bool absorb_durable_unreported = false;
  // A write extent is answered, every sector done, as soon as its first member finishes.
  bool extent_early_answer = false;
  // System messages are batched to every peer, whatever its HelloReply advertised.
  bool batch_ignores_features = false;
  // Once QuorumReachable says no, write extents already under way are answered with every
  // sector not done, though their members started and may be written: the no-quorum answer
  // applied where only "unknown" is true.
  bool refuse_started_extents = false;
  // A system message whose tag is above kMaxTagTs (forged or corrupt) is taken like any
  // other, instead of dropped (docs/REGISTER.md, "Timestamp range").
  bool accept_top_tags = false;
  // A sector whose failed slot may be newer (suspect, docs/STORAGE.md) is served from its older
  // valid slot, as the store did before the suspect rule.
  bool serve_suspect_older = false;
  // The end of an event's handling releases the store writes held for one group commit only
  // when the outbox has messages to send, so a replica's persists, which send nothing until
  // they are durable, wait for some later message.
  bool release_only_with_outbox = false;
};

struct NodeCoreOptions {
  RegisterConfig registers;  // retransmission timing, thrifty collect, bugs
  NodeCoreBugs bugs;
  SyncerOptions syncer;  // Hello intervals, timeouts, rate limit, resync and scrub periods
  // False plays an atomdisk from before tag-only reads (and system batches): HelloReply
  // features are ignored, so this node never sends ReadTag or a batch (the simulator's
  // mixed-version runs).
  bool tag_reads = true;
  // `boot_nonce` makes this process's operation ids unique (the daemon draws it with
  // RAND_bytes); `version` and `revision` are what Info reports (common/build_info.h).
  std::uint64_t boot_nonce = 0;
  std::string version;
  std::string revision;

  static NodeCoreOptions FromConfig(const ClusterConfig& config);
};

class NodeCore final : public RegisterEnv, public SyncEnv {
 public:
  NodeCore(ClusterConfig config, Rank self, std::unique_ptr<SectorStore> store,
           NodeMembership membership, NodeCoreEnv* env, NodeCoreOptions options);
  ~NodeCore() override;

  // Feeds `metrics` (owned by the caller, outliving the core) from now on; none by default.
  // Only then does the core read a clock of its own (std::chrono::steady_clock, for latency
  // histograms); no decision ever depends on it.
  void SetMetrics(NodeMetrics* metrics) { metrics_ = metrics; }
  // Watches the core from now on (the simulator); null for none. Not owned.
  void SetObserver(NodeCoreObserver* observer) { observer_ = observer ? observer : &no_observer_; }

  // Arms the Syncer start: it starts at the first Tick at which every peer link is up, or
  // 500 ms from now, so that its first Hellos reach the peers; without IDENTITY, at once.
  // Once NodeCoreEnv::Fatal was called (here or later) the core handles nothing more.
  void Start();
  // Every 10 ms: ticks the registers (retransmissions), drops the idle ones, ticks the Syncer.
  void Tick();

  // A complete client frame body (payload and tag): verified, decoded and routed; the answer
  // goes out on `channel` (AuthFailure for a bad tag; the channel is closed on a malformed
  // frame).
  void OnClientFrame(ClientChannel& channel, std::span<const std::uint8_t> body);
  // Whether an unverified Value may matter: false when no operation waits for it, so the
  // caller may drop it before checking its tag (a saved 4 KiB HMAC).
  bool WantsValue(const SystemMessage& msg);
  // A verified and decoded system or sync message. False when dropped because of its sender
  // (unknown rank, or ourselves): the caller then must not treat the connection as that
  // peer's.
  bool OnSystemMessage(const SystemMessage& msg);
  bool OnSyncMessage(const SyncMessage& msg);
  // Counts a frame that failed its HMAC check or did not decode (for Info).
  void CountAuthFailure() { ++counters_.auth_failures; }
  const NodeCounters& counters() const { return counters_; }
  void CountBadFrame() { ++counters_.bad_frames; }
  // Our link to `peer` (re)connected: operations waiting for its answers retransmit at the
  // next Tick instead of at the end of their back-off, so a healed partition costs one round
  // trip, not up to RegisterConfig::retransmit_max_ms.
  void OnPeerLinkUp(Rank peer);
  // Ends the handling of the events at hand (NodeCoreEnv::RequestFlush): hands the store
  // writes made since to the group commit as one batch (SectorStore::HoldSyncs), then sends
  // what the outbox holds, one system batch per group of peers with the same queue (a queue
  // of one message goes as a plain system frame).
  void FlushOutbox();
  // Whether this node can coordinate at all: its own vote (if it votes) and the peers its
  // links are up to (NodeCoreEnv::PeerConnected; a silent link is closed within the peer
  // timeout) make a majority. Without, an extent command is answered at once with every
  // sector not done, so the client moves it to another node (docs/PROTOCOL.md, "No quorum
  // here"); single-sector atdd commands keep their behaviour (they wait for the quorum).
  bool QuorumReachable();
  // Logs at most once per second per kind of problem, counting the rest (the next line of
  // that kind says how many were suppressed).
  void LogRateLimited(const std::string& kind, const std::string& message,
                      NodeCoreEnv::Level level = NodeCoreEnv::Level::kWarn);

  // RegisterEnv
  void Send(Rank to, const SystemMessage& msg) override;
  void Persist(SectorIdx sector, const Triple& value) override;
  void Complete(std::uint64_t token, SectorPtr data) override;
  void Refuse(std::uint64_t token, const std::string& why) override;
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
  void Repair(SectorIdx sector, const std::optional<Triple>& value, std::uint64_t token) override;
  Status SaveIdentity(const Identity& identity) override;
  void SetVoting(bool voting) override;
  void Note(const std::string& line) override;
  std::uint64_t WallClockMicros() override;
  void SetWriteTsFloor(std::uint64_t floor) override;
  void SetWriteTsLease(std::uint64_t lease) override;
  void SetPeerFeatures(Rank peer, std::uint8_t features) override;

  const ClusterConfig& config() const { return config_; }
  bool voting() const { return register_config_.votes; }
  std::size_t active_registers() const { return registers_.size(); }
  // Client operations accepted and waiting behind an earlier one on their sector's register
  // (part of client_ops_, the operations in flight). O(active registers).
  std::size_t QueuedClientOps() const;
  // Client operations in flight (each extent member counts).
  std::size_t ClientOpsInFlight() const { return client_ops_.size(); }
  // Null before Start's first tick; for status and for the simulator's checks.
  Syncer* syncer_if_started() { return sync_started_ ? syncer_.get() : nullptr; }
  Syncer& syncer() { return *syncer_; }
  // The register of `sector` if one exists (for the simulator's checks; no effects).
  const Register* FindRegisterForChecks(SectorIdx sector) const;
  // Calls fn for every register (for the simulator's invariant checks).
  void ForEachRegisterForChecks(const std::function<void(SectorIdx, const Register&)>& fn) const;
  // The Info answer (`atomdisk status`), as JSON of at most kMaxInfoSize bytes.
  std::string InfoJson();

 private:
  struct ClientOpRef {
    std::weak_ptr<ClientChannel> channel;
    std::uint64_t request_id;
    ClientOp op;  // kRead or kWrite: one sector's operation (an extent's member too)
    NodeMetrics::Clock::time_point started;  // for the latency metric (with metrics only)
    std::uint64_t extent = 0;  // the ExtentOp this sector belongs to; 0 for a lone command
    std::uint32_t index = 0;   // its place in that extent
  };
  // An extent command (docs/PROTOCOL.md, "Extents"): one client operation per sector, each on
  // its own register, answered as one response once every member has finished.
  struct ExtentOp {
    std::weak_ptr<ClientChannel> channel;
    std::uint64_t request_id;
    ClientOp op;  // kReadExtent, kWriteExtent or kWriteZeros
    std::uint32_t remaining = 0;
    // Only with the extent_early_answer or refuse_started_extents bug, before the last member.
    bool answered = false;
    std::vector<ExtentOutcome> outcomes;
    std::vector<SectorPtr> sectors;  // kReadExtent: the data read
  };
  struct RegisterSlot {
    std::unique_ptr<Register> reg;
    bool idle_at_last_tick = false;
  };

  void Respond(ClientChannel& channel, const ClientResponse& resp);
  // An extent command, past the MAC and the decoder: one member operation per sector.
  void StartExtent(ClientChannel& channel, ClientCommand cmd,
                   NodeMetrics::Clock::time_point arrived);
  // A member of extent `id` finished: kDone with its data (reads), or kNotDone. Answers the
  // extent once it was the last.
  void FinishExtentMember(std::uint64_t id, std::uint32_t index, ExtentOutcome outcome,
                          SectorPtr data);
  // A sector's client operation starts on `reg` (a lone command or an extent's member).
  void StartClientOp(Register& reg, std::uint64_t token, ClientOp op, SectorPtr data);
  // The register of `sector`, built from the store if needed; null if the stored sector is
  // unreadable (corrupt or I/O error: this node then stays silent for that sector).
  // `incoming`, a WriteProc about to be handed to it, or `client_write`, a client write about
  // to start on it: when the store's slot cache knows the sector's durable tag (and it is
  // below the WriteProc's), the register is built from that tag alone, without reading the
  // sector (Register's constructor says why that is enough).
  Register* GetRegister(SectorIdx sector, const SystemMessage* incoming = nullptr,
                        bool client_write = false);
  // Reads the durable value of a tag-only register that needs it (Register::NeedsDurableData).
  void LoadDurableData(SectorIdx sector, Register& reg);
  // A stored sector could not be read (`status`): counted, logged (rate-limited), and for a
  // failed or suspect slot a read repair is asked of the Syncer.
  void OnUnreadable(SectorIdx sector, const Status& status);
  // Absorb() (repair false) or Repair() of a value: through the sector's register if it has
  // one, else straight to the store with no register built until it is durable.
  void StoreFromPeers(SectorIdx sector, const Triple& value, std::uint64_t token, bool repair);
  // The store's value of `sector` if its tag is `tag`; Unavailable if the store holds another
  // (a write of ours in flight), or the store's error.
  Result<Triple> ReadStoredAt(SectorIdx sector, Tag tag);
  // A ReadTag for a sector with no register, answered from the store's slot cache (no read,
  // no register built); false when the cache does not know (the register answers then).
  bool AnswerReadTagFromCache(const SystemMessage& msg);
  // After a failed fdatasync the store refuses everything: ends the node (true) instead of
  // going on with `status`. False for any other outcome.
  bool StopIfStoreFailed(const Status& status);
  void MaybeStartSyncer(std::int64_t now);
  bool KnownSender(Rank sender, const char* what);
  // Whether system messages to `peer` go through the outbox (its HelloReply advertised
  // kFeatureBatches since our link to it last came up).
  bool BatchesTo(Rank peer) const;
  // Copies the core's state into metrics_, at most every 100 ms; called from Tick.
  void PublishMetrics(std::int64_t now);

  ClusterConfig config_;
  Rank self_;
  std::unique_ptr<SectorStore> store_;
  NodeMembership membership_;
  NodeCoreEnv* env_;
  NodeCoreOptions options_;
  NodeCoreObserver no_observer_;
  NodeCoreObserver* observer_ = &no_observer_;
  NodeMetrics* metrics_ = nullptr;
  std::int64_t metrics_published_ms_ = 0;
  RegisterConfig register_config_;
  std::unique_ptr<Syncer> syncer_;
  bool sync_started_ = false;
  bool fatal_ = false;
  std::int64_t sync_start_deadline_ms_ = 0;
  Hmac client_mac_;
  // Registers of recently touched sectors. An idle one stays until it has been idle at two
  // consecutive ticks (10-20 ms), so the ReadProc and the WriteProc of one operation, or
  // back-to-back operations on a sector, find it without reading the store again; memory
  // stays bounded by the operation rate times 20 ms.
  std::unordered_map<SectorIdx, RegisterSlot> registers_;
  std::vector<SectorIdx> idle_scratch_;
  std::unordered_map<std::uint64_t, ClientOpRef> client_ops_;
  std::unordered_map<std::uint64_t, ExtentOp> extents_;
  std::uint64_t next_extent_ = 1;
  // Sectors with resync values written straight to the store (their copy was unreadable, so
  // they have no register), by count, until durable.
  std::unordered_map<SectorIdx, int> direct_absorbs_;
  // System messages to peers that take batches, until FlushOutbox. Values bypass it: a
  // lone Value frame may be dropped unverified by a coordinator that no longer waits for it
  // (NodeCore::WantsValue), which a batch member may not.
  PeerOutbox outbox_;
  // Asks the env for a FlushOutbox, unless one is due already.
  void RequestFlushOnce();
  // Holds the store's group commit until FlushOutbox (SectorStore::HoldSyncs), once per turn.
  void HoldStoreSyncs();
  // A FlushOutbox is due (NodeCoreEnv::RequestFlush was called since the last one).
  bool flush_requested_ = false;
  // The store holds this turn's writes for one group commit, until FlushOutbox.
  bool store_held_ = false;
  // Peers whose latest HelloReply advertised kFeatureBatches (by rank); forgotten when our
  // link to a peer comes up again, until its next HelloReply (it may be an older version).
  std::array<bool, 256> batch_peers_{};
  // When each peer last answered us (NowMs of its last authenticated Value, Tag or Ack).
  std::array<std::int64_t, 256> heard_ms_{};
  std::uint64_t next_token_ = 1;
  std::uint64_t op_counter_ = 0;
  std::int64_t started_ms_ = 0;
  NodeCounters counters_;
  std::unordered_map<std::string, std::pair<std::int64_t, std::uint64_t>> log_limits_;
};

}  // namespace atomdisk
