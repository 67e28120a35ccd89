// Tests of the resync rate limit (daemon/sync/rate_limiter.cc) on its own; the pass's use of
// it is in resync_pass_test.cc (RateLimitBoundsBytesPulled).
#include "daemon/sync/rate_limiter.h"

#include <gtest/gtest.h>

#include <cstdint>

namespace atomdisk {
namespace {

constexpr double kFetch = 16.0 * 4096;  // one Fetch of 16 sectors

TEST(RateLimiterTest, UnlimitedTakesEverythingAndCountsNothing) {
  for (double rate : {0.0, -1.0}) {
    RateLimiter r(rate, kFetch);
    EXPECT_TRUE(r.unlimited());
    r.Reset(0);
    for (int i = 0; i < 1000; ++i) ASSERT_TRUE(r.TryTake(1e9));
    r.Refill(1'000'000);
    EXPECT_EQ(r.tokens(), r.capacity());  // untouched since Reset
  }
}

TEST(RateLimiterTest, CapacityIsATenthOfASecondButAtLeastOneFetch) {
  EXPECT_DOUBLE_EQ(RateLimiter(100e6, kFetch).capacity(), 10e6);
  EXPECT_EQ(RateLimiter(1000, kFetch).capacity(), kFetch);  // 100 B would never let one out
  RateLimiter r(1000, kFetch);
  EXPECT_EQ(r.tokens(), 0);  // empty until Reset
  r.Reset(5);
  EXPECT_EQ(r.tokens(), kFetch);
  EXPECT_TRUE(r.TryTake(kFetch));
}

TEST(RateLimiterTest, TakesOnlyWhatItHolds) {
  RateLimiter r(1e6, kFetch);  // capacity 100 kB
  r.Reset(0);
  EXPECT_TRUE(r.TryTake(60e3));
  EXPECT_DOUBLE_EQ(r.tokens(), 40e3);
  EXPECT_FALSE(r.TryTake(40e3 + 1));
  EXPECT_DOUBLE_EQ(r.tokens(), 40e3);  // a refused take takes nothing
  EXPECT_TRUE(r.TryTake(40e3));
  EXPECT_EQ(r.tokens(), 0);
  EXPECT_FALSE(r.TryTake(1));
}

TEST(RateLimiterTest, RefillsAtTheRateUpToCapacity) {
  RateLimiter r(1e6, kFetch);  // 1 MB/s: 1000 bytes per ms, capacity 100 kB
  r.Reset(1000);
  ASSERT_TRUE(r.TryTake(100e3));
  r.Refill(1010);
  EXPECT_DOUBLE_EQ(r.tokens(), 10e3);
  r.Refill(1010);  // no time passed
  EXPECT_DOUBLE_EQ(r.tokens(), 10e3);
  r.Refill(900);  // a clock that goes back earns nothing and does not move the start
  EXPECT_DOUBLE_EQ(r.tokens(), 10e3);
  r.Refill(1020);
  EXPECT_DOUBLE_EQ(r.tokens(), 20e3);
  r.Refill(10'000'000);  // a long idle time fills it, no more
  EXPECT_EQ(r.tokens(), r.capacity());
}

// Whatever the pattern of takes, what gets out in T ms is at most capacity + rate * T, and a
// taker that asks whenever it can is not starved.
TEST(RateLimiterTest, LongRunBoundAndNoStarvation) {
  const double rate = 2e6;  // 2 MB/s
  RateLimiter r(rate, kFetch);
  r.Reset(0);
  double taken = 0;
  for (std::int64_t now = 0; now <= 10'000; now += 3) {
    r.Refill(now);
    while (r.TryTake(kFetch)) taken += kFetch;
    ASSERT_LE(taken, r.capacity() + rate * static_cast<double>(now) / 1000.0) << now;
  }
  EXPECT_GE(taken, rate * 10 - kFetch);
}

}  // namespace
}  // namespace atomdisk
