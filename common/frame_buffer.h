// FrameBuffer: the one place where a byte stream becomes frames (docs/PROTOCOL.md: an 8-byte
// big-endian length, then that many bytes of body). The daemon's connections
// (daemon/net/connection.cc), the client library's connections and its probes
// (client/net/client_asio.cc) all read through it, so the framing rules, the length limits
// and the memory policy are written once.
//
// Memory: nothing is allocated until the first read asks for room; then 64 KiB, grown to hold
// a frame whose length says it needs more (an extent, up to the limit the caller's length
// rule allows), and given back once everything buffered has been taken and the last read
// was small (a client's: several times in a row, see the constructor). An idle connection, or one
// that carries only small frames, never holds more than 64 KiB; one that never sends holds nothing.
//
// Not thread-safe: one reader owns it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <vector>

#include "common/status.h"
#include "common/wire.h"

namespace atomdisk {

class FrameBuffer {
 public:
  // Checks a length prefix and returns the body length it announces (Corruption when it is
  // out of the caller's bounds): DecodeFrameLength for node-bound streams,
  // DecodeResponseFrameLength for responses.
  using LengthRule =
      std::function<Result<std::uint64_t>(std::span<const std::uint8_t, kFrameLengthSize>)>;

  static constexpr std::size_t kInitialSize = 64 * 1024;
  // Compacted (or grown) when less than this is free behind the buffered bytes.
  static constexpr std::size_t kReadRoom = 16 * 1024;

  // `shrink_after`: how many times in a row everything must have been taken after a small
  // read before a grown buffer is given back. 1 for a node, which may hold thousands of
  // connections and must not keep 1 MiB on each that once carried an extent; more for a
  // client, which holds one connection per node and reads 1 MiB responses, the last read of
  // one often small, and would otherwise free and grow the buffer for each of them.
  explicit FrameBuffer(LengthRule rule, int shrink_after = 1)
      : rule_(std::move(rule)), shrink_after_(shrink_after) {}

  // Where the next read goes: at least kReadRoom bytes, and enough for the whole frame in
  // progress once its length is known. Allocates on first use.
  std::span<std::uint8_t> Room();
  // `n` bytes were read into Room().
  void Filled(std::size_t n);

  // The next whole frame's body, valid until the next Room() or Next() call; nullopt when
  // more bytes are needed; the rule's Corruption for a bad length prefix (the stream cannot
  // be resynchronised: close it).
  Result<std::optional<std::span<const std::uint8_t>>> Next();

  // Bytes buffered and not yet taken as frames (part of a frame in progress).
  std::size_t buffered() const { return end_ - begin_; }
  // Bytes allocated (for tests and memory accounting).
  std::size_t capacity() const { return buf_.size(); }

 private:
  LengthRule rule_;
  std::vector<std::uint8_t> buf_;
  std::size_t begin_ = 0, end_ = 0;
  std::size_t want_ = 0;       // bytes of the frame in progress, once its length is known
  std::size_t last_read_ = 0;  // size of the latest read
  int shrink_after_;
  // Times in a row that everything had been taken and the last read was small.
  int small_and_empty_ = 0;
};

}  // namespace atomdisk
