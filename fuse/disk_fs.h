// DiskFs: the atomdisk cluster as a FUSE file system holding one regular file, `disk`.
//
// Request path (low-level libfuse3 API, asynchronous replies): a handler validates the
// request, copies any write data into sectors and hands one client operation per 4096-byte
// sector to the client library, then returns at once; the request is answered from the
// completion of its last sector (on the client's thread), so a 1 MiB request is 256 sector
// operations in flight and many requests are in flight together.
//
// - Aligned blocks map one-to-one to sector writes. A partially covered sector is
//   read-modify-written; every write (aligned or not) takes a per-sector turn inside this
//   mount, so two overlapping writes through this mount never lose each other's bytes.
//   There is no such ordering between two mounts (see docs/FUSE.md on atomicity).
// - fsync and flush answer once every write that started before them is acknowledged (an
//   acknowledged write is durable on a majority) and report EIO once if a write through the
//   same open file failed since the last fsync/flush.
// - The size never changes, as a block device's: O_TRUNC is ignored and truncation to the
//   device's own size succeeds (so plain dd, cp and `>` work); truncate to another size,
//   create, mkdir, rename, unlink... fail with EPERM; fallocate PUNCH_HOLE / ZERO_RANGE
//   write zeros.
//
// Ownership: the caller owns the DiskFs, the client and the session; the DiskFs must outlive
// the session loop and every client callback (Drain, then Client::Close, before destroying).
// Thread-safety: the handlers are called from libfuse's worker threads and the completions
// from the client's thread; all shared state is behind mutexes or atomics, and no lock is
// held across a reply or a client call.
#pragma once

#include <fuse_lowlevel.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <unordered_map>
#include <vector>

#include "client/client.h"
#include "fuse/fuse_metrics.h"
#include "fuse/parallel_dio.h"

namespace atomdisk::fuse {

inline constexpr fuse_ino_t kRootIno = FUSE_ROOT_ID;
inline constexpr fuse_ino_t kDiskIno = 2;
inline constexpr const char* kDiskName = "disk";
// Largest read or write the kernel sends us (libfuse 3.14's buffer holds 256 pages).
inline constexpr std::uint32_t kMaxIoBytes = 1u << 20;

struct DiskFsOptions {
  std::uint64_t sectors = 0;
  // false: FOPEN_DIRECT_IO, no page cache (the default). true: the kernel page cache serves
  // reads until the file is opened again (close-to-open), writes go straight through.
  bool cached = false;
  // Answer open with FOPEN_PARALLEL_DIRECT_WRITES (needs ParallelDirectWrites installed).
  bool parallel_direct_writes = true;
  // Kernel requests in flight for asynchronous direct I/O and read-ahead.
  std::uint16_t max_background = 256;
  // Sector operations a discard (zero range) keeps in flight.
  std::size_t zero_window_sectors = 256;
  uid_t uid = 0;
  gid_t gid = 0;
  // Fed with every read, write, flush, fsync and discard if set (owned by the caller).
  FuseMetrics* metrics = nullptr;
};

class DiskFs {
 public:
  DiskFs(DiskFsOptions options, client::Client* client);
  DiskFs(const DiskFs&) = delete;
  DiskFs& operator=(const DiskFs&) = delete;
  ~DiskFs();

  // The operation table to pass to fuse_session_new with `this` as userdata.
  static const fuse_lowlevel_ops& Ops();
  // For ParallelDirectWrites::Install: maps the session userdata back to our hooks.
  static ParallelDirectWrites* ParallelWritesOf(void* userdata);

  // Waits until no write started through this mount is in flight, at most `timeout`.
  // Returns false if some are still running.
  bool Drain(std::chrono::milliseconds timeout);

  std::uint64_t size_bytes() const { return options_.sectors * kSectorSize; }
  ParallelDirectWrites& parallel_writes() { return parallel_writes_; }

  // Counters for logs and tests.
  std::uint64_t sector_reads() const { return sector_reads_.load(std::memory_order_relaxed); }
  std::uint64_t sector_writes() const { return sector_writes_.load(std::memory_order_relaxed); }
  std::uint64_t rmw_sectors() const { return rmw_sectors_.load(std::memory_order_relaxed); }

 private:
  struct FileHandle;
  struct WriteOp;
  struct ZeroOp;

  // FUSE handlers (each sends exactly one reply).
  static void OnInit(void* userdata, fuse_conn_info* conn);
  static void OnLookup(fuse_req_t req, fuse_ino_t parent, const char* name);
  static void OnGetattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  static void OnSetattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set,
                        fuse_file_info* fi);
  static void OnOpen(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  static void OnRelease(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  static void OnRead(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi);
  static void OnWrite(fuse_req_t req, fuse_ino_t ino, const char* buf, size_t size, off_t off,
                      fuse_file_info* fi);
  static void OnFlush(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  static void OnFsync(fuse_req_t req, fuse_ino_t ino, int datasync, fuse_file_info* fi);
  static void OnReaddir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi);
  static void OnStatfs(fuse_req_t req, fuse_ino_t ino);
  static void OnFallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
                          fuse_file_info* fi);
  static void OnRefuse(fuse_req_t req);  // EPERM for create, mkdir, unlink, rename...

  static DiskFs* Self(fuse_req_t req);
  void FillAttr(fuse_ino_t ino, struct stat* st) const;

  // Writes [off, off + len) (inside the device) from `src`, or zeros when src is null; copies
  // src before returning. Calls done(0 or errno) once, from any thread.
  void WriteRange(std::uint64_t off, std::uint64_t len, const std::uint8_t* src,
                  std::function<void(int)> done);
  void StartSectorWrite(WriteOp* op, std::size_t index);
  void FinishSectorWrite(WriteOp* op, std::size_t index, const Status& status);
  void ZeroNextWindow(ZeroOp* op);

  // Per-sector turns: AcquireSector returns true if the sector was free (the caller starts
  // the piece now) or queues the piece for ReleaseSector, which hands the sector on.
  bool AcquireSector(SectorIdx sector, WriteOp* op, std::size_t index);
  void ReleaseSector(SectorIdx sector);

  // Write bookkeeping for fsync/flush and Drain.
  std::uint64_t BeginWrite();
  void EndWrite(std::uint64_t seq);
  // Replies to `req` once every write begun before now has ended.
  // `op` is kFlush or kFsync, counted and timed (with metrics) from `started`.
  void WaitForWrites(fuse_req_t req, FileHandle* fh, FuseOp op);
  void ReplyFlushed(fuse_req_t req, FileHandle* fh, FuseOp op,
                    FuseMetrics::Clock::time_point started);

  void TouchMtime();
  static int ErrnoOf(const Status& status);
  void LogError(const char* what, std::uint64_t sector, const Status& status);

  const DiskFsOptions options_;
  client::Client* const client_;
  ParallelDirectWrites parallel_writes_;
  const std::int64_t mount_time_ns_;
  std::atomic<std::int64_t> mtime_ns_;

  static constexpr std::size_t kLockShards = 16;
  struct SectorWaiter {
    WriteOp* op = nullptr;
    std::size_t index = 0;
  };
  struct LockShard {
    std::mutex mu;
    // A present key means the sector is taken; the vector holds the waiters in order.
    std::unordered_map<SectorIdx, std::vector<SectorWaiter>> held;
  };
  LockShard lock_shards_[kLockShards];

  std::mutex writes_mu_;
  std::condition_variable writes_cv_;
  std::uint64_t next_write_seq_ = 1;         // guarded by writes_mu_
  std::set<std::uint64_t> writes_inflight_;  // guarded by writes_mu_
  struct FlushWaiter {
    fuse_req_t req;
    FileHandle* fh;
    FuseOp op;
    FuseMetrics::Clock::time_point started;
  };
  // Keyed by the last write sequence number the waiter covers; guarded by writes_mu_.
  std::multimap<std::uint64_t, FlushWaiter> flush_waiters_;

  std::atomic<std::uint64_t> sector_reads_{0};
  std::atomic<std::uint64_t> sector_writes_{0};
  std::atomic<std::uint64_t> rmw_sectors_{0};
  std::atomic<std::int64_t> last_error_log_ns_{0};
};

}  // namespace atomdisk::fuse
