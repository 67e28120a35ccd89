// The atdd wire protocol (docs/PROTOCOL.md gives the layout): frames, payloads, HMAC tags.
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

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "common/hmac.h"
#include "common/status.h"
#include "common/types.h"

namespace atomdisk {

// kInfo and kScrub are atomdisk's extensions (docs/PROTOCOL.md): with kInfo a node describes
// itself (rank, version, counters) as JSON without touching any register; kScrub asks it to
// start a scrub (docs/RESYNC.md) and it answers with a JSON object too. Neither carries data
// in the command; atdd nodes reject both as unknown ops.
//
// kReadExtent, kWriteExtent and kWriteZeros are atomdisk's extent extension (docs/PROTOCOL.md,
// "Extents"): one command for a run of 1..kMaxExtentSectors consecutive sectors, each still
// its own register. A client sends them only to a node whose Info lists "extents" among its
// features; atdd nodes and atomdisk nodes from before extents close a connection that sends
// one (unknown op).
enum class ClientOp : std::uint32_t {
  kRead = 0,
  kWrite = 1,
  kInfo = 2,
  kScrub = 3,
  kReadExtent = 4,
  kWriteExtent = 5,
  kWriteZeros = 6,
};
inline constexpr std::uint32_t kLastClientOp = static_cast<std::uint32_t>(ClientOp::kWriteZeros);
// Ops whose response carries JSON text (u32 n | n bytes) instead of sector data.
inline bool HasJsonResponse(ClientOp op) { return op == ClientOp::kInfo || op == ClientOp::kScrub; }
inline bool IsExtentOp(ClientOp op) {
  return op == ClientOp::kReadExtent || op == ClientOp::kWriteExtent || op == ClientOp::kWriteZeros;
}
inline bool IsWriteOp(ClientOp op) {
  return op == ClientOp::kWrite || op == ClientOp::kWriteExtent || op == ClientOp::kWriteZeros;
}
// The most sectors one extent command covers (1 MiB of data).
inline constexpr std::uint32_t kMaxExtentSectors = 256;
// The Info feature name a node lists when it accepts extent commands.
inline constexpr const char* kExtentsFeature = "extents";

struct ClientCommand {
  std::uint64_t request_id = 0;
  SectorIdx sector = 0;  // extents: the first sector
  ClientOp op = ClientOp::kRead;
  SectorPtr data;  // kWrite only
  // Extent ops only: the number of sectors (1..kMaxExtentSectors), and for kWriteExtent their
  // data in order (count entries; a null entry is sent as zeros).
  std::uint32_t count = 0;
  std::vector<SectorPtr> sectors;
};

// What became of one sector of an extent at the coordinator. kDone: read (its data is in
// the response) or written (acknowledged by a majority). kNotDone: the coordinator did not
// run it (its stored copy is unreadable there), so it is known not written by this command;
// the client tries it on another node.
enum class ExtentOutcome : std::uint8_t { kDone = 0, kNotDone = 1 };

// kReadTag and kTag are atomdisk's extension (docs/PROTOCOL.md, "Tag-only first phase"): a
// ReadTag asks, like a ReadProc, for the durable triple's tag only, and a Tag answers with it,
// without the sector data. atdd nodes close a connection that sends either (unknown content),
// so a node sends ReadTag only to peers whose sync HelloReply advertised kFeatureTagReads
// (common/sync_wire.h).
enum class SystemContent : std::uint32_t {
  kReadProc = 0,
  kValue = 1,
  kWriteProc = 2,
  kAck = 3,
  kReadTag = 4,
  kTag = 5,
};
const char* SystemContentName(SystemContent c);
// Whether a message of this content carries a tag (kValue, kWriteProc, kTag) and sector data
// (kValue, kWriteProc).
inline bool HasTag(SystemContent c) {
  return c == SystemContent::kValue || c == SystemContent::kWriteProc || c == SystemContent::kTag;
}
inline bool HasData(SystemContent c) {
  return c == SystemContent::kValue || c == SystemContent::kWriteProc;
}

struct SystemMessage {
  Rank sender = 0;
  Uuid op_id;
  SectorIdx sector = 0;
  SystemContent content = SystemContent::kReadProc;
  Tag tag;         // kValue, kWriteProc and kTag only
  SectorPtr data;  // kValue and kWriteProc only
};

enum class ResponseStatus : std::uint32_t { kOk = 0, kAuthFailure = 1, kInvalidSectorIndex = 2 };

struct ClientResponse {
  ResponseStatus status = ResponseStatus::kOk;
  std::uint64_t request_id = 0;
  ClientOp op = ClientOp::kRead;
  SectorPtr data;    // kRead only (zeros when status != kOk)
  std::string info;  // kInfo and kScrub only: a JSON object (at most kMaxInfoSize bytes)
  // Extent ops only: one outcome per sector of the command (empty when status != kOk), and
  // for kReadExtent the data of each kDone sector, in order (null for kNotDone ones; sent
  // only for kDone sectors).
  std::vector<ExtentOutcome> outcomes;
  std::vector<SectorPtr> sectors;
};
inline constexpr std::size_t kMaxInfoSize = 4000;

inline constexpr std::size_t kFrameLengthSize = 8;
inline constexpr std::size_t kMacSize = 32;
// The largest payload of an atdd message (a system Value/WriteProc: 4146 bytes); client
// commands and responses are smaller.
inline constexpr std::size_t kMaxPayloadSize = 4 + 1 + 8 + 16 + 8 + 4 + 8 + 1 + kSectorSize;
// The largest sync message payload (common/sync_wire.h: an EntriesReply of 4096 entries,
// 69662 bytes; sync_wire.h checks that this covers every sync message).
inline constexpr std::size_t kMaxSyncPayloadBound = 4 + 1 + 1 + 8 + 8 + 4 + 4 + 4096 * (8 + 8 + 1);
// The largest extent command (a kWriteExtent of kMaxExtentSectors) and extent response (a
// kReadExtent with every sector done).
inline constexpr std::size_t kExtentCommandHeaderSize = 4 + 8 + 8 + 4 + 4;
inline constexpr std::size_t kExtentResponseHeaderSize = 4 + 8 + 4 + 4;
inline constexpr std::size_t kMaxExtentCommandPayload =
    kExtentCommandHeaderSize + std::size_t{kMaxExtentSectors} * kSectorSize;
inline constexpr std::size_t kMaxExtentResponsePayload =
    kExtentResponseHeaderSize + kMaxExtentSectors + std::size_t{kMaxExtentSectors} * kSectorSize;
// The smallest atdd payload (a read/write response header without data: 16 bytes).
inline constexpr std::size_t kMinPayloadSize = 16;
// The smallest sync payload (a Hello: the 14-byte header alone).
inline constexpr std::size_t kMinSyncPayloadSize = 4 + 1 + 1 + 8;
// Frames a node accepts on a client connection: any atdd command or an extent command. A
// frame whose L exceeds this is refused before anything is allocated.
inline constexpr std::uint64_t kMaxFrameBody = kMaxExtentCommandPayload + kMacSize;
static_assert(kMaxExtentCommandPayload > kMaxPayloadSize &&
              kMaxExtentCommandPayload > kMaxSyncPayloadBound);
// System batches (docs/PROTOCOL.md, "Extension: system batches"): atomdisk's extension that carries
// many system messages to one peer in one frame under one tag. Payload:
//   u32 3 | u32 n | n x (u32 len | the system message payload, len bytes)
// with 1 <= n <= kMaxBatchMessages and every member a well-formed system message from the
// same sender (no trailing bytes). Sent only to a peer whose HelloReply advertised kFeatureBatches
// (common/sync_wire.h); atdd nodes and older atomdisk nodes close a connection that sends one
// (unknown variant). A whole batch's payload stays within kMaxBatchPayload.
inline constexpr std::uint32_t kSystemBatchPrefix = 3;
inline constexpr std::size_t kMaxBatchMessages = 1024;
inline constexpr std::size_t kMaxBatchPayload = 256 * 1024;
// The encoded size of one system message's payload (a batch member, without its length).
std::size_t SystemPayloadSize(const SystemMessage& msg);
// Frames a node accepts from a peer: atdd system messages, system batches and sync messages
// (peers never send extents, so a peer link buffers less).
inline constexpr std::uint64_t kMaxPeerFrameBody =
    std::max({kMaxPayloadSize, kMaxSyncPayloadBound, kMaxBatchPayload}) + kMacSize;
static_assert(kMaxBatchPayload + kMacSize <= kMaxFrameBody,
              "an accepted connection takes any batch");
inline constexpr std::uint64_t kMinFrameBody =
    (kMinPayloadSize < kMinSyncPayloadSize ? kMinPayloadSize : kMinSyncPayloadSize) + kMacSize;
// Frames a client accepts: responses only, the largest an extent read's.
inline constexpr std::uint64_t kMaxResponseFrameBody = kMaxExtentResponsePayload + kMacSize;
inline constexpr std::uint64_t kMinResponseFrameBody = kMinPayloadSize + kMacSize;

// A complete encoded frame (length, payload, tag), ready to write to a socket.
using Frame = std::vector<std::uint8_t>;

// Encoders: build a signed frame. `mac` must hold the right key (client or system).
Frame EncodeFrame(const ClientCommand& cmd, Hmac& mac);
Frame EncodeFrame(const SystemMessage& msg, Hmac& mac);
Frame EncodeFrame(const ClientResponse& resp, Hmac& mac);
// A system batch of `msgs` (1..kMaxBatchMessages, within kMaxBatchPayload: checked).
Frame EncodeBatchFrame(std::span<const SystemMessage> msgs, Hmac& mac);

// Payload-only encoders (no length, no tag), for tests and for the simulator.
std::vector<std::uint8_t> EncodePayload(const ClientCommand& cmd);
std::vector<std::uint8_t> EncodePayload(const SystemMessage& msg);
std::vector<std::uint8_t> EncodePayload(const ClientResponse& resp);
std::vector<std::uint8_t> EncodeBatchPayload(std::span<const SystemMessage> msgs);

// Parses the 8-byte length prefix of a node-bound frame. Corruption if L is outside
// [kMinFrameBody, max_body] (kMaxFrameBody for a connection that may carry client commands,
// kMaxPeerFrameBody for our own outgoing peer links).
Result<std::uint64_t> DecodeFrameLength(std::span<const std::uint8_t, kFrameLengthSize> prefix,
                                        std::uint64_t max_body = kMaxFrameBody);
// The same for a response frame (client side): Corruption if L is outside
// [kMinResponseFrameBody, kMaxResponseFrameBody], so a client never buffers more than a
// response.
Result<std::uint64_t> DecodeResponseFrameLength(
    std::span<const std::uint8_t, kFrameLengthSize> prefix);

// Which kind of command a node-bound payload carries, from its first u32: 0 client command,
// 1 atdd system message, 2 sync message (common/sync_wire.h), 3 system batch. Corruption for
// anything else.
enum class CommandKind { kClient, kSystem, kSync, kSystemBatch };
Result<CommandKind> PeekCommandKind(std::span<const std::uint8_t> payload);

// Decode one payload (the frame body without its tag). Corruption on any malformation.
Result<ClientCommand> DecodeClientCommand(std::span<const std::uint8_t> payload);
Result<SystemMessage> DecodeSystemMessage(std::span<const std::uint8_t> payload);
Result<ClientResponse> DecodeClientResponse(std::span<const std::uint8_t> payload);
// A system batch's members, in order; Corruption if the batch or any member is malformed.
Result<std::vector<SystemMessage>> DecodeSystemBatch(std::span<const std::uint8_t> payload);

// For a client command whose tag failed: the request id and op kind, read leniently so the
// AuthFailure response can echo them. Corruption if even those bytes are missing.
Result<ClientCommand> DecodeClientCommandHeader(std::span<const std::uint8_t> payload);

// Splits a frame body (L bytes) into payload and tag and verifies the tag in constant time.
// Returns the payload, or AuthFailure.
Result<std::span<const std::uint8_t>> VerifyFrameBody(std::span<const std::uint8_t> body,
                                                      Hmac& mac);
// The same for a frame that arrived on a connection, which `tls` says is a verified TLS
// connection: there a tag of 32 zero bytes is taken as is (docs/TLS.md, "No HMAC inside
// TLS"); any other tag must verify with `mac`, as in clear.
Result<std::span<const std::uint8_t>> VerifyFrameBodyOn(std::span<const std::uint8_t> body,
                                                        Hmac& mac, bool tls);
// The MAC a frame sent on a connection is sealed with: the zero tag inside TLS, else `mac`.
inline Hmac& MacFor(Hmac& mac, bool tls) { return tls ? Hmac::ZeroTag() : mac; }

// Codec building blocks shared by wire.cc and sync_wire.cc, so that all byte order handling
// of the protocols lives in this header. Not for use outside common/.
namespace wire_internal {

// Big-endian appender.
class Writer {
 public:
  explicit Writer(std::vector<std::uint8_t>& out) : out_(out) {}
  void U8(std::uint8_t v) { out_.push_back(v); }
  void U32(std::uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) out_.push_back(static_cast<std::uint8_t>(v >> s));
  }
  void U64(std::uint64_t v) {
    for (int s = 56; s >= 0; s -= 8) out_.push_back(static_cast<std::uint8_t>(v >> s));
  }
  void Bytes(const std::uint8_t* p, std::size_t n) { out_.insert(out_.end(), p, p + n); }
  // A null sector is sent as zeros.
  void Sector(const SectorPtr& s) { Bytes((s ? s : ZeroSector())->data(), kSectorSize); }

 private:
  std::vector<std::uint8_t>& out_;
};

// Bounds-checked big-endian reader: every getter fails (sticky) instead of reading past the
// end, so a decoder checks ok() once after a group of reads.
class Reader {
 public:
  explicit Reader(std::span<const std::uint8_t> in) : in_(in) {}
  bool ok() const { return ok_; }
  bool AtEnd() const { return pos_ == in_.size(); }
  std::size_t remaining() const { return in_.size() - pos_; }
  std::uint8_t U8() { return Need(1) ? in_[pos_++] : 0; }
  std::uint32_t U32() {
    if (!Need(4)) return 0;
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v = v << 8 | in_[pos_++];
    return v;
  }
  std::uint64_t U64() {
    if (!Need(8)) return 0;
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v = v << 8 | in_[pos_++];
    return v;
  }
  const std::uint8_t* Bytes(std::size_t n) {
    if (!Need(n)) return nullptr;
    const std::uint8_t* p = in_.data() + pos_;
    pos_ += n;
    return p;
  }

 private:
  bool Need(std::size_t n) {
    if (!ok_ || in_.size() - pos_ < n) {
      ok_ = false;
      return false;
    }
    return true;
  }
  std::span<const std::uint8_t> in_;
  std::size_t pos_ = 0;
  bool ok_ = true;
};

// Turns `payload_with_room` (kFrameLengthSize placeholder bytes, then the payload) into a
// frame: fills in L and appends the payload's tag computed with `mac`.
Frame Seal(std::vector<std::uint8_t> payload_with_room, Hmac& mac);

}  // namespace wire_internal

}  // namespace atomdisk
