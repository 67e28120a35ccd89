// Syncer: membership, resync and scrub as a pure state machine (daemon/sync/syncer.h,
// docs/RESYNC.md). This file only wires the parts together and routes events to them:
//   membership.h     Hello, voter registration, the write ts floor and lease
//   resync_pass.h    passes pulling newer sectors from peers (rate_limiter.h bounds them)
//   sync_server.h    answering peers' Digest, Entries and Fetch requests
//   scrub.h          checking every stored sector, repairing bad ones from peers
//   bucket_digests.h the cached bucket digests, shared by the pass and the server
// over one SyncContext (sync_context.h). Everything runs on the caller's thread, sees time
// only through the now_ms arguments and iterates only ordered containers, so the simulator
// replays a run byte for byte.
#include "daemon/sync/syncer.h"

#include <algorithm>
#include <utility>

#include "common/request_id.h"
#include "daemon/sync/bucket_digests.h"
#include "daemon/sync/membership.h"
#include "daemon/sync/resync_pass.h"
#include "daemon/sync/scrub.h"
#include "daemon/sync/sync_context.h"
#include "daemon/sync/sync_server.h"

namespace atomdisk {

struct Syncer::Impl {
  Impl(SyncerOptions o, std::optional<Identity> id, bool empty, SyncEnv* e)
      : ctx(std::move(o), e),
        digests(ctx),
        server(ctx, digests),
        scrub(ctx, digests),
        resync(ctx, digests, membership),
        membership(ctx, resync, std::move(id), empty) {}
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  // The parts hold references to each other: an Impl never moves (Syncer moves its pointer).
  SyncContext ctx;
  BucketDigests digests;
  SyncServer server;
  Scrub scrub;
  ResyncPass resync;  // holds `membership` (declared below) as its JoinHooks, unused until Start
  Membership membership;

  Status Start(std::int64_t now_ms) {
    Status s = membership.AdoptIdentity();
    if (!s.ok()) return s;
    // Request ids count up from a random point (common/request_id.h): a reply that an earlier
    // run of this node asked for, still in flight or recorded and replayed by someone on the
    // network path, does not match a request of this run. (From the start time, as before,
    // when no seed is given: unit tests. The steady clock restarts at a reboot, so the start
    // time alone let a reply recorded before a reboot match.)
    ctx.next_id = ctx.options.id_seed != 0
                      ? FirstRequestId(ctx.options.id_seed)
                      : (static_cast<std::uint64_t>(std::max<std::int64_t>(now_ms, 0)) << 20) + 1;
    resync.Begin(now_ms);
    scrub.Schedule(now_ms);
    membership.Start(now_ms);
    return Status::Ok();
  }

  void OnMessage(const SyncMessage& msg, std::int64_t now_ms) {
    if (membership.mode() == Membership::Mode::kNew || msg.sender == ctx.options.self ||
        !ctx.IsPeer(msg.sender)) {
      return;
    }
    switch (msg.kind) {
      case SyncKind::kHello:
        membership.ServeHello(msg);
        return;
      case SyncKind::kRegisterVoter:
        membership.ServeRegisterVoter(msg);
        return;
      case SyncKind::kDigest:
      case SyncKind::kEntries:
      case SyncKind::kFetch:
        server.Serve(msg, now_ms);
        return;
      case SyncKind::kHelloReply:
        membership.OnHelloReply(msg, now_ms);
        return;
      case SyncKind::kRegisterVoterAck:
        membership.OnRegisterVoterAck(msg, now_ms);
        return;
      default:
        break;
    }
    // A reply to a request of the pass or of the scrub (ids are unique across both); a
    // stale or foreign one is neither's.
    if (resync.OnReply(msg, now_ms)) return;
    (void)scrub.OnReply(msg, now_ms);
  }

  void OnAbsorbed(std::uint64_t token, const Status& status, std::int64_t now_ms) {
    if (resync.OnAbsorbed(token, status, now_ms)) return;
    (void)scrub.OnAbsorbed(token, status, now_ms);
  }

  void Tick(std::int64_t now_ms) {
    if (membership.mode() == Membership::Mode::kNew) return;
    membership.Tick(now_ms);
    resync.Tick(now_ms, membership.mode() == Membership::Mode::kVoting);
    scrub.Tick(now_ms);
    server.Tick(now_ms);
  }

  Status StartResync(std::int64_t now_ms) {
    if (membership.mode() != Membership::Mode::kVoting) {
      return Status::Busy("this node is joining; it runs its own pass");
    }
    return resync.StartNow(now_ms);
  }

  SyncStatus GetStatus(std::int64_t now_ms) const {
    SyncStatus st;
    st.voting = membership.voting();
    st.state = membership.State(now_ms);
    resync.FillStatus(st.resync, now_ms);
    scrub.FillStatus(st.scrub);
    server.FillStatus(st.serve);
    return st;
  }

  void CheckInvariants() const {
    digests.CheckInvariants();
    membership.CheckInvariants();
    resync.CheckInvariants();
    scrub.CheckInvariants();
    server.CheckInvariants();
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
void Syncer::OnLocalWrite(SectorIdx sector) { impl_->digests.Invalidate(sector); }
void Syncer::RaiseWriteTsLease(std::uint64_t ts) { impl_->membership.RaiseWriteTsLease(ts); }
void Syncer::Tick(std::int64_t now_ms) { impl_->Tick(now_ms); }
Status Syncer::StartScrub(std::int64_t now_ms) { return impl_->scrub.Start(now_ms); }

void Syncer::OnUnreadable(SectorIdx sector, std::int64_t now_ms) {
  impl_->scrub.RepairNow(sector, now_ms);
}
Status Syncer::StartResync(std::int64_t now_ms) { return impl_->StartResync(now_ms); }
bool Syncer::voting() const { return impl_->membership.voting(); }
const Identity& Syncer::identity() const { return impl_->ctx.identity; }
SyncStatus Syncer::GetStatus(std::int64_t now_ms) const { return impl_->GetStatus(now_ms); }
void Syncer::CheckInvariants() const { impl_->CheckInvariants(); }

}  // namespace atomdisk
