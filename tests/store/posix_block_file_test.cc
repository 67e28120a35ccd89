#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "daemon/store/block_file.h"

namespace atomdisk {
namespace {

// A fresh directory under the test temp dir, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = ::testing::TempDir() + "/posix_block_file_test.XXXXXX";
    char* p = ::mkdtemp(tmpl.data());
    EXPECT_NE(p, nullptr);
    path_ = tmpl;
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(PosixBlockFileTest, RoundTripAndZerosPastEof) {
  TempDir dir;
  auto f = OpenPosixBlockFile(dir.path() + "/f", /*create=*/true);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  std::vector<std::uint8_t> data(5000);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::uint8_t>(i * 13 + 5);
  ASSERT_TRUE((*f)->WriteAt(100, data.data(), data.size()).ok());
  ASSERT_TRUE((*f)->Sync().ok());
  EXPECT_EQ(*(*f)->Size(), 5100u);
  std::vector<std::uint8_t> back(6000, 0xff);
  ASSERT_TRUE((*f)->ReadAt(100, back.data(), back.size()).ok());
  for (std::size_t i = 0; i < data.size(); ++i) ASSERT_EQ(back[i], data[i]);
  for (std::size_t i = data.size(); i < back.size(); ++i) ASSERT_EQ(back[i], 0) << i;
}

TEST(PosixBlockFileTest, NextDataOffsetSkipsHoles) {
  TempDir dir;
  auto f = OpenPosixBlockFile(dir.path() + "/f", /*create=*/true);
  ASSERT_TRUE(f.ok());
  const std::uint64_t far = 1ull << 30;
  std::vector<std::uint8_t> data(4096, 1);
  ASSERT_TRUE((*f)->WriteAt(far, data.data(), data.size()).ok());
  auto next = (*f)->NextDataOffset(0);
  ASSERT_TRUE(next.ok());
  EXPECT_GT(*next, 0u);  // the hole is skipped (block granularity)
  EXPECT_LE(*next, far);
  EXPECT_EQ(*(*f)->NextDataOffset(far + 4096), BlockFile::kNoData);
}

TEST(PosixBlockFileTest, OpenMissingFileWithoutCreateNamesThePath) {
  TempDir dir;
  const std::string path = dir.path() + "/missing";
  auto f = OpenPosixBlockFile(path, /*create=*/false);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), StatusCode::kIOError);
  EXPECT_NE(f.status().message().find(path), std::string::npos) << f.status().ToString();
}

TEST(PosixBlockFileTest, RefusesADirectory) {
  TempDir dir;
  auto f = OpenPosixBlockFile(dir.path(), /*create=*/false);
  EXPECT_FALSE(f.ok());
}

}  // namespace
}  // namespace atomdisk
