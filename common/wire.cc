#include "common/wire.h"

#include <algorithm>
#include <cstring>
#include <string>

namespace atomdisk {
namespace {

using wire_internal::Reader;
using wire_internal::Seal;
using wire_internal::Writer;

constexpr std::uint32_t kClientVariant = 0;
constexpr std::uint32_t kSystemVariant = 1;
constexpr std::uint32_t kSyncVariant = 2;  // common/sync_wire.h: kSyncPayloadPrefix
constexpr std::uint32_t kBatchVariant = kSystemBatchPrefix;

Status Malformed(const char* what, const std::string& detail) {
  return Status::Corruption(std::string("malformed ") + what + ": " + detail);
}

void Append(const ClientCommand& c, Writer& w) {
  w.U32(kClientVariant);
  w.U64(c.request_id);
  w.U64(c.sector);
  w.U32(static_cast<std::uint32_t>(c.op));
  if (c.op == ClientOp::kWrite) w.Sector(c.data);
  if (IsExtentOp(c.op)) {
    w.U32(c.count);
    if (c.op == ClientOp::kWriteExtent) {
      for (std::uint32_t i = 0; i < c.count; ++i) {
        w.Sector(i < c.sectors.size() ? c.sectors[i] : nullptr);
      }
    }
  }
}

void Append(const SystemMessage& m, Writer& w) {
  w.U32(kSystemVariant);
  w.U8(m.sender);
  w.U64(16);
  w.Bytes(m.op_id.bytes.data(), 16);
  w.U64(m.sector);
  w.U32(static_cast<std::uint32_t>(m.content));
  if (HasTag(m.content)) {
    w.U64(m.tag.ts);
    w.U8(m.tag.wr);
  }
  if (HasData(m.content)) w.Sector(m.data);
}

void Append(const ClientResponse& r, Writer& w) {
  w.U32(static_cast<std::uint32_t>(r.status));
  w.U64(r.request_id);
  w.U32(static_cast<std::uint32_t>(r.op));
  if (r.op == ClientOp::kRead) w.Sector(r.status == ResponseStatus::kOk ? r.data : nullptr);
  if (HasJsonResponse(r.op)) {
    std::size_t n = std::min(r.info.size(), kMaxInfoSize);
    w.U32(static_cast<std::uint32_t>(n));
    w.Bytes(reinterpret_cast<const std::uint8_t*>(r.info.data()), n);
  }
  if (IsExtentOp(r.op)) {
    const bool ok = r.status == ResponseStatus::kOk;
    const std::size_t n = ok ? std::min<std::size_t>(r.outcomes.size(), kMaxExtentSectors) : 0;
    w.U32(static_cast<std::uint32_t>(n));
    for (std::size_t i = 0; i < n; ++i) w.U8(static_cast<std::uint8_t>(r.outcomes[i]));
    if (r.op == ClientOp::kReadExtent) {
      for (std::size_t i = 0; i < n; ++i) {
        if (r.outcomes[i] == ExtentOutcome::kDone) {
          w.Sector(i < r.sectors.size() ? r.sectors[i] : nullptr);
        }
      }
    }
  }
}

// The payload size of a message, to reserve its frame once.
std::size_t PayloadSize(const ClientCommand& c) {
  if (c.op == ClientOp::kWriteExtent) {
    return kExtentCommandHeaderSize + std::size_t{c.count} * kSectorSize;
  }
  return kMaxPayloadSize;
}
std::size_t PayloadSize(const SystemMessage&) { return kMaxPayloadSize; }
std::size_t PayloadSize(const ClientResponse& r) {
  if (r.op == ClientOp::kReadExtent) {
    return kExtentResponseHeaderSize + r.outcomes.size() * (1 + kSectorSize);
  }
  return kMaxPayloadSize;
}

template <typename M>
std::vector<std::uint8_t> PayloadOf(const M& m, std::size_t reserve_prefix) {
  std::vector<std::uint8_t> out(reserve_prefix);
  out.reserve(reserve_prefix + PayloadSize(m) + kMacSize);
  Writer w(out);
  Append(m, w);
  return out;
}

// u32 variant | u32 n, then n x (u32 len | member).
std::vector<std::uint8_t> BatchPayloadOf(std::span<const SystemMessage> msgs,
                                         std::size_t reserve_prefix) {
  ATOMDISK_CHECK(!msgs.empty() && msgs.size() <= kMaxBatchMessages);
  std::size_t size = 8;
  for (const SystemMessage& m : msgs) size += 4 + SystemPayloadSize(m);
  ATOMDISK_CHECK(size <= kMaxBatchPayload);
  std::vector<std::uint8_t> out(reserve_prefix);
  out.reserve(reserve_prefix + size + kMacSize);
  Writer w(out);
  w.U32(kBatchVariant);
  w.U32(static_cast<std::uint32_t>(msgs.size()));
  for (const SystemMessage& m : msgs) {
    w.U32(static_cast<std::uint32_t>(SystemPayloadSize(m)));
    Append(m, w);
  }
  return out;
}

}  // namespace

std::size_t SystemPayloadSize(const SystemMessage& msg) {
  return 4 + 1 + 8 + 16 + 8 + 4 + (HasTag(msg.content) ? 9 : 0) +
         (HasData(msg.content) ? kSectorSize : 0);
}

namespace wire_internal {

Frame Seal(std::vector<std::uint8_t> payload_with_room, Hmac& mac) {
  // payload_with_room starts with 8 placeholder bytes for L.
  std::span<const std::uint8_t> payload(payload_with_room.data() + kFrameLengthSize,
                                        payload_with_room.size() - kFrameLengthSize);
  MacTag tag = mac.Compute(payload);
  std::uint64_t body = payload.size() + kMacSize;
  for (int i = 0; i < 8; ++i) {
    payload_with_room[i] = static_cast<std::uint8_t>(body >> (56 - 8 * i));
  }
  payload_with_room.insert(payload_with_room.end(), tag.begin(), tag.end());
  return payload_with_room;
}

}  // namespace wire_internal

const char* SystemContentName(SystemContent c) {
  switch (c) {
    case SystemContent::kReadProc:
      return "ReadProc";
    case SystemContent::kValue:
      return "Value";
    case SystemContent::kWriteProc:
      return "WriteProc";
    case SystemContent::kAck:
      return "Ack";
    case SystemContent::kReadTag:
      return "ReadTag";
    case SystemContent::kTag:
      return "Tag";
  }
  return "?";
}

Frame EncodeFrame(const ClientCommand& cmd, Hmac& mac) {
  return Seal(PayloadOf(cmd, kFrameLengthSize), mac);
}
Frame EncodeFrame(const SystemMessage& msg, Hmac& mac) {
  return Seal(PayloadOf(msg, kFrameLengthSize), mac);
}
Frame EncodeFrame(const ClientResponse& resp, Hmac& mac) {
  return Seal(PayloadOf(resp, kFrameLengthSize), mac);
}

Frame EncodeBatchFrame(std::span<const SystemMessage> msgs, Hmac& mac) {
  return Seal(BatchPayloadOf(msgs, kFrameLengthSize), mac);
}
std::vector<std::uint8_t> EncodeBatchPayload(std::span<const SystemMessage> msgs) {
  return BatchPayloadOf(msgs, 0);
}

std::vector<std::uint8_t> EncodePayload(const ClientCommand& cmd) { return PayloadOf(cmd, 0); }
std::vector<std::uint8_t> EncodePayload(const SystemMessage& msg) { return PayloadOf(msg, 0); }
std::vector<std::uint8_t> EncodePayload(const ClientResponse& resp) { return PayloadOf(resp, 0); }

namespace {

Result<std::uint64_t> DecodeLengthWithin(std::span<const std::uint8_t, kFrameLengthSize> prefix,
                                         std::uint64_t min_body, std::uint64_t max_body) {
  Reader r(prefix);
  std::uint64_t l = r.U64();
  if (l < min_body || l > max_body) {
    return Malformed("frame", "length " + std::to_string(l) + " outside [" +
                                  std::to_string(min_body) + ", " + std::to_string(max_body) + "]");
  }
  return l;
}

}  // namespace

Result<std::uint64_t> DecodeFrameLength(std::span<const std::uint8_t, kFrameLengthSize> prefix,
                                        std::uint64_t max_body) {
  return DecodeLengthWithin(prefix, kMinFrameBody, max_body);
}

Result<std::uint64_t> DecodeResponseFrameLength(
    std::span<const std::uint8_t, kFrameLengthSize> prefix) {
  return DecodeLengthWithin(prefix, kMinResponseFrameBody, kMaxResponseFrameBody);
}

Result<CommandKind> PeekCommandKind(std::span<const std::uint8_t> payload) {
  Reader r(payload);
  std::uint32_t v = r.U32();
  if (!r.ok()) return Malformed("command", "shorter than its variant");
  if (v == kClientVariant) return CommandKind::kClient;
  if (v == kSystemVariant) return CommandKind::kSystem;
  if (v == kSyncVariant) return CommandKind::kSync;
  if (v == kBatchVariant) return CommandKind::kSystemBatch;
  return Malformed("command", "unknown variant " + std::to_string(v));
}

Result<ClientCommand> DecodeClientCommandHeader(std::span<const std::uint8_t> payload) {
  Reader r(payload);
  ClientCommand c;
  if (r.U32() != kClientVariant) return Malformed("client command", "not a client command");
  c.request_id = r.U64();
  c.sector = r.U64();
  std::uint32_t op = r.U32();
  if (!r.ok()) return Malformed("client command", "truncated header");
  if (op > kLastClientOp) return Malformed("client command", "unknown op " + std::to_string(op));
  c.op = static_cast<ClientOp>(op);
  return c;
}

Result<ClientCommand> DecodeClientCommand(std::span<const std::uint8_t> payload) {
  auto header = DecodeClientCommandHeader(payload);
  if (!header.ok()) return header;
  ClientCommand c = std::move(header).value();
  std::size_t expected = c.op == ClientOp::kWrite ? 24 + kSectorSize : 24;
  if (IsExtentOp(c.op)) {
    Reader r(payload.subspan(24));
    c.count = r.U32();
    if (!r.ok()) return Malformed("client command", "truncated extent count");
    if (c.count == 0 || c.count > kMaxExtentSectors) {
      return Malformed("client command", "extent of " + std::to_string(c.count) +
                                             " sectors, not 1.." +
                                             std::to_string(kMaxExtentSectors));
    }
    expected = kExtentCommandHeaderSize +
               (c.op == ClientOp::kWriteExtent ? std::size_t{c.count} * kSectorSize : 0);
  }
  if (payload.size() != expected) {
    return Malformed("client command", "size " + std::to_string(payload.size()) + ", expected " +
                                           std::to_string(expected));
  }
  if (c.op == ClientOp::kWrite) c.data = MakeSector(payload.data() + 24);
  if (c.op == ClientOp::kWriteExtent) {
    c.sectors.reserve(c.count);
    for (std::uint32_t i = 0; i < c.count; ++i) {
      c.sectors.push_back(MakeSector(payload.data() + kExtentCommandHeaderSize + i * kSectorSize));
    }
  }
  return c;
}

Result<SystemMessage> DecodeSystemMessage(std::span<const std::uint8_t> payload) {
  Reader r(payload);
  SystemMessage m;
  if (r.U32() != kSystemVariant) return Malformed("system message", "not a system message");
  m.sender = r.U8();
  std::uint64_t uuid_len = r.U64();
  if (r.ok() && uuid_len != 16) {
    return Malformed("system message", "uuid length " + std::to_string(uuid_len));
  }
  const std::uint8_t* id = r.Bytes(16);
  m.sector = r.U64();
  std::uint32_t content = r.U32();
  if (!r.ok()) return Malformed("system message", "truncated header");
  std::memcpy(m.op_id.bytes.data(), id, 16);
  if (content > static_cast<std::uint32_t>(SystemContent::kTag)) {
    return Malformed("system message", "unknown content " + std::to_string(content));
  }
  if (m.sender == 0) return Malformed("system message", "sender rank 0");
  m.content = static_cast<SystemContent>(content);
  if (HasTag(m.content)) {
    m.tag.ts = r.U64();
    m.tag.wr = r.U8();
    if (!r.ok()) return Malformed("system message", "truncated tag");
  }
  if (HasData(m.content)) {
    const std::uint8_t* data = r.Bytes(kSectorSize);
    if (!r.ok()) return Malformed("system message", "truncated value");
    m.data = MakeSector(data);
  }
  if (!r.AtEnd()) {
    return Malformed("system message", std::to_string(r.remaining()) + " trailing bytes");
  }
  return m;
}

Result<ClientResponse> DecodeClientResponse(std::span<const std::uint8_t> payload) {
  Reader r(payload);
  ClientResponse resp;
  std::uint32_t status = r.U32();
  resp.request_id = r.U64();
  std::uint32_t op = r.U32();
  if (!r.ok()) return Malformed("response", "truncated header");
  if (status > 2) return Malformed("response", "unknown status " + std::to_string(status));
  if (op > kLastClientOp) return Malformed("response", "unknown op " + std::to_string(op));
  resp.status = static_cast<ResponseStatus>(status);
  resp.op = static_cast<ClientOp>(op);
  if (resp.op == ClientOp::kRead) {
    const std::uint8_t* data = r.Bytes(kSectorSize);
    if (!r.ok()) return Malformed("response", "truncated read data");
    resp.data = MakeSector(data);
  }
  if (HasJsonResponse(resp.op)) {
    std::uint32_t n = r.U32();
    if (!r.ok() || n > kMaxInfoSize) return Malformed("response", "bad info length");
    const std::uint8_t* text = r.Bytes(n);
    if (!r.ok()) return Malformed("response", "truncated info");
    resp.info.assign(reinterpret_cast<const char*>(text), n);
  }
  if (IsExtentOp(resp.op)) {
    std::uint32_t n = r.U32();
    if (!r.ok()) return Malformed("response", "truncated extent count");
    if (n > kMaxExtentSectors || (n == 0 && resp.status == ResponseStatus::kOk) ||
        (n != 0 && resp.status != ResponseStatus::kOk)) {
      return Malformed("response", "extent of " + std::to_string(n) + " outcomes with status " +
                                       std::to_string(status));
    }
    const std::uint8_t* outcomes = r.Bytes(n);
    if (!r.ok()) return Malformed("response", "truncated extent outcomes");
    resp.outcomes.reserve(n);
    for (std::uint32_t i = 0; i < n; ++i) {
      if (outcomes[i] > static_cast<std::uint8_t>(ExtentOutcome::kNotDone)) {
        return Malformed("response", "unknown extent outcome " + std::to_string(outcomes[i]));
      }
      resp.outcomes.push_back(static_cast<ExtentOutcome>(outcomes[i]));
    }
    if (resp.op == ClientOp::kReadExtent) {
      resp.sectors.resize(n);
      for (std::uint32_t i = 0; i < n; ++i) {
        if (resp.outcomes[i] != ExtentOutcome::kDone) continue;
        const std::uint8_t* data = r.Bytes(kSectorSize);
        if (!r.ok()) return Malformed("response", "truncated extent data");
        resp.sectors[i] = MakeSector(data);
      }
    }
  }
  if (!r.AtEnd()) return Malformed("response", std::to_string(r.remaining()) + " trailing bytes");
  return resp;
}

Result<std::span<const std::uint8_t>> VerifyFrameBody(std::span<const std::uint8_t> body,
                                                      Hmac& mac) {
  if (body.size() < kMacSize) return Status::Corruption("frame shorter than its tag");
  auto payload = body.first(body.size() - kMacSize);
  auto tag = body.last(kMacSize);
  if (!mac.Verify(payload, tag)) return Status::AuthFailure("HMAC tag does not verify");
  return payload;
}

Result<std::span<const std::uint8_t>> VerifyFrameBodyOn(std::span<const std::uint8_t> body,
                                                        Hmac& mac, bool tls) {
  if (tls && body.size() >= kMacSize &&
      Hmac::ZeroTag().Verify(body.first(body.size() - kMacSize), body.last(kMacSize))) {
    return body.first(body.size() - kMacSize);
  }
  return VerifyFrameBody(body, mac);
}

}  // namespace atomdisk

namespace atomdisk {

Result<std::vector<SystemMessage>> DecodeSystemBatch(std::span<const std::uint8_t> payload) {
  if (payload.size() > kMaxBatchPayload) {
    return Malformed("system batch", std::to_string(payload.size()) + " bytes");
  }
  Reader r(payload);
  if (r.U32() != kBatchVariant) return Malformed("system batch", "not a system batch");
  const std::uint32_t n = r.U32();
  if (!r.ok()) return Malformed("system batch", "truncated header");
  if (n == 0 || n > kMaxBatchMessages) {
    return Malformed("system batch", std::to_string(n) + " members");
  }
  // Each member takes at least its length and a system header (a ReadProc's payload): refuse
  // a count the bytes cannot hold before reserving for it.
  SystemMessage smallest;
  smallest.content = SystemContent::kReadProc;
  if (r.remaining() / (4 + SystemPayloadSize(smallest)) < n) {
    return Malformed("system batch",
                     std::to_string(n) + " members in " + std::to_string(r.remaining()) + " bytes");
  }
  std::vector<SystemMessage> out;
  out.reserve(n);
  for (std::uint32_t i = 0; i < n; ++i) {
    const std::uint32_t len = r.U32();
    if (!r.ok() || len > kMaxPayloadSize || len > r.remaining()) {
      return Malformed("system batch", "member " + std::to_string(i) + " truncated");
    }
    auto member = DecodeSystemMessage(std::span<const std::uint8_t>(r.Bytes(len), len));
    if (!member.ok()) {
      return Malformed("system batch",
                       "member " + std::to_string(i) + ": " + member.status().message());
    }
    if (!out.empty() && member->sender != out.front().sender) {
      return Malformed("system batch", "members from ranks " + std::to_string(out.front().sender) +
                                           " and " + std::to_string(member->sender));
    }
    out.push_back(std::move(member).value());
  }
  if (!r.AtEnd()) return Malformed("system batch", "trailing bytes");
  return out;
}

}  // namespace atomdisk
