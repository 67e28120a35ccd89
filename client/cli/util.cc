#include "client/cli/util.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
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

void Progress::Draw(std::uint64_t done_bytes) {
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  double frac = total_ == 0 ? 1.0 : static_cast<double>(done_bytes) / static_cast<double>(total_);
  double rate = elapsed > 0 ? static_cast<double>(done_bytes) / elapsed : 0;
  double eta = rate > 0 ? static_cast<double>(total_ - done_bytes) / rate : -1;
  constexpr int kWidth = 24;
  int filled = static_cast<int>(frac * kWidth);
  std::string bar(static_cast<std::size_t>(kWidth), ' ');
  for (int i = 0; i < filled && i < kWidth; ++i) bar[static_cast<std::size_t>(i)] = '=';
  if (filled < kWidth) bar[static_cast<std::size_t>(filled)] = '>';
  std::fprintf(stderr, "\r\033[K%s [%s] %3d%%  %s / %s  %s/s  ETA %s", label_.c_str(), bar.c_str(),
               static_cast<int>(frac * 100), HumanBytes(done_bytes).c_str(),
               HumanBytes(static_cast<double>(total_)).c_str(), HumanBytes(rate).c_str(),
               HumanClock(eta).c_str());
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
