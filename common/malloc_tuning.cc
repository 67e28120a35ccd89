#include "common/malloc_tuning.h"

#include <malloc.h>

#include <cstdlib>
#include <cstring>

namespace atomdisk {

MallocTuning TuneMallocForLargeBuffers() {
  if (const char* tunables = std::getenv("GLIBC_TUNABLES");
      tunables != nullptr && std::strstr(tunables, "glibc.malloc.") != nullptr) {
    return {false, "GLIBC_TUNABLES sets the allocator"};
  }
  // mallopt returns 1 on success. A fixed M_MMAP_THRESHOLD also turns off glibc's sliding
  // threshold, which would otherwise move the trim threshold with each large free.
  if (mallopt(M_MMAP_THRESHOLD, static_cast<int>(kMallocMmapThresholdBytes)) != 1 ||
      mallopt(M_TRIM_THRESHOLD, static_cast<int>(kMallocTrimBytes)) != 1) {
    return {false, "the allocator does not take mallopt settings"};
  }
  return {true, ""};
}

}  // namespace atomdisk
