// ResyncPass (daemon/sync/resync_pass.h). Runs on the caller's thread, sees time only
// through the now_ms arguments and iterates only ordered containers, so the simulator replays
// a run byte for byte.
#include "daemon/sync/resync_pass.h"

#include <algorithm>
#include <cstdio>

namespace atomdisk {

namespace {

// Fetched-but-not-durable sectors (in flight + absorbing) of one pass: bounds the memory a
// pass holds (each is a 4 KiB value).
constexpr std::size_t kMaxAbsorbing = 512;
// Entries requests in flight per source and window.
constexpr std::size_t kMaxEntriesInFlight = 4;
// An Absorb that fails is retried this many times in a pass before the sector is given up.
constexpr int kMaxAbsorbFailures = 3;
// Progress lines during a pass, and the window of the recent pull rate.
constexpr std::int64_t kProgressIntervalMs = 5000;
constexpr std::int64_t kRateWindowMs = 5000;

std::string Fmt(const char* fmt, double a) {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, a);
  return buf;
}

}  // namespace

ResyncPass::ResyncPass(SyncContext& ctx, BucketDigests& digests, JoinHooks& hooks)
    : ctx_(ctx),
      digests_(digests),
      hooks_(hooks),
      rate_(ctx.options.rate_bytes_per_s,
            static_cast<double>(ctx.options.fetch_batch) * kSectorSize) {}

void ResyncPass::Begin(std::int64_t now_ms) { rate_.Reset(now_ms); }

void ResyncPass::SchedulePeriodic(std::int64_t now_ms) {
  if (ctx_.options.resync_interval_ms > 0) {
    next_pass_ms_ = now_ms + ctx_.options.resync_interval_ms;
  }
}

Status ResyncPass::StartNow(std::int64_t now_ms) {
  if (pass_) return Status::Busy("a resync pass is already running");
  next_pass_ms_ = -1;
  Start(/*join=*/false, ctx_.peers, 0, now_ms);
  return Status::Ok();
}

void ResyncPass::Tick(std::int64_t now_ms, bool voting) {
  if (pass_) {
    RetryRequests(now_ms);
    PumpFetches(now_ms);
    if (pass_ && now_ms - pass_->last_progress_ms >= kProgressIntervalMs) {
      pass_->last_progress_ms = now_ms;
      ctx_.env->Note(ProgressLine(now_ms));
    }
  } else if (voting && next_pass_ms_ >= 0 && now_ms >= next_pass_ms_) {
    next_pass_ms_ = -1;
    const Identity& id = ctx_.identity;
    std::uint64_t from = id.resync_active && !id.resync_join ? id.resync_next_window : 0;
    Start(/*join=*/false, ctx_.peers, from, now_ms);
  }
}

bool ResyncPass::OnReply(const SyncMessage& msg, std::int64_t now_ms) {
  auto it = requests_.find(msg.request_id);
  if (it == requests_.end() || it->second.to != msg.sender) return false;  // not ours
  Request req = it->second;  // a copy: the handlers erase the entry
  switch (msg.kind) {
    case SyncKind::kDigestReply:
      if (req.kind == ReqKind::kDigest && pass_) OnDigestReply(msg, req, now_ms);
      break;
    case SyncKind::kEntriesReply:
      if (req.kind == ReqKind::kEntries && pass_) OnEntriesReply(msg, req, now_ms);
      break;
    case SyncKind::kFetchReply:
      if (req.kind == ReqKind::kFetch && pass_) OnFetchReply(msg, req, now_ms);
      break;
    default:
      break;
  }
  return true;
}

bool ResyncPass::OnAbsorbed(std::uint64_t token, const Status& status, std::int64_t now_ms) {
  auto it = absorb_tokens_.find(token);
  if (it == absorb_tokens_.end()) return false;
  AbsorbToken tok = it->second;
  absorb_tokens_.erase(it);
  ATOMDISK_CHECK(pass_.has_value());
  OnPassAbsorbed(tok, status, now_ms);
  return true;
}

std::string ResyncPass::JoinStateLine() const {
  ATOMDISK_CHECK(pass_.has_value());
  std::string s = "joining: pulling from voting peers (window " + std::to_string(pass_->window) +
                  "/" + std::to_string(ctx_.windows) + ")";
  for (const Source& src : pass_->sources) {
    if (src.waiting) s += ", waiting for peer " + std::to_string(src.rank);
  }
  return s;
}

void ResyncPass::FillStatus(SyncStatus::Pass& out, std::int64_t now_ms) const {
  if (pass_) {
    RecordPassStatus(out, now_ms);
  } else {
    out = last_pass_;
  }
  out.passes_done = passes_done_;
}

void ResyncPass::CheckInvariants() const {
  if (!pass_) {
    ATOMDISK_CHECK(requests_.empty() && absorb_tokens_.empty());
    return;
  }
  const Pass& p = *pass_;
  ATOMDISK_CHECK(p.window <= ctx_.windows);
  ATOMDISK_CHECK(p.absorbing + p.sectors_in_flight <= kMaxAbsorbing);
  ATOMDISK_CHECK(p.fetches_in_flight <= ctx_.options.fetch_window);
  std::size_t queued = 0, fetching = 0, absorbing = 0;
  for (const auto& [s, w] : p.wants) {
    ATOMDISK_CHECK(!w.holders.empty());
    ATOMDISK_CHECK(s / kBucketSectors / kWindowBuckets == p.window);
    switch (w.state) {
      case Want::State::kQueued:
        ++queued;
        ATOMDISK_CHECK(p.queued.count(w.holders.front()) == 1 &&
                       p.queued.at(w.holders.front()).count(s) == 1);
        break;
      case Want::State::kFetching:
        ++fetching;
        break;
      case Want::State::kAbsorbing:
        ++absorbing;
        break;
    }
  }
  std::size_t in_sets = 0;
  for (const auto& [r, set] : p.queued) {
    ATOMDISK_CHECK(!set.empty());
    in_sets += set.size();
  }
  ATOMDISK_CHECK(in_sets == queued);
  ATOMDISK_CHECK(absorbing == p.absorbing);
  ATOMDISK_CHECK(fetching <= p.sectors_in_flight);
  ATOMDISK_CHECK(absorb_tokens_.size() == p.absorbing);
}

void ResyncPass::Start(bool join, const std::vector<Rank>& sources, std::uint64_t from,
                       std::int64_t now_ms) {
  ATOMDISK_CHECK(!pass_.has_value());
  if (from > ctx_.windows) from = ctx_.windows;
  pass_.emplace();
  Pass& p = *pass_;
  p.join = join;
  p.window = from;
  p.start_window = from;
  p.start_ms = now_ms;
  p.last_checkpoint_ms = now_ms;
  p.last_progress_ms = now_ms;
  for (Rank r : sources) p.sources.push_back(NewSource(r));
  if (join) hooks_.OnJoinPassStart();
  Identity next = ctx_.identity;
  next.resync_active = true;
  next.resync_join = join;
  next.resync_next_window = from;
  if (next != ctx_.identity) {
    Status s = ctx_.env->SaveIdentity(next);
    if (s.ok()) {
      ctx_.identity = next;
    } else {
      ctx_.env->Note("cannot save IDENTITY at pass start: " + s.ToString());
    }
  }
  pulled_samples_.clear();
  ctx_.env->Note(std::string(join ? "join" : "resync") + " pass from " + RankList(sources) +
                 ": window " + std::to_string(from) + " of " + std::to_string(ctx_.windows));
  if (p.window >= ctx_.windows || p.sources.empty()) {
    FinishPass(now_ms);
    return;
  }
  StartWindow(now_ms);
}

void ResyncPass::SendDigest(Source& src, std::int64_t now_ms) {
  Pass& p = *pass_;
  std::uint64_t first = p.window * kWindowBuckets;
  auto count = static_cast<std::uint32_t>(std::min(kWindowBuckets, ctx_.buckets - first));
  std::uint64_t id = ctx_.NewId();
  SyncMessage m = ctx_.Msg(SyncKind::kDigest, id);
  m.first = first;
  m.count = count;
  requests_[id] = Request{ReqKind::kDigest, src.rank, first, count, {}, now_ms, 1};
  ctx_.env->SendSync(src.rank, m);
}

// Sends the current window's Digest requests to every live source.
void ResyncPass::StartWindow(std::int64_t now_ms) {
  Pass& p = *pass_;
  ATOMDISK_CHECK(p.window < ctx_.windows);
  for (Source& src : p.sources) {
    src.digest_done = false;
    src.pending_buckets.clear();
    src.entries_in_flight = 0;
    if (!src.dropped) SendDigest(src, now_ms);
  }
}

bool ResyncPass::WindowDone() const {
  const Pass& p = *pass_;
  for (const Source& src : p.sources) {
    if (src.dropped) continue;
    if (!src.digest_done || !src.pending_buckets.empty() || src.entries_in_flight > 0) {
      return false;
    }
  }
  return p.wants.empty();
}

// Moves on while the current window is done (a loop, not recursion: windows with no live
// source finish at once); ends the pass after the last window.
void ResyncPass::MaybeAdvance(std::int64_t now_ms) {
  while (pass_ && WindowDone()) {
    Pass& p = *pass_;
    if (!p.join && !p.sources.empty()) {
      bool any = false;
      for (const Source& src : p.sources) any = any || !src.dropped;
      if (!any) {
        AbortPass(now_ms, "every source stopped answering");
        return;
      }
    }
    ++p.window;
    ++p.windows_done;
    if (p.window >= ctx_.windows) {
      FinishPass(now_ms);
      return;
    }
    if (now_ms - p.last_checkpoint_ms >= ctx_.options.checkpoint_interval_ms) Checkpoint(now_ms);
    StartWindow(now_ms);
  }
}

void ResyncPass::Checkpoint(std::int64_t now_ms) {
  Pass& p = *pass_;
  Identity next = ctx_.identity;
  next.resync_active = true;
  next.resync_join = p.join;
  next.resync_next_window = p.window;
  Status s = ctx_.env->SaveIdentity(next);
  if (s.ok()) {
    ctx_.identity = next;
    p.last_checkpoint_ms = now_ms;
  } else {
    ctx_.env->Note("cannot save the resync resume point: " + s.ToString());
  }
}

void ResyncPass::RecordPassStatus(SyncStatus::Pass& out, std::int64_t now_ms) const {
  const Pass& p = *pass_;
  out.active = true;
  out.join = p.join;
  out.window = p.window;
  out.windows = ctx_.windows;
  out.sectors_pulled = p.sectors_pulled;
  out.bytes_pulled = p.bytes_pulled;
  out.sectors_to_go = p.wants.size();
  out.bytes_per_s = RecentRate(now_ms);
  out.eta_s = -1;
  std::uint64_t left = ctx_.windows - p.window;
  if (p.windows_done > 0 && now_ms > p.start_ms) {
    // From the pace of the windows done so far.
    double per_window_s =
        static_cast<double>(now_ms - p.start_ms) / 1000.0 / static_cast<double>(p.windows_done);
    out.eta_s = per_window_s * static_cast<double>(left);
  } else if (left == 0) {
    out.eta_s = 0;
  } else if (out.bytes_per_s > 0 && left == 1) {
    // The last (or only) window: what is known to be missing at the recent rate.
    out.eta_s = static_cast<double>(out.sectors_to_go * kSectorSize) / out.bytes_per_s;
  }
}

double ResyncPass::RecentRate(std::int64_t now_ms) const {
  std::uint64_t bytes = 0;
  for (const auto& [ms, b] : pulled_samples_) {
    if (ms + kRateWindowMs >= now_ms) bytes += b;
  }
  std::int64_t span = kRateWindowMs;
  if (pass_ && now_ms - pass_->start_ms < span) span = now_ms - pass_->start_ms;
  if (span <= 0) return 0;
  return static_cast<double>(bytes) * 1000.0 / static_cast<double>(span);
}

std::string ResyncPass::ProgressLine(std::int64_t now_ms) const {
  SyncStatus::Pass s;
  RecordPassStatus(s, now_ms);
  return std::string(pass_->join ? "join" : "resync") + " pass: window " +
         std::to_string(s.window) + "/" + std::to_string(s.windows) + ", " +
         std::to_string(s.sectors_pulled) + " sectors pulled, " + std::to_string(s.sectors_to_go) +
         " to go, " + Fmt("%.1f MB/s", s.bytes_per_s / 1e6) + ", ETA " +
         (s.eta_s < 0 ? std::string("unknown") : Fmt("%.0f s", s.eta_s));
}

void ResyncPass::FinishPass(std::int64_t now_ms) {
  Pass& p = *pass_;
  ATOMDISK_CHECK(p.wants.empty() && p.absorbing == 0);
  bool join = p.join;
  std::uint64_t max_ts_seen = p.max_ts_seen;
  double secs = static_cast<double>(now_ms - p.start_ms) / 1000.0;
  ctx_.env->Note(std::string(join ? "join" : "resync") +
                 " pass done: " + std::to_string(p.windows_done) + " windows, " +
                 std::to_string(p.sectors_pulled) + " sectors (" + std::to_string(p.bytes_pulled) +
                 " bytes) pulled in " + Fmt("%.1f s", secs));
  RecordPassStatus(last_pass_, now_ms);
  last_pass_.active = false;
  last_pass_.sectors_to_go = 0;
  last_pass_.eta_s = -1;
  ++passes_done_;
  requests_.clear();
  pass_.reset();
  if (ctx_.options.resync_interval_ms > 0) next_pass_ms_ = now_ms + ctx_.options.resync_interval_ms;
  if (join) {
    // Everything a quorum may have promised is durable here now: membership votes.
    hooks_.OnJoinPassDone(max_ts_seen, now_ms);
    return;
  }
  Identity next = ctx_.identity;
  next.resync_active = false;
  next.resync_join = false;
  next.resync_next_window = 0;
  if (next != ctx_.identity) {
    Status s = ctx_.env->SaveIdentity(next);
    if (s.ok()) {
      ctx_.identity = next;
    } else {
      ctx_.env->Note("cannot save IDENTITY at pass end: " + s.ToString());
    }
  }
}

// A non-join pass whose sources all stopped answering: the resume point stays saved and
// the pass is retried later from there.
void ResyncPass::AbortPass(std::int64_t now_ms, const std::string& why) {
  Pass& p = *pass_;
  ATOMDISK_CHECK(!p.join && p.wants.empty() && p.absorbing == 0);
  ctx_.env->Note("resync pass stopped at window " + std::to_string(p.window) + ": " + why);
  Checkpoint(now_ms);
  RecordPassStatus(last_pass_, now_ms);
  last_pass_.active = false;
  requests_.clear();
  pass_.reset();
  std::int64_t retry = ctx_.options.resync_interval_ms > 0 ? ctx_.options.resync_interval_ms
                                                           : 10 * ctx_.options.request_timeout_ms;
  next_pass_ms_ = now_ms + std::max<std::int64_t>(1, retry);
}

ResyncPass::Source ResyncPass::NewSource(Rank r) {
  Source s;
  s.rank = r;
  return s;
}

ResyncPass::Source* ResyncPass::FindSource(Rank r) {
  if (!pass_) return nullptr;
  for (Source& s : pass_->sources) {
    if (s.rank == r) return &s;
  }
  return nullptr;
}

void ResyncPass::SendEntries(Source& src, std::int64_t now_ms) {
  while (src.entries_in_flight < kMaxEntriesInFlight && !src.pending_buckets.empty()) {
    std::uint64_t b = src.pending_buckets.front();
    src.pending_buckets.pop_front();
    std::uint64_t first = b * kBucketSectors;
    auto count = static_cast<std::uint32_t>(
        std::min<std::uint64_t>(kBucketSectors, ctx_.options.sectors - first));
    std::uint64_t id = ctx_.NewId();
    SyncMessage m = ctx_.Msg(SyncKind::kEntries, id);
    m.first = first;
    m.count = count;
    requests_[id] = Request{ReqKind::kEntries, src.rank, first, count, {}, now_ms, 1};
    ++src.entries_in_flight;
    ctx_.env->SendSync(src.rank, m);
  }
}

void ResyncPass::OnDigestReply(const SyncMessage& msg, const Request& req, std::int64_t now_ms) {
  Source* src = FindSource(msg.sender);
  if (src == nullptr || src->dropped || src->digest_done) return;
  if (msg.first != req.first || msg.count != req.count || msg.digests.size() != req.count) {
    return;  // malformed for this request: it times out and is re-sent
  }
  requests_.erase(msg.request_id);
  src->digest_done = true;
  src->waiting = false;
  for (std::uint32_t i = 0; i < req.count; ++i) {
    std::uint64_t b = req.first + i;
    std::optional<std::uint64_t> own = digests_.Own(b);
    if (!own || *own != msg.digests[i]) src->pending_buckets.push_back(b);
  }
  SendEntries(*src, now_ms);
  MaybeAdvance(now_ms);
}

void ResyncPass::OnEntriesReply(const SyncMessage& msg, const Request& req, std::int64_t now_ms) {
  Source* src = FindSource(msg.sender);
  if (src == nullptr || src->dropped) return;
  if (msg.first != req.first || msg.count != req.count) return;
  for (const SyncEntry& e : msg.entries) {
    if (e.sector < req.first || e.sector - req.first >= req.count) return;
  }
  requests_.erase(msg.request_id);
  ATOMDISK_CHECK(src->entries_in_flight > 0);
  --src->entries_in_flight;
  src->waiting = false;
  Rank rank = src->rank;
  // Our own durable tags for the range. If the scan fails, every peer
  // entry is fetched: Absorb never lowers a tag, so that only costs bandwidth.
  std::vector<Tag> own(req.count);
  Status s = ctx_.env->ScanTags(req.first, req.count, false, TagView::kDurable,
                                [&](SectorIdx sec, Tag t, bool) {
                                  if (sec >= req.first && sec - req.first < req.count)
                                    own[sec - req.first] = t;
                                });
  if (!s.ok()) std::fill(own.begin(), own.end(), Tag{});
  for (const SyncEntry& e : msg.entries) {
    if (e.tag > own[e.sector - req.first]) AddWant(e.sector, e.tag, rank);
  }
  if (pass_->join) {
    for (const SyncEntry& e : msg.entries) {
      pass_->max_ts_seen = std::max(pass_->max_ts_seen, e.tag.ts);
    }
    for (const Tag& t : own) pass_->max_ts_seen = std::max(pass_->max_ts_seen, t.ts);
  }
  SendEntries(*src, now_ms);
  PumpFetches(now_ms);
  MaybeAdvance(now_ms);
}

void ResyncPass::Enqueue(SectorIdx s, Want& w) {
  ATOMDISK_CHECK(!w.holders.empty());
  w.state = Want::State::kQueued;
  pass_->queued[w.holders.front()].insert(s);
}

void ResyncPass::Unqueue(SectorIdx s, Want& w) {
  auto it = pass_->queued.find(w.holders.front());
  ATOMDISK_CHECK(it != pass_->queued.end());
  it->second.erase(s);
  if (it->second.empty()) pass_->queued.erase(it);
}

void ResyncPass::AddWant(SectorIdx s, Tag t, Rank from) {
  Pass& p = *pass_;
  auto it = p.wants.find(s);
  if (it == p.wants.end()) {
    Want w;
    w.tag = t;
    w.holders = {from};
    auto [ins, ok] = p.wants.emplace(s, std::move(w));
    ATOMDISK_CHECK(ok);
    Enqueue(s, ins->second);
    return;
  }
  Want& w = it->second;
  if (t < w.tag) return;
  if (t == w.tag) {
    if (std::find(w.holders.begin(), w.holders.end(), from) == w.holders.end()) {
      w.holders.push_back(from);
    }
    return;
  }
  // Newer than what we were after: fetch that one instead (an in-flight fetch or absorb of
  // the older value completes first and then finds the want newer than what it got).
  bool queued = w.state == Want::State::kQueued;
  if (queued) Unqueue(s, w);
  w.tag = t;
  w.holders = {from};
  if (queued) Enqueue(s, w);
}

// The fetch of `s` from `from` failed (unreadable there, an older value, or the source
// left): try another holder, or give the sector up for this pass.
void ResyncPass::FetchFailed(SectorIdx s, Rank from, const char* why) {
  Pass& p = *pass_;
  auto it = p.wants.find(s);
  if (it == p.wants.end()) return;
  Want& w = it->second;
  ATOMDISK_CHECK(w.state == Want::State::kFetching);
  std::erase(w.holders, from);
  if (w.holders.empty()) {
    ctx_.env->Note("resync: sector " + std::to_string(s) + " could not be fetched (" + why +
                   " at peer " + std::to_string(from) + "), skipped in this pass");
    p.wants.erase(it);
    return;
  }
  Enqueue(s, w);
}

void ResyncPass::PumpFetches(std::int64_t now_ms) {
  if (!pass_) return;
  Pass& p = *pass_;
  rate_.Refill(now_ms);
  while (p.fetches_in_flight < ctx_.options.fetch_window && !p.queued.empty() &&
         p.absorbing + p.sectors_in_flight < kMaxAbsorbing) {
    // Round-robin over sources, in rank order.
    auto qit = p.queued.upper_bound(p.last_fetch_source);
    if (qit == p.queued.end()) qit = p.queued.begin();
    std::size_t room = kMaxAbsorbing - p.absorbing - p.sectors_in_flight;
    std::size_t n = std::min<std::size_t>({ctx_.options.fetch_batch, room, qit->second.size()});
    double need = static_cast<double>(n) * kSectorSize;
    if (!rate_.TryTake(need)) break;
    Rank to = qit->first;
    p.last_fetch_source = to;
    std::vector<SectorIdx> sectors;
    auto sit = qit->second.begin();
    for (std::size_t i = 0; i < n; ++i) sectors.push_back(*sit++);
    qit->second.erase(qit->second.begin(), sit);
    if (qit->second.empty()) p.queued.erase(qit);
    for (SectorIdx s : sectors) p.wants.at(s).state = Want::State::kFetching;
    std::uint64_t id = ctx_.NewId();
    SyncMessage m = ctx_.Msg(SyncKind::kFetch, id);
    m.sectors = sectors;
    p.fetches_in_flight += 1;
    p.sectors_in_flight += sectors.size();
    requests_[id] = Request{ReqKind::kFetch, to, 0, 0, std::move(sectors), now_ms, 1};
    ctx_.env->SendSync(to, m);
  }
}

void ResyncPass::OnFetchReply(const SyncMessage& msg, Request req, std::int64_t now_ms) {
  Pass& p = *pass_;
  requests_.erase(msg.request_id);
  ATOMDISK_CHECK(p.fetches_in_flight > 0 && p.sectors_in_flight >= req.sectors.size());
  --p.fetches_in_flight;
  p.sectors_in_flight -= req.sectors.size();
  if (Source* src = FindSource(msg.sender)) src->waiting = false;
  std::map<SectorIdx, const FetchedSector*> got;
  for (const FetchedSector& f : msg.fetched) {
    got.emplace(f.sector, &f);
    if (p.join && f.ok) p.max_ts_seen = std::max(p.max_ts_seen, f.value.tag.ts);
  }
  for (SectorIdx s : req.sectors) {
    auto w = p.wants.find(s);
    if (w == p.wants.end() || w->second.state != Want::State::kFetching) continue;
    auto g = got.find(s);
    if (g == got.end() || !g->second->ok || g->second->value.data == nullptr) {
      FetchFailed(s, msg.sender, "unreadable");
      continue;
    }
    const Triple& v = g->second->value;
    if (v.tag < w->second.tag) {
      // Older than the entry we were after (the source regressed, or a newer entry came
      // from another source meanwhile).
      FetchFailed(s, msg.sender, "older value");
      continue;
    }
    w->second.state = Want::State::kAbsorbing;
    ++p.absorbing;
    std::uint64_t token = ctx_.NewId();
    absorb_tokens_[token] = AbsorbToken{s, v.tag};
    digests_.Invalidate(s);
    ctx_.env->Absorb(s, v, token);
  }
  PumpFetches(now_ms);
  MaybeAdvance(now_ms);
}

void ResyncPass::OnPassAbsorbed(const AbsorbToken& tok, const Status& status, std::int64_t now_ms) {
  Pass& p = *pass_;
  auto it = p.wants.find(tok.sector);
  ATOMDISK_CHECK(it != p.wants.end() && it->second.state == Want::State::kAbsorbing);
  ATOMDISK_CHECK(p.absorbing > 0);
  --p.absorbing;
  Want& w = it->second;
  digests_.Invalidate(tok.sector);
  if (!status.ok()) {
    if (++w.absorb_failures >= kMaxAbsorbFailures) {
      ctx_.env->Note("resync: cannot store sector " + std::to_string(tok.sector) + ": " +
                     status.ToString() + "; skipped in this pass");
      p.wants.erase(it);
    } else {
      Enqueue(tok.sector, w);
    }
  } else {
    ++p.sectors_pulled;
    p.bytes_pulled += kSectorSize;
    if (!pulled_samples_.empty() && pulled_samples_.back().first == now_ms) {
      pulled_samples_.back().second += kSectorSize;  // one sample per instant: bounded
    } else {
      pulled_samples_.emplace_back(now_ms, kSectorSize);
    }
    while (!pulled_samples_.empty() && pulled_samples_.front().first + kRateWindowMs < now_ms) {
      pulled_samples_.pop_front();
    }
    if (tok.tag >= w.tag) {
      p.wants.erase(it);
    } else {
      Enqueue(tok.sector, w);  // a newer value was found meanwhile
    }
  }
  PumpFetches(now_ms);
  MaybeAdvance(now_ms);
}

// A source answered nothing twice in a row.
void ResyncPass::SourceFailed(Rank r, std::int64_t now_ms) {
  Pass& p = *pass_;
  Source* src = FindSource(r);
  if (src == nullptr) return;
  std::optional<Rank> replacement;
  if (p.join) {
    for (Rank v : hooks_.FreshVotingPeers(now_ms)) {
      if (FindSource(v) == nullptr) {
        replacement = v;
        break;
      }
    }
    if (!replacement) {
      // Nobody else can vouch for this window: keep asking (see RetryRequests).
      if (!src->waiting) {
        ctx_.env->Note("join pass: waiting for peer " + std::to_string(r) +
                       " (no other voting peer to pull from)");
      }
      src->waiting = true;
      return;
    }
  }
  // Forget everything outstanding at r.
  std::vector<std::uint64_t> ids;
  for (const auto& [id, req] : requests_) {
    if (req.to == r) ids.push_back(id);
  }
  for (std::uint64_t id : ids) {
    Request req = std::move(requests_.at(id));
    requests_.erase(id);
    if (req.kind == ReqKind::kFetch) {
      --p.fetches_in_flight;
      p.sectors_in_flight -= req.sectors.size();
      for (SectorIdx s : req.sectors) {
        auto w = p.wants.find(s);
        if (w != p.wants.end() && w->second.state == Want::State::kFetching) {
          FetchFailed(s, r, "no answer");
        }
      }
    }
  }
  // Queued wants: r can no longer serve them.
  if (auto q = p.queued.find(r); q != p.queued.end()) {
    std::set<SectorIdx> sectors = std::move(q->second);
    p.queued.erase(q);
    for (SectorIdx s : sectors) {
      Want& w = p.wants.at(s);
      std::erase(w.holders, r);
      if (w.holders.empty()) {
        p.wants.erase(s);
      } else {
        Enqueue(s, w);
      }
    }
  }
  // Elsewhere r is only a fallback holder (no queued want has r in front any more, and
  // fetches at r were failed above): forget it.
  for (auto& [s, w] : p.wants) {
    if (w.holders.size() > 1) std::erase(w.holders, r);
  }
  src = FindSource(r);
  if (replacement) {
    ctx_.env->Note("join pass: peer " + std::to_string(r) + " does not answer, pulling from peer " +
                   std::to_string(*replacement) + " instead");
    *src = NewSource(*replacement);
    SendDigest(*src, now_ms);
  } else {
    ctx_.env->Note("resync pass: peer " + std::to_string(r) +
                   " does not answer, dropped for the rest of the pass");
    src->dropped = true;
    src->pending_buckets.clear();
    src->entries_in_flight = 0;
  }
  PumpFetches(now_ms);
  MaybeAdvance(now_ms);
}

void ResyncPass::Resend(std::uint64_t id, Request& req, std::int64_t now_ms) {
  SyncMessage m;
  switch (req.kind) {
    case ReqKind::kDigest:
      m = ctx_.Msg(SyncKind::kDigest, id);
      m.first = req.first;
      m.count = req.count;
      break;
    case ReqKind::kEntries:
      m = ctx_.Msg(SyncKind::kEntries, id);
      m.first = req.first;
      m.count = req.count;
      break;
    case ReqKind::kFetch:
      m = ctx_.Msg(SyncKind::kFetch, id);
      m.sectors = req.sectors;
      break;
  }
  req.sent_ms = now_ms;
  ++req.sends;
  ctx_.env->SendSync(req.to, m);
}

// Re-sends a request unanswered for request_timeout_ms once; a second timeout fails its
// source (dropped, replaced, or for a join source with no replacement, asked again).
void ResyncPass::RetryRequests(std::int64_t now_ms) {
  std::set<Rank> failed;
  for (auto& [id, req] : requests_) {
    if (now_ms - req.sent_ms < ctx_.options.request_timeout_ms) continue;
    if (req.sends < 2) {
      Resend(id, req, now_ms);
    } else {
      failed.insert(req.to);
    }
  }
  for (Rank r : failed) {
    if (!pass_) break;
    SourceFailed(r, now_ms);
    Source* src = FindSource(r);
    if (src == nullptr || !src->waiting) continue;
    for (auto& [id, req] : requests_) {
      if (req.to == r && now_ms - req.sent_ms >= ctx_.options.request_timeout_ms) {
        Resend(id, req, now_ms);
      }
    }
  }
}

}  // namespace atomdisk
