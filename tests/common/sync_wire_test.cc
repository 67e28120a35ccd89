// Tests for the sync message codec (common/sync_wire.h): byte layouts, round trips of every
// kind at realistic and extreme sizes, signed frames, the tag digest, and decoders that
// reject (never crash on) truncated, oversized, disordered or random bytes.
#include "common/sync_wire.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "common/hmac.h"
#include "common/types.h"
#include "common/wire.h"

namespace atomdisk {
namespace {

using Bytes = std::vector<std::uint8_t>;
constexpr std::uint64_t kU64Max = std::numeric_limits<std::uint64_t>::max();

// Offsets in every sync payload.
constexpr std::size_t kSenderOff = 4;
constexpr std::size_t kKindOff = 5;
constexpr std::size_t kBodyOff = 14;

SectorPtr PatternSector(std::uint8_t seed) {
  SectorData d;
  for (std::size_t i = 0; i < kSectorSize; ++i) {
    d[i] = static_cast<std::uint8_t>(seed + i * 13 + (i >> 8));
  }
  return MakeSector(d.data());
}

Bytes SystemKey() {
  Bytes k(64);
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = static_cast<std::uint8_t>(0x50 ^ i);
  return k;
}

Bytes ClientKey() {
  Bytes k(32);
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = static_cast<std::uint8_t>(0xC0 + i);
  return k;
}

std::uint64_t Get64(const Bytes& b, std::size_t off) {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < 8; ++i) v = v << 8 | b.at(off + i);
  return v;
}

std::uint32_t Get32(const Bytes& b, std::size_t off) {
  std::uint32_t v = 0;
  for (std::size_t i = 0; i < 4; ++i) v = v << 8 | b.at(off + i);
  return v;
}

void Put32(Bytes& b, std::size_t off, std::uint32_t v) {
  for (std::size_t i = 0; i < 4; ++i) b.at(off + i) = static_cast<std::uint8_t>(v >> (24 - 8 * i));
}

void Put64(Bytes& b, std::size_t off, std::uint64_t v) {
  for (std::size_t i = 0; i < 8; ++i) b.at(off + i) = static_cast<std::uint8_t>(v >> (56 - 8 * i));
}

SyncMessage Msg(SyncKind kind, Rank sender = 3, std::uint64_t request_id = 0x0102030405060708) {
  SyncMessage m;
  m.kind = kind;
  m.sender = sender;
  m.request_id = request_id;
  return m;
}

SyncMessage HelloReply(bool voting, std::vector<Rank> voters,
                       std::uint8_t features = kFeatureTagReads) {
  SyncMessage m = Msg(SyncKind::kHelloReply);
  for (std::size_t i = 0; i < 16; ++i) m.cluster_id.bytes[i] = static_cast<std::uint8_t>(0xA0 + i);
  m.voting = voting;
  m.voters = std::move(voters);
  m.features = features;
  return m;
}

// A HelloReply as an atomdisk node from before the features byte sent it: without that byte.
Bytes OldHelloReply(const SyncMessage& m) {
  Bytes p = EncodePayload(m);
  p.pop_back();
  return p;
}

SyncMessage Ranged(SyncKind kind, std::uint64_t first, std::uint32_t count) {
  SyncMessage m = Msg(kind);
  m.first = first;
  m.count = count;
  return m;
}

SyncMessage DigestReply(std::uint64_t first, std::uint32_t count) {
  SyncMessage m = Ranged(SyncKind::kDigestReply, first, count);
  for (std::uint32_t i = 0; i < count; ++i) {
    // Zero for an empty bucket, anything for the others.
    m.digests.push_back(i % 5 == 0 ? 0 : 0x9E3779B97F4A7C15ULL * (i + 1));
  }
  return m;
}

// Entries for every `step`-th sector of [first, first + count), tags that vary in ts and wr.
SyncMessage EntriesReply(std::uint64_t first, std::uint32_t count, std::uint32_t step) {
  SyncMessage m = Ranged(SyncKind::kEntriesReply, first, count);
  for (std::uint32_t i = 0; i < count; i += step) {
    m.entries.push_back(
        SyncEntry{first + i, Tag{std::uint64_t{i} * 1000 + 7, static_cast<Rank>(i % 256)}});
  }
  return m;
}

SyncMessage Fetch(std::vector<SectorIdx> sectors) {
  SyncMessage m = Msg(SyncKind::kFetch);
  m.sectors = std::move(sectors);
  return m;
}

// A FetchReply of n sectors; sector i is ok unless bit i of not_ok is set.
SyncMessage FetchReply(std::uint32_t n, std::uint32_t not_ok) {
  SyncMessage m = Msg(SyncKind::kFetchReply);
  for (std::uint32_t i = 0; i < n; ++i) {
    FetchedSector f;
    f.sector = 1000 + 3 * i;
    f.ok = (not_ok >> i & 1) == 0;
    if (f.ok) {
      f.value.tag = Tag{0x1122334455667700ULL + i, static_cast<Rank>(1 + i)};
      f.value.data = PatternSector(static_cast<std::uint8_t>(i));
    }
    m.fetched.push_back(std::move(f));
  }
  return m;
}

struct Sample {
  std::string name;
  SyncMessage msg;
};

std::vector<Sample> AllSamples() {
  std::vector<Rank> all_ranks;
  for (int r = 1; r <= kMaxRank; ++r) all_ranks.push_back(static_cast<Rank>(r));
  std::vector<SectorIdx> sixteen;
  for (std::uint64_t i = 0; i < kMaxFetchSectors; ++i) sixteen.push_back(kU64Max - 40 + i * 2);
  return {
      {"Hello", Msg(SyncKind::kHello, 1, 0)},
      {"HelloMaxIds", Msg(SyncKind::kHello, kMaxRank, kU64Max)},
      {"RegisterVoter", Msg(SyncKind::kRegisterVoter, 2, 77)},
      {"RegisterVoterAck", Msg(SyncKind::kRegisterVoterAck, 7, 77)},
      {"Ping", Msg(SyncKind::kPing, 3, 0x0102030405060708ULL)},
      {"PongMaxIds", Msg(SyncKind::kPong, kMaxRank, kU64Max)},
      {"HelloReplyVoting", HelloReply(true, {1, 2, 3})},
      {"HelloReplyNoVoters", HelloReply(false, {})},
      {"HelloReplyAllRanks", HelloReply(true, all_ranks)},
      {"HelloReplyNoFeatures", HelloReply(true, {2}, 0)},
      {"HelloReplyReservedBits", HelloReply(false, {1, 3}, 0xFF)},
      {"Digest", Ranged(SyncKind::kDigest, 64, 64)},
      {"DigestEmpty", Ranged(SyncKind::kDigest, 0, 0)},
      {"DigestMaxAtEnd", Ranged(SyncKind::kDigest, kU64Max - kMaxDigestBuckets, kMaxDigestBuckets)},
      {"DigestReplyEmpty", DigestReply(5, 0)},
      {"DigestReplyWindow", DigestReply(128, 64)},
      {"DigestReplyMax", DigestReply(0, kMaxDigestBuckets)},
      {"Entries", Ranged(SyncKind::kEntries, 256 * 9, 256)},
      {"EntriesMax", Ranged(SyncKind::kEntries, 0, kMaxEntrySectors)},
      {"EntriesReplyNone", EntriesReply(512, 256, 1000)},
      {"EntriesReplySparse", EntriesReply(256 * 3, 256, 7)},
      {"EntriesReplyMax", EntriesReply(4096 * 5, kMaxEntrySectors, 1)},
      {"EntriesReplyLastSector", EntriesReply(kU64Max - 1, 1, 1)},
      {"FetchOne", Fetch({42})},
      {"FetchMax", Fetch(sixteen)},
      {"FetchReplyOneNotOk", FetchReply(1, 1)},
      {"FetchReplyMixed", FetchReply(kMaxFetchSectors, 0b1010'0000'1100'0001)},
      {"FetchReplyAllOk", FetchReply(kMaxFetchSectors, 0)},
  };
}

bool SameData(const SectorPtr& a, const SectorPtr& b) {
  return a && b && std::equal(a->begin(), a->end(), b->begin());
}

// Every field the wire carries for m.kind is equal (fields of other kinds are not sent).
void ExpectSameMessage(const SyncMessage& want, const SyncMessage& got) {
  EXPECT_EQ(got.sender, want.sender);
  EXPECT_EQ(got.kind, want.kind);
  EXPECT_EQ(got.request_id, want.request_id);
  switch (want.kind) {
    case SyncKind::kHelloReply:
      EXPECT_EQ(got.cluster_id, want.cluster_id);
      EXPECT_EQ(got.voting, want.voting);
      EXPECT_EQ(got.voters, want.voters);
      EXPECT_EQ(got.features, want.features);
      break;
    case SyncKind::kDigest:
    case SyncKind::kEntries:
    case SyncKind::kDigestReply:
    case SyncKind::kEntriesReply:
      EXPECT_EQ(got.first, want.first);
      EXPECT_EQ(got.count, want.count);
      EXPECT_EQ(got.digests, want.digests);
      EXPECT_EQ(got.entries, want.entries);
      break;
    case SyncKind::kFetch:
      EXPECT_EQ(got.sectors, want.sectors);
      break;
    case SyncKind::kFetchReply:
      ASSERT_EQ(got.fetched.size(), want.fetched.size());
      for (std::size_t i = 0; i < want.fetched.size(); ++i) {
        SCOPED_TRACE(i);
        EXPECT_EQ(got.fetched[i].sector, want.fetched[i].sector);
        EXPECT_EQ(got.fetched[i].ok, want.fetched[i].ok);
        if (want.fetched[i].ok) {
          EXPECT_EQ(got.fetched[i].value.tag, want.fetched[i].value.tag);
          EXPECT_TRUE(SameData(got.fetched[i].value.data, want.fetched[i].value.data));
        } else {
          EXPECT_EQ(got.fetched[i].value.data, nullptr);
        }
      }
      break;
    case SyncKind::kHello:
    case SyncKind::kRegisterVoter:
    case SyncKind::kRegisterVoterAck:
    case SyncKind::kPing:
    case SyncKind::kPong:
      break;
  }
}

void ExpectCorrupt(const Bytes& payload, const std::string& what) {
  auto r = DecodeSyncMessage(payload);
  ASSERT_FALSE(r.ok()) << what << " was accepted";
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption) << what;
}

// --- Layouts --------------------------------------------------------------------------------

TEST(SyncWireLayout, Header) {
  Bytes p = EncodePayload(Msg(SyncKind::kRegisterVoterAck, 9, 0xA1A2A3A4A5A6A7A8ULL));
  ASSERT_EQ(p.size(), 14u);
  EXPECT_EQ(Get32(p, 0), kSyncPayloadPrefix);
  EXPECT_EQ(Get32(p, 0), 2u);
  EXPECT_EQ(p[kSenderOff], 9u);
  EXPECT_EQ(p[kKindOff], 3u);
  EXPECT_EQ(Get64(p, 6), 0xA1A2A3A4A5A6A7A8ULL);
}

TEST(SyncWireLayout, PingAndPongAreBareHeaders) {
  for (auto [kind, code] : {std::pair{SyncKind::kPing, 10u}, std::pair{SyncKind::kPong, 11u}}) {
    Bytes p = EncodePayload(Msg(kind, 4, 0x1122334455667788ULL));
    ASSERT_EQ(p.size(), 14u);
    EXPECT_EQ(p[kSenderOff], 4u);
    EXPECT_EQ(p[kKindOff], code);
    EXPECT_EQ(Get64(p, 6), 0x1122334455667788ULL);
  }
  // The feature bits are distinct, and a HelloReply carries the liveness one.
  EXPECT_EQ(kFeatureTagReads & kFeatureLiveness, 0);
  Bytes p = EncodePayload(HelloReply(true, {1}, kFeatureTagReads | kFeatureLiveness));
  EXPECT_EQ(p.back(), 3u);
}

TEST(SyncWireLayout, HelloReply) {
  SyncMessage m = HelloReply(true, {1, 4, 200});
  Bytes p = EncodePayload(m);
  ASSERT_EQ(p.size(), 14u + 16 + 1 + 1 + 3 + 1);
  EXPECT_EQ(p[kKindOff], 1u);
  EXPECT_TRUE(std::equal(m.cluster_id.bytes.begin(), m.cluster_id.bytes.end(), p.begin() + 14));
  EXPECT_EQ(p[30], 1u);
  EXPECT_EQ(p[31], 3u);
  EXPECT_EQ(p[32], 1u);
  EXPECT_EQ(p[33], 4u);
  EXPECT_EQ(p[34], 200u);
  EXPECT_EQ(p[35], 1u);  // features: kFeatureTagReads
  EXPECT_EQ(kFeatureTagReads, 1u);
  Bytes empty = EncodePayload(HelloReply(false, {}, 0));
  ASSERT_EQ(empty.size(), 14u + 16 + 1 + 1 + 1);
  EXPECT_EQ(empty[30], 0u);
  EXPECT_EQ(empty[32], 0u);
}

// An older atomdisk node's HelloReply ends after the voters: features 0. Anything after the
// features byte is still trailing bytes.
TEST(SyncWireLayout, HelloReplyWithoutFeaturesByte) {
  for (const SyncMessage& m :
       {HelloReply(true, {1, 4, 200}), HelloReply(false, {}), HelloReply(true, {2}, 0xFF)}) {
    SCOPED_TRACE(m.voters.size());
    Bytes old = OldHelloReply(m);
    ASSERT_EQ(old.size(), 14u + 16 + 1 + 1 + m.voters.size());
    auto d = DecodeSyncMessage(old);
    ASSERT_TRUE(d.ok()) << d.status().ToString();
    SyncMessage want = m;
    want.features = 0;
    ExpectSameMessage(want, d.value());
    // Our encoder always writes the byte.
    Bytes again = EncodePayload(d.value());
    ASSERT_EQ(again.size(), old.size() + 1);
    EXPECT_TRUE(std::equal(old.begin(), old.end(), again.begin()));
    EXPECT_EQ(again.back(), 0u);
    // Every shorter prefix of the old layout is truncated.
    for (std::size_t n = 0; n < old.size(); ++n) {
      Bytes cut(old.begin(), old.begin() + static_cast<std::ptrdiff_t>(n));
      ExpectCorrupt(cut, "a prefix of " + std::to_string(n) + " bytes of the old layout");
    }
    // With the byte, each feature value round-trips; a second byte after it is trailing.
    for (int f : {0, 1, 2, 0x80, 0xFF}) {
      Bytes p = old;
      p.push_back(static_cast<std::uint8_t>(f));
      auto df = DecodeSyncMessage(p);
      ASSERT_TRUE(df.ok()) << f;
      EXPECT_EQ(df->features, f);
      EXPECT_EQ(EncodePayload(df.value()), p);
      p.push_back(0);
      ExpectCorrupt(p, "a byte after the features byte");
    }
  }
}

TEST(SyncWireLayout, DigestAndEntries) {
  Bytes d = EncodePayload(Ranged(SyncKind::kDigest, 0x0000112233445566ULL, 64));
  ASSERT_EQ(d.size(), 26u);
  EXPECT_EQ(d[kKindOff], 4u);
  EXPECT_EQ(Get64(d, 14), 0x0000112233445566ULL);
  EXPECT_EQ(Get32(d, 22), 64u);

  SyncMessage dr = DigestReply(10, 3);
  Bytes drp = EncodePayload(dr);
  ASSERT_EQ(drp.size(), 26u + 3 * 8);
  EXPECT_EQ(drp[kKindOff], 5u);
  for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ(Get64(drp, 26 + 8 * i), dr.digests[i]);

  SyncMessage er = Ranged(SyncKind::kEntriesReply, 256, 256);
  er.entries = {{300, Tag{0x0102030405060708ULL, 0}}, {511, Tag{9, 255}}};
  Bytes erp = EncodePayload(er);
  ASSERT_EQ(erp.size(), 30u + 2 * 17);
  EXPECT_EQ(erp[kKindOff], 7u);
  EXPECT_EQ(Get64(erp, 14), 256u);
  EXPECT_EQ(Get32(erp, 22), 256u);
  EXPECT_EQ(Get32(erp, 26), 2u);
  EXPECT_EQ(Get64(erp, 30), 300u);
  EXPECT_EQ(Get64(erp, 38), 0x0102030405060708ULL);
  EXPECT_EQ(erp[46], 0u);
  EXPECT_EQ(Get64(erp, 47), 511u);
  EXPECT_EQ(Get64(erp, 55), 9u);
  EXPECT_EQ(erp[63], 255u);
}

TEST(SyncWireLayout, FetchAndReply) {
  Bytes f = EncodePayload(Fetch({7, kU64Max}));
  ASSERT_EQ(f.size(), 14u + 4 + 16);
  EXPECT_EQ(f[kKindOff], 8u);
  EXPECT_EQ(Get32(f, 14), 2u);
  EXPECT_EQ(Get64(f, 18), 7u);
  EXPECT_EQ(Get64(f, 26), kU64Max);

  SyncMessage r = FetchReply(2, 0b01);  // first not ok, second ok
  Bytes rp = EncodePayload(r);
  ASSERT_EQ(rp.size(), 14u + 4 + 9 + 9 + 9 + kSectorSize);
  EXPECT_EQ(rp[kKindOff], 9u);
  EXPECT_EQ(Get32(rp, 14), 2u);
  EXPECT_EQ(Get64(rp, 18), 1000u);
  EXPECT_EQ(rp[26], 0u);
  EXPECT_EQ(Get64(rp, 27), 1003u);
  EXPECT_EQ(rp[35], 1u);
  EXPECT_EQ(Get64(rp, 36), r.fetched[1].value.tag.ts);
  EXPECT_EQ(rp[44], 2u);
  EXPECT_TRUE(std::equal(r.fetched[1].value.data->begin(), r.fetched[1].value.data->end(),
                         rp.begin() + 45));
}

TEST(SyncWireLayout, LargestPayloadsFitAFrame) {
  EXPECT_EQ(EncodePayload(FetchReply(kMaxFetchSectors, 0)).size(), kMaxFetchReplySize);
  EXPECT_EQ(EncodePayload(EntriesReply(0, kMaxEntrySectors, 1)).size(), kMaxEntriesReplySize);
  EXPECT_EQ(kMaxSyncPayloadSize, kMaxEntriesReplySize);
  // Peer links take the largest sync message (and the larger system batches, common/wire.h);
  // client connections more (extents).
  EXPECT_GE(kMaxPeerFrameBody, kMaxSyncPayloadSize + kMacSize);
  EXPECT_GT(kMaxFrameBody, kMaxPeerFrameBody);
  for (const auto& s : AllSamples()) {
    EXPECT_LE(EncodePayload(s.msg).size(), kMaxSyncPayloadSize) << s.name;
  }
}

TEST(SyncWireLayout, KindNames) {
  EXPECT_STREQ(SyncKindName(SyncKind::kHello), "Hello");
  EXPECT_STREQ(SyncKindName(SyncKind::kRegisterVoterAck), "RegisterVoterAck");
  EXPECT_STREQ(SyncKindName(SyncKind::kFetchReply), "FetchReply");
  EXPECT_STREQ(SyncKindName(SyncKind::kPing), "Ping");
  EXPECT_STREQ(SyncKindName(SyncKind::kPong), "Pong");
  EXPECT_STREQ(SyncKindName(static_cast<SyncKind>(200)), "?");
}

// --- Round trips ----------------------------------------------------------------------------

TEST(SyncWireRoundTrip, EveryKind) {
  int kinds_seen = 0;
  for (const auto& s : AllSamples()) {
    SCOPED_TRACE(s.name);
    Bytes p = EncodePayload(s.msg);
    auto d = DecodeSyncMessage(p);
    ASSERT_TRUE(d.ok()) << d.status().ToString();
    ExpectSameMessage(s.msg, d.value());
    EXPECT_EQ(EncodePayload(d.value()), p);
    auto kind = PeekCommandKind(p);
    ASSERT_TRUE(kind.ok());
    EXPECT_EQ(kind.value(), CommandKind::kSync);
    // Not mistaken for atdd traffic.
    EXPECT_FALSE(DecodeSystemMessage(p).ok());
    EXPECT_FALSE(DecodeClientCommand(p).ok());
    kinds_seen |= 1 << static_cast<int>(s.msg.kind);
  }
  EXPECT_EQ(kinds_seen, (1 << 12) - 1);
}

TEST(SyncWireRoundTrip, EntriesWriterRankAnyByte) {
  SyncMessage m = Ranged(SyncKind::kEntriesReply, 0, 256);
  for (int wr = 0; wr < 256; ++wr) {
    m.entries.push_back(SyncEntry{static_cast<SectorIdx>(wr), Tag{1, static_cast<Rank>(wr)}});
  }
  auto d = DecodeSyncMessage(EncodePayload(m));
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->entries, m.entries);
}

TEST(SyncWireRoundTrip, NullDataIsSentAsZeros) {
  SyncMessage m = FetchReply(1, 0);
  m.fetched[0].value.data = nullptr;
  auto d = DecodeSyncMessage(EncodePayload(m));
  ASSERT_TRUE(d.ok());
  EXPECT_TRUE(SameData(d->fetched[0].value.data, ZeroSector()));
}

TEST(SyncWireFrame, SignedWithTheSystemKey) {
  Hmac system_mac(SystemKey());
  Hmac client_mac(ClientKey());
  for (const auto& s : AllSamples()) {
    SCOPED_TRACE(s.name);
    Frame f = EncodeFrame(s.msg, system_mac);
    Bytes p = EncodePayload(s.msg);
    ASSERT_EQ(f.size(), kFrameLengthSize + p.size() + kMacSize);
    auto l = DecodeFrameLength(std::span<const std::uint8_t, kFrameLengthSize>(f.data(), 8));
    ASSERT_TRUE(l.ok()) << l.status().ToString();
    EXPECT_EQ(l.value(), p.size() + kMacSize);
    std::span<const std::uint8_t> body(f.data() + kFrameLengthSize, f.size() - kFrameLengthSize);
    auto v = VerifyFrameBody(body, system_mac);
    ASSERT_TRUE(v.ok()) << v.status().ToString();
    EXPECT_TRUE(std::equal(v->begin(), v->end(), p.begin(), p.end()));
    auto d = DecodeSyncMessage(v.value());
    ASSERT_TRUE(d.ok());
    ExpectSameMessage(s.msg, d.value());
    // The client key does not verify it, nor does a flipped byte.
    auto wrong = VerifyFrameBody(body, client_mac);
    ASSERT_FALSE(wrong.ok());
    EXPECT_EQ(wrong.status().code(), StatusCode::kAuthFailure);
    Frame flipped = f;
    flipped[kFrameLengthSize + kKindOff + 3] ^= 0x01;
    std::span<const std::uint8_t> fbody(flipped.data() + kFrameLengthSize,
                                        flipped.size() - kFrameLengthSize);
    EXPECT_EQ(VerifyFrameBody(fbody, system_mac).status().code(), StatusCode::kAuthFailure);
  }
}

TEST(SyncWireFrame, SmallestFrameIsAccepted) {
  // A Hello (14-byte payload) is smaller than any atdd payload; nodes must still take it.
  Hmac mac(SystemKey());
  Frame f = EncodeFrame(Msg(SyncKind::kHello), mac);
  std::span<const std::uint8_t, kFrameLengthSize> prefix(f.data(), kFrameLengthSize);
  auto l = DecodeFrameLength(prefix);
  ASSERT_TRUE(l.ok()) << l.status().ToString();
  EXPECT_EQ(l.value(), kMinFrameBody);
  EXPECT_FALSE(DecodeResponseFrameLength(prefix).ok());
}

TEST(SyncWireFrame, LargestFrameIsAcceptedByNodesNotClients) {
  Hmac mac(SystemKey());
  Frame f = EncodeFrame(EntriesReply(0, kMaxEntrySectors, 1), mac);
  std::span<const std::uint8_t, kFrameLengthSize> prefix(f.data(), kFrameLengthSize);
  auto l = DecodeFrameLength(prefix, kMaxPeerFrameBody);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l.value(), kMaxSyncPayloadSize + kMacSize);
  // A client takes at most a response; the largest sync frame is smaller than an extent
  // read's response, so only a frame above that is refused there.
  EXPECT_TRUE(DecodeResponseFrameLength(prefix).ok());
}

// --- Tag digest -----------------------------------------------------------------------------

TEST(SyncWireDigest, PinnedValue) {
  // XXH3-64 (seed 0) of 00..00 01 00 | 00..00 00 05 | 02: pinned so that any change to the
  // function (which would make mixed-version nodes see every bucket as different) is caught.
  // (Cross-checked with libxxhash's XXH3_64bits called directly on those 17 bytes.)
  EXPECT_EQ(SectorTagDigest(256, Tag{5, 2}), 0x5C6EF99AC4909B3BULL);
  EXPECT_EQ(SectorTagDigest(0, Tag{0, 0}), 0xC2915CA0DF7AD4C1ULL);
}

TEST(SyncWireDigest, EveryInputMatters) {
  const std::uint64_t base = SectorTagDigest(1000, Tag{77, 3});
  EXPECT_EQ(SectorTagDigest(1000, Tag{77, 3}), base);
  EXPECT_NE(SectorTagDigest(1001, Tag{77, 3}), base);
  EXPECT_NE(SectorTagDigest(1000, Tag{78, 3}), base);
  EXPECT_NE(SectorTagDigest(1000, Tag{77, 4}), base);
  EXPECT_NE(SectorTagDigest(1000 | (1ULL << 63), Tag{77, 3}), base);
  EXPECT_NE(SectorTagDigest(1000, Tag{77 | (1ULL << 63), 3}), base);
  // Equal tags of different sectors differ, and swapping sector and ts changes the digest.
  EXPECT_NE(SectorTagDigest(1, Tag{2, 3}), SectorTagDigest(2, Tag{1, 3}));
  // A bucket's XOR of digests does not cancel for neighbouring sectors with equal tags.
  std::uint64_t x = 0;
  for (SectorIdx s = 0; s < kBucketSectors; ++s) x ^= SectorTagDigest(s, Tag{1, 1});
  EXPECT_NE(x, 0u);
}

// --- Hostile payloads -----------------------------------------------------------------------

TEST(SyncWireMalformed, EveryTruncationIsRejected) {
  for (const auto& s : AllSamples()) {
    SCOPED_TRACE(s.name);
    Bytes p = EncodePayload(s.msg);
    for (std::size_t n = 0; n < p.size(); ++n) {
      // Every prefix of small payloads; of the big ones, the start, the end, and a stride
      // through the middle (every cut position of a repeated element is covered).
      if (p.size() > 8192 && n > 1024 && n + 1024 < p.size() && n % 97 != 0) continue;
      // A HelloReply without its last byte is an older node's (HelloReplyWithoutFeaturesByte).
      if (s.msg.kind == SyncKind::kHelloReply && n + 1 == p.size()) continue;
      // A fresh copy of exactly n bytes, so ASan sees any read past the end.
      Bytes cut(p.begin(), p.begin() + static_cast<std::ptrdiff_t>(n));
      auto d = DecodeSyncMessage(cut);
      ASSERT_FALSE(d.ok()) << "accepted a prefix of " << n << " bytes";
      EXPECT_EQ(d.status().code(), StatusCode::kCorruption);
    }
  }
}

TEST(SyncWireMalformed, TrailingBytesAreRejected) {
  for (const auto& s : AllSamples()) {
    SCOPED_TRACE(s.name);
    for (std::size_t extra : {std::size_t{1}, std::size_t{8}, std::size_t{17}, kSectorSize}) {
      Bytes longer = EncodePayload(s.msg);
      longer.resize(longer.size() + extra, 0);
      ExpectCorrupt(longer, std::to_string(extra) + " trailing bytes");
    }
  }
}

TEST(SyncWireMalformed, HeaderFields) {
  Bytes good = EncodePayload(Msg(SyncKind::kHello));
  ASSERT_TRUE(DecodeSyncMessage(good).ok());
  for (std::uint32_t prefix : {0u, 1u, 3u, 0x02000000u, 0xFFFFFFFFu}) {
    Bytes p = good;
    Put32(p, 0, prefix);
    ExpectCorrupt(p, "prefix " + std::to_string(prefix));
  }
  for (std::uint8_t sender : {std::uint8_t{0}, std::uint8_t{255}}) {
    Bytes p = good;
    p[kSenderOff] = sender;
    ExpectCorrupt(p, "sender " + std::to_string(sender));
  }
  for (int kind = 12; kind < 256; ++kind) {
    Bytes p = good;
    p[kKindOff] = static_cast<std::uint8_t>(kind);
    ExpectCorrupt(p, "kind " + std::to_string(kind));
  }
  // The empty kinds are interchangeable on the wire; a body-carrying kind without a body is
  // truncated.
  for (int kind = 0; kind < 12; ++kind) {
    Bytes p = good;
    p[kKindOff] = static_cast<std::uint8_t>(kind);
    bool empty_body = kind == 0 || kind == 2 || kind == 3 || kind == 10 || kind == 11;
    EXPECT_EQ(DecodeSyncMessage(p).ok(), empty_body) << kind;
  }
}

TEST(SyncWireMalformed, HelloReply) {
  Bytes good = EncodePayload(HelloReply(true, {2, 3, 5}));
  ASSERT_TRUE(DecodeSyncMessage(good).ok());
  const std::size_t voting = 30, n = 31, v0 = 32;
  for (std::uint8_t b : {std::uint8_t{2}, std::uint8_t{0x80}, std::uint8_t{0xFF}}) {
    Bytes p = good;
    p[voting] = b;
    ExpectCorrupt(p, "voting byte " + std::to_string(b));
  }
  struct Case {
    const char* what;
    std::vector<std::uint8_t> voters;
  };
  for (const Case& c :
       {Case{"unsorted", {3, 2, 5}}, Case{"duplicate", {2, 2, 5}}, Case{"descending", {5, 3, 2}},
        Case{"rank 0", {0, 2, 5}}, Case{"rank 255", {2, 3, 255}}}) {
    Bytes p = good;
    std::copy(c.voters.begin(), c.voters.end(), p.begin() + v0);
    ExpectCorrupt(p, c.what);
  }
  // The voter count must match the bytes that follow.
  Bytes more = good;
  more[n] = 4;
  ExpectCorrupt(more, "count above the voters sent");
  Bytes fewer = good;
  fewer[n] = 2;
  ExpectCorrupt(fewer, "count below the voters sent");
  Bytes huge = good;
  huge[n] = 255;
  ExpectCorrupt(huge, "count 255 with 3 voters");
}

TEST(SyncWireMalformed, DigestCounts) {
  for (SyncKind kind : {SyncKind::kDigest, SyncKind::kDigestReply}) {
    SCOPED_TRACE(SyncKindName(kind));
    Bytes p = EncodePayload(Ranged(SyncKind::kDigest, 0, 1));
    p[kKindOff] = static_cast<std::uint8_t>(kind);
    for (std::uint32_t count : {kMaxDigestBuckets + 1, 0x10000u, 0xFFFFFFFFu}) {
      Bytes q = p;
      Put32(q, 22, count);
      // Enough bytes for the digests a reply claims, so only the limit refuses it.
      if (kind == SyncKind::kDigestReply && count <= 0x10000u) q.resize(q.size() + 8 * count);
      ExpectCorrupt(q, "count " + std::to_string(count));
    }
  }
  // A reply's digests are exactly `count`.
  Bytes r = EncodePayload(DigestReply(0, 3));
  Put32(r, 22, 4);
  ExpectCorrupt(r, "count above the digests sent");
  Put32(r, 22, 2);
  ExpectCorrupt(r, "count below the digests sent");
  // The range may not wrap around.
  Bytes w = EncodePayload(Ranged(SyncKind::kDigest, 0, 2));
  Put64(w, 14, kU64Max);
  ExpectCorrupt(w, "range past 2^64");
  Put64(w, 14, kU64Max - 2);
  EXPECT_TRUE(DecodeSyncMessage(w).ok());
}

TEST(SyncWireMalformed, EntriesCounts) {
  Bytes req = EncodePayload(Ranged(SyncKind::kEntries, 0, 1));
  for (std::uint32_t count : {kMaxEntrySectors + 1, 0xFFFFFFFFu}) {
    Bytes q = req;
    Put32(q, 22, count);
    ExpectCorrupt(q, "entries request count " + std::to_string(count));
  }
  Bytes wrap = req;
  Put64(wrap, 14, kU64Max);
  ExpectCorrupt(wrap, "range past 2^64");

  // Reply: count above the limit (with a matching, legal-looking entry list).
  SyncMessage big = EntriesReply(0, kMaxEntrySectors, 1);
  Bytes over = EncodePayload(big);
  Put32(over, 22, kMaxEntrySectors + 1);
  ExpectCorrupt(over, "reply count above the limit");
  // More entries than sectors in the range, even when the bytes are there.
  Bytes r = EncodePayload(EntriesReply(0, 4, 1));  // 4 entries for sectors 0..3
  Put32(r, 22, 3);
  ExpectCorrupt(r, "4 entries for 3 sectors");
  // An entry count the bytes cannot hold is refused before anything is allocated.
  for (std::uint32_t n : {5u, 0x00FFFFFFu, 0xFFFFFFFFu}) {
    Bytes q = EncodePayload(EntriesReply(0, kMaxEntrySectors, 1024));  // 4 entries
    Put32(q, 26, n);
    ExpectCorrupt(q, "entry count " + std::to_string(n));
  }
}

TEST(SyncWireMalformed, EntriesOrderAndRange) {
  SyncMessage m = Ranged(SyncKind::kEntriesReply, 512, 256);
  m.entries = {{520, Tag{1, 1}}, {600, Tag{2, 2}}, {700, Tag{3, 3}}};
  const Bytes good = EncodePayload(m);
  ASSERT_TRUE(DecodeSyncMessage(good).ok());
  auto with_sectors = [&](SectorIdx a, SectorIdx b, SectorIdx c) {
    Bytes p = good;
    Put64(p, 30, a);
    Put64(p, 30 + 17, b);
    Put64(p, 30 + 34, c);
    return p;
  };
  EXPECT_TRUE(DecodeSyncMessage(with_sectors(512, 513, 767)).ok());  // both ends of the range
  ExpectCorrupt(with_sectors(511, 600, 700), "entry below first");
  ExpectCorrupt(with_sectors(520, 600, 768), "entry at first + count");
  ExpectCorrupt(with_sectors(520, 600, kU64Max), "entry far above the range");
  ExpectCorrupt(with_sectors(0, 600, 700), "entry 0");
  ExpectCorrupt(with_sectors(600, 520, 700), "unsorted entries");
  ExpectCorrupt(with_sectors(520, 600, 600), "duplicate entries");
  ExpectCorrupt(with_sectors(700, 600, 520), "descending entries");
  // A reply for an empty range carries no entries.
  Bytes empty = good;
  Put32(empty, 22, 0);
  ExpectCorrupt(empty, "entries for an empty range");
}

TEST(SyncWireMalformed, FetchCounts) {
  Bytes good = EncodePayload(Fetch({1, 2}));
  for (std::uint32_t n : {0u, kMaxFetchSectors + 1, 0x10000u, 0xFFFFFFFFu}) {
    Bytes p = good;
    Put32(p, 14, n);
    // Give a too-large request the bytes it claims, so only the limit refuses it.
    if (n > 0 && n <= 0x10000u) p.resize(18 + 8 * std::size_t{n});
    ExpectCorrupt(p, "fetch of " + std::to_string(n));
  }
  Bytes exact = good;
  exact.resize(18);
  Put32(exact, 14, 0);
  ExpectCorrupt(exact, "fetch of nothing");
  Bytes more = good;
  Put32(more, 14, 3);
  ExpectCorrupt(more, "count above the sectors sent");
}

TEST(SyncWireMalformed, FetchReply) {
  const Bytes good = EncodePayload(FetchReply(2, 0b01));  // not ok, then ok
  ASSERT_TRUE(DecodeSyncMessage(good).ok());
  for (std::uint32_t n : {0u, kMaxFetchSectors + 1, 0xFFFFFFFFu}) {
    Bytes p = good;
    Put32(p, 14, n);
    ExpectCorrupt(p, "fetch reply of " + std::to_string(n));
  }
  // 17 not-ok sectors: every byte present, only the limit refuses it.
  Bytes seventeen = EncodePayload(Msg(SyncKind::kHello));
  seventeen.resize(18 + 17 * 9, 0);
  seventeen[kKindOff] = static_cast<std::uint8_t>(SyncKind::kFetchReply);
  Put32(seventeen, 14, 17);
  ExpectCorrupt(seventeen, "17 sectors");
  Put32(seventeen, 14, 16);
  seventeen.resize(18 + 16 * 9);
  EXPECT_TRUE(DecodeSyncMessage(seventeen).ok());

  for (std::uint8_t ok : {std::uint8_t{2}, std::uint8_t{0xFF}}) {
    Bytes p = good;
    p[26] = ok;
    ExpectCorrupt(p, "ok byte " + std::to_string(ok) + " (first)");
    Bytes q = good;
    q[35] = ok;
    ExpectCorrupt(q, "ok byte " + std::to_string(ok) + " (second)");
  }
  // Flipping ok changes how many bytes must follow.
  Bytes now_ok = good;
  now_ok[26] = 1;
  ExpectCorrupt(now_ok, "not-ok sector marked ok");
  Bytes now_not_ok = good;
  now_not_ok[35] = 0;
  ExpectCorrupt(now_not_ok, "ok sector marked not ok");
  Bytes one_less = good;
  Put32(one_less, 14, 1);
  ExpectCorrupt(one_less, "count below the sectors sent");
}

// Decoding any bytes must return Corruption or a message that re-encodes to the same bytes
// (the encoding is canonical, and the encoder accepts anything the decoder does).
// The one exception: a HelloReply without its features byte (an older node's) re-encodes with
// a 0 byte appended.
void CheckAnyBytes(const Bytes& in) {
  auto d = DecodeSyncMessage(in);
  if (d.ok()) {
    Bytes again = EncodePayload(d.value());
    if (d->kind == SyncKind::kHelloReply && again.size() == in.size() + 1) {
      ASSERT_EQ(again.back(), 0u);
      again.pop_back();
    }
    ASSERT_EQ(again, in);
    ASSERT_EQ(PeekCommandKind(in).value(), CommandKind::kSync);
  } else {
    ASSERT_EQ(d.status().code(), StatusCode::kCorruption);
  }
}

TEST(SyncWireFuzz, RandomBytes) {
  std::mt19937_64 rng(0x5EED'5C0D'EC00ULL);
  std::uniform_int_distribution<std::size_t> len_dist(0, 700);
  for (int i = 0; i < 3000; ++i) {
    Bytes in(len_dist(rng));
    for (auto& b : in) b = static_cast<std::uint8_t>(rng());
    ASSERT_NO_FATAL_FAILURE(CheckAnyBytes(in)) << "buffer " << i;
  }
}

TEST(SyncWireFuzz, RandomBodiesAfterAValidHeader) {
  // Random bytes rarely get past the prefix; these start with a valid header of a random
  // kind and small counts, so the body decoders see the garbage.
  std::mt19937_64 rng(0xB0D1'E5ULL);
  int accepted = 0;
  for (int i = 0; i < 5000; ++i) {
    Bytes in = EncodePayload(Msg(SyncKind::kHello, static_cast<Rank>(1 + rng() % 3), rng()));
    in[kKindOff] = static_cast<std::uint8_t>(rng() % 10);
    std::size_t body = rng() % 2 == 0 ? rng() % 64 : rng() % (2 * (9 + 9 + kSectorSize));
    for (std::size_t j = 0; j < body; ++j) {
      // Mostly small bytes, so counts and flags are often in range.
      in.push_back(static_cast<std::uint8_t>(rng() % 4 == 0 ? rng() : rng() % 3));
    }
    auto d = DecodeSyncMessage(in);
    accepted += d.ok() ? 1 : 0;
    ASSERT_NO_FATAL_FAILURE(CheckAnyBytes(in)) << "buffer " << i;
  }
  EXPECT_GT(accepted, 0);
}

TEST(SyncWireFuzz, MutatedValidPayloads) {
  std::mt19937_64 rng(0x3A7E'D5A3ULL);
  auto samples = AllSamples();
  for (int i = 0; i < 4000; ++i) {
    const Sample& s = samples[rng() % samples.size()];
    Bytes p = EncodePayload(s.msg);
    int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) {
      // Bias toward the header and counts, where a flip changes the structure.
      std::size_t at =
          rng() % 2 == 0 ? rng() % std::min<std::size_t>(p.size(), 40) : rng() % p.size();
      p[at] ^= static_cast<std::uint8_t>(1 + rng() % 255);
    }
    if (rng() % 4 == 0) p.resize(rng() % (p.size() + 1));
    ASSERT_NO_FATAL_FAILURE(CheckAnyBytes(p)) << s.name << " mutation " << i;
  }
}

// --- Encoder contract -----------------------------------------------------------------------

TEST(SyncWireEncoderDeathTest, RefusesWhatTheDecoderWouldRefuse) {
  EXPECT_DEATH(EncodePayload(Msg(SyncKind::kHello, 0)), "");
  EXPECT_DEATH(EncodePayload(Msg(static_cast<SyncKind>(12))), "");
  EXPECT_DEATH(EncodePayload(HelloReply(true, {3, 2})), "");
  EXPECT_DEATH(EncodePayload(Ranged(SyncKind::kDigest, 0, kMaxDigestBuckets + 1)), "");
  SyncMessage short_reply = DigestReply(0, 4);
  short_reply.digests.pop_back();
  EXPECT_DEATH(EncodePayload(short_reply), "");
  SyncMessage outside = EntriesReply(0, 4, 1);
  outside.entries.back().sector = 4;
  EXPECT_DEATH(EncodePayload(outside), "");
  EXPECT_DEATH(EncodePayload(Fetch({})), "");
  EXPECT_DEATH(EncodePayload(FetchReply(kMaxFetchSectors + 1, 0)), "");
}

}  // namespace
}  // namespace atomdisk
