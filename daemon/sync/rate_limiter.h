// RateLimiter: the token bucket that bounds a resync pass's pull rate
// (SyncerOptions::rate_bytes_per_s; resync_rate_mb in cluster.toml). Internal to daemon/sync/
// (see sync_context.h); the pass asks it before each Fetch.
//
// Tokens are bytes of sector data. The bucket refills at the rate, up to a capacity of a
// tenth of a second's worth, but never less than one full Fetch (else a low rate would never
// let one out); it starts full. A rate of 0 or less means unlimited: every TryTake succeeds
// and nothing is counted. Time comes only from the now_ms arguments. Thread-compatible.
#pragma once

#include <cstdint>

namespace atomdisk {

class RateLimiter {
 public:
  // `fetch_bytes`: the largest single request (fetch_batch sectors).
  RateLimiter(double rate_bytes_per_s, double fetch_bytes);

  // Fills the bucket and restarts its clock at now_ms.
  void Reset(std::int64_t now_ms);
  // Adds the tokens earned since the last refill (none if time did not move forward).
  void Refill(std::int64_t now_ms);
  // Takes `bytes` tokens if the bucket holds that many; false (nothing taken) otherwise.
  bool TryTake(double bytes);
  // Takes `bytes` tokens after the fact, for work whose cost is known only once done (the
  // bucket may go below zero: a debt the refills pay first). Nothing if unlimited.
  void Charge(double bytes);
  // Whether the bucket holds any tokens (always, if unlimited).
  bool Available() const { return unlimited() || tokens_ > 0; }

  bool unlimited() const { return rate_bytes_per_s_ <= 0; }
  double tokens() const { return tokens_; }
  double capacity() const { return capacity_; }

 private:
  double rate_bytes_per_s_;
  double capacity_;
  double tokens_ = 0;
  std::int64_t refill_ms_ = 0;
};

}  // namespace atomdisk
