// Metrics: counters, gauges and histograms rendered in the Prometheus text exposition format
// (version 0.0.4), for atomdiskd's and atomdisk-fuse's `GET /metrics` (common/metrics_server.h).
//
//   metrics::Registry registry;
//   metrics::Counter& ops = registry.AddCounter("atomdisk_client_requests_total", "...",
//                                               {{"op", "read"}, {"outcome", "ok"}});
//   metrics::Histogram& lat = registry.AddHistogram("atomdisk_client_request_duration_seconds",
//                                                   "...", metrics::LatencyBuckets());
//   ops.Add();  lat.Observe(0.00042);
//   std::string text = registry.Render();
//
// Series that share a name form one family (one HELP and TYPE line); each Add* call adds one
// series with its own label values, and a name with a different type or help is a bug.
//
// Ownership and threading: the Registry owns its metrics; the references Add* returns stay
// valid for the Registry's lifetime. Add* and Render take the registry's own mutex (never
// held by an update). Updates (Add, Set, Observe) are relaxed atomics, wait-free for counters
// and gauges, and may run on any thread concurrently with Render. A histogram rendered while
// it is observed may show an observation in its buckets but not yet in its sum; its _count
// always equals its +Inf bucket.
//
// A snapshot published as many Sets (atomdiskd's NodeMetrics::Publish) is made while a
// Registry::Publication is alive, and a Render shows all of it or none of it: the
// Publication holds the registry's publication mutex, and so does Render while it reads. Without it
// a scrape could pair a new counter with an old gauge, such as auth failures from this snapshot
// with the requests in flight from the one before. A publisher waits at most one render (tens of
// microseconds, once a scrape); updates outside a publication never wait. (A seqlock, where the
// publisher never waits, was tried first: its reader had to give up after a bounded number of
// retries and could then render torn if the publisher was preempted mid-publication, which a loaded
// two-core machine did in CI.)
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace atomdisk::metrics {

using Labels = std::vector<std::pair<std::string, std::string>>;

// A value that only grows (a count of events since the process started).
class Counter {
 public:
  void Add(std::uint64_t n = 1) { value_.fetch_add(n, std::memory_order_relaxed); }
  // For a counter that mirrors another monotonic count (copied in by its owner).
  void Set(std::uint64_t v) { value_.store(v, std::memory_order_relaxed); }
  std::uint64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> value_{0};
};

// A value that goes up and down.
class Gauge {
 public:
  void Set(double v) { value_.store(v, std::memory_order_relaxed); }
  void Add(double d) { value_.fetch_add(d, std::memory_order_relaxed); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

// Observations counted into buckets with fixed upper bounds (rendered cumulatively, as
// Prometheus wants, with the implicit +Inf bucket last), and their sum.
class Histogram {
 public:
  // `bounds`: strictly increasing, finite (checked: a bug otherwise).
  explicit Histogram(std::vector<double> bounds);
  // Counts `v` into the first bucket whose bound is >= v (the +Inf bucket past the last).
  void Observe(double v);
  const std::vector<double>& bounds() const { return bounds_; }
  // Per-bucket (not cumulative) counts; the last one is the +Inf bucket.
  std::vector<std::uint64_t> BucketCounts() const;
  double sum() const { return sum_.load(std::memory_order_relaxed); }

 private:
  const std::vector<double> bounds_;
  std::unique_ptr<std::atomic<std::uint64_t>[]> counts_;  // bounds_.size() + 1
  std::atomic<double> sum_{0};
};

// Bounds start, start*factor, ... (`count` of them).
std::vector<double> ExponentialBuckets(double start, double factor, int count);
// 10 us .. 10.5 s, doubling: client, FUSE and store latencies.
std::vector<double> LatencyBuckets();

class Registry {
 public:
  Registry() = default;
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // `name` and label names must be valid Prometheus names ([a-zA-Z_:][a-zA-Z0-9_:]*, labels
  // without ':'), a series' label set unique within its family: checked, a bug otherwise.
  Counter& AddCounter(const std::string& name, const std::string& help, Labels labels = {});
  Gauge& AddGauge(const std::string& name, const std::string& help, Labels labels = {});
  Histogram& AddHistogram(const std::string& name, const std::string& help,
                          std::vector<double> bounds, Labels labels = {});

  // Runs before every Render (on the rendering thread), for values read from thread-safe
  // sources at scrape time. Must not call back into this registry's Add*/Render.
  void OnRender(std::function<void()> fn);

  // One snapshot's updates are made while one of these is alive (one publisher at a time;
  // not nested). Constructing it waits while a Render reads the values.
  class Publication {
   public:
    explicit Publication(const Registry& registry) : lock_(registry.publish_mu_) {}

   private:
    std::lock_guard<std::mutex> lock_;
  };

  // The text exposition of every family, in the order they were first added; never shows
  // part of a publication.
  std::string Render() const;

 private:
  enum class Type { kCounter, kGauge, kHistogram };
  struct Series {
    Labels labels;
    Counter* counter = nullptr;
    Gauge* gauge = nullptr;
    Histogram* histogram = nullptr;
  };
  struct Family {
    std::string name;
    std::string help;
    Type type;
    std::vector<Series> series;
  };
  Series& NewSeries(const std::string& name, const std::string& help, Type type, Labels labels);
  std::string RenderLocked() const;  // mu_ held

  mutable std::mutex mu_;
  // Held by a Publication, and by Render while it reads (after mu_; a
  // publisher never takes mu_).
  mutable std::mutex publish_mu_;
  std::vector<Family> families_;
  std::deque<Counter> counters_;
  std::deque<Gauge> gauges_;
  std::deque<Histogram> histograms_;
  std::vector<std::function<void()>> on_render_;
};

// Text-format helpers (exposed for tests): a sample value as Prometheus spells it ("+Inf",
// "NaN", shortest round-trip decimal otherwise), and a label value escaped (\\, \", \n).
std::string FormatValue(double v);
std::string EscapeLabelValue(const std::string& v);

}  // namespace atomdisk::metrics
