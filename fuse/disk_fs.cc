#include "fuse/disk_fs.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <vector>

namespace atomdisk::fuse {
namespace {

constexpr double kAttrTimeoutS = 1.0;
constexpr double kEntryTimeoutS = 3600.0;  // the one name never changes
constexpr mode_t kDiskMode = S_IFREG | 0600;
constexpr mode_t kRootMode = S_IFDIR | 0755;

std::int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

timespec ToTimespec(std::int64_t ns) {
  timespec ts;
  ts.tv_sec = ns / 1000000000;
  ts.tv_nsec = ns % 1000000000;
  return ts;
}

// A sector buffer whose bytes we are about to overwrite anyway (no zero fill).
std::shared_ptr<SectorData> NewSectorBuffer() {
  return std::make_shared_for_overwrite<SectorData>();
}

// One read request: its sectors arrive in any order; the last one replies.
struct ReadOp {
  fuse_req_t req;
  SectorIdx first;
  std::uint32_t head;  // offset of the request in its first sector
  std::size_t size;
  std::vector<SectorPtr> sectors;
  std::atomic<std::size_t> remaining;
  std::atomic<int> error{0};
  FuseMetrics::Clock::time_point started{};  // for the latency metric
};

}  // namespace

struct DiskFs::FileHandle {
  // Set when a write through this open file failed; reported once by flush or fsync.
  std::atomic<bool> write_failed{false};
};

// One WriteRange call: a run of sectors, each written once under its per-sector turn.
struct DiskFs::WriteOp {
  struct Piece {
    // Full sectors: the final value. Partial sectors: null, and `partial` holds the new
    // bytes in [lo, hi); the rest is filled from the sector's current value.
    SectorPtr full;
    std::shared_ptr<SectorData> partial;
    std::uint32_t lo = 0;
    std::uint32_t hi = kSectorSize;
  };
  SectorIdx first = 0;
  std::vector<Piece> pieces;
  std::atomic<std::size_t> remaining{0};
  std::atomic<int> error{0};
  std::function<void(int)> done;
};

// One fallocate zero-range, written window by window so memory stays bounded.
struct DiskFs::ZeroOp {
  fuse_req_t req;
  FileHandle* fh;
  std::uint64_t next;
  std::uint64_t end;
  std::uint64_t seq;
  int error = 0;
  FuseMetrics::Clock::time_point started{};  // for the latency metric
};

DiskFs::DiskFs(DiskFsOptions options, client::Client* client)
    : options_(options), client_(client), mount_time_ns_(NowNs()), mtime_ns_(mount_time_ns_) {
  ATOMDISK_CHECK(client_ != nullptr);
  ATOMDISK_CHECK(options_.sectors > 0);
  ATOMDISK_CHECK(options_.zero_window_sectors > 0);
}

DiskFs::~DiskFs() = default;

DiskFs* DiskFs::Self(fuse_req_t req) { return static_cast<DiskFs*>(fuse_req_userdata(req)); }

ParallelDirectWrites* DiskFs::ParallelWritesOf(void* userdata) {
  return &static_cast<DiskFs*>(userdata)->parallel_writes_;
}

int DiskFs::ErrnoOf(const Status& status) {
  switch (status.code()) {
    case StatusCode::kOk:
      return 0;
    case StatusCode::kInvalidArgument:
      return EINVAL;
    default:
      // Timeout (no quorum within the deadline), Unavailable, AuthFailure, Corruption...:
      // the caller sees an I/O error; the log line says which.
      return EIO;
  }
}

void DiskFs::LogError(const char* what, std::uint64_t sector, const Status& status) {
  // At most one line a second: a lost quorum fails thousands of sectors at once.
  std::int64_t now = NowNs();
  std::int64_t last = last_error_log_ns_.load(std::memory_order_relaxed);
  if (now - last < 1000000000) return;
  if (!last_error_log_ns_.compare_exchange_strong(last, now)) return;
  spdlog::error("{} sector {} failed: {}", what, sector, status.ToString());
}

void DiskFs::TouchMtime() { mtime_ns_.store(NowNs(), std::memory_order_relaxed); }

void DiskFs::FillAttr(fuse_ino_t ino, struct stat* st) const {
  std::memset(st, 0, sizeof(*st));
  st->st_ino = ino;
  st->st_uid = options_.uid;
  st->st_gid = options_.gid;
  st->st_atim = ToTimespec(mount_time_ns_);
  if (ino == kRootIno) {
    st->st_mode = kRootMode;
    st->st_nlink = 2;
    st->st_size = 4096;
    st->st_blocks = 0;
    st->st_mtim = st->st_ctim = ToTimespec(mount_time_ns_);
  } else {
    st->st_mode = kDiskMode;
    st->st_nlink = 1;
    st->st_size = static_cast<off_t>(size_bytes());
    st->st_blocks = static_cast<blkcnt_t>(size_bytes() / 512);  // every block exists
    st->st_mtim = st->st_ctim = ToTimespec(mtime_ns_.load(std::memory_order_relaxed));
  }
  st->st_blksize = kSectorSize;
}

// ---------------------------------------------------------------------------------------
// Operation table.

const fuse_lowlevel_ops& DiskFs::Ops() {
  static const fuse_lowlevel_ops kOps = [] {
    fuse_lowlevel_ops ops;
    std::memset(&ops, 0, sizeof(ops));
    ops.init = &DiskFs::OnInit;
    ops.lookup = &DiskFs::OnLookup;
    ops.getattr = &DiskFs::OnGetattr;
    ops.setattr = &DiskFs::OnSetattr;
    ops.open = &DiskFs::OnOpen;
    ops.release = &DiskFs::OnRelease;
    ops.read = &DiskFs::OnRead;
    ops.write = &DiskFs::OnWrite;
    ops.flush = &DiskFs::OnFlush;
    ops.fsync = &DiskFs::OnFsync;
    ops.readdir = &DiskFs::OnReaddir;
    ops.statfs = &DiskFs::OnStatfs;
    ops.fallocate = &DiskFs::OnFallocate;
    // A fixed device: no new names, no removed names.
    ops.mknod = [](fuse_req_t req, fuse_ino_t, const char*, mode_t, dev_t) { OnRefuse(req); };
    ops.mkdir = [](fuse_req_t req, fuse_ino_t, const char*, mode_t) { OnRefuse(req); };
    ops.unlink = [](fuse_req_t req, fuse_ino_t, const char*) { OnRefuse(req); };
    ops.rmdir = [](fuse_req_t req, fuse_ino_t, const char*) { OnRefuse(req); };
    ops.symlink = [](fuse_req_t req, const char*, fuse_ino_t, const char*) { OnRefuse(req); };
    ops.rename = [](fuse_req_t req, fuse_ino_t, const char*, fuse_ino_t, const char*,
                    unsigned int) { OnRefuse(req); };
    ops.link = [](fuse_req_t req, fuse_ino_t, fuse_ino_t, const char*) { OnRefuse(req); };
    ops.create = [](fuse_req_t req, fuse_ino_t, const char*, mode_t, fuse_file_info*) {
      OnRefuse(req);
    };
    return ops;
  }();
  return kOps;
}

void DiskFs::OnRefuse(fuse_req_t req) { fuse_reply_err(req, EPERM); }

void DiskFs::OnInit(void* userdata, fuse_conn_info* conn) {
  auto* self = static_cast<DiskFs*>(userdata);
  // Asynchronous direct I/O: the kernel sends the requests of one aio/io_uring/loop request
  // in parallel instead of one after another.
  if (conn->capable & FUSE_CAP_ASYNC_DIO) conn->want |= FUSE_CAP_ASYNC_DIO;
  if (conn->capable & FUSE_CAP_ASYNC_READ) conn->want |= FUSE_CAP_ASYNC_READ;
  // O_TRUNC must come with open (where it is ignored), not as a truncation to 0 before it,
  // which the size check of setattr would refuse.
  if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC) conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
  // Writes must reach us when the caller writes (no write-back caching in any mode).
  conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
  // Splicing would hand us pipe buffers we copy anyway.
  conn->want &= ~(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
  conn->max_write = kMaxIoBytes;  // libfuse caps it at its buffer size (the same 1 MiB)
  conn->max_readahead = self->options_.cached ? kMaxIoBytes : conn->max_readahead;
  conn->max_background = self->options_.max_background;
  conn->congestion_threshold = static_cast<unsigned>(self->options_.max_background) * 3 / 4;
  conn->time_gran = 1;
  spdlog::info("fuse: kernel protocol {}.{}, max_write {}, max_background {}, async dio {}",
               conn->proto_major, conn->proto_minor, conn->max_write, conn->max_background,
               (conn->want & FUSE_CAP_ASYNC_DIO) != 0);
}

void DiskFs::OnLookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  DiskFs* self = Self(req);
  if (parent != kRootIno) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  if (std::strcmp(name, kDiskName) != 0) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  fuse_entry_param e;
  std::memset(&e, 0, sizeof(e));
  e.ino = kDiskIno;
  e.generation = 1;
  self->FillAttr(kDiskIno, &e.attr);
  e.attr_timeout = kAttrTimeoutS;
  e.entry_timeout = kEntryTimeoutS;
  fuse_reply_entry(req, &e);
}

void DiskFs::OnGetattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  DiskFs* self = Self(req);
  if (ino != kRootIno && ino != kDiskIno) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  struct stat st;
  self->FillAttr(ino, &st);
  fuse_reply_attr(req, &st, kAttrTimeoutS);
}

void DiskFs::OnSetattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set,
                       fuse_file_info*) {
  DiskFs* self = Self(req);
  if (ino != kRootIno && ino != kDiskIno) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  // Owner and mode are fixed at mount time; the size is the device's.
  if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
    fuse_reply_err(req, EPERM);
    return;
  }
  if (to_set & FUSE_SET_ATTR_SIZE) {
    if (ino != kDiskIno || static_cast<std::uint64_t>(attr->st_size) != self->size_bytes()) {
      fuse_reply_err(req, EPERM);
      return;
    }
  }
  if (ino == kDiskIno) {
    if (to_set & FUSE_SET_ATTR_MTIME_NOW) {
      self->TouchMtime();
    } else if (to_set & FUSE_SET_ATTR_MTIME) {
      self->mtime_ns_.store(std::int64_t{attr->st_mtim.tv_sec} * 1000000000 + attr->st_mtim.tv_nsec,
                            std::memory_order_relaxed);
    }
  }
  struct stat st;
  self->FillAttr(ino, &st);
  fuse_reply_attr(req, &st, kAttrTimeoutS);
}

void DiskFs::OnOpen(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  DiskFs* self = Self(req);
  if (ino != kDiskIno) {
    fuse_reply_err(req, ino == kRootIno ? EISDIR : ENOENT);
    return;
  }
  // O_TRUNC arrives here (atomic_o_trunc, which libfuse asks for) and is ignored, as a block
  // device ignores it: `dd of=disk`, `cp img disk` and `cat img > disk` overwrite in place.
  // The kernel then drops its cached size, and the next stat asks us again.
  fi->direct_io = self->options_.cached ? 0 : 1;
  fi->keep_cache = 0;  // cached mode: each open starts with a clean page cache
  auto* fh = new FileHandle();
  fi->fh = reinterpret_cast<std::uint64_t>(fh);
  if (fuse_reply_open(req, fi) != 0) delete fh;  // interrupted: no release will follow
}

void DiskFs::OnRelease(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  delete reinterpret_cast<FileHandle*>(fi->fh);
  fuse_reply_err(req, 0);
}

void DiskFs::OnReaddir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  DiskFs* self = Self(req);
  if (ino != kRootIno) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  struct Entry {
    const char* name;
    fuse_ino_t ino;
  };
  static constexpr Entry kEntries[] = {{".", kRootIno}, {"..", kRootIno}, {kDiskName, kDiskIno}};
  std::vector<char> buf(size);
  std::size_t used = 0;
  for (off_t i = std::max<off_t>(off, 0); i < 3; ++i) {
    struct stat st;
    self->FillAttr(kEntries[i].ino, &st);
    std::size_t need =
        fuse_add_direntry(req, buf.data() + used, size - used, kEntries[i].name, &st, i + 1);
    if (need > size - used) break;
    used += need;
  }
  fuse_reply_buf(req, buf.data(), used);
}

void DiskFs::OnStatfs(fuse_req_t req, fuse_ino_t) {
  DiskFs* self = Self(req);
  struct statvfs st;
  std::memset(&st, 0, sizeof(st));
  st.f_bsize = kSectorSize;
  st.f_frsize = kSectorSize;
  st.f_blocks = self->options_.sectors;  // all of them belong to `disk`
  st.f_bfree = 0;
  st.f_bavail = 0;
  st.f_files = 2;
  st.f_ffree = 0;
  st.f_favail = 0;
  st.f_namemax = 255;
  fuse_reply_statfs(req, &st);
}

// ---------------------------------------------------------------------------------------
// Reads.

void DiskFs::OnRead(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  DiskFs* self = Self(req);
  if (ino != kDiskIno) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  if (off < 0) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  const std::uint64_t dev = self->size_bytes();
  const auto start = static_cast<std::uint64_t>(off);
  if (start >= dev || size == 0) {
    fuse_reply_buf(req, nullptr, 0);  // end of file
    return;
  }
  const std::uint64_t len = std::min<std::uint64_t>(size, dev - start);
  const SectorIdx first = start / kSectorSize;
  const SectorIdx last = (start + len - 1) / kSectorSize;
  const std::size_t count = last - first + 1;

  auto* op = new ReadOp{req,
                        first,
                        static_cast<std::uint32_t>(start % kSectorSize),
                        len,
                        std::vector<SectorPtr>(count),
                        {},
                        {}};
  // One extent per kMaxExtentSectors (a 1 MiB request is one command where the nodes take
  // extents; the client library runs single-sector reads where they do not).
  const std::size_t chunks = (count + kMaxExtentSectors - 1) / kMaxExtentSectors;
  op->remaining.store(chunks, std::memory_order_relaxed);
  self->sector_reads_.fetch_add(count, std::memory_order_relaxed);
  if (self->options_.metrics) op->started = self->options_.metrics->Start(FuseOp::kRead);

  // After the last call below, `op` may already be gone: use only locals.
  for (std::size_t c = 0; c < chunks; ++c) {
    const std::size_t off = c * kMaxExtentSectors;
    const auto n =
        static_cast<std::uint32_t>(std::min<std::size_t>(kMaxExtentSectors, count - off));
    self->client_->ReadExtentWith(
        first + off, n, client::OpOptions{}, [self, op, off](client::OpResult result) {
          if (result.status.ok()) {
            for (std::size_t k = 0; k < result.sectors.size(); ++k) {
              op->sectors[off + k] = std::move(result.sectors[k]);
            }
          } else {
            self->LogError("read", op->first + off, result.status);
            int expected = 0;
            op->error.compare_exchange_strong(expected, ErrnoOf(result.status));
          }
          if (op->remaining.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
          int err = op->error.load(std::memory_order_relaxed);
          if (self->options_.metrics)
            self->options_.metrics->Done(FuseOp::kRead, op->started, err, op->size);
          if (err != 0) {
            fuse_reply_err(op->req, err);
          } else {
            // Zero copy: the reply points into the sectors themselves.
            std::vector<iovec> iov(op->sectors.size());
            const std::uint64_t req_end = op->head + op->size;  // relative to the first sector
            for (std::size_t k = 0; k < iov.size(); ++k) {
              std::uint64_t sector_start = k * kSectorSize;
              std::uint64_t b = std::max<std::uint64_t>(op->head, sector_start);
              std::uint64_t e = std::min<std::uint64_t>(req_end, sector_start + kSectorSize);
              iov[k].iov_base =
                  const_cast<std::uint8_t*>(op->sectors[k]->data()) + (b - sector_start);
              iov[k].iov_len = e - b;
            }
            fuse_reply_iov(op->req, iov.data(), static_cast<int>(iov.size()));
          }
          delete op;
        });
  }
}

// ---------------------------------------------------------------------------------------
// Writes.

void DiskFs::OnWrite(fuse_req_t req, fuse_ino_t ino, const char* buf, size_t size, off_t off,
                     fuse_file_info* fi) {
  DiskFs* self = Self(req);
  if (ino != kDiskIno) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  if (off < 0) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  if (size == 0) {
    fuse_reply_write(req, 0);
    return;
  }
  const std::uint64_t dev = self->size_bytes();
  const auto start = static_cast<std::uint64_t>(off);
  if (start >= dev) {
    fuse_reply_err(req, ENOSPC);  // like a block device: nothing past the end
    return;
  }
  const std::uint64_t len = std::min<std::uint64_t>(size, dev - start);  // short write at end
  auto* fh = reinterpret_cast<FileHandle*>(fi->fh);
  const std::uint64_t seq = self->BeginWrite();
  const auto started = self->options_.metrics ? self->options_.metrics->Start(FuseOp::kWrite)
                                              : FuseMetrics::Clock::time_point{};
  self->WriteRange(start, len, reinterpret_cast<const std::uint8_t*>(buf),
                   [self, req, len, seq, fh, started](int err) {
                     if (self->options_.metrics)
                       self->options_.metrics->Done(FuseOp::kWrite, started, err, len);
                     if (err != 0 && fh != nullptr) fh->write_failed.store(true);
                     if (err == 0) self->TouchMtime();
                     self->EndWrite(seq);
                     if (err != 0) {
                       fuse_reply_err(req, err);
                     } else {
                       fuse_reply_write(req, len);
                     }
                   });
}

void DiskFs::WriteRange(std::uint64_t off, std::uint64_t len, const std::uint8_t* src,
                        std::function<void(int)> done) {
  ATOMDISK_CHECK(len > 0 && off + len <= size_bytes());
  const SectorIdx first = off / kSectorSize;
  const SectorIdx last = (off + len - 1) / kSectorSize;
  const std::size_t count = last - first + 1;

  auto* op = new WriteOp();
  op->first = first;
  op->done = std::move(done);
  op->pieces.resize(count);
  op->remaining.store(count, std::memory_order_relaxed);
  // Copy everything now: the request buffer is reused once the handler returns.
  for (std::size_t i = 0; i < count; ++i) {
    const std::uint64_t sector_start = (first + i) * kSectorSize;
    const std::uint64_t b = std::max(off, sector_start);
    const std::uint64_t e = std::min(off + len, sector_start + kSectorSize);
    WriteOp::Piece& piece = op->pieces[i];
    piece.lo = static_cast<std::uint32_t>(b - sector_start);
    piece.hi = static_cast<std::uint32_t>(e - sector_start);
    if (piece.lo == 0 && piece.hi == kSectorSize) {
      if (src == nullptr) {
        piece.full = ZeroSector();
      } else {
        auto data = NewSectorBuffer();
        std::memcpy(data->data(), src + (b - off), kSectorSize);
        piece.full = std::move(data);
      }
    } else {
      piece.partial = NewSectorBuffer();
      if (src == nullptr) {
        std::memset(piece.partial->data() + piece.lo, 0, piece.hi - piece.lo);
      } else {
        std::memcpy(piece.partial->data() + piece.lo, src + (b - off), piece.hi - piece.lo);
      }
    }
  }
  bool all_full = true;
  for (const WriteOp::Piece& piece : op->pieces) all_full = all_full && piece.full != nullptr;
  // Take each sector's turn. A sector held by an earlier write of this mount is started by
  // that write's ReleaseSector (possibly on another thread, at once).
  std::vector<std::size_t> got;
  got.reserve(count);
  for (std::size_t i = 0; i < count; ++i) {
    if (AcquireSector(first + i, op, i)) got.push_back(i);
  }
  if (all_full && got.size() == count) {
    // The common case (dd, a file copy, a discard): every sector whole and free. One extent
    // per kMaxExtentSectors; gather everything before the first send, after which `op` may
    // be gone at any moment.
    std::vector<std::vector<SectorPtr>> chunks;
    for (std::size_t off = 0; off < count; off += kMaxExtentSectors) {
      auto& chunk = chunks.emplace_back();
      for (std::size_t i = off; i < std::min<std::size_t>(count, off + kMaxExtentSectors); ++i) {
        chunk.push_back(std::move(op->pieces[i].full));
      }
    }
    sector_writes_.fetch_add(count, std::memory_order_relaxed);
    const bool zeros = src == nullptr;
    for (std::size_t c = 0; c < chunks.size(); ++c) {
      const std::size_t off = c * kMaxExtentSectors;
      const auto n = static_cast<std::uint32_t>(chunks[c].size());
      auto finish = [this, op, off, n](client::OpResult r) {
        for (std::uint32_t k = 0; k < n; ++k) FinishSectorWrite(op, off + k, r.status);
      };
      if (zeros) {
        client_->WriteZerosWith(first + off, n, client::OpOptions{}, std::move(finish));
      } else {
        client_->WriteExtentWith(first + off, std::move(chunks[c]), client::OpOptions{},
                                 std::move(finish));
      }
    }
    return;
  }
  // Otherwise sector by sector; `op` may be gone after the last start, so this reads only
  // locals.
  for (std::size_t i : got) StartSectorWrite(op, i);
}

bool DiskFs::AcquireSector(SectorIdx sector, WriteOp* op, std::size_t index) {
  LockShard& shard = lock_shards_[sector % kLockShards];
  std::lock_guard<std::mutex> lock(shard.mu);
  auto [it, inserted] = shard.held.try_emplace(sector);
  if (inserted) return true;
  it->second.push_back(SectorWaiter{op, index});
  return false;
}

void DiskFs::ReleaseSector(SectorIdx sector) {
  LockShard& shard = lock_shards_[sector % kLockShards];
  SectorWaiter next;
  {
    std::lock_guard<std::mutex> lock(shard.mu);
    auto it = shard.held.find(sector);
    ATOMDISK_CHECK(it != shard.held.end());
    if (it->second.empty()) {
      shard.held.erase(it);
      return;
    }
    next = it->second.front();
    it->second.erase(it->second.begin());
  }
  StartSectorWrite(next.op, next.index);  // the sector stays held, now by `next`
}

void DiskFs::StartSectorWrite(WriteOp* op, std::size_t index) {
  WriteOp::Piece& piece = op->pieces[index];
  const SectorIdx sector = op->first + index;
  sector_writes_.fetch_add(1, std::memory_order_relaxed);
  if (piece.full) {
    SectorPtr data = std::move(piece.full);
    client_->Write(sector, std::move(data),
                   [this, op, index](Status status) { FinishSectorWrite(op, index, status); });
    return;
  }
  // Read-modify-write of a partly covered sector; we hold its turn in this mount.
  rmw_sectors_.fetch_add(1, std::memory_order_relaxed);
  client_->Read(sector, [this, op, index, sector](Result<SectorPtr> result) {
    if (!result.ok()) {
      FinishSectorWrite(op, index, result.status());
      return;
    }
    WriteOp::Piece& p = op->pieces[index];
    const SectorData& old = **result;
    std::memcpy(p.partial->data(), old.data(), p.lo);
    std::memcpy(p.partial->data() + p.hi, old.data() + p.hi, kSectorSize - p.hi);
    SectorPtr data = std::move(p.partial);
    client_->Write(sector, std::move(data),
                   [this, op, index](Status status) { FinishSectorWrite(op, index, status); });
  });
}

void DiskFs::FinishSectorWrite(WriteOp* op, std::size_t index, const Status& status) {
  const SectorIdx sector = op->first + index;
  if (!status.ok()) {
    LogError("write", sector, status);
    int expected = 0;
    op->error.compare_exchange_strong(expected, ErrnoOf(status));
  }
  // Count this sector done before handing its turn on: the next holder may finish its own op
  // inline, and ours must not be touched after our last decrement.
  const bool last = op->remaining.fetch_sub(1, std::memory_order_acq_rel) == 1;
  ReleaseSector(sector);
  if (!last) return;
  const int err = op->error.load(std::memory_order_relaxed);
  std::function<void(int)> done = std::move(op->done);
  delete op;
  done(err);
}

// ---------------------------------------------------------------------------------------
// Discard.

void DiskFs::OnFallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
                         fuse_file_info* fi) {
  DiskFs* self = Self(req);
  if (ino != kDiskIno) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  if (offset < 0 || length <= 0) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  const std::uint64_t dev = self->size_bytes();
  const auto start = static_cast<std::uint64_t>(offset);
  const auto len = static_cast<std::uint64_t>(length);
  const bool zero = (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) != 0;
  if (mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) {
    fuse_reply_err(req, EOPNOTSUPP);
    return;
  }
  if (!zero) {
    // Preallocation: every block already exists; the size cannot grow.
    fuse_reply_err(req, start + len <= dev ? 0 : EFBIG);
    return;
  }
  if (start >= dev) {
    fuse_reply_err(req, 0);  // nothing of the device in the range
    return;
  }
  auto* op = new ZeroOp{req, reinterpret_cast<FileHandle*>(fi->fh), start,
                        std::min(dev, start + len), self->BeginWrite()};
  if (self->options_.metrics) op->started = self->options_.metrics->Start(FuseOp::kFallocate);
  self->ZeroNextWindow(op);
}

void DiskFs::ZeroNextWindow(ZeroOp* op) {
  if (op->next >= op->end || op->error != 0) {
    const int err = op->error;
    if (err != 0 && op->fh != nullptr) op->fh->write_failed.store(true);
    if (err == 0) TouchMtime();
    EndWrite(op->seq);
    if (options_.metrics) options_.metrics->Done(FuseOp::kFallocate, op->started, err);
    fuse_req_t req = op->req;
    delete op;
    fuse_reply_err(req, err);
    return;
  }
  const std::uint64_t window = options_.zero_window_sectors * kSectorSize;
  const std::uint64_t len = std::min(op->end - op->next, window - op->next % kSectorSize);
  WriteRange(op->next, len, nullptr, [this, op, len](int err) {
    op->error = err;
    op->next += len;
    ZeroNextWindow(op);
  });
}

// ---------------------------------------------------------------------------------------
// fsync, flush, drain.

std::uint64_t DiskFs::BeginWrite() {
  std::lock_guard<std::mutex> lock(writes_mu_);
  const std::uint64_t seq = next_write_seq_++;
  writes_inflight_.insert(seq);
  return seq;
}

void DiskFs::EndWrite(std::uint64_t seq) {
  std::vector<FlushWaiter> ready;
  {
    std::lock_guard<std::mutex> lock(writes_mu_);
    writes_inflight_.erase(seq);
    const std::uint64_t oldest = writes_inflight_.empty()
                                     ? std::numeric_limits<std::uint64_t>::max()
                                     : *writes_inflight_.begin();
    while (!flush_waiters_.empty() && flush_waiters_.begin()->first < oldest) {
      ready.push_back(flush_waiters_.begin()->second);
      flush_waiters_.erase(flush_waiters_.begin());
    }
    if (writes_inflight_.empty()) writes_cv_.notify_all();
  }
  for (const FlushWaiter& w : ready) ReplyFlushed(w.req, w.fh, w.op, w.started);
}

void DiskFs::WaitForWrites(fuse_req_t req, FileHandle* fh, FuseOp op) {
  const FuseMetrics::Clock::time_point started =
      options_.metrics ? options_.metrics->Start(op) : FuseMetrics::Clock::time_point{};
  {
    std::lock_guard<std::mutex> lock(writes_mu_);
    const std::uint64_t covered = next_write_seq_ - 1;
    if (!writes_inflight_.empty() && *writes_inflight_.begin() <= covered) {
      flush_waiters_.emplace(covered, FlushWaiter{req, fh, op, started});
      return;
    }
  }
  ReplyFlushed(req, fh, op, started);
}

void DiskFs::ReplyFlushed(fuse_req_t req, FileHandle* fh, FuseOp op,
                          FuseMetrics::Clock::time_point started) {
  const int err = fh != nullptr && fh->write_failed.exchange(false) ? EIO : 0;
  // Counted before the reply, like every request: a scrape after the caller's close() or
  // fsync() returned sees it.
  if (options_.metrics) options_.metrics->Done(op, started, err);
  fuse_reply_err(req, err);
}

void DiskFs::OnFlush(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  Self(req)->WaitForWrites(req, reinterpret_cast<FileHandle*>(fi->fh), FuseOp::kFlush);
}

void DiskFs::OnFsync(fuse_req_t req, fuse_ino_t, int, fuse_file_info* fi) {
  // Every acknowledged write is already on stable storage on a majority: waiting for the
  // writes in flight is all a sync has to do.
  Self(req)->WaitForWrites(req, reinterpret_cast<FileHandle*>(fi->fh), FuseOp::kFsync);
}

bool DiskFs::Drain(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(writes_mu_);
  return writes_cv_.wait_for(lock, timeout, [this] { return writes_inflight_.empty(); });
}

}  // namespace atomdisk::fuse
