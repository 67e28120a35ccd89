#include "daemon/store/mem_block_file.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace atomdisk {
namespace {

TEST(MemBlockFileTest, UnwrittenBytesReadAsZeros) {
  MemBlockFile f;
  std::vector<std::uint8_t> buf(10000, 0xff);
  ASSERT_TRUE(f.ReadAt(123456789, buf.data(), buf.size()).ok());
  EXPECT_EQ(buf, std::vector<std::uint8_t>(10000, 0));
  EXPECT_EQ(*f.Size(), 0u);
  EXPECT_EQ(*f.NextDataOffset(0), BlockFile::kNoData);
}

TEST(MemBlockFileTest, WriteSpanningPagesReadsBack) {
  MemBlockFile f;
  std::vector<std::uint8_t> data(9000);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::uint8_t>(i * 7 + 1);
  ASSERT_TRUE(f.WriteAt(4000, data.data(), data.size()).ok());
  std::vector<std::uint8_t> back(data.size() + 200);
  ASSERT_TRUE(f.ReadAt(3900, back.data(), back.size()).ok());
  for (std::size_t i = 0; i < 100; ++i) EXPECT_EQ(back[i], 0);
  for (std::size_t i = 0; i < data.size(); ++i) ASSERT_EQ(back[100 + i], data[i]);
  for (std::size_t i = 100 + data.size(); i < back.size(); ++i) EXPECT_EQ(back[i], 0);
  EXPECT_EQ(*f.Size(), 13000u);
  EXPECT_EQ(f.MemoryBytes(), 4u * 4096);  // pages 0..3 hold bytes 4000..12999
}

TEST(MemBlockFileTest, NextDataOffsetSkipsUnwrittenPages) {
  MemBlockFile f;
  const std::uint8_t b[10] = {1};
  ASSERT_TRUE(f.WriteAt(1ull << 33, b, sizeof(b)).ok());  // 8 GiB in: costs one page
  EXPECT_EQ(f.MemoryBytes(), 4096u);
  EXPECT_EQ(*f.NextDataOffset(0), 1ull << 33);
  EXPECT_EQ(*f.NextDataOffset((1ull << 33) + 1), (1ull << 33) + 1);  // same page: may be data
  EXPECT_EQ(*f.NextDataOffset((1ull << 33) + 4096), BlockFile::kNoData);
}

TEST(MemBlockFileTest, CopyFromAndFlipBit) {
  MemBlockFile a;
  MemBlockFile b;
  const std::uint8_t x = 0x10;
  ASSERT_TRUE(a.WriteAt(5, &x, 1).ok());
  b.CopyFrom(a);
  a.FlipBit(5, 0);
  std::uint8_t got = 0;
  ASSERT_TRUE(a.ReadAt(5, &got, 1).ok());
  EXPECT_EQ(got, 0x11);
  ASSERT_TRUE(b.ReadAt(5, &got, 1).ok());
  EXPECT_EQ(got, 0x10);
}

TEST(MemBlockFileTest, ShareBlockFileKeepsTheFileAcrossOwners) {
  auto shared = std::make_shared<MemBlockFile>();
  {
    std::unique_ptr<BlockFile> view = ShareBlockFile(shared);
    const std::uint8_t x = 42;
    ASSERT_TRUE(view->WriteAt(0, &x, 1).ok());
  }
  std::uint8_t got = 0;
  ASSERT_TRUE(shared->ReadAt(0, &got, 1).ok());
  EXPECT_EQ(got, 42);
}

}  // namespace
}  // namespace atomdisk
