// RawClient: a small synchronous client for integration tests that speaks the atdd protocol
// byte by byte over one blocking TCP connection to 127.0.0.1.
//
// Unlike the real client library (client/), it does whatever a test asks: it sends arbitrary
// bytes, frames signed with any key (right or wrong), system frames, truncated frames, and it
// reads frames back raw so that tests can check responses byte for byte. Every read has a
// deadline, so a test never hangs on a silent node.
//
// Not thread-safe: one RawClient per thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "common/hmac.h"
#include "common/status.h"
#include "common/types.h"
#include "common/wire.h"

namespace atomdisk::itest {

using Bytes = std::vector<std::uint8_t>;
using std::chrono::milliseconds;

// One frame as received: the 8-byte length prefix, the payload and the tag.
struct RawFrame {
  std::uint64_t length = 0;  // L
  Bytes bytes;               // all 8 + L bytes, exactly as they came off the socket
  std::span<const std::uint8_t> body() const {
    return std::span<const std::uint8_t>(bytes).subspan(kFrameLengthSize);
  }
  std::span<const std::uint8_t> payload() const { return body().first(length - kMacSize); }
  std::span<const std::uint8_t> tag() const { return body().last(kMacSize); }
};

class RawClient {
 public:
  // Connects to 127.0.0.1:port, from `source` (an IPv4 address, e.g. another loopback
  // address such as 127.0.0.2) when not empty. `client_key` signs commands and verifies
  // responses.
  static Result<std::unique_ptr<RawClient>> Connect(std::uint16_t port,
                                                    std::span<const std::uint8_t> client_key,
                                                    milliseconds timeout = milliseconds(2000),
                                                    const std::string& source = "");
  ~RawClient();
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;

  // Sends exactly these bytes (all of them, or an error).
  Status SendBytes(std::span<const std::uint8_t> bytes);
  // Sends a command framed and signed with the client key.
  Status Send(const ClientCommand& cmd);
  // Sends a command signed with another key (an attacker's).
  Status SendSignedWith(const ClientCommand& cmd, std::span<const std::uint8_t> key);

  // Reads one whole frame. Timeout if none arrives in time, Unavailable if the peer closed
  // (or reset) the connection, Corruption if the length prefix is absurd.
  Result<RawFrame> ReadFrame(milliseconds timeout = milliseconds(5000));
  // Reads a frame, verifies its tag with the client key and decodes it as a response.
  Result<ClientResponse> ReadResponse(milliseconds timeout = milliseconds(5000));

  // Sends and waits for the response to it (any other response on the way is an error).
  Result<ClientResponse> Call(const ClientCommand& cmd, milliseconds timeout = milliseconds(5000));
  // Convenience: write `data` to `sector` / read `sector`, with a fresh request id. Any
  // status other than kOk becomes an error Status.
  Status Write(SectorIdx sector, const SectorPtr& data, milliseconds timeout = milliseconds(5000));
  Result<SectorPtr> Read(SectorIdx sector, milliseconds timeout = milliseconds(5000));
  // atomdisk's info extension (ClientOp::kInfo): the node's self-description as JSON.
  Result<nlohmann::json> Info(milliseconds timeout = milliseconds(5000));

  // True once the peer has closed the connection (EOF or reset) within `timeout`; any bytes
  // that arrive meanwhile are discarded.
  bool WaitForClose(milliseconds timeout);
  // True if the peer has closed or reset the connection, found without reading anything
  // (poll for POLLRDHUP/POLLHUP/POLLERR): for clients that must not drain what was sent.
  bool PeerClosedWithoutReading();
  // Half-closes our side (no more bytes from us).
  void ShutdownWrite();
  void Close();

  std::uint64_t NextRequestId() { return next_request_id_++; }
  int fd() const { return fd_; }

 private:
  RawClient(int fd, std::span<const std::uint8_t> client_key);
  // Reads until the buffer holds at least `n` bytes or the deadline passes.
  Status Fill(std::size_t n, std::chrono::steady_clock::time_point deadline);

  int fd_ = -1;
  Hmac mac_;
  Bytes buf_;  // received, not yet consumed
  std::uint64_t next_request_id_ = 1;
};

// A frame with a correct length prefix and HMAC tag (with `key`) around any payload.
Bytes SignPayload(std::span<const std::uint8_t> payload, std::span<const std::uint8_t> key);
// Big-endian u64 bytes (for hand-made length prefixes).
Bytes BigEndian64(std::uint64_t v);
// A sector whose first 8 bytes hold `id` (big-endian) and whose remaining bytes are a pattern
// derived from it, so that a torn or misplaced sector is detected by CheckedId.
SectorPtr IdSector(std::uint64_t id);
// The id stored by IdSector; 0 for an all-zero (never written) sector; nullopt-like ~0 when the
// bytes are neither (a torn or foreign value).
inline constexpr std::uint64_t kBadSector = ~std::uint64_t{0};
std::uint64_t CheckedId(const SectorData& data);

}  // namespace atomdisk::itest
