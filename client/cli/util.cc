#include "client/cli/util.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>

namespace atomdisk::client::cli {

int Fail(int code, const std::string& message) {
  std::fprintf(stderr, "atomdisk: %s\n", message.c_str());
  return code;
}

std::string ConfigPath(const GlobalOptions& g) {
  if (!g.config.empty()) return g.config;
  if (const char* env = std::getenv("ATOMDISK_CONFIG"); env != nullptr && *env != '\0') {
    return env;
  }
  return "cluster.toml";
}

Result<ClusterConfig> LoadConfig(const GlobalOptions& g) {
  std::string path = ConfigPath(g);
  // A client needs only the client key; client hosts need not hold system.key.
  Result<ClusterConfig> config = LoadClusterConfig(path, ConfigUse::kClient);
  if (!config.ok()) {
    std::string hint;
    if (config.status().code() == StatusCode::kNotFound) {
      hint = " (give --config FILE or set ATOMDISK_CONFIG; `atomdisk init` makes a new cluster)";
    }
    return Status(config.status().code(),
                  "cannot load the cluster config: " + config.status().message() + hint);
  }
  for (const std::string& w : config->warnings)
    std::fprintf(stderr, "atomdisk: warning: %s\n", w.c_str());
  return config;
}

std::optional<CliError> MakeClient(const GlobalOptions& g, ClusterConfig* config,
                                   std::unique_ptr<Client>* client, std::size_t max_inflight) {
  Result<ClusterConfig> loaded = LoadConfig(g);
  if (!loaded.ok()) return CliError{kExitUsage, loaded.status().message()};
  *config = std::move(loaded).value();
  Result<ClientOptions> options = OptionsFromConfig(*config, g.nodes);
  if (!options.ok()) return CliError{kExitUsage, options.status().message()};
  if (g.timeout_ms <= 0) return CliError{kExitUsage, "--timeout must be positive"};
  options->op_timeout = std::chrono::milliseconds(g.timeout_ms);
  options->attempt_timeout =
      std::min(options->attempt_timeout, std::chrono::milliseconds(g.timeout_ms));
  options->max_inflight = max_inflight;
  *client = Client::Create(std::move(options).value());
  return std::nullopt;
}

int ExitCodeFor(const Status& s) {
  switch (s.code()) {
    case StatusCode::kOk:
      return kExitOk;
    case StatusCode::kInvalidArgument:
    case StatusCode::kAuthFailure:
      return kExitUsage;
    case StatusCode::kCorruption:
      return kExitMismatch;
    default:
      return kExitFailed;
  }
}

std::string HumanBytes(double bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int u = 0;
  while (std::fabs(bytes) >= 1024 && u < 5) {
    bytes /= 1024;
    ++u;
  }
  char buf[32];
  if (u == 0) {
    std::snprintf(buf, sizeof buf, "%.0f B", bytes);
  } else {
    std::snprintf(buf, sizeof buf, "%.1f %s", bytes, kUnits[u]);
  }
  return buf;
}

std::string HumanCount(std::uint64_t n) {
  std::string digits = std::to_string(n);
  std::string out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return out;
}

std::string HumanClock(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  auto s = static_cast<std::uint64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof buf, "%llu:%02llu:%02llu", static_cast<unsigned long long>(s / 3600),
                  static_cast<unsigned long long>(s / 60 % 60),
                  static_cast<unsigned long long>(s % 60));
  } else {
    std::snprintf(buf, sizeof buf, "%llu:%02llu", static_cast<unsigned long long>(s / 60),
                  static_cast<unsigned long long>(s % 60));
  }
  return buf;
}

Result<std::uint64_t> ParseSize(const std::string& text) {
  std::size_t i = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i;
  if (i == 0 || i > 19) return Status::InvalidArgument("\"" + text + "\" is not a byte count");
  std::uint64_t value = std::stoull(text.substr(0, i));
  std::string suffix = text.substr(i);
  std::transform(suffix.begin(), suffix.end(), suffix.begin(), ::tolower);
  int shift = 0;
  if (suffix.empty() || suffix == "b") {
    shift = 0;
  } else if (suffix == "k" || suffix == "kib" || suffix == "kb") {
    shift = 10;
  } else if (suffix == "m" || suffix == "mib" || suffix == "mb") {
    shift = 20;
  } else if (suffix == "g" || suffix == "gib" || suffix == "gb") {
    shift = 30;
  } else if (suffix == "t" || suffix == "tib" || suffix == "tb") {
    shift = 40;
  } else {
    return Status::InvalidArgument("\"" + text + "\": unknown size suffix \"" + suffix +
                                   "\" (use K, M, G, T: powers of 1024)");
  }
  if (shift > 0 && value > (~std::uint64_t{0} >> shift)) {
    return Status::InvalidArgument("\"" + text + "\" is too large");
  }
  return value << shift;
}

Result<std::uint8_t> ParseByte(const std::string& text) {
  unsigned long v = 0;
  bool ok = false;
  if (text.size() > 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X') && text.size() <= 4) {
    ok = std::all_of(text.begin() + 2, text.end(), ::isxdigit);
    if (ok) v = std::stoul(text.substr(2), nullptr, 16);
  } else if (!text.empty() && text.size() <= 3) {
    ok = std::all_of(text.begin(), text.end(), ::isdigit);
    if (ok) v = std::stoul(text);
  }
  if (!ok || v > 255) {
    return Status::InvalidArgument("\"" + text + "\" is not a byte value (0-255 or 0x00-0xff)");
  }
  return static_cast<std::uint8_t>(v);
}

Result<double> ParseDurationMs(const std::string& text, double bare_unit_ms) {
  std::size_t i = 0, dots = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) {
    dots += text[i] == '.' ? 1 : 0;
    ++i;
  }
  const std::string number = text.substr(0, i), suffix = text.substr(i);
  if (number.empty() || number == "." || dots > 1 || number.size() > 20) {
    return Status::InvalidArgument("\"" + text + "\" is not a duration");
  }
  double unit_ms = 0;
  if (suffix.empty()) {
    unit_ms = bare_unit_ms;
  } else if (suffix == "ms") {
    unit_ms = 1;
  } else if (suffix == "s") {
    unit_ms = 1000;
  } else if (suffix == "m" || suffix == "min") {
    unit_ms = 60'000;
  } else if (suffix == "h") {
    unit_ms = 3'600'000;
  } else {
    return Status::InvalidArgument("\"" + text + "\": unknown time unit \"" + suffix +
                                   "\" (use ms, s, m or h)");
  }
  return std::strtod(number.c_str(), nullptr) * unit_ms;
}

namespace {

std::string FormatNumber(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.15g", v);
  return buf;
}

std::string Quoted(const std::string& text) { return "\"" + text + "\""; }

}  // namespace

CLI::Validator WholeNumber(std::uint64_t min, std::uint64_t max) {
  std::string range;
  if (max == ~std::uint64_t{0}) {
    range = "a whole number of at least " + std::to_string(min);
  } else {
    range = "a whole number from " + std::to_string(min) + " to " + std::to_string(max);
  }
  return CLI::Validator(
      [min, max, range](std::string& text) -> std::string {
        std::uint64_t v = 0;
        const char* end = text.data() + text.size();
        auto [ptr, ec] = std::from_chars(text.data(), end, v);
        // from_chars takes no sign and no spaces; check that it used every character.
        if (text.empty() || ec != std::errc() || ptr != end || v < min || v > max) {
          return "must be " + range + ", not " + Quoted(text);
        }
        return std::string();
      },
      "", "");
}

CLI::Validator DecimalNumber(double min, double max) {
  const std::string range = "a number from " + FormatNumber(min) + " to " + FormatNumber(max);
  return CLI::Validator(
      [min, max, range](std::string& text) -> std::string {
        std::size_t dots = static_cast<std::size_t>(std::count(text.begin(), text.end(), '.'));
        bool ok = !text.empty() && text != "." && dots <= 1 && text.size() <= 20 &&
                  std::all_of(text.begin(), text.end(), [](char c) {
                    return std::isdigit(static_cast<unsigned char>(c)) || c == '.';
                  });
        double v = ok ? std::strtod(text.c_str(), nullptr) : 0;
        if (!ok || v < min || v > max) return "must be " + range + ", not " + Quoted(text);
        return std::string();
      },
      "", "");
}

CLI::Validator DurationMs(double bare_unit_ms, double min_ms, double max_ms) {
  auto span = [](double ms) {
    if (ms >= 1000 && std::fmod(ms, 1000) == 0) return FormatNumber(ms / 1000) + " s";
    return FormatNumber(ms) + " ms";
  };
  const std::string range = "a duration from " + span(min_ms) + " to " + span(max_ms) +
                            (bare_unit_ms == 1 ? " (a bare number counts milliseconds"
                                               : " (a bare number counts seconds") +
                            "; or give a unit: 500ms, 30s, 2m, 1h)";
  return CLI::Validator(
      [=](std::string& text) -> std::string {
        Result<double> ms = ParseDurationMs(text, bare_unit_ms);
        const double whole_ms = ms.ok() ? std::round(*ms) : 0;
        if (!ms.ok() || whole_ms < min_ms || whole_ms > max_ms) {
          return "must be " + range + ", not " + Quoted(text);
        }
        text = FormatNumber(whole_ms);
        return std::string();
      },
      "", "");
}

int TerminalColumns() {
  if (const char* env = std::getenv("COLUMNS"); env != nullptr && *env != '\0') {
    int v = 0;
    const char* end = env + std::strlen(env);
    auto [ptr, ec] = std::from_chars(env, end, v);
    if (ec == std::errc() && ptr == end && v > 0) return v;
  }
  winsize ws{};
  if (::ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 80;
}

void HexDump(std::FILE* out, const std::uint8_t* data, std::size_t len, std::uint64_t base) {
  bool folding = false;
  for (std::size_t off = 0; off < len; off += 16) {
    std::size_t n = std::min<std::size_t>(16, len - off);
    if (off > 0 && n == 16 && off + 16 < len && std::memcmp(data + off, data + off - 16, 16) == 0) {
      if (!folding) std::fputs("*\n", out);
      folding = true;
      continue;
    }
    folding = false;
    std::fprintf(out, "%08llx  ", static_cast<unsigned long long>(base + off));
    for (std::size_t i = 0; i < 16; ++i) {
      if (i < n) {
        std::fprintf(out, "%02x ", data[off + i]);
      } else {
        std::fputs("   ", out);
      }
      if (i == 7) std::fputc(' ', out);
    }
    std::fputs(" |", out);
    for (std::size_t i = 0; i < n; ++i) {
      unsigned char c = data[off + i];
      std::fputc(c >= 0x20 && c < 0x7f ? c : '.', out);
    }
    std::fputs("|\n", out);
  }
  std::fprintf(out, "%08llx\n", static_cast<unsigned long long>(base + len));
}

bool IsTerminal(std::FILE* f) { return ::isatty(::fileno(f)) == 1; }

Status WriteAll(int fd, const std::uint8_t* data, std::size_t len, const std::string& what) {
  std::size_t off = 0;
  while (off < len) {
    ssize_t n = ::write(fd, data + off, len - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno("cannot write " + what, errno);
    }
    off += static_cast<std::size_t>(n);
  }
  return Status::Ok();
}

Result<std::size_t> ReadFull(int fd, std::uint8_t* data, std::size_t len, const std::string& what) {
  std::size_t off = 0;
  while (off < len) {
    ssize_t n = ::read(fd, data + off, len - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno("cannot read " + what, errno);
    }
    if (n == 0) break;
    off += static_cast<std::size_t>(n);
  }
  return off;
}

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  ATOMDISK_CHECK(ctx_ != nullptr);
  ATOMDISK_CHECK(EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) == 1);
}

Sha256::~Sha256() { EVP_MD_CTX_free(ctx_); }

void Sha256::Update(const void* data, std::size_t len) {
  ATOMDISK_CHECK(EVP_DigestUpdate(ctx_, data, len) == 1);
}

std::string Sha256::HexDigest() {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  ATOMDISK_CHECK(EVP_DigestFinal_ex(ctx_, md, &n) == 1);
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < n; ++i) {
    out.push_back(kHex[md[i] >> 4]);
    out.push_back(kHex[md[i] & 15]);
  }
  return out;
}

Progress::Progress(std::string label, std::uint64_t total_bytes)
    : label_(std::move(label)),
      total_(total_bytes),
      columns_(TerminalColumns()),
      enabled_(IsTerminal(stderr)),
      start_(std::chrono::steady_clock::now()) {}

Progress::~Progress() { Finish(); }

void Progress::Update(std::uint64_t done_bytes) {
  if (!enabled_) return;
  auto now = std::chrono::steady_clock::now();
  if (drawn_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  Draw(done_bytes);
}

void Progress::Finish() {
  if (enabled_ && drawn_) std::fputs("\r\033[K", stderr);
  drawn_ = false;
  enabled_ = false;
}

std::string Progress::Line(const std::string& label, std::uint64_t done, std::uint64_t total,
                           double rate, double eta_s, int columns) {
  // One column stays free: a line that fills the last column makes some terminals wrap.
  const std::size_t width = static_cast<std::size_t>(std::max(columns - 1, 1));
  const std::string rate_text = "  " + HumanBytes(rate) + "/s";
  if (total == kUnknownTotal) {
    std::string line = label + "  " + HumanBytes(static_cast<double>(done));
    if (line.size() + rate_text.size() <= width) line += rate_text;
    return line.substr(0, width);
  }
  const double frac =
      total == 0 ? 1.0 : std::min(1.0, static_cast<double>(done) / static_cast<double>(total));
  char pct[8];
  std::snprintf(pct, sizeof pct, " %3d%%", static_cast<int>(frac * 100));
  // The figures, most important first; each is dropped when it does not fit.
  std::string line = label;
  std::string right = pct;
  for (const std::string& extra : {"  " + HumanBytes(static_cast<double>(done)) + " / " +
                                       HumanBytes(static_cast<double>(total)),
                                   rate_text, "  ETA " + HumanClock(eta_s)}) {
    if (line.size() + 3 + 10 + right.size() + extra.size() <= width) right += extra;
  }
  // The bar takes what is left, 10 to 30 columns; none when even 10 do not fit.
  std::size_t room =
      width > line.size() + right.size() + 3 ? width - line.size() - right.size() - 3 : 0;
  std::size_t bar_width = std::min<std::size_t>(room, 30);
  if (bar_width >= 10) {
    std::string bar(bar_width, ' ');
    auto filled = static_cast<std::size_t>(frac * static_cast<double>(bar_width));
    for (std::size_t i = 0; i < filled && i < bar_width; ++i) bar[i] = '=';
    if (filled < bar_width) bar[filled] = '>';
    line += " [" + bar + "]";
  }
  line += right;
  return line.substr(0, width);
}

void Progress::Draw(std::uint64_t done_bytes) {
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  double rate = elapsed > 0 ? static_cast<double>(done_bytes) / elapsed : 0;
  double eta = rate > 0 && total_ != kUnknownTotal && total_ >= done_bytes
                   ? static_cast<double>(total_ - done_bytes) / rate
                   : -1;
  std::string line = Line(label_, done_bytes, total_, rate, eta, columns_);
  std::fprintf(stderr, "\r\033[K%s", line.c_str());
  std::fflush(stderr);
  drawn_ = true;
}

std::uint64_t OrderedWindow::Run(std::uint64_t count, const IssueFn& issue,
                                 const HandleFn& handle) {
  std::uint64_t next_issue = 0;
  std::uint64_t handled = 0;
  bool stopped = false;
  for (std::uint64_t next = 0; next < next_issue || (!stopped && next < count); ++next) {
    while (!stopped && next_issue < count && next_issue - next < window_) issue(next_issue++);
    OpResult result;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return done_.count(next) > 0; });
      auto it = done_.find(next);
      result = std::move(it->second);
      done_.erase(it);
    }
    if (stopped) continue;  // draining
    ++handled;
    if (!handle(next, result)) stopped = true;
  }
  return handled;
}

void OrderedWindow::Complete(std::uint64_t index, OpResult result) {
  // Notify under the lock: once the entry is visible, Run may return and the window be
  // destroyed at any moment, so nothing may touch cv_ after mu_ is released (ThreadSanitizer
  // caught a notify on a destroyed condition variable).
  std::lock_guard<std::mutex> lock(mu_);
  done_.emplace(index, std::move(result));
  cv_.notify_one();
}

std::int64_t MonotonicNs() {
  timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

}  // namespace atomdisk::client::cli
