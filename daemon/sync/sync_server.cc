// SyncServer (daemon/sync/sync_server.h).
#include "daemon/sync/sync_server.h"

#include <algorithm>
#include <optional>
#include <string>
#include <utility>

namespace atomdisk {

namespace {
// [first, first + count) is a non-empty range of at most `max` inside [0, end), with no
// overflow on the way.
bool RangeOk(std::uint64_t first, std::uint64_t count, std::uint64_t max, std::uint64_t end) {
  return count != 0 && count <= max && first < end && count <= end - first;
}
}  // namespace

void SyncServer::Reject(const SyncMessage& msg) {
  ++rejected_requests_;
  if (rejected_noted_.insert(msg.sender).second) {
    ctx_.env->Note("ignoring an out-of-range " + std::string(SyncKindName(msg.kind)) +
                   " request from peer " + std::to_string(msg.sender) +
                   " (further ones are only counted)");
  }
}

void SyncServer::Serve(const SyncMessage& msg) {
  switch (msg.kind) {
    case SyncKind::kDigest:
      ServeDigest(msg);
      return;
    case SyncKind::kEntries:
      ServeEntries(msg);
      return;
    case SyncKind::kFetch:
      ServeFetch(msg);
      return;
    default:
      return;
  }
}

void SyncServer::ServeDigest(const SyncMessage& msg) {
  const std::uint64_t buckets = ctx_.buckets;
  if (!RangeOk(msg.first, msg.count, kMaxDigestBuckets, buckets)) {
    Reject(msg);
    return;
  }
  SyncMessage r = ctx_.Msg(SyncKind::kDigestReply, msg.request_id);
  r.first = msg.first;
  r.count = msg.count;
  r.digests.reserve(msg.count);
  std::set<std::uint64_t> ahead;  // buckets with a value being persisted
  ctx_.env->ForEachServedAhead([&](SectorIdx sec) { ahead.insert(sec / kBucketSectors); });
  for (std::uint64_t b = msg.first; b < msg.first + msg.count; ++b) {
    std::optional<std::uint64_t> d = digests_.Served(b, ahead);
    if (!d) return;  // unreadable here: no reply, the requester retries
    r.digests.push_back(*d);
  }
  ctx_.env->SendSync(msg.sender, r);
}

void SyncServer::ServeEntries(const SyncMessage& msg) {
  const std::uint64_t sectors = ctx_.options.sectors;
  if (!RangeOk(msg.first, msg.count, kMaxEntrySectors, sectors)) {
    Reject(msg);
    return;
  }
  SyncMessage r = ctx_.Msg(SyncKind::kEntriesReply, msg.request_id);
  r.first = msg.first;
  r.count = msg.count;
  Status s = ctx_.env->ScanTags(
      msg.first, msg.count, false, TagView::kServed, [&](SectorIdx sec, Tag t, bool) {
        if (t != Tag{} && sec >= msg.first && sec - msg.first < msg.count) {
          r.entries.push_back({sec, t});
        }
      });
  if (!s.ok()) return;  // no reply: the requester retries or drops us
  std::sort(r.entries.begin(), r.entries.end(),
            [](const SyncEntry& a, const SyncEntry& b) { return a.sector < b.sector; });
  r.entries.erase(
      std::unique(r.entries.begin(), r.entries.end(),
                  [](const SyncEntry& a, const SyncEntry& b) { return a.sector == b.sector; }),
      r.entries.end());
  ctx_.env->SendSync(msg.sender, r);
}

void SyncServer::ServeFetch(const SyncMessage& msg) {
  if (msg.sectors.empty() || msg.sectors.size() > kMaxFetchSectors) {
    Reject(msg);
    return;
  }
  for (SectorIdx s : msg.sectors) {
    if (s >= ctx_.options.sectors) {
      Reject(msg);
      return;
    }
  }
  SyncMessage r = ctx_.Msg(SyncKind::kFetchReply, msg.request_id);
  for (SectorIdx s : msg.sectors) {
    FetchedSector f;
    f.sector = s;
    Result<Triple> v = ctx_.env->ReadSector(s);
    if (v.ok() && v->data != nullptr) {
      f.ok = true;
      f.value = *v;
    }
    r.fetched.push_back(std::move(f));
  }
  ctx_.env->SendSync(msg.sender, r);
}

}  // namespace atomdisk
