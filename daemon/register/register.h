// Register: one sector's multi-writer atomic register (read-impose write-majority,
// crash-recovery variant; docs/REGISTER.md states it), as a pure state machine.
//
// Inputs: a client read or write, a system message from a peer, a store completion
// (OnPersisted) and a tick carrying the current time. Outputs go through RegisterEnv: system
// messages to send, triples to persist, finished client operations. A Register owns no
// socket, file, clock, thread or random source, which is what lets the simulator run real
// registers under a simulated network and disk from one seed.
//
// What it guarantees (checked by CheckInvariants and by the simulator):
// - the stored tag never decreases; a durable tag never decreases;
// - an Ack for tag T is sent only once a triple >= T is durable on this node;
// - a Value or Tag reports only the durable triple (so the one-round-trip read is safe);
// - a writer persists its own new triple before it sends WriteProc to anyone, unless its ts
//   lies below the write ts lease (docs/REGISTER.md): then both happen at once.
//
// The first phase asks the peers that understand it for tags only (ReadTag, answered with a
// Tag: docs/REGISTER.md, "The tag-only first phase"): a write needs only the highest tag, and
// a read needs the highest value, which in the common case is our own durable one. A read that
// learns of a newer tag than any value it holds asks everyone again with ReadProc ("values
// mode", under a new op id).
//
// Owned by the node shell (or the simulator), one per busy sector. Not thread-safe: every
// call for one node must come from one thread.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "common/status.h"
#include "common/types.h"
#include "common/wire.h"

namespace atomdisk {

// Deliberate protocol mistakes, compiled in only when ATOMDISK_SIM_BUGS is defined (the
// simulator's own build of this file), so that the simulator can prove it catches them.
struct RegisterBugs {
  bool skip_impose = false;         // reads return after the first phase, always
  bool ack_before_persist = false;  // Ack (and own write ack) before the triple is durable
  bool minority_quorum = false;     // N/2 answers taken as a majority
  // When a joining node starts voting mid-operation, its own answer is the value that was
  // durable when the operation started (before the join pass), not the one durable now.
  bool stale_self_at_vote = false;
  // A register built from a cached tag answers a ReadProc with the value it is still
  // persisting, instead of waiting for it to be durable.
  bool value_before_durable = false;
};

struct RegisterConfig {
  Rank self = 0;
  std::vector<Rank> ranks;  // every node of the cluster, self included
  std::int64_t retransmit_initial_ms = 100;
  std::int64_t retransmit_max_ms = 1000;
  RegisterBugs bugs;  // ignored unless built with ATOMDISK_SIM_BUGS
  // False while this node is joining (docs/RESYNC.md): it then sends no Value and no Ack and
  // does not count itself in the quorums of the operations it coordinates. It still stores
  // WriteProcs and persists its own writes. The owner may flip it at any time.
  bool votes = true;
  // Lowest ts this node's own writes use (docs/RESYNC.md, "Tags after a disk replacement").
  // After a join pass it lies above every ts an earlier incarnation of this rank can have
  // used, so a new write never reuses a tag whose old value survives somewhere the join did
  // not look. A larger ts is always safe: a write only needs one above its read quorum's.
  std::uint64_t min_write_ts = 0;
  // Own writes whose ts lies below this send WriteProc while their own copy is still being
  // persisted (one fdatasync off a write's latency); the others persist first. The owner
  // keeps this lease durable (IDENTITY) before it sets it, and after a restart sets
  // min_write_ts to at least the saved lease: a write whose own copy a crash lost can then
  // never have its tag reused by the next incarnation (docs/REGISTER.md).
  std::uint64_t write_ts_lease = 0;
  // Indexed like `ranks`: true for the peers that answer ReadTag with Tag (their HelloReply
  // advertised kFeatureTagReads, common/sync_wire.h); a first phase sends them ReadTag and
  // everyone else ReadProc. Empty or false: ReadProc (atdd nodes close a connection that
  // sends them a ReadTag). The owner may change it at any time.
  std::vector<bool> tag_peers;
  // The first send of a collect phase goes only to as many peers as the quorum still needs,
  // chosen among those RegisterEnv::PeerResponsive reports, from a start that rotates with
  // the sector and the operation (so the load spreads); a retransmission asks every peer
  // still unanswered. Off, or too few responsive peers: every peer is asked at once. Saves
  // the answers nobody waits for (one of the two peers' work on every read and write of a
  // three-node cluster). Values mode (a read that is behind) always asks everyone.
  bool thrifty_collect = false;

  std::size_t Quorum() const;  // answers that make a majority
  bool IsTagPeer(std::size_t rank_index) const {
    return rank_index < tag_peers.size() && tag_peers[rank_index];
  }
};

// Effects of a register, carried out by its owner.
class RegisterEnv {
 public:
  virtual ~RegisterEnv() = default;
  // Sends `msg` to node `to` (never self). Delivery may fail; the register retransmits.
  virtual void Send(Rank to, const SystemMessage& msg) = 0;
  // Stores `value` durably for `sector`; the owner later calls OnPersisted(value.tag, status)
  // exactly once for this request.
  virtual void Persist(SectorIdx sector, const Triple& value) = 0;
  // A client operation finished. For reads `data` is the value read; for writes it is null.
  virtual void Complete(std::uint64_t token, SectorPtr data) = 0;
  // A client write ended without being written: the sector's tag is at kMaxTagTs, so no
  // higher tag exists. Nothing of it was stored or sent; `why` says so for the log.
  virtual void Refuse(std::uint64_t token, const std::string& why) = 0;
  // A fresh, unique operation id.
  virtual Uuid NewOpId() = 0;
  // A write of ours chose ts `ts` >= config.write_ts_lease and so persists its own copy
  // before it sends WriteProc. The owner may raise the lease above `ts` (durably first) so
  // that later writes skip that wait.
  virtual void WantWriteTsLease(std::uint64_t ts) { (void)ts; }
  // With config.thrifty_collect: whether `peer` is expected to answer soon (connected and
  // heard from lately). A wrong guess costs one retransmission interval, never correctness.
  virtual bool PeerResponsive(Rank peer) {
    (void)peer;
    return true;
  }
};

// The message `self` sends back about `sector` to an ask under `op_id`: sender, op id,
// sector and content set, tag and data left empty. Every answer a node gives (Value, Tag,
// Ack) starts here, from a register or from the node's cache shortcut.
SystemMessage AnswerTo(Rank self, const Uuid& op_id, SectorIdx sector, SystemContent content);

class Register {
 public:
  // `durable` is what the store holds for the sector now (nothing in flight).
  // durable.data may be null when the owner knows only the durable tag (from the store's slot
  // cache, without reading the sector) and hands the register a newer value at once: a
  // WriteProc with a higher tag, or a client write (whose collect needs only tags, and whose
  // impose brings a newer value). That value becomes durable_ when persisted, and until then
  // nothing here needs the old data: ReadProcs are answered once it is durable, and client
  // reads wait in the queue until then. So an overwrite costs no read of the sector. When
  // nothing newer is on its way (the write was refused, see Refuse) and a read or a ReadProc
  // waits, NeedsDurableData() says so and the owner reads the store for SetDurableData.
  Register(SectorIdx sector, Triple durable, const RegisterConfig* config, RegisterEnv* env);

  // Client operations, coordinated by this node; queued behind the one in progress.
  void StartRead(std::uint64_t token, std::int64_t now_ms);
  void StartWrite(std::uint64_t token, SectorPtr data, std::int64_t now_ms);

  // A system message addressed to this sector (msg.sector == sector, sender is a cluster
  // member other than self; the owner checks both).
  void OnMessage(const SystemMessage& msg, std::int64_t now_ms);

  // A value pulled from a peer by resync (docs/RESYNC.md): stored like a WriteProc's value
  // if newer than what this register holds, but acknowledged to nobody.
  void Absorb(const Triple& value) { AcceptAndPersist(value); }

  // The store finished the Persist of `tag`.
  void OnPersisted(Tag tag, const Status& status, std::int64_t now_ms);
  // The store reports `value`, or a newer value, durable for this sector through a write
  // other than this register's own Persists (the resync absorb's own store write,
  // daemon/core/node_core.cc): durable() advances to it if it is newer, as OnPersisted would,
  // so that a failed Persist of the same value does not leave durable() behind the disk.
  void OnDurableElsewhere(const Triple& value, std::int64_t now_ms);

  // True when durable_ has no data (see the constructor), nothing newer will become durable,
  // and a client read or a ReadProc waits for it: the owner then reads the sector from the
  // store (which holds exactly durable_, since nothing of ours is in flight) and calls
  // SetDurableData.
  bool NeedsDurableData() const;
  // The data of the tag-only durable value; ignored unless value.tag is durable_'s tag.
  void SetDurableData(const Triple& value, std::int64_t now_ms);

  // The owner flipped config.votes to true: an operation this node coordinates counts our
  // own answer now (in a one-node cluster nothing else would ever finish it).
  void OnVotesChanged(std::int64_t now_ms);

  // Retransmits what is unanswered when its deadline has passed, and re-issues a persist
  // that failed.
  void Tick(std::int64_t now_ms);
  // A peer link came back up: the current phase's messages go again at the next Tick to
  // whoever has not answered, and the back-off starts over. No effect when idle.
  void RetransmitSoon(std::int64_t now_ms);

  // True when nothing is queued, coordinated, persisting or waiting to be acked: the owner
  // may drop the register and rebuild it from the store later.
  bool Idle() const;
  // False when OnMessage would ignore this Value without looking at its data: no operation of
  // ours with that id is collecting answers, or `sender` already answered it (typically the
  // last node of a quorum that was complete without it). Reads nothing but the header fields,
  // so the owner may ask before it checks the frame's tag, and drop the frame unchecked.
  // True for any other content (a Tag is small: nothing to save).
  bool WantsValue(const SystemMessage& msg) const;
  // True while this node coordinates or queues client operations (the owner ticks these).
  bool HasClientWork() const { return current_.has_value() || !queue_.empty(); }
  // Client operations queued behind the one in progress (not started yet).
  std::size_t QueuedClientOps() const { return queue_.size(); }

  const Triple& durable() const { return durable_; }
  // What resync serves to peers (TagView::kServed): stored_, unless it is our own write above
  // the write ts lease that is not durable yet (its tag could be reused after a crash); then
  // durable_.
  const Triple& Served() const;
  const Triple& stored() const { return stored_; }
  SectorIdx sector() const { return sector_; }

  // Aborts if an internal invariant is broken. Cheap; tests and the simulator call it
  // after every step.
  void CheckInvariants() const;

 private:
  enum class Phase { kCollect, kPersistOwn, kImpose };
  struct QueuedOp {
    std::uint64_t token;
    bool is_write;
    SectorPtr data;
  };
  struct Current {
    std::uint64_t token = 0;
    bool is_write = false;
    SectorPtr write_data;
    Uuid id;
    Phase phase = Phase::kCollect;
    std::vector<bool> answered;  // by rank index, for the current phase
    std::size_t answers = 0;
    // kCollect: the highest tag reported so far, with its value when some answer carried it
    // (our own durable triple or a Value); data is null when only a Tag reported best.tag.
    Triple best;
    bool all_same = true;  // kCollect: every answer so far has best.tag
    // kCollect of a read: ReadProc to everyone, Tags ignored (a Tag reported a newer tag than
    // any value we held, so the read asks again for values).
    bool values_mode = false;
    Triple target;  // kPersistOwn/kImpose: the triple being imposed
    bool self_acked = false;
    std::int64_t next_send_ms = 0;
    std::int64_t backoff_ms = 0;
  };
  struct PendingAck {
    Rank to;
    Uuid id;
    Tag tag;
  };

  void StartNext(std::int64_t now_ms);
  // Starts (or restarts) the kCollect phase of current_ under a fresh op id.
  void StartCollect(std::int64_t now_ms);
  // Sends the current phase's message to the peers that have not answered; with
  // `first_send` in a collect phase under config.thrifty_collect, only to a quorum's worth.
  void SendPhase(bool only_unanswered, bool first_send = false);
  void RecordAnswer(Rank from);
  void EnterImpose(std::int64_t now_ms);
  void MaybeFinish(std::int64_t now_ms);
  void Finish(SectorPtr data, std::int64_t now_ms);
  // Accepts `t` as stored if newer and makes sure a persist covering t.tag is in flight.
  void AcceptAndPersist(const Triple& t);
  bool DurableCovers(Tag tag) const;
  void FlushAcks();
  // Sends `value` (which has data) as our Value for `id` to `to`.
  void SendValue(Rank to, const Uuid& id, const Triple& value);
  void OnDurableAdvanced(std::int64_t now_ms);
  std::size_t RankIndex(Rank r) const;
  void ResetAnswers();

  SectorIdx sector_;
  const RegisterConfig* config_;
  RegisterEnv* env_;
  Triple durable_;  // on stable storage here
  Triple stored_;   // newest accepted (durable or being persisted)
  // Plain vectors: a register is built for every sector a WriteProc touches, and a
  // std::deque allocates even when empty (two allocations per register, 2% of a replica's CPU
  // in a sequential write). These hold a few entries at most; the front is erased in place.
  std::vector<Triple> persisting_;  // persists in flight, oldest first
  std::vector<PendingAck> pending_acks_;
  // ReadProcs that arrived while durable_ had no data (see the constructor): answered with
  // their Value once durable_ has one.
  std::vector<PendingAck> pending_values_;
  std::optional<Current> current_;
  std::vector<QueuedOp> queue_;
  std::size_t rotation_ = 0;  // thrifty_collect: operations started here, to spread the asks
};

}  // namespace atomdisk
