// The metrics registry: the text exposition format, histogram buckets, concurrent updates.
#include "common/metrics.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <limits>
#include <string>
#include <thread>
#include <vector>

namespace atomdisk::metrics {
namespace {

TEST(MetricsTest, RendersFamiliesOnceWithEverySeries) {
  Registry r;
  Counter& reads = r.AddCounter("x_requests_total", "Requests.", {{"op", "read"}});
  Counter& writes = r.AddCounter("x_requests_total", "Requests.", {{"op", "write"}});
  Gauge& g = r.AddGauge("x_in_flight", "In flight.");
  reads.Add(3);
  writes.Add();
  writes.Add(2);
  g.Set(2.5);
  EXPECT_EQ(r.Render(),
            "# HELP x_requests_total Requests.\n"
            "# TYPE x_requests_total counter\n"
            "x_requests_total{op=\"read\"} 3\n"
            "x_requests_total{op=\"write\"} 3\n"
            "# HELP x_in_flight In flight.\n"
            "# TYPE x_in_flight gauge\n"
            "x_in_flight 2.5\n");
  g.Add(-3);
  EXPECT_NE(r.Render().find("x_in_flight -0.5\n"), std::string::npos);
}

TEST(MetricsTest, HistogramBucketsAreCumulativeAndInclusive) {
  Registry r;
  Histogram& h = r.AddHistogram("x_seconds", "Latency.", {0.001, 0.01, 0.1}, {{"op", "read"}});
  h.Observe(0.0005);  // bucket 0.001
  h.Observe(0.001);   // exactly a bound: still that bucket (le = less or equal)
  h.Observe(0.005);   // 0.01
  h.Observe(0.5);     // +Inf only
  h.Observe(2);       // +Inf only
  EXPECT_EQ(r.Render(),
            "# HELP x_seconds Latency.\n"
            "# TYPE x_seconds histogram\n"
            "x_seconds_bucket{op=\"read\",le=\"0.001\"} 2\n"
            "x_seconds_bucket{op=\"read\",le=\"0.01\"} 3\n"
            "x_seconds_bucket{op=\"read\",le=\"0.1\"} 3\n"
            "x_seconds_bucket{op=\"read\",le=\"+Inf\"} 5\n"
            "x_seconds_sum{op=\"read\"} 2.5065\n"
            "x_seconds_count{op=\"read\"} 5\n");
  EXPECT_EQ(h.BucketCounts(), (std::vector<std::uint64_t>{2, 1, 0, 2}));
}

TEST(MetricsTest, HistogramWithoutLabelsHasOnlyLe) {
  Registry r;
  Histogram& h = r.AddHistogram("x_batch", "Batch.", {1, 4});
  h.Observe(3);
  const std::string text = r.Render();
  EXPECT_NE(text.find("x_batch_bucket{le=\"1\"} 0\n"), std::string::npos) << text;
  EXPECT_NE(text.find("x_batch_bucket{le=\"4\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("x_batch_sum 3\n"), std::string::npos) << text;
}

TEST(MetricsTest, LatencyBucketsSpanTenMicrosToTenSeconds) {
  std::vector<double> b = LatencyBuckets();
  ASSERT_EQ(b.size(), 21u);
  EXPECT_DOUBLE_EQ(b.front(), 10e-6);
  EXPECT_NEAR(b.back(), 10.48576, 1e-9);
  EXPECT_EQ(ExponentialBuckets(1, 2, 4), (std::vector<double>{1, 2, 4, 8}));
}

TEST(MetricsTest, EscapesLabelValuesAndHelp) {
  Registry r;
  r.AddGauge("x_info", "Line one\\two\nthree.", {{"v", "a\"b\\c\nd"}}).Set(1);
  EXPECT_EQ(r.Render(),
            "# HELP x_info Line one\\\\two\\nthree.\n"
            "# TYPE x_info gauge\n"
            "x_info{v=\"a\\\"b\\\\c\\nd\"} 1\n");
}

TEST(MetricsTest, FormatsSpecialValues) {
  EXPECT_EQ(FormatValue(0), "0");
  EXPECT_EQ(FormatValue(1e-5), "1e-05");
  EXPECT_EQ(FormatValue(123456789012.0), "123456789012");
  EXPECT_EQ(FormatValue(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(FormatValue(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(FormatValue(std::nan("")), "NaN");
}

TEST(MetricsTest, OnRenderRunsBeforeEachRender) {
  Registry r;
  Gauge& g = r.AddGauge("x_g", "G.");
  int calls = 0;
  r.OnRender([&] { g.Set(++calls); });
  EXPECT_NE(r.Render().find("x_g 1\n"), std::string::npos);
  EXPECT_NE(r.Render().find("x_g 2\n"), std::string::npos);
}

TEST(MetricsDeathTest, RefusesInvalidNamesAndDuplicateSeries) {
  Registry r;
  EXPECT_DEATH(r.AddCounter("1x", "bad"), "");
  EXPECT_DEATH(r.AddCounter("x", "h", {{"le", "1"}}), "");
  r.AddCounter("x_total", "h", {{"a", "1"}});
  EXPECT_DEATH(r.AddCounter("x_total", "h", {{"a", "1"}}), "");
  EXPECT_DEATH(r.AddGauge("x_total", "h", {{"a", "2"}}), "");
}

// Writers on several threads while another renders: nothing is lost (run under TSan in CI).
TEST(MetricsTest, ConcurrentUpdatesAreAllCounted) {
  Registry r;
  Counter& c = r.AddCounter("x_total", "C.");
  Histogram& h = r.AddHistogram("x_seconds", "H.", LatencyBuckets());
  Gauge& g = r.AddGauge("x_g", "G.");
  constexpr int kThreads = 4, kPerThread = 20000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kPerThread; ++i) {
        c.Add();
        h.Observe(0.001);
        g.Add(1);
      }
    });
  }
  // At least one render, even when the writers finish before this thread first looks (it
  // happened on a loaded 2-core machine: renders was 0).
  std::size_t renders = 0;
  do {
    renders += r.Render().empty() ? 0 : 1;
  } while (c.value() < kThreads * kPerThread);
  for (auto& t : threads) t.join();
  const std::string text = r.Render();
  EXPECT_NE(text.find("x_total 80000\n"), std::string::npos);
  EXPECT_NE(text.find("x_seconds_count 80000\n"), std::string::npos);
  EXPECT_NE(text.find("x_g 80000\n"), std::string::npos);
  EXPECT_GT(renders, 0u);
}

// A publication (made while a Registry::Publication is alive) is seen whole: a gauge set first and
// a counter set last, to the same value, always render equal (atomdiskd's in-flight gauge against
// its auth-failure counter once rendered one snapshot apart).
TEST(MetricsTest, ARenderShowsAPublicationWholeOrNotAtAll) {
  Registry r;
  Gauge& first = r.AddGauge("a_first", "Set first.");
  std::vector<Gauge*> middle;
  for (int i = 0; i < 50; ++i) {
    middle.push_back(&r.AddGauge("b_middle", "Padding.", {{"i", std::to_string(i)}}));
  }
  Counter& last = r.AddCounter("c_last_total", "Set last.");
  std::atomic<bool> stop{false};
  std::thread publisher([&] {
    for (std::uint64_t v = 1; !stop.load(); ++v) {
      {
        const Registry::Publication publication(r);
        first.Set(static_cast<double>(v));
        // A slow publication, so that without the publication mutex about one render in ten
        // would land inside one.
        std::this_thread::sleep_for(std::chrono::microseconds(200));
        for (Gauge* g : middle) g->Set(static_cast<double>(v));
        last.Set(v);
      }
      // atomdiskd publishes every 100 ms; a gap of 2 ms still gives many publications over
      // the renders, even sanitizer-built.
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });
  auto value = [](const std::string& text, const std::string& name) {
    const std::size_t at = text.find("\n" + name + " ");
    EXPECT_NE(at, std::string::npos) << name;
    return at == std::string::npos ? -1.0 : std::stod(text.substr(at + name.size() + 2));
  };
  int renders = 0, moved = 0;
  std::vector<int> torn;
  double previous = 0;
  // At least 1000 renders, and on until the publisher has moved 20 times: a loaded machine
  // may not schedule it at all during the first 1000 (about 10 ms).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  for (; (renders < 1000 || moved < 20) && std::chrono::steady_clock::now() < deadline; ++renders) {
    const std::string text = r.Render();
    const double a = value(text, "a_first"), c = value(text, "c_last_total");
    if (a != c) torn.push_back(renders);
    moved += a != previous ? 1 : 0;
    previous = a;
  }
  stop = true;
  publisher.join();
  EXPECT_TRUE(torn.empty()) << torn.size() << " of " << renders << " renders tore a publication";
  EXPECT_GE(moved, 20) << "the publisher hardly ran during the renders";
}

}  // namespace
}  // namespace atomdisk::metrics
