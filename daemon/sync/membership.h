// Membership: whether this node votes, and the tags its own writes may use (docs/RESYNC.md,
// "Membership" and "Tags after a disk replacement"; the rules are summed up in syncer.h).
// Internal to daemon/sync/ (see sync_context.h).
//
// It owns the mode (joining, registering, in a join pass, voting), the Hello rounds (asking
// every peer whether it lists this node as a voter, and answering peers' Hellos), voter
// registration (both sides: RegisterVoter to the peers, and storing a peer's registration
// durably before its Ack), the IDENTITY decisions at start and when voting begins, and the
// write ts floor and lease (SyncEnv::SetWriteTsFloor, SetWriteTsLease). A join pass is run by
// ResyncPass, which reports back through JoinHooks. Thread-compatible.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/sync_wire.h"
#include "common/types.h"
#include "daemon/sync/identity.h"
#include "daemon/sync/resync_pass.h"
#include "daemon/sync/sync_context.h"

namespace atomdisk {

class Membership : public JoinHooks {
 public:
  // What this node is doing about its own membership.
  enum class Mode {
    kNew,          // before Start()
    kJoining,      // polling peers (Hello) to decide between a join pass and registering
    kRegistering,  // never voted: waiting for Quorum()-1 RegisterVoterAcks
    kJoinPass,     // voted before and lost its disk: pulling before it votes
    kVoting,
  };

  // `loaded`: what IDENTITY holds (nullopt: no file); `store_empty`: whether the store holds
  // any written sector. `resync` runs the passes membership starts.
  Membership(SyncContext& ctx, ResyncPass& resync, std::optional<Identity> loaded,
             bool store_empty);

  // The first half of Syncer::Start: checks the loaded IDENTITY against this node, decides
  // the identity (with a new write ts lease above the earlier one), saves it if it changed,
  // and applies the write ts floor and lease. InvalidArgument if IDENTITY belongs to another
  // cluster or rank, IOError if it cannot be saved; nothing else happens then.
  Status AdoptIdentity();
  // The second half: votes at once (and starts a pass) or starts joining (see syncer.h).
  void Start(std::int64_t now_ms);

  // Hello and RegisterVoter from a peer (answered), and the replies to ours.
  void ServeHello(const SyncMessage& msg);
  void ServeRegisterVoter(const SyncMessage& msg);
  void OnHelloReply(const SyncMessage& msg, std::int64_t now_ms);
  void OnRegisterVoterAck(const SyncMessage& msg, std::int64_t now_ms);
  // Retries a failed voting save, sends Hello rounds, decides a join, re-sends registrations.
  void Tick(std::int64_t now_ms);
  // Syncer::RaiseWriteTsLease.
  void RaiseWriteTsLease(std::uint64_t ts);

  Mode mode() const { return mode_; }
  bool voting() const { return voting_; }
  // "voting", "joining: waiting for peers (1 of 2 answered)", ... for SyncStatus::state.
  std::string State(std::int64_t now_ms) const;
  void CheckInvariants() const;

  // JoinHooks.
  void OnJoinPassStart() override;
  void OnJoinPassDone(std::uint64_t max_ts_seen, std::int64_t now_ms) override;
  std::vector<Rank> FreshVotingPeers(std::int64_t now_ms) const override;

 private:
  // A peer's latest Hello reply.
  struct PeerHello {
    std::int64_t round_ms = 0;  // start of the round it answered
    bool voting = false;
    bool lists_self = false;
  };

  void SetVoting(bool v);
  static std::uint64_t LeaseAbove(std::uint64_t ts);
  void ApplyWriteTsFloor(std::uint64_t floor);
  std::uint64_t JoinFloor(std::uint64_t max_ts_seen);
  void EnterVoting(std::int64_t now_ms);
  std::int64_t HelloInterval() const;
  void StartHelloRound(std::int64_t now_ms);
  bool Fresh(const PeerHello& h, std::int64_t now_ms) const;
  std::size_t FreshAnswers(std::int64_t now_ms) const;
  void LearnVoters(const SyncMessage& msg);
  void Decide(std::int64_t now_ms);
  void StartRegistering(std::int64_t now_ms);
  void MaybeRegistered(std::int64_t now_ms);
  void BecomeVoter(std::int64_t now_ms, bool background_pass);
  std::string ModeString(std::int64_t now_ms) const;

  SyncContext& ctx_;
  ResyncPass& resync_;
  std::optional<Identity> loaded_;
  bool store_empty_;

  Mode mode_ = Mode::kNew;
  bool voting_ = false;  // last SetVoting
  bool vote_save_pending_ = false;
  bool vote_pending_background_pass_ = false;
  // Write ts floor computed when the join pass ended, saved by BecomeVoter (0: none).
  std::uint64_t join_floor_ = 0;
  std::uint64_t applied_floor_ = 0;  // last SetWriteTsFloor
  std::uint64_t applied_lease_ = 0;  // last SetWriteTsLease (saved in identity first)
  bool lease_save_failed_noted_ = false;
  bool learn_save_failed_noted_ = false;

  // Hello rounds.
  std::uint64_t hello_round_id_ = 0;
  std::map<std::uint64_t, std::int64_t> hello_rounds_;  // recent round id -> start ms
  std::int64_t next_hello_ms_ = 0;
  std::map<Rank, PeerHello> hellos_;
  std::set<Rank> wrong_cluster_noted_;
  bool listed_as_voter_ = false;  // some peer listed us: we voted before

  // Registration.
  std::uint64_t register_id_ = 0;
  std::map<Rank, std::int64_t> register_sent_ms_;
  std::set<Rank> register_acks_;
};

}  // namespace atomdisk
