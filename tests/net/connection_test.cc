// Tests of Connection (daemon/net/connection.h) over a real loopback TCP pair: the silence
// timeout of a peer link, and that it does not run while reading waits for our own work.
#include "daemon/net/connection.h"

#include <gtest/gtest.h>

#include <boost/asio.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
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

}  // namespace
}  // namespace atomdisk
