// Connection: one TCP connection carrying atdd frames, used for client connections, for
// peers' incoming links and for our outgoing peer links alike.
//
// One reader coroutine parses frames out of a buffer (lengths are checked before anything
// is read further: a bad length closes the connection) and hands each frame body to the
// FrameSink; one writer coroutine drains a bounded queue of encoded frames, gathering every
// queued frame into one write. Stopping means closing the socket and cancelling the timers;
// both coroutines then end and release the Connection.
//
// TLS (docs/TLS.md): with Options::tls set, the reader first sets the connection up. An
// accepted connection peeks at its first byte: 0x16 (a TLS ClientHello) starts a server
// handshake, anything else (an atdd frame's length starts with 0x00) stays plaintext. A
// dialled one (Options::tls_dial) starts a client handshake. The peer's certificate then
// names who it is (tls_peer()), and Options::tls_admit may refuse it. Until the setup is
// done the writer holds what is queued.
//
// Threading: every method must be called on the io_context's (single) thread.
#pragma once

#include <boost/asio.hpp>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/tls_context.h"
#include "common/tls_stream.h"
#include "common/wire.h"
#include "daemon/core/client_channel.h"

namespace atomdisk {

class Connection;

// Receives what arrives on connections. Called on the io thread.
class FrameSink {
 public:
  virtual ~FrameSink() = default;
  // A complete frame body (payload + tag, L bytes). The span is valid only during the call.
  virtual void OnFrame(Connection& conn, std::span<const std::uint8_t> body) = 0;
};

class Connection final : public ClientChannel, public std::enable_shared_from_this<Connection> {
 public:
  struct Options {
    std::size_t max_queued_frames = 8192;  // Send() drops beyond this
    std::size_t max_inflight = 1024;       // reading pauses at this many open ops + queued frames
    // Reading pauses too while this many bytes of frames are queued (extent read responses
    // are up to 1 MiB each, so counting frames alone would not bound the memory).
    std::size_t max_queued_bytes = 16u << 20;
    // The largest frame body this connection accepts: kMaxFrameBody where client commands
    // (extents) may arrive, kMaxPeerFrameBody on our own outgoing peer links.
    std::uint64_t max_frame_body = kMaxFrameBody;
    std::chrono::seconds frame_deadline{30};  // a started frame must complete within this
    // Closed when no frame whose tag verifies (MarkAuthenticated) has arrived this long
    // after the connection was made (zero: never). Connections accepted by a node: a
    // stranger's connection then costs its buffer and descriptor for seconds, not forever
    // (docs/PROTOCOL.md, "What every node does with a frame").
    std::chrono::milliseconds auth_timeout{0};
    // Closed when nothing arrives for this long (peer links; zero: never). See
    // SetSilenceTimeout.
    std::chrono::milliseconds silence_timeout{0};
    // Whether Close logs its reason (peer links log their own "lost" line instead), and how:
    // through `close_log` when set (the node server rate-limits it: a flood of connections
    // must not flood the log), else at info level.
    bool log_close = true;
    std::function<void(const std::string& line)> close_log;
    // Closed when a queued frame has not been written whole this long after it was queued
    // (zero: never): a client that reads its responses slowly, a little at a time, cannot
    // keep them queued for ever (the older rule, frame_deadline without any write progress,
    // let any trickle reset it).
    std::chrono::milliseconds response_deadline{0};
    // Told of every change in the bytes queued here (+ on Send, - when written or dropped at
    // Close), for a budget over every connection (NodeServer's max_queued_response_mb).
    std::function<void(std::int64_t delta)> on_queued_bytes;
    // TLS for this connection (null: plaintext only); see the file comment.
    std::shared_ptr<TlsContext> tls;
    bool tls_dial = false;
    // After a handshake: why the peer is refused, or empty to go on.
    std::function<std::string(const TlsPeer&)> tls_admit;
    // Closed when its TLS set-up has not finished this long after the connection was made
    // (zero: never; accepted connections have auth_timeout instead). For dialled links: a
    // peer whose kernel completes the connect while its process hangs must not hold the
    // link in a handshake for ever.
    std::chrono::milliseconds handshake_timeout{0};
    // Called once the connection is set up (plaintext decided, or TLS handshake done and the
    // peer admitted): a peer link counts as up from then, not from the TCP connect.
    std::function<void()> on_ready;
    // Where a failed handshake or a refused certificate is logged instead of the close line
    // (the node server: rate-limited, at warning level, under a key of its own so that routine
    // closes do not hide it). Unset: like any close.
    std::function<void(const std::string& line)> tls_refusal_log;
  };

  Connection(boost::asio::ip::tcp::socket socket, FrameSink* sink, std::string name,
             Options options);

  // Spawns the reader and writer coroutines.
  void Start();
  // Queues a frame; false (and nothing queued) if closed or the queue is full.
  bool Send(SharedFrame frame);
  // Closes the socket; logs `reason` at info level when not empty (and Options::log_close).
  // Idempotent.
  void Close(const std::string& reason);
  bool closed() const { return closed_; }
  // Why the connection closed ("closed by peer", "silent for 1003 ms", a socket error), as
  // given to the first Close; empty while open or when closed without a reason.
  const std::string& close_reason() const { return close_reason_; }
  // From now on, closes the connection when no byte arrived for `timeout` (zero: never),
  // with the reason "silent for N ms". For a peer link once the peer is known to send
  // heartbeats (docs/PROTOCOL.md, "Peer liveness").
  void SetSilenceTimeout(std::chrono::milliseconds timeout);
  void set_log_close(bool log) { options_.log_close = log; }
  // Sets the kernel's own give-up rules on the socket: TCP_USER_TIMEOUT (unacknowledged
  // data older than `timeout` resets the connection) and keepalive probes after `timeout`
  // idle. Failures are ignored (the heartbeat still notices a dead peer). Once per
  // connection: later calls do nothing.
  void SetPeerSocketOptions(std::chrono::milliseconds timeout);
  // Milliseconds since the last byte arrived (or since the connection was made).
  std::int64_t ms_since_read() const;
  const std::string& name() const { return name_; }

  // Operations this connection's frames started that have not been answered yet: reading
  // pauses while there are max_inflight of them (backpressure on a greedy client).
  void OpStarted() override { ++inflight_; }
  void OpFinished() override;
  // Reading pauses while open operations plus queued frames reach max_inflight, so that a
  // client that does not read its responses stalls itself instead of growing the queue.
  bool Saturated() const {
    return inflight_ + queue_.size() >= options_.max_inflight ||
           queued_bytes_ >= options_.max_queued_bytes;
  }

  // Called once when the connection closes (for a peer link to reconnect).
  void SetOnClose(std::function<void()> fn) { on_close_ = std::move(fn); }

  std::uint64_t frames_dropped() const { return frames_dropped_; }
  std::size_t queued_bytes() const { return queued_bytes_; }
  // When the oldest frame still queued was queued (time_point::max() when none is).
  std::chrono::steady_clock::time_point oldest_queued() const {
    return queued_at_.empty() ? std::chrono::steady_clock::time_point::max() : queued_at_.front();
  }

  // ClientChannel
  bool SendFrame(SharedFrame frame) override { return Send(std::move(frame)); }
  void CloseChannel(const std::string& reason) override { Close(reason); }
  bool channel_closed() const override { return closed_; }
  const std::string& channel_name() const override { return name_; }
  std::weak_ptr<ClientChannel> WeakChannel() override { return weak_from_this(); }
  void MarkAuthenticated() override { authenticated_ = true; }
  bool channel_tls() const override { return tls_peer_.has_value(); }
  // Whether a frame with a valid tag, or a TLS handshake with a valid certificate, has
  // arrived on this connection.
  bool authenticated() const { return authenticated_; }
  // The peer's verified identity on a TLS connection; null on a plaintext one (and before
  // the handshake finished).
  const TlsPeer* tls_peer() const { return tls_peer_ ? &*tls_peer_ : nullptr; }
  // Whether the peer closed this connection while our TLS handshake waited for its answer,
  // before any certificate was seen: a peer that does not speak TLS (an older binary drops
  // a ClientHello as a bad frame length). Not set for certificate failures or timeouts.
  bool tls_refused_by_peer() const { return tls_refused_by_peer_; }
  bool ready() const { return ready_; }

 private:
  boost::asio::awaitable<void> Reader();
  // The TLS set-up (see the file comment); false when the connection closed.
  boost::asio::awaitable<bool> SetUp();
  // Closes over a failed TLS set-up, logged through Options::tls_refusal_log when set.
  void RefuseTls(const std::string& why);
  boost::asio::awaitable<void> Writer();
  boost::asio::awaitable<void> Watchdog();

  boost::asio::ip::tcp::socket socket_;
  std::unique_ptr<TlsStream> tls_stream_;  // over socket_, once TLS starts
  std::optional<TlsPeer> tls_peer_;
  bool ready_ = false;  // set up (plaintext decided, or TLS handshake done): the writer may go
  bool tls_refused_by_peer_ = false;
  FrameSink* sink_;
  std::string name_;
  Options options_;
  boost::asio::steady_timer write_signal_;
  boost::asio::steady_timer read_signal_;
  boost::asio::steady_timer watchdog_;
  std::deque<SharedFrame> queue_;
  std::deque<std::chrono::steady_clock::time_point> queued_at_;  // when each was queued
  std::size_t queued_bytes_ = 0;                                 // of the frames in queue_
  std::size_t inflight_ = 0;
  bool closed_ = false;
  bool in_frame_ = false;       // a frame's first bytes arrived, the rest not yet
  bool authenticated_ = false;  // a frame with a tag that verifies arrived (auth_timeout)
  std::chrono::steady_clock::time_point opened_;
  // The reader waits for our own work (Saturated()): the peer's silence is then ours, and
  // the silence timeout does not run (it restarts when reading resumes).
  bool reading_paused_ = false;
  std::chrono::steady_clock::time_point frame_started_;
  std::chrono::steady_clock::time_point write_progress_;  // last completed write (or idle)
  std::chrono::steady_clock::time_point last_read_;       // last bytes read (or the start)
  std::string close_reason_;
  bool peer_options_set_ = false;
  std::uint64_t frames_dropped_ = 0;
  std::function<void()> on_close_;
};

}  // namespace atomdisk
