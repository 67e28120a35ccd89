// SyncServer: answers peers' resync and scrub requests (Digest, Entries, Fetch) from this
// node's store, the data side of docs/RESYNC.md; Hello and RegisterVoter are membership's
// (membership.h). Internal to daemon/sync/ (see sync_context.h).
//
// Every request is checked against the device before anything is read: an empty or
// oversized range, one past the end of the device or one whose end overflows is not
// answered, counted in rejected_requests(), and noted once per peer (a peer must not flood
// the log). A request the store cannot serve (a failed scan) gets no reply either: the
// requester retries or drops this node as a source. Thread-compatible.
#pragma once

#include <cstdint>
#include <set>

#include "common/sync_wire.h"
#include "common/types.h"
#include "daemon/sync/bucket_digests.h"
#include "daemon/sync/sync_context.h"

namespace atomdisk {

class SyncServer {
 public:
  SyncServer(SyncContext& ctx, BucketDigests& digests) : ctx_(ctx), digests_(digests) {}

  // A kDigest, kEntries or kFetch request from a peer (the caller checked the sender is
  // one); replies through SyncEnv::SendSync, or not at all (see above).
  void Serve(const SyncMessage& msg);

  // Malformed requests seen so far.
  std::uint64_t rejected_requests() const { return rejected_requests_; }

 private:
  void Reject(const SyncMessage& msg);
  void ServeDigest(const SyncMessage& msg);
  void ServeEntries(const SyncMessage& msg);
  void ServeFetch(const SyncMessage& msg);

  SyncContext& ctx_;
  BucketDigests& digests_;
  std::uint64_t rejected_requests_ = 0;
  std::set<Rank> rejected_noted_;
};

}  // namespace atomdisk
