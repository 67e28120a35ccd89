// SectorStore: a node's durable copy of every sector's register value (ts, wr, 4096 bytes).
//
// On-disk format (docs/STORAGE.md): one data file `sectors.dat` in the data_dir. Each
// sector owns two slots; a slot is a 64-byte header (magic, sector index, ts, wr, XXH3-64
// checksum of header fields and data) followed by the 4096 data bytes. A write goes to the
// slot that does not hold the sector's newest durable value, so a crash at any instant
// (even one that tears the slot being written) leaves the old value intact in the other
// slot: every sector is old-or-new, never torn. A read takes the valid slot with the highest
// (ts, wr); a slot whose checksum fails is ignored when it is older, a sector whose failed slot
// may be newer than the valid one is suspect (a torn write and rot look alike: Corruption until
// a repair), and a sector whose two slots are both written and both fail is reported as
// Corruption, never returned as data. Unwritten sectors
// read as (0, 0, zeros); so does a sector whose only written slot fails (its first write was
// torn by a crash: the old value is "unwritten").
// Nothing is scanned at start-up, so a restart is instant whatever the device size.
//
// Durability and group commit: Write() puts the slot into the OS cache at once and queues a
// sync; every write queued while the previous fdatasync ran is covered by the next single
// fdatasync. `done` runs only after the data is on stable storage. At most one write per
// sector is in the file and not yet synced; a further write to that sector waits inside the
// store (only the newest waiting one is kept; the callbacks of ones it replaced run when it
// completes, since a newer durable value satisfies every older request).
//
// Threading: Open() with background_sync starts one sync thread, and `done` callbacks run
// on it; they must be quick and must not call back into the store (post to your own loop).
// With background_sync off (tests, the simulator) nothing is synced until the owner calls
// SyncNow(), and callbacks run inside it: fully deterministic. Read() and Write() may be
// called from one thread at a time (the node's loop), concurrently with the sync thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "common/status.h"
#include "common/types.h"
#include "daemon/store/block_file.h"

namespace atomdisk {

// Where slot `slot` (0 or 1) of `sector` starts in sectors.dat, and its size: a 64-byte header
// and the data (docs/STORAGE.md). For tools and fault injection that touch the file itself.
inline constexpr std::uint64_t kStoreSlotBytes = 64 + kSectorSize;
constexpr std::uint64_t StoreSlotOffset(SectorIdx sector, int slot) {
  return (2 * sector + static_cast<std::uint64_t>(slot)) * kStoreSlotBytes;
}

class SectorStore {
 public:
  struct Options {
    std::uint64_t sectors = 0;    // device size in sectors; indexes >= this are refused
    bool background_sync = true;  // run the group-commit thread
    // Open() reserves the data file's blocks for the whole device (fallocate), so that a
    // sector's first write allocates nothing and the disk cannot fill up under the store.
    // Best effort: skipped where the file system cannot, or when it would take more than half
    // the free space. The reserved blocks stay holes to SEEK_DATA. Off by default: it gains
    // little on ext4 (docs/STORAGE.md) and freeing a reservation is slow on some disks.
    bool preallocate = false;
    // Called after each group commit's fdatasync with the number of sector writes it covered
    // and how long it took (for metrics); on the sync thread, so it must be quick.
    std::function<void(std::size_t sectors, double seconds)> on_sync;
  };
  using WriteCallback = std::function<void(Status)>;

  // Opens the store in data_dir (created if missing, mode 0700, but never its parent:
  // InvalidArgument if the parent is missing or data_dir is not a folder): takes an exclusive lock
  // on data_dir/LOCK (Busy if another process holds it: "data_dir X is in use by pid N"), opens or
  // creates data_dir/sectors.dat (preallocating it if asked, see Options). InvalidArgument if the
  // file holds data past the device's end (was it shrunk?). Both Open and OpenOnFile fdatasync the
  // file once before anything is read, so that writes a dead process left unsynced in the OS cache
  // are durable before this store can read them (IOError from Open if that fails; OpenOnFile then
  // returns a store that refuses everything with IOError).
  static Result<std::unique_ptr<SectorStore>> Open(const std::string& data_dir, Options options);
  // Over an already-open file, without a lock (tests and the simulator).
  static std::unique_ptr<SectorStore> OpenOnFile(std::unique_ptr<BlockFile> file, Options options);

  virtual ~SectorStore() = default;

  // The newest valid stored value of `sector` ((0,0,zeros) if never written). This reflects
  // writes already handed to Write(), even before they are durable (not those whose write
  // failed). Corruption when both slots are written and both fail their checks, and when the
  // sector is suspect: a slot that fails its checks may have held a newer value than the valid
  // one (its header is unreadable or names a higher tag; docs/STORAGE.md); IOError when
  // the file cannot be read, or after a failed sync (see Write).
  virtual Result<Triple> Read(SectorIdx sector) = 0;

  // Read() without the suspect rule: the newest valid slot even when a failed slot may have
  // held something newer. Only for a repair that keeps this node's own copy (scrub found
  // nothing newer at the peers); never to serve.
  virtual Result<Triple> ReadNewestValid(SectorIdx sector) = 0;

  // The newest durable tag of `sector` when the store knows it without reading the file:
  // from the slot cache that the last Read() or completed sync of that sector filled ((0,0)
  // for a sector known never to have been written). nullopt when the sector is not cached,
  // while a write to it is pending (the durable tag is about to move), and once the store
  // has failed. Never does I/O; for answering tag-only questions cheaply.
  virtual std::optional<Tag> CachedDurableTag(SectorIdx sector) = 0;

  // Stores `value` durably; calls done(OK) once it is on stable storage, done(error) if the
  // write or the sync failed. Never calls `done` from inside Write().
  // - Tags only grow: a value whose tag is not greater than the sector's newest stored or
  //   pending tag writes nothing and completes OK once that newer value is durable (a store
  //   holding a newer value satisfies an older request; invariant 3).
  // - InvalidArgument for sector >= options.sectors (a caller bug, reported as a value).
  // - Corruption for a suspect sector (see Read) unless the tag is above every tag its failed
  //   slot may hold: only Repair() lifts the suspicion otherwise.
  // - IOError when the pwrite fails: only this write fails, the sector keeps its old value.
  // - After a failed sync every write of that batch fails, and the store then refuses every
  //   later Read and Write with IOError until it is reopened (after a failed fdatasync the
  //   OS may have dropped the data while the file still shows it; reopening syncs again).
  // Cost: one pread of the sector's two slots and one pwrite, on the calling thread.
  virtual void Write(SectorIdx sector, const Triple& value, WriteCallback done) = 0;

  // A repair's verdict on a sector with a failed slot (scrub asked the peers): stores `value`
  // over the failed slot, even when its tag is not above the tag the failed slot claims, and
  // so lifts the suspicion; `value` with the tag the valid slot holds rewrites that copy over
  // the failed slot. Otherwise as Write() (a tag below the newest valid one writes nothing).
  virtual void Repair(SectorIdx sector, const Triple& value, WriteCallback done) = 0;

  // Holding: writes issued between HoldSyncs() and the matching ReleaseSyncs() go into the
  // file at once, as always, but reach the group commit together at ReleaseSyncs(), so that
  // the sectors of one batch share one fdatasync. Without it the sync thread starts an
  // fdatasync for the first write of a batch, then one for each few that arrived during the
  // last, and a 1 MiB extent cost dozens of them. Calls nest; same thread as Write(). A hold
  // delays durability, so the caller releases it once the events at hand are handled
  // (NodeCore does it with its outbox flush). Close() releases what is held, and a release
  // after Close() does nothing. Only writes made by Write()/Repair() are held: a write that
  // waited behind an in-flight one of its sector is issued by the group commit itself and
  // joins the next sync as before.
  virtual void HoldSyncs() = 0;
  virtual void ReleaseSyncs() = 0;

  // Manual mode only: issues one group sync covering every queued write (not the held ones,
  // see HoldSyncs) and runs their callbacks (and then issues the writes that were waiting
  // behind them, which need another SyncNow). Returns the number of callbacks run.
  virtual std::size_t SyncNow() = 0;

  // True once a sync has failed: the store then refuses every Read and Write (after a failed
  // fdatasync the OS may have dropped dirty pages, so the file no longer shows what the disk
  // holds). The owner should restart, which reopens it.
  virtual bool Failed() = 0;

  // Stops the sync thread after the writes already queued or held (and those waiting behind
  // them) are synced and their callbacks have run. Called by the destructor too. In manual
  // mode nothing is synced: unsynced writes are dropped with their callbacks, never run (like
  // a process crash; release every hold, then call SyncNow() until it returns 0, for a clean
  // stop). No Write() or
  // SyncNow() after Close().
  virtual void Close() = 0;

  // Calls fn(sector, tag, checksum_ok) for every sector that has a written slot, in sector
  // order, skipping holes (SEEK_DATA on POSIX). For offline inspection and scrub. `tag` is
  // what Read() would return ((0,0) if no slot is valid); checksum_ok is false if any written
  // slot fails its checks (bit rot, or a write torn by a crash: they look alike). A sector
  // with a write in flight is reported with the pending tag and checksum_ok true.
  virtual Status ForEachStored(const std::function<void(SectorIdx, Tag, bool checksum_ok)>& fn) = 0;

  // ForEachStored restricted to sectors [first, first + count) (clipped to the device; a
  // range past the end reports nothing), for resync digests and scrub chunks on a live
  // store. With verify_all false only the checks Read() makes are done (cheaper: the newest
  // candidate's checksum, the other slot's only if that fails), and checksum_ok is false only
  // when a written slot failed a check that was made: a corrupt newest-looking slot is
  // reported even when an older valid one is found. Reads chunks of up to 16 sectors into a
  // buffer the store keeps. Call from the thread that calls Write(); fn must not call
  // ScanRange or ForEachStored. Both return IOError if the file cannot be read, and the
  // failed-sync error once the store has failed (see Failed()).
  virtual Status ScanRange(SectorIdx first, std::uint64_t count, bool verify_all,
                           const std::function<void(SectorIdx, Tag, bool checksum_ok)>& fn) = 0;
};

}  // namespace atomdisk
