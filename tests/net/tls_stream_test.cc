// common/tls_stream: TLS between two TlsStreams over loopback, with the buffer handling that
// matters for speed (a socket read lands in the stream's input directly, records are sealed
// into a buffer sized up front) checked for what it must never change: every byte arrives, in
// order, whatever the mix of tiny, record-sized and 1 MiB writes and of read sizes.
#include "common/tls_stream.h"

#include <gtest/gtest.h>

#include <boost/asio.hpp>
#include <filesystem>
#include <random>
#include <vector>

#include "common/config.h"
#include "common/tls_certs.h"
#include "common/tls_context.h"

namespace atomdisk {
namespace {

namespace asio = boost::asio;
using asio::ip::tcp;

class TlsStreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/tls_stream_test." + std::to_string(::getpid());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    ASSERT_TRUE(WriteClusterTls(dir_, "00112233445566778899aabbccddeeff", {1}).ok());
    config_.tls_ca_file = dir_ + "/ca.crt";
    config_.tls_node_cert_file = dir_ + "/node-{rank}.crt";
    config_.tls_node_key_file = dir_ + "/node-{rank}.key";
    config_.tls_client_cert_file = dir_ + "/client.crt";
    config_.tls_client_key_file = dir_ + "/client.key";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string dir_;
  ClusterConfig config_;
};

TEST_F(TlsStreamTest, EveryByteArrivesInOrderWhateverTheSizes) {
  auto server_tls = TlsContext::ForNode(config_, 1);
  ASSERT_TRUE(server_tls.ok()) << server_tls.status().ToString();
  auto client_tls = TlsContext::ForClient(config_);
  ASSERT_TRUE(client_tls.ok()) << client_tls.status().ToString();

  // Writes of every kind: tiny, around a record (16 KiB), and up to a 1 MiB extent frame; each
  // Write call gathers several buffers, as a connection's queue does.
  std::mt19937_64 rng(7);
  const std::size_t sizes[] = {1,     7,     100,    4096,   4160,   16383,   16384,
                               16385, 65536, 262143, 262144, 262145, 1 << 20, (1 << 20) + 64};
  std::vector<std::vector<std::vector<std::uint8_t>>> writes;
  std::vector<std::uint8_t> expected;
  for (int w = 0; w < 60; ++w) {
    std::vector<std::vector<std::uint8_t>> bufs(1 + rng() % 4);
    for (auto& b : bufs) {
      b.resize(sizes[rng() % std::size(sizes)]);
      for (auto& byte : b) byte = static_cast<std::uint8_t>(rng());
      expected.insert(expected.end(), b.begin(), b.end());
    }
    writes.push_back(std::move(bufs));
  }

  asio::io_context io;
  tcp::acceptor acceptor(io, {asio::ip::make_address("127.0.0.1"), 0});
  tcp::socket server_socket(io), client_socket(io);
  std::vector<std::uint8_t> received;
  boost::system::error_code server_ec, client_ec;
  bool client_done = false;

  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        co_await acceptor.async_accept(server_socket, asio::use_awaitable);
        TlsStream stream(server_socket, **server_tls, TlsStream::Side::kServer);
        co_await stream.Handshake(server_ec);
        if (server_ec) co_return;
        // Reads of varying room, small and large, until everything came.
        std::vector<std::uint8_t> room(300000);
        while (received.size() < expected.size()) {
          const std::size_t want = 1 + rng() % room.size();
          const std::size_t n =
              co_await stream.ReadSome(std::span<std::uint8_t>(room.data(), want), server_ec);
          if (server_ec) co_return;
          received.insert(received.end(), room.begin(), room.begin() + n);
        }
      },
      asio::detached);
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        co_await client_socket.async_connect(acceptor.local_endpoint(), asio::use_awaitable);
        TlsStream stream(client_socket, **client_tls, TlsStream::Side::kClient);
        co_await stream.Handshake(client_ec);
        if (client_ec) co_return;
        for (const auto& bufs : writes) {
          std::vector<asio::const_buffer> out;
          for (const auto& b : bufs) out.push_back(asio::buffer(b));
          co_await stream.Write(out, client_ec);
          if (client_ec) co_return;
        }
        client_done = true;
        // Stays open until the server has read everything.
        asio::steady_timer t(io);
        while (received.size() < expected.size() && !server_ec) {
          t.expires_after(std::chrono::milliseconds(1));
          co_await t.async_wait(asio::use_awaitable);
        }
      },
      asio::detached);
  io.run_for(std::chrono::seconds(60));

  ASSERT_FALSE(client_ec) << client_ec.message();
  ASSERT_FALSE(server_ec) << server_ec.message();
  EXPECT_TRUE(client_done);
  ASSERT_EQ(received.size(), expected.size());
  EXPECT_TRUE(received == expected);
}

}  // namespace
}  // namespace atomdisk
