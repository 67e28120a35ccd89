// atomdisk-bench-passthrough: the smallest useful FUSE passthrough of one local file, for
// scripts/bench-fuse.sh. It mounts MOUNTPOINT holding `disk`, which reads and writes FILE
// (pread/pwrite in the libfuse worker thread, as libfuse's passthrough_ll does), with the
// same FUSE settings as atomdisk-fuse: low-level API, direct I/O, 1 MiB requests, the same
// thread pool and parallel direct writes unless -o no_parallel_writes. It is the baseline
// that tells what FUSE itself costs on this machine.
//
//   atomdisk-bench-passthrough FILE MOUNTPOINT [-o threads=N,no_parallel_writes,...]
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "common/types.h"
#include "fuse/disk_fs.h"
#include "fuse/mount.h"

namespace atomdisk::fuse {
namespace {

struct Passthrough {
  int buffered_fd = -1;
  int direct_fd = -1;
  int direct_dsync_fd = -1;  // for opens with O_DSYNC (or O_SYNC): durable on every write
  std::uint64_t size = 0;
  ParallelDirectWrites parallel_writes;
};

Passthrough* P(fuse_req_t req) { return static_cast<Passthrough*>(fuse_req_userdata(req)); }

// O_DIRECT needs aligned memory; the request buffer is not, so we copy (so does atomdisk).
struct AlignedBuffer {
  void* mem = nullptr;
  std::size_t size = 0;
  void* Get(std::size_t n) {
    if (n > size) {
      std::free(mem);
      if (posix_memalign(&mem, 4096, n) != 0) std::abort();
      size = n;
    }
    return mem;
  }
};
thread_local AlignedBuffer t_buffer;

void FillStat(Passthrough* p, fuse_ino_t ino, struct stat* st) {
  std::memset(st, 0, sizeof(*st));
  st->st_ino = ino;
  st->st_uid = getuid();
  st->st_gid = getgid();
  if (ino == kRootIno) {
    st->st_mode = S_IFDIR | 0755;
    st->st_nlink = 2;
  } else {
    st->st_mode = S_IFREG | 0600;
    st->st_nlink = 1;
    st->st_size = static_cast<off_t>(p->size);
    st->st_blocks = static_cast<blkcnt_t>(p->size / 512);
  }
  st->st_blksize = 4096;
}

int FdOf(fuse_file_info* fi) { return static_cast<int>(fi->fh); }

fuse_lowlevel_ops MakeOps() {
  fuse_lowlevel_ops ops;
  std::memset(&ops, 0, sizeof(ops));
  ops.init = [](void*, fuse_conn_info* conn) {
    if (conn->capable & FUSE_CAP_ASYNC_DIO) conn->want |= FUSE_CAP_ASYNC_DIO;
    conn->want &= ~(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
    conn->max_write = kMaxIoBytes;
    conn->max_background = 256;
    conn->congestion_threshold = 192;
  };
  ops.lookup = [](fuse_req_t req, fuse_ino_t parent, const char* name) {
    if (parent != kRootIno || std::strcmp(name, kDiskName) != 0) {
      fuse_reply_err(req, ENOENT);
      return;
    }
    fuse_entry_param e;
    std::memset(&e, 0, sizeof(e));
    e.ino = kDiskIno;
    FillStat(P(req), kDiskIno, &e.attr);
    e.attr_timeout = e.entry_timeout = 1.0;
    fuse_reply_entry(req, &e);
  };
  ops.getattr = [](fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
    struct stat st;
    FillStat(P(req), ino, &st);
    fuse_reply_attr(req, &st, 1.0);
  };
  ops.open = [](fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    if (ino != kDiskIno) {
      fuse_reply_err(req, EISDIR);
      return;
    }
    fi->direct_io = 1;
    // Honour O_DSYNC the way a local file would: fio --sync=dsync on this mount must pay for
    // durability like it does on the bare file and on atomdisk.
    Passthrough* p = P(req);
    int fd = p->buffered_fd;
    if (fi->flags & O_DIRECT) fd = (fi->flags & O_DSYNC) ? p->direct_dsync_fd : p->direct_fd;
    fi->fh = static_cast<std::uint64_t>(fd);
    fuse_reply_open(req, fi);
  };
  ops.release = [](fuse_req_t req, fuse_ino_t, fuse_file_info*) { fuse_reply_err(req, 0); };
  ops.read = [](fuse_req_t req, fuse_ino_t, size_t size, off_t off, fuse_file_info* fi) {
    void* buf = t_buffer.Get((size + 4095) & ~std::size_t{4095});
    ssize_t n = pread(FdOf(fi), buf, size, off);
    if (n < 0) {
      fuse_reply_err(req, errno);
      return;
    }
    fuse_reply_buf(req, static_cast<char*>(buf), static_cast<size_t>(n));
  };
  ops.write = [](fuse_req_t req, fuse_ino_t, const char* data, size_t size, off_t off,
                 fuse_file_info* fi) {
    const void* src = data;
    if (FdOf(fi) != P(req)->buffered_fd) {  // O_DIRECT
      void* buf = t_buffer.Get((size + 4095) & ~std::size_t{4095});
      std::memcpy(buf, data, size);
      src = buf;
    }
    ssize_t n = pwrite(FdOf(fi), src, size, off);
    if (n < 0) {
      fuse_reply_err(req, errno);
      return;
    }
    fuse_reply_write(req, static_cast<size_t>(n));
  };
  ops.flush = [](fuse_req_t req, fuse_ino_t, fuse_file_info*) { fuse_reply_err(req, 0); };
  ops.fsync = [](fuse_req_t req, fuse_ino_t, int datasync, fuse_file_info* fi) {
    int rc = datasync ? fdatasync(FdOf(fi)) : fsync(FdOf(fi));
    fuse_reply_err(req, rc == 0 ? 0 : errno);
  };
  ops.readdir = [](fuse_req_t req, fuse_ino_t, size_t size, off_t off, fuse_file_info*) {
    const char* names[] = {".", "..", kDiskName};
    fuse_ino_t inos[] = {kRootIno, kRootIno, kDiskIno};
    std::vector<char> buf(size);
    std::size_t used = 0;
    for (off_t i = off; i < 3; ++i) {
      struct stat st;
      FillStat(P(req), inos[i], &st);
      std::size_t need =
          fuse_add_direntry(req, buf.data() + used, size - used, names[i], &st, i + 1);
      if (need > size - used) break;
      used += need;
    }
    fuse_reply_buf(req, buf.data(), used);
  };
  ops.statfs = [](fuse_req_t req, fuse_ino_t) {
    struct statvfs st;
    std::memset(&st, 0, sizeof(st));
    st.f_bsize = st.f_frsize = 4096;
    st.f_blocks = P(req)->size / 4096;
    st.f_namemax = 255;
    fuse_reply_statfs(req, &st);
  };
  return ops;
}

}  // namespace
}  // namespace atomdisk::fuse

int main(int argc, char** argv) {
  using namespace atomdisk::fuse;
  CLI::App app{"atomdisk-bench-passthrough: FUSE passthrough of one local file"};
  std::string file;
  std::string mountpoint_arg;
  std::vector<std::string> o_args;
  app.add_option("file", file, "backing file (its size is the disk's)")->required();
  app.add_option("mountpoint", mountpoint_arg)->required();
  bool foreground_ignored = true;
  app.add_flag("-f", foreground_ignored, "ignored: always in the foreground");
  app.add_option("-o", o_args);
  CLI11_PARSE(app, argc, argv);

  MountTuning tuning;
  tuning.threads = 16;  // handlers block in pread/pwrite: one thread per job in flight
  if (atomdisk::Status s = ParseMountOptions(o_args, &tuning); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.message().c_str());
    return 1;
  }
  auto mountpoint = ResolveMountpoint(mountpoint_arg);
  if (!mountpoint.ok()) {
    std::fprintf(stderr, "%s\n", mountpoint.status().message().c_str());
    return 1;
  }
  static Passthrough p;
  p.buffered_fd = open(file.c_str(), O_RDWR | O_CLOEXEC);
  p.direct_fd = open(file.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC);
  p.direct_dsync_fd = open(file.c_str(), O_RDWR | O_DIRECT | O_DSYNC | O_CLOEXEC);
  struct stat st;
  if (p.buffered_fd < 0 || p.direct_fd < 0 || p.direct_dsync_fd < 0 ||
      fstat(p.buffered_fd, &st) != 0) {
    std::fprintf(stderr, "%s: %s\n", file.c_str(), std::strerror(errno));
    return 1;
  }
  p.size = static_cast<std::uint64_t>(st.st_size);
  BlockTerminationSignals();
  SessionOptions session;
  session.mountpoint = *mountpoint;
  session.fsname = "passthrough";
  session.tuning = tuning;
  SessionHooks hooks;
  hooks.parallel_writes = [](void* userdata) {
    return &static_cast<Passthrough*>(userdata)->parallel_writes;
  };
  hooks.on_mounted = [](bool ok, const std::string& error) {
    if (!ok) std::fprintf(stderr, "atomdisk-bench-passthrough: %s\n", error.c_str());
  };
  static const fuse_lowlevel_ops kOps = MakeOps();
  return RunSession(session, kOps, &p, hooks);
}
