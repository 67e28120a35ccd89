// Runs the atomdisk-lincheck binary on small files and checks its exit status and output.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

namespace atomdisk {
namespace {

struct CliRun {
  int exit_code = -1;
  std::string out;
  std::string err;
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

class LinCheckCliTest : public ::testing::Test {
 protected:
  std::string Path(const std::string& name) {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    return ::testing::TempDir() + "lincheck_cli_" + info->name() + "_" + name;
  }

  std::string WriteHistory(const std::string& text) {
    const std::string path = Path("history.jsonl");
    std::ofstream(path) << text;
    return path;
  }

  CliRun Invoke(const std::string& args) {
    const std::string out = Path("stdout");
    const std::string err = Path("stderr");
    const std::string command =
        std::string(ATOMDISK_LINCHECK_BIN) + " " + args + " >" + out + " 2>" + err;
    const int status = std::system(command.c_str());
    CliRun run;
    if (status != -1 && WIFEXITED(status)) run.exit_code = WEXITSTATUS(status);
    run.out = ReadFile(out);
    run.err = ReadFile(err);
    return run;
  }
};

constexpr char kWriteA[] =
    R"({"client":1,"op":"write","key":5,"value":"a","call":0,"return":10,"ok":true})"
    "\n";
constexpr char kWriteB[] =
    R"({"client":1,"op":"write","key":5,"value":"b","call":20,"return":30,"ok":true})"
    "\n";
constexpr char kReadA[] =
    R"({"client":2,"op":"read","key":5,"value":"a","call":40,"return":50,"ok":true})"
    "\n";
constexpr char kReadB[] =
    R"({"client":2,"op":"read","key":5,"value":"b","call":40,"return":50,"ok":true})"
    "\n";

TEST_F(LinCheckCliTest, Linearizable) {
  const CliRun run = Invoke(WriteHistory(std::string(kWriteA) + kWriteB + kReadB));
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.out, "linearizable: 3 ops on 1 keys\n");
}

TEST_F(LinCheckCliTest, NotLinearizable) {
  const CliRun run = Invoke(WriteHistory(std::string(kWriteA) + kWriteB + kReadA));
  EXPECT_EQ(run.exit_code, 1) << run.err;
  EXPECT_EQ(run.out.rfind("NOT linearizable: key 5: ", 0), 0u) << run.out;
}

TEST_F(LinCheckCliTest, GivesUp) {
  // Writing "b" twice makes the checker use its search, which has a state limit.
  const CliRun run =
      Invoke(WriteHistory(std::string(kWriteA) + kWriteB + kWriteB + kReadB) + " --max-states 2");
  EXPECT_EQ(run.exit_code, 2) << run.err;
  EXPECT_EQ(run.out.rfind("gave up: key 5: ", 0), 0u) << run.out;
}

TEST_F(LinCheckCliTest, BadLineIsReportedWithItsNumber) {
  const CliRun run = Invoke(WriteHistory(std::string(kWriteA) + "\n{\"client\":1}\n"));
  EXPECT_EQ(run.exit_code, 3);
  EXPECT_NE(run.err.find("line 3: "), std::string::npos) << run.err;
}

TEST_F(LinCheckCliTest, MissingFileAndBadUsage) {
  EXPECT_EQ(Invoke(Path("does-not-exist")).exit_code, 3);
  EXPECT_EQ(Invoke("").exit_code, 3);
  EXPECT_EQ(Invoke(WriteHistory(kWriteA) + " --max-states lots").exit_code, 3);
  EXPECT_EQ(Invoke("--help").exit_code, 0);
}

TEST_F(LinCheckCliTest, ReadsStandardInput) {
  const CliRun run = Invoke("- <" + WriteHistory(std::string(kWriteA) + kReadA));
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.out, "linearizable: 2 ops on 1 keys\n");
}

}  // namespace
}  // namespace atomdisk
