#include "daemon/store/faulty_block_file.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

namespace atomdisk {
namespace {

std::vector<std::uint8_t> ReadAll(FaultyBlockFile& f, std::uint64_t offset, std::size_t n) {
  std::vector<std::uint8_t> buf(n);
  EXPECT_TRUE(f.ReadAt(offset, buf.data(), n).ok());
  return buf;
}

TEST(FaultyBlockFileTest, ReadsSeeUnsyncedWrites) {
  FaultyBlockFile f;
  std::vector<std::uint8_t> data(100, 7);
  ASSERT_TRUE(f.WriteAt(10, data.data(), data.size()).ok());
  EXPECT_EQ(ReadAll(f, 10, 100), data);
  EXPECT_EQ(f.PendingWriteCount(), 1u);
  EXPECT_EQ(f.WriteCount(), 1u);
}

TEST(FaultyBlockFileTest, CrashLosesUnsyncedKeepsSynced) {
  FaultyBlockFile f;
  std::vector<std::uint8_t> a(100, 1);
  std::vector<std::uint8_t> b(100, 2);
  ASSERT_TRUE(f.WriteAt(0, a.data(), a.size()).ok());
  ASSERT_TRUE(f.Sync().ok());
  EXPECT_EQ(f.PendingWriteCount(), 0u);
  ASSERT_TRUE(f.WriteAt(0, b.data(), b.size()).ok());
  f.SimulateCrashLosingUnsynced();
  EXPECT_EQ(ReadAll(f, 0, 100), a);
  EXPECT_EQ(f.SyncCount(), 1u);
}

TEST(FaultyBlockFileTest, CrashTearsOnlyAtDeviceSectorBoundaries) {
  // A 4160-byte write at an offset that is not 512-aligned, as the store's slots are.
  constexpr std::uint64_t kOffset = 4160;
  constexpr std::size_t kLen = 4160;
  std::vector<std::uint8_t> data(kLen, 0xab);
  int torn = 0;
  int whole = 0;
  int lost = 0;
  for (std::uint64_t seed = 0; seed < 200; ++seed) {
    FaultyBlockFile f;
    ASSERT_TRUE(f.WriteAt(kOffset, data.data(), kLen).ok());
    std::mt19937_64 rng(seed);
    f.SimulateCrash(rng);
    EXPECT_EQ(f.PendingWriteCount(), 0u);
    std::vector<std::uint8_t> got = ReadAll(f, kOffset, kLen);
    std::size_t prefix = 0;
    while (prefix < kLen && got[prefix] == 0xab) ++prefix;
    for (std::size_t i = prefix; i < kLen; ++i) ASSERT_EQ(got[i], 0) << "seed " << seed;
    if (prefix == kLen) {
      ++whole;
    } else if (prefix == 0) {
      ++lost;
    } else {
      ++torn;
      EXPECT_EQ((kOffset + prefix) % 512, 0u) << "seed " << seed;
    }
  }
  EXPECT_GT(torn, 0);
  EXPECT_GT(whole, 0);
  EXPECT_GT(lost, 0);
}

TEST(FaultyBlockFileTest, SameSeedSameCrash) {
  auto run = [](std::uint64_t seed) {
    FaultyBlockFile f;
    for (int i = 0; i < 20; ++i) {
      std::vector<std::uint8_t> data(1000, static_cast<std::uint8_t>(i + 1));
      EXPECT_TRUE(f.WriteAt(static_cast<std::uint64_t>(i) * 700, data.data(), data.size()).ok());
    }
    std::mt19937_64 rng(seed);
    f.SimulateCrash(rng);
    return ReadAll(f, 0, 20 * 700 + 300);
  };
  for (std::uint64_t seed = 0; seed < 20; ++seed) EXPECT_EQ(run(seed), run(seed));
  EXPECT_NE(run(1), run(2));
}

TEST(FaultyBlockFileTest, FailNextWritesWritesNothing) {
  FaultyBlockFile f;
  f.FailNextWrites(1);
  std::vector<std::uint8_t> data(10, 9);
  Status s = f.WriteAt(0, data.data(), data.size());
  EXPECT_EQ(s.code(), StatusCode::kIOError);
  EXPECT_EQ(ReadAll(f, 0, 10), std::vector<std::uint8_t>(10, 0));
  EXPECT_EQ(f.PendingWriteCount(), 0u);
  EXPECT_TRUE(f.WriteAt(0, data.data(), data.size()).ok());
  EXPECT_EQ(ReadAll(f, 0, 10), data);
}

TEST(FaultyBlockFileTest, FailNextSyncsLeavesWritesPending) {
  FaultyBlockFile f;
  std::vector<std::uint8_t> data(10, 9);
  ASSERT_TRUE(f.WriteAt(0, data.data(), data.size()).ok());
  f.FailNextSyncs(1);
  EXPECT_EQ(f.Sync().code(), StatusCode::kIOError);
  EXPECT_EQ(f.PendingWriteCount(), 1u);
  EXPECT_TRUE(f.Sync().ok());
  EXPECT_EQ(f.PendingWriteCount(), 0u);
  f.SimulateCrashLosingUnsynced();
  EXPECT_EQ(ReadAll(f, 0, 10), data);
}

TEST(FaultyBlockFileTest, CorruptByteFlipsDurableBit) {
  FaultyBlockFile f;
  std::vector<std::uint8_t> data(10, 0x40);
  ASSERT_TRUE(f.WriteAt(0, data.data(), data.size()).ok());
  ASSERT_TRUE(f.Sync().ok());
  f.CorruptByte(3, 1);
  EXPECT_EQ(ReadAll(f, 3, 1)[0], 0x42);
  f.SimulateCrashLosingUnsynced();
  EXPECT_EQ(ReadAll(f, 3, 1)[0], 0x42);

  // Under an unsynced write the cache shows the write; the flip shows after a crash.
  std::vector<std::uint8_t> over(1, 0x01);
  ASSERT_TRUE(f.WriteAt(5, over.data(), 1).ok());
  f.CorruptByte(5, 7);
  EXPECT_EQ(ReadAll(f, 5, 1)[0], 0x01);
  f.SimulateCrashLosingUnsynced();
  EXPECT_EQ(ReadAll(f, 5, 1)[0], 0xc0);
}

TEST(FaultyBlockFileTest, NextDataOffsetSkipsHoles) {
  FaultyBlockFile f;
  const std::uint8_t b = 1;
  ASSERT_TRUE(f.WriteAt(1ull << 30, &b, 1).ok());
  EXPECT_EQ(*f.NextDataOffset(0), 1ull << 30);
  EXPECT_EQ(*f.NextDataOffset((1ull << 30) + 4096), BlockFile::kNoData);
}

}  // namespace
}  // namespace atomdisk
