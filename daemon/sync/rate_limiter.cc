// RateLimiter (daemon/sync/rate_limiter.h).
#include "daemon/sync/rate_limiter.h"

#include <algorithm>

namespace atomdisk {

RateLimiter::RateLimiter(double rate_bytes_per_s, double fetch_bytes)
    : rate_bytes_per_s_(rate_bytes_per_s),
      capacity_(std::max(rate_bytes_per_s * 0.1, fetch_bytes)) {}

void RateLimiter::Reset(std::int64_t now_ms) {
  refill_ms_ = now_ms;
  tokens_ = capacity_;
}

void RateLimiter::Refill(std::int64_t now_ms) {
  if (rate_bytes_per_s_ <= 0) return;
  if (now_ms > refill_ms_) {
    tokens_ += rate_bytes_per_s_ * static_cast<double>(now_ms - refill_ms_) / 1000.0;
    tokens_ = std::min(tokens_, capacity_);
    refill_ms_ = now_ms;
  }
}

void RateLimiter::Charge(double bytes) {
  if (rate_bytes_per_s_ > 0) tokens_ -= bytes;
}

bool RateLimiter::TryTake(double bytes) {
  if (rate_bytes_per_s_ <= 0) return true;
  if (tokens_ < bytes) return false;
  tokens_ -= bytes;
  return true;
}

}  // namespace atomdisk
