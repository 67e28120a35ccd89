// Linearizability checking of read/write register histories.
//
// A history is a list of completed, failed or uncertain operations on keys (sectors). Every
// write carries a unique value id; a read reports the id it found ("" = the initial,
// never-written value). The checker partitions by key (a history is linearizable iff each
// key's sub-history is) and runs a Wing-Gong/Lowe search with memoisation of visited
// (linearized-set, register-value) states on each key.
//
// Operations whose outcome is unknown (ok = unknown: a timeout, a crash) are handled as the
// theory says: an unknown write may take effect at any point after its call or never (its
// return is treated as +infinity); an unknown read constrains nothing and is dropped. Failed
// operations (ok = false: definitely not executed) are dropped.
//
// JSON-lines format, one object per line (the format integration tests and `atomdisk bench
// --history` write):
//   {"client":C,"op":"read"|"write","key":SECTOR,"value":"ID","call":NS,"return":NS,
//    "ok":true|false|"unknown"}
// call/return are CLOCK_MONOTONIC nanoseconds. Thread-compatible: no shared state.
#pragma once

#include <cstdint>
#include <istream>
#include <string>
#include <vector>

#include "common/status.h"

namespace atomdisk {

struct HistoryOp {
  enum class Kind { kRead, kWrite };
  enum class Outcome { kOk, kFailed, kUnknown };
  std::uint64_t client = 0;
  Kind kind = Kind::kRead;
  std::uint64_t key = 0;
  std::string value;  // write: the value id written; read: the id read ("" = initial value)
  std::int64_t call_ns = 0;
  std::int64_t return_ns = 0;  // ignored for kUnknown
  Outcome outcome = Outcome::kOk;
};

// One JSON line for `op` (no trailing newline).
std::string HistoryOpToJson(const HistoryOp& op);
// Parses JSON lines (blank lines skipped). InvalidArgument names the line number on error.
Result<std::vector<HistoryOp>> ParseHistory(std::istream& in);

struct LinCheckResult {
  enum class Verdict { kLinearizable, kNotLinearizable, kGaveUp };
  Verdict verdict = Verdict::kLinearizable;
  // For kNotLinearizable: the first key that fails and a short human explanation
  // (the operations around the point where no linearization exists).
  std::uint64_t bad_key = 0;
  std::string explanation;
  std::size_t ops_checked = 0;
  std::size_t keys_checked = 0;
};

struct LinCheckOptions {
  // Upper bound on search states per key before the checker gives up (kGaveUp).
  std::uint64_t max_states_per_key = 50'000'000;
};

LinCheckResult CheckLinearizable(const std::vector<HistoryOp>& history,
                                 const LinCheckOptions& options = {});

}  // namespace atomdisk
