#include "daemon/store/faulty_block_file.h"

#include <errno.h>

#include <optional>
#include <utility>

namespace atomdisk {
namespace {

// Writes are torn at the device's 512-byte sector boundaries.
constexpr std::uint64_t kAtomicUnit = 512;

void Apply(MemBlockFile& file, std::uint64_t offset, const std::uint8_t* bytes, std::size_t n) {
  Status s = file.WriteAt(offset, bytes, n);
  ATOMDISK_CHECK(s.ok());  // an in-memory write cannot fail
}

}  // namespace

Status FaultyBlockFile::ReadAt(std::uint64_t offset, void* buf, std::size_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  read_bytes_ += n;
  return cache_.ReadAt(offset, buf, n);
}

Status FaultyBlockFile::WriteAt(std::uint64_t offset, const void* buf, std::size_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  ++write_count_;
  if (fail_writes_ > 0) {
    --fail_writes_;
    return Status::FromErrno("pwrite (injected) at " + std::to_string(offset), EIO);
  }
  const auto* p = static_cast<const std::uint8_t*>(buf);
  Apply(cache_, offset, p, n);
  pending_.push_back(PendingWrite{offset, std::vector<std::uint8_t>(p, p + n)});
  return Status::Ok();
}

Status FaultyBlockFile::Sync() {
  std::lock_guard<std::mutex> lock(mu_);
  ++sync_count_;
  if (fail_syncs_ > 0) {
    --fail_syncs_;
    return Status::FromErrno("fdatasync (injected)", EIO);
  }
  for (const PendingWrite& w : pending_) Apply(durable_, w.offset, w.bytes.data(), w.bytes.size());
  pending_.clear();
  return Status::Ok();
}

Result<std::uint64_t> FaultyBlockFile::Size() {
  std::lock_guard<std::mutex> lock(mu_);
  return cache_.Size();
}

Result<std::uint64_t> FaultyBlockFile::NextDataOffset(std::uint64_t offset) {
  std::lock_guard<std::mutex> lock(mu_);
  return cache_.NextDataOffset(offset);
}

void FaultyBlockFile::SimulateCrash(std::mt19937_64& rng) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!pending_.empty()) {
    // How likely a write is to have reached the media varies from crash to crash, so that
    // "nothing survives" and "everything survives" both come up often.
    const std::uint64_t keep_percent = rng() % 101;
    std::optional<std::size_t> torn;
    if (rng() % 2 == 0) torn = static_cast<std::size_t>(rng() % pending_.size());
    for (std::size_t i = 0; i < pending_.size(); ++i) {
      const PendingWrite& w = pending_[i];
      const std::uint64_t end = w.offset + w.bytes.size();
      if (torn == i) {
        // Cut points: the device sector boundaries strictly inside the write.
        const std::uint64_t first_cut = (w.offset / kAtomicUnit + 1) * kAtomicUnit;
        if (first_cut < end) {
          const std::uint64_t cuts = (end - 1 - first_cut) / kAtomicUnit + 1;
          const std::uint64_t cut = first_cut + (rng() % cuts) * kAtomicUnit;
          Apply(durable_, w.offset, w.bytes.data(), static_cast<std::size_t>(cut - w.offset));
          continue;
        }
        // Within one device sector: it cannot tear; treat it like the others.
      }
      if (rng() % 100 < keep_percent) Apply(durable_, w.offset, w.bytes.data(), w.bytes.size());
    }
  }
  pending_.clear();
  cache_.CopyFrom(durable_);
}

void FaultyBlockFile::SimulateCrashLosingUnsynced() {
  std::lock_guard<std::mutex> lock(mu_);
  pending_.clear();
  cache_.CopyFrom(durable_);
}

void FaultyBlockFile::FailNextWrites(int n) {
  std::lock_guard<std::mutex> lock(mu_);
  fail_writes_ = n;
}

void FaultyBlockFile::FailNextSyncs(int n) {
  std::lock_guard<std::mutex> lock(mu_);
  fail_syncs_ = n;
}

void FaultyBlockFile::CorruptByte(std::uint64_t offset, int bit) {
  std::lock_guard<std::mutex> lock(mu_);
  durable_.FlipBit(offset, bit);
  for (const PendingWrite& w : pending_) {
    if (offset >= w.offset && offset < w.offset + w.bytes.size()) return;  // cache shows w
  }
  cache_.FlipBit(offset, bit);
}

std::uint64_t FaultyBlockFile::SyncCount() const {
  std::lock_guard<std::mutex> lock(mu_);
  return sync_count_;
}

std::uint64_t FaultyBlockFile::WriteCount() const {
  std::lock_guard<std::mutex> lock(mu_);
  return write_count_;
}

std::uint64_t FaultyBlockFile::ReadBytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return read_bytes_;
}

std::size_t FaultyBlockFile::PendingWriteCount() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pending_.size();
}

}  // namespace atomdisk
