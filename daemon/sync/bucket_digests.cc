// BucketDigests (daemon/sync/bucket_digests.h).
#include "daemon/sync/bucket_digests.h"

#include <algorithm>

namespace atomdisk {

BucketDigests::BucketDigests(SyncContext& ctx)
    : ctx_(ctx), digest_(ctx.buckets, 0), valid_(ctx.buckets, false) {}

std::optional<std::uint64_t> BucketDigests::Own(std::uint64_t b) {
  ATOMDISK_CHECK(b < ctx_.buckets);
  if (valid_[b]) return digest_[b];
  std::optional<std::uint64_t> d = Scan(b, TagView::kDurable);
  if (!d) return std::nullopt;
  digest_[b] = *d;
  valid_[b] = true;
  return d;
}

std::optional<std::uint64_t> BucketDigests::Scan(std::uint64_t b, TagView view) {
  std::uint64_t first = b * kBucketSectors;
  std::uint64_t count = std::min<std::uint64_t>(kBucketSectors, ctx_.options.sectors - first);
  std::uint64_t d = 0;
  Status s = ctx_.env->ScanTags(first, count, false, view, [&](SectorIdx sec, Tag t, bool ok) {
    if (sec < first || sec - first >= count) return;
    ++scanned_sectors_;
    if (t != Tag{}) d ^= SectorTagDigest(sec, t);
    if (!ok) ctx_.FoundFailed(sec);  // the scrub repairs it (scrub.h)
  });
  if (!s.ok()) return std::nullopt;
  return d;
}

std::optional<std::uint64_t> BucketDigests::Served(std::uint64_t b,
                                                   const std::set<std::uint64_t>& ahead) {
  return ahead.count(b) ? Scan(b, TagView::kServed) : Own(b);
}

void BucketDigests::Invalidate(SectorIdx s) {
  std::uint64_t b = s / kBucketSectors;
  if (b < ctx_.buckets) valid_[b] = false;
}

void BucketDigests::CheckInvariants() const {
  ATOMDISK_CHECK(digest_.size() == ctx_.buckets && valid_.size() == ctx_.buckets);
}

}  // namespace atomdisk
