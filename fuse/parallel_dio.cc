#include "fuse/parallel_dio.h"

#include <sys/uio.h>
#include <unistd.h>

#include <cstring>

namespace atomdisk::fuse {
namespace {

// From the kernel's include/uapi/linux/fuse.h (libfuse does not install fuse_kernel.h).
constexpr std::uint32_t kFuseOpcodeOpen = 14;
constexpr std::uint32_t kFopenParallelDirectWrites = 1u << 6;

struct InHeader {  // struct fuse_in_header
  std::uint32_t len;
  std::uint32_t opcode;
  std::uint64_t unique;
  std::uint64_t nodeid;
  std::uint32_t uid, gid, pid;
  std::uint16_t total_extlen;
  std::uint16_t padding;
};
static_assert(sizeof(InHeader) == 40);

struct OutHeader {  // struct fuse_out_header
  std::uint32_t len;
  std::int32_t error;
  std::uint64_t unique;
};
static_assert(sizeof(OutHeader) == 16);

struct OpenOut {  // struct fuse_open_out
  std::uint64_t fh;
  std::uint32_t open_flags;
  std::int32_t backing_id;
};
static_assert(sizeof(OpenOut) == 16);

}  // namespace

ParallelDirectWrites::LookupFn ParallelDirectWrites::lookup_ = nullptr;

int ParallelDirectWrites::Install(fuse_session* se, LookupFn lookup) {
  lookup_ = lookup;
  static const fuse_custom_io kIo = {
      .writev = &ParallelDirectWrites::Writev,
      .read = &ParallelDirectWrites::Read,
      .splice_receive = nullptr,
      .splice_send = nullptr,
  };
  return fuse_session_custom_io(se, &kIo, fuse_session_fd(se));
}

ssize_t ParallelDirectWrites::Read(int fd, void* buf, size_t len, void* userdata) {
  ssize_t n = ::read(fd, buf, len);
  if (n > 0) lookup_(userdata)->NoteRequest(buf, n);
  return n;
}

ssize_t ParallelDirectWrites::Writev(int fd, iovec* iov, int count, void* userdata) {
  lookup_(userdata)->PatchReply(iov, count);
  return ::writev(fd, iov, count);
}

void ParallelDirectWrites::NoteRequest(const void* buf, ssize_t len) {
  if (static_cast<size_t>(len) < sizeof(InHeader)) return;
  InHeader in;
  std::memcpy(&in, buf, sizeof(in));
  if (in.opcode != kFuseOpcodeOpen) return;
  std::lock_guard<std::mutex> lock(mu_);
  open_requests_.insert(in.unique);
  pending_.store(open_requests_.size(), std::memory_order_release);
}

void ParallelDirectWrites::PatchReply(iovec* iov, int count) {
  if (pending_.load(std::memory_order_acquire) == 0) return;  // the common case: no open
  if (count < 1 || iov[0].iov_len < sizeof(OutHeader)) return;
  OutHeader out;
  std::memcpy(&out, iov[0].iov_base, sizeof(out));
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (open_requests_.erase(out.unique) == 0) return;
    pending_.store(open_requests_.size(), std::memory_order_release);
  }
  // libfuse's fuse_reply_open sends the header and the fuse_open_out as two iovecs.
  if (out.error != 0 || count < 2 || iov[1].iov_len < sizeof(OpenOut)) return;
  auto* open_out = static_cast<OpenOut*>(iov[1].iov_base);
  open_out->open_flags |= kFopenParallelDirectWrites;
  patched_.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace atomdisk::fuse
