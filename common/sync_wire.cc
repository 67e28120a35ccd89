#include "common/sync_wire.h"

#include <xxhash.h>

#include <cstring>
#include <limits>
#include <string>

namespace atomdisk {
namespace {

using wire_internal::Reader;
using wire_internal::Seal;
using wire_internal::Writer;

// Fixed part of every sync payload: prefix, sender, kind, request id.
constexpr std::size_t kHeaderSize = 4 + 1 + 1 + 8;
constexpr std::size_t kRangeSize = 8 + 4;
constexpr std::size_t kEntrySize = 8 + 8 + 1;
constexpr std::size_t kFetchedHeaderSize = 8 + 1;
constexpr std::size_t kFetchedValueSize = 8 + 1 + kSectorSize;
constexpr SyncKind kLastKind = SyncKind::kPong;

Status Malformed(const std::string& detail) {
  return Status::Corruption("malformed sync message: " + detail);
}

bool ValidRank(Rank r) { return r >= 1 && r <= kMaxRank; }

// [first, first + count) stays inside u64: the range end is representable.
bool RangeFits(std::uint64_t first, std::uint64_t count) {
  return count <= std::numeric_limits<std::uint64_t>::max() - first;
}

bool VotersValid(const std::vector<Rank>& voters) {
  for (std::size_t i = 0; i < voters.size(); ++i) {
    if (!ValidRank(voters[i])) return false;
    if (i > 0 && voters[i] <= voters[i - 1]) return false;
  }
  return true;
}

bool EntriesValid(std::uint64_t first, std::uint32_t count, const std::vector<SyncEntry>& es) {
  for (std::size_t i = 0; i < es.size(); ++i) {
    if (es[i].sector < first || es[i].sector - first >= count) return false;
    if (i > 0 && es[i].sector <= es[i - 1].sector) return false;
  }
  return true;
}

// The encoder's side of the contract: what it is handed must decode at the peer.
void CheckEncodable(const SyncMessage& m) {
  ATOMDISK_CHECK(ValidRank(m.sender));
  ATOMDISK_CHECK(m.kind <= kLastKind);
  switch (m.kind) {
    case SyncKind::kHelloReply:
      ATOMDISK_CHECK(m.voters.size() <= 255);
      ATOMDISK_CHECK(VotersValid(m.voters));
      break;
    case SyncKind::kDigest:
      ATOMDISK_CHECK(m.count <= kMaxDigestBuckets);
      ATOMDISK_CHECK(RangeFits(m.first, m.count));
      break;
    case SyncKind::kDigestReply:
      ATOMDISK_CHECK(m.count <= kMaxDigestBuckets);
      ATOMDISK_CHECK(RangeFits(m.first, m.count));
      ATOMDISK_CHECK(m.digests.size() == m.count);
      break;
    case SyncKind::kEntries:
      ATOMDISK_CHECK(m.count <= kMaxEntrySectors);
      ATOMDISK_CHECK(RangeFits(m.first, m.count));
      break;
    case SyncKind::kEntriesReply:
      ATOMDISK_CHECK(m.count <= kMaxEntrySectors);
      ATOMDISK_CHECK(RangeFits(m.first, m.count));
      ATOMDISK_CHECK(m.entries.size() <= m.count);
      ATOMDISK_CHECK(EntriesValid(m.first, m.count, m.entries));
      break;
    case SyncKind::kFetch:
      ATOMDISK_CHECK(!m.sectors.empty() && m.sectors.size() <= kMaxFetchSectors);
      break;
    case SyncKind::kFetchReply:
      ATOMDISK_CHECK(!m.fetched.empty() && m.fetched.size() <= kMaxFetchSectors);
      break;
    case SyncKind::kHello:
    case SyncKind::kRegisterVoter:
    case SyncKind::kRegisterVoterAck:
    case SyncKind::kPing:
    case SyncKind::kPong:
      break;
  }
}

void Append(const SyncMessage& m, Writer& w) {
  w.U32(kSyncPayloadPrefix);
  w.U8(m.sender);
  w.U8(static_cast<std::uint8_t>(m.kind));
  w.U64(m.request_id);
  switch (m.kind) {
    case SyncKind::kHello:
    case SyncKind::kRegisterVoter:
    case SyncKind::kRegisterVoterAck:
    case SyncKind::kPing:
    case SyncKind::kPong:
      break;
    case SyncKind::kHelloReply:
      w.Bytes(m.cluster_id.bytes.data(), m.cluster_id.bytes.size());
      w.U8(m.voting ? 1 : 0);
      w.U8(static_cast<std::uint8_t>(m.voters.size()));
      for (Rank r : m.voters) w.U8(r);
      w.U8(m.features);
      break;
    case SyncKind::kDigest:
    case SyncKind::kEntries:
      w.U64(m.first);
      w.U32(m.count);
      break;
    case SyncKind::kDigestReply:
      w.U64(m.first);
      w.U32(m.count);
      for (std::uint64_t d : m.digests) w.U64(d);
      break;
    case SyncKind::kEntriesReply:
      w.U64(m.first);
      w.U32(m.count);
      w.U32(static_cast<std::uint32_t>(m.entries.size()));
      for (const SyncEntry& e : m.entries) {
        w.U64(e.sector);
        w.U64(e.tag.ts);
        w.U8(e.tag.wr);
      }
      break;
    case SyncKind::kFetch:
      w.U32(static_cast<std::uint32_t>(m.sectors.size()));
      for (SectorIdx s : m.sectors) w.U64(s);
      break;
    case SyncKind::kFetchReply:
      w.U32(static_cast<std::uint32_t>(m.fetched.size()));
      for (const FetchedSector& f : m.fetched) {
        w.U64(f.sector);
        w.U8(f.ok ? 1 : 0);
        if (f.ok) {
          w.U64(f.value.tag.ts);
          w.U8(f.value.tag.wr);
          w.Sector(f.value.data);
        }
      }
      break;
  }
}

// The payload size Append produces for `m` (already checked by CheckEncodable).
std::size_t EncodedSize(const SyncMessage& m) {
  switch (m.kind) {
    case SyncKind::kHello:
    case SyncKind::kRegisterVoter:
    case SyncKind::kRegisterVoterAck:
    case SyncKind::kPing:
    case SyncKind::kPong:
      return kHeaderSize;
    case SyncKind::kHelloReply:
      return kHeaderSize + 16 + 1 + 1 + m.voters.size() + 1;
    case SyncKind::kDigest:
    case SyncKind::kEntries:
      return kHeaderSize + kRangeSize;
    case SyncKind::kDigestReply:
      return kHeaderSize + kRangeSize + 8 * m.digests.size();
    case SyncKind::kEntriesReply:
      return kHeaderSize + kRangeSize + 4 + kEntrySize * m.entries.size();
    case SyncKind::kFetch:
      return kHeaderSize + 4 + 8 * m.sectors.size();
    case SyncKind::kFetchReply: {
      std::size_t size = kHeaderSize + 4;
      for (const FetchedSector& f : m.fetched) {
        size += kFetchedHeaderSize + (f.ok ? kFetchedValueSize : 0);
      }
      return size;
    }
  }
  return 0;
}

std::vector<std::uint8_t> PayloadOf(const SyncMessage& m, std::size_t reserve_prefix) {
  CheckEncodable(m);
  std::size_t size = EncodedSize(m);
  std::vector<std::uint8_t> out(reserve_prefix);
  out.reserve(reserve_prefix + size + kMacSize);
  Writer w(out);
  Append(m, w);
  ATOMDISK_CHECK(out.size() == reserve_prefix + size && size <= kMaxSyncPayloadSize);
  return out;
}

// Reads `first | count` of a ranged request or reply, with count <= max_count.
Status ReadRange(Reader& r, std::uint32_t max_count, SyncMessage& m) {
  m.first = r.U64();
  m.count = r.U32();
  if (!r.ok()) return Malformed("truncated range");
  if (m.count > max_count) {
    return Malformed("count " + std::to_string(m.count) + " above " + std::to_string(max_count));
  }
  if (!RangeFits(m.first, m.count)) return Malformed("range passes the end of u64");
  return Status::Ok();
}

Status DecodeBody(Reader& r, SyncMessage& m) {
  switch (m.kind) {
    case SyncKind::kHello:
    case SyncKind::kRegisterVoter:
    case SyncKind::kRegisterVoterAck:
    case SyncKind::kPing:
    case SyncKind::kPong:
      return Status::Ok();
    case SyncKind::kHelloReply: {
      const std::uint8_t* id = r.Bytes(m.cluster_id.bytes.size());
      std::uint8_t voting = r.U8();
      std::uint8_t n = r.U8();
      const std::uint8_t* voters = r.Bytes(n);
      if (!r.ok()) return Malformed("truncated HelloReply");
      std::memcpy(m.cluster_id.bytes.data(), id, m.cluster_id.bytes.size());
      if (voting > 1) return Malformed("voting byte " + std::to_string(voting));
      m.voting = voting == 1;
      m.voters.assign(voters, voters + n);
      if (!VotersValid(m.voters)) return Malformed("voters not sorted, unique ranks");
      // The features byte, if the sender has one (older atomdisk nodes end here: features 0).
      // Anything after it is trailing bytes.
      if (!r.AtEnd()) m.features = r.U8();
      return Status::Ok();
    }
    case SyncKind::kDigest:
      return ReadRange(r, kMaxDigestBuckets, m);
    case SyncKind::kEntries:
      return ReadRange(r, kMaxEntrySectors, m);
    case SyncKind::kDigestReply: {
      if (Status s = ReadRange(r, kMaxDigestBuckets, m); !s.ok()) return s;
      if (r.remaining() < std::size_t{m.count} * 8) return Malformed("truncated digests");
      m.digests.reserve(m.count);
      for (std::uint32_t i = 0; i < m.count; ++i) m.digests.push_back(r.U64());
      return Status::Ok();
    }
    case SyncKind::kEntriesReply: {
      if (Status s = ReadRange(r, kMaxEntrySectors, m); !s.ok()) return s;
      std::uint32_t n = r.U32();
      if (!r.ok()) return Malformed("truncated entry count");
      if (n > m.count) {
        return Malformed(std::to_string(n) + " entries for " + std::to_string(m.count) +
                         " sectors");
      }
      if (r.remaining() < std::size_t{n} * kEntrySize) return Malformed("truncated entries");
      m.entries.reserve(n);
      for (std::uint32_t i = 0; i < n; ++i) {
        SyncEntry e;
        e.sector = r.U64();
        e.tag.ts = r.U64();
        e.tag.wr = r.U8();
        m.entries.push_back(e);
      }
      if (!EntriesValid(m.first, m.count, m.entries)) {
        return Malformed("entries out of their range or not strictly increasing");
      }
      return Status::Ok();
    }
    case SyncKind::kFetch: {
      std::uint32_t n = r.U32();
      if (!r.ok()) return Malformed("truncated fetch count");
      if (n == 0 || n > kMaxFetchSectors) return Malformed("fetch of " + std::to_string(n));
      if (r.remaining() < std::size_t{n} * 8) return Malformed("truncated fetch sectors");
      m.sectors.reserve(n);
      for (std::uint32_t i = 0; i < n; ++i) m.sectors.push_back(r.U64());
      return Status::Ok();
    }
    case SyncKind::kFetchReply: {
      std::uint32_t n = r.U32();
      if (!r.ok()) return Malformed("truncated fetch reply count");
      if (n == 0 || n > kMaxFetchSectors) {
        return Malformed("fetch reply of " + std::to_string(n));
      }
      // Each sector takes at least its header, so this bounds the allocation by the input.
      if (r.remaining() < std::size_t{n} * kFetchedHeaderSize) {
        return Malformed("truncated fetch reply");
      }
      m.fetched.reserve(n);
      for (std::uint32_t i = 0; i < n; ++i) {
        FetchedSector f;
        f.sector = r.U64();
        std::uint8_t ok = r.U8();
        if (!r.ok()) return Malformed("truncated fetched sector");
        if (ok > 1) return Malformed("ok byte " + std::to_string(ok));
        f.ok = ok == 1;
        if (f.ok) {
          if (r.remaining() < kFetchedValueSize) return Malformed("truncated fetched value");
          f.value.tag.ts = r.U64();
          f.value.tag.wr = r.U8();
          f.value.data = MakeSector(r.Bytes(kSectorSize));
        }
        m.fetched.push_back(std::move(f));
      }
      return Status::Ok();
    }
  }
  return Malformed("unknown kind");  // unreachable: the kind was checked by the caller
}

}  // namespace

const char* SyncKindName(SyncKind k) {
  switch (k) {
    case SyncKind::kHello:
      return "Hello";
    case SyncKind::kHelloReply:
      return "HelloReply";
    case SyncKind::kRegisterVoter:
      return "RegisterVoter";
    case SyncKind::kRegisterVoterAck:
      return "RegisterVoterAck";
    case SyncKind::kPing:
      return "Ping";
    case SyncKind::kPong:
      return "Pong";
    case SyncKind::kDigest:
      return "Digest";
    case SyncKind::kDigestReply:
      return "DigestReply";
    case SyncKind::kEntries:
      return "Entries";
    case SyncKind::kEntriesReply:
      return "EntriesReply";
    case SyncKind::kFetch:
      return "Fetch";
    case SyncKind::kFetchReply:
      return "FetchReply";
  }
  return "?";
}

std::uint64_t SectorTagDigest(SectorIdx sector, Tag tag) {
  std::uint8_t in[17];
  for (int i = 0; i < 8; ++i) in[i] = static_cast<std::uint8_t>(sector >> (56 - 8 * i));
  for (int i = 0; i < 8; ++i) in[8 + i] = static_cast<std::uint8_t>(tag.ts >> (56 - 8 * i));
  in[16] = tag.wr;
  return XXH3_64bits(in, sizeof(in));
}

std::vector<std::uint8_t> EncodePayload(const SyncMessage& msg) { return PayloadOf(msg, 0); }

Frame EncodeFrame(const SyncMessage& msg, Hmac& system_mac) {
  return Seal(PayloadOf(msg, kFrameLengthSize), system_mac);
}

Result<SyncMessage> DecodeSyncMessage(std::span<const std::uint8_t> payload) {
  Reader r(payload);
  SyncMessage m;
  std::uint32_t prefix = r.U32();
  m.sender = r.U8();
  std::uint8_t kind = r.U8();
  m.request_id = r.U64();
  if (!r.ok()) return Malformed("truncated header");
  if (prefix != kSyncPayloadPrefix) return Malformed("prefix " + std::to_string(prefix));
  if (!ValidRank(m.sender)) return Malformed("sender rank " + std::to_string(m.sender));
  if (kind > static_cast<std::uint8_t>(kLastKind)) {
    return Malformed("unknown kind " + std::to_string(kind));
  }
  m.kind = static_cast<SyncKind>(kind);
  if (Status s = DecodeBody(r, m); !s.ok()) return s;
  if (!r.AtEnd()) {
    return Malformed(std::string(SyncKindName(m.kind)) + " with " + std::to_string(r.remaining()) +
                     " trailing bytes");
  }
  return m;
}

}  // namespace atomdisk
