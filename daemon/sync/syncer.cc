// Syncer: membership, resync and scrub as a pure state machine (daemon/sync/syncer.h,
// docs/RESYNC.md). Everything here runs on the caller's thread, sees time only through the
// now_ms arguments and iterates only ordered containers, so the simulator replays a run
// byte for byte.
#include "daemon/sync/syncer.h"

#include <algorithm>
#include <cstdio>
#include <deque>
#include <limits>
#include <map>
#include <set>
#include <utility>

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
// Scrub: repairs pending at once, and how long a repair waits for its peers (in request
// timeouts) before it counts as unrepaired.
constexpr std::size_t kMaxScrubRepairs = 512;
constexpr std::int64_t kScrubRepairTimeouts = 3;

std::uint64_t CeilDiv(std::uint64_t a, std::uint64_t b) { return a / b + (a % b != 0 ? 1 : 0); }

std::string RankList(const std::vector<Rank>& ranks) {
  std::string s;
  for (Rank r : ranks) {
    if (!s.empty()) s += ",";
    s += std::to_string(r);
  }
  return s;
}

std::string Fmt(const char* fmt, double a) {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, a);
  return buf;
}

}  // namespace

struct Syncer::Impl {
  // What this node is doing about its own membership.
  enum class Mode {
    kNew,          // before Start()
    kJoining,      // polling peers (Hello) to decide between a join pass and registering
    kRegistering,  // never voted: waiting for Quorum()-1 RegisterVoterAcks
    kJoinPass,     // voted before and lost its disk: pulling before it votes
    kVoting,
  };

  enum class ReqKind { kDigest, kEntries, kFetch, kScrubFetch };
  // An outstanding request of a pass or a scrub, by request id.
  struct Request {
    ReqKind kind = ReqKind::kDigest;
    Rank to = 0;
    std::uint64_t first = 0;  // kDigest: first bucket; kEntries: first sector
    std::uint32_t count = 0;
    std::vector<SectorIdx> sectors;  // kFetch, kScrubFetch
    std::int64_t sent_ms = 0;
    int sends = 1;
  };

  // A peer's latest Hello reply.
  struct PeerHello {
    std::int64_t round_ms = 0;  // start of the round it answered
    bool voting = false;
    bool lists_self = false;
  };

  // One source peer of a pass, for the current window.
  struct Source {
    Rank rank = 0;
    bool digest_done = false;
    std::deque<std::uint64_t> pending_buckets;  // differ; Entries not yet sent
    std::size_t entries_in_flight = 0;
    bool dropped = false;  // non-join pass: unresponsive, out for the rest of the pass
    bool waiting = false;  // join pass: unresponsive and nobody to replace it
  };

  // A sector found newer at some source, not yet durable here.
  struct Want {
    enum class State { kQueued, kFetching, kAbsorbing };
    Tag tag;                    // newest tag seen at a source
    std::vector<Rank> holders;  // sources that reported `tag`; front = where it is fetched
    State state = State::kQueued;
    int absorb_failures = 0;
  };

  struct Pass {
    bool join = false;
    std::uint64_t window = 0;
    std::uint64_t start_window = 0;
    std::vector<Source> sources;
    std::map<SectorIdx, Want> wants;
    std::map<Rank, std::set<SectorIdx>> queued;  // kQueued wants by holders.front()
    Rank last_fetch_source = 0;
    std::size_t fetches_in_flight = 0;
    std::size_t sectors_in_flight = 0;
    std::size_t absorbing = 0;
    std::int64_t start_ms = 0;
    std::int64_t last_checkpoint_ms = 0;
    std::int64_t last_progress_ms = 0;
    std::uint64_t windows_done = 0;
    std::uint64_t sectors_pulled = 0, bytes_pulled = 0;
    // Join pass: the highest ts in any Entries reply, fetched value or own tag compared
    // (the write ts floor lies above it).
    std::uint64_t max_ts_seen = 0;
  };

  struct AbsorbToken {
    bool scrub = false;
    SectorIdx sector = 0;
    Tag tag;
  };

  struct Repair {
    Tag own;
    std::map<Rank, std::optional<Triple>> answers;
    std::int64_t start_ms = 0;
    bool absorbing = false;
  };

  struct Scrub {
    bool active = false;
    std::uint64_t bucket = 0;
    std::map<SectorIdx, Repair> repairs;
    std::uint64_t checked = 0, corrupt = 0, repaired = 0, unrepaired = 0, stale = 0;
    std::uint64_t runs_done = 0;
    std::int64_t start_ms = 0;
  };

  Impl(SyncerOptions o, std::optional<Identity> id, bool empty, SyncEnv* e)
      : options(std::move(o)), env(e), loaded(std::move(id)), store_empty(empty) {
    for (Rank r : options.ranks) {
      if (r != options.self) peers.push_back(r);
    }
    std::sort(peers.begin(), peers.end());
    buckets = CeilDiv(options.sectors, kBucketSectors);
    windows = CeilDiv(buckets, kWindowBuckets);
    digest.assign(buckets, 0);
    digest_valid.assign(buckets, false);
    if (options.fetch_batch == 0) options.fetch_batch = 1;
    options.fetch_batch = std::min(options.fetch_batch, kMaxFetchSectors);
    if (options.fetch_window == 0) options.fetch_window = 1;
    rate_capacity = std::max(options.rate_bytes_per_s * 0.1,
                             static_cast<double>(options.fetch_batch) * kSectorSize);
  }

  SyncerOptions options;
  SyncEnv* env;
  std::optional<Identity> loaded;
  bool store_empty;
  std::vector<Rank> peers;  // sorted, without self
  std::uint64_t buckets = 0, windows = 0;

  Mode mode = Mode::kNew;
  Identity identity;
  bool voting = false;  // last SetVoting
  bool vote_save_pending = false;
  bool vote_pending_background_pass = false;
  // Write ts floor computed when the join pass ended, saved by BecomeVoter (0: none).
  std::uint64_t join_floor = 0;
  std::uint64_t applied_floor = 0;  // last SetWriteTsFloor
  std::uint64_t applied_lease = 0;  // last SetWriteTsLease (saved in identity first)
  bool lease_save_failed_noted = false;
  std::uint64_t next_id = 1;

  // Digest cache.
  std::vector<std::uint64_t> digest;
  std::vector<bool> digest_valid;

  // Hello rounds.
  std::uint64_t hello_round_id = 0;
  std::map<std::uint64_t, std::int64_t> hello_rounds;  // recent round id -> start ms
  std::int64_t next_hello_ms = 0;
  std::map<Rank, PeerHello> hellos;
  std::set<Rank> wrong_cluster_noted;
  bool listed_as_voter = false;  // some peer listed us: we voted before

  // Registration.
  std::uint64_t register_id = 0;
  std::map<Rank, std::int64_t> register_sent_ms;
  std::set<Rank> register_acks;

  // Requests of the current pass or scrub.
  std::map<std::uint64_t, Request> requests;
  std::map<std::uint64_t, AbsorbToken> absorb_tokens;

  // Resync.
  std::optional<Pass> pass;
  std::uint64_t passes_done = 0;
  std::int64_t next_pass_ms = -1;  // a voting node's next periodic (or retried) pass
  double rate_tokens = 0;
  double rate_capacity = 0;
  std::int64_t rate_refill_ms = 0;
  std::deque<std::pair<std::int64_t, std::uint64_t>> pulled_samples;  // (ms, bytes)
  SyncStatus::Pass last_pass;                                         // shown once a pass ended

  // Scrub.
  Scrub scrub;
  std::int64_t next_scrub_ms = -1;

  // Malformed requests: counted, and noted once per peer (a peer must not flood the log).
  std::uint64_t rejected_requests = 0;
  std::set<Rank> rejected_noted;

  std::uint64_t NewId() { return next_id++; }

  SyncMessage Msg(SyncKind kind, std::uint64_t request_id) const {
    SyncMessage m;
    m.sender = options.self;
    m.kind = kind;
    m.request_id = request_id;
    return m;
  }

  bool IsPeer(Rank r) const { return std::binary_search(peers.begin(), peers.end(), r); }

  // ---------------------------------------------------------------- start and membership

  Status Start(std::int64_t now_ms) {
    ATOMDISK_CHECK(mode == Mode::kNew);
    if (loaded) {
      if (loaded->cluster_id != options.cluster_id) {
        return Status::InvalidArgument("IDENTITY belongs to cluster " +
                                       loaded->cluster_id.ToString() + ", not to cluster " +
                                       options.cluster_id.ToString());
      }
      if (loaded->rank != options.self) {
        return Status::InvalidArgument("IDENTITY belongs to rank " + std::to_string(loaded->rank) +
                                       ", not to rank " + std::to_string(options.self));
      }
      identity = *loaded;
    } else {
      identity = Identity{};
      identity.cluster_id = options.cluster_id;
      identity.rank = options.self;
      if (!store_empty) {
        // Data from before identities existed: it votes (docs/RESYNC.md).
        identity.voting = true;
        identity.AddVoter(options.self);
      }
    }
    if (identity.voting) identity.AddVoter(options.self);
    // Writes of the earlier run below its lease may have gone out without a durable copy
    // here: this run's writes start above it (docs/REGISTER.md), under a new lease.
    const std::uint64_t restart_floor = std::max(identity.write_ts_floor, identity.write_ts_lease);
    identity.write_ts_lease = LeaseAbove(restart_floor);
    if (!loaded || *loaded != identity) {
      Status s = env->SaveIdentity(identity);
      if (!s.ok()) return s;
    }
    ApplyWriteTsFloor(restart_floor);
    applied_lease = identity.write_ts_lease;
    env->SetWriteTsLease(applied_lease);
    // Request ids count up from the start time (scaled): a reply that an earlier run of this
    // node asked for, still in flight, cannot match a request of this run.
    next_id = (static_cast<std::uint64_t>(std::max<std::int64_t>(now_ms, 0)) << 20) + 1;
    rate_refill_ms = now_ms;
    rate_tokens = rate_capacity;
    if (options.scrub_interval_ms > 0) next_scrub_ms = now_ms + options.scrub_interval_ms;

    // A floor taken after an earlier join pass still holds: the tags of the incarnation
    // before that disk replacement may still be out there.
    ApplyWriteTsFloor(identity.write_ts_floor);
    if (identity.voting) {
      EnterVoting(now_ms);
      std::uint64_t from = 0;
      if (identity.resync_active && !identity.resync_join) from = identity.resync_next_window;
      StartPass(/*join=*/false, peers, from, now_ms);
      return Status::Ok();
    }
    if (options.bug_joiner_votes) {
      // Deliberate bug (simulator only): vote at once, pull in the background.
      env->Note("BUG bug_joiner_votes: voting without a join pass");
      BecomeVoter(now_ms, /*background_pass=*/true);
      if (mode == Mode::kVoting) return Status::Ok();
    }
    SetVoting(false);
    mode = Mode::kJoining;
    if (peers.empty()) {
      // A one-node cluster: nobody can have seen it vote with another disk.
      StartRegistering(now_ms);
      return Status::Ok();
    }
    env->Note("joining: asking every peer whether it voted before");
    // A replaced disk restarted in the middle of its join: writes it coordinates meanwhile
    // start above the wall clock at once (see OnHelloReply).
    if (identity.resync_join) ApplyWriteTsFloor(JoinFloor(0));
    StartHelloRound(now_ms);
    return Status::Ok();
  }

  void SetVoting(bool v) {
    voting = v;
    env->SetVoting(v);
  }

  // A lease kWriteTsLeaseStep above `ts`, within what IDENTITY can hold.
  static std::uint64_t LeaseAbove(std::uint64_t ts) {
    constexpr auto kMax = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
    return ts < kMax - kWriteTsLeaseStep ? ts + kWriteTsLeaseStep : kMax;
  }

  void RaiseWriteTsLease(std::uint64_t ts) {
    if (mode == Mode::kNew || ts < applied_lease) return;  // not started, or already covered
    Identity next = identity;
    next.write_ts_lease = LeaseAbove(ts);
    if (next.write_ts_lease <= applied_lease) return;  // at the cap
    Status s = env->SaveIdentity(next);
    if (!s.ok()) {
      // Writes stay correct without a lease (they persist their own copy first); the next
      // one above it asks again.
      if (!lease_save_failed_noted) {
        env->Note(
            "cannot save IDENTITY to raise the write ts lease (writes take one "
            "fdatasync longer until it can): " +
            s.ToString());
      }
      lease_save_failed_noted = true;
      return;
    }
    lease_save_failed_noted = false;
    identity = next;
    applied_lease = identity.write_ts_lease;
    env->SetWriteTsLease(applied_lease);
  }

  void ApplyWriteTsFloor(std::uint64_t floor) {
    if (floor <= applied_floor) return;
    applied_floor = floor;
    env->SetWriteTsFloor(floor);
  }

  // The write ts floor at the end of a join pass that saw ts values up to `max_ts_seen`
  // (docs/RESYNC.md, "Tags after a disk replacement"). Kept within what IDENTITY can hold: a
  // ts past 2^63 comes only from a broken peer.
  std::uint64_t JoinFloor(std::uint64_t max_ts_seen) {
    constexpr auto kMaxFloor = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
    std::uint64_t seen_above = max_ts_seen < kMaxFloor ? max_ts_seen + 1 : kMaxFloor;
    std::uint64_t floor = std::max({identity.write_ts_floor, env->WallClockMicros(), seen_above});
    if (floor > kMaxFloor) {
      env->Note("write ts floor " + std::to_string(floor) + " capped at " +
                std::to_string(kMaxFloor));
      floor = kMaxFloor;
    }
    return floor;
  }

  void EnterVoting(std::int64_t now_ms) {
    mode = Mode::kVoting;
    SetVoting(true);
    next_hello_ms = now_ms;  // the first round goes out on the next tick
    if (options.resync_interval_ms > 0) next_pass_ms = now_ms + options.resync_interval_ms;
  }

  std::int64_t HelloInterval() const {
    return mode == Mode::kVoting ? options.hello_interval_ms : options.joining_hello_interval_ms;
  }

  void StartHelloRound(std::int64_t now_ms) {
    hello_round_id = NewId();
    hello_rounds[hello_round_id] = now_ms;
    // Rounds older than a request timeout no longer count (see Fresh()).
    while (!hello_rounds.empty() &&
           hello_rounds.begin()->second + options.request_timeout_ms < now_ms) {
      hello_rounds.erase(hello_rounds.begin());
    }
    SyncMessage m = Msg(SyncKind::kHello, hello_round_id);
    for (Rank r : peers) env->SendSync(r, m);
    next_hello_ms = now_ms + std::max<std::int64_t>(1, HelloInterval());
  }

  // A reply counts towards a decision if it answers a round started at most one request
  // timeout ago: with rounds every joining_hello_interval_ms, a reply slower than one round
  // still counts. Combining replies of nearby rounds is as safe as one round: a durable
  // voters list only grows.
  bool Fresh(const PeerHello& h, std::int64_t now_ms) const {
    return h.round_ms + options.request_timeout_ms >= now_ms;
  }

  std::vector<Rank> FreshVotingPeers(std::int64_t now_ms) const {
    std::vector<Rank> out;
    for (const auto& [r, h] : hellos) {
      if (h.voting && Fresh(h, now_ms)) out.push_back(r);
    }
    return out;
  }

  std::size_t FreshAnswers(std::int64_t now_ms) const {
    std::size_t n = 0;
    for (const auto& [r, h] : hellos) n += Fresh(h, now_ms) ? 1 : 0;
    return n;
  }

  void OnHelloReply(const SyncMessage& msg, std::int64_t now_ms) {
    auto round = hello_rounds.find(msg.request_id);
    if (round == hello_rounds.end()) return;  // stale or unknown round
    if (msg.cluster_id != options.cluster_id) {
      if (wrong_cluster_noted.insert(msg.sender).second) {
        env->Note("peer " + std::to_string(msg.sender) + " belongs to cluster " +
                  msg.cluster_id.ToString() + ", not " + options.cluster_id.ToString() +
                  ": its replies are ignored");
      }
      return;
    }
    bool lists_self = std::binary_search(msg.voters.begin(), msg.voters.end(), options.self);
    PeerHello& h = hellos[msg.sender];
    if (round->second >= h.round_ms) {
      h = PeerHello{round->second, msg.voting, lists_self};
      // Only the newest round's reply speaks for the peer's current binary.
      env->SetPeerFeatures(msg.sender, msg.features);
    }
    if (mode == Mode::kVoting) {
      if (!lists_self) {
        // That peer forgot us (its disk was replaced): register again.
        env->SendSync(msg.sender, Msg(SyncKind::kRegisterVoter, NewId()));
      }
      return;
    }
    if (mode == Mode::kJoining && lists_self && !listed_as_voter) {
      listed_as_voter = true;
      env->Note("joining: peer " + std::to_string(msg.sender) +
                " lists this node as a voter: its disk was replaced, a join pass is needed");
      // Its old incarnation may have minted tags that survive at a peer (in flight, or waiting
      // on a slow disk) below the durable tags a write's quorum reports. Writes this node
      // coordinates from now on, before the join pass even starts (it waits for enough voting
      // peers), take the wall-clock floor the pass would (docs/RESYNC.md).
      ApplyWriteTsFloor(JoinFloor(0));
    }
    if (mode == Mode::kJoining) Decide(now_ms);
  }

  // The joining decision (docs/RESYNC.md "voters remember").
  void Decide(std::int64_t now_ms) {
    ATOMDISK_CHECK(mode == Mode::kJoining);
    if (listed_as_voter) {
      std::vector<Rank> voters = FreshVotingPeers(now_ms);
      if (voters.size() < options.RequiredSources()) return;  // state says what it waits for
      voters.resize(options.RequiredSources());
      std::uint64_t from = 0;
      if (identity.resync_active && identity.resync_join) from = identity.resync_next_window;
      env->Note("joining: pulling from voting peers " + RankList(voters) + " before voting");
      StartPass(/*join=*/true, voters, from, now_ms);
      return;
    }
    if (FreshAnswers(now_ms) == peers.size()) StartRegistering(now_ms);
  }

  void StartRegistering(std::int64_t now_ms) {
    mode = Mode::kRegistering;
    register_id = NewId();
    register_acks.clear();
    register_sent_ms.clear();
    if (!peers.empty()) env->Note("registering as a voter with every peer");
    SyncMessage m = Msg(SyncKind::kRegisterVoter, register_id);
    for (Rank r : peers) {
      env->SendSync(r, m);
      register_sent_ms[r] = now_ms;
    }
    MaybeRegistered(now_ms);
  }

  void MaybeRegistered(std::int64_t now_ms) {
    if (mode != Mode::kRegistering) return;
    if (register_acks.size() + 1 < options.Quorum()) return;
    BecomeVoter(now_ms, /*background_pass=*/true);
  }

  // Persists voting = true and then votes. Retried from Tick if the save fails: a node must
  // never vote before its IDENTITY says so (else a restart would forget it voted).
  void BecomeVoter(std::int64_t now_ms, bool background_pass) {
    Identity next = identity;
    next.voting = true;
    next.AddVoter(options.self);
    next.resync_active = false;
    next.resync_join = false;
    next.resync_next_window = 0;
    next.write_ts_floor = std::max(next.write_ts_floor, join_floor);
    Status s = env->SaveIdentity(next);
    if (!s.ok()) {
      if (!vote_save_pending) env->Note("cannot save IDENTITY to start voting: " + s.ToString());
      vote_save_pending = true;
      vote_pending_background_pass = background_pass;
      return;
    }
    vote_save_pending = false;
    identity = next;
    join_floor = 0;
    // Before voting: no write of ours may take a tag the old incarnation used.
    ApplyWriteTsFloor(identity.write_ts_floor);
    EnterVoting(now_ms);
    env->Note("voting");
    if (background_pass) StartPass(/*join=*/false, peers, 0, now_ms);
  }

  // ---------------------------------------------------------------- server side

  void Reject(const SyncMessage& msg) {
    ++rejected_requests;
    if (rejected_noted.insert(msg.sender).second) {
      env->Note("ignoring an out-of-range " + std::string(SyncKindName(msg.kind)) +
                " request from peer " + std::to_string(msg.sender) +
                " (further ones are only counted)");
    }
  }

  void Serve(const SyncMessage& msg) {
    switch (msg.kind) {
      case SyncKind::kHello: {
        // Before Start the voters list is not loaded yet: an empty one would tell a replaced
        // node it never voted.
        if (mode == Mode::kNew) return;
        SyncMessage r = Msg(SyncKind::kHelloReply, msg.request_id);
        r.cluster_id = options.cluster_id;
        r.voting = voting;
        r.voters = identity.voters;
        r.features = kFeatureTagReads;
        env->SendSync(msg.sender, r);
        return;
      }
      case SyncKind::kRegisterVoter: {
        if (mode == Mode::kNew) return;  // not started: identity not decided yet
        Identity next = identity;
        if (next.AddVoter(msg.sender)) {
          Status s = env->SaveIdentity(next);
          if (!s.ok()) {
            // No Ack: the voter must not count a registration that is not durable.
            env->Note("cannot save IDENTITY to register voter " + std::to_string(msg.sender) +
                      ": " + s.ToString());
            return;
          }
          identity = next;
          env->Note("registered voter " + std::to_string(msg.sender));
        }
        env->SendSync(msg.sender, Msg(SyncKind::kRegisterVoterAck, msg.request_id));
        return;
      }
      case SyncKind::kDigest: {
        if (msg.count == 0 || msg.count > kMaxDigestBuckets || msg.first >= buckets ||
            msg.count > buckets - msg.first) {
          Reject(msg);
          return;
        }
        SyncMessage r = Msg(SyncKind::kDigestReply, msg.request_id);
        r.first = msg.first;
        r.count = msg.count;
        r.digests.reserve(msg.count);
        std::set<std::uint64_t> ahead;  // buckets with a value being persisted
        env->ForEachServedAhead([&](SectorIdx sec) { ahead.insert(sec / kBucketSectors); });
        for (std::uint64_t b = msg.first; b < msg.first + msg.count; ++b) {
          std::optional<std::uint64_t> d = ServedDigest(b, ahead);
          if (!d) return;  // unreadable here: no reply, the requester retries
          r.digests.push_back(*d);
        }
        env->SendSync(msg.sender, r);
        return;
      }
      case SyncKind::kEntries: {
        if (msg.count == 0 || msg.count > kMaxEntrySectors || msg.first >= options.sectors ||
            msg.count > options.sectors - msg.first) {
          Reject(msg);
          return;
        }
        SyncMessage r = Msg(SyncKind::kEntriesReply, msg.request_id);
        r.first = msg.first;
        r.count = msg.count;
        Status s = env->ScanTags(
            msg.first, msg.count, false, TagView::kServed, [&](SectorIdx sec, Tag t, bool) {
              if (t != Tag{} && sec >= msg.first && sec - msg.first < msg.count) {
                r.entries.push_back({sec, t});
              }
            });
        if (!s.ok()) return;  // no reply: the requester retries or drops us
        std::sort(r.entries.begin(), r.entries.end(),
                  [](const SyncEntry& a, const SyncEntry& b) { return a.sector < b.sector; });
        r.entries.erase(std::unique(r.entries.begin(), r.entries.end(),
                                    [](const SyncEntry& a, const SyncEntry& b) {
                                      return a.sector == b.sector;
                                    }),
                        r.entries.end());
        env->SendSync(msg.sender, r);
        return;
      }
      case SyncKind::kFetch: {
        if (msg.sectors.empty() || msg.sectors.size() > kMaxFetchSectors) {
          Reject(msg);
          return;
        }
        for (SectorIdx s : msg.sectors) {
          if (s >= options.sectors) {
            Reject(msg);
            return;
          }
        }
        SyncMessage r = Msg(SyncKind::kFetchReply, msg.request_id);
        for (SectorIdx s : msg.sectors) {
          FetchedSector f;
          f.sector = s;
          Result<Triple> v = env->ReadSector(s);
          if (v.ok() && v->data != nullptr) {
            f.ok = true;
            f.value = *v;
          }
          r.fetched.push_back(std::move(f));
        }
        env->SendSync(msg.sender, r);
        return;
      }
      default:
        return;
    }
  }

  // ---------------------------------------------------------------- digests

  // This node's digest of bucket b; nullopt if the store could not be scanned.
  std::optional<std::uint64_t> OwnDigest(std::uint64_t b) {
    ATOMDISK_CHECK(b < buckets);
    if (digest_valid[b]) return digest[b];
    std::optional<std::uint64_t> d = ScanDigest(b, TagView::kDurable);
    if (!d) return std::nullopt;
    digest[b] = *d;
    digest_valid[b] = true;
    return d;
  }

  // The digest of bucket b over the tags `view` gives, read from the store (uncached).
  std::optional<std::uint64_t> ScanDigest(std::uint64_t b, TagView view) {
    std::uint64_t first = b * kBucketSectors;
    std::uint64_t count = std::min<std::uint64_t>(kBucketSectors, options.sectors - first);
    std::uint64_t d = 0;
    Status s = env->ScanTags(first, count, false, view, [&](SectorIdx sec, Tag t, bool) {
      if (t != Tag{} && sec >= first && sec - first < count) d ^= SectorTagDigest(sec, t);
    });
    if (!s.ok()) return std::nullopt;
    return d;
  }

  // The digest of bucket b that peers get: as OwnDigest, but over the kServed tags. Not
  // cached; only buckets with a value being persisted (`ahead`) differ from OwnDigest.
  std::optional<std::uint64_t> ServedDigest(std::uint64_t b, const std::set<std::uint64_t>& ahead) {
    return ahead.count(b) ? ScanDigest(b, TagView::kServed) : OwnDigest(b);
  }

  void Invalidate(SectorIdx s) {
    std::uint64_t b = s / kBucketSectors;
    if (b < buckets) digest_valid[b] = false;
  }

  // ---------------------------------------------------------------- resync pass

  void StartPass(bool join, const std::vector<Rank>& sources, std::uint64_t from,
                 std::int64_t now_ms) {
    ATOMDISK_CHECK(!pass.has_value());
    if (from > windows) from = windows;
    pass.emplace();
    Pass& p = *pass;
    p.join = join;
    p.window = from;
    p.start_window = from;
    p.start_ms = now_ms;
    p.last_checkpoint_ms = now_ms;
    p.last_progress_ms = now_ms;
    for (Rank r : sources) p.sources.push_back(NewSource(r));
    if (join) {
      mode = Mode::kJoinPass;
      // Writes this node coordinates while joining (peer quorums) must not reuse an old
      // incarnation's tag either; the pass end raises the floor over what it saw.
      ApplyWriteTsFloor(JoinFloor(0));
    }
    Identity next = identity;
    next.resync_active = true;
    next.resync_join = join;
    next.resync_next_window = from;
    if (next != identity) {
      Status s = env->SaveIdentity(next);
      if (s.ok()) {
        identity = next;
      } else {
        env->Note("cannot save IDENTITY at pass start: " + s.ToString());
      }
    }
    pulled_samples.clear();
    env->Note(std::string(join ? "join" : "resync") + " pass from " + RankList(sources) +
              ": window " + std::to_string(from) + " of " + std::to_string(windows));
    if (p.window >= windows || p.sources.empty()) {
      FinishPass(now_ms);
      return;
    }
    StartWindow(now_ms);
  }

  void SendDigest(Source& src, std::int64_t now_ms) {
    Pass& p = *pass;
    std::uint64_t first = p.window * kWindowBuckets;
    auto count = static_cast<std::uint32_t>(std::min(kWindowBuckets, buckets - first));
    std::uint64_t id = NewId();
    SyncMessage m = Msg(SyncKind::kDigest, id);
    m.first = first;
    m.count = count;
    requests[id] = Request{ReqKind::kDigest, src.rank, first, count, {}, now_ms, 1};
    env->SendSync(src.rank, m);
  }

  // Sends the current window's Digest requests to every live source.
  void StartWindow(std::int64_t now_ms) {
    Pass& p = *pass;
    ATOMDISK_CHECK(p.window < windows);
    for (Source& src : p.sources) {
      src.digest_done = false;
      src.pending_buckets.clear();
      src.entries_in_flight = 0;
      if (!src.dropped) SendDigest(src, now_ms);
    }
  }

  bool WindowDone() const {
    const Pass& p = *pass;
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
  void MaybeAdvance(std::int64_t now_ms) {
    while (pass && WindowDone()) {
      Pass& p = *pass;
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
      if (p.window >= windows) {
        FinishPass(now_ms);
        return;
      }
      if (now_ms - p.last_checkpoint_ms >= options.checkpoint_interval_ms) Checkpoint(now_ms);
      StartWindow(now_ms);
    }
  }

  void Checkpoint(std::int64_t now_ms) {
    Pass& p = *pass;
    Identity next = identity;
    next.resync_active = true;
    next.resync_join = p.join;
    next.resync_next_window = p.window;
    Status s = env->SaveIdentity(next);
    if (s.ok()) {
      identity = next;
      p.last_checkpoint_ms = now_ms;
    } else {
      env->Note("cannot save the resync resume point: " + s.ToString());
    }
  }

  void RecordPassStatus(SyncStatus::Pass& out, std::int64_t now_ms) const {
    const Pass& p = *pass;
    out.active = true;
    out.join = p.join;
    out.window = p.window;
    out.windows = windows;
    out.sectors_pulled = p.sectors_pulled;
    out.bytes_pulled = p.bytes_pulled;
    out.sectors_to_go = p.wants.size();
    out.bytes_per_s = RecentRate(now_ms);
    out.eta_s = -1;
    std::uint64_t left = windows - p.window;
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

  double RecentRate(std::int64_t now_ms) const {
    std::uint64_t bytes = 0;
    for (const auto& [ms, b] : pulled_samples) {
      if (ms + kRateWindowMs >= now_ms) bytes += b;
    }
    std::int64_t span = kRateWindowMs;
    if (pass && now_ms - pass->start_ms < span) span = now_ms - pass->start_ms;
    if (span <= 0) return 0;
    return static_cast<double>(bytes) * 1000.0 / static_cast<double>(span);
  }

  std::string ProgressLine(std::int64_t now_ms) const {
    SyncStatus::Pass s;
    RecordPassStatus(s, now_ms);
    return std::string(pass->join ? "join" : "resync") + " pass: window " +
           std::to_string(s.window) + "/" + std::to_string(s.windows) + ", " +
           std::to_string(s.sectors_pulled) + " sectors pulled, " +
           std::to_string(s.sectors_to_go) + " to go, " + Fmt("%.1f MB/s", s.bytes_per_s / 1e6) +
           ", ETA " + (s.eta_s < 0 ? std::string("unknown") : Fmt("%.0f s", s.eta_s));
  }

  void DropPassRequests() {
    for (auto it = requests.begin(); it != requests.end();) {
      if (it->second.kind != ReqKind::kScrubFetch) {
        it = requests.erase(it);
      } else {
        ++it;
      }
    }
  }

  void FinishPass(std::int64_t now_ms) {
    Pass& p = *pass;
    ATOMDISK_CHECK(p.wants.empty() && p.absorbing == 0);
    bool join = p.join;
    std::uint64_t max_ts_seen = p.max_ts_seen;
    double secs = static_cast<double>(now_ms - p.start_ms) / 1000.0;
    env->Note(std::string(join ? "join" : "resync") +
              " pass done: " + std::to_string(p.windows_done) + " windows, " +
              std::to_string(p.sectors_pulled) + " sectors (" + std::to_string(p.bytes_pulled) +
              " bytes) pulled in " + Fmt("%.1f s", secs));
    RecordPassStatus(last_pass, now_ms);
    last_pass.active = false;
    last_pass.sectors_to_go = 0;
    last_pass.eta_s = -1;
    ++passes_done;
    DropPassRequests();
    pass.reset();
    if (options.resync_interval_ms > 0) next_pass_ms = now_ms + options.resync_interval_ms;
    if (join) {
      // Everything a quorum may have promised is durable here now: vote, with own writes
      // above every tag the old incarnation may have used.
      join_floor = JoinFloor(max_ts_seen);
      env->Note("write ts floor after the join pass: " + std::to_string(join_floor));
      BecomeVoter(now_ms, /*background_pass=*/false);
      return;
    }
    Identity next = identity;
    next.resync_active = false;
    next.resync_join = false;
    next.resync_next_window = 0;
    if (next != identity) {
      Status s = env->SaveIdentity(next);
      if (s.ok()) {
        identity = next;
      } else {
        env->Note("cannot save IDENTITY at pass end: " + s.ToString());
      }
    }
  }

  // A non-join pass whose sources all stopped answering: the resume point stays saved and
  // the pass is retried later from there.
  void AbortPass(std::int64_t now_ms, const std::string& why) {
    Pass& p = *pass;
    ATOMDISK_CHECK(!p.join && p.wants.empty() && p.absorbing == 0);
    env->Note("resync pass stopped at window " + std::to_string(p.window) + ": " + why);
    Checkpoint(now_ms);
    RecordPassStatus(last_pass, now_ms);
    last_pass.active = false;
    DropPassRequests();
    pass.reset();
    std::int64_t retry = options.resync_interval_ms > 0 ? options.resync_interval_ms
                                                        : 10 * options.request_timeout_ms;
    next_pass_ms = now_ms + std::max<std::int64_t>(1, retry);
  }

  static Source NewSource(Rank r) {
    Source s;
    s.rank = r;
    return s;
  }

  Source* FindSource(Rank r) {
    if (!pass) return nullptr;
    for (Source& s : pass->sources) {
      if (s.rank == r) return &s;
    }
    return nullptr;
  }

  void SendEntries(Source& src, std::int64_t now_ms) {
    while (src.entries_in_flight < kMaxEntriesInFlight && !src.pending_buckets.empty()) {
      std::uint64_t b = src.pending_buckets.front();
      src.pending_buckets.pop_front();
      std::uint64_t first = b * kBucketSectors;
      auto count = static_cast<std::uint32_t>(
          std::min<std::uint64_t>(kBucketSectors, options.sectors - first));
      std::uint64_t id = NewId();
      SyncMessage m = Msg(SyncKind::kEntries, id);
      m.first = first;
      m.count = count;
      requests[id] = Request{ReqKind::kEntries, src.rank, first, count, {}, now_ms, 1};
      ++src.entries_in_flight;
      env->SendSync(src.rank, m);
    }
  }

  void OnDigestReply(const SyncMessage& msg, const Request& req, std::int64_t now_ms) {
    Source* src = FindSource(msg.sender);
    if (src == nullptr || src->dropped || src->digest_done) return;
    if (msg.first != req.first || msg.count != req.count || msg.digests.size() != req.count) {
      return;  // malformed for this request: it times out and is re-sent
    }
    requests.erase(msg.request_id);
    src->digest_done = true;
    src->waiting = false;
    for (std::uint32_t i = 0; i < req.count; ++i) {
      std::uint64_t b = req.first + i;
      std::optional<std::uint64_t> own = OwnDigest(b);
      if (!own || *own != msg.digests[i]) src->pending_buckets.push_back(b);
    }
    SendEntries(*src, now_ms);
    MaybeAdvance(now_ms);
  }

  void OnEntriesReply(const SyncMessage& msg, const Request& req, std::int64_t now_ms) {
    Source* src = FindSource(msg.sender);
    if (src == nullptr || src->dropped) return;
    if (msg.first != req.first || msg.count != req.count) return;
    for (const SyncEntry& e : msg.entries) {
      if (e.sector < req.first || e.sector - req.first >= req.count) return;
    }
    requests.erase(msg.request_id);
    ATOMDISK_CHECK(src->entries_in_flight > 0);
    --src->entries_in_flight;
    src->waiting = false;
    Rank rank = src->rank;
    // Our own durable tags for the range. If the scan fails, every peer
    // entry is fetched: Absorb never lowers a tag, so that only costs bandwidth.
    std::vector<Tag> own(req.count);
    Status s = env->ScanTags(req.first, req.count, false, TagView::kDurable,
                             [&](SectorIdx sec, Tag t, bool) {
                               if (sec >= req.first && sec - req.first < req.count)
                                 own[sec - req.first] = t;
                             });
    if (!s.ok()) std::fill(own.begin(), own.end(), Tag{});
    for (const SyncEntry& e : msg.entries) {
      if (e.tag > own[e.sector - req.first]) AddWant(e.sector, e.tag, rank);
    }
    if (pass->join) {
      for (const SyncEntry& e : msg.entries) {
        pass->max_ts_seen = std::max(pass->max_ts_seen, e.tag.ts);
      }
      for (const Tag& t : own) pass->max_ts_seen = std::max(pass->max_ts_seen, t.ts);
    }
    SendEntries(*src, now_ms);
    PumpFetches(now_ms);
    MaybeAdvance(now_ms);
  }

  void Enqueue(SectorIdx s, Want& w) {
    ATOMDISK_CHECK(!w.holders.empty());
    w.state = Want::State::kQueued;
    pass->queued[w.holders.front()].insert(s);
  }

  void Unqueue(SectorIdx s, Want& w) {
    auto it = pass->queued.find(w.holders.front());
    ATOMDISK_CHECK(it != pass->queued.end());
    it->second.erase(s);
    if (it->second.empty()) pass->queued.erase(it);
  }

  void AddWant(SectorIdx s, Tag t, Rank from) {
    Pass& p = *pass;
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
  void FetchFailed(SectorIdx s, Rank from, const char* why) {
    Pass& p = *pass;
    auto it = p.wants.find(s);
    if (it == p.wants.end()) return;
    Want& w = it->second;
    ATOMDISK_CHECK(w.state == Want::State::kFetching);
    std::erase(w.holders, from);
    if (w.holders.empty()) {
      env->Note("resync: sector " + std::to_string(s) + " could not be fetched (" + why +
                " at peer " + std::to_string(from) + "), skipped in this pass");
      p.wants.erase(it);
      return;
    }
    Enqueue(s, w);
  }

  void PumpFetches(std::int64_t now_ms) {
    if (!pass) return;
    Pass& p = *pass;
    RefillTokens(now_ms);
    while (p.fetches_in_flight < options.fetch_window && !p.queued.empty() &&
           p.absorbing + p.sectors_in_flight < kMaxAbsorbing) {
      // Round-robin over sources, in rank order.
      auto qit = p.queued.upper_bound(p.last_fetch_source);
      if (qit == p.queued.end()) qit = p.queued.begin();
      std::size_t room = kMaxAbsorbing - p.absorbing - p.sectors_in_flight;
      std::size_t n = std::min<std::size_t>({options.fetch_batch, room, qit->second.size()});
      double need = static_cast<double>(n) * kSectorSize;
      if (options.rate_bytes_per_s > 0) {
        if (rate_tokens < need) break;
        rate_tokens -= need;
      }
      Rank to = qit->first;
      p.last_fetch_source = to;
      std::vector<SectorIdx> sectors;
      auto sit = qit->second.begin();
      for (std::size_t i = 0; i < n; ++i) sectors.push_back(*sit++);
      qit->second.erase(qit->second.begin(), sit);
      if (qit->second.empty()) p.queued.erase(qit);
      for (SectorIdx s : sectors) p.wants.at(s).state = Want::State::kFetching;
      std::uint64_t id = NewId();
      SyncMessage m = Msg(SyncKind::kFetch, id);
      m.sectors = sectors;
      p.fetches_in_flight += 1;
      p.sectors_in_flight += sectors.size();
      requests[id] = Request{ReqKind::kFetch, to, 0, 0, std::move(sectors), now_ms, 1};
      env->SendSync(to, m);
    }
  }

  void RefillTokens(std::int64_t now_ms) {
    if (options.rate_bytes_per_s <= 0) return;
    if (now_ms > rate_refill_ms) {
      rate_tokens +=
          options.rate_bytes_per_s * static_cast<double>(now_ms - rate_refill_ms) / 1000.0;
      rate_tokens = std::min(rate_tokens, rate_capacity);
      rate_refill_ms = now_ms;
    }
  }

  void OnFetchReply(const SyncMessage& msg, Request req, std::int64_t now_ms) {
    Pass& p = *pass;
    requests.erase(msg.request_id);
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
      std::uint64_t token = NewId();
      absorb_tokens[token] = AbsorbToken{false, s, v.tag};
      Invalidate(s);
      env->Absorb(s, v, token);
    }
    PumpFetches(now_ms);
    MaybeAdvance(now_ms);
  }

  void OnPassAbsorbed(const AbsorbToken& tok, const Status& status, std::int64_t now_ms) {
    Pass& p = *pass;
    auto it = p.wants.find(tok.sector);
    ATOMDISK_CHECK(it != p.wants.end() && it->second.state == Want::State::kAbsorbing);
    ATOMDISK_CHECK(p.absorbing > 0);
    --p.absorbing;
    Want& w = it->second;
    Invalidate(tok.sector);
    if (!status.ok()) {
      if (++w.absorb_failures >= kMaxAbsorbFailures) {
        env->Note("resync: cannot store sector " + std::to_string(tok.sector) + ": " +
                  status.ToString() + "; skipped in this pass");
        p.wants.erase(it);
      } else {
        Enqueue(tok.sector, w);
      }
    } else {
      ++p.sectors_pulled;
      p.bytes_pulled += kSectorSize;
      if (!pulled_samples.empty() && pulled_samples.back().first == now_ms) {
        pulled_samples.back().second += kSectorSize;  // one sample per instant: bounded
      } else {
        pulled_samples.emplace_back(now_ms, kSectorSize);
      }
      while (!pulled_samples.empty() && pulled_samples.front().first + kRateWindowMs < now_ms) {
        pulled_samples.pop_front();
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
  void SourceFailed(Rank r, std::int64_t now_ms) {
    Pass& p = *pass;
    Source* src = FindSource(r);
    if (src == nullptr) return;
    std::optional<Rank> replacement;
    if (p.join) {
      for (Rank v : FreshVotingPeers(now_ms)) {
        if (FindSource(v) == nullptr) {
          replacement = v;
          break;
        }
      }
      if (!replacement) {
        // Nobody else can vouch for this window: keep asking (see RetryRequests).
        if (!src->waiting) {
          env->Note("join pass: waiting for peer " + std::to_string(r) +
                    " (no other voting peer to pull from)");
        }
        src->waiting = true;
        return;
      }
    }
    // Forget everything outstanding at r.
    std::vector<std::uint64_t> ids;
    for (const auto& [id, req] : requests) {
      if (req.to == r && req.kind != ReqKind::kScrubFetch) ids.push_back(id);
    }
    for (std::uint64_t id : ids) {
      Request req = std::move(requests.at(id));
      requests.erase(id);
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
      env->Note("join pass: peer " + std::to_string(r) + " does not answer, pulling from peer " +
                std::to_string(*replacement) + " instead");
      *src = NewSource(*replacement);
      SendDigest(*src, now_ms);
    } else {
      env->Note("resync pass: peer " + std::to_string(r) +
                " does not answer, dropped for the rest of the pass");
      src->dropped = true;
      src->pending_buckets.clear();
      src->entries_in_flight = 0;
    }
    PumpFetches(now_ms);
    MaybeAdvance(now_ms);
  }

  void Resend(std::uint64_t id, Request& req, std::int64_t now_ms) {
    SyncMessage m;
    switch (req.kind) {
      case ReqKind::kDigest:
        m = Msg(SyncKind::kDigest, id);
        m.first = req.first;
        m.count = req.count;
        break;
      case ReqKind::kEntries:
        m = Msg(SyncKind::kEntries, id);
        m.first = req.first;
        m.count = req.count;
        break;
      case ReqKind::kFetch:
      case ReqKind::kScrubFetch:
        m = Msg(SyncKind::kFetch, id);
        m.sectors = req.sectors;
        break;
    }
    req.sent_ms = now_ms;
    ++req.sends;
    env->SendSync(req.to, m);
  }

  // Re-sends a request unanswered for request_timeout_ms once; a second timeout fails its
  // source (dropped, replaced, or for a join source with no replacement, asked again).
  void RetryRequests(std::int64_t now_ms) {
    std::set<Rank> failed;
    for (auto& [id, req] : requests) {
      if (req.kind == ReqKind::kScrubFetch) continue;  // scrub repairs time out on their own
      if (now_ms - req.sent_ms < options.request_timeout_ms) continue;
      if (req.sends < 2) {
        Resend(id, req, now_ms);
      } else {
        failed.insert(req.to);
      }
    }
    for (Rank r : failed) {
      if (!pass) break;
      SourceFailed(r, now_ms);
      Source* src = FindSource(r);
      if (src == nullptr || !src->waiting) continue;
      for (auto& [id, req] : requests) {
        if (req.to == r && req.kind != ReqKind::kScrubFetch &&
            now_ms - req.sent_ms >= options.request_timeout_ms) {
          Resend(id, req, now_ms);
        }
      }
    }
  }

  // ---------------------------------------------------------------- scrub

  Status StartScrub(std::int64_t now_ms) {
    if (scrub.active) return Status::Busy("a scrub is already running");
    std::uint64_t runs = scrub.runs_done;
    scrub = Scrub{};
    scrub.runs_done = runs;
    scrub.active = true;
    scrub.start_ms = now_ms;
    env->Note("scrub started: " + std::to_string(buckets) + " buckets");
    return Status::Ok();
  }

  void ScrubTick(std::int64_t now_ms) {
    if (!scrub.active) return;
    std::vector<SectorIdx> found;
    for (std::uint32_t i = 0; i < std::max<std::uint32_t>(1, options.scrub_buckets_per_tick) &&
                              scrub.bucket < buckets && scrub.repairs.size() < kMaxScrubRepairs;
         ++i) {
      std::uint64_t b = scrub.bucket++;
      std::uint64_t first = b * kBucketSectors;
      std::uint64_t count = std::min<std::uint64_t>(kBucketSectors, options.sectors - first);
      Status s =
          env->ScanTags(first, count, true, TagView::kDurable, [&](SectorIdx sec, Tag t, bool ok) {
            if (sec < first || sec - first >= count) return;
            ++scrub.checked;
            if (ok) return;
            ++scrub.corrupt;
            if (scrub.repairs.count(sec) == 0) {
              scrub.repairs[sec] = Repair{t, {}, now_ms, false};
              found.push_back(sec);
            }
          });
      if (!s.ok())
        env->Note("scrub: cannot scan bucket " + std::to_string(b) + ": " + s.ToString());
    }
    if (!found.empty()) {
      if (peers.size() < options.RequiredSources()) {
        for (SectorIdx sec : found) {
          env->Note("scrub: sector " + std::to_string(sec) +
                    " is corrupt and no peer can repair it");
          scrub.repairs.erase(sec);
          ++scrub.unrepaired;
        }
      } else {
        for (std::size_t i = 0; i < found.size(); i += kMaxFetchSectors) {
          std::vector<SectorIdx> batch(found.begin() + static_cast<std::ptrdiff_t>(i),
                                       found.begin() + static_cast<std::ptrdiff_t>(std::min(
                                                           found.size(), i + kMaxFetchSectors)));
          for (Rank r : peers) {
            std::uint64_t id = NewId();
            SyncMessage m = Msg(SyncKind::kFetch, id);
            m.sectors = batch;
            requests[id] = Request{ReqKind::kScrubFetch, r, 0, 0, batch, now_ms, 1};
            env->SendSync(r, m);
          }
        }
      }
    }
    // Repairs whose peers did not answer in time.
    for (auto it = scrub.repairs.begin(); it != scrub.repairs.end();) {
      if (!it->second.absorbing &&
          now_ms - it->second.start_ms >= kScrubRepairTimeouts * options.request_timeout_ms) {
        env->Note("scrub: sector " + std::to_string(it->first) +
                  " is corrupt and too few peers answered to repair it");
        ++scrub.unrepaired;
        it = scrub.repairs.erase(it);
      } else {
        ++it;
      }
    }
    // Scrub fetches: re-send unanswered ones; drop those with nothing left to decide.
    for (auto it = requests.begin(); it != requests.end();) {
      Request& req = it->second;
      if (req.kind != ReqKind::kScrubFetch) {
        ++it;
        continue;
      }
      bool needed = false;
      for (SectorIdx s : req.sectors) {
        auto rep = scrub.repairs.find(s);
        needed = needed || (rep != scrub.repairs.end() && !rep->second.absorbing &&
                            rep->second.answers.count(req.to) == 0);
      }
      if (!needed) {
        it = requests.erase(it);
        continue;
      }
      if (now_ms - req.sent_ms >= options.request_timeout_ms) Resend(it->first, req, now_ms);
      ++it;
    }
    MaybeFinishScrub(now_ms);
  }

  void OnScrubFetchReply(const SyncMessage& msg, const Request& req, std::int64_t now_ms) {
    std::vector<SectorIdx> sectors = req.sectors;
    requests.erase(msg.request_id);
    std::map<SectorIdx, const FetchedSector*> got;
    for (const FetchedSector& f : msg.fetched) got.emplace(f.sector, &f);
    for (SectorIdx s : sectors) {
      auto rep = scrub.repairs.find(s);
      if (rep == scrub.repairs.end() || rep->second.absorbing) continue;
      auto g = got.find(s);
      std::optional<Triple> v;
      if (g != got.end() && g->second->ok && g->second->value.data != nullptr) {
        v = g->second->value;
      }
      rep->second.answers[msg.sender] = v;
      if (rep->second.answers.size() < options.RequiredSources()) continue;
      // Enough peers answered: the newest value any of them holds.
      std::optional<Triple> best;
      for (const auto& [r, a] : rep->second.answers) {
        if (a && (!best || a->tag > best->tag)) best = a;
      }
      if (best && best->tag > rep->second.own) {
        rep->second.absorbing = true;
        std::uint64_t token = NewId();
        absorb_tokens[token] = AbsorbToken{true, s, best->tag};
        Invalidate(s);
        env->Absorb(s, *best, token);
      } else {
        // The bad slot is older than our valid one (a stale slot: the next write of the
        // sector overwrites it), or nobody has anything newer.
        ++scrub.stale;
        scrub.repairs.erase(rep);
      }
    }
    MaybeFinishScrub(now_ms);
  }

  void OnScrubAbsorbed(const AbsorbToken& tok, const Status& status, std::int64_t now_ms) {
    auto rep = scrub.repairs.find(tok.sector);
    ATOMDISK_CHECK(rep != scrub.repairs.end() && rep->second.absorbing);
    Invalidate(tok.sector);
    if (status.ok()) {
      ++scrub.repaired;
      env->Note("scrub: sector " + std::to_string(tok.sector) + " repaired with " +
                tok.tag.ToString());
    } else {
      ++scrub.unrepaired;
      env->Note("scrub: cannot store the repair of sector " + std::to_string(tok.sector) + ": " +
                status.ToString());
    }
    scrub.repairs.erase(rep);
    MaybeFinishScrub(now_ms);
  }

  void MaybeFinishScrub(std::int64_t now_ms) {
    if (!scrub.active || scrub.bucket < buckets || !scrub.repairs.empty()) return;
    scrub.active = false;
    ++scrub.runs_done;
    for (auto it = requests.begin(); it != requests.end();) {
      it = it->second.kind == ReqKind::kScrubFetch ? requests.erase(it) : std::next(it);
    }
    env->Note("scrub done: " + std::to_string(scrub.checked) + " sectors checked, " +
              std::to_string(scrub.corrupt) + " corrupt, " + std::to_string(scrub.repaired) +
              " repaired, " + std::to_string(scrub.unrepaired) + " unrepaired, " +
              std::to_string(scrub.stale) + " stale slots left for the next write");
    if (options.scrub_interval_ms > 0) next_scrub_ms = now_ms + options.scrub_interval_ms;
  }

  // ---------------------------------------------------------------- events

  void OnMessage(const SyncMessage& msg, std::int64_t now_ms) {
    if (mode == Mode::kNew || msg.sender == options.self || !IsPeer(msg.sender)) return;
    switch (msg.kind) {
      case SyncKind::kHello:
      case SyncKind::kRegisterVoter:
      case SyncKind::kDigest:
      case SyncKind::kEntries:
      case SyncKind::kFetch:
        Serve(msg);
        return;
      case SyncKind::kHelloReply:
        OnHelloReply(msg, now_ms);
        return;
      case SyncKind::kRegisterVoterAck:
        if (mode == Mode::kRegistering && msg.request_id == register_id) {
          register_acks.insert(msg.sender);
          MaybeRegistered(now_ms);
        }
        return;
      default:
        break;
    }
    auto it = requests.find(msg.request_id);
    if (it == requests.end() || it->second.to != msg.sender) return;  // stale or foreign
    Request req = it->second;  // a copy: the handlers erase the entry
    switch (msg.kind) {
      case SyncKind::kDigestReply:
        if (req.kind == ReqKind::kDigest && pass) OnDigestReply(msg, req, now_ms);
        return;
      case SyncKind::kEntriesReply:
        if (req.kind == ReqKind::kEntries && pass) OnEntriesReply(msg, req, now_ms);
        return;
      case SyncKind::kFetchReply:
        if (req.kind == ReqKind::kFetch && pass) {
          OnFetchReply(msg, req, now_ms);
        } else if (req.kind == ReqKind::kScrubFetch) {
          OnScrubFetchReply(msg, req, now_ms);
        }
        return;
      default:
        return;
    }
  }

  void OnAbsorbed(std::uint64_t token, const Status& status, std::int64_t now_ms) {
    auto it = absorb_tokens.find(token);
    if (it == absorb_tokens.end()) return;
    AbsorbToken tok = it->second;
    absorb_tokens.erase(it);
    if (tok.scrub) {
      OnScrubAbsorbed(tok, status, now_ms);
    } else {
      ATOMDISK_CHECK(pass.has_value());
      OnPassAbsorbed(tok, status, now_ms);
    }
  }

  void Tick(std::int64_t now_ms) {
    if (mode == Mode::kNew) return;
    if (vote_save_pending) BecomeVoter(now_ms, vote_pending_background_pass);
    if (!peers.empty() && now_ms >= next_hello_ms &&
        (mode == Mode::kVoting || mode == Mode::kJoining || mode == Mode::kJoinPass)) {
      StartHelloRound(now_ms);
    }
    if (mode == Mode::kJoining) Decide(now_ms);
    if (mode == Mode::kRegistering) {
      SyncMessage m = Msg(SyncKind::kRegisterVoter, register_id);
      for (auto& [r, sent] : register_sent_ms) {
        if (register_acks.count(r) == 0 && now_ms - sent >= options.request_timeout_ms) {
          env->SendSync(r, m);
          sent = now_ms;
        }
      }
    }
    if (pass) {
      RetryRequests(now_ms);
      PumpFetches(now_ms);
      if (pass && now_ms - pass->last_progress_ms >= kProgressIntervalMs) {
        pass->last_progress_ms = now_ms;
        env->Note(ProgressLine(now_ms));
      }
    } else if (mode == Mode::kVoting && next_pass_ms >= 0 && now_ms >= next_pass_ms) {
      next_pass_ms = -1;
      std::uint64_t from =
          identity.resync_active && !identity.resync_join ? identity.resync_next_window : 0;
      StartPass(/*join=*/false, peers, from, now_ms);
    }
    if (!scrub.active && next_scrub_ms >= 0 && now_ms >= next_scrub_ms) {
      next_scrub_ms = -1;
      (void)StartScrub(now_ms);
    }
    ScrubTick(now_ms);
  }

  Status StartResync(std::int64_t now_ms) {
    if (mode != Mode::kVoting) return Status::Busy("this node is joining; it runs its own pass");
    if (pass) return Status::Busy("a resync pass is already running");
    next_pass_ms = -1;
    StartPass(/*join=*/false, peers, 0, now_ms);
    return Status::Ok();
  }

  std::string StateString(std::int64_t now_ms) const {
    switch (mode) {
      case Mode::kNew:
        return "starting";
      case Mode::kVoting:
        return "voting";  // a running pass shows in SyncStatus::resync
      case Mode::kRegistering:
        return "joining: registering as a voter (" + std::to_string(register_acks.size()) + " of " +
               std::to_string(options.Quorum() - 1) + " acknowledged)";
      case Mode::kJoining:
        if (listed_as_voter) {
          return "joining: waiting for " + std::to_string(options.RequiredSources()) +
                 " voting peers (have " + std::to_string(FreshVotingPeers(now_ms).size()) + ")";
        }
        return "joining: waiting for every peer to answer (" +
               std::to_string(FreshAnswers(now_ms)) + " of " + std::to_string(peers.size()) + ")";
      case Mode::kJoinPass: {
        if (!pass) return "joining: saving IDENTITY before voting";
        std::string s = "joining: pulling from voting peers (window " +
                        std::to_string(pass->window) + "/" + std::to_string(windows) + ")";
        for (const Source& src : pass->sources) {
          if (src.waiting) s += ", waiting for peer " + std::to_string(src.rank);
        }
        return s;
      }
    }
    return "";
  }

  SyncStatus GetStatus(std::int64_t now_ms) const {
    SyncStatus st;
    st.voting = voting;
    st.state = StateString(now_ms);
    if (vote_save_pending) st.state += " (cannot save IDENTITY, retrying)";
    if (pass) {
      RecordPassStatus(st.resync, now_ms);
    } else {
      st.resync = last_pass;
    }
    st.resync.passes_done = passes_done;
    st.scrub.active = scrub.active;
    st.scrub.bucket = scrub.bucket;
    st.scrub.buckets = buckets;
    st.scrub.sectors_checked = scrub.checked;
    st.scrub.corrupt = scrub.corrupt;
    st.scrub.repaired = scrub.repaired;
    st.scrub.unrepaired = scrub.unrepaired;
    st.scrub.stale = scrub.stale;
    st.scrub.runs_done = scrub.runs_done;
    return st;
  }

  void CheckInvariants() const {
    ATOMDISK_CHECK(digest.size() == buckets && digest_valid.size() == buckets);
    ATOMDISK_CHECK(!voting || identity.voting);
    ATOMDISK_CHECK(voting == (mode == Mode::kVoting));
    ATOMDISK_CHECK(mode != Mode::kJoinPass || !voting);
    ATOMDISK_CHECK(!identity.voting || identity.HasVoter(options.self) || mode == Mode::kNew);
    ATOMDISK_CHECK(std::is_sorted(identity.voters.begin(), identity.voters.end()));
    // The saved floor is in force (a node votes only with it applied).
    ATOMDISK_CHECK(applied_floor >= identity.write_ts_floor || mode == Mode::kNew);
    // The lease in force is the saved one (never ahead of what a restart would see).
    ATOMDISK_CHECK(applied_lease == identity.write_ts_lease || mode == Mode::kNew);
    if (pass) {
      const Pass& p = *pass;
      ATOMDISK_CHECK(p.window <= windows);
      ATOMDISK_CHECK(p.join == (mode == Mode::kJoinPass));
      ATOMDISK_CHECK(p.absorbing + p.sectors_in_flight <= kMaxAbsorbing);
      ATOMDISK_CHECK(p.fetches_in_flight <= options.fetch_window);
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
      std::size_t pass_absorb_tokens = 0;
      for (const auto& [t, tok] : absorb_tokens) pass_absorb_tokens += tok.scrub ? 0 : 1;
      ATOMDISK_CHECK(pass_absorb_tokens == p.absorbing);
    } else {
      for (const auto& [id, req] : requests) ATOMDISK_CHECK(req.kind == ReqKind::kScrubFetch);
      for (const auto& [t, tok] : absorb_tokens) ATOMDISK_CHECK(tok.scrub);
    }
    ATOMDISK_CHECK(scrub.bucket <= buckets);
    ATOMDISK_CHECK(scrub.repairs.size() <=
                   kMaxScrubRepairs +
                       kBucketSectors * std::max<std::uint32_t>(1, options.scrub_buckets_per_tick));
    ATOMDISK_CHECK(scrub.repaired + scrub.unrepaired + scrub.stale + scrub.repairs.size() <=
                   scrub.corrupt);
  }
};

Syncer::Syncer(SyncerOptions options, std::optional<Identity> identity, bool store_empty,
               SyncEnv* env)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(identity), store_empty, env)) {}

Syncer::~Syncer() = default;
Syncer::Syncer(Syncer&&) noexcept = default;
Syncer& Syncer::operator=(Syncer&&) noexcept = default;

Status Syncer::Start(std::int64_t now_ms) { return impl_->Start(now_ms); }
void Syncer::OnMessage(const SyncMessage& msg, std::int64_t now_ms) {
  impl_->OnMessage(msg, now_ms);
}
void Syncer::OnAbsorbed(std::uint64_t token, const Status& status, std::int64_t now_ms) {
  impl_->OnAbsorbed(token, status, now_ms);
}
void Syncer::OnLocalWrite(SectorIdx sector) { impl_->Invalidate(sector); }
void Syncer::RaiseWriteTsLease(std::uint64_t ts) { impl_->RaiseWriteTsLease(ts); }
void Syncer::Tick(std::int64_t now_ms) { impl_->Tick(now_ms); }
Status Syncer::StartScrub(std::int64_t now_ms) { return impl_->StartScrub(now_ms); }
Status Syncer::StartResync(std::int64_t now_ms) { return impl_->StartResync(now_ms); }
bool Syncer::voting() const { return impl_->voting; }
const Identity& Syncer::identity() const { return impl_->identity; }
SyncStatus Syncer::GetStatus(std::int64_t now_ms) const { return impl_->GetStatus(now_ms); }
void Syncer::CheckInvariants() const { impl_->CheckInvariants(); }

}  // namespace atomdisk
