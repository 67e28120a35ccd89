// Mounting and running a low-level FUSE session, shared by atomdisk-fuse, the fake-backed
// test mount and the benchmark passthrough: -o option parsing, the session with our custom
// /dev/fuse hooks, the multi-threaded loop, clean exit on SIGTERM/SIGINT/SIGHUP (once the
// mount is no longer in use) and on fusermount3 -u.
//
// Plain functions; call them from the main thread only.
#pragma once

#include <fuse_lowlevel.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/status.h"
#include "fuse/parallel_dio.h"

namespace atomdisk::fuse {

// What -o may carry besides libfuse's own mount options (allow_other, ro, ...).
struct MountTuning {
  bool cached = false;                              // -o cached (default: direct)
  bool parallel_direct_writes = true;               // -o no_parallel_writes turns it off
  std::chrono::milliseconds op_timeout{5000};       // -o timeout=SECONDS
  std::chrono::milliseconds attempt_timeout{1000};  // -o attempt_timeout=SECONDS
  std::size_t max_inflight = 1024;                  // -o inflight=N
  unsigned threads = 4;                             // -o threads=N (libfuse workers)
  bool clone_fd = false;                            // -o clone_fd
  std::uint16_t max_background = 256;               // -o max_background=N
  std::string metrics_host;                         // -o metrics=HOST:PORT (GET /metrics)
  std::uint16_t metrics_port = 0;                   // 0: no metrics endpoint
  std::vector<std::string> fuse_options;            // everything else, for libfuse
};

// Splits each -o argument at commas and takes ours out. InvalidArgument names a bad value.
Status ParseMountOptions(const std::vector<std::string>& o_args, MountTuning* tuning);

// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread so that threads it starts later
// (the client's) never take them, and ignores SIGPIPE. They stay blocked for the life of the
// process: RunSession takes them with sigtimedwait, and one that arrives before or after
// the session is simply never delivered (so a stop is always a clean exit, never death by
// signal). Call it first thing, before any thread starts.
void BlockTerminationSignals();

struct SessionOptions {
  std::string mountpoint;  // absolute path of an existing directory
  std::string fsname;      // shown in /proc/mounts
  bool debug = false;      // libfuse's request log (-d)
  MountTuning tuning;
};

struct SessionHooks {
  // Called once, after the mount succeeded (ok) or failed (message in `error`).
  std::function<void(bool ok, const std::string& error)> on_mounted;
  // Called after the loop ends and before unmounting: finish or fail outstanding work so no
  // reply is sent after the session is destroyed.
  std::function<void()> before_unmount;
  // Optional: called (from the signal watcher's thread) when a stop signal arrived, and
  // again with the reason if the mount is busy and keeps serving; for sd_notify.
  std::function<void(const std::string& status)> stopping;
  // Non-null to answer open with FOPEN_PARALLEL_DIRECT_WRITES (tuning decides).
  ParallelDirectWrites::LookupFn parallel_writes = nullptr;
};

// Creates the session, mounts, serves until unmounted, and destroys the session. Returns the
// process exit code (0 on a clean unmount).
//
// Stopping: `fusermount3 -u` (or umount) by anyone, or SIGINT/SIGTERM/SIGHUP, which unmounts
// only once nothing uses the mount. While a loop device, a filesystem on it or an open file
// keeps the mount busy, it keeps serving, logs once who uses it, and retries every 250 ms;
// the unmount then ends the loop and the call returns 0. A second signal detaches the mount
// lazily and exits the process at once with status 0 (what uses the mount then gets
// errors). No lazy unmount happens otherwise.
int RunSession(const SessionOptions& options, const fuse_lowlevel_ops& ops, void* userdata,
               const SessionHooks& hooks);

// Resolves `path` to an absolute directory path. InvalidArgument if it is not a directory,
// is not empty, or is a mount point already (a live mount, or a dead FUSE one).
Result<std::string> ResolveMountpoint(const std::string& path);

// Forks; the parent waits until the child reports (ReportDaemonReady) and exits with the
// child's status; the child returns. The child must call ReportDaemonReady exactly once.
void DaemonizeWaitingForChild();
// In the child: tells the waiting parent the exit status (0 = mounted); on success detaches
// from the terminal (setsid, stdio to /dev/null, cwd /). No-op if not daemonized.
void ReportDaemonReady(int status);

}  // namespace atomdisk::fuse
