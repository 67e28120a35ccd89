// Scrub (daemon/sync/scrub.h).
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
}

void Scrub::ScanChunk(std::int64_t now_ms) {
  if (!run_.active) return;
  const SyncerOptions& options = ctx_.options;
  SyncEnv* env = ctx_.env;
  std::vector<SectorIdx> found;
  for (std::uint32_t i = 0; i < std::max<std::uint32_t>(1, options.scrub_buckets_per_tick) &&
                            run_.bucket < ctx_.buckets && run_.repairs.size() < kMaxScrubRepairs;
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
          if (run_.repairs.count(sec) == 0) {
            run_.repairs[sec] = Repair{t, {}, now_ms, false};
            found.push_back(sec);
          }
        });
    if (!s.ok()) env->Note("scrub: cannot scan bucket " + std::to_string(b) + ": " + s.ToString());
  }
  if (!found.empty()) {
    if (ctx_.peers.size() < options.RequiredSources()) {
      for (SectorIdx sec : found) {
        env->Note("scrub: sector " + std::to_string(sec) + " is corrupt and no peer can repair it");
        run_.repairs.erase(sec);
        ++run_.unrepaired;
      }
    } else {
      for (std::size_t i = 0; i < found.size(); i += kMaxFetchSectors) {
        std::vector<SectorIdx> batch(found.begin() + static_cast<std::ptrdiff_t>(i),
                                     found.begin() + static_cast<std::ptrdiff_t>(std::min(
                                                         found.size(), i + kMaxFetchSectors)));
        for (Rank r : ctx_.peers) {
          std::uint64_t id = ctx_.NewId();
          SyncMessage m = ctx_.Msg(SyncKind::kFetch, id);
          m.sectors = batch;
          requests_[id] = Request{r, batch, now_ms, 1};
          env->SendSync(r, m);
        }
      }
    }
  }
  // Repairs whose peers did not answer in time.
  for (auto it = run_.repairs.begin(); it != run_.repairs.end();) {
    if (!it->second.absorbing &&
        now_ms - it->second.start_ms >= kScrubRepairTimeouts * options.request_timeout_ms) {
      env->Note("scrub: sector " + std::to_string(it->first) +
                " is corrupt and too few peers answered to repair it");
      ++run_.unrepaired;
      it = run_.repairs.erase(it);
    } else {
      ++it;
    }
  }
  // Fetches: re-send unanswered ones; drop those with nothing left to decide.
  for (auto it = requests_.begin(); it != requests_.end();) {
    Request& req = it->second;
    bool needed = false;
    for (SectorIdx s : req.sectors) {
      auto rep = run_.repairs.find(s);
      needed = needed || (rep != run_.repairs.end() && !rep->second.absorbing &&
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
      env->SendSync(req.to, m);
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
    auto rep = run_.repairs.find(s);
    if (rep == run_.repairs.end() || rep->second.absorbing) continue;
    auto g = got.find(s);
    std::optional<Triple> v;
    if (g != got.end() && g->second->ok && g->second->value.data != nullptr) {
      v = g->second->value;
    }
    rep->second.answers[msg.sender] = v;
    if (rep->second.answers.size() < ctx_.options.RequiredSources()) continue;
    // Enough peers answered: the newest value any of them holds.
    std::optional<Triple> best;
    for (const auto& [r, a] : rep->second.answers) {
      if (a && (!best || a->tag > best->tag)) best = a;
    }
    if (best && best->tag > rep->second.own) {
      rep->second.absorbing = true;
      std::uint64_t token = ctx_.NewId();
      absorb_tokens_[token] = AbsorbToken{s, best->tag};
      digests_.Invalidate(s);
      ctx_.env->Absorb(s, *best, token);
    } else {
      // The bad slot is older than our valid one (a stale slot: the next write of the
      // sector overwrites it), or nobody has anything newer.
      ++run_.stale;
      run_.repairs.erase(rep);
    }
  }
  MaybeFinish(now_ms);
}

bool Scrub::OnAbsorbed(std::uint64_t token, const Status& status, std::int64_t now_ms) {
  auto it = absorb_tokens_.find(token);
  if (it == absorb_tokens_.end()) return false;
  AbsorbToken tok = it->second;
  absorb_tokens_.erase(it);
  auto rep = run_.repairs.find(tok.sector);
  ATOMDISK_CHECK(rep != run_.repairs.end() && rep->second.absorbing);
  digests_.Invalidate(tok.sector);
  if (status.ok()) {
    ++run_.repaired;
    ctx_.env->Note("scrub: sector " + std::to_string(tok.sector) + " repaired with " +
                   tok.tag.ToString());
  } else {
    ++run_.unrepaired;
    ctx_.env->Note("scrub: cannot store the repair of sector " + std::to_string(tok.sector) + ": " +
                   status.ToString());
  }
  run_.repairs.erase(rep);
  MaybeFinish(now_ms);
  return true;
}

void Scrub::MaybeFinish(std::int64_t now_ms) {
  if (!run_.active || run_.bucket < ctx_.buckets || !run_.repairs.empty()) return;
  run_.active = false;
  ++run_.runs_done;
  requests_.clear();
  ctx_.env->Note("scrub done: " + std::to_string(run_.checked) + " sectors checked, " +
                 std::to_string(run_.corrupt) + " corrupt, " + std::to_string(run_.repaired) +
                 " repaired, " + std::to_string(run_.unrepaired) + " unrepaired, " +
                 std::to_string(run_.stale) + " stale slots left for the next write");
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
}

void Scrub::CheckInvariants() const {
  ATOMDISK_CHECK(run_.bucket <= ctx_.buckets);
  ATOMDISK_CHECK(run_.repairs.size() <=
                 kMaxScrubRepairs + kBucketSectors * std::max<std::uint32_t>(
                                                         1, ctx_.options.scrub_buckets_per_tick));
  ATOMDISK_CHECK(run_.repaired + run_.unrepaired + run_.stale + run_.repairs.size() <=
                 run_.corrupt);
  for (const auto& [token, tok] : absorb_tokens_) {
    auto rep = run_.repairs.find(tok.sector);
    ATOMDISK_CHECK(rep != run_.repairs.end() && rep->second.absorbing);
  }
}

}  // namespace atomdisk
