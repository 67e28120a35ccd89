// Shared pieces of the `atomdisk` command-line tool: exit codes, the global flags and how a
// command gets a client from them, human-readable numbers, hexdump, SHA-256, a progress bar,
// and a window that keeps many sector operations in flight while handling their results in
// order. Everything here runs on the CLI's main thread unless a comment says otherwise.
#pragma once

#include <openssl/evp.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "client/client.h"
#include "common/config.h"
#include "common/status.h"

namespace atomdisk::client::cli {

// Exit codes (docs/CLI.md "Exit codes").
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;    // an operation failed (no quorum, timeout, I/O error)
inline constexpr int kExitUsage = 2;     // bad usage, bad input, bad or missing config
inline constexpr int kExitMismatch = 3;  // data mismatch or integrity failure

// Flags every command accepts (before or after the command name).
struct GlobalOptions {
  std::string config;              // --config; empty: $ATOMDISK_CONFIG, then ./cluster.toml
  std::vector<std::string> nodes;  // --node RANK|HOST:PORT (repeatable)
  std::int64_t timeout_ms = 5000;  // --timeout: per-operation budget
  bool json = false;               // --json where the command supports it
};

// A failure that ends the command: what to print and the exit code.
struct CliError {
  int exit_code = kExitFailed;
  std::string message;
};

// Prints "atomdisk: MESSAGE" to stderr and returns `code` (for `return Fail(...)`).
int Fail(int code, const std::string& message);

// The config path the flags select: --config, else $ATOMDISK_CONFIG, else ./cluster.toml.
std::string ConfigPath(const GlobalOptions& g);
// Loads the selected config; the error says which file and why, and how to make one.
Result<ClusterConfig> LoadConfig(const GlobalOptions& g);
// Loads the config and starts a client for the selected nodes; exit code 2 on any error.
std::optional<CliError> MakeClient(const GlobalOptions& g, ClusterConfig* config,
                                   std::unique_ptr<Client>* client, std::size_t max_inflight);

// The exit code for a failed operation's status: 2 for InvalidArgument (a sector out of
// range) and AuthFailure (a wrong key is a configuration error), 3 for Corruption, else 1.
int ExitCodeFor(const Status& s);

// "4.0 KiB", "20.0 MiB", "1.2 GiB" (binary units); "512 B" below 1 KiB.
std::string HumanBytes(double bytes);
// "12,345" with thousands separators.
std::string HumanCount(std::uint64_t n);
// "0:07", "1:02:03" for an ETA or elapsed time.
std::string HumanClock(double seconds);
// Parses a byte count with an optional binary suffix: "4096", "20M", "1GiB", "3k".
Result<std::uint64_t> ParseSize(const std::string& text);
// Parses a byte value: "0", "255", "0xff", "0x5A". InvalidArgument otherwise.
Result<std::uint8_t> ParseByte(const std::string& text);
// Parses a duration: a decimal number with an optional unit suffix "ms", "s", "m" or "h";
// a bare number counts `bare_unit_ms` milliseconds each ("30s", "500ms", "1.5m", "250").
// Returns milliseconds; InvalidArgument for anything else (a sign, an unknown suffix).
Result<double> ParseDurationMs(const std::string& text, double bare_unit_ms);

// CLI11 checks that speak our language. They see the argument's text before CLI11 converts
// it, so "-1" is refused instead of wrapping to 2^64-1. On failure CLI11 reports
// "NAME: must be ..." (main.cc turns that into one line "atomdisk: COMMAND: NAME must be ...").
// A whole decimal number from `min` to `max`.
CLI::Validator WholeNumber(std::uint64_t min, std::uint64_t max);
// A decimal number (digits, an optional fraction) from `min` to `max`.
CLI::Validator DecimalNumber(double min, double max);
// A duration (ParseDurationMs) from `min_ms` to `max_ms`, for ->transform(): the text is replaced
// by its whole count of milliseconds, so the option's variable holds milliseconds.
CLI::Validator DurationMs(double bare_unit_ms, double min_ms, double max_ms);
// The terminal width for one-line displays: $COLUMNS if it is a number, else the width of
// the terminal on stderr (TIOCGWINSZ), else 80.
int TerminalColumns();

// `hexdump -C` style lines for `len` bytes whose first byte is at `base`; runs of identical
// 16-byte lines are folded into one "*" line.
void HexDump(std::FILE* out, const std::uint8_t* data, std::size_t len, std::uint64_t base);

bool IsTerminal(std::FILE* f);

// Writes all of `len` bytes to fd, retrying short writes and EINTR.
Status WriteAll(int fd, const std::uint8_t* data, std::size_t len, const std::string& what);
// Reads up to `len` bytes, retrying short reads until EOF; returns the count read.
Result<std::size_t> ReadFull(int fd, std::uint8_t* data, std::size_t len, const std::string& what);

// SHA-256 through OpenSSL EVP.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void Update(const void* data, std::size_t len);
  std::string HexDigest();  // finishes; call once

 private:
  EVP_MD_CTX* ctx_;
};

// A one-line progress bar on stderr, drawn only when stderr is a terminal and at most ten
// times a second: "upload [=====>     ]  45%  9.0 MiB / 20.0 MiB  35.2 MiB/s  ETA 0:03".
// It fits TerminalColumns() (the bar shrinks, then the figures on the right are left out)
// so it never wraps. A total of kUnknownTotal (standard input) shows no bar, percentage
// or ETA: "upload  9.0 MiB  35.2 MiB/s".
class Progress {
 public:
  static constexpr std::uint64_t kUnknownTotal = ~std::uint64_t{0};
  Progress(std::string label, std::uint64_t total_bytes);
  // The line Draw prints for these figures, at most `columns - 1` characters wide.
  static std::string Line(const std::string& label, std::uint64_t done, std::uint64_t total,
                          double rate, double eta_s, int columns);
  ~Progress();  // clears the line
  void Update(std::uint64_t done_bytes);
  void Finish();

 private:
  void Draw(std::uint64_t done_bytes);
  std::string label_;
  std::uint64_t total_;
  int columns_;
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

// Keeps up to `window` sector operations in flight and hands their results back in issue
// order. Issue(i) must start operation i and arrange for Complete(i, result) to be called
// (from the client's thread). Results are handled on the calling thread.
class OrderedWindow {
 public:
  using IssueFn = std::function<void(std::uint64_t index)>;
  // Returns false to stop issuing further operations (the ones in flight are drained).
  using HandleFn = std::function<bool(std::uint64_t index, OpResult& result)>;

  explicit OrderedWindow(std::size_t window) : window_(window) {}
  // Runs operations 0..count-1; returns how many were handled (all, unless HandleFn said
  // stop, in which case the ones issued after it are drained but not handed over).
  std::uint64_t Run(std::uint64_t count, const IssueFn& issue, const HandleFn& handle);
  // Thread-safe; called by the client's callbacks.
  void Complete(std::uint64_t index, OpResult result);

 private:
  std::size_t window_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::uint64_t, OpResult> done_;  // guarded by mu_
};

// Nanoseconds of CLOCK_MONOTONIC (the clock the history format uses).
std::int64_t MonotonicNs();

}  // namespace atomdisk::client::cli
