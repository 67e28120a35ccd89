#include "common/types.h"

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <new>
#include <vector>

namespace atomdisk {
namespace {

// Freed sector blocks (the shared_ptr control block and the 4096 bytes, one allocation),
// kept for the next MakeSector. Every message, register and store read that carries a
// sector makes one, and glibc serves a 4 KiB block from its slow bins (no tcache above
// 1 KiB): in a sequential write malloc and free were 13% of a node's CPU. Capped, so
// that what a burst of traffic allocated goes back to malloc once the burst is over (a
// pool that kept its peak, like boost::singleton_pool, would hold it for good). Blocks
// are freed on whatever thread drops the last reference, hence the lock.
class BlockCache {
 public:
#if defined(__SANITIZE_ADDRESS__)
  // AddressSanitizer finds a use of a freed sector only if the block really is freed.
  static constexpr std::size_t kMaxFree = 0;
#else
  static constexpr std::size_t kMaxFree = 2048;  // 8 MiB of sectors
#endif

  void* Get(std::size_t size) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (size == size_ && !free_.empty()) {
        void* p = free_.back();
        free_.pop_back();
        return p;
      }
    }
    return ::operator new(size);
  }

  void Put(void* p, std::size_t size) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (size_ == 0) size_ = size;  // one shape is ever cached: the first one seen
      if (size == size_ && free_.size() < kMaxFree) {
        if (free_.capacity() == 0) free_.reserve(kMaxFree);  // never reallocates after this
        free_.push_back(p);
        return;
      }
    }
    ::operator delete(p);
  }

 private:
  std::mutex mu_;
  std::size_t size_ = 0;
  std::vector<void*> free_;
};

BlockCache& Cache() {
  static BlockCache* cache = new BlockCache;  // never destroyed: blocks die after main too
  return *cache;
}

// The allocator std::allocate_shared rebinds to its control block type.
template <typename T>
struct SectorAllocator {
  using value_type = T;
  SectorAllocator() = default;
  template <typename U>
  SectorAllocator(const SectorAllocator<U>& /*other*/) {}  // NOLINT: rebinding, by design
  T* allocate(std::size_t n) {
    if (n != 1) return std::allocator<T>().allocate(n);
    return static_cast<T*>(Cache().Get(sizeof(T)));
  }
  void deallocate(T* p, std::size_t n) {
    if (n != 1) return std::allocator<T>().deallocate(p, n);
    Cache().Put(p, sizeof(T));
  }
  template <typename U>
  bool operator==(const SectorAllocator<U>& /*other*/) const {
    return true;
  }
};

}  // namespace

SectorPtr ZeroSector() {
  static const SectorPtr kZero = std::make_shared<const SectorData>();
  return kZero;
}

SectorPtr MakeSector(const std::uint8_t* bytes) {
  // Not value-initialized: every byte is copied over at once.
  auto s = std::allocate_shared_for_overwrite<SectorData>(SectorAllocator<SectorData>());
  std::memcpy(s->data(), bytes, kSectorSize);
  return s;
}

std::string Tag::ToString() const {
  return "(ts=" + std::to_string(ts) + ", wr=" + std::to_string(static_cast<int>(wr)) + ")";
}

std::string Uuid::ToString() const {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(32);
  for (auto b : bytes) {
    out.push_back(kHex[b >> 4]);
    out.push_back(kHex[b & 15]);
  }
  return out;
}

}  // namespace atomdisk
