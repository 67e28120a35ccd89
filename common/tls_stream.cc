#include "common/tls_stream.h"

#include <openssl/bio.h>
#include <openssl/err.h>

#include <algorithm>
#include <boost/asio/ssl/error.hpp>
#include <cstring>
#include <mutex>

namespace atomdisk {

namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;

namespace {

// What one socket read may bring in.
constexpr std::size_t kReadChunk = 256 << 10;
// Plaintext buffers below this are gathered into records of this size (TLS's record limit).
constexpr std::size_t kRecord = 16 << 10;
// What a TLS 1.3 record adds to its plaintext with AES-GCM: a 5-byte header, the inner
// content type and a 16-byte tag (rounded up).
constexpr std::size_t kRecordOverhead = 32;

thread_local std::vector<std::uint8_t> tl_stage;
// A free read chunk (kReadChunk bytes) of this thread: a stream whose last socket read is
// decrypted gives its chunk back here, and the next Fill of any stream takes it, so a steady
// stream of reads allocates nothing and an idle connection holds no chunk.
thread_local std::unique_ptr<std::uint8_t[]> tl_spare_chunk;

std::unique_ptr<std::uint8_t[]> TakeChunk() {
  if (tl_spare_chunk) return std::move(tl_spare_chunk);
  return std::make_unique_for_overwrite<std::uint8_t[]>(kReadChunk);
}

void GiveChunk(std::unique_ptr<std::uint8_t[]> chunk) {
  if (!tl_spare_chunk) tl_spare_chunk = std::move(chunk);
}

// The BIO between OpenSSL and the stream's own buffers: reads take the stream's last
// socket read, writes append to the records waiting to go out. No copy into an intermediate
// BIO buffer, and no memory held beyond the stream's own input and output buffers.
struct BioState {
  TlsStream::InBuffer* in = nullptr;
  std::vector<std::uint8_t>* out = nullptr;
};

int BioWrite(BIO* bio, const char* data, int len) {
  auto* st = static_cast<BioState*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  if (len <= 0) return 0;
  st->out->insert(st->out->end(), reinterpret_cast<const std::uint8_t*>(data),
                  reinterpret_cast<const std::uint8_t*>(data) + len);
  return len;
}

int BioRead(BIO* bio, char* data, int len) {
  auto* st = static_cast<BioState*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  TlsStream::InBuffer& in = *st->in;
  const std::size_t avail = in.size - in.pos;
  if (avail == 0) {
    BIO_set_retry_read(bio);
    return -1;
  }
  const std::size_t n = std::min(avail, static_cast<std::size_t>(std::max(len, 0)));
  std::memcpy(data, in.data.get() + in.pos, n);
  in.pos += n;
  return static_cast<int>(n);
}

long BioCtrl(BIO* bio, int cmd, long /*num*/, void* /*ptr*/) {
  auto* st = static_cast<BioState*>(BIO_get_data(bio));
  switch (cmd) {
    case BIO_CTRL_FLUSH:
      return 1;
    case BIO_CTRL_PENDING:
      return st == nullptr ? 0 : static_cast<long>(st->in->size - st->in->pos);
    default:
      return 0;
  }
}

int BioCreate(BIO* bio) {
  BIO_set_init(bio, 1);
  return 1;
}

int BioDestroy(BIO* bio) {
  delete static_cast<BioState*>(BIO_get_data(bio));
  BIO_set_data(bio, nullptr);
  return 1;
}

BIO_METHOD* StreamBioMethod() {
  static BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "atomdisk stream");
    ATOMDISK_CHECK(m != nullptr);
    BIO_meth_set_write(m, BioWrite);
    BIO_meth_set_read(m, BioRead);
    BIO_meth_set_ctrl(m, BioCtrl);
    BIO_meth_set_create(m, BioCreate);
    BIO_meth_set_destroy(m, BioDestroy);
    return m;
  }();
  return method;
}

}  // namespace

TlsStream::TlsStream(asio::ip::tcp::socket& socket, TlsContext& context, Side side)
    : socket_(socket) {
  ssl_ = SSL_new(context.context().native_handle());
  ATOMDISK_CHECK(ssl_ != nullptr);
  BIO* bio = BIO_new(StreamBioMethod());
  ATOMDISK_CHECK(bio != nullptr);
  BIO_set_data(bio, new BioState{&in_, &out_});
  SSL_set_bio(ssl_, bio, bio);  // one reference, owned by ssl_ from here
  if (side == Side::kClient) {
    SSL_set_connect_state(ssl_);
  } else {
    SSL_set_accept_state(ssl_);
  }
  boost::system::error_code ignored;
  socket_.non_blocking(true, ignored);  // Fill reads only what is there
}

TlsStream::~TlsStream() { SSL_free(ssl_); }

boost::system::error_code TlsStream::Error(int ret) {
  const int err = SSL_get_error(ssl_, ret);
  if (err == SSL_ERROR_ZERO_RETURN) return asio::error::eof;
  const unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e != 0) return {static_cast<int>(e), asio::error::get_ssl_category()};
  return asio::ssl::error::stream_truncated;
}

awaitable<void> TlsStream::Flush(boost::system::error_code& ec) {
  if (out_.empty()) co_return;
  // Swapped out first: OpenSSL may append to out_ (an alert, a KeyUpdate answer) while this
  // write is under way.
  sending_.swap(out_);
  co_await asio::async_write(socket_, asio::buffer(sending_),
                             asio::redirect_error(use_awaitable, ec));
  sending_.clear();
  if (sending_.capacity() > kReadChunk) std::vector<std::uint8_t>().swap(sending_);
}

awaitable<void> TlsStream::Fill(boost::system::error_code& ec) {
  for (;;) {
    co_await socket_.async_wait(asio::ip::tcp::socket::wait_read,
                                asio::redirect_error(use_awaitable, ec));
    if (ec) co_return;
    // OpenSSL has taken all of in_ (it asked for more): the read goes straight into a chunk.
    std::unique_ptr<std::uint8_t[]> small;
    if (in_.capacity < kReadChunk) {
      if (in_.capacity == kRecord) small = std::move(in_.data);
      in_.data = TakeChunk();
      in_.capacity = kReadChunk;
    }
    in_.size = in_.pos = 0;
    const std::size_t n = socket_.read_some(asio::buffer(in_.data.get(), kReadChunk), ec);
    if (ec == asio::error::would_block || ec == asio::error::try_again) {
      // A spurious wake-up: the chunk goes back while we wait again.
      ec = {};
      GiveChunk(std::move(in_.data));
      in_.Release();
      if (small) {
        in_.data = std::move(small);
        in_.capacity = kRecord;
      }
      continue;
    }
    if (ec == asio::error::eof) ec = asio::ssl::error::stream_truncated;  // no close_notify
    if (ec) co_return;
    in_.size = n;
    // A small read moves to a small buffer and the chunk goes back at once, so that an idle
    // connection holds kRecord bytes at most (a large read's chunk goes back once it is
    // decrypted, in ReadSome).
    if (n < kRecord) {
      if (!small) small = std::make_unique_for_overwrite<std::uint8_t[]>(kRecord);
      std::memcpy(small.get(), in_.data.get(), n);
      GiveChunk(std::move(in_.data));
      in_.data = std::move(small);
      in_.capacity = kRecord;
    }
    co_return;
  }
}

bool TlsStream::PeerRefusedTls(const boost::system::error_code& ec) const {
  return SSL_get0_peer_certificate(ssl_) == nullptr &&
         (ec == asio::ssl::error::stream_truncated || ec == asio::error::eof ||
          ec == asio::error::connection_reset);
}

awaitable<void> TlsStream::Handshake(boost::system::error_code& ec) {
  for (;;) {
    ERR_clear_error();
    const int r = SSL_do_handshake(ssl_);
    const boost::system::error_code failed = r == 1 ? boost::system::error_code() : Error(r);
    const bool want_read = r != 1 && SSL_get_error(ssl_, r) == SSL_ERROR_WANT_READ;
    // What the step produced goes out first: our next flight, or the alert that says why we
    // refuse the peer.
    co_await Flush(ec);
    if (ec) co_return;
    if (r == 1) co_return;
    if (!want_read) {
      ec = failed;
      co_return;
    }
    co_await Fill(ec);
    if (ec) co_return;
  }
}

awaitable<std::size_t> TlsStream::ReadSome(std::span<std::uint8_t> room,
                                           boost::system::error_code& ec) {
  if (pending_read_error_) {
    ec = pending_read_error_;
    co_return 0;
  }
  std::size_t got = 0;
  while (got < room.size()) {
    ERR_clear_error();
    const int want = static_cast<int>(std::min<std::size_t>(room.size() - got, 1 << 30));
    const int r = SSL_read(ssl_, room.data() + got, want);
    if (r > 0) {
      got += static_cast<std::size_t>(r);
      continue;
    }
    if (SSL_get_error(ssl_, r) != SSL_ERROR_WANT_READ) {
      if (got == 0) {
        ec = Error(r);
      } else {
        pending_read_error_ = Error(r);  // the data first, the error at the next call
      }
      break;
    }
    if (got > 0) break;  // what is decrypted now, before waiting for more
    co_await Fill(ec);
    if (ec) break;
  }
  // All of the last socket read taken: a large one's buffer goes back (an idle connection
  // holds none).
  if (in_.pos == in_.size && in_.capacity == kReadChunk) {
    GiveChunk(std::move(in_.data));
    in_.Release();
  }
  // A KeyUpdate from the peer makes OpenSSL queue its answer; it goes with our next write.
  co_return got;
}

awaitable<void> TlsStream::Write(std::span<const asio::const_buffer> buffers,
                                 boost::system::error_code& ec) {
  // Encrypted now, with no wait in between, so the staging buffer can be the thread's.
  std::vector<std::uint8_t>& stage = tl_stage;
  stage.clear();
  auto seal = [&](const std::uint8_t* data, std::size_t size) {
    while (size > 0) {
      const int n = static_cast<int>(std::min<std::size_t>(size, 1 << 30));
      ERR_clear_error();
      const int r = SSL_write(ssl_, data, n);
      if (r <= 0) {
        ec = Error(r);
        return;
      }
      data += r;
      size -= static_cast<std::size_t>(r);
    }
  };
  // The records go into out_ (BioWrite): room for all of them first, so that a 1 MiB frame
  // is not copied again each time out_ doubles (1.75 MiB of copies per MiB sent).
  std::size_t plain = 0;
  for (const asio::const_buffer& b : buffers) plain += b.size();
  out_.reserve(out_.size() + plain + (plain / kRecord + buffers.size() + 1) * kRecordOverhead);
  for (const asio::const_buffer& b : buffers) {
    const auto* data = static_cast<const std::uint8_t*>(b.data());
    if (b.size() >= kRecord) {
      if (!stage.empty()) seal(stage.data(), stage.size());
      stage.clear();
      if (!ec) seal(data, b.size());
    } else {
      stage.insert(stage.end(), data, data + b.size());
      if (stage.size() >= kRecord) {
        seal(stage.data(), stage.size());
        stage.clear();
      }
    }
    if (ec) co_return;
  }
  if (!stage.empty()) seal(stage.data(), stage.size());
  if (stage.capacity() > 4 * kRecord) std::vector<std::uint8_t>().swap(stage);
  if (ec) co_return;
  co_await Flush(ec);
}

}  // namespace atomdisk
