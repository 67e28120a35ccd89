// A blocking HTTP/1.x exchange with a server on 127.0.0.1, for tests of the metrics endpoints:
// it sends whatever bytes a test gives (well-formed or hostile) and reads the answer until the
// server closes the connection. Plus a parser of the Prometheus text format's sample lines.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>

#include "common/status.h"

namespace atomdisk::testing {

struct HttpAnswer {
  int status = 0;    // from the status line
  std::string head;  // status line and headers
  std::string body;
};

// Sends `request` and reads until the server closes the connection, within `timeout`.
// IOError if it cannot connect, Timeout if the server neither answers nor closes in time,
// Corruption if what came back has no HTTP status line.
Result<HttpAnswer> HttpExchange(std::uint16_t port, const std::string& request,
                                std::chrono::milliseconds timeout = std::chrono::seconds(5));

// GET /metrics (Connection: close); the body, or an error unless the status is 200.
Result<std::string> ScrapeMetrics(std::uint16_t port);

// Sample lines of a text exposition as "name{labels}" -> value, labels as written by the
// server (comments and blank lines skipped). Value() gives -1 for a missing sample.
using Samples = std::map<std::string, double>;
Samples ParseSamples(const std::string& exposition);
double Value(const Samples& samples, const std::string& key);

}  // namespace atomdisk::testing
