#include "common/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>

#include "common/status.h"

namespace atomdisk::metrics {

namespace {

bool ValidName(const std::string& name, bool allow_colon) {
  if (name.empty()) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alpha =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (allow_colon && c == ':');
    const bool digit = c >= '0' && c <= '9';
    if (!alpha && !(digit && i > 0)) return false;
  }
  return true;
}

std::string EscapeHelp(const std::string& help) {
  std::string out;
  for (char c : help) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

// `{a="x",b="y"}`, with an extra label (a histogram's le) appended if given.
std::string LabelText(const Labels& labels, const char* extra_name = nullptr,
                      const std::string& extra_value = {}) {
  if (labels.empty() && !extra_name) return {};
  std::string out = "{";
  bool first = true;
  for (const auto& [k, v] : labels) {
    if (!first) out += ',';
    first = false;
    out += k + "=\"" + EscapeLabelValue(v) + "\"";
  }
  if (extra_name) {
    if (!first) out += ',';
    out += std::string(extra_name) + "=\"" + EscapeLabelValue(extra_value) + "\"";
  }
  return out + "}";
}

}  // namespace

std::string FormatValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  ATOMDISK_CHECK(ec == std::errc());
  return std::string(buf, end);
}

std::string EscapeLabelValue(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)),
      counts_(std::make_unique<std::atomic<std::uint64_t>[]>(bounds_.size() + 1)) {
  for (std::size_t i = 0; i < bounds_.size(); ++i) {
    ATOMDISK_CHECK(std::isfinite(bounds_[i]));
    ATOMDISK_CHECK(i == 0 || bounds_[i - 1] < bounds_[i]);
  }
  for (std::size_t i = 0; i <= bounds_.size(); ++i) counts_[i].store(0);
}

void Histogram::Observe(double v) {
  // lower_bound: the first bound >= v, as Prometheus' `le` (less than or equal) means.
  const auto i = static_cast<std::size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), v) -
                                          bounds_.begin());
  counts_[i].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(v, std::memory_order_relaxed);
}

std::vector<std::uint64_t> Histogram::BucketCounts() const {
  std::vector<std::uint64_t> out(bounds_.size() + 1);
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = counts_[i].load(std::memory_order_relaxed);
  return out;
}

std::vector<double> ExponentialBuckets(double start, double factor, int count) {
  ATOMDISK_CHECK(start > 0 && factor > 1 && count > 0);
  std::vector<double> out;
  double b = start;
  for (int i = 0; i < count; ++i, b *= factor) out.push_back(b);
  return out;
}

std::vector<double> LatencyBuckets() { return ExponentialBuckets(10e-6, 2, 21); }

Registry::Series& Registry::NewSeries(const std::string& name, const std::string& help, Type type,
                                      Labels labels) {
  ATOMDISK_CHECK(ValidName(name, true));
  for (const auto& [k, v] : labels) {
    ATOMDISK_CHECK(ValidName(k, false) && k != "le" && k.rfind("__", 0) != 0);
  }
  auto it = std::find_if(families_.begin(), families_.end(),
                         [&](const Family& f) { return f.name == name; });
  if (it == families_.end()) {
    families_.push_back(Family{name, help, type, {}});
    it = families_.end() - 1;
  }
  ATOMDISK_CHECK(it->type == type && it->help == help);
  for (const Series& s : it->series) ATOMDISK_CHECK(s.labels != labels);
  it->series.push_back(Series{std::move(labels)});
  return it->series.back();
}

Counter& Registry::AddCounter(const std::string& name, const std::string& help, Labels labels) {
  std::lock_guard<std::mutex> lock(mu_);
  Series& s = NewSeries(name, help, Type::kCounter, std::move(labels));
  s.counter = &counters_.emplace_back();
  return *s.counter;
}

Gauge& Registry::AddGauge(const std::string& name, const std::string& help, Labels labels) {
  std::lock_guard<std::mutex> lock(mu_);
  Series& s = NewSeries(name, help, Type::kGauge, std::move(labels));
  s.gauge = &gauges_.emplace_back();
  return *s.gauge;
}

Histogram& Registry::AddHistogram(const std::string& name, const std::string& help,
                                  std::vector<double> bounds, Labels labels) {
  std::lock_guard<std::mutex> lock(mu_);
  Series& s = NewSeries(name, help, Type::kHistogram, std::move(labels));
  s.histogram = &histograms_.emplace_back(std::move(bounds));
  return *s.histogram;
}

void Registry::OnRender(std::function<void()> fn) {
  std::lock_guard<std::mutex> lock(mu_);
  on_render_.push_back(std::move(fn));
}

std::string Registry::Render() const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& fn : on_render_) fn();
  std::lock_guard<std::mutex> publication(publish_mu_);
  return RenderLocked();
}

std::string Registry::RenderLocked() const {
  std::string out;
  for (const Family& f : families_) {
    static constexpr const char* kTypeNames[] = {"counter", "gauge", "histogram"};
    out += "# HELP " + f.name + " " + EscapeHelp(f.help) + "\n";
    out += "# TYPE " + f.name + " " + kTypeNames[static_cast<int>(f.type)] + "\n";
    for (const Series& s : f.series) {
      if (s.counter) {
        out += f.name + LabelText(s.labels) + " " + std::to_string(s.counter->value()) + "\n";
      } else if (s.gauge) {
        out += f.name + LabelText(s.labels) + " " + FormatValue(s.gauge->value()) + "\n";
      } else {
        const Histogram& h = *s.histogram;
        const std::vector<std::uint64_t> counts = h.BucketCounts();
        std::uint64_t cumulative = 0;
        for (std::size_t i = 0; i < counts.size(); ++i) {
          cumulative += counts[i];
          const std::string le = i < h.bounds().size() ? FormatValue(h.bounds()[i]) : "+Inf";
          out += f.name + "_bucket" + LabelText(s.labels, "le", le) + " " +
                 std::to_string(cumulative) + "\n";
        }
        out += f.name + "_sum" + LabelText(s.labels) + " " + FormatValue(h.sum()) + "\n";
        out += f.name + "_count" + LabelText(s.labels) + " " + std::to_string(cumulative) + "\n";
      }
    }
  }
  return out;
}

}  // namespace atomdisk::metrics
