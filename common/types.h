// Basic value types shared by every part of atomdisk: sectors, tags, operation ids.
// Plain values; safe to copy between threads. No I/O here.
#pragma once

#include <array>
#include <compare>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

namespace atomdisk {

inline constexpr std::size_t kSectorSize = 4096;

using SectorIdx = std::uint64_t;
// A node's rank: 1-based, unique in a cluster, at most 254. 0 means "nobody" (an unwritten
// sector's writer rank).
using Rank = std::uint8_t;
inline constexpr int kMaxRank = 254;

using SectorData = std::array<std::uint8_t, kSectorSize>;
// Sector contents are immutable once built and shared between the register, the store and
// the network without copies.
using SectorPtr = std::shared_ptr<const SectorData>;

// A shared all-zero sector, the value of every unwritten sector.
SectorPtr ZeroSector();
// A new sector holding a copy of `bytes` (exactly kSectorSize of them).
SectorPtr MakeSector(const std::uint8_t* bytes);

// (timestamp, writer rank) of a register value, ordered lexicographically.
struct Tag {
  std::uint64_t ts = 0;
  Rank wr = 0;
  friend auto operator<=>(const Tag&, const Tag&) = default;
  std::string ToString() const;  // "(ts=5, wr=2)"
};

// The highest timestamp a tag may carry. A write takes the highest ts it collected plus one,
// and the write-ts floor and lease sit above the writes, so a ts near 2^64 would wrap and be
// lost behind the old value. Timestamps start from the wall clock in microseconds (about 2^51
// today), so 2^62 leaves tens of thousands of years; a node refuses anything above it from
// peers and refuses to write above it (docs/REGISTER.md, "Timestamp range").
inline constexpr std::uint64_t kMaxTagTs = std::uint64_t{1} << 62;

// A register value as stored: its tag and its 4096 bytes.
struct Triple {
  Tag tag;
  SectorPtr data;  // never null
};

// A 16-byte operation identifier (msg_ident on the wire).
struct Uuid {
  std::array<std::uint8_t, 16> bytes{};
  friend auto operator<=>(const Uuid&, const Uuid&) = default;
  std::string ToString() const;  // 32 lowercase hex digits
};

struct UuidHash {
  std::size_t operator()(const Uuid& u) const noexcept {
    std::uint64_t a, b;
    std::memcpy(&a, u.bytes.data(), 8);
    std::memcpy(&b, u.bytes.data() + 8, 8);
    return static_cast<std::size_t>(a ^ (b * 0x9E3779B97F4A7C15ULL));
  }
};

}  // namespace atomdisk
