// PeerLink: our outgoing connection to one peer node, reconnected automatically.
//
// System messages to the peer are queued on the current Connection; while disconnected they
// are dropped (the register retransmits until answered, so a dead peer costs no memory
// beyond one bounded queue). Reconnection backs off from 50 ms to 1 s. Frames the peer sends
// back on this connection go to the same FrameSink as any other.
//
// Threading: io thread only.
#pragma once

#include <boost/asio.hpp>
#include <memory>
#include <string>

#include "common/types.h"
#include "daemon/net/connection.h"

namespace atomdisk {

class PeerLink {
 public:
  PeerLink(boost::asio::io_context& io, Rank rank, std::string host, std::uint16_t port,
           FrameSink* sink);
  void Start();
  void Stop();
  // False if not connected or the queue is full (the frame is dropped).
  bool Send(SharedFrame frame);
  bool connected() const { return conn_ && !conn_->closed(); }
  Rank rank() const { return rank_; }
  std::uint64_t dropped() const { return dropped_; }
  std::uint64_t dropped_bytes() const { return dropped_bytes_; }
  std::uint64_t connects() const { return connects_; }  // connections made (for metrics)

 private:
  boost::asio::awaitable<void> Run();

  boost::asio::io_context& io_;
  Rank rank_;
  std::string host_;
  std::uint16_t port_;
  FrameSink* sink_;
  std::shared_ptr<Connection> conn_;
  boost::asio::steady_timer wake_;
  bool stopped_ = false;
  std::uint64_t dropped_ = 0;
  std::uint64_t dropped_bytes_ = 0;
  std::uint64_t connects_ = 0;
};

}  // namespace atomdisk
