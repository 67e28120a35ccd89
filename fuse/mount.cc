#include "fuse/mount.h"

#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <spdlog/spdlog.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <utility>

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

sigset_t TerminationSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  return set;
}

bool IsOctal(char c) { return c >= '0' && c <= '7'; }

// Runs fusermount3 ARGS with its output discarded; 0 if it succeeded, else EBUSY (it tells
// no errno), or the errno of starting it.
int RunFusermount(const std::vector<std::string>& args) {
  std::vector<std::string> strings = {"fusermount3"};
  strings.insert(strings.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : strings) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  pid_t pid = 0;
  int rc = posix_spawnp(&pid, "fusermount3", &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return rc;
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : EBUSY;
}

std::string ReadFirstLine(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

// The "major:minor" of the topmost mount on `mountpoint` (empty if none), from
// /proc/self/mountinfo: field 3 is the device, field 5 the mount point (octal escapes for
// spaces and the like, which ResolveMountpoint's paths may hold).
std::string TopMountDevice(const std::string& mountpoint) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line, found;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string id, parent, dev, root, point;
    if (!(fields >> id >> parent >> dev >> root >> point)) continue;
    std::string unescaped;
    for (std::size_t i = 0; i < point.size(); ++i) {
      if (point[i] == '\\' && i + 3 < point.size() && IsOctal(point[i + 1]) &&
          IsOctal(point[i + 2]) && IsOctal(point[i + 3])) {
        unescaped += static_cast<char>((point[i + 1] - '0') * 64 + (point[i + 2] - '0') * 8 +
                                       (point[i + 3] - '0'));
        i += 3;
      } else {
        unescaped += point[i];
      }
    }
    if (unescaped == mountpoint) found = dev;  // later lines are mounted on top
  }
  return found;
}

// Best effort: who keeps `mountpoint` busy. Loop devices backed by a file in it, then
// processes with an open file or their working directory in it; at most a few names.
std::string BusyReason(const std::string& mountpoint) {
  const std::string prefix = mountpoint + "/";
  std::vector<std::string> users;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/sys/block", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("loop", 0) != 0) continue;
    std::string backing = ReadFirstLine(entry.path().string() + "/loop/backing_file");
    if (backing.rfind(prefix, 0) == 0) {
      users.push_back(name + " uses " + backing.substr(prefix.size()));
    }
  }
  std::size_t processes = 0;
  std::string first_processes;
  const std::string self = std::to_string(getpid());
  for (const auto& proc : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string pid = proc.path().filename().string();
    if (pid.empty() || !std::isdigit(static_cast<unsigned char>(pid[0])) || pid == self) continue;
    std::string what;
    std::error_code link_ec;
    auto cwd = std::filesystem::read_symlink(proc.path() / "cwd", link_ec).string();
    if (!link_ec && (cwd == mountpoint || cwd.rfind(prefix, 0) == 0))
      what = "its working directory";
    std::error_code fd_ec;
    for (const auto& fd : std::filesystem::directory_iterator(proc.path() / "fd", fd_ec)) {
      if (!what.empty()) break;
      std::error_code target_ec;
      auto target = std::filesystem::read_symlink(fd.path(), target_ec).string();
      if (!target_ec && target.rfind(prefix, 0) == 0) {
        what = target.substr(prefix.size()) + " open";
      }
    }
    if (what.empty()) continue;
    if (++processes <= 3) {
      users.push_back("process " + pid + " (" + ReadFirstLine(proc.path().string() + "/comm") +
                      ") has " + what);
    }
  }
  if (processes > 3) users.push_back(std::to_string(processes - 3) + " more processes");
  std::string out;
  for (const std::string& u : users) out += (out.empty() ? "" : "; ") + u;
  return out;
}

// Unmounts `mountpoint` only if nothing uses it (never lazily). Returns 0 or an errno
// (EBUSY while in use). As root umount2; otherwise fusermount3 -u, which says no more than
// that it failed (reported as EBUSY).
int UnmountIfUnused(const std::string& mountpoint) {
  if (geteuid() == 0) return umount2(mountpoint.c_str(), UMOUNT_NOFOLLOW) == 0 ? 0 : errno;
  return RunFusermount({"-u", "-q", mountpoint});
}

// Detaches `mountpoint` now, even while in use (what libfuse does on exit).
int DetachLazily(const std::string& mountpoint) {
  if (geteuid() == 0) {
    return umount2(mountpoint.c_str(), MNT_DETACH | UMOUNT_NOFOLLOW) == 0 ? 0 : errno;
  }
  return RunFusermount({"-u", "-q", "-z", mountpoint});
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
  sigset_t set = TerminationSignals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

Result<std::string> ResolveMountpoint(const std::string& path) {
  const auto dead_mount = [&] {
    return Status::InvalidArgument("mountpoint " + path +
                                   ": a dead FUSE mount is there (transport endpoint is not "
                                   "connected); clear it with fusermount3 -u -z " +
                                   path);
  };
  char buf[PATH_MAX];
  if (realpath(path.c_str(), buf) == nullptr) {
    if (errno == ENOTCONN) return dead_mount();
    return Status::InvalidArgument("mountpoint " + path + ": " + std::strerror(errno));
  }
  struct stat st;
  struct statvfs vfs;  // never answered from a cache, unlike stat
  if (stat(buf, &st) != 0 || statvfs(buf, &vfs) != 0) {
    if (errno == ENOTCONN) return dead_mount();
    return Status::InvalidArgument("mountpoint " + path + ": " + std::strerror(errno));
  }
  if (!S_ISDIR(st.st_mode)) {
    return Status::InvalidArgument("mountpoint " + path + ": not a directory");
  }
  const std::string resolved(buf);
  if (!TopMountDevice(resolved).empty()) {
    return Status::InvalidArgument("mountpoint " + path +
                                   " is already a mount point; unmount it first (or choose "
                                   "another directory)");
  }
  // libfuse 3 mounts over a non-empty directory without a word, hiding what it holds.
  std::error_code ec;
  std::filesystem::directory_iterator it(resolved, ec);
  if (ec) return Status::InvalidArgument("mountpoint " + path + ": " + ec.message());
  if (it != std::filesystem::directory_iterator()) {
    return Status::InvalidArgument("mountpoint " + path + " is not empty (it holds " +
                                   it->path().filename().string() +
                                   "); mount on an empty directory");
  }
  return resolved;
}

void DaemonizeWaitingForChild() {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    spdlog::error("cannot create a pipe: {}", std::strerror(errno));
    std::exit(1);
  }
  pid_t pid = fork();
  if (pid < 0) {
    spdlog::error("cannot fork: {}", std::strerror(errno));
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

namespace {

// Runs beside the session loop for its whole life and owns SIGINT, SIGTERM and SIGHUP
// (blocked in every thread, so they never take their default action, and taken here with
// sigtimedwait). The first signal asks for an unmount that waits until nothing uses the
// mount: while a filesystem, a loop device or a program still uses it, the mount keeps
// serving and the watcher retries every 250 ms; the successful unmount ends the loop
// (/dev/fuse reports ENODEV). A second signal detaches the mount lazily and exits at once.
class StopWatcher {
 public:
  StopWatcher(std::string mountpoint, std::string device, const SessionHooks& hooks)
      : mountpoint_(std::move(mountpoint)), device_(std::move(device)), hooks_(hooks) {
    thread_ = std::thread([this] { Run(); });
  }
  ~StopWatcher() {
    done_.store(true);
    thread_.join();
  }

 private:
  void Run() {
    const sigset_t set = TerminationSignals();
    const timespec tick{0, 250 * 1000 * 1000};
    int signals = 0;
    bool gave_up = false;  // our mount is gone from the mount point: wait for the loop
    while (!done_.load()) {
      siginfo_t info;
      int sig = sigtimedwait(&set, &info, &tick);
      if (sig > 0) {
        ++signals;
        if (signals == 1) {
          spdlog::info("{}: unmounting {}", strsignal(sig), mountpoint_);
          if (hooks_.stopping) hooks_.stopping("unmounting " + mountpoint_);
        } else {
          Force(sig);
        }
      }
      if (signals == 0 || gave_up || done_.load()) continue;
      if (TopMountDevice(mountpoint_) != device_) {
        // Detached or unmounted by someone else; the loop ends when the kernel lets go.
        gave_up = true;
        continue;
      }
      int err = UnmountIfUnused(mountpoint_);
      if (err == 0) {
        if (logged_busy_) spdlog::info("mount {} released and unmounted", mountpoint_);
        continue;  // the loop sees ENODEV and ends
      }
      if (!logged_busy_) {
        logged_busy_ = true;
        std::string why = BusyReason(mountpoint_);
        if (why.empty()) why = std::strerror(err);
        const std::string message = "mount busy (" + why +
                                    "); serving until it is released (a second signal " +
                                    "detaches it anyway)";
        spdlog::warn("{}", message);
        if (hooks_.stopping) hooks_.stopping(message);
      }
    }
  }

  void Force(int sig) {
    if (TopMountDevice(mountpoint_) == device_) {
      spdlog::warn("{} again: detaching {} while in use; whatever uses it now gets errors",
                   strsignal(sig), mountpoint_);
      if (int err = DetachLazily(mountpoint_); err != 0) {
        spdlog::error("cannot detach {}: {}", mountpoint_, std::strerror(err));
      }
    } else {
      // Unmounted already (the loop is ending) or detached by someone else.
      spdlog::info("{} again: exiting now", strsignal(sig));
    }
    // Closing /dev/fuse, at exit, aborts the connection: requests in flight fail.
    std::fflush(nullptr);
    spdlog::shutdown();
    std::_Exit(0);
  }

  const std::string mountpoint_;
  const std::string device_;
  const SessionHooks& hooks_;
  std::atomic<bool> done_{false};
  bool logged_busy_ = false;
  std::thread thread_;
};

}  // namespace

int RunSession(const SessionOptions& options, const fuse_lowlevel_ops& ops, void* userdata,
               const SessionHooks& hooks) {
  // Normally done by the caller before it starts threads; repeated so that the loop's
  // workers inherit it in any case.
  BlockTerminationSignals();
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
  if (fuse_session_mount(se, options.mountpoint.c_str()) != 0) {
    fuse_session_destroy(se);
    hooks.on_mounted(false, "cannot mount on " + options.mountpoint +
                                " (is /dev/fuse there, fusermount3 installed?)");
    return 1;
  }
  if (options.tuning.parallel_direct_writes && hooks.parallel_writes != nullptr) {
    int rc = ParallelDirectWrites::Install(se, hooks.parallel_writes);
    if (rc != 0) spdlog::warn("fuse: parallel direct writes unavailable: {}", std::strerror(-rc));
  }
  // Our mount is the topmost one on the mount point now; remember it so that the watcher
  // never unmounts a later one.
  const std::string device = TopMountDevice(options.mountpoint);
  hooks.on_mounted(true, "");

  fuse_loop_config* config = fuse_loop_cfg_create();
  fuse_loop_cfg_set_clone_fd(config, options.tuning.clone_fd ? 1 : 0);
  fuse_loop_cfg_set_max_threads(config, options.tuning.threads);
  fuse_loop_cfg_set_idle_threads(config, options.tuning.threads);
  int rc = 0;
  {
    StopWatcher watcher(options.mountpoint, device, hooks);
    rc = fuse_session_loop_mt(se, config);
  }
  fuse_loop_cfg_destroy(config);

  if (hooks.before_unmount) hooks.before_unmount();
  // Unmounted already in every clean case (the loop ended because the kernel let go);
  // libfuse checks that and then does nothing.
  fuse_session_unmount(se);
  fuse_session_destroy(se);
  return rc < 0 ? 1 : 0;
}

}  // namespace atomdisk::fuse
