// How atomdisk's programs set up glibc's allocator for their data path (docs/OPERATIONS.md,
// "Memory").
//
// The data path allocates and frees buffers of up to a little over 1 MiB at a high rate: an
// extent frame (kMaxExtentCommandPayload), its TLS records, the reply an extent read is
// gathered into. With glibc's defaults each of those comes from a fresh mmap, or from heap
// top that free() has just given back with brk, and the kernel then zero-fills every page
// again on first touch: a 1 MiB sequential read through the mount spent about 12% of the
// coordinator's CPU in page faults, page zeroing and munmap (docs/BENCHMARKS.md, "The
// allocator"). TuneMallocForLargeBuffers keeps such buffers in the heap and freed memory
// mapped for reuse: resident memory then stays near its peak after a burst, keeping up to
// kMallocTrimBytes of free heap top per malloc arena, instead of shrinking each time.
#pragma once

#include <cstddef>
#include <string>

namespace atomdisk {

// Allocations below this size come from the heap, never from their own mmap.
inline constexpr std::size_t kMallocMmapThresholdBytes = std::size_t{8} << 20;
// Free memory at the top of a heap that free() keeps mapped instead of returning to the OS.
inline constexpr std::size_t kMallocTrimBytes = std::size_t{64} << 20;

// What TuneMallocForLargeBuffers did, for one start-up log line.
struct MallocTuning {
  bool applied = false;
  std::string why;  // when not applied
};

// Sets the two thresholds above with mallopt, once, before the program starts its threads.
// Leaves glibc's settings alone when the environment's GLIBC_TUNABLES names a malloc tunable
// (the operator's choice wins), and reports it when the allocator refuses (sanitizer builds
// replace malloc).
MallocTuning TuneMallocForLargeBuffers();

}  // namespace atomdisk
