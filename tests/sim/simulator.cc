#include "tests/sim/simulator.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <queue>
#include <random>
#include <set>
#include <utility>

#include "client/core/client_core.h"
#include "common/hmac.h"
#include "common/sync_wire.h"
#include "common/types.h"
#include "common/wire.h"
#include "daemon/core/node_core.h"
#include "daemon/register/register.h"
#include "daemon/store/faulty_block_file.h"
#include "daemon/store/mem_block_file.h"
#include "daemon/store/sector_store.h"
#include "daemon/sync/identity.h"
#include "daemon/sync/syncer.h"

namespace atomdisk {

const char* SimBugName(SimBug bug) {
  switch (bug) {
    case SimBug::kNone:
      return "none";
    case SimBug::kSkipImpose:
      return "skip-impose";
    case SimBug::kAckBeforePersist:
      return "ack-before-persist";
    case SimBug::kMinorityQuorum:
      return "minority-quorum";
    case SimBug::kForgetOnRestart:
      return "forget-on-restart";
    case SimBug::kJoinerVotes:
      return "joiner-votes";
    case SimBug::kLeaseForgotten:
      return "lease-forgotten";
    case SimBug::kServeBeforeIdentity:
      return "serve-before-identity";
    case SimBug::kAbsorbUnguarded:
      return "absorb-unguarded";
    case SimBug::kAbsorbDurableUnreported:
      return "absorb-durable-unreported";
    case SimBug::kGenesisTrusted:
      return "genesis-trusted";
    case SimBug::kStaleSelfAtVote:
      return "stale-self-at-vote";
    case SimBug::kExtentEarlyAnswer:
      return "extent-early-answer";
    case SimBug::kBatchIgnoresFeatures:
      return "batch-ignores-features";
    case SimBug::kValueBeforeDurable:
      return "value-before-durable";
    case SimBug::kRefuseStartedExtents:
      return "refuse-started-extents";
    case SimBug::kClientRetriesUnknownWrite:
      return "client-retries-unknown-write";
    case SimBug::kClientNotDoneAsDone:
      return "client-not-done-as-done";
    case SimBug::kAcceptTopTags:
      return "accept-top-tags";
    case SimBug::kRepairFromOnePeer:
      return "repair-from-one-peer";
    case SimBug::kServeSuspectOlder:
      return "serve-suspect-older";
    case SimBug::kReleaseOnlyWithOutbox:
      return "release-only-with-outbox";
    case SimBug::kScanFindsIgnored:
      return "scan-finds-ignored";
    case SimBug::kServeWithoutDeadline:
      return "serve-without-deadline";
  }
  return "?";
}

const char* SimBugLayer(SimBug bug) {
  switch (bug) {
    case SimBug::kSkipImpose:
    case SimBug::kAckBeforePersist:
    case SimBug::kMinorityQuorum:
    case SimBug::kStaleSelfAtVote:
    case SimBug::kValueBeforeDurable:
      return "register";
    case SimBug::kServeBeforeIdentity:
    case SimBug::kAbsorbUnguarded:
    case SimBug::kAbsorbDurableUnreported:
    case SimBug::kExtentEarlyAnswer:
    case SimBug::kBatchIgnoresFeatures:
    case SimBug::kRefuseStartedExtents:
    case SimBug::kAcceptTopTags:
    case SimBug::kServeSuspectOlder:
    case SimBug::kReleaseOnlyWithOutbox:
      return "node";
    case SimBug::kJoinerVotes:
    case SimBug::kLeaseForgotten:
    case SimBug::kGenesisTrusted:
    case SimBug::kRepairFromOnePeer:
    case SimBug::kScanFindsIgnored:
    case SimBug::kServeWithoutDeadline:
      return "sync";
    case SimBug::kForgetOnRestart:
      return "world";
    case SimBug::kClientRetriesUnknownWrite:
    case SimBug::kClientNotDoneAsDone:
      return "client";
    case SimBug::kNone:
      break;
  }
  return "-";
}

const char* SimBugWhat(SimBug bug) {
  switch (bug) {
    case SimBug::kSkipImpose:
      return "reads return after the first phase, without writing back";
    case SimBug::kAckBeforePersist:
      return "Ack (and the writer's own answer) before the triple is durable";
    case SimBug::kMinorityQuorum:
      return "N/2 answers taken for a majority";
    case SimBug::kForgetOnRestart:
      return "a restart wipes the store but keeps the IDENTITY (voting)";
    case SimBug::kJoinerVotes:
      return "a node whose disk was replaced votes at once, without a join pass";
    case SimBug::kLeaseForgotten:
      return "a restarted node writes below its earlier write ts lease";
    case SimBug::kServeBeforeIdentity:
      return "a node without IDENTITY persists WriteProcs before its Syncer saved one";
    case SimBug::kAbsorbUnguarded:
      return "a resync absorb goes to the store with nothing keeping a register from "
             "taking its pending value for durable";
    case SimBug::kAbsorbDurableUnreported:
      return "an absorb's durable store write is not reported to the sector's register";
    case SimBug::kStaleSelfAtVote:
      return "a node that starts voting during a read's first phase answers with the value "
             "durable when the read began, from before its join pass";
    case SimBug::kGenesisTrusted:
      return "a replaced disk is bootstrapped as a founding member (an operator's mistake) and "
             "that claim is trusted over the peers that list it as a voter";
    case SimBug::kExtentEarlyAnswer:
      return "an extent command is answered, every sector done, when its first member "
             "finishes (needs --extents)";
    case SimBug::kValueBeforeDurable:
      return "a register built from the slot cache's tag answers a ReadProc with the value it "
             "is still persisting, not a durable one";
    case SimBug::kBatchIgnoresFeatures:
      return "system batches go to every peer, also to one whose HelloReply did not advertise "
             "them (an older node, which would close the connection)";
    case SimBug::kRefuseStartedExtents:
      return "a coordinator whose links lose the quorum answers the write extents it has under "
             "way with every sector not done, though they may be written (needs --extents and "
             "--link-liveness)";
    case SimBug::kClientRetriesUnknownWrite:
      return "the client library retries a write whose outcome is unknown on another node though "
             "the caller asked it not to, and reports it as sent once (needs --client-library)";
    case SimBug::kAcceptTopTags:
      return "a node takes a system message whose tag lies above the timestamp range (forged "
             "or corrupt) instead of dropping it (needs --forged-tags)";
    case SimBug::kServeSuspectOlder:
      return "a node serves a suspect sector (a failed slot that may be newer) from its older "
             "valid slot, as the store did before the suspect rule (needs --bit-rot)";
    case SimBug::kReleaseOnlyWithOutbox:
      return "a node hands the store writes it held for one group commit to the sync only when "
             "it also has system messages to send, so a replica's persists wait for a later one";
    case SimBug::kScanFindsIgnored:
      return "a sector a Syncer scan met with a failed slot (a write a crash tore) is not "
             "repaired until something reads it there or a scrub runs";
    case SimBug::kServeWithoutDeadline:
      return "sync requests queued over the serve budget wait for the budget alone, however "
             "long (needs --serve-budget)";
    case SimBug::kRepairFromOnePeer:
      return "a scrub or read repair of a rotted or suspect sector settles on the first peer's "
             "answer instead of N - Q + 1 (needs --bit-rot)";
    case SimBug::kClientNotDoneAsDone:
      return "the client library reports a write extent written when the node answered some or "
             "all of its sectors not done (needs --client-library and --extents)";
    case SimBug::kNone:
      break;
  }
  return "no bug";
}

std::vector<SimBug> AllSimBugs() {
  return {SimBug::kSkipImpose,
          SimBug::kAckBeforePersist,
          SimBug::kMinorityQuorum,
          SimBug::kForgetOnRestart,
          SimBug::kJoinerVotes,
          SimBug::kLeaseForgotten,
          SimBug::kServeBeforeIdentity,
          SimBug::kAbsorbUnguarded,
          SimBug::kAbsorbDurableUnreported,
          SimBug::kStaleSelfAtVote,
          SimBug::kGenesisTrusted,
          SimBug::kExtentEarlyAnswer,
          SimBug::kBatchIgnoresFeatures,
          SimBug::kValueBeforeDurable,
          SimBug::kRefuseStartedExtents,
          SimBug::kClientRetriesUnknownWrite,
          SimBug::kClientNotDoneAsDone,
          SimBug::kAcceptTopTags,
          SimBug::kRepairFromOnePeer,
          SimBug::kServeSuspectOlder,
          SimBug::kReleaseOnlyWithOutbox,
          SimBug::kScanFindsIgnored,
          SimBug::kServeWithoutDeadline};
}

std::optional<SimBug> ParseSimBug(std::string_view name) {
  if (name == "none") return SimBug::kNone;
  for (SimBug b : AllSimBugs()) {
    if (name == SimBugName(b)) return b;
  }
  return std::nullopt;
}

std::string ReplayCommand(const SimOptions& o) {
  std::string cmd = "atomdisk-sim --seed " + std::to_string(o.seed) + " --nodes " +
                    std::to_string(o.nodes) + " --steps " + std::to_string(o.steps);
  if (o.bug != SimBug::kNone) cmd += std::string(" --bug ") + SimBugName(o.bug);
  if (!o.state_checks) cmd += " --history-only";
  if (o.extent_permille != 0) cmd += " --extents " + std::to_string(o.extent_permille);
  if (o.link_liveness) cmd += " --link-liveness";
  if (o.client_library) cmd += " --client-library";
  if (o.tls) cmd += " --tls";
  if (o.forged_tags) cmd += " --forged-tags";
  if (o.bit_rot) cmd += " --bit-rot";
  if (o.serve_budget) cmd += " --serve-budget";
  if (o.max_lincheck_states != SimOptions{}.max_lincheck_states) {
    cmd += " --max-lincheck-states " + std::to_string(o.max_lincheck_states);
  }
  return cmd;
}

namespace {

constexpr std::int64_t kUsPerMs = 1000;
// Sectors the store accepts; the workload stays well inside.
constexpr std::uint64_t kDeviceSectors = 1 << 16;
// Cold sectors are drawn from [kColdBase, kColdBase + kColdRange).
constexpr std::uint64_t kColdBase = 16;
constexpr std::uint64_t kColdRange = 4000;
constexpr std::size_t kLastEvents = 60;
// The longest extent the simulated clients send.
constexpr std::uint32_t kMaxSimExtent = 6;
// Syncer timing, scaled to virtual runs of a few seconds.
constexpr std::int64_t kHelloIntervalMs = 200;
// With SimOptions::link_liveness: how long a cut link stays up before both ends see it down
// (the daemon's peer_timeout_ms, 1000 by default, scaled like the Syncer's timing).
constexpr std::int64_t kSimPeerTimeoutMs = 100;
constexpr std::int64_t kJoiningHelloIntervalMs = 50;
constexpr std::int64_t kSyncRequestTimeoutMs = 300;
// With --bit-rot, each node scrubs its store this often (virtual time).
constexpr std::int64_t kSimScrubIntervalMs = 2000;
constexpr std::int64_t kCheckpointIntervalMs = 100;
constexpr std::int64_t kResyncIntervalMs = 2000;
// The simulated wall clock (SyncEnv::WallClockMicros) reads this plus virtual time.
constexpr std::uint64_t kSimWallClockEpochUs = 1'000'000'000;

// The cluster id every simulated node is configured with.
Uuid SimClusterId() {
  Uuid u;
  for (std::size_t i = 0; i < u.bytes.size(); ++i) u.bytes[i] = static_cast<std::uint8_t>(0xA0 + i);
  return u;
}

// What atomdiskd --bootstrap writes into an empty data_dir (daemon/main.cc).
Identity GenesisIdentity(Rank rank) {
  Identity id;
  id.cluster_id = SimClusterId();
  id.rank = rank;
  id.genesis = true;
  return id;
}

// The cluster.toml every simulated node and client is configured with: n nodes, the device,
// fixed keys and SimClusterId().
ClusterConfig SimClusterConfig(int n) {
  ClusterConfig c;
  c.path = "sim";
  c.sectors = kDeviceSectors;
  c.client_key.assign(kClientKeySize, 0x5A);
  c.system_key.assign(kSystemKeySize, 0xA5);
  Uuid id = SimClusterId();
  c.cluster_id_hex = ToHex(id.bytes);
  for (int i = 1; i <= n; ++i) {
    NodeConfig node;
    node.rank = static_cast<Rank>(i);
    node.host = "sim" + std::to_string(i);
    node.port = static_cast<std::uint16_t>(7000 + i);
    c.nodes.push_back(node);
  }
  return c;
}

std::uint64_t Mix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

void PutLe64(std::uint8_t* p, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}

std::uint64_t GetLe64(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = v << 8 | p[i];
  return v;
}

// The sector a client writes for value id `id` (> 0): the id in the first 8 bytes, then words
// derived from it, so that a torn or mixed sector is recognised as such.
SectorPtr ValueSector(std::uint64_t id) {
  auto d = std::make_shared<SectorData>();
  PutLe64(d->data(), id);
  for (std::size_t i = 1; i < kSectorSize / 8; ++i)
    PutLe64(d->data() + 8 * i, Mix64(id * 8191 + i));
  return d;
}

// The value id a sector holds (0: the initial all-zero sector), or nullopt if its bytes are
// neither zeros nor exactly what a client wrote (torn, mixed, garbage).
std::optional<std::uint64_t> ValueIdOf(const SectorData& d) {
  std::uint64_t id = GetLe64(d.data());
  for (std::size_t i = 1; i < kSectorSize / 8; ++i) {
    std::uint64_t want = id == 0 ? 0 : Mix64(id * 8191 + i);
    if (GetLe64(d.data() + 8 * i) != want) return std::nullopt;
  }
  return id;
}

std::string TagStr(Tag t) {
  return "(" + std::to_string(t.ts) + "," + std::to_string(static_cast<int>(t.wr)) + ")";
}

std::string ShortId(const Uuid& u) { return u.ToString().substr(0, 8); }

// Forwards to the node's disk until the node crashes; from then on writes and syncs fail, so
// that nothing the dying store does afterwards (its destructor flushing, say) reaches the disk.
class CrashGate final : public BlockFile {
 public:
  explicit CrashGate(std::shared_ptr<BlockFile> disk) : disk_(std::move(disk)) {}
  Status ReadAt(std::uint64_t offset, void* buf, std::size_t n) override {
    return disk_->ReadAt(offset, buf, n);
  }
  Status WriteAt(std::uint64_t offset, const void* buf, std::size_t n) override {
    if (cut_) return Status::IOError("simulated node is down");
    return disk_->WriteAt(offset, buf, n);
  }
  Status Sync() override {
    if (cut_) return Status::IOError("simulated node is down");
    return disk_->Sync();
  }
  Result<std::uint64_t> Size() override { return disk_->Size(); }
  Result<std::uint64_t> NextDataOffset(std::uint64_t offset) override {
    return disk_->NextDataOffset(offset);
  }
  void Cut() { cut_ = true; }

 private:
  std::shared_ptr<BlockFile> disk_;
  bool cut_ = false;
};

// A read-only view of a node's disk: a store opened over it reads what the disk holds (its
// unsynced writes included) and changes nothing. Used to look for copies of a value.
class ReadOnlyView final : public BlockFile {
 public:
  explicit ReadOnlyView(std::shared_ptr<BlockFile> disk) : disk_(std::move(disk)) {}
  Status ReadAt(std::uint64_t offset, void* buf, std::size_t n) override {
    return disk_->ReadAt(offset, buf, n);
  }
  Status WriteAt(std::uint64_t, const void*, std::size_t) override {
    return Status::IOError("read-only view");
  }
  Status Sync() override { return Status::Ok(); }
  Result<std::uint64_t> Size() override { return disk_->Size(); }
  Result<std::uint64_t> NextDataOffset(std::uint64_t offset) override {
    return disk_->NextDataOffset(offset);
  }

 private:
  std::shared_ptr<BlockFile> disk_;
};

// The event queue, with a look at what it holds (messages in flight).
template <typename T, typename Less>
class EventQueue : public std::priority_queue<T, std::vector<T>, Less> {
 public:
  const std::vector<T>& items() const { return this->c; }
};

class Simulator {
 public:
  Simulator(const SimOptions& options, std::ostream* trace);
  SimResult Run();

 private:
  enum class EventType {
    kDeliver,
    kSync,
    kTick,
    kClientIssue,
    kClientTimeout,
    kNemesis,
    kRestart,
    kHealPartition,
    kDiskFast,
    kCall,  // runs `fn` (the client library's world: SimOptions::client_library)
  };
  struct Event {
    std::int64_t time_us = 0;
    std::uint64_t seq = 0;
    EventType type = EventType::kTick;
    int node = 0;  // kDeliver: receiver
    int from = 0;  // kDeliver: sender
    std::uint64_t epoch = 0;
    std::uint64_t from_epoch = 0;
    std::uint64_t arg = 0;  // client, op token, partition or slow-disk generation
    // kDeliver: exactly one of them, a register message, a system batch (docs/PROTOCOL.md,
    // "Extension: system batches": lost, duplicated and delayed as one frame) or a sync message.
    std::shared_ptr<const SystemMessage> msg;
    std::shared_ptr<const std::vector<SystemMessage>> batch;
    std::shared_ptr<const SyncMessage> sync_msg;
    std::shared_ptr<std::function<void()>> fn;  // kCall
    bool uncounted = false;  // not one of the faulty phase's steps (a client library tick)
  };
  struct EventLater {
    bool operator()(const Event& a, const Event& b) const {
      return a.time_us != b.time_us ? a.time_us > b.time_us : a.seq > b.seq;
    }
  };

  // The world one node's core (daemon/core/node_core.h) lives in: this simulator's network,
  // disk and clock, and its checkers watching the core (NodeCoreObserver).
  class SimNodeEnv final : public NodeCoreEnv, public NodeCoreObserver {
   public:
    SimNodeEnv(Simulator* sim, int node) : sim_(sim), node_(node) {}
    // NodeCoreEnv
    void SendSystem(Rank to, const SystemMessage& msg) override { sim_->OnSend(node_, to, msg); }
    void SendSync(Rank to, const SyncMessage& msg) override { sim_->OnSendSync(node_, to, msg); }
    void SendSystemBatch(std::span<const Rank> to, std::span<const SystemMessage> msgs) override {
      sim_->OnSendBatch(node_, to, msgs);
    }
    // Flushed once the event at hand is handled (Simulator::FlushOutboxes), as the daemon's
    // posted flush runs once its io loop has handled what it had read.
    void RequestFlush() override { sim_->nodes_[node_]->flush_requested = true; }
    // A TCP link breaks when its peer's process dies; a partition (packets dropped) leaves it
    // up, as on a real network.
    bool PeerConnected(Rank peer) override {
      return peer >= 1 && peer <= sim_->nodes_.size() && sim_->LinkUp(node_, peer - 1);
    }
    PeerLinkStats PeerStats(Rank peer) override { return {PeerConnected(peer), 0, 0, 0}; }
    std::int64_t NowMs() override { return sim_->NowMs(); }
    // Virtual and deterministic: far above the ts values a run reaches, and growing with
    // virtual time like a real clock (docs/RESYNC.md, "Tags after a disk replacement").
    std::uint64_t WallClockMicros() override {
      return kSimWallClockEpochUs + static_cast<std::uint64_t>(sim_->now_us_);
    }
    // Store completions, run by RunSync once the sync's callbacks are all in.
    void Post(std::function<void()> fn) override {
      sim_->nodes_[node_]->posted.push_back(std::move(fn));
    }
    // An injected failure leaves the previous IDENTITY, as a failed write of the temporary
    // file before its rename does (daemon/sync/identity.cc).
    Status SaveIdentity(const Identity& identity) override {
      auto& node = *sim_->nodes_[node_];
      if (node.fail_identity_writes > 0) {
        --node.fail_identity_writes;
        sim_->Trace("node " + std::to_string(node_ + 1) + ": IDENTITY write fails (injected)");
        return Status::IOError("IDENTITY write failed (injected)");
      }
      node.identity = identity;
      return Status::Ok();
    }
    void Log(Level level, const std::string& line) override {
      sim_->Trace("node " + std::to_string(node_ + 1) +
                  (level == Level::kWarn ? " warns: " : ": ") + line);
    }
    // Like a daemon that exits (and restarts under systemd), once the core's current work is
    // done: RunSync crashes and restarts the node.
    void Fatal(const std::string& why) override {
      auto& node = *sim_->nodes_[node_];
      if (!node.fatal) node.fatal = why;
    }
    // NodeCoreObserver
    void OnRegisterLoaded(SectorIdx sector, const Triple& stored) override {
      sim_->OnRegisterLoaded(node_, sector, stored);
    }
    void OnRegisterDropped(SectorIdx sector, Tag durable) override {
      Tag& m = sim_->nodes_[node_]->max_durable[sector];
      m = std::max(m, durable);
    }
    void OnStoreWrite(SectorIdx sector, const Triple& value, bool absorb) override {
      sim_->OnStoreWrite(node_, sector, value, absorb);
    }
    void OnStoreWriteDone(SectorIdx sector, Tag tag, const Status& status, bool absorb) override {
      sim_->OnStoreWriteDone(node_, sector, tag, status, absorb);
    }
    void OnTagFromCache(SectorIdx sector, Tag tag) override {
      sim_->OnTagFromCache(node_, sector, tag);
    }
    void OnVotingChanged(bool voting) override { sim_->OnSetVoting(node_, voting); }

   private:
    Simulator* sim_;
    int node_;
  };

  // The client connection of one node incarnation: the core's responses come back here.
  class SimChannel final : public ClientChannel, public std::enable_shared_from_this<SimChannel> {
   public:
    SimChannel(Simulator* sim, int node, std::uint64_t epoch)
        : sim_(sim), node_(node), epoch_(epoch) {}
    bool SendFrame(SharedFrame frame) override {
      sim_->OnResponseFrame(node_, epoch_, *frame);
      return true;
    }
    void CloseChannel(const std::string& reason) override {
      sim_->Fail("sim-internal",
                 "node " + std::to_string(node_ + 1) + " closes the client connection: " + reason);
    }
    bool channel_closed() const override { return false; }
    const std::string& channel_name() const override { return name_; }
    void OpStarted() override {}
    void OpFinished() override {}
    std::weak_ptr<ClientChannel> WeakChannel() override { return weak_from_this(); }

   private:
    Simulator* sim_;
    int node_;
    std::uint64_t epoch_;
    std::string name_ = "sim-client";
  };

  // --- the client library in the simulation (SimOptions::client_library) ---
  // Node n's end of one client connection: what its core answers goes back over the
  // simulated network to the client's ClientCore.
  class SimClientChannel final : public ClientChannel,
                                 public std::enable_shared_from_this<SimClientChannel> {
   public:
    SimClientChannel(Simulator* sim, int client, int node, std::uint64_t gen)
        : sim_(sim), client_(client), node_(node), gen_(gen) {
      name_ = "client " + std::to_string(client) + " at node " + std::to_string(node + 1);
    }
    bool SendFrame(SharedFrame frame) override {
      if (closed_) return false;
      sim_->LibToClient(client_, node_, gen_, std::move(frame));
      return true;
    }
    void CloseChannel(const std::string& reason) override {
      sim_->Fail("sim-internal",
                 "node " + std::to_string(node_ + 1) + " closes " + name_ + ": " + reason);
    }
    bool channel_closed() const override { return closed_; }
    const std::string& channel_name() const override { return name_; }
    void OpStarted() override {}
    void OpFinished() override {}
    std::weak_ptr<ClientChannel> WeakChannel() override { return weak_from_this(); }
    bool channel_tls() const override { return sim_->options_.tls; }
    void Close() { closed_ = true; }

   private:
    Simulator* sim_;
    int client_;
    int node_;
    std::uint64_t gen_;
    bool closed_ = false;
    std::string name_;
  };

  // One client connection (client c to node n) as TCP has it: in order, never duplicated;
  // a frame lost to a partition or a drop leaves the connection dead (nothing more gets
  // through) until the client closes it, as a stalled TCP connection.
  struct LibConn {
    std::uint64_t gen = 0;  // bumped by every connect and close: stale events are ignored
    bool open = false;
    bool dead = false;
    std::uint64_t node_epoch = 0;
    std::int64_t last_to_node_us = 0;  // FIFO: no frame overtakes an earlier one
    std::int64_t last_to_client_us = 0;
    std::shared_ptr<SimClientChannel> channel;
  };

  // The world one simulated client's ClientCore (client/core/client_core.h) lives in.
  class SimClientEnv final : public client::ClientCoreEnv {
   public:
    SimClientEnv(Simulator* sim, int client) : sim_(sim), client_(client) {}
    client::Clock::time_point Now() override {
      return client::Clock::time_point(std::chrono::microseconds(sim_->now_us_));
    }
    void StartConnecting() override { sim_->LibStartConnecting(client_); }
    void SendFrame(int node, std::shared_ptr<const Frame> frame) override {
      sim_->LibToNode(client_, node, std::move(frame));
    }
    void CloseConnection(int node) override { sim_->LibClose(client_, node, true); }
    void Post(std::function<void()> fn) override { sim_->Call(1, std::move(fn)); }

   private:
    Simulator* sim_;
    int client_;
  };

  struct LibClient {
    int home = 0;  // the node it runs next to: partitions cut it off as they cut that node
    std::unique_ptr<SimClientEnv> env;
    std::unique_ptr<client::ClientCore> core;
    std::vector<LibConn> conns;  // per node
    bool tick_scheduled = false;
  };

  struct Node {
    Rank rank = 0;
    bool up = true;
    std::uint64_t epoch = 0;  // bumped at each crash: stale events and callbacks are ignored
    std::unique_ptr<SimNodeEnv> env;
    std::shared_ptr<FaultyBlockFile> disk;
    std::shared_ptr<CrashGate> gate;
    std::unique_ptr<SectorStore> opened;        // the store, until the core takes it
    SectorStore* store = nullptr;               // the store (opened's, then the core's)
    std::unique_ptr<NodeCore> core;             // the production node core; null while down
    std::shared_ptr<SimChannel> channel;        // this incarnation's client connection
    std::vector<std::function<void()>> posted;  // NodeCoreEnv::Post, run by RunSync
    std::optional<std::string> fatal;           // NodeCoreEnv::Fatal: crash after this event
    std::uint64_t persists_in_flight = 0;
    std::uint64_t absorbs_in_flight = 0;
    bool sync_scheduled = false;
    bool flush_requested = false;  // NodeCoreEnv::RequestFlush, done after this event
    bool disk_slow = false;
    std::uint64_t disk_slow_gen = 0;
    int fail_identity_writes = 0;  // injected: the next IDENTITY saves fail
    // Value id of each (sector, tag) handed to the store, for the durable notes.
    std::map<std::pair<SectorIdx, Tag>, std::uint64_t> write_ids;
    // What the simulator knows is durable here, independently of the register: OK store
    // completions, and what the disk held when the store was opened after a crash.
    std::map<SectorIdx, Tag> known_durable;
    // The highest durable tag this node ever claimed (register durable(), known_durable):
    // after a restart the disk must hold at least this.
    std::map<SectorIdx, Tag> max_durable;
    std::set<SectorIdx> written_since_open;
    // (sender, op id) -> (sector, tag) of the last WriteProc delivered, for the Ack check.
    std::map<std::pair<Rank, Uuid>, std::pair<SectorIdx, Tag>> writeprocs;
    std::set<std::uint64_t> tokens;  // client operations this node coordinates

    // Membership and resync.
    // data_dir/IDENTITY: survives crashes, erased by a disk replacement.
    std::optional<Identity> identity;
    bool voting = false;              // the core's last SetVoting
    bool replace_on_restart = false;  // crashed by "replace disk": restarts blank
    // The disk was replaced and the node has not voted since. `must_hold` is, per sector, the
    // highest tag of an operation that completed before the replacement: every one of them
    // must be durable here once the node votes again (check joiner-behind).
    bool replaced = false;
    std::map<SectorIdx, Tag> must_hold;
    // SimOptions::bit_rot: sectors whose copy here rotted and no value was durably stored
    // since. One lost copy at a time: no rot meets another or a replaced disk.
    std::set<SectorIdx> rotted;
  };

  struct Op {
    HistoryOp h;
    int node = 0;
    std::uint64_t epoch = 0;
    bool waiting = false;      // the client still waits for it
    bool in_register = false;  // the coordinator still holds it
    bool final_read = false;
    // Extent commands: every member's Op has the token of the first (the command's
    // request_id); the first also holds the member count.
    std::uint64_t extent_first = 0;
    std::uint32_t extent_count = 0;
  };

  // Workload and fault parameters, drawn from the seed.
  struct Params {
    int clients = 4;
    int hot_sectors = 2;
    int hot_permille = 850;
    int read_permille = 500;
    // 0: every client reads and writes. k > 0: clients 0..k-1 mostly write, the others only
    // read (writes then rarely overlap, so a stale read has nowhere to hide).
    int writers = 0;
    std::int64_t think_max_us = 3000;
    std::int64_t timeout_ms = 4000;
    std::int64_t tick_ms = 10;
    std::int64_t nemesis_min_ms = 10;
    std::int64_t nemesis_max_ms = 200;
    int max_down = 1;
  };

  // --- randomness ---
  std::uint64_t Below(std::uint64_t n) { return n == 0 ? 0 : rng_() % n; }
  std::int64_t Range(std::int64_t lo, std::int64_t hi) {
    return lo + static_cast<std::int64_t>(Below(static_cast<std::uint64_t>(hi - lo + 1)));
  }
  bool Chance(int permille) { return static_cast<int>(Below(1000)) < permille; }

  // --- events ---
  void Push(Event e) {
    e.seq = next_seq_++;
    queue_.push(std::move(e));
  }
  void At(std::int64_t delay_us, Event e) {
    e.time_us = now_us_ + std::max<std::int64_t>(1, delay_us);
    Push(std::move(e));
  }
  void Dispatch(const Event& e);
  std::int64_t NowMs() const { return now_us_ / kUsPerMs; }
  std::int64_t HistNow() {
    hist_ns_ = std::max(hist_ns_ + 1, now_us_ * 1000);
    return hist_ns_;
  }

  // --- trace and failures ---
  void Trace(const std::string& line);
  void Fail(const std::string& check, const std::string& detail);
  bool failed() const { return !result_.ok; }

  // --- nodes ---
  void OpenStore(int n);
  void Crash(int n);
  void Restart(int n);
  // SimOptions::bit_rot: flips a bit of a slot of a sector node n holds durably: while it is
  // down, or while it runs on a sector it holds nothing of in memory.
  void Rot(int n);
  void CloseStoreAndRestartIn(int n, std::int64_t delay_us);
  // Builds the node's core over its opened store and starts it (its Syncer starts at a tick).
  void StartNode(int n);
  void OnRegisterLoaded(int n, SectorIdx sector, const Triple& stored);
  void ScheduleSync(int n);
  void RunSync(int n);
  void ScheduleTick(int n);
  void CheckDiskHolds(int n, const char* when);
  void CheckAfterEvent();
  // Crashes and restarts every node whose core called Fatal during the last event, as
  // atomdiskd exits and systemd restarts it.
  void ReapFatal();
  void NoteDurable(int n, SectorIdx sector, Tag tag, std::uint64_t value_id);
  void NoteTagValue(SectorIdx sector, Tag tag, std::uint64_t value_id, const char* where);
  // Whether some disk, register, waiting absorb or message in flight still holds this value.
  bool ValueExists(SectorIdx sector, Tag tag, std::uint64_t value_id);
  // Ends the node's core (a crash, or the end of the run); what it still had to do is lost.
  void StopNode(int n);
  Tag DurableTagAt(int n, SectorIdx sector);
  // The store of node n serves nothing for `sector` until a repair (docs/STORAGE.md, "Suspect
  // sectors"), though a slot of it is valid.
  bool Suspect(int n, SectorIdx sector);
  bool WillVote(int n) const;
  void ReplaceDisk(int n);
  void CheckConvergence();

  // --- the core's effects, and what the checkers see of it ---
  void OnSendSync(int from, Rank to, const SyncMessage& msg);
  void OnSetVoting(int n, bool voting);
  void OnSend(int from, Rank to, const SystemMessage& msg);
  void OnSendBatch(int from, std::span<const Rank> to, std::span<const SystemMessage> msgs);
  // The checks every system message passes on its way out (alone or in a batch), given its
  // decoded copy `d`; false (after Fail) if one fires. Sets `what` for the trace.
  bool CheckOutgoing(int from, Rank to, const SystemMessage& msg, const SystemMessage& d,
                     std::string& what);
  // What a node does with one system message it receives (alone or as a batch member).
  void DeliverSystem(Node& dst, const SystemMessage& msg, bool alone);
  // Runs NodeCore::FlushOutbox on every node that asked for it during the last event.
  void FlushOutboxes();
  void Transmit(int from, int to, Event e, const std::string& what);
  static std::string SyncWhat(const SyncMessage& msg, Rank from, Rank to);
  void OnStoreWrite(int n, SectorIdx sector, const Triple& value, bool absorb);
  void OnStoreWriteDone(int n, SectorIdx sector, Tag tag, const Status& status, bool absorb);
  void OnTagFromCache(int n, SectorIdx sector, Tag tag);
  // A response frame from node n's core (incarnation `epoch`) to the simulated clients.
  void OnResponseFrame(int n, std::uint64_t epoch, const Frame& frame);
  void OnComplete(int n, std::uint64_t token, SectorPtr data);
  // The operation (one history entry) completed OK now; a read's value is already set.
  void NoteOk(Op& op);
  // The value id a read of `what` returned, or nullopt after failing the run (no data:
  // sim-internal; bytes no client wrote: torn-value, naming `where`).
  std::optional<std::uint64_t> ReadValueId(const SectorPtr& data, const std::string& what,
                                           const std::string& where);
  void OnExtentResponse(int n, const ClientResponse& resp);
  // A client's operation ended (answered, timed out or lost): the client thinks, then issues
  // its next one. Once per command: an extent's members only through its first.
  void OpEnded(std::uint64_t token, bool command_done = false);

  // --- network ---
  void Deliver(const Event& e);
  std::int64_t NetDelayUs(int from, int to);
  void DrawLinkLatencies();

  // --- clients ---
  // Appends the history entries of one command (one per member of an extent), coordinated by
  // node n (-1: the client library picks), traces the call, and returns the first token.
  std::uint64_t NewOps(int client, int n, bool is_write, SectorIdx sector, bool final_read,
                       std::uint32_t extent);
  // Sends op `token`'s command, HMAC-signed, to node n's core.
  void SendClientCommand(int n, std::uint64_t token);
  void ClientIssue(int client);
  std::uint64_t StartOp(int client, int node, bool is_write, SectorIdx sector, bool final_read,
                        std::uint32_t extent = 1);
  void ClientDone(int client);
  void ClientTimeout(std::uint64_t token);
  // With SimOptions::client_library: the clients are ClientCores (one per simulated client,
  // plus one per node for the final reads) over a simulated network of client connections.
  void Call(std::int64_t delay_us, std::function<void()> fn, bool uncounted = false);
  void CreateLibClients();
  // Whether a partition cuts client c off from node n (as it cuts c's home node off).
  bool LibBlocked(int c, int n) const;
  void LibStartConnecting(int c);
  void LibDial(int c, int n);
  // One frame on c's connection to n, either way: the virtual time it arrives (in order after
  // the one before it the same way, `last_us`), or -1 when a partition or a drop loses it and
  // the connection stalls from now on.
  std::int64_t LibTransit(int c, int n, LibConn& conn, std::int64_t& last_us,
                          const std::string& what);
  void LibToNode(int c, int n, std::shared_ptr<const Frame> frame);
  void LibToClient(int c, int n, std::uint64_t gen, SharedFrame frame);
  // Closes c's connection to n; `by_client`: the client closed it (else the client is told).
  void LibClose(int c, int n, bool by_client);
  // A node crashed: its client connections are reset, which their clients see a little later.
  void LibNodeCrashed(int n);
  void LibScheduleTick(int c);
  // Submits op `token` (and its extent members) to client c's core.
  void LibSubmit(int c, std::uint64_t token);
  void LibDone(std::uint64_t token, client::OpResult r);
  std::uint64_t LibStartOp(int client, bool is_write, SectorIdx sector, bool final_read,
                           std::uint32_t extent = 1);

  // --- faults ---
  void Nemesis();
  // Hands a live node a forged WriteProc with a tag above kMaxTagTs (SimOptions::forged_tags).
  void ForgeTopTag();
  void HealAll();
  // Clears every partition; the links it had cut come back up at both ends
  // (NodeCore::OnPeerLinkUp, as the daemon's peer links report a redial after a heal).
  void ClearPartitions();
  // The live nodes whose store holds a hot sector's tag newer than the most other live nodes
  // hold (none if all agree).
  std::vector<int> NodesAhead();

  bool Quiescent() const;
  int NodesDown() const {
    int down = 0;
    for (const auto& node : nodes_) down += node->up ? 0 : 1;
    return down;
  }
  std::string StuckOps() const;

  SimOptions options_;
  std::ostream* trace_out_;
  std::mt19937_64 rng_;
  Params p_;
  SimResult result_;
  std::deque<std::string> last_events_;
  std::uint64_t hash_ = 0xcbf29ce484222325ULL;

  EventQueue<Event, EventLater> queue_;
  std::uint64_t next_seq_ = 0;
  std::int64_t now_us_ = 0;
  std::int64_t hist_ns_ = 0;
  bool healing_ = false;  // faults healed, no new client operations, no timeouts

  // The cluster every core is configured with, and how the cores are tuned for this run.
  ClusterConfig cluster_;
  NodeCoreOptions core_options_;
  std::unique_ptr<Hmac> client_mac_;  // the simulated clients' key
  std::vector<std::unique_ptr<Node>> nodes_;
  std::vector<std::vector<bool>> blocked_;  // blocked_[from][to]: partitioned link
  // With SimOptions::link_liveness: since when the link between a and b (a < b) has been cut
  // one way or both (virtual us), -1 while it is not.
  std::vector<std::vector<std::int64_t>> cut_since_us_;
  // Whether node a's link to node b is up: b's process is alive and, with link liveness, the
  // link has not been cut for kSimPeerTimeoutMs (NodeCoreEnv::PeerConnected).
  bool LinkUp(int a, int b) const;
  // Updates cut_since_us_ after blocked_ changed.
  void NoteCuts();
  std::vector<std::vector<std::int64_t>> link_latency_us_;  // typical delay of each link
  std::uint64_t partition_gen_ = 0;
  int drop_permille_ = 0;
  int dup_permille_ = 0;
  int slow_permille_ = 0;

  std::vector<Op> ops_;                                  // token = index + 1
  std::vector<std::unique_ptr<LibClient>> lib_clients_;  // SimOptions::client_library
  // Client frames on their way to a node: one may start an operation after its client gave up.
  std::uint64_t lib_frames_to_nodes_ = 0;
  std::uint64_t next_value_id_ = 0;
  // (sector, tag) of every triple that left a node or became durable -> its value id.
  std::map<std::pair<SectorIdx, Tag>, std::uint64_t> tag_values_;
  // value id -> its tag (the first one seen), and per sector the highest tag of an operation
  // that completed (the client was told): a node's promises that outlive its disk.
  std::map<std::uint64_t, Tag> value_tags_;
  std::map<SectorIdx, Tag> completed_tags_;
  bool fresh_cluster_ = false;  // nodes start with no IDENTITY (else: voting, all voters)
  // A fresh cluster bootstrapped (atomdiskd --bootstrap): nodes start with a genesis
  // IDENTITY, and `late_node_` (an index) starts only some seconds later, as a node that was
  // down when the cluster was created; the others must serve meanwhile.
  bool bootstrapped_ = false;
  int late_node_ = -1;
  // The node (index) that plays an atomdisk from before tag-only reads, or -1: its
  // HelloReplies lack the features byte, and it never sends ReadTag.
  int old_node_ = -1;
};

Simulator::Simulator(const SimOptions& options, std::ostream* trace)
    : options_(options), trace_out_(trace), rng_(options.seed) {}

void Simulator::Trace(const std::string& line) {
  char head[48];
  std::snprintf(head, sizeof(head), "%lld.%03lld ", static_cast<long long>(now_us_ / 1000),
                static_cast<long long>(now_us_ % 1000));
  std::string full = head + line;
  for (unsigned char c : full) hash_ = (hash_ ^ c) * 0x100000001b3ULL;
  hash_ = (hash_ ^ '\n') * 0x100000001b3ULL;
  if (trace_out_) *trace_out_ << full << '\n';
  last_events_.push_back(std::move(full));
  if (last_events_.size() > kLastEvents) last_events_.pop_front();
}

void Simulator::Fail(const std::string& check, const std::string& detail) {
  if (failed()) return;  // the first failure is the one reported
  result_.ok = false;
  result_.check = check;
  result_.detail = detail;
  Trace("FAIL " + check + ": " + detail);
}

// ---------------------------------------------------------------------------------------
// Nodes: store, registers, crash and restart.

void Simulator::OpenStore(int n) {
  Node& node = *nodes_[n];
  node.gate = std::make_shared<CrashGate>(node.disk);
  SectorStore::Options o;
  o.sectors = kDeviceSectors;
  o.background_sync = false;
  node.opened = SectorStore::OpenOnFile(ShareBlockFile(node.gate), o);
  node.store = node.opened.get();
  node.written_since_open.clear();
}

void Simulator::CheckDiskHolds(int n, const char* when) {
  Node& node = *nodes_[n];
  for (auto& [sector, tag] : node.max_durable) {
    // A suspect sector's valid slot: a write torn by the crash shadows the durable value,
    // which the other slot must still hold (a rotted copy is no longer in max_durable).
    Result<Triple> r = node.store->ReadNewestValid(sector);
    if (!r.ok()) {
      Fail("store-error", "node " + std::to_string(node.rank) + " sector " +
                              std::to_string(sector) + " " + when + ": " + r.status().ToString());
      return;
    }
    if (!ValueIdOf(*r->data)) {
      Fail("torn-value", "node " + std::to_string(node.rank) + " sector " + std::to_string(sector) +
                             " " + when + " reads tag " + TagStr(r->tag) +
                             " with data that no client wrote");
      return;
    }
    if (r->tag < tag && !options_.state_checks) tag = r->tag;  // --history-only
    if (r->tag < tag) {
      Fail("durable-decreased", "node " + std::to_string(node.rank) + " sector " +
                                    std::to_string(sector) + " " + when + ": disk holds " +
                                    TagStr(r->tag) + " but " + TagStr(tag) +
                                    " was durable there before");
      return;
    }
  }
}

void Simulator::Crash(int n) {
  Node& node = *nodes_[n];
  ++result_.stats.crashes;
  Trace("crash node " + std::to_string(node.rank) + " (" +
        std::to_string(node.core ? node.core->active_registers() : 0) + " registers, " +
        std::to_string(node.persists_in_flight) + " persists in flight)");
  node.up = false;
  node.gate->Cut();
  node.disk->SimulateCrash(rng_);
  StopNode(n);
  node.writeprocs.clear();
  if (options_.client_library) LibNodeCrashed(n);
  // Operations this node coordinated are lost: their clients stop waiting (outcome unknown).
  for (std::uint64_t token : node.tokens) {
    Op& op = ops_[token - 1];
    op.in_register = false;
    if (op.waiting) {
      op.waiting = false;
      op.h.outcome = HistoryOp::Outcome::kUnknown;
      ++result_.stats.ops_unknown;
      OpEnded(token, /*command_done=*/op.extent_first == token);
    }
  }
  node.tokens.clear();
}

// A node that is down with its store open (it failed to start, or never started): the store
// is closed and a restart is due in `delay_us`.
void Simulator::CloseStoreAndRestartIn(int n, std::int64_t delay_us) {
  Node& node = *nodes_[n];
  node.gate->Cut();
  node.opened.reset();
  node.store = nullptr;
  Event e;
  e.type = EventType::kRestart;
  e.node = n;
  At(delay_us, std::move(e));
}

void Simulator::Rot(int n) {
  Node& node = *nodes_[n];
  const bool running = node.up && node.core != nullptr;
  // The fault model tolerates one lost copy of a value: no rot while a replaced disk is
  // rejoining, and none of a sector that has a rotted copy elsewhere.
  std::set<SectorIdx> rotted_anywhere;
  for (const auto& other : nodes_) {
    if (other->replaced || other->replace_on_restart) return;
    rotted_anywhere.insert(other->rotted.begin(), other->rotted.end());
  }
  std::vector<std::map<SectorIdx, Tag>::iterator> written;
  for (auto it = node.max_durable.begin(); it != node.max_durable.end(); ++it) {
    if (it->second == Tag{} || rotted_anywhere.contains(it->first)) continue;
    // Under a running node, only a sector it holds nothing of in memory: no register, not in
    // the store's slot cache, nothing written since the store opened. Its next read goes to the
    // disk, as after a restart. (Rot under a cached sector: docs/SIMULATION.md, "Known gaps".)
    if (running && (node.core->FindRegisterForChecks(it->first) != nullptr ||
                    node.store->CachedDurableTag(it->first).has_value() ||
                    node.written_since_open.contains(it->first))) {
      continue;
    }
    written.push_back(it);
  }
  if (written.empty()) return;
  auto it = written[Below(written.size())];
  const SectorIdx sector = it->first;
  // A written slot (an empty one's bytes mean nothing: rot there loses nothing).
  std::vector<int> slots;
  for (int k = 0; k < 2; ++k) {
    std::array<std::uint8_t, 64> header{};
    if (!node.disk->ReadAt(StoreSlotOffset(sector, k), header.data(), header.size()).ok()) return;
    if (header != std::array<std::uint8_t, 64>{}) slots.push_back(k);
  }
  if (slots.empty()) return;
  const int slot = slots[Below(slots.size())];
  // Mostly the data; an eighth of the time the 64-byte header (its tag, magic or checksum).
  const std::uint64_t byte = Chance(125) ? Below(64) : 64 + Below(kSectorSize);
  const std::uint64_t offset = StoreSlotOffset(sector, slot) + byte;
  node.disk->CorruptByte(offset, static_cast<int>(Below(8)));
  ++result_.stats.rotted_slots;
  Trace(std::string(running ? "rot (running) node " : "rot node ") + std::to_string(node.rank) +
        " sector " + std::to_string(sector) + " slot " + std::to_string(slot) + " byte " +
        std::to_string(byte) + " (durable there: " + TagStr(it->second) + ")");
  // The model's promise for this copy is void: what it held may be gone. The node must not
  // serve an older value in its place either; linearizability and the later checks say so.
  node.known_durable.erase(sector);
  node.max_durable.erase(it);
  node.rotted.insert(sector);
}

void Simulator::Restart(int n) {
  Node& node = *nodes_[n];
  if (node.up) return;
  if (node.replace_on_restart) {
    // A new, blank disk: no data and no IDENTITY. What the old disk held is gone, legitimately.
    node.replace_on_restart = false;
    node.disk = std::make_shared<FaultyBlockFile>();
    node.identity.reset();
    if (options_.bug == SimBug::kGenesisTrusted) {
      // The operator's mistake: atomdiskd --bootstrap on the replacement disk.
      node.identity = GenesisIdentity(node.rank);
    }
    node.max_durable.clear();
    node.known_durable.clear();
    node.rotted.clear();
  } else if (options_.bug == SimBug::kForgetOnRestart) {
    node.disk = std::make_shared<FaultyBlockFile>();  // the bug: a blank disk, IDENTITY kept
  } else if (options_.bug == SimBug::kLeaseForgotten && node.identity) {
    // The bug: the restart does not start above the earlier run's lease, under which writes
    // went out before their own copy was durable.
    node.identity->write_ts_lease = 0;
  }
  if (options_.bit_rot && Chance(500)) Rot(n);
  OpenStore(n);
  Result<Triple> probe = node.store->Read(0);
  if (!probe.ok() && probe.status().code() == StatusCode::kIOError) {
    // The store failed to open (an injected EIO on its first sync): try again later.
    Trace("restart node " + std::to_string(node.rank) + " failed (" + probe.status().ToString() +
          "): retrying");
    CloseStoreAndRestartIn(n, Range(1, 50) * kUsPerMs);
    return;
  }
  node.up = true;
  Trace("restart node " + std::to_string(node.rank) +
        (!node.identity           ? " (no IDENTITY)"
         : node.identity->voting  ? " (IDENTITY: voting)"
         : node.identity->genesis ? " (IDENTITY: genesis)"
                                  : " (IDENTITY: joining)"));
  CheckDiskHolds(n, "after restart");
  node.known_durable.clear();  // rebuilt lazily from the disk, which is all durable now
  if (failed()) return;
  StartNode(n);
  ScheduleTick(n);
  // The peers' links to the restarted node reconnect (NodeCore::OnPeerLinkUp).
  for (std::size_t m = 0; m < nodes_.size(); ++m) {
    Node& peer = *nodes_[m];
    if (static_cast<int>(m) != n && peer.up && peer.core) peer.core->OnPeerLinkUp(node.rank);
  }
}

void Simulator::StartNode(int n) {
  Node& node = *nodes_[n];
  // As atomdiskd's start-up (daemon/main.cc): a sector counts as written when it has a valid
  // slot (a torn first write reads as unwritten, tag (0,0)).
  NodeMembership membership;
  membership.identity = node.identity;
  if (!node.identity) {
    Status scan = node.store->ScanRange(0, kDeviceSectors, /*verify_all=*/false,
                                        [&](SectorIdx, Tag tag, bool) {
                                          if (tag != Tag{}) membership.store_empty = false;
                                        });
    if (!scan.ok()) {
      Fail("store-error",
           "node " + std::to_string(node.rank) + " scan at start: " + scan.ToString());
      return;
    }
  } else {
    membership.store_empty = false;
  }
  NodeCoreOptions o = core_options_;
  o.tag_reads = n != old_node_;
  o.boot_nonce = rng_();
  o.version = "sim";
  Trace("node " + std::to_string(node.rank) + " starts: " +
        (!node.identity           ? "no IDENTITY"
         : node.identity->voting  ? "IDENTITY voting"
         : node.identity->genesis ? "IDENTITY genesis"
                                  : "IDENTITY joining") +
        (membership.store_empty ? ", empty store" : ", data in store"));
  node.voting = false;
  node.fatal.reset();
  node.posted.clear();
  node.core = std::make_unique<NodeCore>(cluster_, node.rank, std::move(node.opened),
                                         std::move(membership), node.env.get(), std::move(o));
  node.core->SetObserver(node.env.get());
  node.channel = std::make_shared<SimChannel>(this, n, node.epoch);
  node.core->Start();
}

void Simulator::StopNode(int n) {
  Node& node = *nodes_[n];
  ++node.epoch;
  if (node.core) {
    // With the client library the answers go to its cores, not through OnExtentResponse.
    if (options_.client_library) {
      result_.stats.extents_refused += node.core->counters().no_quorum_extents;
    }
    if (Syncer* syncer = node.core->syncer_if_started()) {
      SyncStatus st = syncer->GetStatus(NowMs());
      result_.stats.passes_done += st.resync.passes_done;
      result_.stats.sync_deferred += st.serve.deferred;
      result_.stats.sync_dropped += st.serve.dropped;
    }
    // Nothing the dying core does from here on reaches the checkers or the world.
    node.core->SetObserver(nullptr);
    node.core.reset();
  }
  node.opened.reset();
  node.store = nullptr;
  node.channel.reset();
  node.posted.clear();
  node.fatal.reset();
  node.write_ids.clear();
  node.persists_in_flight = 0;
  node.absorbs_in_flight = 0;
  node.sync_scheduled = false;
  node.disk_slow = false;
  node.voting = false;
}

bool Simulator::Suspect(int n, SectorIdx sector) {
  Node& node = *nodes_[n];
  if (node.store == nullptr) return false;
  Result<Triple> r = node.store->Read(sector);
  return !r.ok() && r.status().code() == StatusCode::kCorruption &&
         node.store->ReadNewestValid(sector).ok();
}

Tag Simulator::DurableTagAt(int n, SectorIdx sector) {
  Node& node = *nodes_[n];
  Tag t;
  auto k = node.known_durable.find(sector);
  if (k != node.known_durable.end()) t = k->second;
  if (!node.written_since_open.contains(sector) || node.disk->PendingWriteCount() == 0) {
    // Nothing unsynced for this sector: what the store reads is durable. A suspect sector's
    // valid slot is durable too; a torn or rotted slot over it holds nothing durable.
    Result<Triple> r = node.store->ReadNewestValid(sector);
    if (r.ok()) t = std::max(t, r->tag);
  }
  return t;
}

bool Simulator::WillVote(int n) const {
  const Node& node = *nodes_[n];
  if (node.up) return node.voting;
  return !node.replace_on_restart && node.identity && node.identity->voting;
}

void Simulator::ReplaceDisk(int n) {
  Node& node = *nodes_[n];
  ++result_.stats.replaced_disks;
  Trace("replace disk of node " + std::to_string(node.rank) +
        ": it crashes and restarts with an empty store and no IDENTITY");
  // Only a node that voted (its IDENTITY says so, saved before its first vote; or an earlier
  // disk of it did, and it has not voted since) made promises: a node that never voted
  // registers and votes with an empty store, by design (docs/RESYNC.md).
  const bool voted = node.replaced || (node.identity && node.identity->voting);
  Crash(n);
  node.replace_on_restart = true;
  node.replaced = voted;
  // Every operation that completed so far may rest on this disk's promises: the node must
  // hold all of them again before it votes.
  if (voted) node.must_hold = completed_tags_;
  Event e;
  e.type = EventType::kRestart;
  e.node = n;
  // Half the time a quick swap, so that the node is back before the writes it missed are
  // overwritten on every other node.
  At((Chance(500) ? Range(1, 800) : Range(1, 30)) * kUsPerMs, std::move(e));
}

void Simulator::OnSetVoting(int n, bool voting) {
  Node& node = *nodes_[n];
  Trace("node " + std::to_string(node.rank) + (voting ? " votes" : " does not vote"));
  node.voting = voting;
  if (!voting || !node.replaced) return;
  node.replaced = false;
  std::map<SectorIdx, Tag> must_hold = std::move(node.must_hold);
  node.must_hold.clear();
  if (!options_.state_checks) return;
  for (const auto& [sector, tag] : must_hold) {
    Tag here = DurableTagAt(n, sector);
    if (here < tag) {
      // Not a miss if the node serves nothing of the sector yet: it is suspect (a write of its
      // own torn by a crash shadows it, and the pass's older value may not replace it), or its
      // read repair is still on its way to the disk (a direct absorb) with at least the
      // completed tag. Either way the repair takes the newest of N - Q + 1 peers' copies.
      Result<Triple> pending = node.store->Read(sector);
      const bool repairing =
          pending.ok() && pending->tag >= tag && node.written_since_open.contains(sector);
      if (repairing || Suspect(n, sector)) {
        Trace("node " + std::to_string(node.rank) + " votes with sector " + std::to_string(sector) +
              " not served until repaired");
        continue;
      }
    }
    if (here < tag) {
      Fail("joiner-behind", "node " + std::to_string(node.rank) +
                                " votes again after its disk was replaced, but sector " +
                                std::to_string(sector) + " is durable there only at " +
                                TagStr(here) + " while an operation completed at " + TagStr(tag) +
                                " before the replacement");
      return;
    }
  }
}

void Simulator::OnRegisterLoaded(int n, SectorIdx sector, const Triple& stored) {
  Node& node = *nodes_[n];
  // Null data: built from the slot cache's tag for a WriteProc (NodeCore::GetRegister).
  if (stored.data && !ValueIdOf(*stored.data)) {
    Fail("torn-value", "node " + std::to_string(node.rank) + " sector " + std::to_string(sector) +
                           " reads tag " + TagStr(stored.tag) + " with data that no client wrote");
    return;
  }
  if (!stored.data) ++result_.stats.registers_from_cached_tag;
  if (!node.written_since_open.contains(sector)) {
    // Nothing was written to this sector since the store was opened over the disk left by
    // the last crash: what it reads is durable.
    Tag& k = node.known_durable[sector];
    k = std::max(k, stored.tag);
  }
  Tag& m = node.max_durable[sector];
  if (stored.tag < m && !options_.state_checks) m = stored.tag;  // --history-only
  if (stored.tag < m) {
    Fail("durable-decreased", "node " + std::to_string(node.rank) + " sector " +
                                  std::to_string(sector) + ": store reads " + TagStr(stored.tag) +
                                  " but " + TagStr(m) + " was durable there before");
    return;
  }
  ++result_.stats.registers_created;
}

void Simulator::ScheduleSync(int n) {
  Node& node = *nodes_[n];
  if (node.sync_scheduled || !node.up) return;
  node.sync_scheduled = true;
  Event e;
  e.type = EventType::kSync;
  e.node = n;
  e.epoch = node.epoch;
  // Group commit latency: usually fast, sometimes a slow disk.
  std::int64_t delay = node.disk_slow ? Range(5000, 150000) : Range(20, 1500);
  if (Chance(20)) delay += Range(2000, 40000);
  At(delay, std::move(e));
}

void Simulator::RunSync(int n) {
  Node& node = *nodes_[n];
  node.sync_scheduled = false;
  ++result_.stats.syncs;
  // The store's callbacks note what became durable (OnStoreWriteDone) and post the core's
  // work (NodeCoreEnv::Post), which runs below, after the whole sync, as on a daemon's io
  // thread.
  std::size_t ran = node.store->SyncNow();
  Trace("sync node " + std::to_string(node.rank) + ": " + std::to_string(ran) + " callbacks");
  if (failed()) return;
  if (!healing_ && ran > 0 && Chance(10) && NodesDown() < p_.max_down) {
    // The node dies after the sync, before anyone hears of it: durable, never acked.
    Trace("node " + std::to_string(node.rank) + " dies right after its sync");
    Crash(n);
    Event e;
    e.type = EventType::kRestart;
    e.node = n;
    At(Range(1, 800) * kUsPerMs, std::move(e));
    return;
  }
  std::vector<std::function<void()>> posted = std::move(node.posted);
  node.posted.clear();
  const std::uint64_t epoch = node.epoch;
  for (auto& fn : posted) {
    if (failed() || node.epoch != epoch) return;
    fn();
  }
  if (failed()) return;
  if (node.persists_in_flight > 0) ScheduleSync(n);
}

void Simulator::NoteDurable(int n, SectorIdx sector, Tag tag, std::uint64_t value_id) {
  Node& node = *nodes_[n];
  Tag& k = node.known_durable[sector];
  k = std::max(k, tag);
  Tag& m = node.max_durable[sector];
  m = std::max(m, tag);
  NoteTagValue(sector, tag, value_id, "durable");
}

void Simulator::NoteTagValue(SectorIdx sector, Tag tag, std::uint64_t value_id, const char* where) {
  if (value_id != 0) value_tags_.emplace(value_id, tag);
  if (!options_.state_checks) return;
  if (tag == Tag{}) {
    if (value_id != 0) {
      Fail("tag-reuse",
           "sector " + std::to_string(sector) + " tag (0,0) carries v" + std::to_string(value_id));
    }
    return;
  }
  auto [it, inserted] = tag_values_.emplace(std::make_pair(sector, tag), value_id);
  if (!inserted && it->second != value_id && result_.stats.replaced_disks > 0 &&
      !ValueExists(sector, tag, it->second)) {
    // Every copy of the old value was on a disk since replaced (and the messages that carried
    // it were lost with their sender): its writer, rejoined, minted the tag again.
    Trace("  sector " + std::to_string(sector) + " tag " + TagStr(tag) + ": v" +
          std::to_string(it->second) +
          " is gone everywhere (replaced disk); the tag now carries v" + std::to_string(value_id));
    it->second = value_id;
    return;
  }
  if (!inserted && it->second != value_id) {
    Fail("tag-reuse", "sector " + std::to_string(sector) + " tag " + TagStr(tag) + " carries v" +
                          std::to_string(it->second) + " and, " + where + ", v" +
                          std::to_string(value_id) + ": two values with one tag");
  }
}

bool Simulator::ValueExists(SectorIdx sector, Tag tag, std::uint64_t value_id) {
  auto same = [&](Tag t, const SectorPtr& data) {
    return t == tag && data && ValueIdOf(*data) == value_id;
  };
  for (const auto& node : nodes_) {
    if (!node->up && node->replace_on_restart) continue;  // that disk is gone
    SectorStore::Options o;
    o.sectors = kDeviceSectors;
    o.background_sync = false;
    auto view = SectorStore::OpenOnFile(std::make_unique<ReadOnlyView>(node->disk), o);
    Result<Triple> r = view->Read(sector);
    if (!r.ok() || same(r->tag, r->data)) return true;  // unreadable: assume it is there
    if (!node->up || !node->core) continue;
    const Register* reg = node->core->FindRegisterForChecks(sector);
    if (reg && (same(reg->stored().tag, reg->stored().data) ||
                same(reg->durable().tag, reg->durable().data))) {
      return true;
    }
  }
  for (const Event& e : queue_.items()) {
    if (e.type != EventType::kDeliver || nodes_[e.from]->epoch != e.from_epoch ||
        nodes_[e.node]->epoch != e.epoch) {
      continue;  // not a message, or one that will be lost
    }
    if (e.msg && e.msg->sector == sector && same(e.msg->tag, e.msg->data)) return true;
    if (e.sync_msg) {
      for (const FetchedSector& f : e.sync_msg->fetched) {
        if (f.ok && f.sector == sector && same(f.value.tag, f.value.data)) return true;
      }
    }
  }
  return false;
}

void Simulator::ScheduleTick(int n) {
  Event e;
  e.type = EventType::kTick;
  e.node = n;
  e.epoch = nodes_[n]->epoch;
  At(p_.tick_ms * kUsPerMs + Range(-2000, 2000), std::move(e));
}

// ---------------------------------------------------------------------------------------
// Register effects.

namespace {
// Whether a system message came out of the codec as it went in.
bool SameAfterCodec(const SystemMessage& msg, const SystemMessage& d) {
  return d.sender == msg.sender && d.op_id == msg.op_id && d.sector == msg.sector &&
         d.content == msg.content && (!HasTag(msg.content) || d.tag == msg.tag) &&
         (!HasData(msg.content) || (msg.data && d.data && *d.data == *msg.data));
}
}  // namespace

void Simulator::OnSend(int from, Rank to, const SystemMessage& msg) {
  ++result_.stats.messages_sent;
  // Every message goes through the wire codec.
  std::vector<std::uint8_t> payload = EncodePayload(msg);
  Result<SystemMessage> decoded = DecodeSystemMessage(payload);
  if (!decoded.ok()) {
    Fail("codec", "decoding an encoded " + std::string(SystemContentName(msg.content)) + ": " +
                      decoded.status().ToString());
    return;
  }
  if (!SameAfterCodec(msg, *decoded)) {
    Fail("codec", std::string(SystemContentName(msg.content)) + " changed in a round trip");
    return;
  }
  std::string what;
  if (!CheckOutgoing(from, to, msg, *decoded, what)) return;
  Event e;
  e.msg = std::make_shared<const SystemMessage>(std::move(decoded).value());
  Transmit(from, to - 1, std::move(e), what);
}

void Simulator::OnSendBatch(int from, std::span<const Rank> to,
                            std::span<const SystemMessage> msgs) {
  Node& src = *nodes_[from];
  ++result_.stats.batches_sent;
  // Every batch goes through the wire codec, as one payload.
  std::vector<std::uint8_t> payload = EncodeBatchPayload(msgs);
  Result<std::vector<SystemMessage>> decoded = DecodeSystemBatch(payload);
  if (!decoded.ok()) {
    Fail("codec", "decoding an encoded system batch: " + decoded.status().ToString());
    return;
  }
  if (decoded->size() != msgs.size() || msgs.size() < 2) {
    Fail("codec", "a system batch of " + std::to_string(msgs.size()) + " decodes to " +
                      std::to_string(decoded->size()) + " messages");
    return;
  }
  auto batch = std::make_shared<const std::vector<SystemMessage>>(std::move(decoded).value());
  for (Rank r : to) {
    // Batches only between nodes that both have them (negotiated through HelloReply features).
    if (from == old_node_ || r - 1 == old_node_) {
      Fail("feature-negotiation", "node " + std::to_string(src.rank) + " sends a batch of " +
                                      std::to_string(msgs.size()) + " to " + std::to_string(r) +
                                      " but " + (from == old_node_ ? "it" : "that node") +
                                      " plays a node without batches");
      return;
    }
    std::string what = "batch " + std::to_string(src.rank) + "->" + std::to_string(r) + " of " +
                       std::to_string(msgs.size()) + ":";
    for (std::size_t i = 0; i < msgs.size(); ++i) {
      ++result_.stats.messages_sent;
      if (!SameAfterCodec(msgs[i], (*batch)[i])) {
        Fail("codec", "member " + std::to_string(i) + " of a system batch changed in a round trip");
        return;
      }
      std::string member;
      if (!CheckOutgoing(from, r, msgs[i], (*batch)[i], member)) return;
      if (i < 4) what += " " + member;
    }
    if (msgs.size() > 4) what += " ...";
    Event e;
    e.batch = batch;
    Transmit(from, r - 1, std::move(e), what);
  }
}

bool Simulator::CheckOutgoing(int from, Rank to, const SystemMessage& msg, const SystemMessage& d,
                              std::string& what) {
  Node& src = *nodes_[from];
  if (msg.sender != src.rank || to == src.rank || to < 1 || to > static_cast<int>(nodes_.size())) {
    Fail("sim-internal", "node " + std::to_string(src.rank) + " sends a message as " +
                             std::to_string(msg.sender) + " to " + std::to_string(to));
    return false;
  }
  const bool has_value = HasData(msg.content);
  std::uint64_t value_id = 0;
  if (has_value) {
    std::optional<std::uint64_t> id = ValueIdOf(*d.data);
    if (!id) {
      Fail("torn-value", "node " + std::to_string(src.rank) + " sends a " +
                             SystemContentName(msg.content) + " with data no client wrote");
      return false;
    }
    value_id = *id;
    NoteTagValue(d.sector, d.tag, value_id,
                 msg.content == SystemContent::kValue ? "in a Value" : "in a WriteProc");
  }
  what = std::string(SystemContentName(msg.content)) + " " + std::to_string(src.rank) + "->" +
         std::to_string(to) + " op " + ShortId(msg.op_id) + " sector " + std::to_string(msg.sector);
  if (has_value) what += " tag " + TagStr(d.tag) + " v" + std::to_string(value_id);
  if (msg.content == SystemContent::kTag) what += " tag " + TagStr(d.tag);

  // ReadTag only between nodes that both have it (negotiated through HelloReply features).
  if (msg.content == SystemContent::kReadTag && (from == old_node_ || to - 1 == old_node_)) {
    Fail("feature-negotiation", "node " + std::to_string(src.rank) + " sends " + what + " but " +
                                    (from == old_node_ ? "it" : "that node") +
                                    " plays a node without tag-only reads");
    return false;
  }
  // A Value or a Tag reports only what is durable at its sender (the one-round-trip read and
  // the tag-only first phase rely on it).
  if (options_.state_checks &&
      (msg.content == SystemContent::kValue || msg.content == SystemContent::kTag)) {
    Tag durable = DurableTagAt(from, msg.sector);
    if (durable < d.tag) {
      Fail("reported-not-durable", "node " + std::to_string(src.rank) + " sends " + what +
                                       " while only " + TagStr(durable) + " is durable there");
      return false;
    }
  }

  if (msg.content == SystemContent::kAck && options_.state_checks) {
    auto it = src.writeprocs.find({to, msg.op_id});
    if (it == src.writeprocs.end()) {
      Fail("ack-before-durable", "node " + std::to_string(src.rank) + " acks op " +
                                     ShortId(msg.op_id) + " to " + std::to_string(to) +
                                     " without having received its WriteProc");
      return false;
    }
    auto [sector, tag] = it->second;
    Tag durable = src.known_durable.count(sector) ? src.known_durable[sector] : Tag{};
    if (durable < tag && src.disk->PendingWriteCount() == 0) {
      // Nothing on this disk is unsynced: what the store reads is durable.
      Result<Triple> r = src.store->Read(sector);
      if (r.ok()) durable = std::max(durable, r->tag);
    }
    if (durable < tag) {
      Fail("ack-before-durable", "node " + std::to_string(src.rank) + " acks WriteProc " +
                                     TagStr(tag) + " (op " + ShortId(msg.op_id) + ", sector " +
                                     std::to_string(sector) + ") to " + std::to_string(to) +
                                     " while only " + TagStr(durable) + " is durable there");
      return false;
    }
    src.writeprocs.erase(it);
  }

  if (options_.state_checks && !src.voting &&
      (msg.content == SystemContent::kValue || msg.content == SystemContent::kTag ||
       msg.content == SystemContent::kAck)) {
    Fail("nonvoter-answered",
         "node " + std::to_string(src.rank) + " does not vote but sends " + what);
    return false;
  }
  return true;
}

void Simulator::Transmit(int from, int to, Event e, const std::string& what) {
  Node& src = *nodes_[from];
  Node& dst = *nodes_[to];
  if (!dst.up || blocked_[from][to] || Chance(drop_permille_)) {
    ++result_.stats.messages_dropped;
    Trace("send " + what + " (dropped)");
    return;
  }
  int copies = Chance(dup_permille_) ? 2 : 1;
  if (copies == 2) ++result_.stats.messages_duplicated;
  e.type = EventType::kDeliver;
  e.node = to;
  e.from = from;
  e.epoch = dst.epoch;
  e.from_epoch = src.epoch;
  for (int i = 0; i < copies; ++i) {
    std::int64_t delay = NetDelayUs(from, to);
    Trace("send " + what + " in " + std::to_string(delay) + "us" + (i ? " (duplicate)" : ""));
    At(delay, e);
  }
}

std::string Simulator::SyncWhat(const SyncMessage& msg, Rank from, Rank to) {
  std::string what = std::string("sync ") + SyncKindName(msg.kind) + " " + std::to_string(from) +
                     "->" + std::to_string(to) + " req " + std::to_string(msg.request_id);
  switch (msg.kind) {
    case SyncKind::kHelloReply: {
      what += msg.voting ? " voting, voters" : " joining, voters";
      for (Rank r : msg.voters) what += " " + std::to_string(r);
      what += ", features " + std::to_string(msg.features);
      break;
    }
    case SyncKind::kDigest:
    case SyncKind::kDigestReply:
      what += " buckets " + std::to_string(msg.first) + "+" + std::to_string(msg.count);
      break;
    case SyncKind::kEntries:
      what += " sectors " + std::to_string(msg.first) + "+" + std::to_string(msg.count);
      break;
    case SyncKind::kEntriesReply:
      what += " sectors " + std::to_string(msg.first) + "+" + std::to_string(msg.count) + ": " +
              std::to_string(msg.entries.size()) + " entries";
      break;
    case SyncKind::kFetch:
      what += " " + std::to_string(msg.sectors.size()) + " sectors from " +
              (msg.sectors.empty() ? std::string("-") : std::to_string(msg.sectors.front()));
      break;
    case SyncKind::kFetchReply:
      what += " " + std::to_string(msg.fetched.size()) + " sectors";
      break;
    default:
      break;
  }
  return what;
}

void Simulator::OnSendSync(int from, Rank to, const SyncMessage& msg) {
  Node& src = *nodes_[from];
  ++result_.stats.messages_sent;
  ++result_.stats.sync_messages;
  if (msg.sender != src.rank || to == src.rank || to < 1 || to > static_cast<int>(nodes_.size())) {
    Fail("sim-internal", "node " + std::to_string(src.rank) + " sends a sync message as " +
                             std::to_string(msg.sender) + " to " + std::to_string(to));
    return;
  }
  // Every message goes through the wire codec; the decoded copy must encode to the same bytes.
  std::vector<std::uint8_t> payload = EncodePayload(msg);
  // A node without tag-only reads sends its HelloReply in the older layout, without the
  // features byte (decoded as features 0; our encoder would write that 0 back).
  const bool old_layout = from == old_node_ && msg.kind == SyncKind::kHelloReply;
  if (old_layout) payload.pop_back();
  Result<SyncMessage> decoded = DecodeSyncMessage(payload);
  if (!decoded.ok()) {
    Fail("codec", std::string("decoding an encoded sync ") + SyncKindName(msg.kind) + ": " +
                      decoded.status().ToString());
    return;
  }
  const SyncMessage& d = *decoded;
  std::vector<std::uint8_t> again = EncodePayload(d);
  if (old_layout) {
    if (d.features != 0 || again.back() != 0) {
      Fail("codec", "a HelloReply without its features byte decodes with features " +
                        std::to_string(d.features));
      return;
    }
    again.pop_back();
  }
  if (d.sender != msg.sender || d.kind != msg.kind || d.request_id != msg.request_id ||
      again != payload) {
    Fail("codec", std::string("sync ") + SyncKindName(msg.kind) + " changed in a round trip");
    return;
  }
  for (const FetchedSector& f : d.fetched) {
    if (!f.ok) continue;
    std::optional<std::uint64_t> id = f.value.data ? ValueIdOf(*f.value.data) : std::nullopt;
    if (!id) {
      Fail("torn-value", "node " + std::to_string(src.rank) + " sends sector " +
                             std::to_string(f.sector) +
                             " in a FetchReply with data no client "
                             "wrote");
      return;
    }
    NoteTagValue(f.sector, f.value.tag, *id, "in a FetchReply");
    if (failed()) return;
  }
  std::string what = SyncWhat(d, src.rank, to);
  Event e;
  e.sync_msg = std::make_shared<const SyncMessage>(std::move(decoded).value());
  Transmit(from, to - 1, std::move(e), what);
}

std::int64_t Simulator::NetDelayUs(int from, int to) {
  if (Chance(slow_permille_)) return Range(5000, 400000);  // late: overtaken by later ones
  std::int64_t base = link_latency_us_[from][to];
  return Range(base / 4, base * 2);
}

void Simulator::DrawLinkLatencies() {
  // Some links slower than others, so that a write reaches some nodes well before the rest.
  const std::size_t n = nodes_.size();
  link_latency_us_.assign(n, std::vector<std::int64_t>(n, 500));
  bool uneven = Chance(600);
  for (std::size_t a = 0; a < n; ++a) {
    for (std::size_t b = 0; b < n; ++b) {
      link_latency_us_[a][b] = uneven && Chance(300) ? Range(2000, 15000) : Range(100, 800);
    }
  }
}

void Simulator::OnStoreWrite(int n, SectorIdx sector, const Triple& value, bool absorb) {
  Node& node = *nodes_[n];
  std::optional<std::uint64_t> id = value.data ? ValueIdOf(*value.data) : std::nullopt;
  if (!id) {
    Fail("torn-value", "node " + std::to_string(node.rank) + (absorb ? " absorbs" : " persists") +
                           " sector " + std::to_string(sector) + " with data no client wrote");
    return;
  }
  if (absorb) {
    ++result_.stats.absorbs;
    ++node.absorbs_in_flight;
    NoteTagValue(sector, value.tag, *id, "absorbed");
    if (!node.written_since_open.contains(sector)) {
      // What the disk held when the store was opened is durable.
      Result<Triple> r = node.store->Read(sector);
      if (r.ok()) {
        Tag& k = node.known_durable[sector];
        k = std::max(k, r->tag);
      }
    }
  } else {
    ++result_.stats.persists;
  }
  Trace(std::string(absorb ? "absorb" : "persist") + " node " + std::to_string(node.rank) +
        " sector " + std::to_string(sector) + " tag " + TagStr(value.tag) + " v" +
        std::to_string(*id));
  node.written_since_open.insert(sector);
  node.write_ids[{sector, value.tag}] = *id;
  ++node.persists_in_flight;
  ScheduleSync(n);
}

void Simulator::OnStoreWriteDone(int n, SectorIdx sector, Tag tag, const Status& status,
                                 bool absorb) {
  Node& node = *nodes_[n];
  auto id = node.write_ids.find({sector, tag});
  std::uint64_t value_id = id == node.write_ids.end() ? 0 : id->second;
  Trace("  persisted node " + std::to_string(node.rank) + " sector " + std::to_string(sector) +
        " tag " + TagStr(tag) + " v" + std::to_string(value_id) + (absorb ? " (absorb)" : "") +
        ": " + status.ToString());
  if (node.persists_in_flight == 0 || (absorb && node.absorbs_in_flight == 0)) {
    Fail("sim-internal", "node " + std::to_string(node.rank) +
                             " reports a store write done that was never started");
    return;
  }
  --node.persists_in_flight;
  if (absorb) --node.absorbs_in_flight;
  // Everything a sync made durable is noted before the core hears of any of it, so that
  // checks made while it reacts (joiner-behind) see the whole batch.
  if (status.ok()) NoteDurable(n, sector, tag, value_id);
  if (status.ok() && node.rotted.erase(sector) != 0) {
    ++result_.stats.repairs;  // a value is durable here again where the rot struck
    Trace("  node " + std::to_string(node.rank) + " holds sector " + std::to_string(sector) +
          " again");
  }
}

void Simulator::OnTagFromCache(int n, SectorIdx sector, Tag tag) {
  Node& node = *nodes_[n];
  ++result_.stats.tags_from_cache;
  if (!options_.state_checks) return;
  // The dangerous direction: a cached tag below what this node made durable (and may have
  // acknowledged) would let a quorum miss a completed write.
  Tag floor;
  if (auto k = node.known_durable.find(sector); k != node.known_durable.end()) floor = k->second;
  if (auto m = node.max_durable.find(sector); m != node.max_durable.end()) {
    floor = std::max(floor, m->second);
  }
  if (tag < floor) {
    Fail("cache-behind", "node " + std::to_string(node.rank) + " answers a ReadTag for sector " +
                             std::to_string(sector) + " from its slot cache with " + TagStr(tag) +
                             " while " + TagStr(floor) + " is durable there");
  }
}

void Simulator::OnResponseFrame(int n, std::uint64_t epoch, const Frame& frame) {
  if (nodes_[n]->epoch != epoch) return;  // from an incarnation since crashed
  if (frame.size() < kFrameLengthSize) {
    Fail("codec", "node " + std::to_string(n + 1) + " sends a client frame without a length");
    return;
  }
  auto body = std::span<const std::uint8_t>(frame).subspan(kFrameLengthSize);
  auto payload = VerifyFrameBody(body, *client_mac_);
  if (!payload.ok()) {
    Fail("codec",
         "node " + std::to_string(n + 1) +
             " sends a response that fails its HMAC check: " + payload.status().ToString());
    return;
  }
  auto resp = DecodeClientResponse(*payload);
  if (!resp.ok()) {
    Fail("codec", "node " + std::to_string(n + 1) +
                      " sends a response that does not decode: " + resp.status().ToString());
    return;
  }
  if (resp->status != ResponseStatus::kOk) {
    Fail("sim-internal", "node " + std::to_string(n + 1) + " answers request " +
                             std::to_string(resp->request_id) + " with status " +
                             std::to_string(static_cast<int>(resp->status)));
    return;
  }
  if (IsExtentOp(resp->op)) {
    OnExtentResponse(n, *resp);
    return;
  }
  OnComplete(n, resp->request_id, std::move(resp->data));
}

void Simulator::OnComplete(int n, std::uint64_t token, SectorPtr data) {
  Node& node = *nodes_[n];
  if (token == 0 || token > ops_.size() || ops_[token - 1].node != n ||
      !ops_[token - 1].in_register || ops_[token - 1].epoch != node.epoch) {
    Fail("sim-internal",
         "node " + std::to_string(node.rank) + " completes unknown token " + std::to_string(token));
    return;
  }
  Op& op = ops_[token - 1];
  op.in_register = false;
  node.tokens.erase(token);
  std::string what = std::string(op.h.kind == HistoryOp::Kind::kRead ? "read" : "write") + " #" +
                     std::to_string(token) + " sector " + std::to_string(op.h.key);
  if (op.h.kind == HistoryOp::Kind::kRead) {
    std::optional<std::uint64_t> id =
        ReadValueId(data, what, what + " at node " + std::to_string(node.rank));
    if (!id) return;
    what += " -> v" + std::to_string(*id);
    if (op.waiting) op.h.value = *id == 0 ? "" : std::to_string(*id);
  } else {
    what += " v" + op.h.value;
  }
  if (!op.waiting) {
    Trace("complete " + what + " at node " + std::to_string(node.rank) +
          " (client gave up: ignored)");
    return;
  }
  NoteOk(op);
  Trace("complete " + what + " at node " + std::to_string(node.rank));
  OpEnded(token);
}

std::optional<std::uint64_t> Simulator::ReadValueId(const SectorPtr& data, const std::string& what,
                                                    const std::string& where) {
  if (!data) {
    Fail("sim-internal", what + " completed without data");
    return std::nullopt;
  }
  std::optional<std::uint64_t> id = ValueIdOf(*data);
  if (!id) Fail("torn-value", where + " returned data no client wrote");
  return id;
}

void Simulator::NoteOk(Op& op) {
  op.waiting = false;
  op.h.return_ns = HistNow();
  op.h.outcome = HistoryOp::Outcome::kOk;
  ++result_.stats.ops_ok;
  if (!op.h.value.empty()) {
    // The client now relies on this value's tag: a majority holds it durably.
    auto vt = value_tags_.find(std::stoull(op.h.value));
    if (vt != value_tags_.end()) {
      Tag& c = completed_tags_[op.h.key];
      c = std::max(c, vt->second);
    }
  }
}

void Simulator::OpEnded(std::uint64_t token, bool command_done) {
  const Op& op = ops_[token - 1];
  if (op.final_read) return;
  // An extent's members end together; its response, timeout or loss calls this once.
  if (op.extent_first != 0 && !command_done) return;
  ClientDone(static_cast<int>(op.h.client));
}

void Simulator::OnExtentResponse(int n, const ClientResponse& resp) {
  const std::uint64_t first = resp.request_id;
  if (first == 0 || first > ops_.size() || ops_[first - 1].extent_first != first) {
    Fail("sim-internal", "node " + std::to_string(n + 1) + " answers unknown extent request " +
                             std::to_string(first));
    return;
  }
  const std::uint32_t count = ops_[first - 1].extent_count;
  if (resp.outcomes.size() != count ||
      (resp.op == ClientOp::kReadExtent && resp.sectors.size() != count)) {
    Fail("codec", "node " + std::to_string(n + 1) + " answers an extent of " +
                      std::to_string(count) + " sectors with " +
                      std::to_string(resp.outcomes.size()) + " outcomes");
    return;
  }
  const bool waiting = ops_[first - 1].waiting;
  if (std::all_of(resp.outcomes.begin(), resp.outcomes.end(),
                  [](ExtentOutcome o) { return o == ExtentOutcome::kNotDone; })) {
    ++result_.stats.extents_refused;
  }
  for (std::uint32_t i = 0; i < count; ++i) {
    const std::uint64_t token = first + i;
    if (resp.outcomes[i] == ExtentOutcome::kDone) {
      OnComplete(n, token, resp.op == ClientOp::kReadExtent ? resp.sectors[i] : nullptr);
      if (!result_.ok) return;
      continue;
    }
    // Not run by this coordinator (its copy is unreadable, or it reached no quorum): known
    // not to have happened.
    Op& op = ops_[token - 1];
    op.in_register = false;
    nodes_[n]->tokens.erase(token);
    Trace("extent member #" + std::to_string(token) + " sector " + std::to_string(op.h.key) +
          " not done at node " + std::to_string(n + 1));
    if (op.waiting) {
      op.waiting = false;
      op.h.outcome = HistoryOp::Outcome::kFailed;
    }
  }
  if (waiting) OpEnded(first, /*command_done=*/true);
}

// ---------------------------------------------------------------------------------------
// Network.

void Simulator::Deliver(const Event& e) {
  Node& dst = *nodes_[e.node];
  Node& src = *nodes_[e.from];
  std::string what;
  if (e.sync_msg) {
    what = SyncWhat(*e.sync_msg, src.rank, dst.rank);
  } else if (e.batch) {
    what = "batch " + std::to_string(src.rank) + "->" + std::to_string(dst.rank) + " of " +
           std::to_string(e.batch->size());
  } else {
    const SystemMessage& msg = *e.msg;
    what = std::string(SystemContentName(msg.content)) + " " + std::to_string(src.rank) + "->" +
           std::to_string(dst.rank) + " op " + ShortId(msg.op_id) + " sector " +
           std::to_string(msg.sector);
  }
  if (!dst.up || dst.epoch != e.epoch || src.epoch != e.from_epoch || blocked_[e.from][e.node]) {
    ++result_.stats.messages_dropped;
    Trace("lost " + what);
    return;
  }
  ++result_.stats.messages_delivered;
  Trace("deliver " + what);
  if (e.sync_msg) {
    dst.core->OnSyncMessage(*e.sync_msg);
    return;
  }
  if (e.batch) {
    // One tag checked for all, then each member as if it had come alone
    // (NodeServer::HandleSystemBatch); the core may crash the node midway (Fatal takes
    // effect after the event).
    for (const SystemMessage& msg : *e.batch) DeliverSystem(dst, msg, false);
    return;
  }
  DeliverSystem(dst, *e.msg, true);
}

void Simulator::DeliverSystem(Node& dst, const SystemMessage& msg, bool alone) {
  // What atomdiskd's adapter does before checking a lone frame's tag
  // (daemon/net/node_server.cc); a batch's members are all verified, so none is dropped.
  if (alone && msg.content == SystemContent::kValue && !dst.core->WantsValue(msg)) {
    Trace("  unwanted Value dropped");
    return;
  }
  if (msg.content == SystemContent::kWriteProc) {
    // Recorded when the core gets it, for the ack-before-durable check.
    dst.writeprocs[{msg.sender, msg.op_id}] = {msg.sector, msg.tag};
  }
  dst.core->OnSystemMessage(msg);
}

// ---------------------------------------------------------------------------------------
// Clients.

std::uint64_t Simulator::NewOps(int client, int n, bool is_write, SectorIdx sector, bool final_read,
                                std::uint32_t extent) {
  const std::uint64_t first = ops_.size() + 1;
  for (std::uint32_t i = 0; i < extent; ++i) {
    Op op;
    op.h.client = static_cast<std::uint64_t>(client);
    op.h.kind = is_write ? HistoryOp::Kind::kWrite : HistoryOp::Kind::kRead;
    op.h.key = sector + i;
    op.h.outcome = HistoryOp::Outcome::kUnknown;
    op.node = n;
    op.waiting = true;
    op.final_read = final_read;
    if (n >= 0) {
      op.epoch = nodes_[n]->epoch;
      op.in_register = true;
    }
    if (extent > 1) op.extent_first = first;
    if (is_write) op.h.value = std::to_string(++next_value_id_);
    op.h.call_ns = HistNow();
    ops_.push_back(std::move(op));
    if (n >= 0) nodes_[n]->tokens.insert(ops_.size());
  }
  if (extent > 1) ops_[first - 1].extent_count = extent;
  std::string values;
  if (is_write) {
    values = " v" + ops_[first - 1].h.value;
    if (extent > 1) values += "..v" + ops_.back().h.value;
  }
  Trace(std::string("call ") + (is_write ? "write" : "read") + " #" + std::to_string(first) +
        " client " + std::to_string(client) + " sector " + std::to_string(sector) +
        (extent > 1 ? " extent " + std::to_string(extent) : std::string()) +
        (n >= 0 ? " at node " + std::to_string(nodes_[n]->rank) : std::string()) + values);
  return first;
}

std::uint64_t Simulator::StartOp(int client, int n, bool is_write, SectorIdx sector,
                                 bool final_read, std::uint32_t extent) {
  const std::uint64_t first = NewOps(client, n, is_write, sector, final_read, extent);
  SendClientCommand(n, first);
  return first;
}

void Simulator::SendClientCommand(int n, std::uint64_t token) {
  Op& op = ops_[token - 1];
  ClientCommand cmd;
  cmd.request_id = token;
  cmd.sector = op.h.key;
  const bool write = op.h.kind == HistoryOp::Kind::kWrite;
  if (op.extent_count > 1) {
    cmd.op = write ? ClientOp::kWriteExtent : ClientOp::kReadExtent;
    cmd.count = op.extent_count;
    if (write) {
      for (std::uint32_t i = 0; i < cmd.count; ++i) {
        cmd.sectors.push_back(ValueSector(std::stoull(ops_[token - 1 + i].h.value)));
      }
    }
  } else if (write) {
    cmd.op = ClientOp::kWrite;
    cmd.data = ValueSector(std::stoull(op.h.value));
  } else {
    cmd.op = ClientOp::kRead;
  }
  Frame frame = EncodeFrame(cmd, *client_mac_);
  Node& node = *nodes_[n];
  const std::size_t before = node.core->ClientOpsInFlight();
  node.core->OnClientFrame(*node.channel,
                           std::span<const std::uint8_t>(frame).subspan(kFrameLengthSize));
  if (op.extent_count <= 1 && op.waiting && node.core->ClientOpsInFlight() == before) {
    // The node stays silent on a sector it cannot read (NodeCore::OnClientCommand): nothing
    // holds the operation, and its client can only wait out the timeout, healing or not.
    op.in_register = false;
    Trace("node " + std::to_string(node.rank) + " is silent on #" + std::to_string(token));
    if (op.final_read) {
      // A final read has no timeout: it asks again, as a client would, until the node has
      // repaired the sector.
      Call(100 * kUsPerMs, [this, n, token, epoch = node.epoch]() {
        Op& again = ops_[token - 1];
        if (!again.waiting || !nodes_[n]->up || nodes_[n]->epoch != epoch) return;
        again.in_register = true;
        SendClientCommand(n, token);
      });
    }
  }
}

void Simulator::ClientIssue(int client) {
  if (healing_) return;
  if (options_.client_library) {
    // The library picks the node (and fails over); the workload draws only the operation.
    SectorIdx sector = Chance(p_.hot_permille) ? Below(static_cast<std::uint64_t>(p_.hot_sectors))
                                               : kColdBase + Below(kColdRange);
    bool is_write =
        p_.writers == 0 ? !Chance(p_.read_permille) : client < p_.writers && Chance(800);
    std::uint32_t extent = 1;
    if (options_.extent_permille > 0 && Chance(options_.extent_permille)) {
      extent = static_cast<std::uint32_t>(Range(2, kMaxSimExtent));
    }
    LibStartOp(client, is_write, sector, false, extent);
    return;
  }
  std::vector<int> up;
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    if (nodes_[i]->up) up.push_back(static_cast<int>(i));
  }
  if (up.empty()) {
    Event e;
    e.type = EventType::kClientIssue;
    e.arg = static_cast<std::uint64_t>(client);
    At(Range(10000, 50000), std::move(e));
    return;
  }
  int n = up[Below(up.size())];
  SectorIdx sector = Chance(p_.hot_permille) ? Below(static_cast<std::uint64_t>(p_.hot_sectors))
                                             : kColdBase + Below(kColdRange);
  bool is_write = p_.writers == 0 ? !Chance(p_.read_permille) : client < p_.writers && Chance(800);
  // Extents only when asked for (SimOptions::extent_permille): without, no draw is added, so
  // every seed replays the run it always did.
  std::uint32_t extent = 1;
  if (options_.extent_permille > 0 && Chance(options_.extent_permille)) {
    extent = static_cast<std::uint32_t>(Range(2, kMaxSimExtent));
  }
  std::uint64_t token = StartOp(client, n, is_write, sector, false, extent);
  if (ops_[token - 1].waiting) {
    Event e;
    e.type = EventType::kClientTimeout;
    e.arg = token;
    At(p_.timeout_ms * kUsPerMs, std::move(e));
  }
}

void Simulator::ClientDone(int client) {
  if (healing_) return;
  Event e;
  e.type = EventType::kClientIssue;
  e.arg = static_cast<std::uint64_t>(client);
  At(Range(1, p_.think_max_us), std::move(e));
}

void Simulator::ClientTimeout(std::uint64_t token) {
  Op& op = ops_[token - 1];
  if (!op.waiting || (healing_ && op.in_register)) return;
  // Every member of an extent (count 1 for a lone command) ends unknown with it.
  const std::uint32_t count = op.extent_first == token ? op.extent_count : 1;
  for (std::uint32_t i = 0; i < count; ++i) {
    Op& member = ops_[token - 1 + i];
    if (!member.waiting) continue;
    member.waiting = false;
    member.h.outcome = HistoryOp::Outcome::kUnknown;
    ++result_.stats.ops_unknown;
  }
  Trace("timeout #" + std::to_string(token) + (count > 1 ? " extent" : "") + " (outcome unknown)");
  OpEnded(token, /*command_done=*/true);
}

// ---------------------------------------------------------------------------------------
// The client library (SimOptions::client_library): every simulated client is the library's
// own ClientCore, over client connections that partitions cut, drops kill and crashes reset.

void Simulator::Call(std::int64_t delay_us, std::function<void()> fn, bool uncounted) {
  Event e;
  e.type = EventType::kCall;
  e.fn = std::make_shared<std::function<void()>>(std::move(fn));
  e.uncounted = uncounted;
  At(delay_us, std::move(e));
}

void Simulator::CreateLibClients() {
  const int n_nodes = static_cast<int>(nodes_.size());
  // One per simulated client, then one per node for the final reads.
  for (int c = 0; c < p_.clients + n_nodes; ++c) {
    auto lc = std::make_unique<LibClient>();
    lc->home = c < p_.clients ? static_cast<int>(Below(n_nodes)) : c - p_.clients;
    lc->env = std::make_unique<SimClientEnv>(this, c);
    client::ClientOptions o;
    // Home first: the library prefers the first node it can reach.
    for (int i = 0; i < n_nodes; ++i) {
      const NodeConfig& nc = cluster_.nodes[(lc->home + i) % n_nodes];
      o.nodes.push_back({nc.host, nc.port, nc.rank});
    }
    o.client_key = cluster_.client_key;
    o.sectors = kDeviceSectors;
    o.op_timeout = std::chrono::milliseconds(p_.timeout_ms);
    o.attempt_timeout =
        std::chrono::milliseconds(std::min<std::int64_t>(Range(100, 500), p_.timeout_ms));
    o.reconnect_backoff_min = std::chrono::milliseconds(5);
    o.reconnect_backoff_max = std::chrono::milliseconds(200);
    client::ClientCoreBugs bugs;
    bugs.retry_unknown_write = options_.bug == SimBug::kClientRetriesUnknownWrite;
    bugs.not_done_as_done = options_.bug == SimBug::kClientNotDoneAsDone;
    lc->core = std::make_unique<client::ClientCore>(std::move(o), *lc->env, rng_(), bugs);
    lc->conns.resize(n_nodes);
    lib_clients_.push_back(std::move(lc));
  }
}

bool Simulator::LibBlocked(int c, int n) const {
  const int h = lib_clients_[c]->home;
  return h != n && (blocked_[h][n] || blocked_[n][h]);
}

void Simulator::LibStartConnecting(int c) {
  for (int n = 0; n < static_cast<int>(nodes_.size()); ++n) {
    Call(Range(1, 1000), [this, c, n] { LibDial(c, n); });
  }
}

void Simulator::LibDial(int c, int n) {
  LibClient& lc = *lib_clients_[c];
  LibConn& conn = lc.conns[n];
  if (conn.open || lc.core->shut_down()) return;
  const std::string who = "client " + std::to_string(c) + " -> node " + std::to_string(n + 1);
  if (!nodes_[n]->up || LibBlocked(c, n)) {
    // Refused at once by a host whose daemon is down; a cut link lets the connect time out.
    const bool cut = nodes_[n]->up;
    const std::int64_t after_us =
        cut ? lc.core->options().attempt_timeout.count() * kUsPerMs : NetDelayUs(n, n) * 2;
    Call(after_us, [this, c, n, cut, who] {
      if (lib_clients_[c]->conns[n].open) return;
      const auto delay =
          lib_clients_[c]->core->OnDialFailed(n, cut ? "connect timed out" : "connection refused");
      Trace(who + ": connect failed, redial in " + std::to_string(delay.count()) + "ms");
      Call(delay.count() * kUsPerMs, [this, c, n] { LibDial(c, n); });
    });
    return;
  }
  ++conn.gen;
  conn.open = true;
  conn.dead = false;
  conn.node_epoch = nodes_[n]->epoch;
  conn.last_to_node_us = conn.last_to_client_us = now_us_;
  conn.channel = std::make_shared<SimClientChannel>(this, c, n, conn.gen);
  Trace(who + ": connected");
  lc.core->OnConnected(n, options_.tls);
  LibScheduleTick(c);  // the feature probe it sends has an attempt deadline
}

std::int64_t Simulator::LibTransit(int c, int n, LibConn& conn, std::int64_t& last_us,
                                   const std::string& what) {
  if (conn.dead || LibBlocked(c, n) || Chance(drop_permille_ / 4)) {
    if (!conn.dead) Trace(what + " lost: the connection stalls");
    conn.dead = true;
    ++result_.stats.messages_dropped;
    return -1;
  }
  ++result_.stats.messages_sent;
  last_us = std::max(now_us_ + NetDelayUs(n, n), last_us + 1);
  return last_us;
}

void Simulator::LibToNode(int c, int n, std::shared_ptr<const Frame> frame) {
  LibConn& conn = lib_clients_[c]->conns[n];
  if (!conn.open) return;
  const std::string what = "client frame " + std::to_string(c) + "->" + std::to_string(n + 1);
  const std::int64_t at = LibTransit(c, n, conn, conn.last_to_node_us, what);
  if (at < 0) return;
  const std::uint64_t gen = conn.gen;
  ++lib_frames_to_nodes_;
  Call(at - now_us_, [this, c, n, gen, frame = std::move(frame), what] {
    --lib_frames_to_nodes_;
    LibConn& cn = lib_clients_[c]->conns[n];
    Node& node = *nodes_[n];
    if (cn.gen != gen || !cn.open || !node.up || node.epoch != cn.node_epoch) return;
    ++result_.stats.messages_delivered;
    Trace("deliver " + what);
    node.core->OnClientFrame(*cn.channel,
                             std::span<const std::uint8_t>(*frame).subspan(kFrameLengthSize));
  });
}

void Simulator::LibToClient(int c, int n, std::uint64_t gen, SharedFrame frame) {
  LibConn& conn = lib_clients_[c]->conns[n];
  if (conn.gen != gen || !conn.open) return;
  const std::string what = "response " + std::to_string(n + 1) + "->client " + std::to_string(c);
  const std::int64_t at = LibTransit(c, n, conn, conn.last_to_client_us, what);
  if (at < 0) return;
  Call(at - now_us_, [this, c, n, gen, frame = std::move(frame), what] {
    LibConn& cn = lib_clients_[c]->conns[n];
    if (cn.gen != gen || !cn.open) return;
    ++result_.stats.messages_delivered;
    Trace("deliver " + what);
    lib_clients_[c]->core->OnFrameBody(
        n, std::span<const std::uint8_t>(*frame).subspan(kFrameLengthSize));
    LibScheduleTick(c);
  });
}

void Simulator::LibClose(int c, int n, bool by_client) {
  LibClient& lc = *lib_clients_[c];
  LibConn& conn = lc.conns[n];
  if (!conn.open) return;
  conn.open = false;
  ++conn.gen;
  if (conn.channel) conn.channel->Close();
  conn.channel.reset();
  Trace("client " + std::to_string(c) + " -> node " + std::to_string(n + 1) + ": " +
        (by_client ? "closed by the client" : "reset"));
  if (!by_client) lc.core->OnConnectionLost(n, "connection reset by the node");
  // Not from inside the core's own call (CloseConnection): the redial delay is asked after.
  Call(1, [this, c, n] {
    LibClient& l = *lib_clients_[c];
    if (l.conns[n].open || l.core->shut_down()) return;
    const auto delay = l.core->NextDialDelay(n);
    Call(delay.count() * kUsPerMs, [this, c, n] { LibDial(c, n); });
  });
}

void Simulator::LibNodeCrashed(int n) {
  for (int c = 0; c < static_cast<int>(lib_clients_.size()); ++c) {
    LibConn& conn = lib_clients_[c]->conns[n];
    if (!conn.open) continue;
    const std::uint64_t gen = conn.gen;
    // The host's kernel resets the connection. Across a partition the reset is lost and the
    // connection stalls: the client finds out by its own timeout, as over a real network.
    Call(NetDelayUs(n, n), [this, c, n, gen] {
      LibConn& cn = lib_clients_[c]->conns[n];
      if (cn.gen != gen || !cn.open || cn.dead) return;
      if (LibBlocked(c, n)) {
        cn.dead = true;
        return;
      }
      LibClose(c, n, false);
    });
  }
}

void Simulator::LibScheduleTick(int c) {
  LibClient& lc = *lib_clients_[c];
  if (lc.tick_scheduled) return;
  lc.tick_scheduled = true;
  const std::int64_t period = client::ClientCore::kTickPeriod.count() * kUsPerMs;
  Call(
      period,
      [this, c] {
        LibClient& l = *lib_clients_[c];
        l.tick_scheduled = false;
        l.core->Tick();
        if (l.core->OpsOutstanding() > 0) LibScheduleTick(c);
      },
      /*uncounted=*/true);
}

void Simulator::LibSubmit(int c, std::uint64_t token) {
  const Op& op = ops_[token - 1];
  const std::uint32_t count = op.extent_first == token ? op.extent_count : 1;
  const bool write = op.h.kind == HistoryOp::Kind::kWrite;
  client::OpRequest req;
  req.sector = op.h.key;
  if (count == 1) {
    req.kind = write ? ClientOp::kWrite : ClientOp::kRead;
    if (write) req.data = ValueSector(std::stoull(op.h.value));
  } else {
    req.kind = write ? ClientOp::kWriteExtent : ClientOp::kReadExtent;
    req.count = count;
    for (std::uint32_t i = 0; write && i < count; ++i) {
      req.sectors.push_back(ValueSector(std::stoull(ops_[token - 1 + i].h.value)));
    }
  }
  // A history needs every attempt of a write to be its own operation: a retried write whose
  // first attempt took effect could be seen, overwritten and then applied again
  // (docs/CLIENT.md, "Retries and concurrent writers"). Reads retry freely.
  req.retry_unknown_write = false;
  // The final reads must finish once every fault is healed, however long recovery takes.
  if (op.final_read) req.timeout = std::chrono::milliseconds(120'000);
  req.submitted = client::Clock::time_point(std::chrono::microseconds(now_us_));
  req.done = [this, token](client::OpResult r) { LibDone(token, std::move(r)); };
  lib_clients_[c]->core->Submit(std::move(req));
  LibScheduleTick(c);
}

void Simulator::LibDone(std::uint64_t token, client::OpResult r) {
  Op& first = ops_[token - 1];
  const std::uint32_t count = first.extent_first == token ? first.extent_count : 1;
  const bool write = first.h.kind == HistoryOp::Kind::kWrite;
  const int client = static_cast<int>(first.h.client);
  std::string what = std::string(write ? "write" : "read") + " #" + std::to_string(token) +
                     (count > 1 ? " extent " + std::to_string(count) : std::string()) + " sector " +
                     std::to_string(first.h.key);
  if (!r.status.ok()) {
    if (first.final_read) {
      Fail("liveness", "the final " + what + " by client " + std::to_string(client) +
                           " failed after every fault was healed: " + r.status.ToString());
      return;
    }
    for (std::uint32_t i = 0; i < count; ++i) {
      Op& m = ops_[token - 1 + i];
      m.waiting = false;
      // A failed read did nothing; a write did nothing unless it may have been applied.
      m.h.outcome =
          write && r.maybe_applied ? HistoryOp::Outcome::kUnknown : HistoryOp::Outcome::kFailed;
      if (m.h.outcome == HistoryOp::Outcome::kUnknown) ++result_.stats.ops_unknown;
    }
    Trace("fail " + what + " (" + (write && r.maybe_applied ? "maybe applied" : "not applied") +
          "): " + r.status.message());
    if (!first.final_read) ClientDone(client);
    return;
  }
  std::string values;
  for (std::uint32_t i = 0; i < count; ++i) {
    Op& m = ops_[token - 1 + i];
    if (!write) {
      const SectorPtr& data = count == 1 ? r.data : (i < r.sectors.size() ? r.sectors[i] : nullptr);
      std::optional<std::uint64_t> id =
          ReadValueId(data, what, what + " (member " + std::to_string(i) + ")");
      if (!id) return;
      m.h.value = *id == 0 ? "" : std::to_string(*id);
      values += " v" + std::to_string(*id);
    }
    NoteOk(m);
  }
  Trace("complete " + what + values + " by node " + std::to_string(r.answered_by) + " after " +
        std::to_string(r.attempts) + " attempts");
  if (!first.final_read) ClientDone(client);
}

std::uint64_t Simulator::LibStartOp(int client, bool is_write, SectorIdx sector, bool final_read,
                                    std::uint32_t extent) {
  const std::uint64_t first = NewOps(client, -1, is_write, sector, final_read, extent);
  LibSubmit(client, first);
  return first;
}

// ---------------------------------------------------------------------------------------
// Faults.

void Simulator::Nemesis() {
  Event next;
  next.type = EventType::kNemesis;
  At(Range(p_.nemesis_min_ms, p_.nemesis_max_ms) * kUsPerMs, std::move(next));
  int n_nodes = static_cast<int>(nodes_.size());
  int down = NodesDown();
  // Drawn only with the option, so that every other run replays as before.
  if (options_.forged_tags && Chance(100)) {
    ForgeTopTag();
    return;
  }
  if (options_.bit_rot && Chance(60)) {  // rot under a running node
    const int n = static_cast<int>(Below(static_cast<std::uint64_t>(n_nodes)));
    if (nodes_[n]->up) Rot(n);
    return;
  }
  switch (Below(9)) {
    case 0:
    case 1: {  // crash a node, restart it later
      int limit = Chance(100) ? n_nodes : p_.max_down;
      if (down >= limit) return;
      // Half the time, a node with writes in flight: those are the crashes that lose or
      // tear something.
      std::vector<int> up, writing;
      for (int i = 0; i < n_nodes; ++i) {
        if (!nodes_[i]->up) continue;
        up.push_back(i);
        if (nodes_[i]->persists_in_flight > 0) writing.push_back(i);
      }
      int n =
          !writing.empty() && Chance(500) ? writing[Below(writing.size())] : up[Below(up.size())];
      // A quarter of the time, a node holding a hot sector's newest value that the most
      // others lack, back quickly: what a restart that forgot something turns into a stale read.
      std::vector<int> ahead = NodesAhead();
      bool quick = false;
      if (!ahead.empty() && Chance(250)) {
        n = ahead[Below(ahead.size())];
        quick = Chance(500);
      }
      Crash(n);
      Event e;
      e.type = EventType::kRestart;
      e.node = n;
      At((quick ? Range(1, 30) : Range(1, 800)) * kUsPerMs, std::move(e));
      return;
    }
    case 2: {  // partition: a symmetric split, or some one-way links
      ++result_.stats.partitions;
      ++partition_gen_;
      for (auto& row : blocked_) std::fill(row.begin(), row.end(), false);
      std::string desc;
      if (Chance(600)) {
        std::vector<bool> side(n_nodes);
        for (int i = 0; i < n_nodes; ++i) side[i] = Chance(500);
        for (int a = 0; a < n_nodes; ++a) {
          for (int b = 0; b < n_nodes; ++b) blocked_[a][b] = side[a] != side[b];
        }
        desc = "split";
        for (int i = 0; i < n_nodes; ++i) desc += side[i] ? " A" : " B";
      } else {
        desc = "one-way";
        int links = static_cast<int>(Range(1, n_nodes));
        for (int i = 0; i < links; ++i) {
          int a = static_cast<int>(Below(n_nodes)), b = static_cast<int>(Below(n_nodes));
          if (a == b) continue;
          blocked_[a][b] = true;
          desc += " " + std::to_string(a + 1) + "-/->" + std::to_string(b + 1);
        }
      }
      NoteCuts();
      Trace("partition " + desc);
      Event e;
      e.type = EventType::kHealPartition;
      e.arg = partition_gen_;
      At(Range(5, 800) * kUsPerMs, std::move(e));
      return;
    }
    case 3: {  // network weather
      static constexpr std::array<int, 5> kDrop = {0, 0, 20, 100, 300};
      static constexpr std::array<int, 4> kDup = {0, 0, 30, 150};
      static constexpr std::array<int, 4> kSlow = {20, 80, 250, 400};
      drop_permille_ = kDrop[Below(kDrop.size())];
      dup_permille_ = kDup[Below(kDup.size())];
      slow_permille_ = kSlow[Below(kSlow.size())];
      DrawLinkLatencies();
      Trace("network drop " + std::to_string(drop_permille_) + "/1000 dup " +
            std::to_string(dup_permille_) + "/1000 slow " + std::to_string(slow_permille_) +
            "/1000");
      return;
    }
    case 4: {  // a disk error on one node
      int n = static_cast<int>(Below(n_nodes));
      if (!nodes_[n]->up) return;
      ++result_.stats.disk_faults;
      switch (Below(5)) {
        case 0:
        case 1:
          nodes_[n]->disk->FailNextWrites(1);
          Trace("disk node " + std::to_string(n + 1) + ": next write fails");
          break;
        case 2:
        case 3:
          nodes_[n]->disk->FailNextSyncs(1);
          Trace("disk node " + std::to_string(n + 1) + ": next sync fails");
          break;
        default:
          nodes_[n]->fail_identity_writes = 1;
          Trace("disk node " + std::to_string(n + 1) + ": next IDENTITY write fails");
          break;
      }
      return;
    }
    case 5: {  // a slow disk for a while
      int n = static_cast<int>(Below(n_nodes));
      if (!nodes_[n]->up) return;
      nodes_[n]->disk_slow = true;
      Trace("disk node " + std::to_string(n + 1) + " slow");
      Event e;
      e.type = EventType::kDiskFast;
      e.node = n;
      e.epoch = nodes_[n]->epoch;
      e.arg = ++nodes_[n]->disk_slow_gen;
      At(Range(20, 500) * kUsPerMs, std::move(e));
      return;
    }
    case 6:
    case 7: {  // replace a node's disk (it must rejoin), when every other node votes
      if (down >= p_.max_down) return;
      int n = static_cast<int>(Below(n_nodes));
      // Half the time, a node holding a hot sector's value that another node lacks: losing
      // such a disk is what a node voting too early turns into a stale read.
      std::vector<int> ahead = NodesAhead();
      if (!ahead.empty() && Chance(500)) n = ahead[Below(ahead.size())];
      if (!nodes_[n]->up) return;
      for (int i = 0; i < n_nodes; ++i) {
        if (i != n && (!WillVote(i) || nodes_[i]->replaced)) return;
        // A rotted copy not yet repaired is a lost copy too: one at a time (--bit-rot).
        if (!nodes_[i]->rotted.empty()) return;
      }
      ReplaceDisk(n);
      return;
    }
    default:  // a quiet spell
      return;
  }
}

void Simulator::ForgeTopTag() {
  const int n_nodes = static_cast<int>(nodes_.size());
  const int dst = static_cast<int>(Below(n_nodes));
  Node& node = *nodes_[dst];
  if (!node.up || !node.core) return;
  SystemMessage msg;
  msg.content = SystemContent::kWriteProc;
  msg.sender = static_cast<Rank>((dst + 1 + static_cast<int>(Below(n_nodes - 1))) % n_nodes + 1);
  msg.sector = Below(static_cast<std::uint64_t>(p_.hot_sectors));
  for (auto& b : msg.op_id.bytes) b = static_cast<std::uint8_t>(Below(256));
  // Just above the range, or at the very top, where ts + 1 wraps.
  msg.tag.ts = Chance(500) ? kMaxTagTs + 1 + Below(1000) : ~std::uint64_t{0} - Below(3);
  msg.tag.wr = msg.sender;
  // A value id no client ever writes: a read that returns it is caught.
  msg.data = ValueSector((std::uint64_t{1} << 40) + Below(1000));
  ++result_.stats.forged_tags;
  Trace("forge WriteProc " + std::to_string(msg.sender) + "->" + std::to_string(node.rank) +
        " sector " + std::to_string(msg.sector) + " tag " + TagStr(msg.tag));
  DeliverSystem(node, msg, true);
}

std::vector<int> Simulator::NodesAhead() {
  // For each live node, the most live nodes that hold an older tag of one hot sector.
  const int n_nodes = static_cast<int>(nodes_.size());
  std::vector<int> behind_count(n_nodes, 0);
  std::vector<Tag> tags(n_nodes);
  for (int s = 0; s < p_.hot_sectors; ++s) {
    for (int i = 0; i < n_nodes; ++i) {
      tags[i] = Tag{};
      if (!nodes_[i]->up) continue;
      Result<Triple> r = nodes_[i]->store->Read(static_cast<SectorIdx>(s));
      if (r.ok()) tags[i] = r->tag;
    }
    for (int i = 0; i < n_nodes; ++i) {
      if (!nodes_[i]->up) continue;
      int behind = 0;
      for (int j = 0; j < n_nodes; ++j) behind += nodes_[j]->up && tags[j] < tags[i] ? 1 : 0;
      behind_count[i] = std::max(behind_count[i], behind);
    }
  }
  int best = *std::max_element(behind_count.begin(), behind_count.end());
  std::vector<int> ahead;
  for (int i = 0; i < n_nodes && best > 0; ++i) {
    if (behind_count[i] == best) ahead.push_back(i);
  }
  return ahead;
}

bool Simulator::LinkUp(int a, int b) const {
  if (!nodes_[b]->up) return false;
  if (!options_.link_liveness || a == b) return true;
  const std::int64_t since = cut_since_us_[std::min(a, b)][std::max(a, b)];
  return since < 0 || now_us_ - since < kSimPeerTimeoutMs * kUsPerMs;
}

void Simulator::NoteCuts() {
  for (std::size_t a = 0; a < nodes_.size(); ++a) {
    for (std::size_t b = a + 1; b < nodes_.size(); ++b) {
      std::int64_t& since = cut_since_us_[a][b];
      if (!blocked_[a][b] && !blocked_[b][a]) {
        since = -1;
      } else if (since < 0) {
        since = now_us_;
      }
    }
  }
}

void Simulator::ClearPartitions() {
  for (auto& row : cut_since_us_) std::fill(row.begin(), row.end(), -1);
  for (std::size_t a = 0; a < nodes_.size(); ++a) {
    for (std::size_t b = 0; b < nodes_.size(); ++b) {
      if (!blocked_[a][b] && !blocked_[b][a]) continue;
      blocked_[a][b] = false;
      Node& node = *nodes_[a];
      if (node.up && node.core) node.core->OnPeerLinkUp(nodes_[b]->rank);
    }
  }
}

void Simulator::HealAll() {
  healing_ = true;
  Trace("heal: partitions, drops, disk faults off; every node up; clients stop");
  ++partition_gen_;
  ClearPartitions();
  drop_permille_ = dup_permille_ = slow_permille_ = 0;
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    Node& node = *nodes_[i];
    node.disk->FailNextWrites(0);
    node.disk->FailNextSyncs(0);
    node.fail_identity_writes = 0;
    node.disk_slow = false;
    if (!node.up) Restart(static_cast<int>(i));
  }
}

bool Simulator::Quiescent() const {
  for (const Op& op : ops_) {
    if (op.waiting || op.in_register) return false;
  }
  if (lib_frames_to_nodes_ > 0) return false;
  for (const auto& node : nodes_) {
    if (!node->up || !node->voting || node->absorbs_in_flight > 0) return false;
    // With the client library the simulator does not track which node holds which operation:
    // a coordinator still running one whose client gave up is asked directly.
    if (options_.client_library && node->core->ClientOpsInFlight() > 0) return false;
  }
  return true;
}

std::string Simulator::StuckOps() const {
  std::string out;
  int shown = 0;
  for (std::size_t i = 0; i < ops_.size(); ++i) {
    const Op& op = ops_[i];
    if (!op.waiting && !op.in_register) continue;
    if (++shown > 10) break;
    out += "  #" + std::to_string(i + 1) + " " +
           (op.h.kind == HistoryOp::Kind::kRead ? "read" : "write") + " sector " +
           std::to_string(op.h.key) + " at node " + std::to_string(op.node + 1) +
           (op.waiting ? " (client waiting)" : " (client gave up)") + "\n";
  }
  for (const auto& node : nodes_) {
    if (!node->up) {
      out += "  node " + std::to_string(node->rank) + " is down\n";
      continue;
    }
    if (!node->voting) {
      Syncer* syncer = node->core->syncer_if_started();
      out += "  node " + std::to_string(node->rank) + " does not vote: " +
             (syncer ? syncer->GetStatus(now_us_ / kUsPerMs).state : "syncer not started") + "\n";
    }
    if (node->absorbs_in_flight > 0) {
      out += "  node " + std::to_string(node->rank) + ": " +
             std::to_string(node->absorbs_in_flight) + " absorbs not yet durable\n";
    }
    if (options_.client_library && node->core->ClientOpsInFlight() > 0) {
      out += "  node " + std::to_string(node->rank) + ": " +
             std::to_string(node->core->ClientOpsInFlight()) + " client operations in flight\n";
    }
  }
  return out;
}

// After the final reads, with nothing else going on: every node runs a resync pass started
// now, and then every node must hold the same tag for every sector (the newest one anywhere,
// since a pass pulls everything newer from every peer).
void Simulator::CheckConvergence() {
  Trace(options_.bit_rot
            ? "final resync: a pass and a scrub on every node, then the stores must agree"
            : "final resync: a pass on every node, then the stores must agree");
  const std::size_t n_nodes = nodes_.size();
  std::vector<bool> started(n_nodes, false);
  std::vector<std::uint64_t> target(n_nodes, 0);
  std::vector<bool> scrub_started(n_nodes, false);
  std::vector<std::uint64_t> scrub_target(n_nodes, 0);
  constexpr std::int64_t kLimitUs = 120'000 * kUsPerMs;
  std::int64_t deadline = now_us_ + kLimitUs;
  while (!failed()) {
    bool done = true;
    for (std::size_t i = 0; i < n_nodes; ++i) {
      Syncer* syncer = nodes_[i]->core->syncer_if_started();
      if (!syncer) {
        done = false;
        continue;
      }
      std::uint64_t passes = syncer->GetStatus(NowMs()).resync.passes_done;
      if (!started[i]) {
        done = false;
        if (syncer->StartResync(NowMs()).ok()) {
          started[i] = true;
          target[i] = passes + 1;
          Trace("node " + std::to_string(i + 1) + ": final pass started");
        }
      } else if (passes < target[i]) {
        done = false;
      }
      // And no sector known failed left unrepaired (a write torn by a crash is repaired
      // once the start-up pass met it, retried until the peers answer).
      if (syncer->GetStatus(NowMs()).scrub.pending_repairs > 0) done = false;
      if (options_.bit_rot) {
        // And a scrub, begun after the faults: rot that no read met is found and repaired.
        std::uint64_t runs = syncer->GetStatus(NowMs()).scrub.runs_done;
        if (!scrub_started[i]) {
          done = false;
          if (syncer->StartScrub(NowMs()).ok()) {
            scrub_started[i] = true;
            scrub_target[i] = runs + 1;
            Trace("node " + std::to_string(i + 1) + ": final scrub started");
          }
        } else if (runs < scrub_target[i]) {
          done = false;
        }
      }
    }
    if (done) break;
    if (now_us_ >= deadline || queue_.empty()) {
      std::string stuck;
      for (std::size_t i = 0; i < n_nodes; ++i) {
        SyncStatus st = nodes_[i]->core->syncer().GetStatus(NowMs());
        stuck += "\n  node " + std::to_string(i + 1) + ": " +
                 (started[i] ? "pass started" : "pass not started") + ", " + st.state + ", " +
                 std::to_string(st.scrub.pending_repairs) + " repairs pending";
      }
      Fail("liveness", "the final resync passes did not finish within " +
                           std::to_string(kLimitUs / kUsPerMs / 1000) + " s:" + stuck + "\n" +
                           StuckOps());
      return;
    }
    Event e = queue_.top();
    queue_.pop();
    now_us_ = e.time_us;
    ++result_.stats.events;
    Dispatch(e);
    if (!failed()) FlushOutboxes();
    if (!failed()) ReapFatal();
    if (!failed()) CheckAfterEvent();
  }
  if (failed()) return;
  // Let the last absorbs become durable (the stores report pending tags anyway).
  std::vector<std::map<SectorIdx, Tag>> tags(n_nodes);
  std::set<SectorIdx> sectors;
  for (std::size_t i = 0; i < n_nodes; ++i) {
    Status s = nodes_[i]->store->ForEachStored([&](SectorIdx sector, Tag tag, bool) {
      if (tag == Tag{}) return;
      tags[i][sector] = tag;
      sectors.insert(sector);
    });
    if (!s.ok()) {
      Fail("store-error", "node " + std::to_string(i + 1) + " final scan: " + s.ToString());
      return;
    }
  }
  for (SectorIdx sector : sectors) {
    std::string line;
    bool differ = false;
    Tag first;
    for (std::size_t i = 0; i < n_nodes; ++i) {
      auto it = tags[i].find(sector);
      Tag t = it == tags[i].end() ? Tag{} : it->second;
      if (i == 0) first = t;
      differ = differ || t != first;
      line += " node " + std::to_string(i + 1) + " " + TagStr(t);
    }
    if (!differ && first != Tag{}) {
      // Same tag everywhere: it must be the same value everywhere too.
      line.clear();
      std::optional<std::uint64_t> first_id;
      for (std::size_t i = 0; i < n_nodes; ++i) {
        Result<Triple> r = nodes_[i]->store->Read(sector);
        std::optional<std::uint64_t> id;
        if (r.ok()) id = ValueIdOf(*r->data);
        if (i == 0) first_id = id;
        differ = differ || !id || id != first_id;
        line += " node " + std::to_string(i + 1) + " " + TagStr(first) + " " +
                (id ? "v" + std::to_string(*id) : std::string("unreadable"));
      }
    }
    if (differ) {
      Fail("convergence", "after a final resync pass on every node, sector " +
                              std::to_string(sector) + " still differs:" + line);
      return;
    }
  }
}

// ---------------------------------------------------------------------------------------
// The run.

void Simulator::ReapFatal() {
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    Node& node = *nodes_[i];
    if (!node.up || !node.fatal) continue;
    Trace("node " + std::to_string(node.rank) + " exits: " + *node.fatal + "; it restarts");
    Crash(static_cast<int>(i));
    Event e;
    e.type = EventType::kRestart;
    e.node = static_cast<int>(i);
    At(Range(1, 50) * kUsPerMs, std::move(e));
  }
}

void Simulator::CheckAfterEvent() {
  for (std::size_t i = 0; i < nodes_.size() && !failed(); ++i) {
    Node& node = *nodes_[i];
    if (!node.up) continue;
    Syncer* syncer = node.core->syncer_if_started();
    if (syncer) {
      syncer->CheckInvariants();
      if (syncer->voting() != node.voting) {
        Fail("sim-internal", "node " + std::to_string(node.rank) + " Syncer says voting " +
                                 std::to_string(syncer->voting()) + " but SetVoting said " +
                                 std::to_string(node.voting));
        return;
      }
    }
    node.core->ForEachRegisterForChecks([&](SectorIdx sector, const Register& reg) {
      if (failed()) return;
      reg.CheckInvariants();
      Tag d = reg.durable().tag;
      auto k = node.known_durable.find(sector);
      if (options_.state_checks && k != node.known_durable.end() && d < k->second) {
        Fail("register-durable-behind", "node " + std::to_string(node.rank) + " sector " +
                                            std::to_string(sector) + ": register durable " +
                                            TagStr(d) + " behind store " + TagStr(k->second));
        return;
      }
      Tag& m = node.max_durable[sector];
      if (d < m && options_.state_checks) {
        Fail("durable-decreased", "node " + std::to_string(node.rank) + " sector " +
                                      std::to_string(sector) + ": register durable " + TagStr(d) +
                                      " below earlier " + TagStr(m));
        return;
      }
      m = d;
    });
  }
}

void Simulator::Dispatch(const Event& e) {
  switch (e.type) {
    case EventType::kDeliver:
      Deliver(e);
      return;
    case EventType::kSync: {
      Node& node = *nodes_[e.node];
      if (!node.up || node.epoch != e.epoch) return;
      RunSync(e.node);
      return;
    }
    case EventType::kTick: {
      Node& node = *nodes_[e.node];
      if (!node.up || node.epoch != e.epoch) return;
      // The core's 10 ms tick: retransmissions, idle registers dropped, the Syncer.
      node.core->Tick();
      if (failed() || node.epoch != e.epoch) return;
      ScheduleTick(e.node);
      return;
    }
    case EventType::kClientIssue:
      ClientIssue(static_cast<int>(e.arg));
      return;
    case EventType::kClientTimeout:
      ClientTimeout(e.arg);
      return;
    case EventType::kNemesis:
      if (!healing_) Nemesis();
      return;
    case EventType::kRestart:
      Restart(e.node);
      return;
    case EventType::kHealPartition:
      if (e.arg == partition_gen_) {
        ClearPartitions();
        Trace("partition healed");
      }
      return;
    case EventType::kDiskFast: {
      Node& node = *nodes_[e.node];
      if (node.epoch == e.epoch && node.disk_slow_gen == e.arg) node.disk_slow = false;
      return;
    }
    case EventType::kCall:
      (*e.fn)();
      return;
  }
}

void Simulator::FlushOutboxes() {
  for (auto& node : nodes_) {
    if (!node->flush_requested) continue;
    node->flush_requested = false;
    if (node->up && node->core) node->core->FlushOutbox();
    if (failed()) return;
  }
}

SimResult Simulator::Run() {
  const int n_nodes = options_.nodes;
  // Workload and faults, drawn from the seed.
  p_.clients = static_cast<int>(Range(3, 3 * n_nodes));
  p_.hot_sectors = static_cast<int>(Range(1, 3));
  p_.hot_permille = static_cast<int>(Range(700, 950));
  p_.read_permille = static_cast<int>(Range(300, 800));
  p_.writers = Chance(500) ? 0 : static_cast<int>(Range(1, 2));
  p_.think_max_us = Range(500, 5000);
  p_.timeout_ms = Range(300, 3000);
  p_.max_down = (n_nodes - 1) / 2;
  std::int64_t retransmit_initial_ms = Range(20, 100);
  std::int64_t retransmit_max_ms = retransmit_initial_ms * Range(4, 10);
  fresh_cluster_ = Chance(500);
  // Half the new clusters are bootstrapped, from the seed (not the RNG, so that no other
  // seed's run is redrawn); their last node starts late.
  bootstrapped_ = fresh_cluster_ && (options_.seed / 2) % 2 == 1;
  // A quarter of the seeds mix versions: one node does not advertise tag-only reads, so the
  // others ask it with ReadProc and everyone else with ReadTag.
  old_node_ = Chance(250) ? static_cast<int>(Range(0, n_nodes - 1)) : -1;
  // Even seeds ask only a quorum's worth of peers first (RegisterConfig::thrifty_collect, as
  // the daemon does); odd seeds ask everyone. From the seed, not the RNG: no run is redrawn.
  const bool thrifty = options_.seed % 2 == 0;

  RegisterBugs bugs;
  bugs.skip_impose = options_.bug == SimBug::kSkipImpose;
  bugs.ack_before_persist = options_.bug == SimBug::kAckBeforePersist;
  bugs.minority_quorum = options_.bug == SimBug::kMinorityQuorum;
  bugs.stale_self_at_vote = options_.bug == SimBug::kStaleSelfAtVote;
  bugs.value_before_durable = options_.bug == SimBug::kValueBeforeDurable;

  // Every core runs the production code, tuned as a daemon is (NodeCoreOptions::FromConfig)
  // but with timings scaled to virtual runs of a few seconds, and the bug under test.
  cluster_ = SimClusterConfig(n_nodes);
  client_mac_ = std::make_unique<Hmac>(cluster_.client_key);
  core_options_ = NodeCoreOptions::FromConfig(cluster_);
  core_options_.registers.retransmit_initial_ms = retransmit_initial_ms;
  core_options_.registers.retransmit_max_ms = retransmit_max_ms;
  core_options_.registers.bugs = bugs;
  core_options_.registers.thrifty_collect = thrifty;
  SyncerOptions& so = core_options_.syncer;
  // A quarter of the seeds pull under the resync rate limit, 0.4-4 MB/s of virtual time
  // (100-1000 sectors a second), so that passes and joins last through faults.
  so.rate_bytes_per_s = Chance(250) ? static_cast<double>(Range(1, 10)) * 100 * 4096 : 0;
  // With --serve-budget, peers' sync requests are served under a budget that bites
  // (SimOptions::serve_budget); otherwise at the daemon's default, which no run reaches.
  // A simulated run writes a few hot sectors, and a request is charged the written sectors
  // it met: 20-200 sectors a second of virtual time bites.
  if (options_.serve_budget) so.serve_bytes_per_s = static_cast<double>(Range(2, 20)) * 10 * 4096;
  so.hello_interval_ms = kHelloIntervalMs;
  so.joining_hello_interval_ms = kJoiningHelloIntervalMs;
  so.request_timeout_ms = kSyncRequestTimeoutMs;
  so.checkpoint_interval_ms = kCheckpointIntervalMs;
  so.resync_interval_ms = kResyncIntervalMs;
  so.scrub_interval_ms = options_.bit_rot ? kSimScrubIntervalMs : 0;
  so.bug_joiner_votes = options_.bug == SimBug::kJoinerVotes;
  so.bug_genesis_trusted = options_.bug == SimBug::kGenesisTrusted;
  so.bug_repair_one_peer = options_.bug == SimBug::kRepairFromOnePeer;
  so.bug_scan_finds_ignored = options_.bug == SimBug::kScanFindsIgnored;
  so.bug_serve_without_deadline = options_.bug == SimBug::kServeWithoutDeadline;
  core_options_.bugs.serve_before_identity = options_.bug == SimBug::kServeBeforeIdentity;
  core_options_.bugs.absorb_unguarded = options_.bug == SimBug::kAbsorbUnguarded;
  core_options_.bugs.absorb_durable_unreported = options_.bug == SimBug::kAbsorbDurableUnreported;
  core_options_.bugs.extent_early_answer = options_.bug == SimBug::kExtentEarlyAnswer;
  core_options_.bugs.batch_ignores_features = options_.bug == SimBug::kBatchIgnoresFeatures;
  core_options_.bugs.refuse_started_extents = options_.bug == SimBug::kRefuseStartedExtents;
  core_options_.bugs.accept_top_tags = options_.bug == SimBug::kAcceptTopTags;
  core_options_.bugs.serve_suspect_older = options_.bug == SimBug::kServeSuspectOlder;
  core_options_.bugs.release_only_with_outbox = options_.bug == SimBug::kReleaseOnlyWithOutbox;

  blocked_.assign(n_nodes, std::vector<bool>(n_nodes, false));
  cut_since_us_.assign(n_nodes, std::vector<std::int64_t>(n_nodes, -1));
  for (int i = 0; i < n_nodes; ++i) {
    auto node = std::make_unique<Node>();
    node->rank = static_cast<Rank>(i + 1);
    node->env = std::make_unique<SimNodeEnv>(this, i);
    if (bootstrapped_) {
      // A new cluster whose data_dirs were made by atomdiskd --bootstrap.
      node->identity = GenesisIdentity(node->rank);
    } else if (!fresh_cluster_) {
      // A cluster that has run before: every node votes and knows every other one voted.
      Identity id;
      id.cluster_id = SimClusterId();
      id.rank = node->rank;
      id.voting = true;
      for (int j = 1; j <= n_nodes; ++j) id.voters.push_back(static_cast<Rank>(j));
      node->identity = id;
    }
    node->disk = std::make_shared<FaultyBlockFile>();
    nodes_.push_back(std::move(node));
    OpenStore(i);
  }
  DrawLinkLatencies();
  Trace("seed " + std::to_string(options_.seed) + " nodes " + std::to_string(n_nodes) + " bug " +
        SimBugName(options_.bug) + " clients " + std::to_string(p_.clients) + " hot " +
        std::to_string(p_.hot_sectors) + " hot/1000 " + std::to_string(p_.hot_permille) +
        " reads/1000 " + std::to_string(p_.read_permille) + " writers " +
        std::to_string(p_.writers) + " timeout " + std::to_string(p_.timeout_ms) +
        "ms retransmit " + std::to_string(retransmit_initial_ms) + ".." +
        std::to_string(retransmit_max_ms) + "ms" +
        (bootstrapped_    ? ", new cluster, bootstrapped"
         : fresh_cluster_ ? ", new cluster"
                          : ", voting identities") +
        (old_node_ >= 0 ? ", node " + std::to_string(old_node_ + 1) + " without tag reads" : "") +
        (thrifty ? ", thrifty collect" : "") +
        (so.rate_bytes_per_s > 0
             ? ", resync limit " + std::to_string(static_cast<std::uint64_t>(so.rate_bytes_per_s)) +
                   " B/s"
             : ""));
  if (bootstrapped_) {
    // Down at the start: its store closed, started by an ordinary restart event.
    late_node_ = n_nodes - 1;
    nodes_[late_node_]->up = false;
    CloseStoreAndRestartIn(late_node_, Range(500, 6000) * kUsPerMs);
    Trace("node " + std::to_string(nodes_[late_node_]->rank) +
          " starts late (bootstrapped cluster)");
  }
  for (int i = 0; i < n_nodes && !failed(); ++i) {
    if (i != late_node_) StartNode(i);
  }
  for (int i = 0; i < n_nodes; ++i) {
    if (i != late_node_) ScheduleTick(i);
  }
  if (options_.client_library) CreateLibClients();
  for (int c = 0; c < p_.clients; ++c) {
    Event e;
    e.type = EventType::kClientIssue;
    e.arg = static_cast<std::uint64_t>(c);
    At(Range(1, 2000), std::move(e));
  }
  Event nemesis;
  nemesis.type = EventType::kNemesis;
  At(Range(p_.nemesis_min_ms, p_.nemesis_max_ms) * kUsPerMs, std::move(nemesis));

  // Returns whether the event counts as a step of the faulty phase.
  auto step = [this]() {
    Event e = queue_.top();
    queue_.pop();
    now_us_ = e.time_us;
    ++result_.stats.events;
    Dispatch(e);
    if (!failed()) FlushOutboxes();
    if (!failed()) ReapFatal();
    if (!failed()) CheckAfterEvent();
    return !e.uncounted;
  };

  // Phase 1: faults and client load.
  for (std::uint64_t i = 0; i < options_.steps && !failed();) i += step() ? 1 : 0;

  // Phase 2: heal every fault; every operation still held by a coordinator must finish.
  constexpr std::int64_t kDrainLimitUs = 120'000 * kUsPerMs;
  if (!failed()) {
    HealAll();
    std::int64_t deadline = now_us_ + kDrainLimitUs;
    while (!failed() && !Quiescent() && now_us_ < deadline) step();
    if (!failed() && !Quiescent()) {
      Fail("liveness", "after healing every fault, operations still pending after " +
                           std::to_string(kDrainLimitUs / kUsPerMs / 1000) + " s:\n" + StuckOps());
    }
  }
  // Phase 3: every node reads every hot sector; these must finish too.
  if (!failed()) {
    Trace("final reads");
    for (int s = 0; s < p_.hot_sectors && !failed(); ++s) {
      for (int n = 0; n < n_nodes && !failed(); ++n) {
        if (options_.client_library) {
          // The final-read client of node n, which prefers node n.
          LibStartOp(p_.clients + n, /*is_write=*/false, static_cast<SectorIdx>(s), true);
        } else {
          StartOp(p_.clients + n, n, /*is_write=*/false, static_cast<SectorIdx>(s), true);
        }
      }
    }
    std::int64_t deadline = now_us_ + kDrainLimitUs;
    while (!failed() && !Quiescent() && now_us_ < deadline) step();
    if (!failed() && !Quiescent()) {
      Fail("liveness", "final reads still pending after healing:\n" + StuckOps());
    }
  }
  if (!failed()) CheckConvergence();
  if (!failed()) {
    for (int n = 0; n < n_nodes && !failed(); ++n) CheckDiskHolds(n, "at the end");
  }

  // The history, and its linearizability.
  for (const Op& op : ops_) result_.history.push_back(op.h);
  result_.stats.history_ops = result_.history.size();
  for (const HistoryOp& h : result_.history) {
    std::string line = HistoryOpToJson(h);
    for (unsigned char c : line) hash_ = (hash_ ^ c) * 0x100000001b3ULL;
  }
  if (!failed()) {
    LinCheckOptions lo;
    lo.max_states_per_key = options_.max_lincheck_states;
    LinCheckResult lin = CheckLinearizable(result_.history, lo);
    if (lin.verdict == LinCheckResult::Verdict::kNotLinearizable) {
      Fail("linearizability", "sector " + std::to_string(lin.bad_key) + ": " + lin.explanation);
    } else if (lin.verdict == LinCheckResult::Verdict::kGaveUp) {
      Fail("lincheck-gave-up", "the checker gave up (more than " +
                                   std::to_string(lo.max_states_per_key) +
                                   " states on one sector): " + lin.explanation);
    }
  }
  result_.stats.virtual_ms = NowMs();
  result_.trace_hash = hash_;
  result_.last_events.assign(last_events_.begin(), last_events_.end());
  // Tear down the clients, then the cores (and their stores); nothing they still do reaches
  // the disks.
  for (const auto& lc : lib_clients_) {
    const client::ClientStats cs = lc->core->Stats();
    result_.stats.client_retries += cs.retries;
    result_.stats.client_connection_drops += cs.connection_drops;
    result_.stats.client_ops_failed += cs.ops_failed;
  }
  lib_clients_.clear();
  for (int n = 0; n < n_nodes; ++n) {
    Node& node = *nodes_[n];
    if (node.gate) node.gate->Cut();
    StopNode(n);
  }
  return std::move(result_);
}

}  // namespace

SimResult RunSimulation(const SimOptions& options, std::ostream* trace) {
  Simulator sim(options, trace);
  return sim.Run();
}

}  // namespace atomdisk
