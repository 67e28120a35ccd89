// TlsStream: TLS over one connected TCP socket, for the node's connections and the client
// library (docs/TLS.md), with the record work done in memory and the socket used in large
// pieces.
//
// Why not Asio's ssl::stream: it moves at most one TLS record (17 KiB) per socket read or
// write and runs a state machine with timers for every operation, so a stream of small frames
// cost about twice the daemon CPU per read of the same stream in clear (docs/BENCHMARKS.md,
// "TLS"). Here OpenSSL reads and writes the stream's own buffers through a BIO: a socket read
// of up to 256 KiB lands in the stream's input buffer and is decrypted record by record; a write
// encrypts every queued frame, gathered into records of up to 16 KiB, and sends all the records in
// one socket write.
//
// One reader coroutine (ReadSome) and one writer coroutine (Write) may run at once, as on a
// plain socket; both on the socket's (single) io thread. Handshake runs before either.
#pragma once

#include <openssl/ssl.h>

#include <boost/asio.hpp>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/tls_context.h"

namespace atomdisk {

class TlsStream {
 public:
  enum class Side { kClient, kServer };
  // `socket` must outlive the stream; `context` is shared (its SSL_CTX is reference-counted).
  TlsStream(boost::asio::ip::tcp::socket& socket, TlsContext& context, Side side);
  ~TlsStream();
  TlsStream(const TlsStream&) = delete;
  TlsStream& operator=(const TlsStream&) = delete;

  // Runs the handshake. On failure `ec` is set (a socket error, or the TLS error with
  // OpenSSL's reason: TlsErrorText words it).
  boost::asio::awaitable<void> Handshake(boost::system::error_code& ec);
  // Reads decrypted bytes into `room` (at least one, unless `ec` is set: eof for a
  // close_notify, ssl::error::stream_truncated for a socket closed without one).
  boost::asio::awaitable<std::size_t> ReadSome(std::span<std::uint8_t> room,
                                               boost::system::error_code& ec);
  // Encrypts every buffer, in order, and writes the records.
  boost::asio::awaitable<void> Write(std::span<const boost::asio::const_buffer> buffers,
                                     boost::system::error_code& ec);

  // The last socket read, which OpenSSL takes from `pos` on (through the BIO in
  // tls_stream.cc). Uninitialised storage, so that a socket read goes straight in.
  struct InBuffer {
    std::unique_ptr<std::uint8_t[]> data;
    std::size_t capacity = 0;
    std::size_t size = 0;
    std::size_t pos = 0;
    void Release() {
      data.reset();
      capacity = size = pos = 0;
    }
  };

  SSL* native_handle() { return ssl_; }
  // After Handshake failed with `ec`: whether the peer hung up before showing a certificate,
  // i.e. it does not speak TLS (an older node drops a ClientHello as a bad frame length).
  // What tls = "accept" falls back to clear for; never a certificate failure or a timeout.
  bool PeerRefusedTls(const boost::system::error_code& ec) const;

 private:
  // Writes what OpenSSL produced (out_) whole.
  boost::asio::awaitable<void> Flush(boost::system::error_code& ec);
  // Reads once from the socket into in_ (when OpenSSL has taken all of it).
  boost::asio::awaitable<void> Fill(boost::system::error_code& ec);
  // The error for an SSL_* call that returned `ret`.
  boost::system::error_code Error(int ret);

  boost::asio::ip::tcp::socket& socket_;
  SSL* ssl_ = nullptr;  // its BIO reads in_ and appends to out_ (tls_stream.cc)
  InBuffer in_;
  std::vector<std::uint8_t> out_;      // records OpenSSL wrote, not yet handed to the socket
  std::vector<std::uint8_t> sending_;  // records the socket is writing
  // An error met after ReadSome had data for its caller: returned by the next ReadSome
  // (OpenSSL's error queue would be empty by then, and the reason lost).
  boost::system::error_code pending_read_error_;
};

}  // namespace atomdisk
