// Scrub and read repair (daemon/sync/scrub.h).
#include "daemon/sync/scrub.h"

#include <algorithm>
#include <cstddef>
#include <iterator>
#include <string>

namespace atomdisk {

namespace {

// Repairs pending at once, and how long a repair waits for its peers (in request timeouts)
// before it counts as unrepaired.
constexpr std::size_t kMaxScrubRepairs = 512;
constexpr std::int64_t kScrubRepairTimeouts = 3;
// Sectors waiting for a repair outside a run (and start times remembered), and the longest wait
// between two attempts.
constexpr std::size_t kMaxRetries = 4096;
constexpr std::int64_t kMaxRetryMs = 60'000;

}  // namespace

void Scrub::Schedule(std::int64_t now_ms) {
  if (ctx_.options.scrub_interval_ms > 0) next_run_ms_ = now_ms + ctx_.options.scrub_interval_ms;
}

Status Scrub::Start(std::int64_t now_ms) {
  if (run_.active) return Status::Busy("a scrub is already running");
  std::uint64_t runs = run_.runs_done;
  run_ = Run{};
  run_.runs_done = runs;
  run_.active = true;
  run_.start_ms = now_ms;
  ctx_.env->Note("scrub started: " + std::to_string(ctx_.buckets) + " buckets");
  return Status::Ok();
}

void Scrub::Tick(std::int64_t now_ms) {
  if (!run_.active && next_run_ms_ >= 0 && now_ms >= next_run_ms_) {
    next_run_ms_ = -1;
    (void)Start(now_ms);
  }
  ScanChunk(now_ms);
  StartDue(now_ms);
  Progress(now_ms);
}

void Scrub::RepairNow(SectorIdx sector, std::int64_t now_ms) {
  if (sector >= ctx_.options.sectors) return;
  Remember(sector, now_ms);
  auto it = retries_.find(sector);
  if (it != retries_.end() && repairs_.count(sector) == 0 && repairs_.size() < kMaxScrubRepairs) {
    Attempt(it, now_ms);
  }
}

std::uint64_t Scrub::PendingRepairs() const {
  std::uint64_t n = retries_.size();
  for (const auto& [sector, rep] : repairs_) n += retries_.count(sector) == 0 ? 1 : 0;
  return n;
}

void Scrub::Remember(SectorIdx sector, std::int64_t due_ms) {
  auto it = retries_.find(sector);
  if (it != retries_.end()) {
    it->second.due_ms = std::min(it->second.due_ms, due_ms);
  } else if (retries_.size() < kMaxRetries) {
    retries_.emplace(sector, Retry{due_ms, 0});
  }
}

bool Scrub::Retrying(SectorIdx sector) const {
  auto it = retries_.find(sector);
  return it != retries_.end() && it->second.attempts > 1;
}

std::int64_t Scrub::Backoff(std::uint32_t attempts) const {
  const std::int64_t base = std::max<std::int64_t>(1, ctx_.options.request_timeout_ms);
  return std::min(kMaxRetryMs, base << std::min<std::uint32_t>(attempts, 16));
}

void Scrub::StartDue(std::int64_t now_ms) {
  for (SectorIdx s : ctx_.found_failed) {
    if (s < ctx_.options.sectors) Remember(s, now_ms);
  }
  ctx_.found_failed.clear();
  for (auto it = retries_.begin(); it != retries_.end() && repairs_.size() < kMaxScrubRepairs;) {
    auto next = std::next(it);
    if (it->second.due_ms <= now_ms && repairs_.count(it->first) == 0) Attempt(it, now_ms);
    it = next;
  }
}

void Scrub::Attempt(std::map<SectorIdx, Retry>::iterator it, std::int64_t now_ms) {
  const SectorIdx sector = it->first;
  Retry& r = it->second;
  ATOMDISK_CHECK(repairs_.count(sector) == 0);
  auto last = start_ms_.find(sector);
  if (last != start_ms_.end() && now_ms - last->second < ctx_.options.request_timeout_ms) {
    r.due_ms = last->second + ctx_.options.request_timeout_ms;
    return;
  }
  std::optional<Tag> own;
  Status s =
      ctx_.env->ScanTags(sector, 1, true, TagView::kDurable, [&](SectorIdx sec, Tag t, bool ok) {
        if (sec == sector && !ok) own = t;
      });
  if (!s.ok()) {  // an I/O error: later
    r.due_ms = now_ms + Backoff(r.attempts);
    return;
  }
  if (!own) {  // nothing wrong with it (any more)
    retries_.erase(it);
    return;
  }
  ++r.attempts;
  if (start_ms_.size() >= kMaxRetries) start_ms_.clear();
  start_ms_[sector] = now_ms;
  r.due_ms = now_ms + Backoff(r.attempts);  // if it ends unrepaired, EndRepair sets it again
  ++read_.started;
  repairs_[sector] = Repair{*own, {}, now_ms, false, true};
  if (r.attempts == 1) {
    ctx_.env->Note("read repair: sector " + std::to_string(sector) +
                   " has a slot that failed its checks; asking the peers");
  }
  FetchFromPeers({sector}, now_ms);
}

void Scrub::ScanChunk(std::int64_t now_ms) {
  if (!run_.active) return;
  const SyncerOptions& options = ctx_.options;
  SyncEnv* env = ctx_.env;
  std::vector<SectorIdx> found;
  for (std::uint32_t i = 0; i < std::max<std::uint32_t>(1, options.scrub_buckets_per_tick) &&
                            run_.bucket < ctx_.buckets && repairs_.size() < kMaxScrubRepairs;
       ++i) {
    std::uint64_t b = run_.bucket++;
    std::uint64_t first = b * kBucketSectors;
    std::uint64_t count = std::min<std::uint64_t>(kBucketSectors, options.sectors - first);
    Status s =
        env->ScanTags(first, count, true, TagView::kDurable, [&](SectorIdx sec, Tag t, bool ok) {
          if (sec < first || sec - first >= count) return;
          ++run_.checked;
          if (ok) return;
          ++run_.corrupt;
          auto rep = repairs_.find(sec);
          if (rep == repairs_.end()) {
            repairs_[sec] = Repair{t, {}, now_ms, false, false};
            found.push_back(sec);
          } else if (rep->second.read_repair) {
            // A read repair has it: the run takes it over, with a fresh time budget, so that
            // the run ends only once it is settled.
            rep->second.read_repair = false;
            rep->second.start_ms = now_ms;
            --read_.started;
          }
        });
    if (!s.ok()) env->Note("scrub: cannot scan bucket " + std::to_string(b) + ": " + s.ToString());
  }
  FetchFromPeers(found, now_ms);
}

void Scrub::FetchFromPeers(const std::vector<SectorIdx>& found, std::int64_t now_ms) {
  if (found.empty()) return;
  if (ctx_.peers.size() < ctx_.options.RequiredSources()) {
    for (SectorIdx sec : found) {
      if (!Retrying(sec)) {
        ctx_.env->Note("scrub: sector " + std::to_string(sec) +
                       " is corrupt and no peer can repair it");
      }
      EndRepair(repairs_.find(sec), Outcome::kUnrepaired, now_ms);
    }
    return;
  }
  for (std::size_t i = 0; i < found.size(); i += kMaxFetchSectors) {
    std::vector<SectorIdx> batch(
        found.begin() + static_cast<std::ptrdiff_t>(i),
        found.begin() + static_cast<std::ptrdiff_t>(std::min(found.size(), i + kMaxFetchSectors)));
    for (Rank r : ctx_.peers) {
      std::uint64_t id = ctx_.NewId();
      SyncMessage m = ctx_.Msg(SyncKind::kFetch, id);
      m.sectors = batch;
      requests_[id] = Request{r, batch, now_ms, 1};
      ctx_.env->SendSync(r, m);
    }
  }
}

void Scrub::Progress(std::int64_t now_ms) {
  const SyncerOptions& options = ctx_.options;
  // Repairs whose peers did not answer in time.
  for (auto it = repairs_.begin(); it != repairs_.end();) {
    auto next = std::next(it);
    if (!it->second.absorbing &&
        now_ms - it->second.start_ms >= kScrubRepairTimeouts * options.request_timeout_ms) {
      if (!Retrying(it->first)) {
        ctx_.env->Note("scrub: sector " + std::to_string(it->first) +
                       " is corrupt and too few peers answered to repair it; trying again later");
      }
      EndRepair(it, Outcome::kUnrepaired, now_ms);
    }
    it = next;
  }
  // Fetches: re-send unanswered ones; drop those with nothing left to decide.
  for (auto it = requests_.begin(); it != requests_.end();) {
    Request& req = it->second;
    bool needed = false;
    for (SectorIdx s : req.sectors) {
      auto rep = repairs_.find(s);
      needed = needed || (rep != repairs_.end() && !rep->second.absorbing &&
                          rep->second.answers.count(req.to) == 0);
    }
    if (!needed) {
      it = requests_.erase(it);
      continue;
    }
    if (now_ms - req.sent_ms >= options.request_timeout_ms) {
      SyncMessage m = ctx_.Msg(SyncKind::kFetch, it->first);
      m.sectors = req.sectors;
      req.sent_ms = now_ms;
      ++req.sends;
      ctx_.env->SendSync(req.to, m);
    }
    ++it;
  }
  MaybeFinish(now_ms);
}

bool Scrub::OnReply(const SyncMessage& msg, std::int64_t now_ms) {
  auto it = requests_.find(msg.request_id);
  if (it == requests_.end() || it->second.to != msg.sender) return false;  // not ours
  if (msg.kind == SyncKind::kFetchReply) {
    Request req = it->second;  // a copy: the handler erases the entry
    OnFetchReply(msg, req, now_ms);
  }
  return true;
}

void Scrub::OnFetchReply(const SyncMessage& msg, const Request& req, std::int64_t now_ms) {
  std::vector<SectorIdx> sectors = req.sectors;
  requests_.erase(msg.request_id);
  std::map<SectorIdx, const FetchedSector*> got;
  for (const FetchedSector& f : msg.fetched) got.emplace(f.sector, &f);
  for (SectorIdx s : sectors) {
    auto rep = repairs_.find(s);
    if (rep == repairs_.end() || rep->second.absorbing) continue;
    auto g = got.find(s);
    std::optional<Triple> v;
    if (g != got.end() && g->second->ok && g->second->value.data != nullptr) {
      v = g->second->value;
    }
    rep->second.answers[msg.sender] = v;
    const std::size_t needed =
        ctx_.options.bug_repair_one_peer ? 1 : ctx_.options.RequiredSources();
    if (rep->second.answers.size() < needed) continue;
    // Enough peers answered: the newest value any of them holds, if newer than our valid
    // copy; else that copy, written over the bad slot.
    std::optional<Triple> best;
    for (const auto& [r, a] : rep->second.answers) {
      if (a && (!best || a->tag > best->tag)) best = a;
    }
    if (best && !(best->tag > rep->second.own)) best.reset();
    rep->second.absorbing = true;
    std::uint64_t token = ctx_.NewId();
    absorb_tokens_[token] = AbsorbToken{s, best ? best->tag : rep->second.own, !best.has_value()};
    digests_.Invalidate(s);
    ctx_.env->Repair(s, best, token);
  }
  MaybeFinish(now_ms);
}

void Scrub::EndRepair(std::map<SectorIdx, Repair>::iterator it, Outcome outcome,
                      std::int64_t now_ms) {
  ATOMDISK_CHECK(it != repairs_.end());
  if (outcome == Outcome::kUnrepaired) {
    Remember(it->first, now_ms);
    auto r = retries_.find(it->first);
    if (r != retries_.end()) r->second.due_ms = now_ms + Backoff(r->second.attempts);
  } else {
    retries_.erase(it->first);
  }
  if (it->second.read_repair) {
    if (outcome == Outcome::kUnrepaired) {
      ++read_.unrepaired;
    } else {
      ++read_.repaired;
    }
  } else {
    switch (outcome) {
      case Outcome::kRepaired:
        ++run_.repaired;
        break;
      case Outcome::kStale:
        ++run_.stale;
        break;
      case Outcome::kUnrepaired:
        ++run_.unrepaired;
        break;
    }
  }
  repairs_.erase(it);
}

bool Scrub::OnAbsorbed(std::uint64_t token, const Status& status, std::int64_t now_ms) {
  auto it = absorb_tokens_.find(token);
  if (it == absorb_tokens_.end()) return false;
  AbsorbToken tok = it->second;
  absorb_tokens_.erase(it);
  auto rep = repairs_.find(tok.sector);
  ATOMDISK_CHECK(rep != repairs_.end() && rep->second.absorbing);
  digests_.Invalidate(tok.sector);
  const char* what = rep->second.read_repair ? "read repair: sector " : "scrub: sector ";
  if (status.ok()) {
    ctx_.env->Note(std::string(what) + std::to_string(tok.sector) +
                   (tok.own ? " rewritten from our copy " : " repaired with ") +
                   tok.tag.ToString());
    EndRepair(rep, tok.own ? Outcome::kStale : Outcome::kRepaired, now_ms);
  } else {
    ctx_.env->Note(std::string(what) + std::to_string(tok.sector) +
                   ": cannot store the repair: " + status.ToString());
    EndRepair(rep, Outcome::kUnrepaired, now_ms);
  }
  MaybeFinish(now_ms);
  return true;
}

void Scrub::MaybeFinish(std::int64_t now_ms) {
  if (!run_.active || run_.bucket < ctx_.buckets) return;
  for (const auto& [sector, rep] : repairs_) {
    if (!rep.read_repair) return;
  }
  run_.active = false;
  ++run_.runs_done;
  ctx_.env->Note("scrub done: " + std::to_string(run_.checked) + " sectors checked, " +
                 std::to_string(run_.corrupt) + " corrupt, " + std::to_string(run_.repaired) +
                 " repaired, " + std::to_string(run_.unrepaired) + " unrepaired, " +
                 std::to_string(run_.stale) + " rewritten from our own copy");
  Schedule(now_ms);
}

void Scrub::FillStatus(SyncStatus::Scrub& out) const {
  out.active = run_.active;
  out.bucket = run_.bucket;
  out.buckets = ctx_.buckets;
  out.sectors_checked = run_.checked;
  out.corrupt = run_.corrupt;
  out.repaired = run_.repaired;
  out.unrepaired = run_.unrepaired;
  out.stale = run_.stale;
  out.runs_done = run_.runs_done;
  out.read_repairs = read_.started;
  out.read_repaired = read_.repaired;
  out.read_unrepaired = read_.unrepaired;
  out.pending_repairs = PendingRepairs();
}

void Scrub::CheckInvariants() const {
  ATOMDISK_CHECK(run_.bucket <= ctx_.buckets);
  ATOMDISK_CHECK(repairs_.size() <=
                 kMaxScrubRepairs + kBucketSectors * std::max<std::uint32_t>(
                                                         1, ctx_.options.scrub_buckets_per_tick));
  std::uint64_t run_pending = 0, read_pending = 0;
  for (const auto& [sector, rep] : repairs_) ++(rep.read_repair ? read_pending : run_pending);
  ATOMDISK_CHECK(read_.repaired + read_.unrepaired + read_pending == read_.started);
  ATOMDISK_CHECK(retries_.size() <= kMaxRetries && start_ms_.size() <= kMaxRetries);
  for (const auto& [sector, r] : retries_) {
    ATOMDISK_CHECK(sector < ctx_.options.sectors);
    ATOMDISK_CHECK(r.attempts > 0 || repairs_.count(sector) == 0 ||
                   !repairs_.at(sector).read_repair);
  }
  if (run_.active) {
    ATOMDISK_CHECK(run_.repaired + run_.unrepaired + run_.stale + run_pending <= run_.corrupt);
  }
  for (const auto& [token, tok] : absorb_tokens_) {
    auto rep = repairs_.find(tok.sector);
    ATOMDISK_CHECK(rep != repairs_.end() && rep->second.absorbing);
  }
}

}  // namespace atomdisk
