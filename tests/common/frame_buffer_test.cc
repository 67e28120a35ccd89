// FrameBuffer (common/frame_buffer.h): frames split across reads, many frames in one read, a
// large frame growing the buffer and the buffer shrinking back, bad lengths, no memory before
// the first read.
#include "common/frame_buffer.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>

namespace atomdisk {
namespace {

// A frame whose body is `body_size` bytes of `fill`.
std::vector<std::uint8_t> MakeFrame(std::size_t body_size, std::uint8_t fill) {
  std::vector<std::uint8_t> f(kFrameLengthSize + body_size, fill);
  for (std::size_t i = 0; i < kFrameLengthSize; ++i) {
    f[i] = static_cast<std::uint8_t>(static_cast<std::uint64_t>(body_size) >>
                                     (8 * (kFrameLengthSize - 1 - i)));
  }
  return f;
}

FrameBuffer NodeBound() {
  return FrameBuffer([](std::span<const std::uint8_t, kFrameLengthSize> prefix) {
    return DecodeFrameLength(prefix, kMaxFrameBody);
  });
}

// Feeds `bytes` in reads of at most `chunk` bytes; returns the frame bodies' sizes and fills.
std::vector<std::pair<std::size_t, std::uint8_t>> Feed(FrameBuffer& fb,
                                                       const std::vector<std::uint8_t>& bytes,
                                                       std::size_t chunk) {
  std::vector<std::pair<std::size_t, std::uint8_t>> out;
  std::size_t pos = 0;
  while (pos < bytes.size()) {
    auto room = fb.Room();
    std::size_t n = std::min({chunk, room.size(), bytes.size() - pos});
    std::memcpy(room.data(), bytes.data() + pos, n);
    fb.Filled(n);
    pos += n;
    for (;;) {
      auto f = fb.Next();
      EXPECT_TRUE(f.ok()) << f.status().ToString();
      if (!f.ok() || !f->has_value()) break;
      out.emplace_back((*f)->size(), (*f)->empty() ? 0 : (**f)[0]);
    }
  }
  return out;
}

TEST(FrameBufferTest, NothingIsAllocatedBeforeTheFirstRead) {
  FrameBuffer fb = NodeBound();
  EXPECT_EQ(fb.capacity(), 0u);
  auto f = fb.Next();
  ASSERT_TRUE(f.ok());
  EXPECT_FALSE(f->has_value());
  EXPECT_EQ(fb.capacity(), 0u);
  EXPECT_GE(fb.Room().size(), FrameBuffer::kReadRoom);
  EXPECT_EQ(fb.capacity(), FrameBuffer::kInitialSize);
}

TEST(FrameBufferTest, FramesSplitAcrossReadsAndManyInOneRead) {
  std::vector<std::uint8_t> stream;
  for (int i = 0; i < 50; ++i) {
    auto f =
        MakeFrame(kMinFrameBody + static_cast<std::size_t>(i) * 37, static_cast<std::uint8_t>(i));
    stream.insert(stream.end(), f.begin(), f.end());
  }
  for (std::size_t chunk : {1u, 3u, 7u, 100u, 4096u, 1u << 20}) {
    FrameBuffer fb = NodeBound();
    auto got = Feed(fb, stream, chunk);
    ASSERT_EQ(got.size(), 50u) << "chunk " << chunk;
    for (int i = 0; i < 50; ++i) {
      EXPECT_EQ(got[i].first, kMinFrameBody + static_cast<std::size_t>(i) * 37);
      EXPECT_EQ(got[i].second, static_cast<std::uint8_t>(i));
    }
    EXPECT_EQ(fb.buffered(), 0u);
  }
}

TEST(FrameBufferTest, ANodesBufferShrinksAtTheFirstSmallReadAfterALargeFrame) {
  FrameBuffer fb = NodeBound();
  Feed(fb, MakeFrame(kMaxFrameBody, 0xAB), 256 * 1024);
  EXPECT_GT(fb.capacity(), kMaxFrameBody);
  auto small = MakeFrame(kMinFrameBody, 1);
  Feed(fb, small, small.size());
  fb.Room();
  EXPECT_EQ(fb.capacity(), FrameBuffer::kInitialSize);
}

TEST(FrameBufferTest, AClientsBufferShrinksOnlyAfterSmallReadsInARow) {
  FrameBuffer fb(
      [](std::span<const std::uint8_t, kFrameLengthSize> prefix) {
        return DecodeFrameLength(prefix, kMaxFrameBody);
      },
      /*shrink_after=*/16);
  auto big = MakeFrame(kMaxFrameBody, 0xAB);
  auto got = Feed(fb, big, 256 * 1024);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].first, kMaxFrameBody);
  EXPECT_GT(fb.capacity(), kMaxFrameBody);
  // One small read after it does not shrink it (a large frame's last read is often small)...
  auto small = MakeFrame(kMinFrameBody, 1);
  Feed(fb, small, small.size());
  fb.Room();
  EXPECT_GT(fb.capacity(), kMaxFrameBody);
  // ... a stream of small frames in small reads does: back to 64 KiB.
  for (int i = 0; i < 20; ++i) Feed(fb, small, small.size());
  fb.Room();
  EXPECT_EQ(fb.capacity(), FrameBuffer::kInitialSize);
}

TEST(FrameBufferTest, ABadLengthIsAnErrorNotAWait) {
  FrameBuffer fb = NodeBound();
  auto f = MakeFrame(kMinFrameBody, 0);
  f[0] = 0x7F;  // an absurd length
  auto room = fb.Room();
  std::memcpy(room.data(), f.data(), kFrameLengthSize);
  fb.Filled(kFrameLengthSize);
  auto r = fb.Next();
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
}

TEST(FrameBufferTest, AResponseStreamUsesTheResponseLimits) {
  FrameBuffer fb(DecodeResponseFrameLength);
  auto f = MakeFrame(kMaxResponseFrameBody + 1, 0);
  auto room = fb.Room();
  std::memcpy(room.data(), f.data(), kFrameLengthSize);
  fb.Filled(kFrameLengthSize);
  EXPECT_FALSE(fb.Next().ok());
}

}  // namespace
}  // namespace atomdisk
