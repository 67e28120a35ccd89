// Identity: what a node's data_dir says about its membership (docs/RESYNC.md), kept in the
// small file data_dir/IDENTITY next to sectors.dat.
//
// It records which cluster and rank the data belongs to, whether this copy votes (may answer
// ReadProc with a Value and WriteProc with an Ack) or is still joining, which ranks this node
// knows have ever voted (their own disks may be replaced later; the survivors remember), and
// where an interrupted resync pass resumes.
//
// File format: TOML, e.g.
//   format = 1
//   cluster_id = "00112233445566778899aabbccddeeff"
//   rank = 2
//   voting = true
//   voters = [1, 2, 3]
//   write_ts_floor = 1763781809000000  # lowest ts of own writes; optional on load (absent:
//                                      # 0, no floor), always written (docs/RESYNC.md,
//                                      # "Tags after a disk replacement")
//   write_ts_lease = 16777216          # own writes with a lower ts may go out before they are
//                                      # durable here; optional on load (absent: 0), always
//                                      # written (docs/REGISTER.md, "The write ts lease")
//   resync_active = true        # a pass was running
//   resync_join = false         # ... and it is the catch-up a joining node needs to vote
//   resync_next_window = 17     # first window not yet fully pulled
//   genesis = true              # optional, only while true: made by `atomdiskd --bootstrap`
//                               # for a founding member of a new cluster that has not voted
//   registering = true          # optional, only while true: this copy found that it never
//                               # voted and is registering as a voter
// Written atomically: IDENTITY.tmp is written and fdatasync'ed, renamed over IDENTITY, and the
// directory fsync'ed, so a crash leaves the old or the new file, never a torn one.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/types.h"

namespace atomdisk {

struct Identity {
  Uuid cluster_id;
  Rank rank = 0;
  bool voting = false;
  std::vector<Rank> voters;  // sorted, unique
  bool resync_active = false;
  bool resync_join = false;
  std::uint64_t resync_next_window = 0;
  // Lowest ts this node's own writes use (RegisterConfig::min_write_ts), set when a join
  // pass ends: above every ts an earlier incarnation of this rank (before its disk was
  // replaced) can have used. 0: no floor.
  std::uint64_t write_ts_floor = 0;
  // Own writes with a ts below this may send WriteProc before their own copy is durable
  // (RegisterConfig::write_ts_lease). Saved before it is used, so a restart's write ts floor
  // (max of write_ts_floor and this) lies above every ts such a write can have used. 0: none.
  std::uint64_t write_ts_lease = 0;
  // A founding member of a new cluster, made by `atomdiskd --bootstrap` on an empty data_dir:
  // the operator says this copy never voted, so it may register as a voter once a majority
  // (Quorum() - 1 peers) answered without listing it, instead of waiting for every peer
  // (docs/RESYNC.md, "Bootstrapping a new cluster"). Cleared when it starts voting.
  bool genesis = false;
  // This copy found that it never voted (every peer answered without listing it, or it is a
  // founding member and a majority did) and registers as a voter. Saved before its first
  // RegisterVoter, so that after a restart the peers that list it (because of that
  // registration) are not taken for proof of a replaced disk. Cleared when it votes.
  bool registering = false;

  friend bool operator==(const Identity&, const Identity&) = default;
  // Adds `r` to voters (kept sorted, unique). Returns true if it was not there.
  bool AddVoter(Rank r);
  bool HasVoter(Rank r) const;
};

// The path of the identity file in `data_dir`.
std::string IdentityPath(const std::string& data_dir);

// Reads data_dir/IDENTITY. nullopt if the file does not exist; Corruption (naming the file
// and the problem) if it exists but cannot be parsed or holds invalid values; IOError if it
// cannot be read.
Result<std::optional<Identity>> LoadIdentity(const std::string& data_dir);

// Writes data_dir/IDENTITY atomically and durably (see above). IOError on any failure (the
// previous file, if any, is then left in place).
Status SaveIdentity(const std::string& data_dir, const Identity& identity);

// A 16-byte cluster id from 32 hex digits. InvalidArgument otherwise.
Result<Uuid> ParseUuid(const std::string& hex);

}  // namespace atomdisk
