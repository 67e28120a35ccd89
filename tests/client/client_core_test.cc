// Unit tests of the client core (client/core/client_core.h) over a scripted world: no socket,
// no thread, a clock that moves only when the test moves it. What the real-process tests reach
// by timing (client_test.cc) is stepped through here exactly: which node gets a frame, when a
// refused operation goes out again, what the backoff is, what a write with an unknown outcome
// reports.
#include "client/core/client_core.h"

#include <gtest/gtest.h>

#include <deque>
#include <optional>
#include <set>

#include "common/hmac.h"
#include "common/wire.h"

namespace atomdisk::client {
namespace {

using std::chrono::milliseconds;

constexpr int kNodes = 3;

std::vector<std::uint8_t> Key() { return std::vector<std::uint8_t>(kClientKeySize, 0x33); }

SectorPtr Filled(std::uint8_t b) {
  auto d = std::make_shared<SectorData>();
  d->fill(b);
  return d;
}

// The world: records what the core sends and closes, runs posted callbacks on demand.
class World final : public ClientCoreEnv {
 public:
  Clock::time_point Now() override { return now; }
  void StartConnecting() override { ++start_connecting; }
  void SendFrame(int node, std::shared_ptr<const Frame> frame) override {
    auto body = std::span<const std::uint8_t>(*frame).subspan(kFrameLengthSize);
    // Nodes connected as TLS get zero tags (docs/TLS.md), the others the client key's HMAC.
    auto payload = VerifyFrameBody(body, tls_nodes.count(node) ? Hmac::ZeroTag() : mac);
    ASSERT_TRUE(payload.ok());
    auto cmd = DecodeClientCommand(*payload);
    ASSERT_TRUE(cmd.ok()) << cmd.status().ToString();
    sent.push_back({node, *cmd});
  }
  void CloseConnection(int node) override { closed.push_back(node); }
  void Post(std::function<void()> fn) override { posted.push_back(std::move(fn)); }

  void RunPosted() {
    while (!posted.empty()) {
      auto fn = std::move(posted.front());
      posted.pop_front();
      fn();
    }
  }
  // The next frame sent; fails the test if there is none.
  std::pair<int, ClientCommand> Next() {
    EXPECT_FALSE(sent.empty());
    if (sent.empty()) return {-1, {}};
    auto f = sent.front();
    sent.pop_front();
    return f;
  }

  Clock::time_point now{std::chrono::seconds(1000)};
  int start_connecting = 0;
  std::deque<std::pair<int, ClientCommand>> sent;
  std::vector<int> closed;
  std::deque<std::function<void()>> posted;
  Hmac mac{Key()};
  std::set<int> tls_nodes;
};

ClientOptions Options() {
  ClientOptions o;
  for (int i = 1; i <= kNodes; ++i) {
    o.nodes.push_back(
        {"n" + std::to_string(i), static_cast<std::uint16_t>(7000 + i), static_cast<Rank>(i)});
  }
  o.client_key = Key();
  o.sectors = 1024;
  o.op_timeout = milliseconds(5000);
  o.attempt_timeout = milliseconds(1500);
  o.reconnect_backoff_min = milliseconds(50);
  o.reconnect_backoff_max = milliseconds(2000);
  return o;
}

class ClientCoreTest : public ::testing::Test {
 protected:
  // Hands node `node` a response frame, signed as a node signs it.
  void Answer(int node, const ClientResponse& resp) { AnswerWith(node, resp, world.mac); }
  // The same, sealed with `mac` (Hmac::ZeroTag() as inside TLS).
  void AnswerWith(int node, const ClientResponse& resp, Hmac& mac) {
    Frame f = EncodeFrame(resp, mac);
    core.OnFrameBody(node, std::span<const std::uint8_t>(f).subspan(kFrameLengthSize));
  }
  // The answer to a feature probe: this node takes extents.
  static ClientResponse TakesExtents(const ClientCommand& probe) {
    ClientResponse r;
    r.request_id = probe.request_id;
    r.op = ClientOp::kInfo;
    r.info = R"({"features":["extents"]})";
    return r;
  }
  // Connects `node` and answers its feature probe: it takes extents.
  void ConnectWithExtents(int node) {
    core.OnConnected(node);
    auto [to, probe] = world.Next();
    ASSERT_EQ(to, node);
    ASSERT_EQ(probe.op, ClientOp::kInfo);
    ClientResponse r;
    r.request_id = probe.request_id;
    r.op = ClientOp::kInfo;
    r.info = R"({"features":["extents"]})";
    Answer(node, r);
    world.RunPosted();
  }
  // Submits a write of one sector; its result lands in `result`.
  void SubmitWrite(SectorIdx sector, bool retry_unknown) {
    OpRequest req;
    req.kind = ClientOp::kWrite;
    req.sector = sector;
    req.data = Filled(0x7E);
    req.retry_unknown_write = retry_unknown;
    req.submitted = world.now;
    req.done = [this](OpResult r) { result = std::move(r); };
    core.Submit(std::move(req));
  }
  ClientResponse NotDone(const ClientCommand& cmd) {
    ClientResponse r;
    r.request_id = cmd.request_id;
    r.op = cmd.op;
    r.outcomes.assign(cmd.count, ExtentOutcome::kNotDone);
    return r;
  }

  World world;
  ClientCore core{Options(), world, /*seed=*/1};
  std::optional<OpResult> result;
};

TEST_F(ClientCoreTest, AnOperationWaitsForAConnectionThenGoesAsAnExtentOfOne) {
  SubmitWrite(5, true);
  EXPECT_EQ(world.start_connecting, 1);
  EXPECT_TRUE(world.sent.empty());  // nothing connected yet: parked
  ConnectWithExtents(1);
  auto [to, cmd] = world.Next();
  EXPECT_EQ(to, 1);
  EXPECT_EQ(cmd.op, ClientOp::kWriteExtent);
  EXPECT_EQ(cmd.sector, 5u);
  ASSERT_EQ(cmd.count, 1u);
  EXPECT_EQ((*cmd.sectors[0])[0], 0x7E);
  ClientResponse r;
  r.request_id = cmd.request_id;
  r.op = cmd.op;
  r.outcomes = {ExtentOutcome::kDone};
  Answer(1, r);
  EXPECT_FALSE(result);  // callbacks run posted, never inside the core's call
  world.RunPosted();
  ASSERT_TRUE(result);
  EXPECT_TRUE(result->status.ok());
  EXPECT_EQ(result->answered_by, 2u);
  EXPECT_EQ(core.Stats().ops_ok, 1u);
}

TEST_F(ClientCoreTest, ARefusedOperationMovesOnAtOnceAndWaitsAfterARoundOfRefusals) {
  for (int n = 0; n < kNodes; ++n) ConnectWithExtents(n);
  SubmitWrite(9, false);
  // Each node refuses in turn; each refusal sends it to the next node at once.
  std::vector<int> order;
  for (int i = 0; i < kNodes; ++i) {
    auto [to, cmd] = world.Next();
    order.push_back(to);
    Answer(to, NotDone(cmd));
  }
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2}));
  // Every node refused: the next round waits 20 ms.
  EXPECT_TRUE(world.sent.empty());
  world.now += milliseconds(10);
  core.Tick();
  EXPECT_TRUE(world.sent.empty());
  world.now += milliseconds(10);
  core.Tick();
  ASSERT_EQ(world.sent.size(), 1u);
  // The second round: refused by every node again, then a wait of 40 ms.
  while (!world.sent.empty()) {
    auto [to, cmd] = world.Next();
    Answer(to, NotDone(cmd));
  }
  world.now += milliseconds(30);
  core.Tick();
  EXPECT_TRUE(world.sent.empty());
  world.RunPosted();
  EXPECT_FALSE(result);  // still inside its 5 s
  // At the deadline: "no quorum", and the write certainly did not take effect.
  world.now += milliseconds(5000);
  core.Tick();
  world.RunPosted();
  ASSERT_TRUE(result);
  EXPECT_EQ(result->status.code(), StatusCode::kTimeout);
  EXPECT_NE(result->status.message().find("no quorum"), std::string::npos)
      << result->status.ToString();
  EXPECT_FALSE(result->maybe_applied);
}

TEST_F(ClientCoreTest, AWriteThatMustNotBeRetriedEndsUnknownWhenItsConnectionDrops) {
  ConnectWithExtents(0);
  ConnectWithExtents(1);
  SubmitWrite(3, /*retry_unknown=*/false);
  auto [to, cmd] = world.Next();
  EXPECT_EQ(to, 0);
  core.OnConnectionLost(0, "connection reset by the node");
  world.RunPosted();
  ASSERT_TRUE(result);
  EXPECT_EQ(result->status.code(), StatusCode::kUnavailable);
  EXPECT_TRUE(result->maybe_applied);
  EXPECT_TRUE(world.sent.empty());  // not retried on node 1
  EXPECT_EQ(core.ReachableNodes(), 1u);
}

TEST_F(ClientCoreTest, AWriteThatMayBeRetriedGoesToTheNextNodeWhenItsConnectionDrops) {
  ConnectWithExtents(0);
  ConnectWithExtents(1);
  SubmitWrite(3, /*retry_unknown=*/true);
  auto first = world.Next();
  EXPECT_EQ(first.first, 0);
  core.OnConnectionLost(0, "connection reset by the node");
  auto [to, cmd] = world.Next();
  EXPECT_EQ(to, 1);
  EXPECT_EQ(cmd.request_id, first.second.request_id);  // the same frame again
  EXPECT_EQ(core.Stats().retries, 1u);
}

TEST_F(ClientCoreTest, ASilentNodeIsLeftAfterTheAttemptTimeoutAndItsConnectionClosed) {
  ConnectWithExtents(0);
  ConnectWithExtents(1);
  SubmitWrite(3, /*retry_unknown=*/true);
  EXPECT_EQ(world.Next().first, 0);
  world.now += milliseconds(1500);
  core.Tick();
  // Retried on node 1, and node 0's connection, silent with a request out, is closed.
  EXPECT_EQ(world.Next().first, 1);
  EXPECT_EQ(world.closed, (std::vector<int>{0}));
}

TEST_F(ClientCoreTest, ABadTagClosesTheConnection) {
  ConnectWithExtents(0);
  SubmitWrite(3, true);
  auto [to, cmd] = world.Next();
  ClientResponse r;
  r.request_id = cmd.request_id;
  r.op = cmd.op;
  r.outcomes = {ExtentOutcome::kDone};
  Hmac wrong(std::vector<std::uint8_t>(kClientKeySize, 0x44));
  Frame f = EncodeFrame(r, wrong);
  core.OnFrameBody(to, std::span<const std::uint8_t>(f).subspan(kFrameLengthSize));
  EXPECT_EQ(world.closed, (std::vector<int>{0}));
  EXPECT_EQ(core.Stats().bad_frames, 1u);
  world.RunPosted();
  EXPECT_FALSE(result);  // waits for another connection
}

TEST_F(ClientCoreTest, AProbeAnsweredByAClosedConnectionMeansNoExtents) {
  core.OnConnected(0);
  EXPECT_EQ(world.Next().second.op, ClientOp::kInfo);
  core.OnConnectionLost(0, "the node closed the connection");  // an atdd node's answer
  world.RunPosted();
  core.OnConnected(0);  // no new probe: the node is known to take no extents
  SubmitWrite(3, true);
  auto [to, cmd] = world.Next();
  EXPECT_EQ(to, 0);
  EXPECT_EQ(cmd.op, ClientOp::kWrite);
}

// A probe that went unanswered (the node restarted, or was slow just then) does not keep the
// client off extents for its life: a connection made after the back-off (30 s, then twice as
// long each time it goes unanswered) probes again, and an answer with extents brings them back.
TEST_F(ClientCoreTest, AnUnansweredProbeIsAskedAgainAfterABackoff) {
  core.OnConnected(0);
  EXPECT_EQ(world.Next().second.op, ClientOp::kInfo);
  core.OnConnectionLost(0, "connection reset");
  world.RunPosted();
  world.now += milliseconds(10'000);
  core.OnConnected(0);  // within the back-off: single-sector commands, no probe
  EXPECT_TRUE(world.sent.empty());
  core.OnConnectionLost(0, "connection reset");
  world.now += milliseconds(25'000);  // 35 s after the probe: past the first back-off
  core.OnConnected(0);
  auto [to, probe] = world.Next();
  EXPECT_EQ(probe.op, ClientOp::kInfo);
  // Unanswered again (timed out, the connection kept): 60 s this time.
  world.now += milliseconds(1500);
  core.Tick();
  world.RunPosted();
  core.OnConnectionLost(0, "connection reset");
  world.now += milliseconds(40'000);
  core.OnConnected(0);
  EXPECT_TRUE(world.sent.empty());
  core.OnConnectionLost(0, "connection reset");
  world.now += milliseconds(25'000);
  ConnectWithExtents(0);  // asked again, and answered: extents
  SubmitWrite(3, true);
  auto [to_w, cmd] = world.Next();
  EXPECT_EQ(to_w, 0);
  EXPECT_EQ(cmd.op, ClientOp::kWriteExtent);
}

TEST_F(ClientCoreTest, TheBackoffGrowsOnFailedDialsAndResetsAfterALongConnection) {
  // +-25% jitter around 50, 100, 200 ms.
  auto d1 = core.OnDialFailed(0, "connection refused");
  auto d2 = core.OnDialFailed(0, "connection refused");
  auto d3 = core.OnDialFailed(0, "connection refused");
  EXPECT_GE(d1.count(), 37);
  EXPECT_LE(d1.count(), 63);
  EXPECT_GE(d2.count(), 75);
  EXPECT_LE(d2.count(), 125);
  EXPECT_GE(d3.count(), 150);
  EXPECT_LE(d3.count(), 250);
  // A connection that lasted a whole attempt timeout was a working session: the next dial
  // comes after the shortest backoff.
  core.OnConnected(0);
  world.now += milliseconds(1500);
  core.OnConnectionLost(0, "");
  auto d = core.NextDialDelay(0);
  EXPECT_LE(d.count(), 63);
}

TEST_F(ClientCoreTest, AfterShutdownEveryOperationFailsAndNewOnesFailAtOnce) {
  ConnectWithExtents(0);
  SubmitWrite(3, true);
  core.Shutdown();
  world.RunPosted();
  ASSERT_TRUE(result);
  EXPECT_EQ(result->status.code(), StatusCode::kUnavailable);
  EXPECT_EQ(world.closed, (std::vector<int>{0}));
  result.reset();
  SubmitWrite(4, true);
  world.RunPosted();
  ASSERT_TRUE(result);
  EXPECT_EQ(result->status.message(), "client closed");
}

// Request ids start at a random point per client (FirstRequestId of a fresh 64-bit seed), so a
// response recorded from one session and fed to another by someone on the network path matches
// none of its requests and is ignored: it cannot answer a read with another sector's (or an
// older) data. Before, every client process started at id 1 (issue 17).
TEST_F(ClientCoreTest, AResponseRecordedFromAnotherSessionIsNotTaken) {
  EXPECT_NE(FirstRequestId(1), FirstRequestId(2));
  EXPECT_LT(FirstRequestId(~std::uint64_t{0}), std::uint64_t{1} << 63);
  EXPECT_NE(FirstRequestId(0), 0u);

  // Session A writes sector 3; its answer is recorded.
  ConnectWithExtents(0);
  SubmitWrite(3, true);
  auto [to_a, cmd_a] = world.Next();
  ClientResponse recorded;
  recorded.request_id = cmd_a.request_id;
  recorded.op = cmd_a.op;
  recorded.outcomes = {ExtentOutcome::kDone};
  Answer(to_a, recorded);
  world.RunPosted();
  ASSERT_TRUE(result && result->status.ok());

  // Session B, a new client process, writes sector 3 too. The recording is replayed to it.
  World world_b;
  ClientCore core_b{Options(), world_b, /*seed=*/2};
  std::optional<OpResult> result_b;
  auto answer_b = [&](int node, const ClientResponse& resp) {
    Frame f = EncodeFrame(resp, world_b.mac);
    core_b.OnFrameBody(node, std::span<const std::uint8_t>(f).subspan(kFrameLengthSize));
  };
  core_b.OnConnected(0);
  auto [to_probe, probe] = world_b.Next();
  ClientResponse features;
  features.request_id = probe.request_id;
  features.op = ClientOp::kInfo;
  features.info = R"({"features":["extents"]})";
  answer_b(to_probe, features);
  world_b.RunPosted();
  OpRequest req;
  req.kind = ClientOp::kWrite;
  req.sector = 3;
  req.data = Filled(0x11);
  req.retry_unknown_write = true;
  req.submitted = world_b.now;
  req.done = [&](OpResult r) { result_b = std::move(r); };
  core_b.Submit(std::move(req));
  auto [to_b, cmd_b] = world_b.Next();
  EXPECT_NE(cmd_b.request_id, cmd_a.request_id);
  answer_b(to_b, recorded);
  world_b.RunPosted();
  EXPECT_FALSE(result_b) << "a response recorded from another session completed the write";
  EXPECT_TRUE(world_b.closed.empty());  // ignored as a late answer, the connection kept

  // The node's own answer completes it.
  ClientResponse real;
  real.request_id = cmd_b.request_id;
  real.op = cmd_b.op;
  real.outcomes = {ExtentOutcome::kDone};
  answer_b(to_b, real);
  world_b.RunPosted();
  ASSERT_TRUE(result_b);
  EXPECT_TRUE(result_b->status.ok());
}

}  // namespace
}  // namespace atomdisk::client

namespace atomdisk::client {
namespace {

// Inside TLS the frames carry zero tags both ways (docs/TLS.md, "No HMAC inside TLS"); on a
// connection in clear a zero tag is a bad tag as ever, so no recording or proxy can strip
// the HMAC from a plaintext session.
TEST_F(ClientCoreTest, FramesInsideTlsCarryZeroTagsAndOnlyThere) {
  world.tls_nodes.insert(0);
  core.OnConnected(0, /*tls=*/true);
  auto [to, probe] = world.Next();  // the SendFrame above checked its zero tag
  ASSERT_EQ(to, 0);
  AnswerWith(0, TakesExtents(probe), Hmac::ZeroTag());
  world.RunPosted();
  SubmitWrite(5, false);
  world.RunPosted();
  auto [wto, write] = world.Next();
  ASSERT_EQ(wto, 0);
  ClientResponse ok;
  ok.request_id = write.request_id;
  ok.op = write.op;
  ok.outcomes.assign(write.count, ExtentOutcome::kDone);
  AnswerWith(0, ok, Hmac::ZeroTag());
  world.RunPosted();
  ASSERT_TRUE(result.has_value());
  EXPECT_TRUE(result->status.ok()) << result->status.ToString();
  EXPECT_EQ(core.Stats().bad_frames, 0u);

  // Node 1 in clear: a zero-tagged answer is refused like any bad tag.
  result.reset();
  core.OnConnected(1, /*tls=*/false);
  auto [to1, probe1] = world.Next();
  ASSERT_EQ(to1, 1);
  AnswerWith(1, TakesExtents(probe1), Hmac::ZeroTag());
  world.RunPosted();
  EXPECT_EQ(core.Stats().bad_frames, 1u);
}

}  // namespace
}  // namespace atomdisk::client
