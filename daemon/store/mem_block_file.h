// MemBlockFile: an in-memory, sparse BlockFile for tests and the simulator.
//
// Data lives in 4 KiB pages allocated on first write, so a huge, mostly empty device costs
// memory only for what was written; unwritten bytes read as zeros. Every write is "durable"
// at once (Sync does nothing): use FaultyBlockFile to model a volatile cache. Thread-safe
// (one mutex).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

#include "daemon/store/block_file.h"

namespace atomdisk {

class MemBlockFile final : public BlockFile {
 public:
  MemBlockFile() = default;
  MemBlockFile(const MemBlockFile&) = delete;
  MemBlockFile& operator=(const MemBlockFile&) = delete;

  Status ReadAt(std::uint64_t offset, void* buf, std::size_t n) override;
  Status WriteAt(std::uint64_t offset, const void* buf, std::size_t n) override;
  Status Sync() override { return Status::Ok(); }
  Result<std::uint64_t> Size() override;
  Result<std::uint64_t> NextDataOffset(std::uint64_t offset) override;

  // Makes this file's contents a copy of `other`'s.
  void CopyFrom(const MemBlockFile& other);
  // Flips bit `bit` (0-7) of the byte at `offset` (allocating its page if needed).
  void FlipBit(std::uint64_t offset, int bit);
  // Bytes of page memory in use (4 KiB per written page).
  std::size_t MemoryBytes() const;

 private:
  static constexpr std::size_t kPageSize = 4096;
  using Page = std::array<std::uint8_t, kPageSize>;

  mutable std::mutex mu_;
  std::map<std::uint64_t, std::unique_ptr<Page>> pages_;  // page index -> bytes
  std::uint64_t size_ = 0;                                // highest written offset + 1
};

// A BlockFile that forwards every call to `file` and shares its ownership, so that a test or
// the simulator can keep one disk (a FaultyBlockFile, say) across store restarts:
// SectorStore::OpenOnFile(ShareBlockFile(disk), options).
std::unique_ptr<BlockFile> ShareBlockFile(std::shared_ptr<BlockFile> file);

}  // namespace atomdisk
