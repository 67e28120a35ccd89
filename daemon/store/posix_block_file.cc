// The POSIX BlockFile: pread/pwrite/fdatasync on one regular file.

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <string>

#include "daemon/store/block_file.h"

namespace atomdisk {
namespace {

class PosixBlockFile final : public BlockFile {
 public:
  PosixBlockFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  ~PosixBlockFile() override { ::close(fd_); }

  PosixBlockFile(const PosixBlockFile&) = delete;
  PosixBlockFile& operator=(const PosixBlockFile&) = delete;

  Status ReadAt(std::uint64_t offset, void* buf, std::size_t n) override {
    auto* p = static_cast<std::uint8_t*>(buf);
    while (n > 0) {
      ssize_t r = ::pread(fd_, p, n, static_cast<off_t>(offset));
      if (r < 0) {
        if (errno == EINTR) continue;
        return Status::FromErrno("pread " + path_ + " at " + std::to_string(offset), errno);
      }
      if (r == 0) {  // end of file: the rest reads as zeros
        std::memset(p, 0, n);
        break;
      }
      p += r;
      offset += static_cast<std::uint64_t>(r);
      n -= static_cast<std::size_t>(r);
    }
    return Status::Ok();
  }

  Status WriteAt(std::uint64_t offset, const void* buf, std::size_t n) override {
    const auto* p = static_cast<const std::uint8_t*>(buf);
    while (n > 0) {
      ssize_t w = ::pwrite(fd_, p, n, static_cast<off_t>(offset));
      if (w < 0) {
        if (errno == EINTR) continue;
        return Status::FromErrno("pwrite " + path_ + " at " + std::to_string(offset), errno);
      }
      p += w;
      offset += static_cast<std::uint64_t>(w);
      n -= static_cast<std::size_t>(w);
    }
    return Status::Ok();
  }

  Status Sync() override {
    // No retry loop on EINTR: fdatasync is not interrupted by signals on Linux, and after a
    // real failure a retry may "succeed" having lost the data (so the store stops instead).
    if (::fdatasync(fd_) != 0) return Status::FromErrno("fdatasync " + path_, errno);
    return Status::Ok();
  }

  Status Allocate(std::uint64_t size) override {
    // fallocate (not posix_fallocate, which falls back to writing zeros over the whole range
    // where the file system cannot reserve blocks: far too slow for a large device). The
    // reserved extents are "unwritten": they read as zeros and SEEK_DATA skips them.
    int r;
    do {
      r = ::fallocate(fd_, 0, 0, static_cast<off_t>(size));
    } while (r != 0 && errno == EINTR);
    if (r != 0) return Status::FromErrno("fallocate " + path_, errno);
    return Status::Ok();
  }

  Result<std::uint64_t> Size() override {
    struct stat st;
    if (::fstat(fd_, &st) != 0) return Status::FromErrno("fstat " + path_, errno);
    return static_cast<std::uint64_t>(st.st_size);
  }

  Result<std::uint64_t> NextDataOffset(std::uint64_t offset) override {
    off_t r = ::lseek(fd_, static_cast<off_t>(offset), SEEK_DATA);
    if (r >= 0) return static_cast<std::uint64_t>(r);
    if (errno == ENXIO) return kNoData;  // only a hole (or nothing) from offset to the end
    if (errno == EINVAL) return BlockFile::NextDataOffset(offset);  // no SEEK_DATA support
    return Status::FromErrno("lseek(SEEK_DATA) " + path_, errno);
  }

 private:
  const std::string path_;
  const int fd_;
};

}  // namespace

Result<std::unique_ptr<BlockFile>> OpenPosixBlockFile(const std::string& path, bool create) {
  int flags = O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0);
  int fd;
  do {
    fd = ::open(path.c_str(), flags, 0600);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return Status::FromErrno("open " + path, errno);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    Status s = Status::FromErrno("fstat " + path, errno);
    ::close(fd);
    return s;
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status::IOError("open " + path + ": not a regular file");
  }
  // The store reads one sector's two slots (8 KiB) at a time, at random. Kernel read-ahead
  // would read (or, in a sparse region, allocate and zero) many more pages per such read:
  // perf showed it at about a quarter of a node's pread time under random writes to fresh
  // sectors. Advice only, so a failure is harmless.
  (void)::posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
  return std::unique_ptr<BlockFile>(std::make_unique<PosixBlockFile>(path, fd));
}

}  // namespace atomdisk
