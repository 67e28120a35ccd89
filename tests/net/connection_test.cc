// Tests of Connection (daemon/net/connection.h) over a real loopback TCP pair: the silence
// timeout of a peer link, that it does not run while reading waits for our own work, and that
// the read buffer grows for the largest frame and refuses one byte more.
#include "daemon/net/connection.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <boost/asio.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

namespace atomdisk {
namespace {

namespace asio = boost::asio;
using asio::ip::tcp;
using std::chrono::milliseconds;

// Starts an operation for each frame and keeps it open, so that the connection saturates.
class HoldingSink : public FrameSink {
 public:
  void OnFrame(Connection& conn, std::span<const std::uint8_t>) override {
    ++frames;
    conn.OpStarted();
  }
  int frames = 0;
};

// A frame of the smallest accepted length: Connection parses lengths, not contents.
std::vector<std::uint8_t> MinimalFrame() {
  std::vector<std::uint8_t> f(kFrameLengthSize + kMinFrameBody, 0);
  for (std::size_t i = 0; i < kFrameLengthSize; ++i) {
    f[i] = static_cast<std::uint8_t>(kMinFrameBody >> (8 * (kFrameLengthSize - 1 - i)));
  }
  return f;
}

struct LoopbackPair {
  asio::io_context io;
  tcp::socket ours{io};
  tcp::socket theirs{io};
  LoopbackPair() {
    tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    theirs.connect(acceptor.local_endpoint());
    ours = acceptor.accept();
  }
  void RunFor(milliseconds d) {
    io.restart();
    io.run_for(d);
  }
};

TEST(ConnectionTest, ASilentPeerIsClosedAfterTheSilenceTimeout) {
  LoopbackPair p;
  HoldingSink sink;
  Connection::Options o;
  o.silence_timeout = milliseconds(100);
  o.log_close = false;
  auto conn = std::make_shared<Connection>(std::move(p.ours), &sink, "peer", o);
  conn->Start();
  p.RunFor(milliseconds(500));
  EXPECT_TRUE(conn->closed());
  EXPECT_NE(conn->close_reason().find("silent for"), std::string::npos) << conn->close_reason();
}

TEST(ConnectionTest, SilenceWhileWeDoNotReadIsOursAndDoesNotCloseTheLink) {
  LoopbackPair p;
  HoldingSink sink;
  Connection::Options o;
  o.silence_timeout = milliseconds(100);
  o.max_inflight = 2;
  o.log_close = false;
  auto conn = std::make_shared<Connection>(std::move(p.ours), &sink, "peer", o);
  conn->Start();
  // Two frames open two operations: reading pauses. The peer then says nothing more.
  std::vector<std::uint8_t> two = MinimalFrame();
  std::vector<std::uint8_t> second = MinimalFrame();
  two.insert(two.end(), second.begin(), second.end());
  asio::write(p.theirs, asio::buffer(two));
  p.RunFor(milliseconds(500));
  EXPECT_EQ(sink.frames, 2);
  EXPECT_FALSE(conn->closed()) << conn->close_reason();
  // Our work is done: reading resumes, and the silence timeout runs again from now.
  conn->OpFinished();
  conn->OpFinished();
  p.RunFor(milliseconds(50));
  EXPECT_FALSE(conn->closed()) << "the silence counts from when reading resumed";
  p.RunFor(milliseconds(500));
  EXPECT_TRUE(conn->closed());
  EXPECT_NE(conn->close_reason().find("silent for"), std::string::npos) << conn->close_reason();
}

// Records each frame's size and first payload byte.
class RecordingSink : public FrameSink {
 public:
  void OnFrame(Connection&, std::span<const std::uint8_t> body) override {
    sizes.push_back(body.size());
    firsts.push_back(body.empty() ? 0 : body[0]);
  }
  std::vector<std::size_t> sizes;
  std::vector<std::uint8_t> firsts;
};

std::vector<std::uint8_t> FrameOf(std::uint64_t body, std::uint8_t fill) {
  std::vector<std::uint8_t> f(kFrameLengthSize + body, fill);
  for (std::size_t i = 0; i < kFrameLengthSize; ++i) {
    f[i] = static_cast<std::uint8_t>(body >> (8 * (kFrameLengthSize - 1 - i)));
  }
  return f;
}

// The read buffer starts small and grows for a frame as large as the connection accepts
// (an extent command), then small frames go on; a frame one byte over the bound closes.
TEST(ConnectionTest, TheLargestFrameArrivesWholeBetweenSmallOnes) {
  LoopbackPair p;
  RecordingSink sink;
  Connection::Options o;
  o.log_close = false;
  auto conn = std::make_shared<Connection>(std::move(p.ours), &sink, "client", o);
  conn->Start();
  std::vector<std::uint8_t> bytes = FrameOf(kMinFrameBody, 1);
  for (std::uint8_t k = 2; k < 5; ++k) {
    std::vector<std::uint8_t> f = FrameOf(k == 3 ? kMaxFrameBody : kMinFrameBody, k);
    bytes.insert(bytes.end(), f.begin(), f.end());
  }
  std::thread writer([&] {
    // In pieces, so that the big frame straddles many reads.
    for (std::size_t off = 0; off < bytes.size(); off += 100000) {
      asio::write(p.theirs, asio::buffer(bytes.data() + off,
                                         std::min<std::size_t>(100000, bytes.size() - off)));
    }
  });
  for (int i = 0; i < 100 && sink.sizes.size() < 4; ++i) p.RunFor(milliseconds(20));
  writer.join();
  ASSERT_EQ(sink.sizes.size(), 4u);
  EXPECT_EQ(sink.sizes[2], kMaxFrameBody);
  EXPECT_EQ(sink.firsts, (std::vector<std::uint8_t>{1, 2, 3, 4}));
  EXPECT_FALSE(conn->closed());
  std::vector<std::uint8_t> over = FrameOf(kMaxFrameBody + 1, 9);
  asio::write(p.theirs, asio::buffer(over.data(), kFrameLengthSize));
  p.RunFor(milliseconds(200));
  EXPECT_TRUE(conn->closed());
  EXPECT_EQ(sink.sizes.size(), 4u);
}

}  // namespace
}  // namespace atomdisk
