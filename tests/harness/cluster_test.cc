// Tests of the integration-test harness itself (tests/harness/cluster.h): node life cycle,
// clean-up, and RunProcess.
#include "tests/harness/cluster.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <set>

namespace atomdisk::testing {
namespace {

using std::chrono::milliseconds;

TEST(HarnessTest, RunProcessCapturesOutputExitCodeAndStdin) {
  ProcessResult r = RunProcess({"/bin/sh", "-c", "cat; echo out; echo err >&2; exit 3"},
                               RunOptions{.stdin_data = "in\n"});
  EXPECT_EQ(r.exit_code, 3) << r.Describe();
  EXPECT_EQ(r.out, "in\nout\n");
  EXPECT_EQ(r.err, "err\n");
  EXPECT_FALSE(r.timed_out);
}

TEST(HarnessTest, RunProcessKillsAProgramThatOutlivesItsDeadline) {
  auto t0 = std::chrono::steady_clock::now();
  ProcessResult r = RunProcess({"/bin/sleep", "30"}, RunOptions{.timeout = milliseconds(200)});
  EXPECT_TRUE(r.timed_out);
  EXPECT_EQ(r.signal, SIGKILL);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, milliseconds(10000));
}

TEST(HarnessTest, NodeLifeCycleAndCleanUp) {
  if (!TestCluster::DaemonAvailable()) {
    GTEST_SKIP() << "atomdiskd not built at " << TestCluster::DaemonPath();
  }
  std::string dir;
  {
    auto cluster = TestCluster::Start({.nodes = 3, .sectors = 64});
    ASSERT_TRUE(cluster.ok()) << cluster.status().ToString();
    TestCluster& c = **cluster;
    dir = c.dir();
    EXPECT_TRUE(std::filesystem::exists(c.config_path()));
    std::set<std::string> addresses;
    for (int r = 1; r <= 3; ++r) {
      EXPECT_TRUE(c.IsRunning(r));
      EXPECT_GT(c.Pid(r), 0);
      addresses.insert(c.Address(r));
    }
    EXPECT_EQ(addresses.size(), 3u);
    EXPECT_TRUE(c.Kill9(2).ok());
    EXPECT_FALSE(c.IsRunning(2));
    EXPECT_EQ(c.Pid(2), -1);
    EXPECT_TRUE(c.Restart(2).ok());
    EXPECT_TRUE(c.IsRunning(2));
    Status stop = c.Stop(3);
    EXPECT_TRUE(stop.ok()) << stop.ToString();
    EXPECT_FALSE(c.IsRunning(3));
    EXPECT_TRUE(c.StartNode(3).ok());
    EXPECT_FALSE(c.StartNode(3).ok());  // already running
    EXPECT_FALSE(c.LogTail(1).empty());
  }
  EXPECT_FALSE(std::filesystem::exists(dir)) << dir << " was not removed";
}

TEST(HarnessTest, StartFailureReportsTheLog) {
  auto cluster = TestCluster::Start({.nodes = 1, .daemon = "/bin/false"});
  ASSERT_FALSE(cluster.ok());
  EXPECT_NE(cluster.status().message().find("node 1 exited with status 1"), std::string::npos)
      << cluster.status().ToString();
}

}  // namespace
}  // namespace atomdisk::testing
