// FrameBuffer (common/frame_buffer.h): a byte stream in, whole frame bodies out.
#include "common/frame_buffer.h"

#include <algorithm>
#include <cstring>

namespace atomdisk {

std::span<std::uint8_t> FrameBuffer::Room() {
  if (begin_ == end_) {
    begin_ = end_ = 0;
    // Everything was taken: give back a buffer grown for a large frame once the stream
    // has gone back to small reads for a while.
    small_and_empty_ = last_read_ < kReadRoom ? small_and_empty_ + 1 : 0;
    if (buf_.size() > kInitialSize && small_and_empty_ >= shrink_after_) {
      buf_.resize(kInitialSize);
      buf_.shrink_to_fit();
    }
  }
  if (buf_.empty()) buf_.resize(kInitialSize);
  const std::size_t need = std::max(want_, end_ - begin_ + kReadRoom);
  if (buf_.size() - begin_ < need || buf_.size() - end_ < kReadRoom) {
    std::memmove(buf_.data(), buf_.data() + begin_, end_ - begin_);
    end_ -= begin_;
    begin_ = 0;
    if (buf_.size() < need) buf_.resize(need + kReadRoom);
  }
  return {buf_.data() + end_, buf_.size() - end_};
}

void FrameBuffer::Filled(std::size_t n) {
  end_ += n;
  last_read_ = n;
  if (n >= kReadRoom) small_and_empty_ = 0;
}

Result<std::optional<std::span<const std::uint8_t>>> FrameBuffer::Next() {
  want_ = 0;
  if (end_ - begin_ < kFrameLengthSize) return std::optional<std::span<const std::uint8_t>>();
  Result<std::uint64_t> length = rule_(
      std::span<const std::uint8_t, kFrameLengthSize>(buf_.data() + begin_, kFrameLengthSize));
  if (!length.ok()) return length.status();
  const std::size_t whole = kFrameLengthSize + static_cast<std::size_t>(*length);
  if (end_ - begin_ < whole) {
    want_ = whole;
    return std::optional<std::span<const std::uint8_t>>();
  }
  std::span<const std::uint8_t> body(buf_.data() + begin_ + kFrameLengthSize,
                                     static_cast<std::size_t>(*length));
  begin_ += whole;
  return std::optional<std::span<const std::uint8_t>>(body);
}

}  // namespace atomdisk
