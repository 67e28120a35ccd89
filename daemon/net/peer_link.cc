#include "daemon/net/peer_link.h"

#include <spdlog/spdlog.h>

namespace atomdisk {

namespace asio = boost::asio;
using asio::ip::tcp;

PeerLink::PeerLink(asio::io_context& io, Rank rank, std::string host, std::uint16_t port,
                   FrameSink* sink)
    : io_(io), rank_(rank), host_(std::move(host)), port_(port), sink_(sink), wake_(io) {}

void PeerLink::Start() { asio::co_spawn(io_, Run(), asio::detached); }

void PeerLink::Stop() {
  stopped_ = true;
  wake_.cancel();
  if (conn_) conn_->Close("");
}

bool PeerLink::Send(SharedFrame frame) {
  const std::size_t bytes = frame ? frame->size() : 0;
  if (!conn_ || conn_->closed() || !conn_->Send(std::move(frame))) {
    ++dropped_;
    dropped_bytes_ += bytes;
    return false;
  }
  return true;
}

asio::awaitable<void> PeerLink::Run() {
  std::chrono::milliseconds backoff(50);
  bool logged_down = false;
  tcp::resolver resolver(io_);
  while (!stopped_) {
    boost::system::error_code ec;
    auto endpoints = co_await resolver.async_resolve(host_, std::to_string(port_),
                                                     asio::redirect_error(asio::use_awaitable, ec));
    tcp::socket socket(io_);
    if (!ec) {
      // Connect with a deadline: a timer closes the socket if the connect hangs.
      asio::steady_timer deadline(io_);
      deadline.expires_after(std::chrono::seconds(1));
      deadline.async_wait([&socket](boost::system::error_code e) {
        if (!e) {
          boost::system::error_code ignored;
          socket.close(ignored);
        }
      });
      co_await asio::async_connect(socket, endpoints,
                                   asio::redirect_error(asio::use_awaitable, ec));
      deadline.cancel();
    }
    if (stopped_) co_return;
    if (!ec && socket.is_open()) {
      spdlog::info("peer {} ({}:{}) connected", rank_, host_, port_);
      logged_down = false;
      ++connects_;
      backoff = std::chrono::milliseconds(50);
      Connection::Options options;
      options.max_queued_frames = 4096;
      conn_ = std::make_shared<Connection>(std::move(socket), sink_,
                                           "peer " + std::to_string(rank_), options);
      conn_->SetOnClose([this] { wake_.cancel(); });
      conn_->Start();
      // Sleep until the connection closes.
      while (!stopped_ && conn_ && !conn_->closed()) {
        wake_.expires_at(asio::steady_timer::time_point::max());
        co_await wake_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      }
      if (stopped_) co_return;
      spdlog::warn("peer {} ({}:{}) disconnected; reconnecting", rank_, host_, port_);
    } else if (!logged_down) {
      spdlog::warn("peer {} ({}:{}) unreachable: {}; retrying", rank_, host_, port_,
                   ec ? ec.message() : "connect timed out");
      logged_down = true;
    }
    wake_.expires_after(backoff);
    co_await wake_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    backoff = std::min(backoff * 2, std::chrono::milliseconds(1000));
  }
}

}  // namespace atomdisk
