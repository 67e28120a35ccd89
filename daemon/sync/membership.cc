// Membership (daemon/sync/membership.h).
#include "daemon/sync/membership.h"

#include <algorithm>
#include <limits>
#include <utility>

namespace atomdisk {

Membership::Membership(SyncContext& ctx, ResyncPass& resync, std::optional<Identity> loaded,
                       bool store_empty)
    : ctx_(ctx), resync_(resync), loaded_(std::move(loaded)), store_empty_(store_empty) {}

Status Membership::AdoptIdentity() {
  ATOMDISK_CHECK(mode_ == Mode::kNew);
  if (loaded_) {
    if (loaded_->cluster_id != ctx_.options.cluster_id) {
      return Status::InvalidArgument("IDENTITY belongs to cluster " +
                                     loaded_->cluster_id.ToString() + ", not to cluster " +
                                     ctx_.options.cluster_id.ToString());
    }
    if (loaded_->rank != ctx_.options.self) {
      return Status::InvalidArgument("IDENTITY belongs to rank " + std::to_string(loaded_->rank) +
                                     ", not to rank " + std::to_string(ctx_.options.self));
    }
    ctx_.identity = *loaded_;
  } else {
    ctx_.identity = Identity{};
    ctx_.identity.cluster_id = ctx_.options.cluster_id;
    ctx_.identity.rank = ctx_.options.self;
    if (!store_empty_) {
      // Data from before identities existed: it votes (docs/RESYNC.md).
      ctx_.identity.voting = true;
      ctx_.identity.AddVoter(ctx_.options.self);
    }
  }
  if (ctx_.identity.voting) ctx_.identity.AddVoter(ctx_.options.self);
  // Writes of the earlier run below its lease may have gone out without a durable copy
  // here: this run's writes start above it (docs/REGISTER.md), under a new lease.
  const std::uint64_t restart_floor =
      std::max(ctx_.identity.write_ts_floor, ctx_.identity.write_ts_lease);
  ctx_.identity.write_ts_lease = LeaseAbove(restart_floor);
  if (!loaded_ || *loaded_ != ctx_.identity) {
    Status s = ctx_.env->SaveIdentity(ctx_.identity);
    if (!s.ok()) return s;
  }
  ApplyWriteTsFloor(restart_floor);
  applied_lease_ = ctx_.identity.write_ts_lease;
  ctx_.env->SetWriteTsLease(applied_lease_);
  // A floor taken after an earlier join pass still holds: the tags of the incarnation
  // before that disk replacement may still be out there.
  ApplyWriteTsFloor(ctx_.identity.write_ts_floor);
  return Status::Ok();
}

void Membership::Start(std::int64_t now_ms) {
  ATOMDISK_CHECK(mode_ == Mode::kNew);
  if (ctx_.identity.voting) {
    EnterVoting(now_ms);
    std::uint64_t from = 0;
    if (ctx_.identity.resync_active && !ctx_.identity.resync_join)
      from = ctx_.identity.resync_next_window;
    resync_.Start(/*join=*/false, ctx_.peers, from, now_ms);
    return;
  }
  if (ctx_.options.bug_joiner_votes) {
    // Deliberate bug (simulator only): vote at once, pull in the background.
    ctx_.env->Note("BUG bug_joiner_votes: voting without a join pass");
    BecomeVoter(now_ms, /*background_pass=*/true);
    if (mode_ == Mode::kVoting) return;
  }
  SetVoting(false);
  mode_ = Mode::kJoining;
  if (ctx_.peers.empty()) {
    // A one-node cluster: nobody can have seen it vote with another disk.
    StartRegistering(now_ms);
    return;
  }
  if (ctx_.identity.registering) {
    // It found before the restart that it never voted; peers list it because it registered.
    ctx_.env->Note("joining: registering again (this copy never voted)");
    StartRegistering(now_ms);
    return;
  }
  ctx_.env->Note("joining: asking every peer whether it voted before");
  // A replaced disk restarted in the middle of its join: writes it coordinates meanwhile
  // start above the wall clock at once (see OnHelloReply).
  if (ctx_.identity.resync_join) ApplyWriteTsFloor(JoinFloor(0));
  StartHelloRound(now_ms);
}

void Membership::SetVoting(bool v) {
  voting_ = v;
  ctx_.env->SetVoting(v);
}

// A lease kWriteTsLeaseStep above `ts`, within what IDENTITY can hold.
std::uint64_t Membership::LeaseAbove(std::uint64_t ts) {
  constexpr auto kMax = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  return ts < kMax - kWriteTsLeaseStep ? ts + kWriteTsLeaseStep : kMax;
}

void Membership::RaiseWriteTsLease(std::uint64_t ts) {
  if (mode_ == Mode::kNew || ts < applied_lease_) return;  // not started, or already covered
  Identity next = ctx_.identity;
  next.write_ts_lease = LeaseAbove(ts);
  if (next.write_ts_lease <= applied_lease_) return;  // at the cap
  Status s = ctx_.env->SaveIdentity(next);
  if (!s.ok()) {
    // Writes stay correct without a lease (they persist their own copy first); the next
    // one above it asks again.
    if (!lease_save_failed_noted_) {
      ctx_.env->Note(
          "cannot save IDENTITY to raise the write ts lease (writes take one "
          "fdatasync longer until it can): " +
          s.ToString());
    }
    lease_save_failed_noted_ = true;
    return;
  }
  lease_save_failed_noted_ = false;
  ctx_.identity = next;
  applied_lease_ = ctx_.identity.write_ts_lease;
  ctx_.env->SetWriteTsLease(applied_lease_);
}

void Membership::ApplyWriteTsFloor(std::uint64_t floor) {
  if (floor <= applied_floor_) return;
  applied_floor_ = floor;
  ctx_.env->SetWriteTsFloor(floor);
}

// The write ts floor at the end of a join pass that saw ts values up to `max_ts_seen`
// (docs/RESYNC.md, "Tags after a disk replacement"). Kept within what IDENTITY can hold: a
// ts past 2^63 comes only from a broken peer.
std::uint64_t Membership::JoinFloor(std::uint64_t max_ts_seen) {
  constexpr auto kMaxFloor = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  std::uint64_t seen_above = max_ts_seen < kMaxFloor ? max_ts_seen + 1 : kMaxFloor;
  std::uint64_t floor =
      std::max({ctx_.identity.write_ts_floor, ctx_.env->WallClockMicros(), seen_above});
  if (floor > kMaxFloor) {
    ctx_.env->Note("write ts floor " + std::to_string(floor) + " capped at " +
                   std::to_string(kMaxFloor));
    floor = kMaxFloor;
  }
  return floor;
}

void Membership::EnterVoting(std::int64_t now_ms) {
  mode_ = Mode::kVoting;
  SetVoting(true);
  next_hello_ms_ = now_ms;  // the first round goes out on the next tick
  resync_.SchedulePeriodic(now_ms);
}

std::int64_t Membership::HelloInterval() const {
  return mode_ == Mode::kVoting ? ctx_.options.hello_interval_ms
                                : ctx_.options.joining_hello_interval_ms;
}

void Membership::StartHelloRound(std::int64_t now_ms) {
  hello_round_id_ = ctx_.NewId();
  hello_rounds_[hello_round_id_] = now_ms;
  // Rounds older than a request timeout no longer count (see Fresh()).
  while (!hello_rounds_.empty() &&
         hello_rounds_.begin()->second + ctx_.options.request_timeout_ms < now_ms) {
    hello_rounds_.erase(hello_rounds_.begin());
  }
  SyncMessage m = ctx_.Msg(SyncKind::kHello, hello_round_id_);
  for (Rank r : ctx_.peers) ctx_.env->SendSync(r, m);
  next_hello_ms_ = now_ms + std::max<std::int64_t>(1, HelloInterval());
}

// A reply counts towards a decision if it answers a round started at most one request
// timeout ago: with rounds every joining_hello_interval_ms, a reply slower than one round
// still counts. Combining replies of nearby rounds is as safe as one round: a durable
// voters list only grows.
bool Membership::Fresh(const PeerHello& h, std::int64_t now_ms) const {
  return h.round_ms + ctx_.options.request_timeout_ms >= now_ms;
}

std::vector<Rank> Membership::FreshVotingPeers(std::int64_t now_ms) const {
  std::vector<Rank> out;
  for (const auto& [r, h] : hellos_) {
    if (h.voting && Fresh(h, now_ms)) out.push_back(r);
  }
  return out;
}

std::size_t Membership::FreshAnswers(std::int64_t now_ms) const {
  std::size_t n = 0;
  for (const auto& [r, h] : hellos_) n += Fresh(h, now_ms) ? 1 : 0;
  return n;
}

void Membership::OnHelloReply(const SyncMessage& msg, std::int64_t now_ms) {
  auto round = hello_rounds_.find(msg.request_id);
  if (round == hello_rounds_.end()) return;  // stale or unknown round
  if (msg.cluster_id != ctx_.options.cluster_id) {
    if (wrong_cluster_noted_.insert(msg.sender).second) {
      ctx_.env->Note("peer " + std::to_string(msg.sender) + " belongs to cluster " +
                     msg.cluster_id.ToString() + ", not " + ctx_.options.cluster_id.ToString() +
                     ": its replies are ignored");
    }
    return;
  }
  bool lists_self = std::binary_search(msg.voters.begin(), msg.voters.end(), ctx_.options.self);
  PeerHello& h = hellos_[msg.sender];
  if (round->second >= h.round_ms) {
    h = PeerHello{round->second, msg.voting, lists_self};
    // Only the newest round's reply speaks for the peer's current binary.
    ctx_.env->SetPeerFeatures(msg.sender, msg.features);
  }
  LearnVoters(msg);
  if (mode_ == Mode::kVoting) {
    if (!lists_self) {
      // That peer forgot us (its disk was replaced): register again.
      ctx_.env->SendSync(msg.sender, ctx_.Msg(SyncKind::kRegisterVoter, ctx_.NewId()));
    }
    return;
  }
  const bool bug_ignore = ctx_.identity.genesis && ctx_.options.bug_genesis_trusted;
  if (mode_ == Mode::kJoining && lists_self && !listed_as_voter_ && !bug_ignore) {
    listed_as_voter_ = true;
    if (ctx_.identity.genesis) {
      // The operator's word is overruled by a peer's memory: safety first.
      ctx_.env->Note("joining: peer " + std::to_string(msg.sender) +
                     " lists this node as a voter although its IDENTITY says it is a founding "
                     "member of a new cluster (atomdiskd --bootstrap): it voted before and its "
                     "disk was replaced, a join pass is needed");
      // Remembered across a restart, when the peers that answer first may be ones that do
      // not list it (their own disks replaced since).
      Identity next = ctx_.identity;
      next.genesis = false;
      if (Status s = ctx_.SaveIdentity(next); !s.ok()) {
        ctx_.env->Note("cannot save IDENTITY without its genesis mark: " + s.ToString());
      }
    } else {
      ctx_.env->Note("joining: peer " + std::to_string(msg.sender) +
                     " lists this node as a voter: its disk was replaced, a join pass is needed");
    }
    // Its old incarnation may have minted tags that survive at a peer (in flight, or waiting
    // on a slow disk) below the durable tags a write's quorum reports. Writes this node
    // coordinates from now on, before the join pass even starts (it waits for enough voting
    // peers), take the wall-clock floor the pass would (docs/RESYNC.md).
    ApplyWriteTsFloor(JoinFloor(0));
  }
  if (mode_ == Mode::kJoining) Decide(now_ms);
}

// The joining decision (docs/RESYNC.md "voters remember").
void Membership::Decide(std::int64_t now_ms) {
  ATOMDISK_CHECK(mode_ == Mode::kJoining);
  if (listed_as_voter_) {
    std::vector<Rank> voters = FreshVotingPeers(now_ms);
    if (voters.size() < ctx_.options.RequiredSources()) return;  // state says what it waits for
    voters.resize(ctx_.options.RequiredSources());
    std::uint64_t from = 0;
    if (ctx_.identity.resync_active && ctx_.identity.resync_join)
      from = ctx_.identity.resync_next_window;
    ctx_.env->Note("joining: pulling from voting peers " + RankList(voters) + " before voting");
    resync_.Start(/*join=*/true, voters, from, now_ms);
    return;
  }
  const std::size_t answers = FreshAnswers(now_ms);
  if (answers == ctx_.peers.size()) {
    StartRegistering(now_ms);
  } else if (ctx_.identity.genesis && answers + 1 >= ctx_.options.Quorum()) {
    // A founding member (atomdiskd --bootstrap): never voted, by the operator's word, so the
    // peers that are down cannot know otherwise; a majority is enough to start.
    ctx_.env->Note("joining: founding member of a new cluster; " + std::to_string(answers) +
                   " of " + std::to_string(ctx_.peers.size()) +
                   " peers answered and none lists this node: registering as a voter");
    StartRegistering(now_ms);
  }
}

void Membership::StartRegistering(std::int64_t now_ms) {
  if (!ctx_.identity.registering && !ctx_.peers.empty()) {
    Identity next = ctx_.identity;
    next.registering = true;
    if (Status s = ctx_.SaveIdentity(next); !s.ok()) {
      // Registering without the mark is safe; a restart before voting then asks the peers
      // again and takes their listing for a replaced disk (a join pass it did not need).
      ctx_.env->Note("cannot save IDENTITY before registering: " + s.ToString());
    }
  }
  mode_ = Mode::kRegistering;
  register_id_ = ctx_.NewId();
  register_acks_.clear();
  register_sent_ms_.clear();
  if (!ctx_.peers.empty()) ctx_.env->Note("registering as a voter with every peer");
  SyncMessage m = ctx_.Msg(SyncKind::kRegisterVoter, register_id_);
  for (Rank r : ctx_.peers) {
    ctx_.env->SendSync(r, m);
    register_sent_ms_[r] = now_ms;
  }
  MaybeRegistered(now_ms);
}

void Membership::MaybeRegistered(std::int64_t now_ms) {
  if (mode_ != Mode::kRegistering) return;
  if (register_acks_.size() + 1 < ctx_.options.Quorum()) return;
  BecomeVoter(now_ms, /*background_pass=*/true);
}

// Persists voting = true and then votes. Retried from Tick if the save fails: a node must
// never vote before its IDENTITY says so (else a restart would forget it voted).
void Membership::BecomeVoter(std::int64_t now_ms, bool background_pass) {
  Identity next = ctx_.identity;
  next.voting = true;
  next.AddVoter(ctx_.options.self);
  next.resync_active = false;
  next.resync_join = false;
  next.resync_next_window = 0;
  next.genesis = false;  // it has voted now
  next.registering = false;
  next.write_ts_floor = std::max(next.write_ts_floor, join_floor_);
  Status s = ctx_.env->SaveIdentity(next);
  if (!s.ok()) {
    if (!vote_save_pending_)
      ctx_.env->Note("cannot save IDENTITY to start voting: " + s.ToString());
    vote_save_pending_ = true;
    vote_pending_background_pass_ = background_pass;
    return;
  }
  vote_save_pending_ = false;
  ctx_.identity = next;
  join_floor_ = 0;
  // Before voting: no write of ours may take a tag the old incarnation used.
  ApplyWriteTsFloor(ctx_.identity.write_ts_floor);
  EnterVoting(now_ms);
  ctx_.env->Note("voting");
  if (background_pass) resync_.Start(/*join=*/false, ctx_.peers, 0, now_ms);
}

void Membership::OnJoinPassStart() {
  mode_ = Mode::kJoinPass;
  // Writes this node coordinates while joining (peer quorums) must not reuse an old
  // incarnation's tag either; the pass end raises the floor over what it saw.
  ApplyWriteTsFloor(JoinFloor(0));
}

void Membership::OnJoinPassDone(std::uint64_t max_ts_seen, std::int64_t now_ms) {
  // Vote, with own writes above every tag the old incarnation may have used.
  join_floor_ = JoinFloor(max_ts_seen);
  ctx_.env->Note("write ts floor after the join pass: " + std::to_string(join_floor_));
  BecomeVoter(now_ms, /*background_pass=*/false);
}

void Membership::ServeHello(const SyncMessage& msg) {
  // Before Start the voters list is not loaded yet: an empty one would tell a replaced
  // node it never voted.
  if (mode_ == Mode::kNew) return;
  SyncMessage r = ctx_.Msg(SyncKind::kHelloReply, msg.request_id);
  r.cluster_id = ctx_.options.cluster_id;
  r.voting = voting_;
  r.voters = ctx_.identity.voters;
  // Liveness is the daemon's transport (daemon/net/node_server.cc answers Pings); a
  // simulated peer is never pinged, so advertising it there costs nothing.
  r.features = kFeatureTagReads | kFeatureLiveness | kFeatureBatches;
  ctx_.env->SendSync(msg.sender, r);
}

// Voters a peer knows of are voters: this node remembers them too (durably), so that the
// memory of a registration outlives the disks of the peers that stored it, and any one peer
// that answers a replaced disk's Hello is likely to recognise it (docs/RESYNC.md). Only ranks
// of the cluster, never this node itself (OnHelloReply decides about that).
void Membership::LearnVoters(const SyncMessage& msg) {
  if (mode_ == Mode::kNew) return;
  Identity next = ctx_.identity;
  bool grew = false;
  for (Rank r : msg.voters) {
    if (std::find(ctx_.peers.begin(), ctx_.peers.end(), r) != ctx_.peers.end()) {
      grew |= next.AddVoter(r);
    }
  }
  if (!grew) return;
  // On failure the next reply tries again; nothing counted on it.
  if (Status s = ctx_.SaveIdentity(next); !s.ok() && !learn_save_failed_noted_) {
    learn_save_failed_noted_ = true;
    ctx_.env->Note("cannot save IDENTITY to remember the voters peer " +
                   std::to_string(msg.sender) + " knows: " + s.ToString());
  }
}

void Membership::ServeRegisterVoter(const SyncMessage& msg) {
  if (mode_ == Mode::kNew) return;  // not started: identity not decided yet
  Identity next = ctx_.identity;
  if (next.AddVoter(msg.sender)) {
    Status s = ctx_.SaveIdentity(next);
    if (!s.ok()) {
      // No Ack: the voter must not count a registration that is not durable.
      ctx_.env->Note("cannot save IDENTITY to register voter " + std::to_string(msg.sender) + ": " +
                     s.ToString());
      return;
    }
    ctx_.env->Note("registered voter " + std::to_string(msg.sender));
  }
  ctx_.env->SendSync(msg.sender, ctx_.Msg(SyncKind::kRegisterVoterAck, msg.request_id));
}

void Membership::OnRegisterVoterAck(const SyncMessage& msg, std::int64_t now_ms) {
  if (mode_ == Mode::kRegistering && msg.request_id == register_id_) {
    register_acks_.insert(msg.sender);
    MaybeRegistered(now_ms);
  }
}

void Membership::Tick(std::int64_t now_ms) {
  if (vote_save_pending_) BecomeVoter(now_ms, vote_pending_background_pass_);
  if (!ctx_.peers.empty() && now_ms >= next_hello_ms_ &&
      (mode_ == Mode::kVoting || mode_ == Mode::kJoining || mode_ == Mode::kJoinPass)) {
    StartHelloRound(now_ms);
  }
  if (mode_ == Mode::kJoining) Decide(now_ms);
  if (mode_ == Mode::kRegistering) {
    SyncMessage m = ctx_.Msg(SyncKind::kRegisterVoter, register_id_);
    for (auto& [r, sent] : register_sent_ms_) {
      if (register_acks_.count(r) == 0 && now_ms - sent >= ctx_.options.request_timeout_ms) {
        ctx_.env->SendSync(r, m);
        sent = now_ms;
      }
    }
  }
}

std::string Membership::ModeString(std::int64_t now_ms) const {
  switch (mode_) {
    case Mode::kNew:
      return "starting";
    case Mode::kVoting:
      return "voting";  // a running pass shows in SyncStatus::resync
    case Mode::kRegistering:
      return "joining: registering as a voter (" + std::to_string(register_acks_.size()) + " of " +
             std::to_string(ctx_.options.Quorum() - 1) + " acknowledged)";
    case Mode::kJoining:
      if (listed_as_voter_) {
        return "joining: waiting for " + std::to_string(ctx_.options.RequiredSources()) +
               " voting peers (have " + std::to_string(FreshVotingPeers(now_ms).size()) + ")";
      }
      if (ctx_.identity.genesis) {
        return "joining (founding member): waiting for a majority to answer (" +
               std::to_string(FreshAnswers(now_ms)) + " of " + std::to_string(ctx_.peers.size()) +
               " peers, " + std::to_string(ctx_.options.Quorum() - 1) + " needed)";
      }
      return "joining: waiting for every peer to answer (" + std::to_string(FreshAnswers(now_ms)) +
             " of " + std::to_string(ctx_.peers.size()) +
             "; a new cluster can start with a majority: atomdiskd --bootstrap)";
    case Mode::kJoinPass:
      if (!resync_.active()) return "joining: saving IDENTITY before voting";
      return resync_.JoinStateLine();
  }
  return "";
}

std::string Membership::State(std::int64_t now_ms) const {
  std::string s = ModeString(now_ms);
  if (vote_save_pending_) s += " (cannot save IDENTITY, retrying)";
  return s;
}

void Membership::CheckInvariants() const {
  const Identity& identity = ctx_.identity;
  ATOMDISK_CHECK(!voting_ || identity.voting);
  ATOMDISK_CHECK(voting_ == (mode_ == Mode::kVoting));
  ATOMDISK_CHECK(mode_ != Mode::kJoinPass || !voting_);
  ATOMDISK_CHECK(!identity.voting || identity.HasVoter(ctx_.options.self) || mode_ == Mode::kNew);
  ATOMDISK_CHECK(std::is_sorted(identity.voters.begin(), identity.voters.end()));
  // The saved floor is in force (a node votes only with it applied).
  ATOMDISK_CHECK(applied_floor_ >= identity.write_ts_floor || mode_ == Mode::kNew);
  // The lease in force is the saved one (never ahead of what a restart would see).
  ATOMDISK_CHECK(applied_lease_ == identity.write_ts_lease || mode_ == Mode::kNew);
  // A pass runs exactly while joining if it is a join pass.
  ATOMDISK_CHECK(!resync_.active() || resync_.join() == (mode_ == Mode::kJoinPass));
}

}  // namespace atomdisk
