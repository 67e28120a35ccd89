// FuseMetrics: what atomdisk-fuse exports at `GET /metrics` with `-o metrics=HOST:PORT`
// (docs/OPERATIONS.md, "Metrics"): FUSE requests by kind, their latency and bytes, errors
// (EIO counted apart), requests in flight, and the client library's retries (failovers to
// another node), connections and failed operations, read at scrape time.
//
// Ownership: main() owns it; it outlives the DiskFs that feeds it and the server that reads
// it. Threading: every method is relaxed atomics, safe from libfuse's workers and the
// client's thread at once.
#pragma once

#include <chrono>
#include <cstdint>

#include "client/client.h"
#include "common/metrics.h"

namespace atomdisk::fuse {

// Every request kind is counted, timed from arrival to answer, and its errors counted.
enum class FuseOp { kRead, kWrite, kFlush, kFsync, kFallocate };
inline constexpr int kFuseOps = 5;

class FuseMetrics {
 public:
  using Clock = std::chrono::steady_clock;
  // `client` (may be null) is read at each scrape; it must outlive the metrics server.
  explicit FuseMetrics(const client::Client* client);
  FuseMetrics(const FuseMetrics&) = delete;
  FuseMetrics& operator=(const FuseMetrics&) = delete;

  metrics::Registry& registry() { return registry_; }

  // A request of kind `op` begins (counted, in flight); returns its start time for Done.
  Clock::time_point Start(FuseOp op);
  // It was answered with errno `err` (0: success) after moving `bytes` (reads and writes).
  // A flush or fsync is answered once every write begun before it is; EIO when a write
  // through the same open file had failed.
  void Done(FuseOp op, Clock::time_point start, int err, std::uint64_t bytes = 0);

 private:
  metrics::Registry registry_;
  metrics::Counter* requests_[kFuseOps];
  metrics::Counter* errors_[kFuseOps];
  metrics::Histogram* latency_[kFuseOps];
  metrics::Counter* bytes_[2];
  metrics::Counter* eio_;
  metrics::Gauge* in_flight_;
};

}  // namespace atomdisk::fuse
