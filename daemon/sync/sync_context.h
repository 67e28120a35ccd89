// SyncContext: what every part of the Syncer shares (internal to daemon/sync/; the public
// interface is syncer.h). The parts are
//   membership.h     Hello, voter registration, the write ts floor and lease
//   resync_pass.h    a pass pulling newer sectors from peers (rate_limiter.h bounds it)
//   sync_server.h    answering peers' Digest, Entries and Fetch requests
//   scrub.h          checking every stored sector and repairing bad ones from peers
//   bucket_digests.h the cached bucket digests the pass and the server compare
// and syncer.cc routes events between them. Each holds a reference to one SyncContext and to
// the few other parts it calls; none sees another's state.
//
// The context holds the options (normalised), the env, the peers, the device geometry, the
// identity as last saved, and the request id counter (one counter for every part: an id
// names one request of one part, so replies are routed by id alone).
//
// Thread-compatible, like the Syncer.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "common/sync_wire.h"
#include "common/types.h"
#include "daemon/sync/identity.h"
#include "daemon/sync/syncer.h"

namespace atomdisk {

inline std::uint64_t CeilDiv(std::uint64_t a, std::uint64_t b) {
  return a / b + (a % b != 0 ? 1 : 0);
}

// "1,2,3" for log lines.
inline std::string RankList(const std::vector<Rank>& ranks) {
  std::string s;
  for (Rank r : ranks) {
    if (!s.empty()) s += ",";
    s += std::to_string(r);
  }
  return s;
}

struct SyncContext {
  SyncContext(SyncerOptions o, SyncEnv* e) : options(std::move(o)), env(e) {
    for (Rank r : options.ranks) {
      if (r != options.self) peers.push_back(r);
    }
    std::sort(peers.begin(), peers.end());
    buckets = CeilDiv(options.sectors, kBucketSectors);
    windows = CeilDiv(buckets, kWindowBuckets);
    if (options.fetch_batch == 0) options.fetch_batch = 1;
    options.fetch_batch = std::min(options.fetch_batch, kMaxFetchSectors);
    if (options.fetch_window == 0) options.fetch_window = 1;
  }
  SyncContext(const SyncContext&) = delete;
  SyncContext& operator=(const SyncContext&) = delete;

  SyncerOptions options;
  SyncEnv* env;
  std::vector<Rank> peers;  // sorted, without self
  std::uint64_t buckets = 0, windows = 0;
  // What IDENTITY holds (as last saved by any part; Membership::AdoptIdentity sets it first).
  Identity identity;
  std::uint64_t next_id = 1;
  // Sectors with a slot that failed its checks, met by a scan of any part (a bucket digest,
  // mostly: the start-up resync pass digests every bucket, so it meets every write a power
  // cut tore). The scrub drains it each tick and repairs them (scrub.h). Bounded: beyond
  // kMaxFoundFailed, a scrub run finds the rest.
  static constexpr std::size_t kMaxFoundFailed = 4096;
  std::set<SectorIdx> found_failed;

  void FoundFailed(SectorIdx s) {
    if (options.bug_scan_finds_ignored) return;
    if (found_failed.size() < kMaxFoundFailed) found_failed.insert(s);
  }

  std::uint64_t NewId() { return next_id++; }

  SyncMessage Msg(SyncKind kind, std::uint64_t request_id) const {
    SyncMessage m;
    m.sender = options.self;
    m.kind = kind;
    m.request_id = request_id;
    return m;
  }

  bool IsPeer(Rank r) const { return std::binary_search(peers.begin(), peers.end(), r); }

  // Saves `next` through the env; on success it becomes `identity`. The save's error
  // otherwise (identity unchanged).
  Status SaveIdentity(const Identity& next) {
    Status s = env->SaveIdentity(next);
    if (s.ok()) identity = next;
    return s;
  }
};

}  // namespace atomdisk
