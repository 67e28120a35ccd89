// bench: a closed-loop load generator. --inflight N logical clients each keep one operation
// outstanding on a random sector of a range, for --duration seconds; then ops/s, MiB/s and
// latency percentiles. With --history every operation is recorded in the JSON-lines format
// of common/lincheck.h, so the run can be checked for linearizability:
//
//  * Every write carries a unique value id in its first bytes (kMagic, run id, value id;
//    the rest of the sector is a pattern derived from them, checked on every read: a bench
//    sector with a damaged pattern is an integrity error, and so is, in a history run, data
//    no write of the run produced). A read decodes the id it found; an all-zero sector is
//    the initial value ("").
//  * Before the timed phase every sector of the range is written once (recorded too), so no
//    read can return a value from before the run that the history does not explain.
//  * Writes are issued with OpOptions::retry_unknown_write = false: a write whose outcome is
//    unknown is recorded as "unknown" and the logical client retires (the next operation
//    starts under a new client id, as Jepsen does with crashed processes), so the retry is a
//    new operation with a new value id instead of a silent second application.
//  * Reads that fail are recorded as unknown (they constrain nothing); writes that certainly
//    did not happen as ok=false.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "client/cli/commands.h"
#include "common/lincheck.h"

namespace atomdisk::client::cli {
namespace {

using nlohmann::json;
constexpr char kMagic[8] = {'A', 'T', 'D', 'B', 'E', 'N', 'C', 'H'};

std::uint64_t Load64(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = v << 8 | p[i];
  return v;
}

void Store64(std::uint8_t* p, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<std::uint8_t>(v >> (56 - 8 * i));
}

// The filler after the 32-byte header: a xorshift stream seeded by run and value id.
void FillPattern(std::uint8_t* p, std::size_t n, std::uint64_t run, std::uint64_t value) {
  std::uint64_t x = run ^ (value * 0x9E3779B97F4A7C15ULL) ^ 0x5DEECE66DULL;
  for (std::size_t i = 0; i < n; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::uint8_t w[8];
    Store64(w, x);
    std::memcpy(p + i, w, std::min<std::size_t>(8, n - i));
  }
}

SectorPtr MakeValue(std::uint64_t run, std::uint64_t value, std::uint64_t client) {
  auto s = std::make_shared<SectorData>();
  std::memcpy(s->data(), kMagic, 8);
  Store64(s->data() + 8, run);
  Store64(s->data() + 16, value);
  Store64(s->data() + 24, client);
  FillPattern(s->data() + 32, kSectorSize - 32, run, value);
  return s;
}

std::string ValueId(std::uint64_t run, std::uint64_t value) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%08llx-%llu", static_cast<unsigned long long>(run & 0xffffffff),
                static_cast<unsigned long long>(value));
  return buf;
}

// What a read returned.
struct Decoded {
  enum class Kind { kValue, kForeign, kTorn } kind = Kind::kValue;
  std::string id;  // kValue: the value id ("" for an all-zero, never-written sector)
};

// kValue for zeros or an intact bench sector (of any run); kTorn for a sector with the
// bench header whose pattern does not match (torn or corrupt: always an error); kForeign
// for anything else (data written by something other than a bench).
Decoded DecodeValue(const SectorData& d) {
  if (std::all_of(d.begin(), d.end(), [](std::uint8_t b) { return b == 0; })) return {};
  if (std::memcmp(d.data(), kMagic, 8) != 0) return {Decoded::Kind::kForeign, ""};
  std::uint64_t run = Load64(d.data() + 8), value = Load64(d.data() + 16);
  std::uint8_t expect[kSectorSize - 32];
  FillPattern(expect, sizeof expect, run, value);
  if (std::memcmp(expect, d.data() + 32, sizeof expect) != 0) return {Decoded::Kind::kTorn, ""};
  return {Decoded::Kind::kValue, ValueId(run, value)};
}

struct Config {
  double write_ratio = 0.5;
  std::size_t inflight = 16;
  double duration_ms = 10'000;
  std::uint64_t sectors = 1024;
  std::uint64_t first = 0;
  std::string history;
  bool check = false;
  bool json = false;
  std::uint64_t seed = 0;
  bool destroy_data = false;  // consent to overwrite the default range
};

// The run's state. Operations complete on the client's thread; the main thread only reads
// the atomics while running and everything else after all slots have stopped.
class Bench {
 public:
  Bench(Client& client, const Config& c)
      : client_(client), c_(c), rng_(c.seed ? c.seed : std::random_device{}()) {
    run_id_ = rng_();
    record_ = !c.history.empty();
  }

  // Writes every sector of the range once (recorded in the history).
  Status Initialize() {
    std::mutex mu;
    std::condition_variable cv;
    std::uint64_t next = 0, done = 0;
    Status first_error;
    std::function<void()> issue = [&] {
      std::uint64_t i, value;
      {
        std::lock_guard<std::mutex> lock(mu);
        if (next >= c_.sectors || !first_error.ok()) return;
        i = next++;
        value = next_value_++;
      }
      std::int64_t call = MonotonicNs();
      OpOptions o;
      o.retry_unknown_write = false;
      client_.WriteWith(
          c_.first + i, MakeValue(run_id_, value, 0), o, [&, i, value, call](OpResult r) {
            Record(0, HistoryOp::Kind::kWrite, c_.first + i, ValueId(run_id_, value), call, r);
            if (r.status.ok()) issue();  // before counting this one done: keeps done < next
            std::lock_guard<std::mutex> lock(mu);
            if (!r.status.ok() && first_error.ok()) first_error = r.status;
            ++done;
            cv.notify_all();  // under the lock: the waiter cannot return (and destroy us) first
          });
    };
    std::size_t start = std::min<std::uint64_t>(c_.inflight, c_.sectors);
    for (std::size_t k = 0; k < start; ++k) issue();
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return done == next && (next == c_.sectors || !first_error.ok()); });
    return first_error;
  }

  void Run() {
    start_ns_ = MonotonicNs();
    deadline_ns_ = start_ns_ + static_cast<std::int64_t>(c_.duration_ms * 1e6);
    running_ = c_.inflight;
    client_id_.resize(c_.inflight);
    for (std::size_t slot = 0; slot < c_.inflight; ++slot) client_id_[slot] = slot + 1;
    next_client_id_ = c_.inflight + 1;
    for (std::size_t slot = 0; slot < c_.inflight; ++slot) Issue(slot);
    const bool tty = IsTerminal(stderr);
    std::unique_lock<std::mutex> lock(mu_);
    while (running_ > 0) {
      cv_.wait_for(lock, std::chrono::milliseconds(500));
      if (tty && running_ > 0) {
        double el = (MonotonicNs() - start_ns_) / 1e9;
        std::fprintf(
            stderr, "\r\033[K  %.0f s: %s ops, %s ops/s, %s errors", el,
            HumanCount(ok_.load()).c_str(),
            HumanCount(static_cast<std::uint64_t>(ok_.load() / std::max(el, 1e-9))).c_str(),
            HumanCount(errors_.load()).c_str());
        std::fflush(stderr);
      }
    }
    end_ns_ = MonotonicNs();
    if (tty) std::fputs("\r\033[K", stderr);
  }

  int Report(const std::string& via);

 private:
  // Runs on the client thread (and once per slot from Run).
  void Issue(std::size_t slot) {
    if (MonotonicNs() >= deadline_ns_ || fatal_.load()) {
      std::lock_guard<std::mutex> lock(mu_);
      if (--running_ == 0) cv_.notify_all();
      return;
    }
    std::uint64_t sector, value = 0;
    bool write;
    {
      std::lock_guard<std::mutex> lock(mu_);
      sector = c_.first + rng_() % c_.sectors;
      write = std::uniform_real_distribution<double>(0, 1)(rng_) < c_.write_ratio;
      if (write) value = next_value_++;
    }
    std::int64_t call = MonotonicNs();
    if (write) {
      OpOptions o;
      o.retry_unknown_write = !record_;
      client_.WriteWith(sector, MakeValue(run_id_, value, client_id_[slot]), o,
                        [this, slot, sector, value, call](OpResult r) {
                          Done(slot, HistoryOp::Kind::kWrite, sector, ValueId(run_id_, value), call,
                               r);
                        });
    } else {
      client_.ReadWith(sector, OpOptions{}, [this, slot, sector, call](OpResult r) {
        std::string id;
        if (r.status.ok()) {
          Decoded v = DecodeValue(*r.data);
          // Foreign data is expected on a used device, but not after a history run wrote
          // every sector of its range.
          if (v.kind == Decoded::Kind::kTorn || (v.kind == Decoded::Kind::kForeign && record_)) {
            ++integrity_errors_;
            std::lock_guard<std::mutex> lock(mu_);
            if (integrity_example_.empty()) {
              integrity_example_ = "sector " + std::to_string(sector) +
                                   (v.kind == Decoded::Kind::kTorn
                                        ? " holds a bench value whose pattern is damaged (torn "
                                          "or corrupt)"
                                        : " holds data no write of this run produced");
            }
            id = "?corrupt";
          } else if (v.kind == Decoded::Kind::kForeign) {
            ++foreign_reads_;
            id = "?foreign";
          } else {
            id = v.id;
          }
        }
        Done(slot, HistoryOp::Kind::kRead, sector, id, call, r);
      });
    }
  }

  void Done(std::size_t slot, HistoryOp::Kind kind, std::uint64_t sector, std::string value,
            std::int64_t call, const OpResult& r) {
    std::int64_t ret = MonotonicNs();
    std::uint64_t client = client_id_[slot];
    if (r.status.ok()) {
      ++ok_;
      std::lock_guard<std::mutex> lock(mu_);
      (kind == HistoryOp::Kind::kRead ? read_lat_ : write_lat_).push_back(ret - call);
    } else {
      ++errors_;
      std::lock_guard<std::mutex> lock(mu_);
      if (last_error_.empty()) last_error_ = r.status.ToString();
      if (r.status.code() == StatusCode::kInvalidArgument ||
          r.status.code() == StatusCode::kAuthFailure) {
        fatal_ = true;
        fatal_status_ = r.status;
      }
      // An operation with an unknown outcome retires its logical client.
      if (kind == HistoryOp::Kind::kRead || r.maybe_applied) client_id_[slot] = next_client_id_++;
    }
    Record(client, kind, sector, std::move(value), call, r);
    Issue(slot);
  }

  void Record(std::uint64_t client, HistoryOp::Kind kind, std::uint64_t sector, std::string value,
              std::int64_t call, const OpResult& r) {
    if (!record_) return;
    HistoryOp op;
    op.client = client;
    op.kind = kind;
    op.key = sector;
    op.value = r.status.ok() || kind == HistoryOp::Kind::kWrite ? std::move(value) : "";
    op.call_ns = call;
    op.return_ns = MonotonicNs();
    if (r.status.ok()) {
      op.outcome = HistoryOp::Outcome::kOk;
    } else if (kind == HistoryOp::Kind::kWrite && !r.maybe_applied) {
      op.outcome = HistoryOp::Outcome::kFailed;
    } else {
      op.outcome = HistoryOp::Outcome::kUnknown;
    }
    std::lock_guard<std::mutex> lock(mu_);
    history_.push_back(std::move(op));
  }

  Client& client_;
  const Config& c_;
  bool record_ = false;
  std::uint64_t run_id_ = 0;
  std::int64_t start_ns_ = 0, deadline_ns_ = 0, end_ns_ = 0;
  std::atomic<std::uint64_t> ok_{0}, errors_{0}, integrity_errors_{0}, foreign_reads_{0};
  std::atomic<bool> fatal_{false};

  std::mutex mu_;
  std::condition_variable cv_;
  std::mt19937_64 rng_;                   // guarded by mu_
  std::uint64_t next_value_ = 1;          // guarded by mu_ (Initialize runs alone)
  std::vector<std::uint64_t> client_id_;  // per slot; only the slot's own callbacks touch it
  std::uint64_t next_client_id_ = 0;      // guarded by mu_
  std::size_t running_ = 0;               // guarded by mu_
  std::vector<std::int64_t> read_lat_, write_lat_;  // guarded by mu_
  std::vector<HistoryOp> history_;                  // guarded by mu_
  std::string last_error_, integrity_example_;      // guarded by mu_
  Status fatal_status_;                             // guarded by mu_
};

double Percentile(const std::vector<std::int64_t>& sorted, double p) {
  if (sorted.empty()) return 0;
  auto idx = static_cast<std::size_t>(std::ceil(p * static_cast<double>(sorted.size()))) - 1;
  return static_cast<double>(sorted[std::min(idx, sorted.size() - 1)]) / 1e6;  // ms
}

int Bench::Report(const std::string& via) {
  std::lock_guard<std::mutex> lock(mu_);
  double seconds = static_cast<double>(end_ns_ - start_ns_) / 1e9;
  std::sort(read_lat_.begin(), read_lat_.end());
  std::sort(write_lat_.begin(), write_lat_.end());
  std::vector<std::int64_t> all(read_lat_);
  all.insert(all.end(), write_lat_.begin(), write_lat_.end());
  std::sort(all.begin(), all.end());
  const double ops_s = static_cast<double>(all.size()) / seconds;
  const double bytes_s = ops_s * kSectorSize;
  ClientStats stats = client_.Stats();

  std::string lin_verdict;
  int exit_code = all.empty() ? kExitFailed : kExitOk;
  if (fatal_) exit_code = ExitCodeFor(fatal_status_);
  if (integrity_errors_ > 0) exit_code = kExitMismatch;
  if (record_) {
    std::sort(history_.begin(), history_.end(),
              [](const HistoryOp& a, const HistoryOp& b) { return a.call_ns < b.call_ns; });
    std::ofstream out(c_.history, std::ios::trunc);
    for (const HistoryOp& op : history_) out << HistoryOpToJson(op) << '\n';
    out.close();
    if (!out) {
      return Fail(kExitFailed, "bench: cannot write the history to " + c_.history);
    }
    if (c_.check) {
      LinCheckResult lr = CheckLinearizable(history_);
      switch (lr.verdict) {
        case LinCheckResult::Verdict::kLinearizable:
          lin_verdict = "linearizable";
          break;
        case LinCheckResult::Verdict::kNotLinearizable:
          lin_verdict =
              "NOT LINEARIZABLE (sector " + std::to_string(lr.bad_key) + "): " + lr.explanation;
          exit_code = kExitMismatch;
          break;
        case LinCheckResult::Verdict::kGaveUp:
          lin_verdict = "checker gave up (too many states)";
          if (exit_code == kExitOk) exit_code = kExitFailed;
          break;
      }
    }
  }
  if (c_.json) {
    auto lat = [](const std::vector<std::int64_t>& v) {
      return json{{"count", v.size()},
                  {"p50_ms", Percentile(v, 0.50)},
                  {"p99_ms", Percentile(v, 0.99)},
                  {"p999_ms", Percentile(v, 0.999)},
                  {"max_ms", v.empty() ? 0.0 : static_cast<double>(v.back()) / 1e6}};
    };
    json j = {{"seconds", seconds},
              {"inflight", c_.inflight},
              {"write_ratio", c_.write_ratio},
              {"sectors", c_.sectors},
              {"first_sector", c_.first},
              {"ops", all.size()},
              {"ops_per_s", ops_s},
              {"mib_per_s", bytes_s / (1024 * 1024)},
              {"mb_per_s", bytes_s / 1e6},
              {"latency", lat(all)},
              {"read_latency", lat(read_lat_)},
              {"write_latency", lat(write_lat_)},
              {"errors", errors_.load()},
              {"integrity_errors", integrity_errors_.load()},
              {"foreign_reads", foreign_reads_.load()},
              {"retries", stats.retries},
              {"connection_drops", stats.connection_drops}};
    if (!last_error_.empty()) j["first_error"] = last_error_;
    if (record_) j["history"] = {{"file", c_.history}, {"ops", history_.size()}};
    if (!lin_verdict.empty()) j["linearizability"] = lin_verdict;
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("bench: %.1f s, %zu in flight, write ratio %.2f, %s sectors from %llu via %s\n",
                seconds, c_.inflight, c_.write_ratio, HumanCount(c_.sectors).c_str(),
                static_cast<unsigned long long>(c_.first), via.c_str());
    std::printf("  ops:      %s in total, %s ops/s (reads %s/s, writes %s/s), %.1f MiB/s\n",
                HumanCount(all.size()).c_str(),
                HumanCount(static_cast<std::uint64_t>(ops_s)).c_str(),
                HumanCount(static_cast<std::uint64_t>(read_lat_.size() / seconds)).c_str(),
                HumanCount(static_cast<std::uint64_t>(write_lat_.size() / seconds)).c_str(),
                bytes_s / (1024 * 1024));
    auto line = [](const char* name, const std::vector<std::int64_t>& v) {
      if (v.empty()) return;
      std::printf("  %-9s p50 %.3f ms  p99 %.3f ms  p99.9 %.3f ms  max %.3f ms\n", name,
                  Percentile(v, 0.5), Percentile(v, 0.99), Percentile(v, 0.999),
                  static_cast<double>(v.back()) / 1e6);
    };
    line("latency:", all);
    line("reads:", read_lat_);
    line("writes:", write_lat_);
    std::printf("  errors:   %s failed operations, %s retries, %s dropped connections\n",
                HumanCount(errors_).c_str(), HumanCount(stats.retries).c_str(),
                HumanCount(stats.connection_drops).c_str());
    if (!last_error_.empty()) std::printf("  first error: %s\n", last_error_.c_str());
    if (foreign_reads_ > 0) {
      std::printf("  note:     %s reads found data not written by a bench (a used device)\n",
                  HumanCount(foreign_reads_).c_str());
    }
    if (integrity_errors_ > 0) {
      std::printf("  INTEGRITY: %s reads returned bad data; e.g. %s\n",
                  HumanCount(integrity_errors_).c_str(), integrity_example_.c_str());
    }
    if (record_) {
      std::printf("  history:  %s operations in %s (check: atomdisk-lincheck %s)\n",
                  HumanCount(history_.size()).c_str(), c_.history.c_str(), c_.history.c_str());
    }
    if (!lin_verdict.empty()) std::printf("  linearizability: %s\n", lin_verdict.c_str());
  }
  return exit_code;
}

}  // namespace

CommandFn AddBenchCommand(CLI::App& app, GlobalOptions& g) {
  auto c = std::make_shared<Config>();
  CLI::App* cmd = app.add_subcommand("bench", "Measure throughput and latency; record a history");
  cmd->footer(
      "Runs random 4 KiB reads and writes from --inflight logical clients for --duration\n"
      "seconds and reports ops/s, MiB/s and p50/p99/p99.9 latency. With --history, records\n"
      "every operation for atomdisk-lincheck (see docs/CLI.md). Exit code 3 if a read returned\n"
      "data no write produced, or --check finds the history not linearizable.\n"
      "\n"
      "WRITES DESTROY DATA: a bench with writes (--write-ratio above 0, or --history) fills\n"
      "its sectors with random data. It runs only when you name the range (--first and/or\n"
      "--sectors) or give --destroy-data to accept the default, sectors 0..1023 (the start of\n"
      "the device, where partition tables and superblocks live). --write-ratio 0 only reads\n"
      "and runs anywhere.\n"
      "Example: atomdisk bench --first 100000 --sectors 1024 --duration 10");
  cmd->add_option("--write-ratio", c->write_ratio, "fraction of operations that are writes")
      ->capture_default_str()
      ->check(DecimalNumber(0, 1));
  cmd->add_option("--inflight", c->inflight, "operations in flight (logical clients)")
      ->capture_default_str()
      ->check(WholeNumber(1, 4096));
  cmd->add_option("--duration", c->duration_ms,
                  "how long to run: seconds, or with a unit (500ms, 30s, 2m); default 10 s")
      ->type_name("S")
      ->transform(DurationMs(1000, 100, 86'400'000));
  auto* sectors =
      cmd->add_option("--sectors", c->sectors, "number of sectors the operations spread over")
          ->capture_default_str()
          ->check(WholeNumber(1, kMaxSectors));
  auto* first = cmd->add_option("--first", c->first, "first sector of the range")
                    ->capture_default_str()
                    ->check(WholeNumber(0, kMaxSectors - 1));
  cmd->add_flag("--destroy-data", c->destroy_data,
                "let a bench with writes overwrite the default range, sectors 0..1023, without "
                "naming it");
  cmd->add_option("--history", c->history,
                  "record every operation as JSON lines in FILE for atomdisk-lincheck (first "
                  "writes every sector of the range once; writes are not retried)")
      ->type_name("FILE");
  cmd->add_flag("--check", c->check, "with --history: check the history before exiting");
  cmd->add_option("--seed", c->seed, "random seed (0 = random)")
      ->check(WholeNumber(0, ~std::uint64_t{0}));
  cmd->add_flag("--json", c->json, "print the result as JSON");
  return [c, &g, sectors, first] {
    if (c->check && c->history.empty()) return Fail(kExitUsage, "bench: --check needs --history");
    const bool writes = c->write_ratio > 0 || !c->history.empty();
    const bool range_named = sectors->count() > 0 || first->count() > 0;
    if (writes && !range_named && !c->destroy_data) {
      return Fail(
          kExitUsage,
          "bench: refusing to overwrite sectors " + std::to_string(c->first) + ".." +
              std::to_string(c->first + c->sectors - 1) +
              " (the start of the device) with random data: " +
              (c->history.empty() ? "a bench with --write-ratio above 0" : "a --history bench") +
              " writes; name the range it may destroy with --first SECTOR --sectors K, "
              "give --destroy-data to accept these sectors, or use --write-ratio 0 (without "
              "--history) to only read");
    }
    ClusterConfig config;
    std::unique_ptr<Client> client;
    if (auto err = MakeClient(g, &config, &client, c->inflight)) {
      return Fail(err->exit_code, err->message);
    }
    if (c->first >= config.sectors || c->sectors > config.sectors - c->first) {
      client->Close();
      return Fail(kExitUsage, "bench: sectors " + std::to_string(c->first) + ".." +
                                  std::to_string(c->first + c->sectors - 1) +
                                  " run past the end of the device (sectors 0.." +
                                  std::to_string(config.sectors - 1) + ")");
    }
    if (!c->history.empty()) {
      std::ofstream probe(c->history, std::ios::trunc);
      if (!probe) {
        client->Close();
        return Fail(kExitUsage, "bench: cannot create " + c->history);
      }
    }
    Result<ClientOptions> options = OptionsFromConfig(config, g.nodes);
    std::string via = options.ok() ? options->nodes.front().ToString() : "?";
    Bench bench(*client, *c);
    if (!c->history.empty()) {
      if (Status s = bench.Initialize(); !s.ok()) {
        client->Close();
        return Fail(ExitCodeFor(s), "bench: writing the initial values failed: " + s.message());
      }
    }
    bench.Run();
    int code = bench.Report(via);
    client->Close();
    return code;
  };
}

}  // namespace atomdisk::client::cli
