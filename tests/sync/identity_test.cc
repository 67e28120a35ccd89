#include "daemon/sync/identity.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace atomdisk {
namespace {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = ::testing::TempDir() + "/identity_test.XXXXXX";
    char* p = ::mkdtemp(tmpl.data());
    EXPECT_NE(p, nullptr);
    path_ = tmpl;
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

void WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << contents;
  ASSERT_TRUE(f.good()) << path;
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

Identity Sample() {
  Identity id;
  id.cluster_id = *ParseUuid("00112233445566778899aabbccddeeff");
  id.rank = 2;
  id.voting = true;
  id.voters = {1, 2, 3};
  id.resync_active = true;
  id.resync_join = false;
  id.resync_next_window = 17;
  id.write_ts_floor = 1763781809000000;
  id.write_ts_lease = 1763781826000000;
  return id;
}

// A valid file with `line` replacing (or, if `key` is absent, added to) the line of `key`.
std::string ValidFileWith(const std::string& key, const std::string& line) {
  std::string lines[] = {"format = 1",
                         "cluster_id = \"00112233445566778899aabbccddeeff\"",
                         "rank = 2",
                         "voting = true",
                         "voters = [1, 2, 3]",
                         "write_ts_floor = 0",
                         "write_ts_lease = 0",
                         "resync_active = false",
                         "resync_join = false",
                         "resync_next_window = 0"};
  std::string out;
  bool replaced = false;
  for (const std::string& l : lines) {
    if (l.rfind(key + " =", 0) == 0) {
      out += line.empty() ? "" : line + "\n";
      replaced = true;
    } else {
      out += l + "\n";
    }
  }
  if (!replaced) out += line + "\n";
  return out;
}

::testing::AssertionResult IsCorruptionNaming(const Result<std::optional<Identity>>& r,
                                              const std::string& path, const std::string& what) {
  if (r.ok()) return ::testing::AssertionFailure() << "loaded";
  const Status& s = r.status();
  if (s.code() != StatusCode::kCorruption) return ::testing::AssertionFailure() << s.ToString();
  if (s.message().find(path) == std::string::npos) {
    return ::testing::AssertionFailure() << "no path in: " << s.ToString();
  }
  if (s.message().find(what) == std::string::npos) {
    return ::testing::AssertionFailure() << "no \"" << what << "\" in: " << s.ToString();
  }
  return ::testing::AssertionSuccess();
}

TEST(IdentityTest, SaveLoadRoundTrip) {
  TempDir dir;
  const Identity id = Sample();
  ASSERT_TRUE(SaveIdentity(dir.path(), id).ok());
  auto loaded = LoadIdentity(dir.path());
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  ASSERT_TRUE(loaded->has_value());
  EXPECT_EQ(**loaded, id);

  struct stat st;
  ASSERT_EQ(::stat(IdentityPath(dir.path()).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_FALSE(std::filesystem::exists(IdentityPath(dir.path()) + ".tmp"));
  EXPECT_EQ(IdentityPath(dir.path()), dir.path() + "/IDENTITY");
}

TEST(IdentityTest, RoundTripOfExtremes) {
  TempDir dir;
  Identity id;
  id.cluster_id = *ParseUuid("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF");
  id.rank = 254;
  id.voting = false;
  id.voters = {};
  id.resync_active = true;
  id.resync_join = true;
  id.resync_next_window = (1ull << 63) - 1;
  id.write_ts_floor = (1ull << 63) - 1;
  id.write_ts_lease = (1ull << 63) - 1;
  ASSERT_TRUE(SaveIdentity(dir.path(), id).ok());
  auto loaded = LoadIdentity(dir.path());
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  ASSERT_TRUE(loaded->has_value());
  EXPECT_EQ(**loaded, id);

  for (int r = 1; r <= kMaxRank; ++r) id.AddVoter(static_cast<Rank>(r));
  ASSERT_TRUE(SaveIdentity(dir.path(), id).ok());
  loaded = LoadIdentity(dir.path());
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ((*loaded)->voters.size(), 254u);
  EXPECT_EQ(**loaded, id);
}

TEST(IdentityTest, MissingFileIsNullopt) {
  TempDir dir;
  auto loaded = LoadIdentity(dir.path());
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_FALSE(loaded->has_value());
}

TEST(IdentityTest, MissingDataDirIsNulloptToo) {
  TempDir dir;
  auto loaded = LoadIdentity(dir.path() + "/no/such/dir");
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_FALSE(loaded->has_value());
}

TEST(IdentityTest, UnreadableIdentityIsIOError) {
  TempDir dir;
  // A directory where the file should be: open succeeds, read fails with EISDIR.
  ASSERT_TRUE(std::filesystem::create_directory(IdentityPath(dir.path())));
  auto loaded = LoadIdentity(dir.path());
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), StatusCode::kIOError) << loaded.status().ToString();
  EXPECT_NE(loaded.status().message().find(IdentityPath(dir.path())), std::string::npos);
}

TEST(IdentityTest, GarbageTruncatedAndEmptyFilesAreCorruption) {
  TempDir dir;
  const std::string path = IdentityPath(dir.path());
  ASSERT_TRUE(SaveIdentity(dir.path(), Sample()).ok());
  const std::string good = ReadFile(path);

  std::string binary(300, '\0');
  for (std::size_t i = 0; i < binary.size(); ++i) binary[i] = static_cast<char>(i * 37 + 11);
  const std::string cases[] = {
      "",      // empty: every field missing
      binary,  // random bytes
      std::string("format = 1\0rank = 2", 19),
      "this is not toml",
      "format = 1\ncluster_id = \"0011",  // torn inside a string
      "[format]\n",                       // a table where a value belongs
      good.substr(0, good.size() / 2),    // truncated mid-file
      good + "rank = 3\n",                // a key twice
  };
  for (const std::string& c : cases) {
    WriteFile(path, c);
    auto loaded = LoadIdentity(dir.path());
    EXPECT_TRUE(IsCorruptionNaming(loaded, path, "")) << "contents: " << c;
  }
  // Every prefix of a good file cut before the last value fails (the file ends with
  // "resync_next_window = 17\n"; a cut inside "17" would be a valid file: hence the rename).
  ASSERT_EQ(good.substr(good.size() - 4), " 17\n");
  for (std::size_t n = 0; n < good.size() - 3; ++n) {
    WriteFile(path, good.substr(0, n));
    auto loaded = LoadIdentity(dir.path());
    EXPECT_FALSE(loaded.ok()) << "prefix of " << n << " bytes loaded";
  }
  WriteFile(path, std::string(100 * 1024, '#'));
  EXPECT_TRUE(IsCorruptionNaming(LoadIdentity(dir.path()), path, "larger than"));
}

TEST(IdentityTest, InvalidValuesAreCorruption) {
  TempDir dir;
  const std::string path = IdentityPath(dir.path());
  struct Case {
    std::string key;
    std::string line;
    std::string what;  // expected in the message
  };
  const Case cases[] = {
      {"format", "format = 2", "format 2"},
      {"format", "format = \"1\"", "format"},
      {"format", "", "format"},
      {"cluster_id", "cluster_id = \"0011223344556677\"", "cluster_id"},
      {"cluster_id", "cluster_id = \"00112233445566778899aabbccddeefg\"", "cluster_id"},
      {"cluster_id", "cluster_id = \"00112233445566778899aabbccddeeff00\"", "cluster_id"},
      {"cluster_id", "cluster_id = 12", "cluster_id"},
      {"cluster_id", "", "cluster_id"},
      {"rank", "rank = 0", "rank 0"},
      {"rank", "rank = 255", "rank 255"},
      {"rank", "rank = -1", "rank -1"},
      {"rank", "rank = 2.0", "rank"},
      {"rank", "rank = true", "rank"},
      {"rank", "", "rank"},
      {"voting", "voting = 1", "voting"},
      {"voting", "", "voting"},
      {"voters", "voters = [1, 0]", "voter 0"},
      {"voters", "voters = [255]", "voter 255"},
      {"voters", "voters = [1, \"2\"]", "voters[1]"},
      {"voters", "voters = 3", "voters"},
      {"voters", "", "voters"},
      {"resync_active", "resync_active = \"yes\"", "resync_active"},
      {"resync_join", "", "resync_join"},
      {"resync_next_window", "resync_next_window = -1", "negative"},
      {"resync_next_window", "resync_next_window = 1.5", "resync_next_window"},
      {"resync_next_window", "", "resync_next_window"},
      {"write_ts_floor", "write_ts_floor = -1", "negative"},
      {"write_ts_floor", "write_ts_floor = 1.5", "write_ts_floor"},
      {"write_ts_floor", "write_ts_floor = \"5\"", "write_ts_floor"},
      {"write_ts_floor", "write_ts_floor = true", "write_ts_floor"},
      {"write_ts_floor", "write_ts_floor = 9223372036854775808", ""},  // beyond int64
      {"write_ts_lease", "write_ts_lease = -1", "negative"},
      {"write_ts_lease", "write_ts_lease = 1.5", "write_ts_lease"},
      {"write_ts_lease", "write_ts_lease = \"5\"", "write_ts_lease"},
      {"extra", "extra = 1", "unknown key \"extra\""},
  };
  for (const Case& c : cases) {
    WriteFile(path, ValidFileWith(c.key, c.line));
    EXPECT_TRUE(IsCorruptionNaming(LoadIdentity(dir.path()), path, c.what)) << c.line;
  }
  // The unmodified file loads: the cases above fail for their own reason.
  WriteFile(path, ValidFileWith("none", "# nothing"));
  auto loaded = LoadIdentity(dir.path());
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_TRUE(loaded->has_value());
}

// write_ts_lease came later still: a file without it loads with no lease (every write then
// persists its own copy first, docs/REGISTER.md), and the next save writes it.
TEST(IdentityTest, WriteTsLeaseIsOptionalOnLoadAndAlwaysSaved) {
  TempDir dir;
  const std::string path = IdentityPath(dir.path());
  WriteFile(path, ValidFileWith("write_ts_lease", ""));
  auto loaded = LoadIdentity(dir.path());
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  ASSERT_TRUE(loaded->has_value());
  EXPECT_EQ((*loaded)->write_ts_lease, 0u);
  ASSERT_TRUE(SaveIdentity(dir.path(), **loaded).ok());
  EXPECT_NE(ReadFile(path).find("\nwrite_ts_lease = 0\n"), std::string::npos);
  WriteFile(path, ValidFileWith("write_ts_lease", "write_ts_lease = 16777216"));
  loaded = LoadIdentity(dir.path());
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ((*loaded)->write_ts_lease, 16777216u);
}

// write_ts_floor came after the first IDENTITY files: a file without it loads with no floor,
// and the next save writes it.
TEST(IdentityTest, WriteTsFloorIsOptionalOnLoadAndAlwaysSaved) {
  TempDir dir;
  const std::string path = IdentityPath(dir.path());
  WriteFile(path, ValidFileWith("write_ts_floor", ""));
  auto loaded = LoadIdentity(dir.path());
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  ASSERT_TRUE(loaded->has_value());
  EXPECT_EQ((*loaded)->write_ts_floor, 0u);

  WriteFile(path, ValidFileWith("write_ts_floor", "write_ts_floor = 123456789"));
  loaded = LoadIdentity(dir.path());
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ((*loaded)->write_ts_floor, 123456789u);

  Identity id = Sample();
  id.write_ts_floor = 0;
  ASSERT_TRUE(SaveIdentity(dir.path(), id).ok());
  EXPECT_NE(ReadFile(path).find("\nwrite_ts_floor = 0\n"), std::string::npos);
  id.write_ts_floor = 42;
  ASSERT_TRUE(SaveIdentity(dir.path(), id).ok());
  EXPECT_NE(ReadFile(path).find("\nwrite_ts_floor = 42\n"), std::string::npos);
  loaded = LoadIdentity(dir.path());
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ(**loaded, id);
}

TEST(IdentityTest, UnsortedDuplicateVotersAreNormalised) {
  TempDir dir;
  WriteFile(IdentityPath(dir.path()), ValidFileWith("voters", "voters = [3, 1, 254, 3, 1]"));
  auto loaded = LoadIdentity(dir.path());
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ((*loaded)->voters, (std::vector<Rank>{1, 3, 254}));

  // Saving normalises too: the file on disk is always sorted and unique.
  Identity id = Sample();
  id.voters = {5, 2, 5, 1};
  ASSERT_TRUE(SaveIdentity(dir.path(), id).ok());
  loaded = LoadIdentity(dir.path());
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ((*loaded)->voters, (std::vector<Rank>{1, 2, 5}));
  EXPECT_NE(ReadFile(IdentityPath(dir.path())).find("voters = [1, 2, 5]"), std::string::npos);
}

TEST(IdentityTest, UppercaseClusterIdIsAccepted) {
  TempDir dir;
  WriteFile(IdentityPath(dir.path()),
            ValidFileWith("cluster_id", "cluster_id = \"00112233445566778899AABBCCDDEEFF\""));
  auto loaded = LoadIdentity(dir.path());
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ((*loaded)->cluster_id, Sample().cluster_id);
}

TEST(IdentityTest, LeftoverTempFileDoesNotMatter) {
  TempDir dir;
  const std::string tmp = IdentityPath(dir.path()) + ".tmp";
  WriteFile(tmp, "garbage from a crash mid-save");
  auto loaded = LoadIdentity(dir.path());
  ASSERT_TRUE(loaded.ok());
  EXPECT_FALSE(loaded->has_value());

  ASSERT_TRUE(SaveIdentity(dir.path(), Sample()).ok());
  WriteFile(tmp, "more garbage");
  ASSERT_EQ(::chmod(tmp.c_str(), 0644), 0);
  loaded = LoadIdentity(dir.path());
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ(**loaded, Sample());

  // The next save replaces the leftover, and the result is still private.
  Identity id = Sample();
  id.resync_next_window = 99;
  ASSERT_TRUE(SaveIdentity(dir.path(), id).ok());
  loaded = LoadIdentity(dir.path());
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ(**loaded, id);
  EXPECT_FALSE(std::filesystem::exists(tmp));
  struct stat st;
  ASSERT_EQ(::stat(IdentityPath(dir.path()).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST(IdentityTest, SaveOverAnExistingFile) {
  TempDir dir;
  Identity id = Sample();
  for (std::uint64_t w = 0; w < 5; ++w) {
    id.resync_next_window = w;
    id.voting = w % 2 == 0;
    id.AddVoter(static_cast<Rank>(10 + w));
    ASSERT_TRUE(SaveIdentity(dir.path(), id).ok());
    auto loaded = LoadIdentity(dir.path());
    ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
    EXPECT_EQ(**loaded, id);
  }
}

TEST(IdentityTest, SaveIntoAMissingOrUnusableDirIsIOError) {
  TempDir dir;
  const std::string file = dir.path() + "/plain";
  WriteFile(file, "not a directory");
  for (const std::string& bad : {dir.path() + "/missing", file, std::string()}) {
    Status s = SaveIdentity(bad, Sample());
    ASSERT_FALSE(s.ok()) << bad;
    EXPECT_EQ(s.code(), StatusCode::kIOError) << s.ToString();
    if (!bad.empty()) {
      EXPECT_NE(s.message().find(bad + "/IDENTITY.tmp"), std::string::npos) << s.ToString();
    }
  }
  EXPECT_EQ(ReadFile(file), "not a directory");

  // The identity path is taken by a directory: the rename fails, and the leftover temp file
  // is removed.
  std::filesystem::create_directory(IdentityPath(dir.path()));
  std::filesystem::create_directory(IdentityPath(dir.path()) + "/x");
  Status s = SaveIdentity(dir.path(), Sample());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kIOError);
  EXPECT_NE(s.message().find("rename"), std::string::npos) << s.ToString();
  EXPECT_FALSE(std::filesystem::exists(IdentityPath(dir.path()) + ".tmp"));
}

TEST(IdentityTest, FailedSaveLeavesThePreviousFile) {
  TempDir dir;
  ASSERT_TRUE(SaveIdentity(dir.path(), Sample()).ok());
  // A directory at the temp path that unlink cannot remove: the save fails before touching
  // IDENTITY.
  const std::string tmp = IdentityPath(dir.path()) + ".tmp";
  std::filesystem::create_directory(tmp);
  Identity id = Sample();
  id.rank = 3;
  Status s = SaveIdentity(dir.path(), id);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kIOError);
  EXPECT_NE(s.message().find(tmp), std::string::npos) << s.ToString();
  auto loaded = LoadIdentity(dir.path());
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ(**loaded, Sample());
}

TEST(IdentityDeathTest, SavingAnInvalidIdentityIsABug) {
  TempDir dir;
  Identity id = Sample();
  id.rank = 0;
  EXPECT_DEATH((void)SaveIdentity(dir.path(), id), "ValidRank");
  id = Sample();
  id.voters = {1, 255};
  EXPECT_DEATH((void)SaveIdentity(dir.path(), id), "ValidRank");
}

TEST(IdentityTest, AddVoterAndHasVoter) {
  Identity id;
  EXPECT_FALSE(id.HasVoter(1));
  EXPECT_TRUE(id.AddVoter(3));
  EXPECT_TRUE(id.AddVoter(1));
  EXPECT_TRUE(id.AddVoter(254));
  EXPECT_TRUE(id.AddVoter(2));
  EXPECT_FALSE(id.AddVoter(3));
  EXPECT_FALSE(id.AddVoter(1));
  EXPECT_EQ(id.voters, (std::vector<Rank>{1, 2, 3, 254}));
  for (Rank r : {1, 2, 3, 254}) EXPECT_TRUE(id.HasVoter(r)) << int(r);
  for (Rank r : {0, 4, 253, 255}) EXPECT_FALSE(id.HasVoter(r)) << int(r);
}

TEST(IdentityTest, ParseUuid) {
  auto u = ParseUuid("00112233445566778899aabbccddeeff");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->bytes[0], 0x00);
  EXPECT_EQ(u->bytes[1], 0x11);
  EXPECT_EQ(u->bytes[15], 0xff);
  EXPECT_EQ(u->ToString(), "00112233445566778899aabbccddeeff");
  auto upper = ParseUuid("00112233445566778899AaBbCcDdEeFf");
  ASSERT_TRUE(upper.ok());
  EXPECT_EQ(*upper, *u);
  for (const std::string& bad : std::vector<std::string>{
           "", "0", "00112233445566778899aabbccddeef", "00112233445566778899aabbccddeeff0",
           "00112233-4455-6677-8899-aabbccddeeff", "g0112233445566778899aabbccddeeff",
           " 0112233445566778899aabbccddeeff", "0x112233445566778899aabbccddeeff",
           std::string(32, '\0'), std::string(1000, 'a')}) {
    auto r = ParseUuid(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_LT(r.status().message().size(), 100u);
  }
}

// genesis and registering are written only while true (an older binary reads every other
// IDENTITY), load back, and are refused on a voting identity.
TEST(IdentityTest, GenesisAndRegisteringAreWrittenOnlyWhileTrue) {
  TempDir dir;
  const std::string path = IdentityPath(dir.path());
  Identity id = Sample();
  id.voting = false;
  id.genesis = false;
  id.registering = false;
  ASSERT_TRUE(SaveIdentity(dir.path(), id).ok());
  EXPECT_EQ(ReadFile(path).find("genesis"), std::string::npos);
  EXPECT_EQ(ReadFile(path).find("registering"), std::string::npos);
  for (auto [genesis, registering] : {std::pair{true, false}, std::pair{false, true}}) {
    id.genesis = genesis;
    id.registering = registering;
    ASSERT_TRUE(SaveIdentity(dir.path(), id).ok());
    auto loaded = LoadIdentity(dir.path());
    ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
    EXPECT_EQ(**loaded, id);
  }
  WriteFile(path, ValidFileWith("voting", "voting = true") + "genesis = true\n");
  EXPECT_TRUE(IsCorruptionNaming(LoadIdentity(dir.path()), path, "genesis is set on a voting"));
  WriteFile(path, ValidFileWith("voting", "voting = true") + "registering = true\n");
  EXPECT_TRUE(IsCorruptionNaming(LoadIdentity(dir.path()), path, "registering is set on a"));
  WriteFile(path, ValidFileWith("voting", "voting = false") + "genesis = 1\n");
  EXPECT_TRUE(IsCorruptionNaming(LoadIdentity(dir.path()), path, "\"genesis\" is not a boolean"));
}

}  // namespace
}  // namespace atomdisk
