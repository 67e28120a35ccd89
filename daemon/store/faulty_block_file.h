// FaultyBlockFile: an in-memory BlockFile that models a disk with a volatile write cache, and
// injects faults on cue. For tests and the deterministic simulator.
//
// Model: WriteAt lands in the cache (reads see it at once) and on a pending list; Sync makes
// every pending write durable. SimulateCrash() throws the cache away: the file then holds
// what was durable, plus a random subset of the pending writes, one of which may be torn
// (only a prefix of it, cut at a 512-byte boundary of the device, reaches the media).
// FailNextWrites / FailNextSyncs make the next calls fail with EIO (a failed write changes
// nothing; a failed sync leaves the pending writes pending: they may still be lost or torn by
// a crash). CorruptByte flips a bit of the durable data (bit rot).
//
// Determinism: the file draws no randomness of its own. Every random choice comes from the
// std::mt19937_64 the caller passes, through rng() only (no <random> distributions, whose
// output differs between standard libraries), so one seed replays one run exactly.
//
// Thread-safety: all methods may be called from any thread (one mutex); the simulator uses
// it from one thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <random>
#include <vector>

#include "daemon/store/block_file.h"
#include "daemon/store/mem_block_file.h"

namespace atomdisk {

class FaultyBlockFile final : public BlockFile {
 public:
  FaultyBlockFile() = default;
  FaultyBlockFile(const FaultyBlockFile&) = delete;
  FaultyBlockFile& operator=(const FaultyBlockFile&) = delete;

  // BlockFile. ReadAt sees every write made so far, synced or not.
  Status ReadAt(std::uint64_t offset, void* buf, std::size_t n) override;
  Status WriteAt(std::uint64_t offset, const void* buf, std::size_t n) override;
  Status Sync() override;
  Result<std::uint64_t> Size() override;
  Result<std::uint64_t> NextDataOffset(std::uint64_t offset) override;

  // --- Fault injection (tests and the simulator) ---

  // A power failure: every unsynced write is lost, except that each may survive whole (a
  // random subset, applied in the order issued) and one may survive torn. Pending writes are
  // then forgotten; the contents afterwards are durable.
  void SimulateCrash(std::mt19937_64& rng);
  // A power failure that loses every unsynced write (no survivors, no tearing).
  void SimulateCrashLosingUnsynced();
  // The next n WriteAt calls fail with EIO and write nothing.
  void FailNextWrites(int n);
  // The next n Sync calls fail with EIO; pending writes stay pending.
  void FailNextSyncs(int n);
  // Flips bit `bit` (0-7) of the durable byte at `offset`. Reads see the flip unless an
  // unsynced write covers that byte (then they see that write, as a cache would).
  void CorruptByte(std::uint64_t offset, int bit = 0);

  // --- Observation (tests) ---

  std::uint64_t SyncCount() const;        // Sync calls, failed ones included
  std::uint64_t WriteCount() const;       // WriteAt calls, failed ones included
  std::uint64_t ReadBytes() const;        // bytes asked for by ReadAt calls
  std::size_t PendingWriteCount() const;  // writes not yet durable

 private:
  struct PendingWrite {
    std::uint64_t offset;
    std::vector<std::uint8_t> bytes;
  };

  mutable std::mutex mu_;
  MemBlockFile durable_;  // what the media holds
  MemBlockFile cache_;    // what reads see: durable_ with pending_ applied
  std::vector<PendingWrite> pending_;
  int fail_writes_ = 0;
  int fail_syncs_ = 0;
  std::uint64_t sync_count_ = 0;
  std::uint64_t write_count_ = 0;
  std::uint64_t read_bytes_ = 0;
};

}  // namespace atomdisk
