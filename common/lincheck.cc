// Linearizability checker for read/write register histories (see lincheck.h).
//
// Conventions this implementation fixes (the contract leaves them open):
//
//  * Initial value. A read returning exactly "" read the initial, never-written value. No
//    other id is special: a read of "0" is a read of whatever write wrote "0" and, if no
//    write on that key did, the history is not linearizable. (A write of "" writes the
//    initial value again; allowed, see duplicates below.)
//  * Ties in time. If one operation's return time equals another's call time, the first
//    precedes the second in real time (the conservative choice: it adds an ordering
//    constraint instead of assuming overlap). The exception is a zero-length operation
//    (call == return): it overlaps every operation called at that same instant, since two
//    zero-length operations at one instant cannot both precede each other. Concretely, each
//    key's call and return events are sorted by (time, phase, op) with phase: returns of ops
//    that took time < calls < returns of zero-length ops < returns at +infinity; op a
//    precedes op b iff a's return event sorts before b's call event.
//  * A completed operation whose return is before its call (only possible through the API;
//    ParseHistory rejects it) is treated as zero-length at its call time.
//  * Value ids are meant to be unique per write. Duplicates (and writes of "") are allowed
//    and checked soundly, by the search alone.
//
// Per key (a history is linearizable iff each key's sub-history is), in this order:
//
//  1. Failed ops (ok = false) and unknown reads are dropped. An unknown write whose id no ok
//     read returned is dropped too: given any linearization that includes it, removing it
//     leaves a valid one (no read sits between it and the next write, as such a read would
//     have returned its id), and "never took effect" is an allowed outcome.
//  2. Pre-check: an ok read of an id that no (ok or unknown) write on the key wrote cannot be
//     linearized: a register read returns the value of the last write linearized before it,
//     or the initial value, so an id nobody wrote can never come back. This also catches a
//     read of a failed write's id.
//  3. Pre-check: a read that precedes every write of its id cannot be linearized either.
//  4. An unknown write whose id is unique on the key and was read must have taken effect
//     before the earliest return of such a read: that becomes its return, instead of the
//     +infinity the theory prescribes and other unknown writes keep (equivalent for the
//     register, and it keeps the write from overlapping the whole rest of the history).
//  5. When every id on the key is written exactly once (the normal case), the history is
//     decided exactly in O(n log n) by Gibbons & Korach's zone test (see ZoneCheck): for
//     value v, its "cluster" is its write plus its reads; f = the earliest return and s = the
//     latest call in the cluster. If f < s the cluster has a forward zone [f, s] (v must be
//     in the register throughout); otherwise a backward zone [s, f] (all of its ops overlap
//     there). With 2 and 3 holding, the key is linearizable iff no two forward zones
//     overlap and no backward zone lies inside a forward zone. (The initial value is a
//     virtual write before everything.) The search below agrees with it on every test; it
//     exists because the search's worst case is exponential: refuting a hot key with 64
//     concurrent clients can cost millions of states, the zone test a sort.
//  6. Otherwise, the Wing & Gong search with Lowe's memoisation, structured like Porcupine's
//     checkSingle: the call and return events sit in one sorted doubly linked list;
//     linearizing an op lifts its two events out; the ops that may be linearized next are
//     the calls before the first return in the list; a return at the head of the list is a
//     dead end and the search backtracks. Visited (set of linearized ops, register value)
//     states are cached and never explored twice. The set is a bitset over the ops numbered
//     in call order with an incrementally maintained Zobrist hash; a state is stored as the
//     bitset words between the first word with a zero bit and the last word with a one bit
//     (everything before is all ones, everything after all zeros): a handful of words when
//     the number of concurrent clients is bounded. Nothing is allocated per step apart from
//     the amortised growth of the state arena and its hash table. Prunings, all sound:
//      - A pending read of the current value is linearized at once, exclusively: any
//        successful continuation that linearizes it later can linearize it now instead (a
//        read does not change the register; nothing that must precede it is pending since
//        its call is before every pending return; moving it earlier breaks no constraint).
//      - Otherwise, a pending write whose id nobody read is linearized at once, exclusively:
//        every continuation then starts with a write (no pending read matches) and has that
//        write followed by another write or by nothing; moving it first keeps it valid.
//      - A state is dead if reads of the current value remain, no write of it remains and
//        no such read is pending; or (unique ids) if some remaining write must be linearized
//        before the return that is its "deadline" (see priority_) and that deadline comes
//        before the call of a remaining read of the current value.
//      - Alternative writes are tried earliest deadline first, which finds a linearization
//        of a linearizable history almost without backtracking.
//     max_states_per_key bounds the number of cached states; past it the key is "gave up".
//
// Keys are checked in ascending order and checking stops at the first key that is not
// linearizable (bad_key); a key the search gave up on is remembered and reported only if no
// later key fails outright. ops_checked/keys_checked count the ok ops and unknown writes of
// the keys checked so far (keys holding only failed ops or unknown reads are not counted).
#include "common/lincheck.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string_view>
#include <unordered_map>
#include <utility>

namespace atomdisk {
namespace {

using Json = nlohmann::json;
using OrderedJson = nlohmann::ordered_json;

constexpr std::int64_t kInfinity = std::numeric_limits<std::int64_t>::max();
constexpr std::uint32_t kNone = std::numeric_limits<std::uint32_t>::max();

// Event phases at equal times: returns of operations that took time come first, then calls,
// then returns of zero-length operations, then the returns at +infinity.
constexpr std::uint8_t kPhaseReturn = 0;
constexpr std::uint8_t kPhaseCall = 1;
constexpr std::uint8_t kPhaseZeroLengthReturn = 2;
constexpr std::uint8_t kPhaseInfinity = 3;

std::uint64_t SplitMix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// ---------------------------------------------------------------------------------------------
// Descriptions for explanations.

std::string Quote(std::string_view value) {
  if (value.empty()) return "the initial value \"\"";
  // Appended piece by piece: GCC 12 at -O2/-O3 reports a false -Werror=restrict in the
  // inlined char* + std::string concatenation.
  std::string out;
  out.reserve(value.size() + 2);
  out.push_back('"');
  out.append(value);
  out.push_back('"');
  return out;
}

std::string DescribeOp(const HistoryOp& op) {
  std::ostringstream out;
  out << (op.kind == HistoryOp::Kind::kWrite ? "write of " : "read of ") << Quote(op.value)
      << " by client " << op.client << " [call " << op.call_ns << ", return ";
  switch (op.outcome) {
    case HistoryOp::Outcome::kOk:
      out << op.return_ns << "]";
      break;
    case HistoryOp::Outcome::kFailed:
      out << op.return_ns << ", failed]";
      break;
    case HistoryOp::Outcome::kUnknown:
      out << "unknown]";
      break;
  }
  return out.str();
}

// ---------------------------------------------------------------------------------------------
// One key's operations, ready for checking.

struct KeyOp {
  std::uint32_t index = 0;  // into the history, for explanations
  bool is_write = false;
  bool read_by_someone = false;  // write: some ok read returned its id
  std::uint32_t value = 0;       // interned id; 0 = the initial value ""
  std::int64_t call = 0;
  std::int64_t ret = 0;  // kInfinity: may take effect any time after its call
  std::uint8_t ret_phase = kPhaseReturn;
  // 1-based positions of the op's call and return in the key's sorted event sequence.
  std::uint32_t call_pos = 0;
  std::uint32_t ret_pos = 0;
};

// True if a's return event is ordered before b's call event (a precedes b in real time).
bool Precedes(std::int64_t a_ret, std::uint8_t a_ret_phase, std::int64_t b_call) {
  return a_ret < b_call || (a_ret == b_call && a_ret_phase < kPhaseCall);
}

std::uint8_t ReturnPhase(std::int64_t call, std::int64_t ret) {
  return ret > call ? kPhaseReturn : kPhaseZeroLengthReturn;
}

struct PreparedKey {
  std::vector<KeyOp> ops;  // in call order (ties: history order)
  // For each interned value id: the history index of one write of it (kNone: no write).
  std::vector<std::uint32_t> writer_of;
  std::uint32_t num_values = 0;  // interned ids are 0 .. num_values - 1
  bool unique_ids = false;       // every id is written exactly once, "" never
  std::size_t considered = 0;    // ok ops and unknown writes, including dropped unknown writes
  std::string failure;           // non-empty: a pre-check failed
};

// Builds the checker's input for one key from the history indices of its operations.
void PrepareKey(const std::vector<HistoryOp>& history, const std::vector<std::uint32_t>& indices,
                PreparedKey& out) {
  out.ops.clear();
  out.writer_of.clear();
  out.considered = 0;
  out.failure.clear();

  struct ValueInfo {
    std::uint32_t writers = 0;
    std::int64_t min_call = kInfinity;
    bool read = false;
    std::int64_t min_read_ret = kInfinity;
    std::uint8_t min_read_phase = kPhaseInfinity;
  };
  std::unordered_map<std::string_view, std::uint32_t> ids;
  std::vector<ValueInfo> info;
  ids.emplace(std::string_view(), 0);
  info.emplace_back();
  out.writer_of.push_back(kNone);

  auto ret_of = [](const HistoryOp& op) { return std::max(op.return_ns, op.call_ns); };

  for (std::uint32_t i : indices) {
    const HistoryOp& op = history[i];
    if (op.outcome == HistoryOp::Outcome::kFailed) continue;
    if (op.kind == HistoryOp::Kind::kRead) {
      if (op.outcome == HistoryOp::Outcome::kOk) ++out.considered;
      continue;
    }
    ++out.considered;
    auto [it, inserted] = ids.emplace(op.value, static_cast<std::uint32_t>(info.size()));
    if (inserted) {
      info.emplace_back();
      out.writer_of.push_back(i);
    }
    ValueInfo& v = info[it->second];
    if (out.writer_of[it->second] == kNone) out.writer_of[it->second] = i;
    ++v.writers;
    v.min_call = std::min(v.min_call, op.call_ns);
  }

  for (std::uint32_t i : indices) {
    const HistoryOp& op = history[i];
    if (op.kind != HistoryOp::Kind::kRead || op.outcome != HistoryOp::Outcome::kOk) continue;
    auto it = ids.find(op.value);
    if (it == ids.end()) {
      out.failure = DescribeOp(op) + " returned an id that no write on this key wrote";
      for (std::uint32_t j : indices) {
        const HistoryOp& w = history[j];
        if (w.kind == HistoryOp::Kind::kWrite && w.value == op.value) {
          out.failure += " (the only writes of it failed, e.g. " + DescribeOp(w) + ")";
          break;
        }
      }
      return;
    }
    ValueInfo& v = info[it->second];
    const std::int64_t ret = ret_of(op);
    const std::uint8_t phase = ReturnPhase(op.call_ns, ret);
    if (it->second != 0 && Precedes(ret, phase, v.min_call)) {
      out.failure = DescribeOp(op) + " returned before any write of that id was called (" +
                    DescribeOp(history[out.writer_of[it->second]]) + ")";
      return;
    }
    if (!v.read || ret < v.min_read_ret || (ret == v.min_read_ret && phase < v.min_read_phase)) {
      v.min_read_ret = ret;
      v.min_read_phase = phase;
    }
    v.read = true;
  }

  for (std::uint32_t i : indices) {
    const HistoryOp& op = history[i];
    if (op.outcome == HistoryOp::Outcome::kFailed) continue;
    const bool is_write = op.kind == HistoryOp::Kind::kWrite;
    if (op.outcome == HistoryOp::Outcome::kUnknown && !is_write) continue;
    KeyOp k;
    k.index = i;
    k.is_write = is_write;
    k.value = ids.find(op.value)->second;
    k.read_by_someone = is_write && info[k.value].read;
    k.call = op.call_ns;
    if (op.outcome == HistoryOp::Outcome::kOk) {
      k.ret = ret_of(op);
      k.ret_phase = ReturnPhase(k.call, k.ret);
    } else {
      const ValueInfo& v = info[k.value];
      if (!v.read) continue;  // never observed: dropping it is always allowed
      if (v.writers == 1) {
        k.ret = v.min_read_ret;
        k.ret_phase = v.min_read_phase;
      } else {
        k.ret = kInfinity;
        k.ret_phase = kPhaseInfinity;
      }
    }
    out.ops.push_back(k);
  }
  out.num_values = static_cast<std::uint32_t>(info.size());
  // Counted over all non-failed writes: slightly conservative, as a duplicate among dropped
  // unknown writes also sends the key to the search.
  out.unique_ids = info[0].writers == 0;
  for (std::uint32_t v = 1; v < info.size() && out.unique_ids; ++v) {
    out.unique_ids = info[v].writers == 1;
  }

  // Number the ops in call order and place their events.
  std::stable_sort(out.ops.begin(), out.ops.end(),
                   [](const KeyOp& a, const KeyOp& b) { return a.call < b.call; });
  struct Event {
    std::int64_t time;
    std::uint8_t phase;
    bool is_call;
    std::uint32_t op;
  };
  std::vector<Event> events;
  events.reserve(2 * out.ops.size());
  for (std::uint32_t i = 0; i < out.ops.size(); ++i) {
    events.push_back(Event{out.ops[i].call, kPhaseCall, true, i});
    events.push_back(Event{out.ops[i].ret, out.ops[i].ret_phase, false, i});
  }
  std::sort(events.begin(), events.end(), [](const Event& a, const Event& b) {
    if (a.time != b.time) return a.time < b.time;
    if (a.phase != b.phase) return a.phase < b.phase;
    return a.op < b.op;
  });
  for (std::uint32_t pos = 1; pos <= events.size(); ++pos) {
    const Event& e = events[pos - 1];
    (e.is_call ? out.ops[e.op].call_pos : out.ops[e.op].ret_pos) = pos;
  }
}

std::string ListConcurrent(const std::vector<HistoryOp>& history, const std::vector<KeyOp>& ops,
                           const KeyOp& op) {
  std::vector<std::uint32_t> concurrent;
  for (const KeyOp& k : ops) {
    if (k.index == op.index || k.ret_pos < op.call_pos || op.ret_pos < k.call_pos) continue;
    concurrent.push_back(k.index);
  }
  if (concurrent.empty()) return "; no op is concurrent with it";
  constexpr std::size_t kMaxListed = 8;
  std::string out = "; concurrent with it: ";
  for (std::size_t i = 0; i < concurrent.size() && i < kMaxListed; ++i) {
    out += (i == 0 ? "" : ", ") + DescribeOp(history[concurrent[i]]);
  }
  if (concurrent.size() > kMaxListed) {
    out += " and " + std::to_string(concurrent.size() - kMaxListed) + " more";
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The zone test (keys whose ids are unique). Returns an explanation, or "" if linearizable.

std::string ZoneCheck(const std::vector<HistoryOp>& history, const PreparedKey& key) {
  const std::vector<KeyOp>& ops = key.ops;
  struct Cluster {
    std::uint32_t f = kNone;  // earliest return position; 0 = the virtual initial write
    std::uint32_t f_op = kNone;
    std::uint32_t s = 0;  // latest call position
    std::uint32_t s_op = kNone;
    std::uint32_t ops = 0;
  };
  std::vector<Cluster> clusters(key.num_values);
  for (std::uint32_t i = 0; i < ops.size(); ++i) {
    Cluster& c = clusters[ops[i].value];
    ++c.ops;
    if (c.f == kNone || ops[i].ret_pos < c.f) {
      c.f = ops[i].ret_pos;
      c.f_op = i;
    }
    if (c.s_op == kNone || ops[i].call_pos > c.s) {
      c.s = ops[i].call_pos;
      c.s_op = i;
    }
  }
  clusters[0].f = 0;  // the initial value is written before everything
  clusters[0].f_op = kNone;

  std::vector<std::uint32_t> forward;   // values with f < s, sorted by f
  std::vector<std::uint32_t> backward;  // the others, sorted by s
  for (std::uint32_t v = 0; v < clusters.size(); ++v) {
    if (clusters[v].ops == 0) continue;
    (clusters[v].f < clusters[v].s ? forward : backward).push_back(v);
  }
  std::sort(forward.begin(), forward.end(),
            [&](std::uint32_t a, std::uint32_t b) { return clusters[a].f < clusters[b].f; });
  std::sort(backward.begin(), backward.end(),
            [&](std::uint32_t a, std::uint32_t b) { return clusters[a].s < clusters[b].s; });

  auto value_name = [&](std::uint32_t v) {
    return v == 0 ? Quote("") : Quote(history[key.writer_of[v]].value);
  };
  // "from the return of X until the call of Y": where value v must be in the register.
  auto span = [&](std::uint32_t v) {
    const Cluster& c = clusters[v];
    return (c.f_op == kNone ? std::string("from the start")
                            : "from the return of " + DescribeOp(history[ops[c.f_op].index])) +
           " until the call of " + DescribeOp(history[ops[c.s_op].index]);
  };
  // The late read of a forward zone is the op reported as not linearizable.
  auto late_read = [&](std::uint32_t v) -> const KeyOp& { return ops[clusters[v].s_op]; };

  // No two forward zones may overlap.
  std::uint32_t widest = kNone;  // among the zones so far, the one reaching furthest
  for (std::uint32_t v : forward) {
    if (widest != kNone && clusters[v].f < clusters[widest].s) {
      const KeyOp& bad = late_read(widest);
      return DescribeOp(history[bad.index]) + " cannot be linearized: the register must hold " +
             value_name(widest) + " " + span(widest) + ", and " + value_name(v) + " " + span(v) +
             ", but these overlap" + ListConcurrent(history, ops, bad);
    }
    if (widest == kNone || clusters[v].s > clusters[widest].s) widest = v;
  }
  // No backward zone may lie inside a forward zone; the forward zones are disjoint now, so
  // the only candidate is the last one starting before it.
  for (std::uint32_t b : backward) {
    const Cluster& cb = clusters[b];
    auto it = std::partition_point(forward.begin(), forward.end(),
                                   [&](std::uint32_t a) { return clusters[a].f < cb.s; });
    if (it == forward.begin()) continue;
    const std::uint32_t a = *(it - 1);
    if (cb.f > clusters[a].s) continue;
    const KeyOp& bad = late_read(a);
    std::string text = DescribeOp(history[bad.index]) +
                       " cannot be linearized: the register must hold " + value_name(a) + " " +
                       span(a) + ", but ";
    if (cb.ops == 1) {
      text += DescribeOp(history[ops[cb.s_op].index]) + " lies entirely within that span";
    } else {
      text += "the " + std::to_string(cb.ops) + " ops of " + value_name(b) + " (its write " +
              DescribeOp(history[key.writer_of[b]]) +
              " and its reads) all overlap the span from the call of " +
              DescribeOp(history[ops[cb.s_op].index]) + " to the return of " +
              DescribeOp(history[ops[cb.f_op].index]) + ", which lies within it";
    }
    return text + ListConcurrent(history, ops, bad);
  }
  return "";
}

// ---------------------------------------------------------------------------------------------
// The search on one key. Reused across keys so that its buffers are allocated once.

class KeySearch {
 public:
  enum class Outcome { kLinearizable, kNotLinearizable, kGaveUp };

  Outcome Run(const PreparedKey& key, std::uint64_t max_states);

  std::uint64_t states() const { return states_; }
  // After kNotLinearizable, about the deepest state the search reached: how many ops were
  // linearized, whether `op` was one of them, the register value, and the pending op whose
  // return event came first (kNone if none).
  std::size_t best_depth() const { return best_depth_; }
  bool BestLinearized(std::uint32_t op) const;
  std::uint32_t best_value() const { return best_value_; }
  std::uint32_t best_blocker() const { return best_blocker_; }

 private:
  struct Frame {
    std::uint32_t op;
    std::uint32_t prev_value;
    bool forced;  // a dominating move: no alternative to it needs to be explored
  };
  struct Slot {
    std::uint64_t hash;
    std::uint64_t ref;  // arena offset + 1; 0 = empty
  };

  void Lift(std::uint32_t op) {
    for (std::int32_t e : {call_entry_[op], ret_entry_[op]}) {
      next_[prev_[e]] = next_[e];
      prev_[next_[e]] = prev_[e];
    }
  }
  void Unlift(std::uint32_t op) {
    for (std::int32_t e : {ret_entry_[op], call_entry_[op]}) {
      next_[prev_[e]] = e;
      prev_[next_[e]] = e;
    }
  }
  void SetBit(std::uint32_t i) {
    bits_[i >> 6] |= std::uint64_t{1} << (i & 63);
    set_hash_ ^= zobrist_[i];
    hi_ = std::max<std::size_t>(hi_, (i >> 6) + 1);
    while (lo_ < bits_.size() && bits_[lo_] == ~std::uint64_t{0}) ++lo_;
  }
  void ClearBit(std::uint32_t i) {
    bits_[i >> 6] &= ~(std::uint64_t{1} << (i & 63));
    set_hash_ ^= zobrist_[i];
    lo_ = std::min<std::size_t>(lo_, i >> 6);
    while (hi_ > 0 && bits_[hi_ - 1] == 0) --hi_;
  }
  std::uint64_t StateHash(std::uint32_t value) const {
    return set_hash_ ^ SplitMix64(0x5bd1e995ULL + value);
  }
  // Adds the current (bitset, value) state to the cache; false if it was already there.
  bool InsertState(std::uint32_t value);
  void GrowTable();
  // Linearizes `op` next if the resulting state is new (pushing a frame); false otherwise.
  bool TryLinearize(std::uint32_t op, std::uint32_t& value, bool forced);
  void Undo(const Frame& f, std::uint32_t& value);
  // The order in which alternative writes are tried.
  bool TriedBefore(std::uint32_t a, std::uint32_t b) const {
    return priority_[a] != priority_[b] ? priority_[a] < priority_[b] : a < b;
  }
  void FlipPriority(std::uint32_t op) {
    const std::uint32_t p = priority_[op];
    pending_write_priorities_[p >> 6] ^= std::uint64_t{1} << (p & 63);
    priorities_hint_ = std::min<std::size_t>(priorities_hint_, p >> 6);
  }
  // The earliest deadline among the writes not yet linearized (kNone if there are none).
  std::uint32_t EarliestPendingWriteDeadline() {
    const std::size_t words = pending_write_priorities_.size();
    while (priorities_hint_ < words && pending_write_priorities_[priorities_hint_] == 0) {
      ++priorities_hint_;
    }
    if (priorities_hint_ == words) return kNone;
    return static_cast<std::uint32_t>(
        priorities_hint_ * 64 + std::countr_zero(pending_write_priorities_[priorities_hint_]));
  }

  const std::vector<KeyOp>* ops_ = nullptr;
  std::vector<std::int32_t> next_, prev_;
  std::vector<std::uint32_t> entry_op_;
  std::vector<std::uint8_t> entry_is_call_;
  std::vector<std::int32_t> call_entry_, ret_entry_;
  // Per op, its deadline: the position of the earliest return event it must be linearized
  // before (its own; for a write, also those of the reads of its id, which need it first).
  std::vector<std::uint32_t> priority_;
  std::vector<std::uint32_t> readers_left_, writers_left_;  // per value, not yet linearized
  // Only when every id on the key is written once (and "" never): per value, the latest call
  // position of its reads; and a bitset over positions holding the priorities of the writes
  // not yet linearized (distinct then), with a hint to its first non-zero word.
  bool unique_ids_ = false;
  std::vector<std::uint32_t> last_read_call_;
  std::vector<std::uint64_t> pending_write_priorities_;
  std::size_t priorities_hint_ = 0;
  std::vector<std::uint64_t> bits_;
  std::vector<std::uint64_t> zobrist_;
  std::size_t lo_ = 0;
  std::size_t hi_ = 0;
  std::uint64_t set_hash_ = 0;
  std::vector<std::uint64_t> arena_;
  std::uint64_t last_inserted_ = 0;  // arena offset of the newest state
  std::vector<Slot> table_;
  std::size_t table_used_ = 0;
  std::vector<Frame> stack_;
  std::uint64_t states_ = 0;
  std::size_t best_depth_ = 0;
  std::uint64_t best_state_ = 0;  // arena offset
  std::uint32_t best_value_ = 0;
  std::uint32_t best_blocker_ = kNone;
};

bool KeySearch::InsertState(std::uint32_t value) {
  const std::uint64_t hash = StateHash(value);
  const std::size_t nw = hi_ > lo_ ? hi_ - lo_ : 0;
  const std::uint64_t header = (std::uint64_t{value} << 32) | nw;
  const std::size_t mask = table_.size() - 1;
  std::size_t slot = hash & mask;
  for (;; slot = (slot + 1) & mask) {
    const Slot& s = table_[slot];
    if (s.ref == 0) break;
    if (s.hash != hash) continue;
    const std::uint64_t* stored = arena_.data() + (s.ref - 1);
    if (stored[0] == header && stored[1] == lo_ &&
        (nw == 0 || std::memcmp(stored + 2, bits_.data() + lo_, nw * 8) == 0)) {
      return false;
    }
  }
  const std::uint64_t offset = arena_.size();
  arena_.push_back(header);
  arena_.push_back(lo_);
  arena_.insert(arena_.end(), bits_.begin() + static_cast<std::ptrdiff_t>(lo_),
                bits_.begin() + static_cast<std::ptrdiff_t>(lo_ + nw));
  table_[slot] = Slot{hash, offset + 1};
  last_inserted_ = offset;
  ++states_;
  if (++table_used_ * 2 > table_.size()) GrowTable();
  return true;
}

void KeySearch::GrowTable() {
  std::vector<Slot> old = std::move(table_);
  table_.assign(old.size() * 2, Slot{0, 0});
  const std::size_t mask = table_.size() - 1;
  for (const Slot& s : old) {
    if (s.ref == 0) continue;
    std::size_t slot = s.hash & mask;
    while (table_[slot].ref != 0) slot = (slot + 1) & mask;
    table_[slot] = s;
  }
}

bool KeySearch::TryLinearize(std::uint32_t op, std::uint32_t& value, bool forced) {
  const KeyOp& k = (*ops_)[op];
  SetBit(op);
  const std::uint32_t new_value = k.is_write ? k.value : value;
  if (!InsertState(new_value)) {
    ClearBit(op);
    return false;
  }
  stack_.push_back(Frame{op, value, forced});
  --(k.is_write ? writers_left_ : readers_left_)[k.value];
  if (unique_ids_ && k.is_write) FlipPriority(op);
  value = new_value;
  Lift(op);
  return true;
}

void KeySearch::Undo(const Frame& f, std::uint32_t& value) {
  const KeyOp& k = (*ops_)[f.op];
  Unlift(f.op);
  ClearBit(f.op);
  ++(k.is_write ? writers_left_ : readers_left_)[k.value];
  if (unique_ids_ && k.is_write) FlipPriority(f.op);
  value = f.prev_value;
}

bool KeySearch::BestLinearized(std::uint32_t op) const {
  const std::uint64_t* state = arena_.data() + best_state_;
  const std::uint64_t lo = state[1];
  const std::uint64_t nw = state[0] & 0xffffffffULL;
  const std::uint64_t word = op >> 6;
  if (word < lo) return true;
  if (word >= lo + nw) return false;
  return (state[2 + word - lo] >> (op & 63)) & 1;
}

KeySearch::Outcome KeySearch::Run(const PreparedKey& key, std::uint64_t max_states) {
  const std::vector<KeyOp>& ops = key.ops;
  const std::uint32_t num_values = key.num_values;
  ops_ = &ops;
  const std::uint32_t n = static_cast<std::uint32_t>(ops.size());

  // Entries 1..2n are the events at their positions; 0 is the head, 2n+1 the tail sentinel.
  const std::int32_t head = 0;
  const std::int32_t tail = static_cast<std::int32_t>(2 * n + 1);
  next_.assign(2 * n + 2, 0);
  prev_.assign(2 * n + 2, 0);
  entry_op_.assign(2 * n + 2, kNone);
  entry_is_call_.assign(2 * n + 2, 0);
  call_entry_.assign(n, 0);
  ret_entry_.assign(n, 0);
  for (std::int32_t e = 0; e <= tail; ++e) {
    next_[e] = e + 1;
    prev_[e] = e - 1;
  }
  for (std::uint32_t i = 0; i < n; ++i) {
    call_entry_[i] = static_cast<std::int32_t>(ops[i].call_pos);
    ret_entry_[i] = static_cast<std::int32_t>(ops[i].ret_pos);
    entry_op_[ops[i].call_pos] = i;
    entry_op_[ops[i].ret_pos] = i;
    entry_is_call_[ops[i].call_pos] = 1;
  }

  // Alternative writes are tried earliest deadline first: a write, its readers and its
  // return all have to be linearized by the earliest of their returns.
  readers_left_.assign(num_values, 0);
  writers_left_.assign(num_values, 0);
  priority_.assign(n, 0);
  std::vector<std::uint32_t>& earliest_read = readers_left_;  // borrowed, reset below
  std::fill(earliest_read.begin(), earliest_read.end(), kNone);
  for (std::uint32_t i = 0; i < n; ++i) {
    const auto pos = static_cast<std::uint32_t>(ret_entry_[i]);
    priority_[i] = pos;
    if (!ops[i].is_write) earliest_read[ops[i].value] = std::min(earliest_read[ops[i].value], pos);
  }
  for (std::uint32_t i = 0; i < n; ++i) {
    if (ops[i].is_write) priority_[i] = std::min(priority_[i], earliest_read[ops[i].value]);
  }
  std::fill(readers_left_.begin(), readers_left_.end(), 0);
  for (const KeyOp& k : ops) ++(k.is_write ? writers_left_ : readers_left_)[k.value];
  unique_ids_ = key.unique_ids;
  if (unique_ids_) {
    last_read_call_.assign(num_values, 0);
    pending_write_priorities_.assign((2 * n + 2 + 63) / 64, 0);
    priorities_hint_ = 0;
    for (std::uint32_t i = 0; i < n; ++i) {
      if (ops[i].is_write) {
        FlipPriority(i);
      } else {
        last_read_call_[ops[i].value] = std::max<std::uint32_t>(
            last_read_call_[ops[i].value], static_cast<std::uint32_t>(call_entry_[i]));
      }
    }
  }

  bits_.assign((n + 63) / 64, 0);
  zobrist_.resize(std::max<std::size_t>(zobrist_.size(), n));
  for (std::uint32_t i = 0; i < n; ++i) zobrist_[i] = SplitMix64(i);
  lo_ = 0;
  hi_ = 0;
  set_hash_ = 0;
  if (arena_.capacity() > (std::size_t{1} << 24)) arena_ = {};  // don't hoard a hot key's memory
  arena_.clear();
  std::size_t table_size = 64;
  while (table_size < 4 * static_cast<std::size_t>(n)) table_size *= 2;
  if (table_.capacity() > (std::size_t{1} << 22) && table_size < table_.capacity() / 4) {
    table_ = {};
  }
  table_.assign(table_size, Slot{0, 0});
  table_used_ = 0;
  stack_.clear();
  states_ = 0;
  best_depth_ = 0;
  best_state_ = 0;
  best_value_ = 0;
  best_blocker_ = kNone;
  bool have_best = false;

  std::uint32_t value = 0;
  (void)InsertState(value);
  bool fresh = true;            // just entered a new state
  std::uint32_t tried = kNone;  // in a state being explored: the last alternative tried

  for (;;) {
    if (next_[head] == tail) return Outcome::kLinearizable;
    if (states_ > max_states) return Outcome::kGaveUp;
    bool descended = false;
    bool state_failed = false;
    if (fresh) {
      fresh = false;
      tried = kNone;
      // The ops that may be linearized next are the calls before the first return.
      std::int32_t e = next_[head];
      std::uint32_t matching_read = kNone;
      std::uint32_t unread_write = kNone;
      for (; e != tail && entry_is_call_[e]; e = next_[e]) {
        const std::uint32_t op = entry_op_[e];
        const KeyOp& k = ops[op];
        if (k.is_write) {
          if (!k.read_by_someone && unread_write == kNone) unread_write = op;
        } else if (k.value == value && matching_read == kNone) {
          matching_read = op;
        }
      }
      if (!have_best || stack_.size() > best_depth_) {
        have_best = true;
        best_depth_ = stack_.size();
        best_state_ = last_inserted_;
        best_value_ = value;
        best_blocker_ = e != tail ? entry_op_[e] : kNone;
      }
      if (unique_ids_ && readers_left_[value] > 0 &&
          last_read_call_[value] > EarliestPendingWriteDeadline()) {
        // Some write must be linearized before the return at that deadline, which comes
        // before the call of a read of the current value: that read could never see it.
        state_failed = true;
      } else if (matching_read != kNone) {
        // A read of the current value: linearizing it now is never worse than later (see the
        // top of this file), so it is the only move tried.
        descended = TryLinearize(matching_read, value, /*forced=*/true);
        state_failed = !descended;
      } else if (readers_left_[value] > 0 && writers_left_[value] == 0) {
        // Only writes can come next, and after any of them the pending reads of the current
        // value could never be linearized: nothing writes that value again.
        state_failed = true;
      } else if (unread_write != kNone) {
        // A write whose id nobody read: every continuation starts with a write (no read can
        // go next) and has this one followed by a write or by nothing; moving it first keeps
        // the continuation valid, so it is the only move tried.
        descended = TryLinearize(unread_write, value, /*forced=*/true);
        state_failed = !descended;
      }
    }
    if (!descended && !state_failed) {
      // Branch over the pending writes, earliest deadline first, skipping those tried.
      for (;;) {
        std::uint32_t pick = kNone;
        for (std::int32_t e = next_[head]; e != tail && entry_is_call_[e]; e = next_[e]) {
          const std::uint32_t op = entry_op_[e];
          if (!ops[op].is_write || (tried != kNone && !TriedBefore(tried, op))) continue;
          if (pick == kNone || TriedBefore(op, pick)) pick = op;
        }
        if (pick == kNone) break;
        tried = pick;
        if (TryLinearize(pick, value, /*forced=*/false)) {
          descended = true;
          break;
        }
      }
    }
    if (descended) {
      fresh = true;
      continue;
    }
    // Dead end: backtrack past forced moves to the last real choice.
    for (;;) {
      if (stack_.empty()) return Outcome::kNotLinearizable;
      const Frame f = stack_.back();
      stack_.pop_back();
      Undo(f, value);
      if (!f.forced) {
        tried = f.op;
        break;
      }
    }
  }
}

std::string ExplainFailure(const std::vector<HistoryOp>& history, const PreparedKey& key,
                           const KeySearch& search) {
  const std::vector<KeyOp>& ops = key.ops;
  std::ostringstream out;
  const std::uint32_t value = search.best_value();
  const std::string value_text = key.writer_of[value] == kNone
                                     ? std::string("the initial value \"\"")
                                     : Quote(history[key.writer_of[value]].value) + " (" +
                                           DescribeOp(history[key.writer_of[value]]) + ")";
  out << "at most " << search.best_depth() << " of " << ops.size()
      << " ops can be linearized, leaving the register at " << value_text;
  if (search.best_blocker() == kNone) return out.str();

  const KeyOp& b = ops[search.best_blocker()];
  out << "; then " << DescribeOp(history[b.index])
      << " must take effect next (its return is the earliest pending one)";
  // Why it cannot: a read of another value, and/or a later read that still needs this one.
  // (A read of a value that can never come back is not reached: the search stops before.)
  std::uint32_t pending_reader = kNone;  // the latest-called one
  bool value_rewritten = false;
  for (std::uint32_t i = 0; i < ops.size(); ++i) {
    if (search.BestLinearized(i) || i == search.best_blocker() || ops[i].value != value) continue;
    if (ops[i].is_write) value_rewritten = true;
    if (!ops[i].is_write &&
        (pending_reader == kNone || ops[i].call_pos > ops[pending_reader].call_pos)) {
      pending_reader = i;
    }
  }
  const bool wrong_value = !b.is_write && b.value != value;
  if (wrong_value) out << " but it returned " << Quote(history[b.index].value);
  if (pending_reader != kNone && !value_rewritten) {
    out << (wrong_value ? ", and no write may take effect before "
                        : " but no write may take "
                          "effect before ")
        << DescribeOp(history[ops[pending_reader].index]) << " reads "
        << Quote(history[ops[pending_reader].index].value);
  }
  out << ListConcurrent(history, ops, b);
  return out.str();
}

// ---------------------------------------------------------------------------------------------
// JSON helpers.

std::optional<std::int64_t> GetInt64(const Json& j) {
  if (j.is_number_unsigned()) {
    const auto u = j.get<std::uint64_t>();
    if (u > static_cast<std::uint64_t>(kInfinity)) return std::nullopt;
    return static_cast<std::int64_t>(u);
  }
  if (j.is_number_integer()) return j.get<std::int64_t>();
  return std::nullopt;
}

std::optional<std::uint64_t> GetUint64(const Json& j) {
  if (j.is_number_unsigned()) return j.get<std::uint64_t>();
  return std::nullopt;
}

Status LineError(std::size_t line, const std::string& what) {
  return Status::InvalidArgument("line " + std::to_string(line) + ": " + what);
}

Result<HistoryOp> ParseLine(std::string_view text, std::size_t line) {
  const Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return LineError(line, "malformed JSON");
  if (!j.is_object()) return LineError(line, "expected a JSON object");
  HistoryOp op;

  auto field = [&](const char* name) -> const Json* {
    auto it = j.find(name);
    return it == j.end() ? nullptr : &*it;
  };

  const Json* client = field("client");
  if (client == nullptr) return LineError(line, "missing \"client\"");
  auto client_value = GetUint64(*client);
  if (!client_value) return LineError(line, "\"client\" must be a non-negative integer");
  op.client = *client_value;

  const Json* kind = field("op");
  if (kind == nullptr) return LineError(line, "missing \"op\"");
  if (*kind == "read") {
    op.kind = HistoryOp::Kind::kRead;
  } else if (*kind == "write") {
    op.kind = HistoryOp::Kind::kWrite;
  } else {
    return LineError(line, "\"op\" must be \"read\" or \"write\"");
  }

  const Json* key = field("key");
  if (key == nullptr) return LineError(line, "missing \"key\"");
  auto key_value = GetUint64(*key);
  if (!key_value) return LineError(line, "\"key\" must be a non-negative integer");
  op.key = *key_value;

  const Json* ok = field("ok");
  if (ok == nullptr) return LineError(line, "missing \"ok\"");
  if (ok->is_boolean()) {
    op.outcome = ok->get<bool>() ? HistoryOp::Outcome::kOk : HistoryOp::Outcome::kFailed;
  } else if (*ok == "unknown") {
    op.outcome = HistoryOp::Outcome::kUnknown;
  } else {
    return LineError(line, "\"ok\" must be true, false or \"unknown\"");
  }

  const Json* value = field("value");
  if (value != nullptr) {
    if (!value->is_string()) return LineError(line, "\"value\" must be a string");
    op.value = value->get<std::string>();
  } else if (op.kind == HistoryOp::Kind::kWrite || op.outcome == HistoryOp::Outcome::kOk) {
    // Only a read without a result (failed or unknown) may omit its value.
    return LineError(line, "missing \"value\"");
  }

  const Json* call = field("call");
  if (call == nullptr) return LineError(line, "missing \"call\"");
  auto call_value = GetInt64(*call);
  if (!call_value) return LineError(line, "\"call\" must be a 64-bit integer");
  op.call_ns = *call_value;

  const Json* ret = field("return");
  if (ret != nullptr) {
    auto ret_value = GetInt64(*ret);
    if (!ret_value) return LineError(line, "\"return\" must be a 64-bit integer");
    op.return_ns = *ret_value;
  } else if (op.outcome != HistoryOp::Outcome::kUnknown) {
    return LineError(line, "missing \"return\"");
  } else {
    op.return_ns = op.call_ns;
  }
  if (op.outcome != HistoryOp::Outcome::kUnknown && op.return_ns < op.call_ns) {
    return LineError(line, "\"return\" is before \"call\"");
  }
  return op;
}

}  // namespace

std::string HistoryOpToJson(const HistoryOp& op) {
  OrderedJson j;
  j["client"] = op.client;
  j["op"] = op.kind == HistoryOp::Kind::kWrite ? "write" : "read";
  j["key"] = op.key;
  j["value"] = op.value;
  j["call"] = op.call_ns;
  j["return"] = op.return_ns;
  switch (op.outcome) {
    case HistoryOp::Outcome::kOk:
      j["ok"] = true;
      break;
    case HistoryOp::Outcome::kFailed:
      j["ok"] = false;
      break;
    case HistoryOp::Outcome::kUnknown:
      j["ok"] = "unknown";
      break;
  }
  // Replace invalid UTF-8 instead of throwing; value ids are expected to be ASCII.
  return j.dump(-1, ' ', false, OrderedJson::error_handler_t::replace);
}

Result<std::vector<HistoryOp>> ParseHistory(std::istream& in) {
  std::vector<HistoryOp> history;
  std::string line;
  std::size_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    std::string_view text(line);
    while (!text.empty() && (text.back() == '\r' || text.back() == ' ' || text.back() == '\t')) {
      text.remove_suffix(1);
    }
    while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
    if (text.empty()) continue;
    Result<HistoryOp> op = ParseLine(text, line_no);
    if (!op.ok()) return op.status();
    history.push_back(std::move(op).value());
  }
  if (in.bad())
    return Status::IOError("reading history: stream error after line " + std::to_string(line_no));
  return history;
}

namespace internal {

// CheckLinearizable with the zone test optionally disabled, so that tests can compare it
// with the search. Not part of the contract; declared by the tests that use it.
LinCheckResult CheckLinearizableForTesting(const std::vector<HistoryOp>& history,
                                           const LinCheckOptions& options, bool use_zones) {
  LinCheckResult result;
  ATOMDISK_CHECK(history.size() < kNone);

  // Partition by key, keys in ascending order so that "the first key that fails" is stable.
  std::unordered_map<std::uint64_t, std::vector<std::uint32_t>> by_key;
  for (std::uint32_t i = 0; i < history.size(); ++i) by_key[history[i].key].push_back(i);
  std::vector<std::uint64_t> keys;
  keys.reserve(by_key.size());
  for (const auto& [key, indices] : by_key) keys.push_back(key);
  std::sort(keys.begin(), keys.end());

  auto fail = [&result](std::uint64_t key, std::string explanation) {
    result.verdict = LinCheckResult::Verdict::kNotLinearizable;
    result.bad_key = key;
    result.explanation = std::move(explanation);
    return result;
  };
  PreparedKey prepared;
  KeySearch search;
  bool gave_up = false;
  for (std::uint64_t key : keys) {
    PrepareKey(history, by_key[key], prepared);
    if (prepared.considered == 0 && prepared.failure.empty()) continue;
    result.ops_checked += prepared.considered;
    ++result.keys_checked;
    if (!prepared.failure.empty()) return fail(key, prepared.failure);
    if (use_zones && prepared.unique_ids) {
      std::string failure = ZoneCheck(history, prepared);
      if (!failure.empty()) return fail(key, std::move(failure));
      continue;
    }
    switch (search.Run(prepared, options.max_states_per_key)) {
      case KeySearch::Outcome::kLinearizable:
        break;
      case KeySearch::Outcome::kNotLinearizable:
        return fail(key, ExplainFailure(history, prepared, search));
      case KeySearch::Outcome::kGaveUp:
        if (!gave_up) {
          gave_up = true;
          result.bad_key = key;
          result.explanation =
              "gave up after " + std::to_string(search.states()) +
              " search states (max_states_per_key = " + std::to_string(options.max_states_per_key) +
              ") on " + std::to_string(prepared.ops.size()) + " ops";
        }
        break;
    }
  }
  if (gave_up) result.verdict = LinCheckResult::Verdict::kGaveUp;
  return result;
}

}  // namespace internal

LinCheckResult CheckLinearizable(const std::vector<HistoryOp>& history,
                                 const LinCheckOptions& options) {
  return internal::CheckLinearizableForTesting(history, options, /*use_zones=*/true);
}

}  // namespace atomdisk
