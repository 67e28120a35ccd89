// Tests for the atdd wire codec (common/wire.h) against the layout in docs/PROTOCOL.md:
// byte-exact layouts, round trips, and decoders that reject (never crash on) hostile bytes.
#include "common/wire.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "common/hmac.h"
#include "common/types.h"

namespace atomdisk {
namespace {

using Bytes = std::vector<std::uint8_t>;

Bytes FromHex(std::string_view hex) {
  auto r = ParseHex(hex);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? r.value() : Bytes{};
}

// A sector whose bytes depend on `seed` and their position, so misplaced bytes show.
SectorPtr PatternSector(std::uint8_t seed) {
  SectorData d;
  for (std::size_t i = 0; i < kSectorSize; ++i) {
    d[i] = static_cast<std::uint8_t>(seed + i * 7 + (i >> 8));
  }
  return MakeSector(d.data());
}

Uuid MakeUuid(std::uint8_t first) {
  Uuid u;
  for (std::size_t i = 0; i < 16; ++i) u.bytes[i] = static_cast<std::uint8_t>(first + i);
  return u;
}

std::uint64_t BigEndian64(const Bytes& b, std::size_t off) {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < 8; ++i) v = v << 8 | b.at(off + i);
  return v;
}

std::uint32_t BigEndian32(const Bytes& b, std::size_t off) {
  std::uint32_t v = 0;
  for (std::size_t i = 0; i < 4; ++i) v = v << 8 | b.at(off + i);
  return v;
}

void PutBigEndian32(Bytes& b, std::size_t off, std::uint32_t v) {
  for (std::size_t i = 0; i < 4; ++i) b.at(off + i) = static_cast<std::uint8_t>(v >> (24 - 8 * i));
}

void PutBigEndian64(Bytes& b, std::size_t off, std::uint64_t v) {
  for (std::size_t i = 0; i < 8; ++i) b.at(off + i) = static_cast<std::uint8_t>(v >> (56 - 8 * i));
}

bool SectorEquals(const SectorPtr& s, const std::uint8_t* bytes) {
  return s && std::equal(s->begin(), s->end(), bytes);
}

Bytes ClientKey() {
  Bytes k(32);
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = static_cast<std::uint8_t>(0xC0 + i);
  return k;
}

Bytes SystemKey() {
  Bytes k(64);
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = static_cast<std::uint8_t>(0x50 ^ i);
  return k;
}

std::uint64_t FrameLength(const Frame& f) {
  auto l = DecodeFrameLength(std::span<const std::uint8_t, kFrameLengthSize>(f.data(), 8));
  EXPECT_TRUE(l.ok()) << l.status().ToString();
  return l.ok() ? l.value() : 0;
}

Result<std::uint64_t> DecodeLength(std::uint64_t l, std::uint64_t max_body = kMaxFrameBody) {
  std::array<std::uint8_t, 8> prefix{};
  for (std::size_t i = 0; i < 8; ++i) prefix[i] = static_cast<std::uint8_t>(l >> (56 - 8 * i));
  return DecodeFrameLength(prefix, max_body);
}

std::span<const std::uint8_t> BodyOf(const Frame& f) {
  return std::span<const std::uint8_t>(f).subspan(kFrameLengthSize);
}

// --- Sample messages of every kind ----------------------------------------------------------

ClientCommand ReadCommand() {
  return {
      .request_id = 0x0102030405060708ULL, .sector = 0x1112131415161718ULL, .op = ClientOp::kRead};
}

ClientCommand WriteCommand() {
  return {.request_id = 0xFFFFFFFFFFFFFFFEULL,
          .sector = 77,
          .op = ClientOp::kWrite,
          .data = PatternSector(3)};
}

SystemMessage SystemMsg(SystemContent content) {
  SystemMessage m;
  m.sender = 5;
  m.op_id = MakeUuid(0xA0);
  m.sector = 0x0000123456789ABCULL;
  m.content = content;
  if (HasTag(content)) m.tag = {.ts = 0x8877665544332211ULL, .wr = 254};
  if (HasData(content)) m.data = PatternSector(static_cast<std::uint8_t>(content));
  return m;
}

std::vector<SystemMessage> AllSystemMessages() {
  return {SystemMsg(SystemContent::kReadProc),  SystemMsg(SystemContent::kValue),
          SystemMsg(SystemContent::kWriteProc), SystemMsg(SystemContent::kAck),
          SystemMsg(SystemContent::kReadTag),   SystemMsg(SystemContent::kTag)};
}

std::vector<ClientResponse> AllResponses() {
  std::vector<ClientResponse> out;
  for (auto status :
       {ResponseStatus::kOk, ResponseStatus::kAuthFailure, ResponseStatus::kInvalidSectorIndex}) {
    for (auto op : {ClientOp::kRead, ClientOp::kWrite}) {
      ClientResponse r{
          .status = status, .request_id = 0xDEADBEEF00000000ULL + out.size(), .op = op};
      if (op == ClientOp::kRead)
        r.data = status == ResponseStatus::kOk ? PatternSector(9) : ZeroSector();
      out.push_back(r);
    }
  }
  return out;
}

void ExpectSameCommand(const ClientCommand& a, const ClientCommand& b) {
  EXPECT_EQ(a.request_id, b.request_id);
  EXPECT_EQ(a.sector, b.sector);
  EXPECT_EQ(a.op, b.op);
  if (a.op == ClientOp::kWrite) {
    ASSERT_TRUE(a.data && b.data);
    EXPECT_EQ(*a.data, *b.data);
  } else {
    EXPECT_EQ(b.data, nullptr);
  }
}

void ExpectSameSystem(const SystemMessage& a, const SystemMessage& b) {
  EXPECT_EQ(a.sender, b.sender);
  EXPECT_EQ(a.op_id, b.op_id);
  EXPECT_EQ(a.sector, b.sector);
  EXPECT_EQ(a.content, b.content);
  EXPECT_EQ(b.tag, HasTag(a.content) ? a.tag : Tag{});
  if (HasData(a.content)) {
    ASSERT_TRUE(a.data && b.data);
    EXPECT_EQ(*a.data, *b.data);
  } else {
    EXPECT_EQ(b.data, nullptr);
  }
}

void ExpectSameResponse(const ClientResponse& a, const ClientResponse& b) {
  EXPECT_EQ(a.status, b.status);
  EXPECT_EQ(a.request_id, b.request_id);
  EXPECT_EQ(a.op, b.op);
  if (a.op == ClientOp::kRead) {
    ASSERT_TRUE(b.data);
    if (a.status == ResponseStatus::kOk) {
      ASSERT_TRUE(a.data);
      EXPECT_EQ(*a.data, *b.data);
    } else {
      EXPECT_EQ(*b.data, *ZeroSector());
    }
  } else {
    EXPECT_EQ(b.data, nullptr);
  }
}

// Every valid payload the tests mutate, with the decoder that accepts it.
enum class Decoder { kClient, kSystem, kResponse, kBatch };
struct Sample {
  std::string name;
  Decoder decoder;
  Bytes payload;
};

std::vector<Sample> AllSamples() {
  std::vector<Sample> out;
  out.push_back({"client read", Decoder::kClient, EncodePayload(ReadCommand())});
  out.push_back({"client write", Decoder::kClient, EncodePayload(WriteCommand())});
  for (const auto& m : AllSystemMessages()) {
    out.push_back({std::string("system ") + SystemContentName(m.content), Decoder::kSystem,
                   EncodePayload(m)});
  }
  out.push_back(
      {"system batch of every content", Decoder::kBatch, EncodeBatchPayload(AllSystemMessages())});
  out.push_back({"system batch of one Ack", Decoder::kBatch,
                 EncodeBatchPayload(std::vector{SystemMsg(SystemContent::kAck)})});
  for (const auto& r : AllResponses()) {
    out.push_back({"response status " + std::to_string(static_cast<int>(r.status)) + " op " +
                       std::to_string(static_cast<int>(r.op)),
                   Decoder::kResponse, EncodePayload(r)});
  }
  // atomdisk's admin ops: no data in the command, JSON in the response.
  for (auto op : {ClientOp::kInfo, ClientOp::kScrub}) {
    std::string n = std::to_string(static_cast<int>(op));
    ClientCommand c{.request_id = 0x0A0B0C0D0E0F1011ULL, .sector = 0, .op = op};
    out.push_back({"client op " + n, Decoder::kClient, EncodePayload(c)});
    ClientResponse r{.status = ResponseStatus::kOk, .request_id = 42, .op = op};
    r.info = R"({"started":true})";
    out.push_back({"response op " + n, Decoder::kResponse, EncodePayload(r)});
  }
  return out;
}

Status DecodeWith(Decoder d, std::span<const std::uint8_t> p) {
  switch (d) {
    case Decoder::kClient:
      return DecodeClientCommand(p).status();
    case Decoder::kSystem:
      return DecodeSystemMessage(p).status();
    case Decoder::kResponse:
      return DecodeClientResponse(p).status();
    case Decoder::kBatch:
      return DecodeSystemBatch(p).status();
  }
  return Status::Ok();
}

// --- Byte-exact layouts ---------------------------------------------------------------------

// On a TLS connection a zero tag is taken, and so is a valid HMAC (a sender that signs
// anyway); a wrong non-zero tag is not. In clear a zero tag is a bad tag.
TEST(WireTags, ZeroTagsOnlyOnTls) {
  Hmac mac(std::vector<std::uint8_t>(32, 7));
  ClientCommand cmd;
  cmd.request_id = 9;
  cmd.op = ClientOp::kRead;
  cmd.sector = 3;
  Frame zero = EncodeFrame(cmd, Hmac::ZeroTag());
  Frame signed_frame = EncodeFrame(cmd, mac);
  auto body = [](const Frame& f) {
    return std::span<const std::uint8_t>(f).subspan(kFrameLengthSize);
  };
  EXPECT_TRUE(VerifyFrameBodyOn(body(zero), mac, true).ok());
  EXPECT_TRUE(VerifyFrameBodyOn(body(signed_frame), mac, true).ok());
  EXPECT_TRUE(VerifyFrameBodyOn(body(signed_frame), mac, false).ok());
  EXPECT_EQ(VerifyFrameBodyOn(body(zero), mac, false).status().code(), StatusCode::kAuthFailure);
  Frame wrong = signed_frame;
  wrong.back() ^= 1;
  EXPECT_EQ(VerifyFrameBodyOn(body(wrong), mac, true).status().code(), StatusCode::kAuthFailure);
  EXPECT_EQ(&MacFor(mac, true), &Hmac::ZeroTag());
  EXPECT_EQ(&MacFor(mac, false), &mac);
}

TEST(WireLayout, ReadProcMatchesReferenceExample) {
  SystemMessage m;
  m.sender = 147;
  m.op_id.bytes.fill(0x07);
  m.sector = 4525787855454ULL;
  m.content = SystemContent::kReadProc;
  Bytes expected = FromHex(
      "00000001"
      "93"
      "0000000000000010"
      "07070707070707070707070707070707"
      "0000041dbdfa3a5e"
      "00000000");
  ASSERT_EQ(expected.size(), 41u);
  Bytes payload = EncodePayload(m);
  EXPECT_EQ(ToHex(payload), ToHex(expected));

  auto decoded = DecodeSystemMessage(expected);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  ExpectSameSystem(m, decoded.value());

  // The same message as a signed frame: L = 41 + 32, the payload, then the tag over it.
  Hmac mac(SystemKey());
  Frame f = EncodeFrame(m, mac);
  ASSERT_EQ(f.size(), 8u + 41u + 32u);
  EXPECT_EQ(FrameLength(f), 73u);
  EXPECT_TRUE(std::equal(expected.begin(), expected.end(), f.begin() + 8));
  MacTag tag = mac.Compute(expected);
  EXPECT_TRUE(std::equal(tag.begin(), tag.end(), f.begin() + 8 + 41));
}

TEST(WireLayout, ClientReadCommand) {
  ClientCommand c = ReadCommand();
  Bytes p = EncodePayload(c);
  ASSERT_EQ(p.size(), 24u);
  EXPECT_EQ(ToHex(p),
            "00000000"
            "0102030405060708"
            "1112131415161718"
            "00000000");
  // A stray data pointer on a read is not encoded.
  c.data = PatternSector(1);
  EXPECT_EQ(EncodePayload(c), p);

  Hmac mac(ClientKey());
  Frame f = EncodeFrame(c, mac);
  ASSERT_EQ(f.size(), 8u + 56u);
  EXPECT_EQ(ToHex(std::span(f).first(8)), "0000000000000038");
  EXPECT_EQ(FrameLength(f), 56u);
  EXPECT_TRUE(std::equal(p.begin(), p.end(), f.begin() + 8));
  MacTag tag = mac.Compute(p);
  EXPECT_TRUE(std::equal(tag.begin(), tag.end(), f.begin() + 8 + 24));
}

TEST(WireLayout, ClientWriteCommand) {
  ClientCommand c = WriteCommand();
  Bytes p = EncodePayload(c);
  ASSERT_EQ(p.size(), 4120u);
  EXPECT_EQ(BigEndian32(p, 0), 0u);
  EXPECT_EQ(BigEndian64(p, 4), 0xFFFFFFFFFFFFFFFEULL);
  EXPECT_EQ(BigEndian64(p, 12), 77u);
  EXPECT_EQ(BigEndian32(p, 20), 1u);
  EXPECT_TRUE(SectorEquals(c.data, p.data() + 24));

  Hmac mac(ClientKey());
  Frame f = EncodeFrame(c, mac);
  ASSERT_EQ(f.size(), 8u + 4152u);
  EXPECT_EQ(ToHex(std::span(f).first(8)), "0000000000001038");
  EXPECT_EQ(FrameLength(f), 4152u);
  EXPECT_TRUE(std::equal(p.begin(), p.end(), f.begin() + 8));

  // A write without data sends zeros.
  c.data = nullptr;
  Bytes zero = EncodePayload(c);
  ASSERT_EQ(zero.size(), 4120u);
  EXPECT_TRUE(SectorEquals(ZeroSector(), zero.data() + 24));
}

TEST(WireLayout, ValueAndWriteProc) {
  for (auto content : {SystemContent::kValue, SystemContent::kWriteProc}) {
    SCOPED_TRACE(SystemContentName(content));
    SystemMessage m = SystemMsg(content);
    Bytes p = EncodePayload(m);
    ASSERT_EQ(p.size(), kMaxPayloadSize);
    ASSERT_EQ(p.size(), 4146u);
    EXPECT_EQ(BigEndian32(p, 0), 1u);   // RegisterCommand::System
    EXPECT_EQ(p[4], 5u);                // process_identifier
    EXPECT_EQ(BigEndian64(p, 5), 16u);  // UUID length
    EXPECT_TRUE(std::equal(m.op_id.bytes.begin(), m.op_id.bytes.end(), p.begin() + 13));
    EXPECT_EQ(BigEndian64(p, 29), 0x0000123456789ABCULL);                // sector_idx
    EXPECT_EQ(BigEndian32(p, 37), static_cast<std::uint32_t>(content));  // content
    EXPECT_EQ(BigEndian64(p, 41), 0x8877665544332211ULL);                // timestamp
    EXPECT_EQ(p[49], 254u);                                              // write_rank
    EXPECT_TRUE(SectorEquals(m.data, p.data() + 50));                    // data

    Hmac mac(SystemKey());
    Frame f = EncodeFrame(m, mac);
    EXPECT_EQ(FrameLength(f), kMaxPayloadSize + kMacSize);
  }
  EXPECT_EQ(BigEndian32(EncodePayload(SystemMsg(SystemContent::kValue)), 37), 1u);
  EXPECT_EQ(BigEndian32(EncodePayload(SystemMsg(SystemContent::kWriteProc)), 37), 2u);
}

TEST(WireLayout, AckReadProcAndReadTagHaveNoValue) {
  for (auto content : {SystemContent::kReadProc, SystemContent::kAck, SystemContent::kReadTag}) {
    SCOPED_TRACE(SystemContentName(content));
    SystemMessage m = SystemMsg(content);
    // A stray tag or data pointer is not encoded for these.
    m.tag = {.ts = 9, .wr = 9};
    m.data = PatternSector(2);
    Bytes p = EncodePayload(m);
    ASSERT_EQ(p.size(), 41u);
    EXPECT_EQ(BigEndian32(p, 0), 1u);
    EXPECT_EQ(p[4], 5u);
    EXPECT_EQ(BigEndian64(p, 5), 16u);
    EXPECT_TRUE(std::equal(m.op_id.bytes.begin(), m.op_id.bytes.end(), p.begin() + 13));
    EXPECT_EQ(BigEndian64(p, 29), 0x0000123456789ABCULL);
    EXPECT_EQ(BigEndian32(p, 37), static_cast<std::uint32_t>(content));
  }
  EXPECT_EQ(BigEndian32(EncodePayload(SystemMsg(SystemContent::kAck)), 37), 3u);
  EXPECT_EQ(BigEndian32(EncodePayload(SystemMsg(SystemContent::kReadTag)), 37), 4u);
}

// atomdisk's Tag: a Value's header and tag, without the sector data.
TEST(WireLayout, TagHasATagButNoData) {
  SystemMessage m = SystemMsg(SystemContent::kTag);
  m.data = PatternSector(2);  // a stray data pointer is not encoded
  Bytes p = EncodePayload(m);
  ASSERT_EQ(p.size(), 50u);
  EXPECT_EQ(BigEndian32(p, 0), 1u);
  EXPECT_EQ(p[4], 5u);
  EXPECT_EQ(BigEndian64(p, 5), 16u);
  EXPECT_TRUE(std::equal(m.op_id.bytes.begin(), m.op_id.bytes.end(), p.begin() + 13));
  EXPECT_EQ(BigEndian64(p, 29), 0x0000123456789ABCULL);
  EXPECT_EQ(BigEndian32(p, 37), 5u);
  EXPECT_EQ(BigEndian64(p, 41), 0x8877665544332211ULL);
  EXPECT_EQ(p[49], 254u);
  // The same bytes as a Value's first 50, but for the content.
  Bytes value = EncodePayload(SystemMsg(SystemContent::kValue));
  PutBigEndian32(value, 37, 5);
  EXPECT_TRUE(std::equal(p.begin(), p.end(), value.begin()));
  Hmac mac(SystemKey());
  EXPECT_EQ(FrameLength(EncodeFrame(m, mac)), 50u + kMacSize);
}

TEST(WireLayout, Responses) {
  Hmac mac(ClientKey());
  // Write response: status, request id, op; no data. L = 48.
  ClientResponse w{.status = ResponseStatus::kInvalidSectorIndex,
                   .request_id = 0x0A0B0C0D0E0F1011ULL,
                   .op = ClientOp::kWrite};
  Bytes wp = EncodePayload(w);
  ASSERT_EQ(wp.size(), 16u);
  EXPECT_EQ(ToHex(wp),
            "00000002"
            "0a0b0c0d0e0f1011"
            "00000001");
  Frame wf = EncodeFrame(w, mac);
  ASSERT_EQ(wf.size(), 8u + 48u);
  EXPECT_EQ(FrameLength(wf), 48u);
  EXPECT_EQ(FrameLength(wf), kMinResponseFrameBody);

  // Read response: status, request id, op, 4096 bytes. L = 4144.
  ClientResponse r{.status = ResponseStatus::kOk,
                   .request_id = 42,
                   .op = ClientOp::kRead,
                   .data = PatternSector(4)};
  Bytes rp = EncodePayload(r);
  ASSERT_EQ(rp.size(), 4112u);
  EXPECT_EQ(BigEndian32(rp, 0), 0u);
  EXPECT_EQ(BigEndian64(rp, 4), 42u);
  EXPECT_EQ(BigEndian32(rp, 12), 0u);
  EXPECT_TRUE(SectorEquals(r.data, rp.data() + 16));
  Frame rf = EncodeFrame(r, mac);
  ASSERT_EQ(rf.size(), 8u + 4144u);
  EXPECT_EQ(FrameLength(rf), 4144u);

  // A failed read carries zeros, whatever data the caller left in the struct.
  r.status = ResponseStatus::kAuthFailure;
  Bytes fp = EncodePayload(r);
  ASSERT_EQ(fp.size(), 4112u);
  EXPECT_EQ(BigEndian32(fp, 0), 1u);
  EXPECT_TRUE(SectorEquals(ZeroSector(), fp.data() + 16));
  // An Ok read without data sends zeros.
  r.status = ResponseStatus::kOk;
  r.data = nullptr;
  EXPECT_TRUE(SectorEquals(ZeroSector(), EncodePayload(r).data() + 16));
}

// --- Round trips ----------------------------------------------------------------------------

TEST(WireRoundTrip, ClientCommands) {
  Hmac mac(ClientKey());
  for (const auto& c : {ReadCommand(), WriteCommand()}) {
    auto d = DecodeClientCommand(EncodePayload(c));
    ASSERT_TRUE(d.ok()) << d.status().ToString();
    ExpectSameCommand(c, d.value());

    // Through a whole frame, the way a node reads one.
    Frame f = EncodeFrame(c, mac);
    EXPECT_EQ(FrameLength(f), f.size() - 8);
    auto payload = VerifyFrameBody(BodyOf(f), mac);
    ASSERT_TRUE(payload.ok()) << payload.status().ToString();
    auto kind = PeekCommandKind(payload.value());
    ASSERT_TRUE(kind.ok());
    EXPECT_EQ(kind.value(), CommandKind::kClient);
    auto d2 = DecodeClientCommand(payload.value());
    ASSERT_TRUE(d2.ok()) << d2.status().ToString();
    ExpectSameCommand(c, d2.value());

    auto h = DecodeClientCommandHeader(payload.value());
    ASSERT_TRUE(h.ok());
    EXPECT_EQ(h->request_id, c.request_id);
    EXPECT_EQ(h->sector, c.sector);
    EXPECT_EQ(h->op, c.op);
  }
  // Extreme field values.
  ClientCommand edge{
      .request_id = 0, .sector = std::numeric_limits<std::uint64_t>::max(), .op = ClientOp::kRead};
  auto d = DecodeClientCommand(EncodePayload(edge));
  ASSERT_TRUE(d.ok());
  ExpectSameCommand(edge, d.value());
}

TEST(WireRoundTrip, SystemMessages) {
  Hmac mac(SystemKey());
  auto messages = AllSystemMessages();
  SystemMessage edge = SystemMsg(SystemContent::kValue);
  edge.sender = 1;
  edge.sector = std::numeric_limits<std::uint64_t>::max();
  edge.tag = {.ts = std::numeric_limits<std::uint64_t>::max(), .wr = 0};
  messages.push_back(edge);
  SystemMessage high = SystemMsg(SystemContent::kWriteProc);
  high.sender = 254;
  high.tag = {.ts = 0, .wr = 1};
  messages.push_back(high);
  SystemMessage tag_edge = SystemMsg(SystemContent::kTag);
  tag_edge.sender = 254;
  tag_edge.sector = std::numeric_limits<std::uint64_t>::max();
  tag_edge.tag = {.ts = std::numeric_limits<std::uint64_t>::max(), .wr = 255};
  messages.push_back(tag_edge);
  SystemMessage tag_zero = SystemMsg(SystemContent::kTag);
  tag_zero.tag = {};  // a sector never written
  messages.push_back(tag_zero);
  for (const auto& m : messages) {
    SCOPED_TRACE(SystemContentName(m.content));
    auto d = DecodeSystemMessage(EncodePayload(m));
    ASSERT_TRUE(d.ok()) << d.status().ToString();
    ExpectSameSystem(m, d.value());

    Frame f = EncodeFrame(m, mac);
    EXPECT_EQ(FrameLength(f), f.size() - 8);
    auto payload = VerifyFrameBody(BodyOf(f), mac);
    ASSERT_TRUE(payload.ok()) << payload.status().ToString();
    auto kind = PeekCommandKind(payload.value());
    ASSERT_TRUE(kind.ok());
    EXPECT_EQ(kind.value(), CommandKind::kSystem);
    auto d2 = DecodeSystemMessage(payload.value());
    ASSERT_TRUE(d2.ok()) << d2.status().ToString();
    ExpectSameSystem(m, d2.value());
  }
}

TEST(WireRoundTrip, Responses) {
  Hmac mac(ClientKey());
  for (const auto& r : AllResponses()) {
    auto d = DecodeClientResponse(EncodePayload(r));
    ASSERT_TRUE(d.ok()) << d.status().ToString();
    ExpectSameResponse(r, d.value());

    Frame f = EncodeFrame(r, mac);
    EXPECT_EQ(FrameLength(f), f.size() - 8);
    auto payload = VerifyFrameBody(BodyOf(f), mac);
    ASSERT_TRUE(payload.ok()) << payload.status().ToString();
    auto d2 = DecodeClientResponse(payload.value());
    ASSERT_TRUE(d2.ok()) << d2.status().ToString();
    ExpectSameResponse(r, d2.value());
  }
}

TEST(WireRoundTrip, SystemContentNames) {
  EXPECT_STREQ(SystemContentName(SystemContent::kReadProc), "ReadProc");
  EXPECT_STREQ(SystemContentName(SystemContent::kValue), "Value");
  EXPECT_STREQ(SystemContentName(SystemContent::kWriteProc), "WriteProc");
  EXPECT_STREQ(SystemContentName(SystemContent::kAck), "Ack");
  EXPECT_STREQ(SystemContentName(SystemContent::kReadTag), "ReadTag");
  EXPECT_STREQ(SystemContentName(SystemContent::kTag), "Tag");
  EXPECT_STREQ(SystemContentName(static_cast<SystemContent>(6)), "?");
}

// --- Frame length ---------------------------------------------------------------------------

TEST(WireFrameLength, Bounds) {
  // A sync Hello (14-byte payload, sync_wire.h) is the smallest frame a node accepts; a
  // response is at least 16 bytes.
  EXPECT_EQ(kMinFrameBody, 46u);
  EXPECT_EQ(kMinResponseFrameBody, 48u);
  // Client connections accept the largest extent command (a write of 256 sectors: a 28-byte
  // header and 1 MiB); peer links the largest system batch (256 KiB, larger than the
  // largest sync message, an EntriesReply of 4096 entries of 69662 bytes, sync_wire.h);
  // clients what a response can be (an extent read of 256 sectors: a 20-byte header, 256
  // outcomes, 1 MiB).
  EXPECT_EQ(kMaxFrameBody, 28u + 256u * 4096u + 32u);
  EXPECT_EQ(kMaxPeerFrameBody, 256u * 1024u + 32u);
  EXPECT_GT(kMaxPeerFrameBody, 69662u + 32u);
  EXPECT_EQ(kMaxResponseFrameBody, 20u + 256u + 256u * 4096u + 32u);
  EXPECT_FALSE(DecodeLength(kMaxPeerFrameBody + 1, kMaxPeerFrameBody).ok());
  EXPECT_TRUE(DecodeLength(kMaxPeerFrameBody + 1).ok());

  auto min = DecodeLength(kMinFrameBody);
  ASSERT_TRUE(min.ok());
  EXPECT_EQ(min.value(), kMinFrameBody);
  auto max = DecodeLength(kMaxFrameBody);
  ASSERT_TRUE(max.ok());
  EXPECT_EQ(max.value(), kMaxFrameBody);
  for (std::uint64_t l : {std::uint64_t{56}, std::uint64_t{4144}, std::uint64_t{4152}}) {
    auto r = DecodeLength(l);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.value(), l);
  }

  for (std::uint64_t bad :
       {std::uint64_t{0}, std::uint64_t{1}, std::uint64_t{32}, kMinFrameBody - 1, kMaxFrameBody + 1,
        std::uint64_t{1} << 32, (std::uint64_t{1} << 32) + 56, (std::uint64_t{1} << 63) + 56,
        std::uint64_t{1} << 63, std::numeric_limits<std::uint64_t>::max()}) {
    SCOPED_TRACE(bad);
    auto r = DecodeLength(bad);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
  }
}

TEST(WireFrameLength, ResponseBounds) {
  auto decode = [](std::uint64_t l) {
    std::array<std::uint8_t, 8> prefix{};
    for (std::size_t i = 0; i < 8; ++i) prefix[i] = static_cast<std::uint8_t>(l >> (56 - 8 * i));
    return DecodeResponseFrameLength(prefix);
  };
  for (std::uint64_t good :
       {kMinResponseFrameBody, std::uint64_t{4112 + 32}, kMaxResponseFrameBody}) {
    auto r = decode(good);
    ASSERT_TRUE(r.ok()) << good;
    EXPECT_EQ(r.value(), good);
  }
  // Anything above the largest response is refused by a client before it allocates.
  for (std::uint64_t bad : {std::uint64_t{0}, kMinFrameBody, kMinResponseFrameBody - 1,
                            kMaxResponseFrameBody + 1, std::numeric_limits<std::uint64_t>::max()}) {
    auto r = decode(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
  }
  EXPECT_FALSE(DecodeLength(kMaxResponseFrameBody + 1).ok());
}

// --- Extents (docs/PROTOCOL.md, "Extents") --------------------------------------------------

ClientCommand ExtentCommand(ClientOp op, std::uint32_t count) {
  ClientCommand c;
  c.request_id = 0x0102030405060708ULL;
  c.sector = 1000;
  c.op = op;
  c.count = count;
  if (op == ClientOp::kWriteExtent) {
    for (std::uint32_t i = 0; i < count; ++i) {
      auto d = std::make_shared<SectorData>();
      d->fill(static_cast<std::uint8_t>(i + 1));
      c.sectors.push_back(d);
    }
  }
  return c;
}

TEST(WireExtents, CommandLayoutAndRoundTrip) {
  for (ClientOp op : {ClientOp::kReadExtent, ClientOp::kWriteExtent, ClientOp::kWriteZeros}) {
    for (std::uint32_t count : {1u, 3u, kMaxExtentSectors}) {
      SCOPED_TRACE(std::to_string(static_cast<int>(op)) + " x" + std::to_string(count));
      ClientCommand c = ExtentCommand(op, count);
      Bytes p = EncodePayload(c);
      const std::size_t data = op == ClientOp::kWriteExtent ? count * kSectorSize : 0;
      ASSERT_EQ(p.size(), kExtentCommandHeaderSize + data);
      EXPECT_EQ(BigEndian32(p, 0), 0u);  // RegisterCommand::Client, as every atdd command
      EXPECT_EQ(BigEndian64(p, 4), c.request_id);
      EXPECT_EQ(BigEndian64(p, 12), 1000u);
      EXPECT_EQ(BigEndian32(p, 20), static_cast<std::uint32_t>(op));
      EXPECT_EQ(BigEndian32(p, 24), count);
      auto d = DecodeClientCommand(p);
      ASSERT_TRUE(d.ok()) << d.status().ToString();
      EXPECT_EQ(d->op, op);
      EXPECT_EQ(d->count, count);
      ASSERT_EQ(d->sectors.size(), op == ClientOp::kWriteExtent ? count : 0u);
      for (std::uint32_t i = 0; i < d->sectors.size(); ++i) {
        EXPECT_EQ(d->sectors[i]->at(0), static_cast<std::uint8_t>(i + 1));
      }
    }
  }
  // The largest command fills a client connection's frame exactly.
  Hmac mac(ClientKey());
  Frame f = EncodeFrame(ExtentCommand(ClientOp::kWriteExtent, kMaxExtentSectors), mac);
  EXPECT_EQ(FrameLength(f), kMaxFrameBody);
}

TEST(WireExtents, BadCountsAndSizesAreRejected) {
  for (std::uint32_t count : {0u, kMaxExtentSectors + 1, 0xFFFFFFFFu}) {
    SCOPED_TRACE(count);
    Bytes p = EncodePayload(ExtentCommand(ClientOp::kReadExtent, 1));
    PutBigEndian32(p, 24, count);
    auto d = DecodeClientCommand(p);
    ASSERT_FALSE(d.ok());
    EXPECT_EQ(d.status().code(), StatusCode::kCorruption);
  }
  // A write extent whose data is one sector short or long, a read extent with data, and a
  // command cut inside its count.
  Bytes w = EncodePayload(ExtentCommand(ClientOp::kWriteExtent, 3));
  Bytes shorter(w.begin(), w.end() - kSectorSize);
  EXPECT_FALSE(DecodeClientCommand(shorter).ok());
  Bytes longer = w;
  longer.insert(longer.end(), kSectorSize, 0);
  EXPECT_FALSE(DecodeClientCommand(longer).ok());
  Bytes r = EncodePayload(ExtentCommand(ClientOp::kReadExtent, 3));
  r.insert(r.end(), kSectorSize, 0);
  EXPECT_FALSE(DecodeClientCommand(r).ok());
  for (std::size_t cut = 24; cut < kExtentCommandHeaderSize; ++cut) {
    EXPECT_FALSE(DecodeClientCommand(std::span<const std::uint8_t>(w).first(cut)).ok()) << cut;
  }
}

TEST(WireExtents, ResponseRoundTripCarriesDataOnlyForDoneSectors) {
  ClientResponse resp{ResponseStatus::kOk, 77, ClientOp::kReadExtent, {}, {}};
  resp.outcomes = {ExtentOutcome::kDone, ExtentOutcome::kNotDone, ExtentOutcome::kDone};
  for (int i = 0; i < 3; ++i) {
    auto d = std::make_shared<SectorData>();
    d->fill(static_cast<std::uint8_t>(0xA0 + i));
    resp.sectors.push_back(i == 1 ? nullptr : d);
  }
  Bytes p = EncodePayload(resp);
  EXPECT_EQ(p.size(), kExtentResponseHeaderSize + 3 + 2 * kSectorSize);
  auto d = DecodeClientResponse(p);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  ASSERT_EQ(d->outcomes, resp.outcomes);
  ASSERT_EQ(d->sectors.size(), 3u);
  EXPECT_EQ(d->sectors[0]->at(0), 0xA0);
  EXPECT_EQ(d->sectors[1], nullptr);
  EXPECT_EQ(d->sectors[2]->at(0), 0xA2);
  // A write extent's response: outcomes only.
  ClientResponse w{ResponseStatus::kOk, 78, ClientOp::kWriteZeros, {}, {}};
  w.outcomes.assign(kMaxExtentSectors, ExtentOutcome::kDone);
  auto dw = DecodeClientResponse(EncodePayload(w));
  ASSERT_TRUE(dw.ok());
  EXPECT_EQ(dw->outcomes.size(), kMaxExtentSectors);
  // The largest response is what a client accepts, exactly.
  ClientResponse big{ResponseStatus::kOk, 79, ClientOp::kReadExtent, {}, {}};
  big.outcomes.assign(kMaxExtentSectors, ExtentOutcome::kDone);
  big.sectors.assign(kMaxExtentSectors, ZeroSector());
  Hmac mac(ClientKey());
  Frame bf = EncodeFrame(big, mac);
  EXPECT_EQ(bf.size() - kFrameLengthSize, kMaxResponseFrameBody);
  auto bl = DecodeResponseFrameLength(
      std::span<const std::uint8_t, kFrameLengthSize>(bf.data(), kFrameLengthSize));
  ASSERT_TRUE(bl.ok()) << bl.status().ToString();
  // An unknown outcome, outcomes with an error status, and none with kOk are malformed.
  Bytes bad = EncodePayload(w);
  bad[kExtentResponseHeaderSize] = 2;
  EXPECT_FALSE(DecodeClientResponse(bad).ok());
  ClientResponse invalid{ResponseStatus::kInvalidSectorIndex, 80, ClientOp::kReadExtent, {}, {}};
  Bytes inv = EncodePayload(invalid);
  EXPECT_TRUE(DecodeClientResponse(inv).ok());
  PutBigEndian32(inv, kExtentResponseHeaderSize - 4, 1);
  inv.push_back(0);
  EXPECT_FALSE(DecodeClientResponse(inv).ok());
  ClientResponse none{ResponseStatus::kOk, 81, ClientOp::kWriteExtent, {}, {}};
  EXPECT_FALSE(DecodeClientResponse(EncodePayload(none)).ok());
}

// --- System batches (docs/PROTOCOL.md, "Extension: system batches")
// ------------------------------------

TEST(WireBatches, LayoutAndRoundTripThroughAFrame) {
  const std::vector<SystemMessage> msgs = AllSystemMessages();
  Bytes p = EncodeBatchPayload(msgs);
  EXPECT_EQ(BigEndian32(p, 0), kSystemBatchPrefix);
  EXPECT_EQ(BigEndian32(p, 4), msgs.size());
  std::size_t off = 8;
  for (const SystemMessage& m : msgs) {
    SCOPED_TRACE(SystemContentName(m.content));
    const Bytes alone = EncodePayload(m);
    ASSERT_EQ(BigEndian32(p, off), alone.size());
    EXPECT_EQ(alone.size(), SystemPayloadSize(m));
    EXPECT_TRUE(std::equal(alone.begin(), alone.end(), p.begin() + off + 4));
    off += 4 + alone.size();
  }
  EXPECT_EQ(off, p.size());

  Hmac mac(SystemKey());
  Frame f = EncodeBatchFrame(msgs, mac);
  EXPECT_EQ(FrameLength(f), f.size() - 8);
  auto l = DecodeFrameLength(std::span<const std::uint8_t, kFrameLengthSize>(f.data(), 8),
                             kMaxPeerFrameBody);
  ASSERT_TRUE(l.ok()) << l.status().ToString();
  auto payload = VerifyFrameBody(BodyOf(f), mac);
  ASSERT_TRUE(payload.ok()) << payload.status().ToString();
  EXPECT_EQ(PeekCommandKind(*payload).value(), CommandKind::kSystemBatch);
  auto d = DecodeSystemBatch(*payload);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  ASSERT_EQ(d->size(), msgs.size());
  for (std::size_t i = 0; i < msgs.size(); ++i) ExpectSameSystem(msgs[i], (*d)[i]);
  // Not a lone system message, and a lone one is not a batch.
  EXPECT_FALSE(DecodeSystemMessage(p).ok());
  EXPECT_FALSE(DecodeSystemBatch(EncodePayload(msgs[0])).ok());
}

TEST(WireBatches, TheLargestBatchTheOutboxMakesFitsAPeerFrame) {
  // 64 KiB of WriteProcs (daemon/core/peer_outbox.h flushes before that) is far inside the
  // decoder's bound, which a peer link accepts.
  std::vector<SystemMessage> msgs(16, SystemMsg(SystemContent::kWriteProc));
  Bytes p = EncodeBatchPayload(msgs);
  EXPECT_LE(p.size(), kMaxBatchPayload);
  EXPECT_TRUE(DecodeSystemBatch(p).ok());
  EXPECT_GE(kMaxPeerFrameBody, kMaxBatchPayload + kMacSize);
  // kMaxBatchMessages small members fit as well.
  std::vector<SystemMessage> acks(kMaxBatchMessages, SystemMsg(SystemContent::kAck));
  Bytes many = EncodeBatchPayload(acks);
  EXPECT_LE(many.size(), kMaxBatchPayload);
  auto d = DecodeSystemBatch(many);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->size(), kMaxBatchMessages);
}

TEST(WireBatches, MalformedBatchesAreRejected) {
  const Bytes good = EncodeBatchPayload(AllSystemMessages());
  auto expect_bad = [](const Bytes& b, const char* why) {
    auto d = DecodeSystemBatch(b);
    ASSERT_FALSE(d.ok()) << why;
    EXPECT_EQ(d.status().code(), StatusCode::kCorruption) << why;
  };
  Bytes zero = {0, 0, 0, 3, 0, 0, 0, 0};
  expect_bad(zero, "no members");
  Bytes too_many = good;
  PutBigEndian32(too_many, 4, static_cast<std::uint32_t>(kMaxBatchMessages + 1));
  expect_bad(too_many, "more members than allowed");
  Bytes more_than_bytes = good;
  PutBigEndian32(more_than_bytes, 4, 1000);
  expect_bad(more_than_bytes, "a count the bytes cannot hold");
  Bytes fewer = good;
  PutBigEndian32(fewer, 4, static_cast<std::uint32_t>(AllSystemMessages().size() - 1));
  expect_bad(fewer, "a count short of the members (trailing bytes)");
  Bytes long_member = good;
  PutBigEndian32(long_member, 8, static_cast<std::uint32_t>(kMaxPayloadSize + 1));
  expect_bad(long_member, "a member longer than any system message");
  Bytes short_member = good;
  PutBigEndian32(short_member, 8, BigEndian32(good, 8) - 1);
  expect_bad(short_member, "a member length one short");
  Bytes nested = good;
  PutBigEndian32(nested, 12, kSystemBatchPrefix);  // the first member's variant
  expect_bad(nested, "a member that is not a system message");
  SystemMessage other = SystemMsg(SystemContent::kAck);
  other.sender = static_cast<Rank>(SystemMsg(SystemContent::kAck).sender + 1);
  expect_bad(EncodeBatchPayload(std::vector{SystemMsg(SystemContent::kAck), other}),
             "members from two senders");
  Bytes huge(kMaxBatchPayload + 1, 0);
  PutBigEndian32(huge, 0, kSystemBatchPrefix);
  PutBigEndian32(huge, 4, 2);
  expect_bad(huge, "larger than any batch");
}

// --- Malformed payloads ---------------------------------------------------------------------

TEST(WireMalformed, EveryTruncationIsRejected) {
  for (const auto& s : AllSamples()) {
    SCOPED_TRACE(s.name);
    ASSERT_TRUE(DecodeWith(s.decoder, s.payload).ok());
    for (std::size_t n = 0; n < s.payload.size(); ++n) {
      // A fresh copy of exactly n bytes, so ASan sees any read past the end.
      Bytes cut(s.payload.begin(), s.payload.begin() + static_cast<std::ptrdiff_t>(n));
      Status st = DecodeWith(s.decoder, cut);
      ASSERT_FALSE(st.ok()) << "accepted a prefix of " << n << " bytes";
      EXPECT_EQ(st.code(), StatusCode::kCorruption);
      if (s.decoder != Decoder::kResponse) {
        auto kind = PeekCommandKind(cut);
        EXPECT_EQ(kind.ok(), n >= 4) << n;
      }
    }
  }
}

TEST(WireMalformed, HeaderDecoderNeedsOnlyTheHeader) {
  for (const auto& c : {ReadCommand(), WriteCommand()}) {
    Bytes p = EncodePayload(c);
    for (std::size_t n = 0; n <= p.size(); ++n) {
      Bytes cut(p.begin(), p.begin() + static_cast<std::ptrdiff_t>(n));
      auto h = DecodeClientCommandHeader(cut);
      if (n < 24) {
        ASSERT_FALSE(h.ok()) << n;
        EXPECT_EQ(h.status().code(), StatusCode::kCorruption);
      } else {
        ASSERT_TRUE(h.ok()) << n << ": " << h.status().ToString();
        EXPECT_EQ(h->request_id, c.request_id);
        EXPECT_EQ(h->sector, c.sector);
        EXPECT_EQ(h->op, c.op);
      }
    }
  }
  // A system payload is not a client command header.
  auto h = DecodeClientCommandHeader(EncodePayload(SystemMsg(SystemContent::kAck)));
  EXPECT_FALSE(h.ok());
}

TEST(WireMalformed, TrailingBytesAreRejected) {
  for (const auto& s : AllSamples()) {
    SCOPED_TRACE(s.name);
    for (std::size_t extra : {std::size_t{1}, std::size_t{4}, kSectorSize}) {
      Bytes longer = s.payload;
      longer.resize(longer.size() + extra, 0);
      Status st = DecodeWith(s.decoder, longer);
      ASSERT_FALSE(st.ok()) << extra << " extra bytes accepted";
      EXPECT_EQ(st.code(), StatusCode::kCorruption);
    }
  }
}

TEST(WireMalformed, UnknownCommandVariant) {
  // (2 and 3 are atomdisk's sync and batch extensions, common/sync_wire.h and common/wire.h:
  // known variants.)
  for (std::uint32_t v : {4u, 0x100u, 0x03000000u, 0xFFFFFFFFu}) {
    SCOPED_TRACE(v);
    Bytes client = EncodePayload(ReadCommand());
    PutBigEndian32(client, 0, v);
    EXPECT_FALSE(PeekCommandKind(client).ok());
    EXPECT_FALSE(DecodeClientCommand(client).ok());
    EXPECT_FALSE(DecodeClientCommandHeader(client).ok());
    Bytes system = EncodePayload(SystemMsg(SystemContent::kAck));
    PutBigEndian32(system, 0, v);
    EXPECT_FALSE(PeekCommandKind(system).ok());
    EXPECT_FALSE(DecodeSystemMessage(system).ok());
  }
  // Each decoder refuses the other kind.
  EXPECT_FALSE(DecodeClientCommand(EncodePayload(SystemMsg(SystemContent::kAck))).ok());
  EXPECT_FALSE(DecodeSystemMessage(EncodePayload(ReadCommand())).ok());
  Bytes as_system = EncodePayload(ReadCommand());
  PutBigEndian32(as_system, 0, 1);
  EXPECT_FALSE(DecodeClientCommand(as_system).ok());
  EXPECT_FALSE(PeekCommandKind(Bytes{}).ok());
  EXPECT_FALSE(PeekCommandKind(Bytes{0, 0, 0}).ok());
  EXPECT_FALSE(PeekCommandKind(Bytes{0, 0, 2}).ok());
  auto sync = PeekCommandKind(Bytes{0, 0, 0, 2});
  ASSERT_TRUE(sync.ok());
  EXPECT_EQ(sync.value(), CommandKind::kSync);
  // A sync prefix does not make a payload a client command or an atdd system message.
  Bytes as_sync = EncodePayload(SystemMsg(SystemContent::kAck));
  PutBigEndian32(as_sync, 0, 2);
  EXPECT_FALSE(DecodeSystemMessage(as_sync).ok());
  EXPECT_FALSE(DecodeClientCommand(as_sync).ok());
}

TEST(WireMalformed, UnknownClientOp) {
  for (const auto& c : {ReadCommand(), WriteCommand()}) {
    // (2 and 3 are atomdisk's kInfo and kScrub extensions, 4..6 its extents: known ops.)
    for (std::uint32_t op : {7u, 8u, 0x80000000u, 0xFFFFFFFFu}) {
      SCOPED_TRACE(op);
      Bytes p = EncodePayload(c);
      PutBigEndian32(p, 20, op);
      auto d = DecodeClientCommand(p);
      ASSERT_FALSE(d.ok());
      EXPECT_EQ(d.status().code(), StatusCode::kCorruption);
      EXPECT_FALSE(DecodeClientCommandHeader(p).ok());
    }
  }
  // A read header followed by write data, and a write header without its data.
  Bytes p = EncodePayload(WriteCommand());
  PutBigEndian32(p, 20, 0);
  EXPECT_FALSE(DecodeClientCommand(p).ok());
  p = EncodePayload(ReadCommand());
  PutBigEndian32(p, 20, 1);
  EXPECT_FALSE(DecodeClientCommand(p).ok());
}

TEST(WireLayout, ScrubCommandAndResponse) {
  ClientCommand c{.request_id = 7, .sector = 99, .op = ClientOp::kScrub};
  Bytes cp = EncodePayload(c);
  ASSERT_EQ(cp.size(), 24u);
  EXPECT_EQ(BigEndian32(cp, 20), 3u);
  auto dc = DecodeClientCommand(cp);
  ASSERT_TRUE(dc.ok()) << dc.status().ToString();
  ExpectSameCommand(c, dc.value());
  Bytes with_data = cp;
  with_data.resize(24 + kSectorSize);
  EXPECT_FALSE(DecodeClientCommand(with_data).ok());

  ClientResponse r{.status = ResponseStatus::kOk, .request_id = 7, .op = ClientOp::kScrub};
  r.info = R"({"started":false,"error":"busy"})";
  Bytes rp = EncodePayload(r);
  ASSERT_EQ(rp.size(), 16u + 4 + r.info.size());
  EXPECT_EQ(BigEndian32(rp, 12), 3u);
  EXPECT_EQ(BigEndian32(rp, 16), r.info.size());
  auto dr = DecodeClientResponse(rp);
  ASSERT_TRUE(dr.ok()) << dr.status().ToString();
  EXPECT_EQ(dr->op, ClientOp::kScrub);
  EXPECT_EQ(dr->info, r.info);
  EXPECT_EQ(dr->data, nullptr);
  // A length above kMaxInfoSize is refused even with the bytes present.
  Bytes huge = EncodePayload(ClientResponse{.status = ResponseStatus::kOk,
                                            .request_id = 7,
                                            .op = ClientOp::kScrub,
                                            .info = std::string(kMaxInfoSize, 'x')});
  PutBigEndian32(huge, 16, kMaxInfoSize + 1);
  huge.push_back('x');
  EXPECT_FALSE(DecodeClientResponse(huge).ok());
}

TEST(WireMalformed, UnknownSystemContent) {
  for (const auto& m : AllSystemMessages()) {
    // (4 and 5 are atomdisk's ReadTag and Tag, known contents.)
    for (std::uint32_t content : {6u, 7u, 0x100u, 0x80000004u, 0xFFFFFFFFu}) {
      SCOPED_TRACE(content);
      Bytes p = EncodePayload(m);
      PutBigEndian32(p, 37, content);
      auto d = DecodeSystemMessage(p);
      ASSERT_FALSE(d.ok());
      EXPECT_EQ(d.status().code(), StatusCode::kCorruption);
    }
  }
  // ReadProc/Ack header with a value after it; Value/WriteProc header without one.
  Bytes p = EncodePayload(SystemMsg(SystemContent::kValue));
  PutBigEndian32(p, 37, 0);
  EXPECT_FALSE(DecodeSystemMessage(p).ok());
  PutBigEndian32(p, 37, 3);
  EXPECT_FALSE(DecodeSystemMessage(p).ok());
  p = EncodePayload(SystemMsg(SystemContent::kAck));
  PutBigEndian32(p, 37, 1);
  EXPECT_FALSE(DecodeSystemMessage(p).ok());
  PutBigEndian32(p, 37, 2);
  EXPECT_FALSE(DecodeSystemMessage(p).ok());
  // A Tag header without its tag; a Value or WriteProc with the data of a Tag only; a Tag
  // with a Value's data after it; ReadProc/ReadTag/Ack headers with a tag after them.
  PutBigEndian32(p, 37, 5);
  EXPECT_FALSE(DecodeSystemMessage(p).ok());
  p = EncodePayload(SystemMsg(SystemContent::kTag));
  for (std::uint32_t content : {0u, 1u, 2u, 3u, 4u}) {
    SCOPED_TRACE(content);
    PutBigEndian32(p, 37, content);
    auto d = DecodeSystemMessage(p);
    ASSERT_FALSE(d.ok());
    EXPECT_EQ(d.status().code(), StatusCode::kCorruption);
  }
  for (auto content : {SystemContent::kValue, SystemContent::kWriteProc}) {
    p = EncodePayload(SystemMsg(content));
    PutBigEndian32(p, 37, 5);
    EXPECT_FALSE(DecodeSystemMessage(p).ok()) << SystemContentName(content);
    PutBigEndian32(p, 37, 4);
    EXPECT_FALSE(DecodeSystemMessage(p).ok()) << SystemContentName(content);
  }
}

TEST(WireMalformed, SenderRankZero) {
  for (const auto& m : AllSystemMessages()) {
    Bytes p = EncodePayload(m);
    p[4] = 0;
    EXPECT_FALSE(DecodeSystemMessage(p).ok()) << SystemContentName(m.content);
  }
}

TEST(WireMalformed, UnknownResponseStatusOrOp) {
  for (const auto& r : AllResponses()) {
    for (std::uint32_t status : {3u, 4u, 0xFFFFFFFFu}) {
      Bytes p = EncodePayload(r);
      PutBigEndian32(p, 0, status);
      auto d = DecodeClientResponse(p);
      ASSERT_FALSE(d.ok()) << status;
      EXPECT_EQ(d.status().code(), StatusCode::kCorruption);
    }
    for (std::uint32_t op : {3u, 0xFFFFFFFFu}) {
      Bytes p = EncodePayload(r);
      PutBigEndian32(p, 12, op);
      EXPECT_FALSE(DecodeClientResponse(p).ok()) << op;
    }
  }
  // A write response claiming to be a read response, and the reverse.
  Bytes p = EncodePayload(ClientResponse{.op = ClientOp::kWrite});
  PutBigEndian32(p, 12, 0);
  EXPECT_FALSE(DecodeClientResponse(p).ok());
  p = EncodePayload(ClientResponse{.op = ClientOp::kRead});
  PutBigEndian32(p, 12, 1);
  EXPECT_FALSE(DecodeClientResponse(p).ok());
}

TEST(WireMalformed, UuidLengthOtherThan16) {
  for (const auto& m : AllSystemMessages()) {
    SCOPED_TRACE(SystemContentName(m.content));
    for (std::uint64_t len :
         {std::uint64_t{0}, std::uint64_t{1}, std::uint64_t{15}, std::uint64_t{17},
          std::uint64_t{32}, (std::uint64_t{1} << 32) | 16, (std::uint64_t{1} << 63) | 16,
          std::numeric_limits<std::uint64_t>::max()}) {
      SCOPED_TRACE(len);
      Bytes p = EncodePayload(m);
      PutBigEndian64(p, 5, len);
      auto d = DecodeSystemMessage(p);
      ASSERT_FALSE(d.ok());
      EXPECT_EQ(d.status().code(), StatusCode::kCorruption);
    }
    // A 15-byte UUID honestly encoded as such (the frame is one byte shorter).
    Bytes p = EncodePayload(m);
    PutBigEndian64(p, 5, 15);
    p.erase(p.begin() + 13);
    EXPECT_FALSE(DecodeSystemMessage(p).ok());
  }
}

// Decoding any bytes must return an error or a value that re-encodes to the same bytes.
void CheckAnyBytes(std::span<const std::uint8_t> in, Hmac& client_mac) {
  if (auto c = DecodeClientCommand(in); c.ok()) {
    ASSERT_EQ(EncodePayload(c.value()), Bytes(in.begin(), in.end()));
    ASSERT_TRUE(DecodeClientCommandHeader(in).ok());
    ASSERT_EQ(PeekCommandKind(in).value(), CommandKind::kClient);
  } else {
    ASSERT_EQ(c.status().code(), StatusCode::kCorruption);
  }
  if (auto h = DecodeClientCommandHeader(in); h.ok()) {
    ASSERT_GE(in.size(), 24u);
    ASSERT_EQ(h->data, nullptr);
  }
  if (auto m = DecodeSystemMessage(in); m.ok()) {
    ASSERT_EQ(EncodePayload(m.value()), Bytes(in.begin(), in.end()));
    ASSERT_NE(m->sender, 0);
    ASSERT_EQ(PeekCommandKind(in).value(), CommandKind::kSystem);
  } else {
    ASSERT_EQ(m.status().code(), StatusCode::kCorruption);
  }
  if (auto b = DecodeSystemBatch(in); b.ok()) {
    ASSERT_FALSE(b->empty());
    ASSERT_EQ(EncodeBatchPayload(b.value()), Bytes(in.begin(), in.end()));
    ASSERT_EQ(PeekCommandKind(in).value(), CommandKind::kSystemBatch);
  } else {
    ASSERT_EQ(b.status().code(), StatusCode::kCorruption);
  }
  if (auto r = DecodeClientResponse(in); r.ok()) {
    // A failed read's data is not echoed by the encoder (it sends zeros), so compare headers.
    Bytes again = EncodePayload(r.value());
    ASSERT_EQ(again.size(), in.size());
    if (r->status == ResponseStatus::kOk || r->op == ClientOp::kWrite) {
      ASSERT_EQ(again, Bytes(in.begin(), in.end()));
    } else {
      ASSERT_TRUE(std::equal(again.begin(), again.begin() + 16, in.begin()));
    }
  } else {
    ASSERT_EQ(r.status().code(), StatusCode::kCorruption);
  }
  if (auto k = PeekCommandKind(in); !k.ok()) {
    ASSERT_EQ(k.status().code(), StatusCode::kCorruption);
  }
  if (in.size() >= kFrameLengthSize) {
    auto l = DecodeFrameLength(std::span<const std::uint8_t, kFrameLengthSize>(in.data(), 8));
    if (l.ok()) {
      ASSERT_GE(l.value(), kMinFrameBody);
      ASSERT_LE(l.value(), kMaxFrameBody);
    }
  }
  auto v = VerifyFrameBody(in, client_mac);
  if (v.ok()) {
    ASSERT_EQ(v->size(), in.size() - kMacSize);  // only if someone forged a tag...
  } else {
    ASSERT_EQ(v.status().code(),
              in.size() < kMacSize ? StatusCode::kCorruption : StatusCode::kAuthFailure);
  }
}

TEST(WireFuzz, RandomBytes) {
  std::mt19937_64 rng(0x5EED'A70D'D15CULL);
  std::uniform_int_distribution<std::size_t> len_dist(0, 5000);
  std::uniform_int_distribution<int> byte_dist(0, 255);
  Hmac mac(ClientKey());
  for (int i = 0; i < 20000; ++i) {
    Bytes in(len_dist(rng));
    for (auto& b : in) b = static_cast<std::uint8_t>(byte_dist(rng));
    // Steer inputs towards each variant (0, 1 and 3; 2 is fuzzed in sync_wire_test.cc) so
    // decoders get past the first u32.
    if (in.size() >= 4 && i % 4 != 2) {
      PutBigEndian32(in, 0, static_cast<std::uint32_t>(i % 4));
    }
    ASSERT_NO_FATAL_FAILURE(CheckAnyBytes(in, mac))
        << "input " << i << ", " << in.size() << " bytes";
  }
}

TEST(WireFuzz, MutatedValidPayloads) {
  std::mt19937_64 rng(20260101);
  auto samples = AllSamples();
  Hmac mac(ClientKey());
  int accepted = 0;
  for (int i = 0; i < 20000; ++i) {
    const Sample& s = samples[static_cast<std::size_t>(i) % samples.size()];
    Bytes in = s.payload;
    switch (rng() % 4) {
      case 0: {  // flip a few bits
        int flips = 1 + static_cast<int>(rng() % 4);
        for (int f = 0; f < flips; ++f)
          in[rng() % in.size()] ^= static_cast<std::uint8_t>(1u << (rng() % 8));
        break;
      }
      case 1:  // truncate
        in.resize(rng() % in.size());
        break;
      case 2: {  // overwrite a header byte (the first 50 bytes hold every header field)
        in[rng() % std::min<std::size_t>(in.size(), 50)] = static_cast<std::uint8_t>(rng());
        break;
      }
      case 3: {  // grow by a few bytes
        in.resize(in.size() + 1 + rng() % 8, static_cast<std::uint8_t>(rng()));
        break;
      }
    }
    if (DecodeWith(s.decoder, in).ok()) ++accepted;
    ASSERT_NO_FATAL_FAILURE(CheckAnyBytes(in, mac)) << "mutation " << i << " of " << s.name;
  }
  // Bit flips in request ids, sectors and data still decode; the mix must exercise both paths.
  EXPECT_GT(accepted, 0);
}

// --- Authentication -------------------------------------------------------------------------

TEST(WireAuth, WrongKeyIsAuthFailure) {
  Hmac client(ClientKey());
  Bytes other_key = ClientKey();
  other_key[31] ^= 1;
  Hmac other(other_key);
  Hmac system(SystemKey());
  for (const auto& c : {ReadCommand(), WriteCommand()}) {
    Frame f = EncodeFrame(c, client);
    ASSERT_TRUE(VerifyFrameBody(BodyOf(f), client).ok());
    for (Hmac* wrong : {&other, &system}) {
      auto v = VerifyFrameBody(BodyOf(f), *wrong);
      ASSERT_FALSE(v.ok());
      EXPECT_EQ(v.status().code(), StatusCode::kAuthFailure);
    }
  }
  Frame sf = EncodeFrame(SystemMsg(SystemContent::kValue), system);
  ASSERT_TRUE(VerifyFrameBody(BodyOf(sf), system).ok());
  EXPECT_EQ(VerifyFrameBody(BodyOf(sf), client).status().code(), StatusCode::kAuthFailure);
}

TEST(WireAuth, EveryFlippedBitIsAuthFailure) {
  Hmac mac(ClientKey());
  Frame f = EncodeFrame(ReadCommand(), mac);
  Bytes body(f.begin() + 8, f.end());
  ASSERT_EQ(body.size(), 56u);
  // Every bit of the payload (24 bytes) and of the tag (32 bytes).
  for (std::size_t byte = 0; byte < body.size(); ++byte) {
    for (int bit = 0; bit < 8; ++bit) {
      Bytes bad = body;
      bad[byte] ^= static_cast<std::uint8_t>(1u << bit);
      auto v = VerifyFrameBody(bad, mac);
      ASSERT_FALSE(v.ok()) << "byte " << byte << " bit " << bit;
      EXPECT_EQ(v.status().code(), StatusCode::kAuthFailure);
    }
  }
  // A flip deep inside a write's data, and in a system frame.
  Frame w = EncodeFrame(WriteCommand(), mac);
  w[8 + 24 + 2000] ^= 0x10;
  EXPECT_EQ(VerifyFrameBody(BodyOf(w), mac).status().code(), StatusCode::kAuthFailure);
  Hmac sys(SystemKey());
  Frame s = EncodeFrame(SystemMsg(SystemContent::kWriteProc), sys);
  s[s.size() - 1] ^= 0x80;
  EXPECT_EQ(VerifyFrameBody(BodyOf(s), sys).status().code(), StatusCode::kAuthFailure);
  // The frame is still intact after all that.
  EXPECT_TRUE(VerifyFrameBody(body, mac).ok());
}

TEST(WireAuth, BodyShorterThanTag) {
  Hmac mac(ClientKey());
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{31}}) {
    Bytes body(n, 0);
    auto v = VerifyFrameBody(body, mac);
    ASSERT_FALSE(v.ok());
    EXPECT_EQ(v.status().code(), StatusCode::kCorruption);
  }
  // Exactly a tag: an empty payload, authenticated like any other.
  MacTag t = mac.Compute({});
  auto v = VerifyFrameBody(t, mac);
  ASSERT_TRUE(v.ok());
  EXPECT_TRUE(v->empty());
}

TEST(WireAuth, AuthFailureResponseFromHeaderOfBadCommand) {
  Hmac client(ClientKey());
  Hmac attacker(Bytes(32, 0x41));
  for (const auto& c : {ReadCommand(), WriteCommand()}) {
    SCOPED_TRACE(static_cast<int>(c.op));
    for (bool forged_key : {false, true}) {
      Frame f = EncodeFrame(c, forged_key ? attacker : client);
      if (!forged_key) f.back() ^= 1;
      auto body = BodyOf(f);
      auto v = VerifyFrameBody(body, client);
      ASSERT_FALSE(v.ok());
      ASSERT_EQ(v.status().code(), StatusCode::kAuthFailure);

      // What a node does: read the header leniently from the unverified payload and answer.
      auto header = DecodeClientCommandHeader(body.first(body.size() - kMacSize));
      ASSERT_TRUE(header.ok()) << header.status().ToString();
      EXPECT_EQ(header->request_id, c.request_id);
      EXPECT_EQ(header->op, c.op);
      ClientResponse resp{.status = ResponseStatus::kAuthFailure,
                          .request_id = header->request_id,
                          .op = header->op};
      Frame rf = EncodeFrame(resp, client);
      EXPECT_EQ(FrameLength(rf), c.op == ClientOp::kRead ? 4144u : 48u);
      auto rp = VerifyFrameBody(BodyOf(rf), client);
      ASSERT_TRUE(rp.ok());
      auto back = DecodeClientResponse(rp.value());
      ASSERT_TRUE(back.ok()) << back.status().ToString();
      EXPECT_EQ(back->status, ResponseStatus::kAuthFailure);
      EXPECT_EQ(back->request_id, c.request_id);
      EXPECT_EQ(back->op, c.op);
      if (c.op == ClientOp::kRead) {
        ASSERT_TRUE(back->data);
        EXPECT_EQ(*back->data, *ZeroSector());
      } else {
        EXPECT_EQ(back->data, nullptr);
      }
    }
  }
  // The lenient header accepts a write command whose data is cut short (the tag failed anyway).
  Bytes p = EncodePayload(WriteCommand());
  p.resize(100);
  auto h = DecodeClientCommandHeader(p);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->op, ClientOp::kWrite);
  EXPECT_FALSE(DecodeClientCommand(p).ok());
}

}  // namespace
}  // namespace atomdisk
