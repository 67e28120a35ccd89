// BlockFile: the narrow interface through which the sector store touches a disk.
//
// Three implementations: POSIX (pread/pwrite/fdatasync on a real file), in-memory, and a
// fault-injecting wrapper that models a disk with a volatile cache (unsynced writes are lost
// or torn on a simulated crash, EIO on cue, bit flips). Tests and the simulator use the
// fakes; the daemon uses POSIX.
//
// Thread-safety: every implementation allows ReadAt/WriteAt from one thread concurrently
// with Sync from another (the store's group-commit thread).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "common/status.h"

namespace atomdisk {

class BlockFile {
 public:
  virtual ~BlockFile() = default;
  // Reads exactly n bytes at offset. Bytes past the end of the file, or in a hole, read as
  // zeros. Returns IOError when the OS fails.
  virtual Status ReadAt(std::uint64_t offset, void* buf, std::size_t n) = 0;
  // Writes n bytes at offset (into a volatile cache: not durable until Sync).
  virtual Status WriteAt(std::uint64_t offset, const void* buf, std::size_t n) = 0;
  // Makes every write that returned before this call started durable (fdatasync).
  virtual Status Sync() = 0;
  // Size of the file in bytes (the highest written offset, or what was preallocated).
  virtual Result<std::uint64_t> Size() = 0;

  // Reserves disk blocks for the first `size` bytes of the file without writing them (they
  // still read as zeros, and NextDataOffset may still skip them as holes), extending the file
  // to `size` if it is shorter; never changes what the file holds. Later writes there then
  // allocate nothing. Unsupported or impossible (the file system cannot, ENOSPC): an error,
  // after which the file is as before or partly reserved, which is harmless. The default does
  // nothing (in-memory files have nothing to allocate).
  virtual Status Allocate(std::uint64_t size) {
    (void)size;
    return Status::Ok();
  }

  // Returned by NextDataOffset when no data lies at or after the offset asked about.
  static constexpr std::uint64_t kNoData = ~std::uint64_t{0};
  // The smallest offset >= `offset` that may hold data, i.e. is not inside a hole, or kNoData
  // if everything from `offset` on is a hole or past the end. It may return an offset that
  // only holds zeros (holes are found at the file system's block granularity, and the
  // default says "everything before Size() may be data"); callers read to be sure. Lets the
  // store walk a sparse file in time proportional to the data, not the file size (SEEK_DATA
  // on POSIX). IOError when the OS fails.
  virtual Result<std::uint64_t> NextDataOffset(std::uint64_t offset) {
    Result<std::uint64_t> size = Size();
    if (!size.ok()) return size.status();
    return offset < *size ? offset : kNoData;
  }
};

// Opens (creating it if `create`) a regular file. IOError names the path and errno.
Result<std::unique_ptr<BlockFile>> OpenPosixBlockFile(const std::string& path, bool create);

}  // namespace atomdisk
