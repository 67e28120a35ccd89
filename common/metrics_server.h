// MetricsServer: serves a metrics::Registry as `GET /metrics` (Prometheus text format 0.0.4)
// over HTTP/1.1, parsed by Boost.Beast, on a thread and io_context of its own, so a slow or
// hostile scraper never touches the caller's event loop: it only reads the registry's atomics.
//
//   GET or HEAD /metrics (any query string)  200, text/plain; version=0.0.4
//   another path                             404
//   another method on /metrics               405 (Allow: GET, HEAD)
//   a malformed request                      400, then the connection is closed
//   headers over max_header_bytes            431, then closed
//   a body over max_body_bytes               413, then closed
// Each connection has one deadline for everything it does (reading requests, writing
// answers; keep-alive included) and is closed when it passes; past max_connections a new
// connection is closed at once. Nothing a client sends can stop the server.
//
// Ownership and threading: Start() returns the running server; destroying it closes the
// listening socket and every connection and joins the thread. The Registry must outlive it.
// Not copyable; its methods may be called from any one thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "common/metrics.h"
#include "common/status.h"

namespace atomdisk::metrics {

struct ServerLimits {
  std::size_t max_connections = 8;
  std::chrono::milliseconds connection_deadline{5000};
  std::uint32_t max_header_bytes = 8192;
  std::uint64_t max_body_bytes = 1024;
};

class MetricsServer {
 public:
  // Binds host:port (port 0: a free one, see port()) and starts serving. IOError naming the
  // address if it cannot be resolved or bound.
  static Result<std::unique_ptr<MetricsServer>> Start(const std::string& host, std::uint16_t port,
                                                      const Registry* registry,
                                                      ServerLimits limits = {});
  virtual ~MetricsServer() = default;
  // The bound port.
  virtual std::uint16_t port() const = 0;
};

// The Registry's content type for HTTP answers.
inline constexpr const char* kExpositionContentType = "text/plain; version=0.0.4; charset=utf-8";

}  // namespace atomdisk::metrics
