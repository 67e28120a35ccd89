// ParallelDirectWrites: lets a libfuse 3.14 file system answer open with
// FOPEN_PARALLEL_DIRECT_WRITES, which 3.14's fuse_file_info cannot express.
//
// Without that flag the kernel (Linux >= 6.2 knows it) takes the inode lock exclusively for
// every direct write to a FUSE file, so synchronous writers to one file go one at a time.
// libfuse 3.14 lets a file system supply its own read and writev on /dev/fuse
// (fuse_session_custom_io). Ours read requests as libfuse would, remember the ids of FUSE_OPEN
// requests, and when libfuse writes a successful reply to one of them, set
// FOPEN_PARALLEL_DIRECT_WRITES in its fuse_open_out before it reaches the kernel. Everything
// else passes through unchanged. Kernels that do not know the flag ignore it.
//
// Ownership: one instance per session, owned by the caller, outliving the session loop.
// Thread-safety: the hooks are called from every libfuse worker thread and from any thread
// that replies; they are safe to call concurrently.
#pragma once

#include <fuse_lowlevel.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <unordered_set>

namespace atomdisk::fuse {

class ParallelDirectWrites {
 public:
  ParallelDirectWrites() = default;
  ParallelDirectWrites(const ParallelDirectWrites&) = delete;
  ParallelDirectWrites& operator=(const ParallelDirectWrites&) = delete;

  // Installs the hooks on a mounted session (after fuse_session_mount, before the loop).
  // `session_userdata` must be the userdata given to fuse_session_new: libfuse hands that
  // pointer to the hooks, so the caller's object must expose this instance through
  // `Lookup`. Returns 0 or a negative errno from fuse_session_custom_io.
  using LookupFn = ParallelDirectWrites* (*)(void* session_userdata);
  static int Install(fuse_session* se, LookupFn lookup);

  // Open replies patched so far (for logs and tests).
  std::uint64_t patched() const { return patched_.load(std::memory_order_relaxed); }

 private:
  static ssize_t Read(int fd, void* buf, size_t len, void* userdata);
  static ssize_t Writev(int fd, iovec* iov, int count, void* userdata);

  void NoteRequest(const void* buf, ssize_t len);
  void PatchReply(iovec* iov, int count);

  static LookupFn lookup_;

  std::mutex mu_;
  std::unordered_set<std::uint64_t> open_requests_;  // guarded by mu_
  std::atomic<std::size_t> pending_{0};              // open_requests_.size(), read without the lock
  std::atomic<std::uint64_t> patched_{0};
};

}  // namespace atomdisk::fuse
