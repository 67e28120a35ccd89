#include "fuse/fuse_metrics.h"

#include <cerrno>

#include "common/build_info.h"

namespace atomdisk::fuse {

namespace {
constexpr const char* kOpNames[kFuseOps] = {"read", "write", "flush", "fsync", "fallocate"};
}  // namespace

FuseMetrics::FuseMetrics(const client::Client* client) {
  metrics::Registry& r = registry_;
  r.AddGauge("atomdisk_fuse_build_info", "Version and git revision of this atomdisk-fuse.",
             {{"version", BuildVersion()}, {"revision", BuildRevision()}})
      .Set(1);
  for (int i = 0; i < kFuseOps; ++i) {
    requests_[i] = &r.AddCounter("atomdisk_fuse_requests_total", "FUSE requests, by kind.",
                                 {{"op", kOpNames[i]}});
  }
  for (int i = 0; i < kFuseOps; ++i) {
    errors_[i] = &r.AddCounter("atomdisk_fuse_errors_total",
                               "FUSE requests answered with an error.", {{"op", kOpNames[i]}});
    latency_[i] = &r.AddHistogram(
        "atomdisk_fuse_request_duration_seconds",
        "FUSE requests from arrival to answer (a flush or fsync waits for the writes before it).",
        metrics::LatencyBuckets(), {{"op", kOpNames[i]}});
  }
  for (int i = 0; i < 2; ++i) {
    bytes_[i] = &r.AddCounter("atomdisk_fuse_bytes_total", "Bytes read and written through FUSE.",
                              {{"op", kOpNames[i]}});
  }
  eio_ = &r.AddCounter("atomdisk_fuse_eio_total",
                       "Requests answered with EIO (no quorum in time, a failed write on fsync).");
  in_flight_ = &r.AddGauge("atomdisk_fuse_requests_in_flight", "FUSE requests not yet answered.");
  if (client != nullptr) {
    auto& retries = r.AddCounter(
        "atomdisk_fuse_client_retries_total",
        "Client operation attempts beyond each one's first: failovers to another node or retries.");
    auto& connects =
        r.AddCounter("atomdisk_fuse_client_connects_total", "Connections made to the nodes.");
    auto& drops = r.AddCounter("atomdisk_fuse_client_connection_drops_total",
                               "Connections to the nodes closed by errors or the node.");
    auto& failed = r.AddCounter("atomdisk_fuse_client_failed_ops_total",
                                "Sector operations that failed (timeout, no quorum).");
    r.OnRender([client, &retries, &connects, &drops, &failed] {
      const client::ClientStats s = client->Stats();
      retries.Set(s.retries);
      connects.Set(s.connects);
      drops.Set(s.connection_drops);
      failed.Set(s.ops_failed);
    });
  }
}

FuseMetrics::Clock::time_point FuseMetrics::Start(FuseOp op) {
  requests_[static_cast<int>(op)]->Add();
  in_flight_->Add(1);
  return Clock::now();
}

void FuseMetrics::Done(FuseOp op, Clock::time_point start, int err, std::uint64_t bytes) {
  const int i = static_cast<int>(op);
  in_flight_->Add(-1);
  latency_[i]->Observe(std::chrono::duration<double>(Clock::now() - start).count());
  if (err != 0) {
    errors_[i]->Add();
    if (err == EIO) eio_->Add();
  } else if (i < 2) {
    bytes_[i]->Add(bytes);
  }
}

}  // namespace atomdisk::fuse
