// Sync messages: atomdisk's node-to-node extension for resync, voter registration and scrub
// (docs/RESYNC.md). They travel on the same connections as the atdd system messages and are
// signed with the system key, but their payload starts with the u32 2 (atdd uses 0 for
// client commands and 1 for system messages), so an atdd node drops them as malformed and
// an atomdisk node never confuses them with register traffic.
//
// Payload (big-endian): u32 2 | u8 sender | u8 kind | u64 request_id | body by kind:
//   kHello            (empty)
//   kHelloReply       16 B cluster_id | u8 voting (0/1) | u8 n | n x u8 voter rank
//                     [| u8 features]  (absent from older atomdisk nodes: features 0)
//   kRegisterVoter    (empty)
//   kRegisterVoterAck (empty)
//   kDigest           u64 first_bucket | u32 count  (count <= kMaxDigestBuckets)
//   kDigestReply      u64 first_bucket | u32 count | count x u64 digest
//   kEntries          u64 first_sector | u32 count  (count <= kMaxEntrySectors)
//   kEntriesReply     u64 first_sector | u32 count | u32 n | n x (u64 sector | u64 ts | u8 wr)
//   kFetch            u32 n | n x u64 sector        (1 <= n <= kMaxFetchSectors)
//   kFetchReply       u32 n | n x (u64 sector | u8 ok | [ok: u64 ts | u8 wr | 4096 B data])
//                     (1 <= n <= kMaxFetchSectors)
//   kPing             (empty)   peer-link heartbeat; sent only to a peer advertising
//   kPong             (empty)   kFeatureLiveness, answered on the same connection with a
//                               Pong echoing its request_id
// A HelloReply's features byte says which atomdisk extensions of the node protocol its sender
// understands (bit 0: kFeatureTagReads, bit 1: kFeatureLiveness, bit 2: kFeatureBatches; the other
// bits are reserved, sent
// as 0 and ignored when set). Our encoder always writes it. A reply echoes its request's
// request_id. Entries are sorted by sector, inside [first_sector, first_sector + count), unique;
// first + count must not pass 2^64 - 1. An entry or digest for a sector never written (tag (0,0))
// is never sent. Sender and voter ranks are in [1, kMaxRank]; voters are sorted and unique.
// Decoders check every length and range before use and return Corruption for anything malformed,
// including trailing bytes and unknown kinds. Encoders abort (ATOMDISK_CHECK) on a message the
// decoder would refuse: that is a bug of the sender, not something the network did.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "common/hmac.h"
#include "common/status.h"
#include "common/types.h"
#include "common/wire.h"

namespace atomdisk {

inline constexpr std::uint32_t kSyncPayloadPrefix = 2;

// Sector grouping used by resync digests: a bucket is kBucketSectors consecutive sectors.
inline constexpr std::uint64_t kBucketSectors = 256;
inline constexpr std::uint32_t kMaxDigestBuckets = 512;
inline constexpr std::uint32_t kMaxEntrySectors = 4096;
inline constexpr std::uint32_t kMaxFetchSectors = 16;

// HelloReply feature bits. kFeatureTagReads: the sender answers a ReadTag with a Tag
// (common/wire.h, docs/PROTOCOL.md), so a peer may send it ReadTag instead of ReadProc.
inline constexpr std::uint8_t kFeatureTagReads = 1;
// kFeatureLiveness: the sender answers a Ping with a Pong on the connection the Ping came on,
// so a peer may ping it (an older node closes a connection on a sync kind it does not know).
inline constexpr std::uint8_t kFeatureLiveness = 2;
// kFeatureBatches: the sender takes system batches (common/wire.h, kSystemBatchPrefix), so a
// peer may send it many system messages in one frame.
inline constexpr std::uint8_t kFeatureBatches = 4;

enum class SyncKind : std::uint8_t {
  kHello = 0,
  kHelloReply = 1,
  kRegisterVoter = 2,
  kRegisterVoterAck = 3,
  kDigest = 4,
  kDigestReply = 5,
  kEntries = 6,
  kEntriesReply = 7,
  kFetch = 8,
  kFetchReply = 9,
  kPing = 10,
  kPong = 11,
};
const char* SyncKindName(SyncKind k);

struct SyncEntry {
  SectorIdx sector = 0;
  Tag tag;
  friend bool operator==(const SyncEntry&, const SyncEntry&) = default;
};

struct FetchedSector {
  SectorIdx sector = 0;
  bool ok = false;  // false: the sender could not read it (corrupt or I/O error)
  Triple value;     // ok only; value.data never null when ok
};

struct SyncMessage {
  Rank sender = 0;
  SyncKind kind = SyncKind::kHello;
  std::uint64_t request_id = 0;
  // kHelloReply
  Uuid cluster_id;
  bool voting = false;
  std::vector<Rank> voters;   // sorted, unique, at most 255
  std::uint8_t features = 0;  // kFeature* bits; 0 when an older node sent none
  // kDigest / kDigestReply: buckets [first, first + count)
  std::uint64_t first = 0;  // first bucket (digest) or first sector (entries)
  std::uint32_t count = 0;
  std::vector<std::uint64_t> digests;  // kDigestReply: exactly `count` of them
  // kEntries / kEntriesReply: sectors [first, first + count)
  std::vector<SyncEntry> entries;  // kEntriesReply
  // kFetch
  std::vector<SectorIdx> sectors;
  // kFetchReply
  std::vector<FetchedSector> fetched;
};

// The largest sync payloads: a kFetchReply of kMaxFetchSectors sectors (65842 bytes) and a
// kEntriesReply of kMaxEntrySectors entries (69662 bytes). Connections accept frames of any
// of them (wire.h's kMaxFrameBody covers the larger).
inline constexpr std::size_t kMaxFetchReplySize =
    4 + 1 + 1 + 8 + 4 + kMaxFetchSectors * (8 + 1 + 8 + 1 + kSectorSize);
inline constexpr std::size_t kMaxEntriesReplySize =
    4 + 1 + 1 + 8 + 8 + 4 + 4 + std::size_t{kMaxEntrySectors} * (8 + 8 + 1);
inline constexpr std::size_t kMaxSyncPayloadSize =
    kMaxFetchReplySize > kMaxEntriesReplySize ? kMaxFetchReplySize : kMaxEntriesReplySize;
static_assert(kMaxSyncPayloadSize == kMaxSyncPayloadBound,
              "wire.h's frame bound must follow the sync message limits");
static_assert(kMaxSyncPayloadSize + kMacSize <= kMaxFrameBody);
static_assert(kMinSyncPayloadSize + kMacSize >= kMinFrameBody);

// The digest of one sector's tag, and of a bucket: the XOR of the digests of the bucket's
// written sectors (0 for a bucket with none). XOR lets a bucket's digest be updated or
// recomputed from any order of entries; the sector index in the hash keeps equal tags of
// different sectors apart. Both sides of a comparison use these, so they are part of the
// protocol (XXH3-64 of sector u64 BE | ts u64 BE | wr u8, seed 0).
std::uint64_t SectorTagDigest(SectorIdx sector, Tag tag);

std::vector<std::uint8_t> EncodePayload(const SyncMessage& msg);
Frame EncodeFrame(const SyncMessage& msg, Hmac& system_mac);
Result<SyncMessage> DecodeSyncMessage(std::span<const std::uint8_t> payload);

}  // namespace atomdisk
