// The deterministic simulator (docs/SIMULATION.md): N real registers (daemon/register) and N
// real sector stores (daemon/store) over in-memory, fault-injecting disks, a simulated
// network that drops, duplicates, delays and reorders messages and partitions nodes, crashes
// and restarts, and clients issuing reads and writes with timeouts. Virtual time only: no
// clock, no thread, no socket. Every choice comes from one std::mt19937_64 seeded with the
// run's seed, so one seed replays one run byte for byte.
//
// After every event it checks the invariants (register CheckInvariants, a node's durable tag
// never decreasing across restarts, no Ack before the durable store, no tag carrying two
// values, every stored or read sector a complete value, a Value or Tag reporting nothing
// beyond its sender's durable state, a node that rejoins after a disk replacement holding
// every write completed before it); at the end it heals every fault,
// requires every pending operation to finish and every node to vote, runs a resync pass on
// every node and requires the stores to converge, and checks the history for
// linearizability. Each node also runs the real Syncer (daemon/sync), whose messages share
// the simulated network with the registers', and tells the registers which peers take
// ReadTag (in a quarter of the seeds one node plays an atomdisk without tag-only reads).
//
// Thread-compatible: a Simulator is used by one thread; separate Simulators share nothing.
#pragma once

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "common/lincheck.h"

namespace atomdisk {

// Deliberate mistakes the simulator must catch (register ones need atomdisk_register_sim).
enum class SimBug {
  kNone,
  kSkipImpose,        // reads return after the first phase, always
  kAckBeforePersist,  // Ack (and the writer's own ack) before the triple is durable
  kMinorityQuorum,    // N/2 answers taken as a majority
  kForgetOnRestart,   // a restarted node's store is wiped but its IDENTITY (voting) is kept
  kJoinerVotes,       // a node with a replaced disk votes at once (SyncerOptions::bug_joiner_votes)
  kLeaseForgotten,    // a restarted node's writes do not start above its earlier write ts lease
  kServeBeforeIdentity,      // a node without IDENTITY persists before its Syncer saved one
  kAbsorbUnguarded,          // a resync absorb lets a register be built from its pending value
  kAbsorbDurableUnreported,  // an absorb's durable write is not reported to its register
  kStaleSelfAtVote,          // a node that starts voting mid-read answers with its pre-join value
  kGenesisTrusted,     // a replaced disk bootstrapped as founding member, trusted over the voters
  kExtentEarlyAnswer,  // an extent is answered done when its first member finishes (--extents)
  kBatchIgnoresFeatures,  // system batches go to peers that did not advertise them
  kValueBeforeDurable,    // a tag-only register answers a ReadProc with its pending value
  // A coordinator that loses its quorum answers its write extents already under way with
  // every sector not done, though their members were started and may be written
  // (needs --extents and --link-liveness).
  kRefuseStartedExtents,
  // The client library (client/core/client_core.h, needs --client-library): a write whose
  // outcome is unknown is retried although the caller said not to, and reported as sent once.
  kClientRetriesUnknownWrite,
  // The client library reports a write extent written when sectors of it were not done.
  kClientNotDoneAsDone,
  // A node takes a system message whose tag is above kMaxTagTs (needs --forged-tags).
  kAcceptTopTags,
  // A scrub or read repair trusts the first peer that answers, not N - Q + 1 of them (needs
  // --bit-rot): a repaired copy can then be older than a write that completed.
  kRepairFromOnePeer,
  // A node serves a suspect sector from its older valid slot (needs --bit-rot): after rot of
  // the newest value, an older value served as durable.
  kServeSuspectOlder,
  // A node releases the store writes it held for one group commit only when it also has
  // system messages to send (NodeCore::FlushOutbox).
  kReleaseOnlyWithOutbox,
  // A sector a Syncer scan met with a failed slot is not handed to the scrub: a write torn by
  // a crash waits for a read of it there (or a scrub run) before it is repaired.
  kScanFindsIgnored,
  // Sync requests queued over the serve budget wait for the budget alone, not at most half a
  // request timeout (needs --serve-budget): a peer's pass gives up on this node as a source.
  kServeWithoutDeadline,
};

// "skip-impose", ... ; "none" for kNone.
const char* SimBugName(SimBug bug);
// Parses a catalogue name; nullopt for an unknown one.
std::optional<SimBug> ParseSimBug(std::string_view name);
// Every catalogued bug (not kNone), in catalogue order.
std::vector<SimBug> AllSimBugs();
// The layer of the production code the bug lives in: "register" (daemon/register), "node"
// (the node core, daemon/core), "sync" (daemon/sync), "client" (the client library's core,
// client/core) or "world" (what the simulated disk or restart does); and one line saying what the
// mistake is.
const char* SimBugLayer(SimBug bug);
const char* SimBugWhat(SimBug bug);

struct SimOptions {
  std::uint64_t seed = 1;
  int nodes = 3;
  // Events in the faulty phase; then faults are healed and the run drains.
  std::uint64_t steps = 3000;
  SimBug bug = SimBug::kNone;
  // The state checks made at every step: no Ack before the durable store, no tag carrying
  // two values, a durable tag never decreasing. Off only to show that the end-of-run checks
  // (linearizability, liveness) catch a bug on their own.
  bool state_checks = true;
  // Permille of client operations sent as extent commands (kReadExtent / kWriteExtent of
  // 2..kMaxSimExtent consecutive sectors, each member its own history operation). 0 keeps
  // the single-sector workload every seed ran before extents, seed for seed.
  int extent_permille = 0;
  // Peer liveness in the simulated world, as atomdiskd's peer links have it (docs/PROTOCOL.md,
  // "Peer liveness"): a link that a partition cuts, one way or both, counts as down at both
  // ends (NodeCoreEnv::PeerConnected) once the cut has lasted kSimPeerTimeoutMs, until the
  // heal. Off keeps the older model (a link breaks only when its peer's process dies) and
  // every seed as it ran before; on, the core's no-quorum rule (NodeCore::QuorumReachable)
  // fires under partitions too.
  bool link_liveness = false;
  // The simulated clients are the client library itself (client/core/client_core.h: the same
  // ClientCore as atomdisk, atomdisk-fuse and the CLI run), each with a connection to every
  // node over the simulated network: it picks the node, times attempts out, fails over and
  // retries, and partitions, drops and crashes reach its connections. Off keeps the older
  // model (each operation handed straight to one node's core, the client waiting out a
  // timeout) and every seed as it ran before.
  bool client_library = false;
  // With client_library: the client connections are TLS as daemons make them, so frames on
  // them carry zero tags instead of HMACs (docs/TLS.md, "No HMAC inside TLS"), through the
  // same ClientCore and NodeCore code that the daemon and the client library run.
  bool tls = false;
  // The nemesis also hands nodes forged WriteProcs (as if signed with the system key) whose
  // tag lies above kMaxTagTs (docs/REGISTER.md, "Timestamp range"), with a value no client
  // wrote. A node must drop them: taking one would leave the sector no tag to write above,
  // and a read would return the forged value. Off keeps every seed as it ran before.
  bool forged_tags = false;
  // Bit rot at rest: while a node is down, a bit of one of its stored slots flips (the data
  // or the header, of either slot of a sector it held durably), half the restarts. The node
  // must serve neither the lost value nor the older slot behind it (SectorStore's suspect
  // rule) until a read repair or scrub (every kSimScrubIntervalMs here) restores it from the
  // peers; the model counts the rotted copy as lost. Off keeps every seed as it ran before.
  bool bit_rot = false;
  // Nodes serve peers' sync requests under a budget low enough to bite (SyncServer; the
  // daemon's default, 512 MB/s, is never reached by a simulated run): 20-200 sectors a second
  // of virtual time, drawn per run. Off keeps every seed as it ran before.
  bool serve_budget = false;
  // Upper bound handed to the linearizability checker, per sector.
  std::uint64_t max_lincheck_states = 5'000'000;
};

struct SimStats {
  std::uint64_t events = 0;
  std::int64_t virtual_ms = 0;
  std::uint64_t messages_sent = 0;
  std::uint64_t messages_dropped = 0;
  std::uint64_t messages_duplicated = 0;
  std::uint64_t messages_delivered = 0;
  std::uint64_t persists = 0;
  std::uint64_t syncs = 0;
  std::uint64_t crashes = 0;
  std::uint64_t partitions = 0;
  std::uint64_t disk_faults = 0;
  std::uint64_t registers_created = 0;
  std::uint64_t ops_ok = 0;
  std::uint64_t ops_unknown = 0;
  std::uint64_t history_ops = 0;
  std::uint64_t sync_messages = 0;   // sync messages sent (also counted in messages_sent)
  std::uint64_t replaced_disks = 0;  // "replace disk" faults: empty store and no IDENTITY
  std::uint64_t absorbs = 0;         // SyncEnv::Absorb calls
  std::uint64_t passes_done = 0;     // resync passes finished, summed over nodes and restarts
  // Sync requests served late (over the serve budget) and dropped (its queue full), likewise.
  std::uint64_t sync_deferred = 0;
  std::uint64_t sync_dropped = 0;
  std::uint64_t tags_from_cache = 0;  // ReadTags answered from a store's slot cache
  // Registers built for a WriteProc from the cached tag alone (no read of the sector)
  std::uint64_t registers_from_cached_tag = 0;
  std::uint64_t batches_sent = 0;  // system batches (their members count in messages_sent)
  // Extents answered with every sector not done (in practice NodeCore::QuorumReachable said
  // no: the coordinator's live links made no majority)
  std::uint64_t extents_refused = 0;
  // With SimOptions::client_library, summed over the clients' ClientCore::Stats: attempts
  // beyond each operation's first (failovers and refusals moved elsewhere), connections the
  // clients saw drop or closed themselves, and operations that failed (timeouts included).
  std::uint64_t client_retries = 0;
  std::uint64_t client_connection_drops = 0;
  std::uint64_t client_ops_failed = 0;
  std::uint64_t forged_tags = 0;  // forged top-tag WriteProcs handed to nodes (--forged-tags)
  // With SimOptions::bit_rot: bits flipped in stored slots, and the repairs that followed
  // (read repairs and scrub repairs that stored a value, summed over nodes and restarts).
  std::uint64_t rotted_slots = 0;
  std::uint64_t repairs = 0;
};

struct SimResult {
  bool ok = true;
  // Which check failed: "ack-before-durable", "durable-decreased", "register-durable-behind",
  // "tag-reuse", "torn-value", "store-error", "codec", "nonvoter-answered",
  // "reported-not-durable", "cache-behind", "feature-negotiation", "joiner-behind", "liveness",
  // "convergence", "linearizability", "lincheck-gave-up", "sim-internal". Empty when ok.
  std::string check;
  std::string detail;                    // what was seen, several lines
  std::vector<std::string> last_events;  // the trace lines leading to the failure
  std::uint64_t trace_hash = 0;          // FNV-1a of every trace line and of the history
  SimStats stats;
  std::vector<HistoryOp> history;
};

// Runs one simulation. When `trace` is non-null every event is written to it, one line each.
SimResult RunSimulation(const SimOptions& options, std::ostream* trace = nullptr);

// The command line that replays `options` ("atomdisk-sim --seed 7 --nodes 3 ...").
std::string ReplayCommand(const SimOptions& options);

}  // namespace atomdisk
