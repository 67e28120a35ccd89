#include "common/lincheck.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace atomdisk {
namespace internal {
// lincheck.cc: CheckLinearizable, optionally without the zone test (search only).
LinCheckResult CheckLinearizableForTesting(const std::vector<HistoryOp>& history,
                                           const LinCheckOptions& options, bool use_zones);
}  // namespace internal

namespace {

using Kind = HistoryOp::Kind;
using Outcome = HistoryOp::Outcome;
using Verdict = LinCheckResult::Verdict;

HistoryOp Op(Kind kind, std::uint64_t client, std::uint64_t key, std::string value,
             std::int64_t call, std::int64_t ret, Outcome outcome = Outcome::kOk) {
  HistoryOp op;
  op.client = client;
  op.kind = kind;
  op.key = key;
  op.value = std::move(value);
  op.call_ns = call;
  op.return_ns = ret;
  op.outcome = outcome;
  return op;
}
HistoryOp W(std::uint64_t client, std::string value, std::int64_t call, std::int64_t ret,
            Outcome outcome = Outcome::kOk, std::uint64_t key = 1) {
  return Op(Kind::kWrite, client, key, std::move(value), call, ret, outcome);
}
HistoryOp R(std::uint64_t client, std::string value, std::int64_t call, std::int64_t ret,
            Outcome outcome = Outcome::kOk, std::uint64_t key = 1) {
  return Op(Kind::kRead, client, key, std::move(value), call, ret, outcome);
}
HistoryOp UnknownW(std::uint64_t client, std::string value, std::int64_t call) {
  return W(client, std::move(value), call, call, Outcome::kUnknown);
}

LinCheckResult SearchOnly(const std::vector<HistoryOp>& h, LinCheckOptions options = {}) {
  return internal::CheckLinearizableForTesting(h, options, /*use_zones=*/false);
}

// The verdict of CheckLinearizable, after checking that the search alone agrees with it.
Verdict Check(const std::vector<HistoryOp>& h, LinCheckOptions options = {}) {
  const LinCheckResult r = CheckLinearizable(h, options);
  const LinCheckResult search = SearchOnly(h, options);
  if (search.verdict != Verdict::kGaveUp) {
    EXPECT_EQ(search.verdict, r.verdict)
        << "search: " << search.explanation << "\nzones: " << r.explanation;
  }
  return r.verdict;
}

// ----------------------------------------------------------------------------------------
// Hand-written histories.

TEST(LinCheckTest, EmptyHistoryIsLinearizable) {
  const LinCheckResult r = CheckLinearizable({});
  EXPECT_EQ(r.verdict, Verdict::kLinearizable);
  EXPECT_EQ(r.ops_checked, 0u);
  EXPECT_EQ(r.keys_checked, 0u);
}

TEST(LinCheckTest, SequentialHistoryIsLinearizable) {
  const std::vector<HistoryOp> h = {
      R(1, "", 0, 5),    W(1, "a", 10, 20), R(2, "a", 30, 40),
      W(2, "b", 50, 60), R(1, "b", 70, 80), R(3, "b", 90, 95),
  };
  const LinCheckResult r = CheckLinearizable(h);
  EXPECT_EQ(r.verdict, Verdict::kLinearizable) << r.explanation;
  EXPECT_EQ(r.ops_checked, 6u);
  EXPECT_EQ(r.keys_checked, 1u);
}

TEST(LinCheckTest, InputOrderDoesNotMatter) {
  std::vector<HistoryOp> h = {R(2, "b", 70, 80), W(2, "b", 50, 60), W(1, "a", 10, 20),
                              R(1, "a", 30, 40)};
  EXPECT_EQ(Check(h), Verdict::kLinearizable);
  h.push_back(R(3, "a", 90, 100));  // stale
  EXPECT_EQ(Check(h), Verdict::kNotLinearizable);
}

TEST(LinCheckTest, ReadConcurrentWithWriteMaySeeEitherValue) {
  EXPECT_EQ(Check({W(1, "a", 0, 100), R(2, "", 10, 20)}), Verdict::kLinearizable);
  EXPECT_EQ(Check({W(1, "a", 0, 100), R(2, "a", 10, 20)}), Verdict::kLinearizable);
  // Read started first, write finished inside it.
  EXPECT_EQ(Check({R(2, "a", 0, 100), W(1, "a", 10, 20)}), Verdict::kLinearizable);
  EXPECT_EQ(Check({R(2, "", 0, 100), W(1, "a", 10, 20)}), Verdict::kLinearizable);
  // Two concurrent writes, later reads agree on either winner.
  EXPECT_EQ(Check({W(1, "a", 0, 50), W(2, "b", 10, 60), R(3, "a", 70, 80), R(1, "a", 90, 95)}),
            Verdict::kLinearizable);
  EXPECT_EQ(Check({W(1, "a", 0, 50), W(2, "b", 10, 60), R(3, "b", 70, 80), R(1, "b", 90, 95)}),
            Verdict::kLinearizable);
  // ... but not on both.
  EXPECT_EQ(Check({W(1, "a", 0, 50), W(2, "b", 10, 60), R(3, "b", 70, 80), R(1, "a", 90, 95)}),
            Verdict::kNotLinearizable);
}

TEST(LinCheckTest, StaleReadAfterCompletedWriteIsNotLinearizable) {
  const std::vector<HistoryOp> h = {W(1, "a", 0, 10), W(1, "b", 20, 30), R(3, "a", 40, 50)};
  const LinCheckResult r = CheckLinearizable(h);
  ASSERT_EQ(r.verdict, Verdict::kNotLinearizable);
  EXPECT_EQ(r.bad_key, 1u);
  // The explanation names the read that cannot be linearized and the register's value.
  EXPECT_NE(r.explanation.find("read of \"a\" by client 3 [call 40, return 50]"), std::string::npos)
      << r.explanation;
  EXPECT_NE(r.explanation.find("\"b\""), std::string::npos) << r.explanation;

  // The initial value, read after a completed write.
  EXPECT_EQ(Check({W(1, "a", 0, 10), R(2, "", 20, 30)}), Verdict::kNotLinearizable);
}

TEST(LinCheckTest, SearchExplanationNamesTheBlockedOp) {
  // The search explains where it got stuck: the op that must take effect next and why it
  // cannot.
  LinCheckResult r =
      SearchOnly({W(1, "a", 0, 10), W(1, "b", 20, 30), R(3, "a", 40, 50), W(4, "c", 45, 60)});
  ASSERT_EQ(r.verdict, Verdict::kNotLinearizable);
  EXPECT_EQ(r.explanation,
            "at most 1 of 4 ops can be linearized, leaving the register at \"a\" (write of \"a\" "
            "by client 1 [call 0, return 10]); then write of \"b\" by client 1 [call 20, return "
            "30] must take effect next (its return is the earliest pending one) but no write may "
            "take effect before read of \"a\" by client 3 [call 40, return 50] reads \"a\"; no "
            "op is concurrent with it");

  r = SearchOnly({W(1, "a", 0, 10), W(2, "b", 20, 100), R(3, "b", 30, 40), R(3, "a", 50, 60)});
  ASSERT_EQ(r.verdict, Verdict::kNotLinearizable);
  EXPECT_EQ(r.explanation,
            "at most 1 of 4 ops can be linearized, leaving the register at \"a\" (write of \"a\" "
            "by client 1 [call 0, return 10]); then read of \"b\" by client 3 [call 30, return 40] "
            "must take effect next (its return is the earliest pending one) but it returned "
            "\"b\", and no write may take effect before read of \"a\" by client 3 [call 50, "
            "return 60] reads \"a\"; concurrent with it: write of \"b\" by client 2 [call 20, "
            "return 100]");

  // With a duplicate id (so no zone test): a read of "a" while the register holds "b".
  r = CheckLinearizable(
      {W(1, "a", 0, 10), W(1, "b", 20, 30), R(3, "a", 40, 50), W(1, "a", 60, 70)});
  ASSERT_EQ(r.verdict, Verdict::kNotLinearizable);
  EXPECT_EQ(r.explanation,
            "at most 2 of 4 ops can be linearized, leaving the register at \"b\" (write of \"b\" "
            "by client 1 [call 20, return 30]); then read of \"a\" by client 3 [call 40, return "
            "50] must take effect next (its return is the earliest pending one) but it returned "
            "\"a\"; no op is concurrent with it");
}

TEST(LinCheckTest, ExplanationListsConcurrentOps) {
  const std::vector<HistoryOp> h = {W(1, "a", 0, 10), W(2, "b", 20, 30), R(3, "a", 40, 100),
                                    W(4, "c", 50, 60)};
  const LinCheckResult r = CheckLinearizable(h);
  ASSERT_EQ(r.verdict, Verdict::kNotLinearizable);
  EXPECT_NE(r.explanation.find("concurrent with it: write of \"c\" by client 4"), std::string::npos)
      << r.explanation;
}

TEST(LinCheckTest, ReadOfNeverWrittenIdIsNotLinearizable) {
  const LinCheckResult r = CheckLinearizable({W(1, "a", 0, 10), R(2, "zz", 0, 50)});
  ASSERT_EQ(r.verdict, Verdict::kNotLinearizable);
  EXPECT_NE(r.explanation.find("no write on this key wrote"), std::string::npos) << r.explanation;
  // Only "" is the initial value: "0" is an id like any other.
  EXPECT_EQ(Check({R(2, "0", 0, 50)}), Verdict::kNotLinearizable);
  EXPECT_EQ(Check({W(1, "0", 0, 10), R(2, "0", 20, 50)}), Verdict::kLinearizable);
}

TEST(LinCheckTest, NewOldInversionIsNotLinearizable) {
  // A write concurrent with two sequential reads: the first sees the new value, the second
  // the old one.
  EXPECT_EQ(Check({W(1, "a", 0, 10), W(2, "b", 20, 100), R(3, "b", 30, 40), R(3, "a", 50, 60)}),
            Verdict::kNotLinearizable);
  // Same with the initial value as the old one, and with the reads on different clients.
  EXPECT_EQ(Check({W(2, "b", 20, 100), R(3, "b", 30, 40), R(4, "", 50, 60)}),
            Verdict::kNotLinearizable);
  // Old then new is fine.
  EXPECT_EQ(Check({W(1, "a", 0, 10), W(2, "b", 20, 100), R(3, "a", 30, 40), R(3, "b", 50, 60)}),
            Verdict::kLinearizable);
}

TEST(LinCheckTest, UnknownWriteMayOrMayNotHaveHappened) {
  EXPECT_EQ(Check({W(1, "a", 0, 10), UnknownW(2, "b", 20), R(3, "a", 30, 40)}),
            Verdict::kLinearizable);
  EXPECT_EQ(Check({W(1, "a", 0, 10), UnknownW(2, "b", 20), R(3, "b", 30, 40)}),
            Verdict::kLinearizable);
  // It may take effect long after its call ...
  EXPECT_EQ(Check({W(1, "a", 0, 10), UnknownW(2, "b", 20), R(3, "a", 30, 40), R(3, "a", 50, 60),
                   R(3, "b", 1000, 1010)}),
            Verdict::kLinearizable);
  // ... but only once: new then old is still an inversion.
  EXPECT_EQ(Check({W(1, "a", 0, 10), UnknownW(2, "b", 20), R(3, "b", 30, 40), R(3, "a", 50, 60)}),
            Verdict::kNotLinearizable);
  // And a later completed write hides it.
  EXPECT_EQ(Check({UnknownW(2, "b", 0), W(1, "a", 20, 30), R(3, "b", 40, 50)}),
            Verdict::kLinearizable);  // b took effect after a
  EXPECT_EQ(Check({UnknownW(2, "b", 0), W(1, "a", 20, 30), R(3, "b", 40, 50), R(3, "a", 60, 70)}),
            Verdict::kNotLinearizable);
}

TEST(LinCheckTest, UnknownWriteReadBeforeItsCallIsNotLinearizable) {
  const LinCheckResult r = CheckLinearizable({R(3, "b", 10, 50), UnknownW(2, "b", 100)});
  ASSERT_EQ(r.verdict, Verdict::kNotLinearizable);
  EXPECT_NE(r.explanation.find("before any write of that id was called"), std::string::npos)
      << r.explanation;
  // The same for a completed write.
  EXPECT_EQ(Check({R(3, "b", 10, 50), W(2, "b", 60, 70)}), Verdict::kNotLinearizable);
}

TEST(LinCheckTest, FailedWriteWhoseValueIsReadIsNotLinearizable) {
  const LinCheckResult r =
      CheckLinearizable({W(1, "a", 0, 10, Outcome::kFailed), R(2, "a", 20, 30)});
  ASSERT_EQ(r.verdict, Verdict::kNotLinearizable);
  EXPECT_NE(r.explanation.find("failed"), std::string::npos) << r.explanation;
  // A failed write nobody read is ignored.
  EXPECT_EQ(Check({W(1, "a", 0, 10), W(1, "b", 20, 30, Outcome::kFailed), R(2, "a", 40, 50)}),
            Verdict::kLinearizable);
}

TEST(LinCheckTest, UnknownAndFailedReadsAreDropped) {
  const LinCheckResult r =
      CheckLinearizable({W(1, "a", 0, 10), R(2, "garbage", 20, 30, Outcome::kUnknown),
                         R(2, "other", 40, 50, Outcome::kFailed), R(2, "a", 60, 70)});
  EXPECT_EQ(r.verdict, Verdict::kLinearizable);
  EXPECT_EQ(r.ops_checked, 2u);
}

TEST(LinCheckTest, KeysAreIndependent) {
  // On one register this would be a stale read; on two keys it is fine.
  std::vector<HistoryOp> h = {W(1, "a", 0, 10, Outcome::kOk, 1), W(1, "b", 20, 30, Outcome::kOk, 2),
                              R(2, "a", 40, 50, Outcome::kOk, 1), R(2, "", 0, 5, Outcome::kOk, 2),
                              R(2, "b", 60, 70, Outcome::kOk, 2)};
  LinCheckResult r = CheckLinearizable(h);
  EXPECT_EQ(r.verdict, Verdict::kLinearizable) << r.explanation;
  EXPECT_EQ(r.keys_checked, 2u);
  EXPECT_EQ(r.ops_checked, 5u);
  // A value written on another key does not count.
  h.push_back(R(3, "a", 80, 90, Outcome::kOk, 2));
  r = CheckLinearizable(h);
  EXPECT_EQ(r.verdict, Verdict::kNotLinearizable);
  EXPECT_EQ(r.bad_key, 2u);
}

TEST(LinCheckTest, ReportsTheFirstFailingKey) {
  std::vector<HistoryOp> h;
  for (std::uint64_t key : {9, 3, 7, 5}) {
    h.push_back(W(1, "a" + std::to_string(key), 0, 10, Outcome::kOk, key));
    h.push_back(W(1, "b" + std::to_string(key), 20, 30, Outcome::kOk, key));
    const bool stale = key == 7 || key == 9;
    h.push_back(R(2, (stale ? "a" : "b") + std::to_string(key), 40, 50, Outcome::kOk, key));
  }
  const LinCheckResult r = CheckLinearizable(h);
  ASSERT_EQ(r.verdict, Verdict::kNotLinearizable);
  EXPECT_EQ(r.bad_key, 7u);
}

TEST(LinCheckTest, EqualReturnAndCallTimesOrderTheOps) {
  // W(a) returns at 10 when W(b) is called: a precedes b, so a read after both can't see a.
  EXPECT_EQ(Check({W(1, "a", 0, 10), W(2, "b", 10, 20), R(3, "a", 30, 40)}),
            Verdict::kNotLinearizable);
  EXPECT_EQ(Check({W(1, "a", 0, 11), W(2, "b", 10, 20), R(3, "a", 30, 40)}),
            Verdict::kLinearizable);
  // A read called exactly when a write returns sees it.
  EXPECT_EQ(Check({W(1, "a", 0, 10), R(2, "", 10, 20)}), Verdict::kNotLinearizable);
  // A zero-length op overlaps the ops called at the same instant.
  EXPECT_EQ(Check({W(1, "a", 10, 10), R(2, "", 10, 20)}), Verdict::kLinearizable);
  EXPECT_EQ(Check({W(1, "a", 10, 10), R(2, "a", 10, 10)}), Verdict::kLinearizable);
  EXPECT_EQ(Check({W(1, "a", 10, 10), R(2, "", 10, 10)}), Verdict::kLinearizable);
  EXPECT_EQ(Check({W(1, "a", 10, 10), R(2, "", 11, 12)}), Verdict::kNotLinearizable);
}

TEST(LinCheckTest, GivesUpAtTheStateLimit) {
  // Only the search can give up, and it only runs when some id is written twice.
  std::vector<HistoryOp> h;
  for (int i = 0; i < 10; ++i) h.push_back(W(1, "v" + std::to_string(i % 2), 10 * i, 10 * i + 5));
  LinCheckOptions options;
  options.max_states_per_key = 5;
  LinCheckResult r = CheckLinearizable(h, options);
  EXPECT_EQ(r.verdict, Verdict::kGaveUp);
  EXPECT_EQ(r.bad_key, 1u);
  EXPECT_NE(r.explanation.find("gave up"), std::string::npos);
  options.max_states_per_key = 11;  // the initial state and one per op
  EXPECT_EQ(Check(h, options), Verdict::kLinearizable);

  // A definite failure on another key wins over giving up.
  options.max_states_per_key = 5;
  h.push_back(R(1, "nope", 0, 1, Outcome::kOk, 2));
  r = CheckLinearizable(h, options);
  EXPECT_EQ(r.verdict, Verdict::kNotLinearizable);
  EXPECT_EQ(r.bad_key, 2u);
}

// ----------------------------------------------------------------------------------------
// JSON.

TEST(LinCheckJsonTest, RoundTrip) {
  const std::vector<HistoryOp> ops = {
      W(7, "a\"b\\c", 100, 200, Outcome::kOk, 42),
      R(1, "", 0, 1, Outcome::kOk, 0),
      W(std::numeric_limits<std::uint64_t>::max(), "x", std::numeric_limits<std::int64_t>::min(),
        std::numeric_limits<std::int64_t>::max(), Outcome::kFailed,
        std::numeric_limits<std::uint64_t>::max()),
      Op(Kind::kWrite, 3, 5, "u", 10, 10, Outcome::kUnknown),
      Op(Kind::kRead, 3, 5, "", 10, 99, Outcome::kUnknown),
  };
  std::string text;
  for (const HistoryOp& op : ops) {
    const std::string line = HistoryOpToJson(op);
    EXPECT_EQ(line.find('\n'), std::string::npos);
    text += line + "\r\n\n";  // CRLF and blank lines are fine
  }
  EXPECT_EQ(HistoryOpToJson(ops[0]),
            R"({"client":7,"op":"write","key":42,"value":"a\"b\\c","call":100,"return":200,)"
            R"("ok":true})");
  std::istringstream in(text);
  Result<std::vector<HistoryOp>> parsed = ParseHistory(in);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  ASSERT_EQ(parsed->size(), ops.size());
  for (std::size_t i = 0; i < ops.size(); ++i) {
    SCOPED_TRACE(i);
    const HistoryOp& a = ops[i];
    const HistoryOp& b = (*parsed)[i];
    EXPECT_EQ(a.client, b.client);
    EXPECT_EQ(a.kind, b.kind);
    EXPECT_EQ(a.key, b.key);
    EXPECT_EQ(a.value, b.value);
    EXPECT_EQ(a.call_ns, b.call_ns);
    EXPECT_EQ(a.return_ns, b.return_ns);
    EXPECT_EQ(a.outcome, b.outcome);
  }
}

TEST(LinCheckJsonTest, OptionalFields) {
  std::istringstream in(
      R"({"client":1,"op":"write","key":2,"value":"v","call":5,"ok":"unknown"})"
      "\n"
      R"({"client":1,"op":"read","key":2,"call":5,"return":9,"ok":false})"
      "\n"
      R"({"ok":true,"return":9,"call":5,"value":"v","key":2,"op":"read","client":1,"x":[1]})");
  Result<std::vector<HistoryOp>> parsed = ParseHistory(in);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  ASSERT_EQ(parsed->size(), 3u);
  EXPECT_EQ((*parsed)[0].outcome, Outcome::kUnknown);
  EXPECT_EQ((*parsed)[1].outcome, Outcome::kFailed);
  EXPECT_EQ((*parsed)[1].value, "");
  EXPECT_EQ((*parsed)[2].value, "v");
}

TEST(LinCheckJsonTest, ParseErrorsNameTheLine) {
  const std::string good = R"({"client":1,"op":"write","key":2,"value":"v","call":5,"return":9,)"
                           R"("ok":true})";
  const std::vector<std::string> bad = {
      R"({"client":1,"op":"write","key":2,"value":"v","call":5,"return":9,"ok":true)",
      R"([1,2,3])",
      R"({"op":"write","key":2,"value":"v","call":5,"return":9,"ok":true})",
      R"({"client":-1,"op":"write","key":2,"value":"v","call":5,"return":9,"ok":true})",
      R"({"client":1,"op":"cas","key":2,"value":"v","call":5,"return":9,"ok":true})",
      R"({"client":1,"op":"write","key":-2,"value":"v","call":5,"return":9,"ok":true})",
      R"({"client":1,"op":"write","key":"2","value":"v","call":5,"return":9,"ok":true})",
      R"({"client":1,"op":"write","key":2,"call":5,"return":9,"ok":true})",
      R"({"client":1,"op":"write","key":2,"value":7,"call":5,"return":9,"ok":true})",
      R"({"client":1,"op":"read","key":2,"call":5,"return":9,"ok":true})",
      R"({"client":1,"op":"write","key":2,"value":"v","call":5.5,"return":9,"ok":true})",
      R"({"client":1,"op":"write","key":2,"value":"v","call":5,"ok":true})",
      R"({"client":1,"op":"write","key":2,"value":"v","call":5,"return":4,"ok":true})",
      R"({"client":1,"op":"write","key":2,"value":"v","call":5,"return":9,"ok":"maybe"})",
      R"({"client":1,"op":"write","key":2,"value":"v","call":5,"return":9})",
      R"({"client":1,"op":"write","key":2,"value":"v","call":99999999999999999999,"return":9,)"
      R"("ok":true})",
  };
  for (const std::string& line : bad) {
    SCOPED_TRACE(line);
    std::istringstream in(good + "\n\n" + line + "\n" + good + "\n");
    Result<std::vector<HistoryOp>> parsed = ParseHistory(in);
    ASSERT_FALSE(parsed.ok());
    EXPECT_EQ(parsed.status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(parsed.status().message().rfind("line 3: ", 0), 0u) << parsed.status().ToString();
  }
}

// ----------------------------------------------------------------------------------------
// Randomized: histories of a simulated linearizable register.

struct SimConfig {
  int clients = 4;
  int keys = 1;
  int ops = 100;
  double write_fraction = 0.5;
  double unknown_fraction = 0.0;  // of all ops; unknown writes take effect half of the time
  double failed_fraction = 0.0;
  int max_gap = 4;      // between a client's ops, in units of 2 ns
  int max_length = 20;  // of an op, in units of 2 ns
};

// Every client runs one op at a time; each op takes effect atomically at an odd time strictly
// inside its (even) interval, so the generated history is linearizable by construction.
std::vector<HistoryOp> Simulate(const SimConfig& c, std::mt19937_64& rng) {
  auto uniform = [&rng](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  auto chance = [&rng](double p) { return std::uniform_real_distribution<double>()(rng) < p; };
  struct Planned {
    HistoryOp op;
    std::int64_t effect_time;
    bool effective;
  };
  std::vector<std::int64_t> client_time(c.clients, 0);
  std::vector<Planned> planned;
  planned.reserve(c.ops);
  for (int i = 0; i < c.ops; ++i) {
    const int client = static_cast<int>(std::min_element(client_time.begin(), client_time.end()) -
                                        client_time.begin());
    Planned p;
    p.op.client = static_cast<std::uint64_t>(client);
    p.op.kind = chance(c.write_fraction) ? Kind::kWrite : Kind::kRead;
    p.op.key = static_cast<std::uint64_t>(uniform(0, c.keys - 1));
    p.op.call_ns = client_time[client] + 2 * uniform(0, c.max_gap);
    const int length = uniform(1, c.max_length);
    p.op.return_ns = p.op.call_ns + 2 * length;
    p.effect_time = p.op.call_ns + 1 + 2 * uniform(0, length - 1);
    client_time[client] = p.op.return_ns;
    p.effective = true;
    if (chance(c.unknown_fraction)) {
      p.op.outcome = Outcome::kUnknown;
      p.effective = chance(0.5);
    } else if (chance(c.failed_fraction)) {
      p.op.outcome = Outcome::kFailed;
      p.effective = false;
    }
    if (p.op.kind == Kind::kWrite) p.op.value = "v" + std::to_string(i);
    planned.push_back(std::move(p));
  }
  std::stable_sort(planned.begin(), planned.end(), [](const Planned& a, const Planned& b) {
    return a.effect_time < b.effect_time;
  });
  std::map<std::uint64_t, std::string> reg;
  for (Planned& p : planned) {
    if (p.op.kind == Kind::kWrite) {
      if (p.effective) reg[p.op.key] = p.op.value;
    } else {
      p.op.value = p.op.outcome == Outcome::kOk ? reg[p.op.key] : "junk";
    }
  }
  std::vector<HistoryOp> history;
  history.reserve(planned.size());
  for (Planned& p : planned) history.push_back(std::move(p.op));
  std::shuffle(history.begin(), history.end(), rng);
  return history;
}

// Makes an ok read return the value of an ok write A although another ok write B on the same
// key happened after A and before the read (in real time): such a read is never linearizable.
bool MakeStaleRead(std::vector<HistoryOp>& history, std::mt19937_64& rng) {
  std::vector<std::size_t> reads;
  for (std::size_t i = 0; i < history.size(); ++i) {
    if (history[i].kind == Kind::kRead && history[i].outcome == Outcome::kOk) reads.push_back(i);
  }
  std::shuffle(reads.begin(), reads.end(), rng);
  for (std::size_t r : reads) {
    const HistoryOp& read = history[r];
    const HistoryOp* b = nullptr;  // the ok write finished before the read with the latest call
    for (const HistoryOp& op : history) {
      if (op.kind == Kind::kWrite && op.outcome == Outcome::kOk && op.key == read.key &&
          op.return_ns < read.call_ns && (b == nullptr || op.call_ns > b->call_ns)) {
        b = &op;
      }
    }
    if (b == nullptr) continue;
    std::vector<const HistoryOp*> candidates;
    for (const HistoryOp& op : history) {
      if (op.kind == Kind::kWrite && op.outcome == Outcome::kOk && op.key == read.key &&
          op.return_ns < b->call_ns) {
        candidates.push_back(&op);
      }
    }
    if (candidates.empty()) continue;
    history[r].value = candidates[rng() % candidates.size()]->value;
    return true;
  }
  return false;
}

TEST(LinCheckRandomTest, SimulatedRegisterHistoriesAreLinearizableAndStaleReadsAreNot) {
  std::mt19937_64 rng(12345);
  int mutated = 0;
  for (int iteration = 0; iteration < 300; ++iteration) {
    SCOPED_TRACE(iteration);
    SimConfig c;
    c.clients = 1 + static_cast<int>(rng() % 12);
    c.keys = 1 + static_cast<int>(rng() % 3);
    c.ops = 5 + static_cast<int>(rng() % 400);
    c.write_fraction = 0.2 + 0.6 * static_cast<double>(rng() % 100) / 100;
    c.unknown_fraction = (rng() % 3 == 0) ? 0.1 : 0.0;
    c.failed_fraction = (rng() % 3 == 0) ? 0.1 : 0.0;
    c.max_length = 1 + static_cast<int>(rng() % 40);
    std::vector<HistoryOp> h = Simulate(c, rng);
    LinCheckResult r = CheckLinearizable(h);
    ASSERT_EQ(r.verdict, Verdict::kLinearizable) << "key " << r.bad_key << ": " << r.explanation;
    if (MakeStaleRead(h, rng)) {
      ++mutated;
      r = CheckLinearizable(h);
      ASSERT_EQ(r.verdict, Verdict::kNotLinearizable);
    }
  }
  EXPECT_GT(mutated, 150);
}

// ----------------------------------------------------------------------------------------
// Randomized: tiny arbitrary histories against a brute-force oracle.

// Tries every order of the ok ops (and every subset and position of the unknown writes) that
// respects real time and the register: the definition, without any cleverness.
bool BruteForceLinearizable(const std::vector<HistoryOp>& history) {
  std::map<std::uint64_t, std::vector<HistoryOp>> by_key;
  for (const HistoryOp& op : history) {
    if (op.outcome == Outcome::kFailed) continue;
    if (op.outcome == Outcome::kUnknown && op.kind == Kind::kRead) continue;
    by_key[op.key].push_back(op);
  }
  for (const auto& [key, ops] : by_key) {
    const std::size_t n = ops.size();
    // precedes(a, b): a's return is before b's call (a zero-length a ties with b's call).
    auto precedes = [&](const HistoryOp& a, const HistoryOp& b) {
      if (a.outcome == Outcome::kUnknown) return false;
      return a.return_ns < b.call_ns || (a.return_ns == b.call_ns && a.return_ns > a.call_ns);
    };
    std::vector<bool> used(n, false);
    std::function<bool(const std::string&)> dfs = [&](const std::string& value) {
      bool all_done = true;
      for (std::size_t i = 0; i < n; ++i) {
        if (!used[i] && ops[i].outcome == Outcome::kOk) all_done = false;
      }
      if (all_done) return true;
      for (std::size_t i = 0; i < n; ++i) {
        if (used[i]) continue;
        bool ready = true;
        for (std::size_t j = 0; j < n; ++j) {
          if (!used[j] && j != i && precedes(ops[j], ops[i])) ready = false;
        }
        if (!ready) continue;
        if (ops[i].kind == Kind::kRead && ops[i].value != value) continue;
        used[i] = true;
        const bool ok = dfs(ops[i].kind == Kind::kWrite ? ops[i].value : value);
        used[i] = false;
        if (ok) return true;
      }
      return false;
    };
    if (!dfs("")) return false;
  }
  return true;
}

TEST(LinCheckRandomTest, AgreesWithBruteForceOnTinyHistories) {
  std::mt19937_64 rng(777);
  int linearizable = 0;
  int not_linearizable = 0;
  for (int iteration = 0; iteration < 4000; ++iteration) {
    const int n = 1 + static_cast<int>(rng() % 7);
    const int values = 1 + static_cast<int>(rng() % 4);
    const bool duplicates = rng() % 4 == 0;
    std::vector<HistoryOp> h;
    for (int i = 0; i < n; ++i) {
      HistoryOp op;
      op.client = rng() % 3;
      op.key = rng() % 8 == 0 ? 2 : 1;
      op.kind = rng() % 2 ? Kind::kWrite : Kind::kRead;
      op.call_ns = static_cast<std::int64_t>(rng() % 12);
      op.return_ns = op.call_ns + static_cast<std::int64_t>(rng() % 6);
      const int o = static_cast<int>(rng() % 10);
      op.outcome = o == 0 ? Outcome::kUnknown : o == 1 ? Outcome::kFailed : Outcome::kOk;
      if (op.kind == Kind::kWrite) {
        op.value = "v" + std::to_string(duplicates ? rng() % values : static_cast<unsigned>(i));
      } else {
        const int v = static_cast<int>(rng() % (n + 1));
        op.value = v == 0 ? "" : "v" + std::to_string(duplicates ? v % values : v - 1);
      }
      h.push_back(op);
    }
    const bool expected = BruteForceLinearizable(h);
    (expected ? linearizable : not_linearizable)++;
    std::string dump;
    for (const HistoryOp& op : h) dump += HistoryOpToJson(op) + "\n";
    const Verdict want = expected ? Verdict::kLinearizable : Verdict::kNotLinearizable;
    const LinCheckResult r = CheckLinearizable(h);
    ASSERT_EQ(r.verdict, want) << r.explanation << "\n" << dump;
    const LinCheckResult search = SearchOnly(h);
    ASSERT_EQ(search.verdict, want) << search.explanation << "\n" << dump;
  }
  // Both verdicts are well represented.
  EXPECT_GT(linearizable, 800);
  EXPECT_GT(not_linearizable, 800);
}

TEST(LinCheckRandomTest, ZoneTestAndSearchAgreeOnPerturbedHistories) {
  std::mt19937_64 rng(4242);
  int linearizable = 0;
  int not_linearizable = 0;
  for (int iteration = 0; iteration < 1500; ++iteration) {
    SimConfig c;
    c.clients = 2 + static_cast<int>(rng() % 7);
    c.ops = 10 + static_cast<int>(rng() % 120);
    c.write_fraction = 0.3 + 0.4 * static_cast<double>(rng() % 100) / 100;
    c.unknown_fraction = rng() % 2 ? 0.1 : 0.0;
    c.max_length = 2 + static_cast<int>(rng() % 20);
    std::vector<HistoryOp> h = Simulate(c, rng);
    // A few random changes: a read returns another id, or an op moves in time.
    const int changes = static_cast<int>(rng() % 3);
    for (int i = 0; i < changes; ++i) {
      HistoryOp& op = h[rng() % h.size()];
      if (op.kind == Kind::kRead && rng() % 2) {
        const HistoryOp& other = h[rng() % h.size()];
        op.value = other.kind == Kind::kWrite ? other.value : "";
      } else {
        const std::int64_t shift = static_cast<std::int64_t>(rng() % 41) - 20;
        op.call_ns += shift;
        op.return_ns += shift;
      }
    }
    LinCheckOptions options;
    options.max_states_per_key = 5'000'000;
    const LinCheckResult zones = CheckLinearizable(h, options);
    const LinCheckResult search = SearchOnly(h, options);
    std::string dump;
    for (const HistoryOp& op : h) dump += HistoryOpToJson(op) + "\n";
    ASSERT_EQ(zones.verdict, search.verdict)
        << "zones: " << zones.explanation << "\nsearch: " << search.explanation << "\n"
        << dump;
    (zones.verdict == Verdict::kLinearizable ? linearizable : not_linearizable)++;
  }
  EXPECT_GT(linearizable, 300);
  EXPECT_GT(not_linearizable, 300);
}

// ----------------------------------------------------------------------------------------
// Size. Not timed assertions: these must simply finish quickly in a normal test run.

double CheckAndTime(const std::vector<HistoryOp>& h, Verdict expected, bool search_only = false) {
  const auto start = std::chrono::steady_clock::now();
  const LinCheckResult r = search_only ? SearchOnly(h) : CheckLinearizable(h);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(r.verdict, expected) << "key " << r.bad_key << ": " << r.explanation;
  return seconds;
}

TEST(LinCheckSizeTest, TwentyThousandOpsSixteenClientsFourKeys) {
  std::mt19937_64 rng(1);
  SimConfig c;
  c.clients = 16;
  c.keys = 4;
  c.ops = 20'000;
  c.unknown_fraction = 0.01;
  c.failed_fraction = 0.01;
  std::vector<HistoryOp> h = Simulate(c, rng);
  std::cout << "ok: " << CheckAndTime(h, Verdict::kLinearizable) << " s\n";
  std::cout << "ok, search only: " << CheckAndTime(h, Verdict::kLinearizable, true) << " s\n";
  ASSERT_TRUE(MakeStaleRead(h, rng));
  std::cout << "stale read: " << CheckAndTime(h, Verdict::kNotLinearizable) << " s\n";
  std::cout << "stale read, search only: " << CheckAndTime(h, Verdict::kNotLinearizable, true)
            << " s\n";
}

TEST(LinCheckSizeTest, HotKeySixtyFourClients) {
  std::mt19937_64 rng(2);
  SimConfig c;
  c.clients = 64;
  c.keys = 1;
  c.ops = 5'000;
  c.max_length = 60;
  c.unknown_fraction = 0.01;
  std::vector<HistoryOp> h = Simulate(c, rng);
  std::cout << "ok: " << CheckAndTime(h, Verdict::kLinearizable) << " s\n";
  std::cout << "ok, search only: " << CheckAndTime(h, Verdict::kLinearizable, true) << " s\n";
  ASSERT_TRUE(MakeStaleRead(h, rng));
  std::cout << "stale read: " << CheckAndTime(h, Verdict::kNotLinearizable) << " s\n";
  // Refuting it by search alone takes about a million states: it may give up, never accept.
  LinCheckOptions options;
  options.max_states_per_key = 100'000;
  EXPECT_NE(SearchOnly(h, options).verdict, Verdict::kLinearizable);
}

TEST(LinCheckSizeTest, TwoHundredThousandOpsOnThousandsOfKeys) {
  std::mt19937_64 rng(3);
  SimConfig c;
  c.clients = 32;
  c.keys = 4'000;
  c.ops = 200'000;
  c.unknown_fraction = 0.001;
  const std::vector<HistoryOp> h = Simulate(c, rng);
  std::cout << "ok: " << CheckAndTime(h, Verdict::kLinearizable) << " s\n";
  std::cout << "ok, search only: " << CheckAndTime(h, Verdict::kLinearizable, true) << " s\n";
}

}  // namespace
}  // namespace atomdisk
