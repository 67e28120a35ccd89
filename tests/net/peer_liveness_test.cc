// Tests of PeerLiveness (daemon/net/peer_liveness.h): heartbeat schedule, round trips, and
// the lost/back log lines with their rate limit.
#include "daemon/net/peer_liveness.h"

#include <gtest/gtest.h>

namespace atomdisk {
namespace {

constexpr std::int64_t kMs = 1000;  // microseconds

TEST(PeerLiveness, PingsOnlyAPeerThatAnswersThemAndOnlyWhileConnected) {
  PeerLiveness l("peer 2", 1000);
  EXPECT_EQ(l.ping_interval_us(), 250 * kMs);
  EXPECT_FALSE(l.PingDue(0)) << "not connected";
  l.OnOpened(0);
  EXPECT_FALSE(l.PingDue(0)) << "an older peer closes the link on an unknown kind";
  l.SetPeerAnswersPings(true);
  auto first = l.PingDue(1 * kMs);
  ASSERT_TRUE(first) << "the first Ping goes at once after connecting, before it is up";
  ASSERT_TRUE(l.OnConnected(1 * kMs));
  EXPECT_FALSE(l.PingDue(200 * kMs));
  auto second = l.PingDue(251 * kMs);
  ASSERT_TRUE(second);
  EXPECT_NE(*first, *second);
  EXPECT_FALSE(l.PingDue(400 * kMs));
  EXPECT_TRUE(l.PingDue(501 * kMs));
  l.OnLost(600 * kMs, "closed by peer");
  EXPECT_FALSE(l.PingDue(900 * kMs));
  l.OnOpened(1000 * kMs);
  EXPECT_TRUE(l.PingDue(1000 * kMs)) << "at once on the new link";
  l.SetPeerAnswersPings(false);
  EXPECT_FALSE(l.PingDue(2000 * kMs)) << "the peer's HelloReply no longer advertises it";
}

TEST(PeerLiveness, RoundTripFromTheLatestPingOnly) {
  PeerLiveness l("peer 3", 1000);
  l.OnOpened(0);
  l.SetPeerAnswersPings(true);
  EXPECT_FALSE(l.rtt_us());
  auto a = l.PingDue(10 * kMs);
  ASSERT_TRUE(a);
  EXPECT_FALSE(l.OnPong(*a + 100, 11 * kMs)) << "foreign id";
  EXPECT_FALSE(l.OnPong(0, 11 * kMs));
  auto rtt = l.OnPong(*a, 10 * kMs + 420);
  ASSERT_TRUE(rtt);
  EXPECT_EQ(*rtt, 420);
  EXPECT_EQ(l.rtt_us(), 420);
  EXPECT_FALSE(l.OnPong(*a, 12 * kMs)) << "a duplicate Pong counts once";
  auto b = l.PingDue(260 * kMs);
  auto c = l.PingDue(510 * kMs);
  ASSERT_TRUE(b && c);
  EXPECT_FALSE(l.OnPong(*b, 511 * kMs)) << "a late Pong is no round trip";
  EXPECT_EQ(l.OnPong(*c, 512 * kMs), 2 * kMs);
}

TEST(PeerLiveness, LastHeard) {
  PeerLiveness l("peer 2", 1000);
  EXPECT_FALSE(l.heard_ago_us(5));
  l.OnHeard(100);
  EXPECT_EQ(l.heard_ago_us(350), 250);
}

TEST(PeerLiveness, LostAndBackAreLoggedOnceEachWithTheReason) {
  PeerLiveness l("peer 2 (h:1)", 1000);
  EXPECT_EQ(l.OnConnected(0).value_or(""), "peer 2 (h:1) connected");
  EXPECT_EQ(l.losses(), 0u);
  auto lost = l.OnLost(5'000 * kMs, "silent for 1003 ms");
  ASSERT_TRUE(lost);
  EXPECT_EQ(*lost, "peer 2 (h:1) lost: silent for 1003 ms; reconnecting");
  EXPECT_EQ(l.last_loss(), "silent for 1003 ms");
  // Failed dials while it stays down: nothing logged, the latest cause kept for status.
  for (int i = 0; i < 100; ++i) EXPECT_FALSE(l.OnDialFailed("dial timed out after 500 ms"));
  EXPECT_EQ(l.last_loss(), "dial timed out after 500 ms");
  auto back = l.OnConnected(25'000 * kMs);
  ASSERT_TRUE(back);
  EXPECT_EQ(*back, "peer 2 (h:1) back after 20000 ms down");
  EXPECT_EQ(l.losses(), 1u);
}

TEST(PeerLiveness, AFlappingLinkIsLoggedOncePerQuietPeriod) {
  PeerLiveness l("peer 2", 1000);
  l.OnConnected(0);
  std::int64_t t = 60'000 * kMs;
  ASSERT_TRUE(l.OnLost(t, "closed by peer"));
  ASSERT_TRUE(l.OnConnected(t + 100 * kMs));
  int logged = 0;
  for (int i = 0; i < 50; ++i) {  // 50 flaps in 5 s
    t += 100 * kMs;
    if (l.OnLost(t, "closed by peer")) ++logged;
    t += 1 * kMs;
    if (l.OnConnected(t)) ++logged;
  }
  EXPECT_EQ(logged, 0);
  EXPECT_EQ(l.losses(), 51u);
  t += PeerLiveness::kLogQuietUs;
  auto line = l.OnLost(t, "silent for 1000 ms");
  ASSERT_TRUE(line);
  EXPECT_NE(line->find("(50 losses in the last 10 s not logged)"), std::string::npos) << *line;
  EXPECT_TRUE(l.OnConnected(t + 1 * kMs)) << "its back line goes with it";
}

TEST(PeerLiveness, ADialThatNeverAnswersStopsPinging) {
  PeerLiveness l("peer 2", 1000);
  l.SetPeerAnswersPings(true);
  l.OnOpened(0);
  EXPECT_TRUE(l.PingDue(0));
  EXPECT_TRUE(l.OnDialFailed("silent for 1000 ms"));
  EXPECT_FALSE(l.PingDue(5000 * kMs));
  EXPECT_FALSE(l.connected());
}

TEST(PeerLiveness, ANeverReachedPeerIsLoggedOnce) {
  PeerLiveness l("peer 4", 1000);
  auto first = l.OnDialFailed("Connection refused");
  ASSERT_TRUE(first);
  EXPECT_EQ(*first, "peer 4 unreachable: Connection refused; retrying");
  EXPECT_FALSE(l.OnDialFailed("Connection refused"));
  EXPECT_EQ(l.OnConnected(1).value_or(""), "peer 4 connected");
}

}  // namespace
}  // namespace atomdisk
