// Helpers shared by the atomdiskd integration tests: LiveCluster (the process harness
// tests/harness/cluster.h plus raw-protocol connections and gtest failure reporting), clocks,
// and small file helpers. Processes are started, killed and cleaned up by the harness only.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tests/daemon/raw_client.h"
#include "tests/harness/cluster.h"

namespace atomdisk::itest {

using Harness = atomdisk::testing::TestCluster;
using atomdisk::testing::TestClusterOptions;

// A running cluster for one test. Every failure of the harness becomes a gtest failure that
// carries the node's log tail, and the methods return false (or null) so a test can ASSERT.
// The harness's destructor kills and reaps every node, also when the test failed.
// Not thread-safe, except Connect() and the const accessors, which threads may share.
class LiveCluster {
 public:
  // Starts `nodes` nodes (65536 sectors unless `options` says otherwise).
  explicit LiveCluster(int nodes, TestClusterOptions options = {.sectors = 65536});
  bool ok() const { return harness_ != nullptr; }
  Harness& harness() { return *harness_; }

  // A raw-protocol connection to node `rank`; null (and, unless quiet, a test failure) if
  // it cannot connect.
  // From `source` (another loopback address, e.g. 127.0.0.2) when not empty.
  std::unique_ptr<RawClient> Connect(int rank, bool quiet = false,
                                     const std::string& source = "") const;
  std::uint16_t port(int rank) const;
  std::span<const std::uint8_t> client_key() const { return harness_->config().client_key; }
  std::span<const std::uint8_t> system_key() const { return harness_->config().system_key; }
  std::uint64_t sectors() const { return harness_->config().sectors; }
  const std::string& dir() const { return harness_->dir(); }

  bool Kill9(int rank);
  bool Stop(int rank);
  bool Restart(int rank);
  bool StartNode(int rank);
  bool IsRunning(int rank) { return harness_->IsRunning(rank); }

 private:
  bool Check(const Status& s, const char* what, int rank);
  std::unique_ptr<Harness> harness_;
};

// Checks, with a fresh connection, that node `rank` serves: writes IdSector(id) to `sector`
// and reads it back. Reports a test failure and returns false otherwise.
bool ServesWriteAndRead(const LiveCluster& cluster, int rank, SectorIdx sector, std::uint64_t id);

// CLOCK_MONOTONIC in nanoseconds (what HistoryOp's call/return hold).
std::int64_t MonotonicNs();

// Threads that run until `stop` is set: the destructor sets it and joins them, so that a
// failed ASSERT in the test body never destroys a joinable std::thread (std::terminate).
class StoppableThreads {
 public:
  StoppableThreads() = default;
  ~StoppableThreads() { StopAndJoin(); }
  StoppableThreads(const StoppableThreads&) = delete;
  StoppableThreads& operator=(const StoppableThreads&) = delete;

  template <typename F>
  void Spawn(F&& fn) {
    threads_.emplace_back(std::forward<F>(fn));
  }
  bool stopping() const { return stop_.load(); }
  void StopAndJoin() {
    stop_ = true;
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
    threads_.clear();
  }

 private:
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
};

// Polls `pred` every few milliseconds until it is true or `timeout` passes (the harness's
// WaitFor).
inline bool PollUntil(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
  return atomdisk::testing::WaitFor(pred, timeout);
}

// Whole-file helpers (tests write configs and keys with them). Abort the test on failure
// through the returned bool.
bool WriteFile(const std::string& path, const std::string& contents);
std::string ReadFile(const std::string& path);

// Non-empty lines of `text`.
std::vector<std::string> Lines(const std::string& text);

using testing::UnderSanitizer;

}  // namespace atomdisk::itest
