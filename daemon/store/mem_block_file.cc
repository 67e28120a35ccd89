#include "daemon/store/mem_block_file.h"

#include <algorithm>
#include <cstring>
#include <utility>

namespace atomdisk {

Status MemBlockFile::ReadAt(std::uint64_t offset, void* buf, std::size_t n) {
  auto* out = static_cast<std::uint8_t*>(buf);
  std::lock_guard<std::mutex> lock(mu_);
  while (n > 0) {
    const std::uint64_t index = offset / kPageSize;
    const std::size_t in_page = static_cast<std::size_t>(offset % kPageSize);
    const std::size_t len = std::min(n, kPageSize - in_page);
    auto it = pages_.find(index);
    if (it == pages_.end()) {
      std::memset(out, 0, len);
    } else {
      std::memcpy(out, it->second->data() + in_page, len);
    }
    out += len;
    offset += len;
    n -= len;
  }
  return Status::Ok();
}

Status MemBlockFile::WriteAt(std::uint64_t offset, const void* buf, std::size_t n) {
  const auto* in = static_cast<const std::uint8_t*>(buf);
  std::lock_guard<std::mutex> lock(mu_);
  if (n > 0) size_ = std::max(size_, offset + n);
  while (n > 0) {
    const std::uint64_t index = offset / kPageSize;
    const std::size_t in_page = static_cast<std::size_t>(offset % kPageSize);
    const std::size_t len = std::min(n, kPageSize - in_page);
    std::unique_ptr<Page>& page = pages_[index];
    if (!page) page = std::make_unique<Page>();  // value-initialised: zeros
    std::memcpy(page->data() + in_page, in, len);
    in += len;
    offset += len;
    n -= len;
  }
  return Status::Ok();
}

Result<std::uint64_t> MemBlockFile::Size() {
  std::lock_guard<std::mutex> lock(mu_);
  return size_;
}

Result<std::uint64_t> MemBlockFile::NextDataOffset(std::uint64_t offset) {
  std::lock_guard<std::mutex> lock(mu_);
  if (offset >= size_) return kNoData;
  auto it = pages_.lower_bound(offset / kPageSize);
  if (it == pages_.end()) return kNoData;
  return std::max(offset, it->first * kPageSize);
}

void MemBlockFile::CopyFrom(const MemBlockFile& other) {
  if (&other == this) return;
  std::scoped_lock lock(mu_, other.mu_);
  pages_.clear();
  for (const auto& [index, page] : other.pages_) {
    pages_.emplace(index, std::make_unique<Page>(*page));
  }
  size_ = other.size_;
}

void MemBlockFile::FlipBit(std::uint64_t offset, int bit) {
  ATOMDISK_CHECK(bit >= 0 && bit < 8);
  std::lock_guard<std::mutex> lock(mu_);
  std::unique_ptr<Page>& page = pages_[offset / kPageSize];
  if (!page) page = std::make_unique<Page>();
  (*page)[offset % kPageSize] ^= static_cast<std::uint8_t>(1u << bit);
  size_ = std::max(size_, offset + 1);
}

std::size_t MemBlockFile::MemoryBytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pages_.size() * kPageSize;
}

namespace {

class SharedBlockFile final : public BlockFile {
 public:
  explicit SharedBlockFile(std::shared_ptr<BlockFile> file) : file_(std::move(file)) {}
  Status ReadAt(std::uint64_t offset, void* buf, std::size_t n) override {
    return file_->ReadAt(offset, buf, n);
  }
  Status WriteAt(std::uint64_t offset, const void* buf, std::size_t n) override {
    return file_->WriteAt(offset, buf, n);
  }
  Status Sync() override { return file_->Sync(); }
  Result<std::uint64_t> Size() override { return file_->Size(); }
  Result<std::uint64_t> NextDataOffset(std::uint64_t offset) override {
    return file_->NextDataOffset(offset);
  }

 private:
  const std::shared_ptr<BlockFile> file_;
};

}  // namespace

std::unique_ptr<BlockFile> ShareBlockFile(std::shared_ptr<BlockFile> file) {
  ATOMDISK_CHECK(file != nullptr);
  return std::make_unique<SharedBlockFile>(std::move(file));
}

}  // namespace atomdisk
