// FirstRequestId: where a process starts numbering its requests (client commands, the CLI's
// probes, a node's sync requests). Replies are matched by request id alone, so ids that start
// at 1 (or at a clock reading) in every process let a reply recorded from an earlier process
// answer a request of a later one: a replayed response (README, "Security model"). Starting at
// a random point that the process draws from a CSPRNG (or, in the simulator, from its seeded
// PRNG) makes such a match a 2^-63 chance per request. Header-only; pure.
#pragma once

#include <cstdint>

namespace atomdisk {

// A 64-bit mix of `seed` (SplitMix64's finaliser: every seed bit moves every id bit), below
// 2^63 so that ids, which only grow, never wrap within a process; never 0.
inline std::uint64_t FirstRequestId(std::uint64_t seed) {
  std::uint64_t z = seed + 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  z &= (std::uint64_t{1} << 63) - 1;
  return z == 0 ? 1 : z;
}

}  // namespace atomdisk
