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

SyncServer::SyncServer(SyncContext& ctx, BucketDigests& digests)
    : ctx_(ctx),
      digests_(digests),
      // A request goes while the balance is above zero and is charged after, so the bucket
      // needs no room for a whole request: a tenth of a second's worth.
      budget_(ctx.options.serve_bytes_per_s, 0) {
  budget_.Reset(0);
}

void SyncServer::Reject(const SyncMessage& msg) {
  ++rejected_requests_;
  if (rejected_noted_.insert(msg.sender).second) {
    ctx_.env->Note("ignoring an out-of-range " + std::string(SyncKindName(msg.kind)) +
                   " request from peer " + std::to_string(msg.sender) +
                   " (further ones are only counted)");
  }
}

void SyncServer::Serve(const SyncMessage& msg, std::int64_t now_ms) {
  // Malformed requests are refused before they cost anything.
  switch (msg.kind) {
    case SyncKind::kDigest:
      if (!RangeOk(msg.first, msg.count, kMaxDigestBuckets, ctx_.buckets)) return Reject(msg);
      break;
    case SyncKind::kEntries:
      if (!RangeOk(msg.first, msg.count, kMaxEntrySectors, ctx_.options.sectors)) {
        return Reject(msg);
      }
      break;
    case SyncKind::kFetch:
      if (msg.sectors.empty() || msg.sectors.size() > kMaxFetchSectors) return Reject(msg);
      for (SectorIdx s : msg.sectors) {
        if (s >= ctx_.options.sectors) return Reject(msg);
      }
      break;
    default:
      return;
  }
  budget_.Refill(now_ms);
  bool waiting = false;
  for (const auto& [rank, q] : queued_) waiting = waiting || !q.empty();
  if (!waiting && budget_.Available()) return ServeNow(msg);
  std::deque<Queued>& q = queued_[msg.sender];
  if (q.size() >= kMaxQueuedPerPeer) {
    ++dropped_;
    if (dropped_noted_.insert(msg.sender).second) {
      ctx_.env->Note("sync requests from peer " + std::to_string(msg.sender) +
                     " exceed the serve budget (sync_serve_rate_mb) and its queue is full: "
                     "dropping the excess (further drops are only counted)");
    }
    return;
  }
  q.push_back(Queued{msg, now_ms});
}

void SyncServer::Tick(std::int64_t now_ms) {
  budget_.Refill(now_ms);
  // One request per sender in turn, starting after the sender served first last time.
  bool progress = true;
  while (progress) {
    progress = false;
    auto it = queued_.upper_bound(next_turn_);
    for (std::size_t n = 0; n < queued_.size(); ++n, ++it) {
      if (it == queued_.end()) it = queued_.begin();
      std::deque<Queued>& q = it->second;
      if (q.empty()) continue;
      if (!budget_.Available()) break;
      SyncMessage msg = std::move(q.front().msg);
      q.pop_front();
      next_turn_ = it->first;
      ++deferred_;
      ServeNow(msg);
      progress = true;
      break;
    }
  }
  // Whatever has waited half a request timeout goes now (see the header).
  if (ctx_.options.bug_serve_without_deadline) return;
  const std::int64_t max_wait = std::max<std::int64_t>(1, ctx_.options.request_timeout_ms / 2);
  for (auto& [rank, q] : queued_) {
    while (!q.empty() && now_ms - q.front().since_ms >= max_wait) {
      SyncMessage msg = std::move(q.front().msg);
      q.pop_front();
      ++deferred_;
      ServeNow(msg);
    }
  }
}

void SyncServer::ServeNow(const SyncMessage& msg) {
  ++served_;
  std::uint64_t sectors = 0;
  switch (msg.kind) {
    case SyncKind::kDigest:
      sectors = ServeDigest(msg);
      break;
    case SyncKind::kEntries:
      sectors = ServeEntries(msg);
      break;
    case SyncKind::kFetch:
      sectors = ServeFetch(msg);
      break;
    default:
      return;
  }
  budget_.Charge(static_cast<double>(sectors) * static_cast<double>(kSectorSize));
}

void SyncServer::FillStatus(SyncStatus::Serve& out) const {
  out.served = served_;
  out.deferred = deferred_;
  out.dropped = dropped_;
  out.queued = 0;
  for (const auto& [rank, q] : queued_) out.queued += q.size();
}

void SyncServer::CheckInvariants() const {
  for (const auto& [rank, q] : queued_) ATOMDISK_CHECK(q.size() <= kMaxQueuedPerPeer);
  ATOMDISK_CHECK(deferred_ <= served_);
}

// The Serve* functions run requests Serve() checked already.
std::uint64_t SyncServer::ServeDigest(const SyncMessage& msg) {
  const std::uint64_t scanned_before = digests_.scanned_sectors();
  SyncMessage r = ctx_.Msg(SyncKind::kDigestReply, msg.request_id);
  r.first = msg.first;
  r.count = msg.count;
  r.digests.reserve(msg.count);
  std::set<std::uint64_t> ahead;  // buckets with a value being persisted
  ctx_.env->ForEachServedAhead([&](SectorIdx sec) { ahead.insert(sec / kBucketSectors); });
  for (std::uint64_t b = msg.first; b < msg.first + msg.count; ++b) {
    std::optional<std::uint64_t> d = digests_.Served(b, ahead);
    if (!d) return digests_.scanned_sectors() - scanned_before;  // no reply: it retries
    r.digests.push_back(*d);
  }
  ctx_.env->SendSync(msg.sender, r);
  return digests_.scanned_sectors() - scanned_before;
}

std::uint64_t SyncServer::ServeEntries(const SyncMessage& msg) {
  std::uint64_t scanned = 0;
  SyncMessage r = ctx_.Msg(SyncKind::kEntriesReply, msg.request_id);
  r.first = msg.first;
  r.count = msg.count;
  Status s = ctx_.env->ScanTags(
      msg.first, msg.count, false, TagView::kServed, [&](SectorIdx sec, Tag t, bool) {
        ++scanned;
        if (t != Tag{} && sec >= msg.first && sec - msg.first < msg.count) {
          r.entries.push_back({sec, t});
        }
      });
  if (!s.ok()) return scanned;  // no reply: the requester retries or drops us
  std::sort(r.entries.begin(), r.entries.end(),
            [](const SyncEntry& a, const SyncEntry& b) { return a.sector < b.sector; });
  r.entries.erase(
      std::unique(r.entries.begin(), r.entries.end(),
                  [](const SyncEntry& a, const SyncEntry& b) { return a.sector == b.sector; }),
      r.entries.end());
  ctx_.env->SendSync(msg.sender, r);
  return scanned;
}

std::uint64_t SyncServer::ServeFetch(const SyncMessage& msg) {
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
  return msg.sectors.size();
}

}  // namespace atomdisk
