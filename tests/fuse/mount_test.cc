// ParseMountOptions: our -o options are taken out and parsed, the rest go to libfuse.
#include "fuse/mount.h"

#include <gtest/gtest.h>

namespace atomdisk::fuse {
namespace {

TEST(ParseMountOptionsTest, DefaultsWithoutOptions) {
  MountTuning t;
  ASSERT_TRUE(ParseMountOptions({}, &t).ok());
  EXPECT_FALSE(t.cached);
  EXPECT_TRUE(t.parallel_direct_writes);
  EXPECT_EQ(t.op_timeout, std::chrono::milliseconds(5000));
  EXPECT_TRUE(t.fuse_options.empty());
}

TEST(ParseMountOptionsTest, SplitsOursFromLibfuses) {
  MountTuning t;
  ASSERT_TRUE(ParseMountOptions({"timeout=2.5,allow_other", "cached,threads=8", "ro,,"}, &t).ok());
  EXPECT_EQ(t.op_timeout, std::chrono::milliseconds(2500));
  EXPECT_TRUE(t.cached);
  EXPECT_EQ(t.threads, 8u);
  EXPECT_EQ(t.fuse_options, (std::vector<std::string>{"allow_other", "ro"}));
}

TEST(ParseMountOptionsTest, AllOfOurs) {
  MountTuning t;
  ASSERT_TRUE(ParseMountOptions({"attempt_timeout=0.3,inflight=64,max_background=32,clone_fd,"
                                 "no_parallel_writes,cached,direct"},
                                &t)
                  .ok());
  EXPECT_EQ(t.attempt_timeout, std::chrono::milliseconds(300));
  EXPECT_EQ(t.max_inflight, 64u);
  EXPECT_EQ(t.max_background, 32);
  EXPECT_TRUE(t.clone_fd);
  EXPECT_FALSE(t.parallel_direct_writes);
  EXPECT_FALSE(t.cached);  // the last of cached/direct wins
}

TEST(ParseMountOptionsTest, RejectsBadValuesWithTheirName) {
  for (const char* bad :
       {"timeout=", "timeout=abc", "timeout=-1", "timeout=0", "timeout=1e9", "threads=0",
        "threads=x", "inflight=0", "max_background=70000", "attempt_timeout=nan"}) {
    MountTuning t;
    Status s = ParseMountOptions({bad}, &t);
    ASSERT_FALSE(s.ok()) << bad;
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find(bad), std::string::npos) << s.message();
  }
}

TEST(ParseMountOptionsTest, MetricsAddress) {
  MountTuning t;
  EXPECT_EQ(t.metrics_port, 0);  // off by default
  ASSERT_TRUE(ParseMountOptions({"cached,metrics=127.0.0.1:9102"}, &t).ok());
  EXPECT_EQ(t.metrics_host, "127.0.0.1");
  EXPECT_EQ(t.metrics_port, 9102);
  for (const char* bad : {"metrics=", "metrics=9102", "metrics=h:0", "metrics=h:99999"}) {
    MountTuning u;
    Status s = ParseMountOptions({bad}, &u);
    ASSERT_FALSE(s.ok()) << bad;
    EXPECT_NE(s.message().find(bad), std::string::npos) << s.message();
  }
}

TEST(ParseMountOptionsTest, KeyWithoutValueGoesToLibfuse) {
  MountTuning t;
  ASSERT_TRUE(ParseMountOptions({"timeout"}, &t).ok());  // libfuse will reject it by name
  EXPECT_EQ(t.fuse_options, (std::vector<std::string>{"timeout"}));
}

}  // namespace
}  // namespace atomdisk::fuse
