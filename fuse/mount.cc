#include "fuse/mount.h"

#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "common/config.h"

namespace atomdisk::fuse {
namespace {

int g_ready_fd = -1;  // write end of the pipe to the waiting parent

Status ParseSeconds(const std::string& key, const std::string& value,
                    std::chrono::milliseconds* out) {
  char* end = nullptr;
  double s = std::strtod(value.c_str(), &end);
  if (value.empty() || end == nullptr || *end != '\0' || !std::isfinite(s) || s <= 0 || s > 86400) {
    return Status::InvalidArgument("-o " + key + "=" + value +
                                   ": expected seconds, above 0 and at most 86400");
  }
  *out = std::chrono::milliseconds(static_cast<std::int64_t>(std::llround(s * 1000)));
  if (out->count() == 0) *out = std::chrono::milliseconds(1);
  return Status::Ok();
}

Status ParseCount(const std::string& key, const std::string& value, std::uint64_t lo,
                  std::uint64_t hi, std::uint64_t* out) {
  std::uint64_t v = 0;
  auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
  if (value.empty() || ec != std::errc() || ptr != value.data() + value.size() || v < lo ||
      v > hi) {
    return Status::InvalidArgument("-o " + key + "=" + value + ": expected a number from " +
                                   std::to_string(lo) + " to " + std::to_string(hi));
  }
  *out = v;
  return Status::Ok();
}

}  // namespace

Status ParseMountOptions(const std::vector<std::string>& o_args, MountTuning* tuning) {
  for (const std::string& arg : o_args) {
    std::stringstream ss(arg);
    std::string word;
    while (std::getline(ss, word, ',')) {
      if (word.empty()) continue;
      const auto eq = word.find('=');
      const std::string key = word.substr(0, eq);
      const std::string value = eq == std::string::npos ? "" : word.substr(eq + 1);
      std::uint64_t n = 0;
      if (word == "cached") {
        tuning->cached = true;
      } else if (word == "direct") {
        tuning->cached = false;
      } else if (word == "parallel_writes") {
        tuning->parallel_direct_writes = true;
      } else if (word == "no_parallel_writes") {
        tuning->parallel_direct_writes = false;
      } else if (word == "clone_fd") {
        tuning->clone_fd = true;
      } else if (key == "timeout" && eq != std::string::npos) {
        Status s = ParseSeconds(key, value, &tuning->op_timeout);
        if (!s.ok()) return s;
      } else if (key == "attempt_timeout" && eq != std::string::npos) {
        Status s = ParseSeconds(key, value, &tuning->attempt_timeout);
        if (!s.ok()) return s;
      } else if (key == "inflight" && eq != std::string::npos) {
        Status s = ParseCount(key, value, 1, 1 << 20, &n);
        if (!s.ok()) return s;
        tuning->max_inflight = n;
      } else if (key == "threads" && eq != std::string::npos) {
        Status s = ParseCount(key, value, 1, 256, &n);
        if (!s.ok()) return s;
        tuning->threads = static_cast<unsigned>(n);
      } else if (key == "metrics" && eq != std::string::npos) {
        Status s = ParseHostPort(value, &tuning->metrics_host, &tuning->metrics_port);
        if (!s.ok()) return Status::InvalidArgument("-o metrics=" + value + ": " + s.message());
      } else if (key == "max_background" && eq != std::string::npos) {
        Status s = ParseCount(key, value, 1, 65535, &n);
        if (!s.ok()) return s;
        tuning->max_background = static_cast<std::uint16_t>(n);
      } else {
        tuning->fuse_options.push_back(word);
      }
    }
  }
  return Status::Ok();
}

void BlockTerminationSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

static void UnblockTerminationSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
}

Result<std::string> ResolveMountpoint(const std::string& path) {
  char buf[PATH_MAX];
  if (realpath(path.c_str(), buf) == nullptr) {
    return Status::InvalidArgument("mountpoint " + path + ": " + std::strerror(errno));
  }
  struct stat st;
  if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode)) {
    return Status::InvalidArgument("mountpoint " + path + ": not a directory");
  }
  return std::string(buf);
}

void DaemonizeWaitingForChild() {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    std::perror("atomdisk-fuse: pipe");
    std::exit(1);
  }
  pid_t pid = fork();
  if (pid < 0) {
    std::perror("atomdisk-fuse: fork");
    std::exit(1);
  }
  if (pid > 0) {
    close(fds[1]);
    unsigned char status = 1;
    ssize_t n;
    do {
      n = read(fds[0], &status, 1);
    } while (n < 0 && errno == EINTR);
    // No byte: the child died before reporting.
    _exit(n == 1 ? status : 1);
  }
  close(fds[0]);
  g_ready_fd = fds[1];
}

void ReportDaemonReady(int status) {
  if (g_ready_fd < 0) return;
  if (status == 0) {
    setsid();
    if (chdir("/") != 0) {
      // Not fatal: the mountpoint path is absolute already.
    }
    int null_fd = open("/dev/null", O_RDWR);
    if (null_fd >= 0) {
      dup2(null_fd, 0);
      dup2(null_fd, 1);
      dup2(null_fd, 2);
      if (null_fd > 2) close(null_fd);
    }
  }
  auto byte = static_cast<unsigned char>(status);
  ssize_t n = write(g_ready_fd, &byte, 1);
  (void)n;
  close(g_ready_fd);
  g_ready_fd = -1;
}

int RunSession(const SessionOptions& options, const fuse_lowlevel_ops& ops, void* userdata,
               const SessionHooks& hooks) {
  // libfuse's own options: ours, then the user's (so the user may override fsname etc.).
  std::string fuse_opts = "fsname=" + options.fsname + ",subtype=atomdisk,default_permissions";
  for (const std::string& o : options.tuning.fuse_options) fuse_opts += "," + o;
  std::vector<std::string> argv_strings = {"atomdisk-fuse", "-o", fuse_opts};
  if (options.debug) argv_strings.push_back("-d");
  std::vector<char*> argv;
  for (std::string& s : argv_strings) argv.push_back(s.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());

  fuse_session* se = fuse_session_new(&args, &ops, sizeof(ops), userdata);
  if (se == nullptr) {
    hooks.on_mounted(false, "bad FUSE options: -o " + fuse_opts);
    return 1;
  }
  if (fuse_set_signal_handlers(se) != 0) {
    fuse_session_destroy(se);
    hooks.on_mounted(false, "cannot install signal handlers");
    return 1;
  }
  if (fuse_session_mount(se, options.mountpoint.c_str()) != 0) {
    fuse_remove_signal_handlers(se);
    fuse_session_destroy(se);
    hooks.on_mounted(false, "cannot mount on " + options.mountpoint +
                                " (is /dev/fuse there, fusermount3 installed, the directory "
                                "not already a mountpoint?)");
    return 1;
  }
  if (options.tuning.parallel_direct_writes && hooks.parallel_writes != nullptr) {
    int rc = ParallelDirectWrites::Install(se, hooks.parallel_writes);
    if (rc != 0) spdlog::warn("fuse: parallel direct writes unavailable: {}", std::strerror(-rc));
  }
  hooks.on_mounted(true, "");

  fuse_loop_config* config = fuse_loop_cfg_create();
  fuse_loop_cfg_set_clone_fd(config, options.tuning.clone_fd ? 1 : 0);
  fuse_loop_cfg_set_max_threads(config, options.tuning.threads);
  fuse_loop_cfg_set_idle_threads(config, options.tuning.threads);
  UnblockTerminationSignals();
  int rc = fuse_session_loop_mt(se, config);
  fuse_loop_cfg_destroy(config);

  if (hooks.before_unmount) hooks.before_unmount();
  fuse_remove_signal_handlers(se);
  fuse_session_unmount(se);
  fuse_session_destroy(se);
  return rc < 0 ? 1 : 0;  // a signal number means a requested, clean exit
}

}  // namespace atomdisk::fuse
