// TlsConn: a synchronous TLS client for integration tests (tests/daemon/tls_test.cc,
// hostile_test.cc): connects to a node with any certificate or none, sends raw bytes, reads
// raw frames, each step with a deadline. Not thread-safe: one per thread.
#pragma once

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <chrono>
#include <memory>
#include <span>
#include <string>

#include "common/hmac.h"
#include "common/status.h"
#include "common/wire.h"
#include "tests/daemon/raw_client.h"

namespace atomdisk::itest {

// A synchronous TLS client for tests: connects to a node with any certificate (or none),
// sends raw bytes, reads raw frames, each step with a deadline.
class TlsConn {
 public:
  // `cert`/`key` empty: no client certificate. The node's certificate is checked against `ca`.
  static Result<std::unique_ptr<TlsConn>> Connect(std::uint16_t port, const std::string& ca,
                                                  const std::string& cert, const std::string& key) {
    std::unique_ptr<TlsConn> c(new TlsConn());
    boost::system::error_code ec;
    c->ctx_.load_verify_file(ca, ec);
    if (!ec && !cert.empty()) c->ctx_.use_certificate_chain_file(cert, ec);
    if (!ec && !key.empty()) c->ctx_.use_private_key_file(key, boost::asio::ssl::context::pem, ec);
    if (ec) return Status::InvalidArgument("test TLS context: " + ec.message());
    c->ctx_.set_verify_mode(boost::asio::ssl::verify_peer);
    c->stream_ =
        std::make_unique<boost::asio::ssl::stream<boost::asio::ip::tcp::socket>>(c->io_, c->ctx_);
    c->stream_->next_layer().connect({boost::asio::ip::make_address("127.0.0.1"), port}, ec);
    if (ec) return Status::Unavailable("connect: " + ec.message());
    bool done = false;
    c->stream_->async_handshake(boost::asio::ssl::stream_base::client,
                                [&](boost::system::error_code e) {
                                  ec = e;
                                  done = true;
                                });
    if (!c->Run(done, std::chrono::seconds(5)) || ec) {
      return Status::Unavailable("handshake: " + (ec ? ec.message() : "timed out"));
    }
    return c;
  }

  Status Send(std::span<const std::uint8_t> bytes) {
    boost::system::error_code ec;
    bool done = false;
    boost::asio::async_write(*stream_, boost::asio::buffer(bytes.data(), bytes.size()),
                             [&](boost::system::error_code e, std::size_t) {
                               ec = e;
                               done = true;
                             });
    if (!Run(done, std::chrono::seconds(5)) || ec) {
      return Status::Unavailable("send: " + (ec ? ec.message() : "timed out"));
    }
    return Status::Ok();
  }

  // One whole frame (length prefix, payload, tag); Unavailable when the node closed the
  // connection (as it does after refusing us), Timeout when nothing came.
  Result<Bytes> ReadFrame(std::chrono::milliseconds timeout = std::chrono::milliseconds(5000)) {
    Bytes frame(kFrameLengthSize);
    if (Status s = ReadExactly(frame.data(), frame.size(), timeout); !s.ok()) return s;
    auto length = DecodeFrameLength(
        std::span<const std::uint8_t, kFrameLengthSize>(frame.data(), 8), kMaxFrameBody);
    if (!length.ok()) return length.status();
    frame.resize(kFrameLengthSize + *length);
    if (Status s = ReadExactly(frame.data() + kFrameLengthSize, *length, timeout); !s.ok()) {
      return s;
    }
    return frame;
  }

  // Sends an Info request signed with `client_key` and returns the answer's status, or the
  // error that reading met (Unavailable: the node closed the connection).
  Result<ResponseStatus> Info(std::span<const std::uint8_t> client_key) {
    ClientCommand cmd;
    cmd.request_id = 77;
    cmd.op = ClientOp::kInfo;
    Hmac mac(client_key);
    if (Status s = Send(EncodeFrame(cmd, mac)); !s.ok()) return s;
    auto frame = ReadFrame();
    if (!frame.ok()) return frame.status();
    // Inside TLS the node answers with a zero tag (docs/TLS.md).
    auto payload = VerifyFrameBodyOn(std::span<const std::uint8_t>(*frame).subspan(8), mac, true);
    if (!payload.ok()) return payload.status();
    auto resp = DecodeClientResponse(*payload);
    if (!resp.ok()) return resp.status();
    return resp->status;
  }

 private:
  TlsConn() : ctx_(boost::asio::ssl::context::tls_client) {}

  // Runs the io_context until `done` or the timeout (then cancels what is pending).
  bool Run(bool& done, std::chrono::milliseconds timeout) {
    io_.restart();
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!done && std::chrono::steady_clock::now() < deadline) {
      io_.run_one_for(std::chrono::milliseconds(20));
    }
    if (!done) {
      boost::system::error_code ignored;
      stream_->next_layer().cancel(ignored);
      io_.restart();
      io_.run_for(std::chrono::milliseconds(500));
    }
    return done;
  }

  Status ReadExactly(std::uint8_t* out, std::size_t n, std::chrono::milliseconds timeout) {
    boost::system::error_code ec;
    bool done = false;
    boost::asio::async_read(*stream_, boost::asio::buffer(out, n),
                            [&](boost::system::error_code e, std::size_t) {
                              ec = e;
                              done = true;
                            });
    if (!Run(done, timeout)) return Status::Timeout("no frame within the deadline");
    if (ec) return Status::Unavailable("closed: " + ec.message());
    return Status::Ok();
  }

  boost::asio::io_context io_;
  boost::asio::ssl::context ctx_;
  std::unique_ptr<boost::asio::ssl::stream<boost::asio::ip::tcp::socket>> stream_;
};

}  // namespace atomdisk::itest
