// The atdd wire protocol (shared/reference/wire-protocol.md): frames, payloads, HMAC tags.
//
// This is the only place that knows byte layouts and endianness. Decoders check every
// length before they touch or allocate anything and return Corruption for anything malformed
// (truncated, oversized, unknown variant, trailing bytes); they never crash on any input.
//
// Frame: u64 L (big-endian, bytes that follow) | payload (L - 32 bytes) | HMAC-SHA256 tag.
// Client frames are tagged with the 32-byte client key, node-to-node frames with the 64-byte
// system key; the payload's first u32 (0 = client command, 1 = system message) tells which.
// Responses (node -> client) have no such prefix (they start with the status).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "common/hmac.h"
#include "common/status.h"
#include "common/types.h"

namespace atomdisk {

// kInfo is atomdisk's extension (docs/PROTOCOL.md): a node describes itself (rank, version,
// counters) as JSON without touching any register; atdd nodes reject it as an unknown op.
enum class ClientOp : std::uint32_t { kRead = 0, kWrite = 1, kInfo = 2 };

struct ClientCommand {
  std::uint64_t request_id = 0;
  SectorIdx sector = 0;
  ClientOp op = ClientOp::kRead;
  SectorPtr data;  // kWrite only
};

enum class SystemContent : std::uint32_t { kReadProc = 0, kValue = 1, kWriteProc = 2, kAck = 3 };
const char* SystemContentName(SystemContent c);

struct SystemMessage {
  Rank sender = 0;
  Uuid op_id;
  SectorIdx sector = 0;
  SystemContent content = SystemContent::kReadProc;
  Tag tag;         // kValue and kWriteProc only
  SectorPtr data;  // kValue and kWriteProc only
};

enum class ResponseStatus : std::uint32_t { kOk = 0, kAuthFailure = 1, kInvalidSectorIndex = 2 };

struct ClientResponse {
  ResponseStatus status = ResponseStatus::kOk;
  std::uint64_t request_id = 0;
  ClientOp op = ClientOp::kRead;
  SectorPtr data;    // kRead only (zeros when status != kOk)
  std::string info;  // kInfo only: a JSON object (at most kMaxInfoSize bytes)
};
inline constexpr std::size_t kMaxInfoSize = 4000;

inline constexpr std::size_t kFrameLengthSize = 8;
inline constexpr std::size_t kMacSize = 32;
// The largest payload any message has (a system Value/WriteProc: 4146 bytes). A frame whose
// L exceeds this plus the tag is refused before anything is allocated.
inline constexpr std::size_t kMaxPayloadSize = 4 + 1 + 8 + 16 + 8 + 4 + 8 + 1 + kSectorSize;
// The smallest payload (a read/write response header without data: 16 bytes).
inline constexpr std::size_t kMinPayloadSize = 16;
inline constexpr std::uint64_t kMaxFrameBody = kMaxPayloadSize + kMacSize;
inline constexpr std::uint64_t kMinFrameBody = kMinPayloadSize + kMacSize;

// A complete encoded frame (length, payload, tag), ready to write to a socket.
using Frame = std::vector<std::uint8_t>;

// Encoders: build a signed frame. `mac` must hold the right key (client or system).
Frame EncodeFrame(const ClientCommand& cmd, Hmac& mac);
Frame EncodeFrame(const SystemMessage& msg, Hmac& mac);
Frame EncodeFrame(const ClientResponse& resp, Hmac& mac);

// Payload-only encoders (no length, no tag), for tests and for the simulator.
std::vector<std::uint8_t> EncodePayload(const ClientCommand& cmd);
std::vector<std::uint8_t> EncodePayload(const SystemMessage& msg);
std::vector<std::uint8_t> EncodePayload(const ClientResponse& resp);

// Parses the 8-byte length prefix. Corruption if L is outside [kMinFrameBody, kMaxFrameBody].
Result<std::uint64_t> DecodeFrameLength(std::span<const std::uint8_t, kFrameLengthSize> prefix);

// Which kind of command a node-bound payload carries, from its first u32. Corruption for
// anything else.
enum class CommandKind { kClient, kSystem };
Result<CommandKind> PeekCommandKind(std::span<const std::uint8_t> payload);

// Decode one payload (the frame body without its tag). Corruption on any malformation.
Result<ClientCommand> DecodeClientCommand(std::span<const std::uint8_t> payload);
Result<SystemMessage> DecodeSystemMessage(std::span<const std::uint8_t> payload);
Result<ClientResponse> DecodeClientResponse(std::span<const std::uint8_t> payload);

// For a client command whose tag failed: the request id and op kind, read leniently so the
// AuthFailure response can echo them. Corruption if even those bytes are missing.
Result<ClientCommand> DecodeClientCommandHeader(std::span<const std::uint8_t> payload);

// Splits a frame body (L bytes) into payload and tag and verifies the tag in constant time.
// Returns the payload, or AuthFailure.
Result<std::span<const std::uint8_t>> VerifyFrameBody(std::span<const std::uint8_t> body,
                                                      Hmac& mac);

}  // namespace atomdisk
