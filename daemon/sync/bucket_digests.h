// BucketDigests: this node's digest of every bucket of kBucketSectors sectors (the XOR of
// SectorTagDigest over its written sectors; common/sync_wire.h), cached, for the resync pass
// (which compares its own durable digests with a source's) and the sync server (which
// answers Digest requests). Internal to daemon/sync/ (see sync_context.h).
//
// The cache holds kDurable digests; a write handed to the store (Invalidate) makes its bucket
// stale, and the next lookup rescans it. Thread-compatible.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <vector>

#include "common/types.h"
#include "daemon/sync/sync_context.h"

namespace atomdisk {

class BucketDigests {
 public:
  explicit BucketDigests(SyncContext& ctx);

  // This node's digest of bucket b over its durable tags (TagView::kDurable), from the cache
  // or a scan; nullopt if the store could not be scanned. b must be < ctx.buckets.
  std::optional<std::uint64_t> Own(std::uint64_t b);
  // The digest of bucket b that peers get: as Own, but over the kServed tags. Not cached;
  // only buckets with a value being persisted (`ahead`, bucket numbers) differ from Own.
  std::optional<std::uint64_t> Served(std::uint64_t b, const std::set<std::uint64_t>& ahead);
  // A new value of sector s was handed to the store: its bucket's digest is stale.
  void Invalidate(SectorIdx s);
  // Written sectors read by scans so far (what serving digests cost; sync_server.h).
  std::uint64_t scanned_sectors() const { return scanned_sectors_; }

  void CheckInvariants() const;

 private:
  // The digest of bucket b over the tags `view` gives, read from the store (uncached).
  std::optional<std::uint64_t> Scan(std::uint64_t b, TagView view);

  SyncContext& ctx_;
  std::vector<std::uint64_t> digest_;
  std::vector<bool> valid_;
  std::uint64_t scanned_sectors_ = 0;
};

}  // namespace atomdisk
