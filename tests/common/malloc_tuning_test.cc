// common/malloc_tuning: a data-path buffer of an extent's size comes from the heap, and
// freeing it keeps the memory mapped for the next one (no page faults to refill it).
#include "common/malloc_tuning.h"

#include <gtest/gtest.h>
#include <malloc.h>

#include <cstdlib>
#include <cstring>

#include "common/wire.h"

namespace atomdisk {
namespace {

// Sanitizers bring their own allocator, which takes no mallopt settings.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define ATOMDISK_SANITIZER_ALLOCATOR 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
    __has_feature(memory_sanitizer) || __has_feature(hwaddress_sanitizer)
#define ATOMDISK_SANITIZER_ALLOCATOR 1
#endif
#endif
#ifdef ATOMDISK_SANITIZER_ALLOCATOR
constexpr bool kSanitizerAllocator = true;
#else
constexpr bool kSanitizerAllocator = false;
#endif

// The environment of the test binary, restored after each test.
class MallocTuningTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* t = std::getenv("GLIBC_TUNABLES");
    had_tunables_ = t != nullptr;
    if (had_tunables_) saved_tunables_ = t;
  }
  void TearDown() override {
    if (had_tunables_) {
      setenv("GLIBC_TUNABLES", saved_tunables_.c_str(), 1);
    } else {
      unsetenv("GLIBC_TUNABLES");
    }
  }
  bool had_tunables_ = false;
  std::string saved_tunables_;
};

TEST_F(MallocTuningTest, AnOperatorsMallocTunableWins) {
  setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1048576", 1);
  MallocTuning t = TuneMallocForLargeBuffers();
  EXPECT_FALSE(t.applied);
  EXPECT_NE(t.why.find("GLIBC_TUNABLES"), std::string::npos) << t.why;
}

TEST_F(MallocTuningTest, ExtentBuffersComeFromTheHeapAndStayMapped) {
  unsetenv("GLIBC_TUNABLES");
  MallocTuning t = TuneMallocForLargeBuffers();
  if (kSanitizerAllocator) GTEST_SKIP() << "a sanitizer replaces glibc's allocator";
  ASSERT_TRUE(t.applied) << t.why;

  // Two rounds of four extent-sized buffers. With glibc's defaults the first round gets an
  // mmap per buffer (the threshold starts at 128 KiB) and unmaps each on free; that raises
  // the sliding threshold to 1 MiB and the trim threshold to 2 MiB, so the second round comes
  // from the heap and its free gives the heap's top back with brk. Tuned, neither happens.
  constexpr std::size_t kFrame = kMaxExtentResponsePayload + 64;
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE(round);
    const std::size_t mmapped_before = mallinfo2().hblks;
    void* buffers[4];
    for (void*& p : buffers) {
      p = std::malloc(kFrame);
      ASSERT_NE(p, nullptr);
      std::memset(p, 1, kFrame);
      asm volatile("" : : "r"(p) : "memory");  // keep the compiler from eliding the pair
    }
    EXPECT_EQ(mallinfo2().hblks, mmapped_before) << "an extent buffer got its own mmap";
    const std::size_t heap_before = mallinfo2().arena;
    for (int i = 3; i >= 0; --i) std::free(buffers[i]);
    EXPECT_EQ(mallinfo2().arena, heap_before) << "free() gave the heap's top back to the OS";
  }
}

}  // namespace
}  // namespace atomdisk
