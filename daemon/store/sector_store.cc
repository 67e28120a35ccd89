// The sector store: two checksummed slots per sector in one file, group commit.
// Format and crash-atomicity argument: docs/STORAGE.md.

#include "daemon/store/sector_store.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <array>
#include <bit>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace atomdisk {
namespace {

// --- On-disk format ---------------------------------------------------------------------------

constexpr std::size_t kHeaderSize = 64;
constexpr std::size_t kSlotSize = kStoreSlotBytes;  // 4160: the header and the data
static_assert(kSlotSize == kHeaderSize + kSectorSize);
constexpr std::uint64_t kSectorStride = 2 * kSlotSize;  // both slots of one sector
constexpr std::uint32_t kMagic = 0x31534441;            // "ADS1" as little-endian bytes
constexpr std::uint16_t kFormatVersion = 1;

// Header layout (little-endian). Bytes not listed are zero; the checksum covers all 64 header
// bytes (with the checksum field zeroed) followed by the 4096 data bytes.
constexpr std::size_t kMagicAt = 0;      // u32
constexpr std::size_t kVersionAt = 4;    // u16
constexpr std::size_t kFlagsAt = 6;      // u16, 0 (none defined)
constexpr std::size_t kSectorAt = 8;     // u64, the sector this slot belongs to
constexpr std::size_t kTsAt = 16;        // u64
constexpr std::size_t kWrAt = 24;        // u8
constexpr std::size_t kChecksumAt = 32;  // u64, XXH3_64bits

constexpr char kDataFileName[] = "sectors.dat";
constexpr char kLockFileName[] = "LOCK";

void Put16(std::uint8_t* p, std::uint16_t v) {
  for (int i = 0; i < 2; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}
void Put32(std::uint8_t* p, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}
void Put64(std::uint8_t* p, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}
std::uint64_t GetLE(const std::uint8_t* p, int n) {
  std::uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

std::uint64_t SlotOffset(SectorIdx sector, int slot) { return StoreSlotOffset(sector, slot); }

// Fills `slot` (kSlotSize bytes) with the header and data of `value` for `sector`.
void EncodeSlot(SectorIdx sector, const Triple& value, std::uint8_t* slot) {
  std::memset(slot, 0, kHeaderSize);
  Put32(slot + kMagicAt, kMagic);
  Put16(slot + kVersionAt, kFormatVersion);
  Put16(slot + kFlagsAt, 0);
  Put64(slot + kSectorAt, sector);
  Put64(slot + kTsAt, value.tag.ts);
  slot[kWrAt] = value.tag.wr;
  std::memcpy(slot + kHeaderSize, value.data->data(), kSectorSize);
  Put64(slot + kChecksumAt, XXH3_64bits(slot, kSlotSize));
}

enum class SlotState : std::uint8_t {
  kEmpty,        // never written: the header is all zeros
  kBadHeader,    // wrong magic, version or sector index
  kUnchecked,    // the header looks right; the checksum was not verified (not needed)
  kBadChecksum,  // torn, or bit rot
  kValid,
};

const char* SlotStateName(SlotState s) {
  switch (s) {
    case SlotState::kEmpty:
      return "empty";
    case SlotState::kBadHeader:
      return "bad header";
    case SlotState::kUnchecked:
      return "unchecked";
    case SlotState::kBadChecksum:
      return "checksum mismatch";
    case SlotState::kValid:
      return "valid";
  }
  return "?";
}

SlotState ParseHeader(SectorIdx sector, const std::uint8_t* slot, Tag* tag) {
  static constexpr std::array<std::uint8_t, kHeaderSize> kZeros{};
  if (std::memcmp(slot, kZeros.data(), kHeaderSize) == 0) return SlotState::kEmpty;
  if (GetLE(slot + kMagicAt, 4) != kMagic || GetLE(slot + kVersionAt, 2) != kFormatVersion ||
      GetLE(slot + kSectorAt, 8) != sector) {
    return SlotState::kBadHeader;
  }
  tag->ts = GetLE(slot + kTsAt, 8);
  tag->wr = slot[kWrAt];
  return SlotState::kUnchecked;
}

// Verifies the checksum of `slot` (zeroes the checksum field while hashing, then restores it).
bool ChecksumOk(std::uint8_t* slot) {
  const std::uint64_t stored = GetLE(slot + kChecksumAt, 8);
  Put64(slot + kChecksumAt, 0);
  const std::uint64_t actual = XXH3_64bits(slot, kSlotSize);
  Put64(slot + kChecksumAt, stored);
  return actual == stored;
}

// What the two slots of one sector hold.
struct SlotPair {
  std::array<SlotState, 2> state{};
  std::array<Tag, 2> tag{};
  int newest = -1;  // the valid slot with the highest tag, -1 if none

  bool AnyWritten() const { return state[0] != SlotState::kEmpty || state[1] != SlotState::kEmpty; }
  bool AnyEmpty() const { return state[0] == SlotState::kEmpty || state[1] == SlotState::kEmpty; }
  // The slot a new write goes to: the one not holding the newest valid value. With no valid
  // slot, an empty slot stands for the sector's previous value (never written: zeros), so the
  // write goes to the other one; a crash tearing it then leaves the sector unwritten, not
  // corrupt.
  int Target() const {
    if (newest >= 0) return 1 - newest;
    return state[0] == SlotState::kEmpty && state[1] != SlotState::kEmpty ? 1 : 0;
  }
  // True when a written slot failed its checks and may have held a newer value than the
  // newest valid one: its header is unreadable, or it names a higher tag. A crash that tore a
  // write in flight leaves exactly that, and so does bit rot of the newest value at rest; the
  // bytes cannot tell them apart. Serving the older slot would be right after a tear and a lost
  // acknowledged write after rot, so the sector is served by neither until its peers say what
  // is newest (scrub's repair; docs/STORAGE.md, "Suspect sectors").
  bool Suspect() const {
    for (int k = 0; k < 2; ++k) {
      if (state[k] == SlotState::kBadHeader) return true;
      if (state[k] == SlotState::kBadChecksum && (newest < 0 || tag[k] > tag[newest])) return true;
    }
    return false;
  }
  // False when a written slot failed a check that was made (its header, or its checksum if
  // it was verified). After Examine(verify_all) every written slot was checked.
  bool NoneFailed() const {
    for (SlotState s : state) {
      if (s == SlotState::kBadHeader || s == SlotState::kBadChecksum) return false;
    }
    return true;
  }
};

// True when `tag` is at or above whatever a failed slot of `p` may hold (a slot with an
// unreadable header may hold anything). At: one tag names one value, so a failed slot's own tag
// brings back exactly what it held.
bool AboveEveryFailedSlot(const SlotPair& p, Tag tag) {
  for (int k = 0; k < 2; ++k) {
    if (p.state[k] == SlotState::kBadHeader) return false;
    if (p.state[k] == SlotState::kBadChecksum && tag < p.tag[k]) return false;
  }
  return true;
}

// Examines both slots of `sector`, held in `buf` (kSectorStride bytes). Checksums are verified
// newest-looking slot first; the other one only if that fails, or if `verify_all`.
SlotPair Examine(SectorIdx sector, std::uint8_t* buf, bool verify_all) {
  SlotPair p;
  for (int k = 0; k < 2; ++k) p.state[k] = ParseHeader(sector, buf + k * kSlotSize, &p.tag[k]);
  // On equal tags (never written by this store) slot 0 wins.
  const bool one_first = p.state[0] == SlotState::kUnchecked &&
                         p.state[1] == SlotState::kUnchecked && p.tag[1] > p.tag[0];
  for (int k : {one_first ? 1 : 0, one_first ? 0 : 1}) {
    if (p.state[k] != SlotState::kUnchecked || (p.newest >= 0 && !verify_all)) continue;
    p.state[k] = ChecksumOk(buf + k * kSlotSize) ? SlotState::kValid : SlotState::kBadChecksum;
    if (p.state[k] == SlotState::kValid && p.newest < 0) p.newest = k;
  }
  return p;
}

// --- Directory helpers ------------------------------------------------------------------------

Status FsyncPath(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno("open " + path, errno);
  int r = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (r != 0) return Status::FromErrno("fsync " + path, err);
  return Status::Ok();
}

std::string Parent(const std::string& path) {
  std::size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Creates data_dir if missing, mode 0700, and syncs its parent; only that last component,
// never a missing parent: a typo or a disk that is not mounted must not put a node's data on
// the wrong file system. InvalidArgument when the parent is missing or not a folder, or when
// data_dir is something other than a folder (what the configuration names cannot work);
// IOError for the rest (permissions, I/O).
Status CreateDataDir(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  struct stat st;
  if (::stat(p.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) {
      return Status::InvalidArgument("data_dir " + p + " is not a directory");
    }
    return Status::Ok();
  }
  if (errno == ENOTDIR) {
    return Status::InvalidArgument("data_dir " + p +
                                   ": a component of its path is not a directory");
  }
  if (errno != ENOENT) return Status::FromErrno("stat " + p, errno);
  const std::string parent = Parent(p);
  if (::stat(parent.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) {
      return Status::InvalidArgument(
          "data_dir " + p + ": its parent " + parent +
          " does not exist (a typo, or a disk not mounted?); create the parent first: atomdiskd "
          "creates only the data_dir itself");
    }
    return Status::FromErrno("stat " + parent, errno);
  }
  if (!S_ISDIR(st.st_mode)) {
    return Status::InvalidArgument("data_dir " + p + ": its parent " + parent +
                                   " is not a directory");
  }
  if (::mkdir(p.c_str(), 0700) != 0 && errno != EEXIST) {
    return Status::FromErrno("mkdir " + p, errno);
  }
  return FsyncPath(parent);
}

// Bytes an unprivileged user may still write on the file system holding `dir`; 0 if unknown.
std::uint64_t FreeBytes(const std::string& dir) {
  struct statvfs st;
  if (::statvfs(dir.c_str(), &st) != 0) return 0;
  return static_cast<std::uint64_t>(st.f_bavail) * st.f_frsize;
}

// Takes the data_dir lock and writes our pid into it. Returns the lock's fd.
Result<int> LockDataDir(const std::string& data_dir) {
  const std::string path = data_dir + "/" + kLockFileName;
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return Status::FromErrno("open " + path, errno);
  int r;
  do {
    r = ::flock(fd, LOCK_EX | LOCK_NB);
  } while (r != 0 && errno == EINTR);
  if (r != 0) {
    const int err = errno;
    if (err != EWOULDBLOCK) {
      ::close(fd);
      return Status::FromErrno("flock " + path, err);
    }
    char buf[32] = {};
    ssize_t n = ::pread(fd, buf, sizeof(buf) - 1, 0);
    ::close(fd);
    std::string pid = n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : "";
    while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
    if (pid.empty()) pid = "?";
    return Status::Busy("data_dir " + data_dir + " is in use by pid " + pid);
  }
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, pid.data(), pid.size(), 0) < 0) {
    Status s = Status::FromErrno("write " + path, errno);
    ::close(fd);
    return s;
  }
  return fd;
}

// --- The store ---------------------------------------------------------------------------------

class SectorStoreImpl final : public SectorStore {
 public:
  SectorStoreImpl(std::unique_ptr<BlockFile> file, Options options, int lock_fd)
      : file_(std::move(file)), options_(options), lock_fd_(lock_fd) {
    ATOMDISK_CHECK(file_ != nullptr);
    ATOMDISK_CHECK(options_.sectors > 0);
    // Whatever a previous incarnation left in the OS cache becomes durable before anything
    // is read from the file: a value this store reads must never vanish in a later crash.
    Status s = file_->Sync();
    if (!s.ok()) failed_ = Status::IOError("initial sync failed: " + s.message());
    if (options_.background_sync) thread_ = std::thread([this] { SyncLoop(); });
  }

  ~SectorStoreImpl() override {
    Close();
    if (lock_fd_ >= 0) ::close(lock_fd_);
  }

  SectorStoreImpl(const SectorStoreImpl&) = delete;
  SectorStoreImpl& operator=(const SectorStoreImpl&) = delete;

  Status InitialStatus() {
    std::lock_guard<std::mutex> lock(mu_);
    return failed_;
  }

  Result<Triple> Read(SectorIdx sector) override { return ReadSlots(sector, /*strict=*/true); }

  Result<Triple> ReadNewestValid(SectorIdx sector) override {
    return ReadSlots(sector, /*strict=*/false);
  }

  // Read() (strict) or ReadNewestValid().
  Result<Triple> ReadSlots(SectorIdx sector, bool strict) {
    if (sector >= options_.sectors) return OutOfRange(sector);
    std::optional<SlotHint> hint;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!failed_.ok()) return failed_;
      auto it = pending_.find(sector);
      if (it != pending_.end()) {
        const Entry& e = it->second;
        return e.has_waiting ? e.waiting : e.inflight;
      }
      if (const SlotHint* h = hints_.Find(sector)) hint = *h;
    }
    // No write to this sector is in flight, and only this thread could start one: the
    // slots are stable while we read them.
    std::uint8_t* buf = caller_buf_.data();
    if (hint && hint->has_newest) {
      // The slot holding the newest valid value is known: read and check only that one (half
      // the bytes). Anything unexpected there (rot) falls back to reading both.
      const int newest = 1 - hint->target;
      Status s = file_->ReadAt(SlotOffset(sector, newest), buf, kSlotSize);
      if (!s.ok()) return s;
      Tag tag;
      if (ParseHeader(sector, buf, &tag) == SlotState::kUnchecked && tag == hint->newest_tag &&
          ChecksumOk(buf)) {
        return Triple{tag, MakeSector(buf + kHeaderSize)};
      }
    }
    Status s = file_->ReadAt(SlotOffset(sector, 0), buf, kSectorStride);
    if (!s.ok()) return s;
    SlotPair p = Examine(sector, buf, /*verify_all=*/false);
    const bool suspect = p.Suspect();
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!suspect && (p.newest >= 0 || !p.AnyWritten())) {
        RememberSlots(sector, p.Target(), p.newest >= 0, p.newest >= 0 ? p.tag[p.newest] : Tag{});
      } else {
        // A failed slot: what was cached no longer holds, and a write of the tag the valid
        // slot holds must find the failed one to rewrite it (see Write).
        hints_.Erase(sector);
      }
    }
    if (suspect && strict) {
      const int bad =
          p.state[0] == SlotState::kBadHeader || p.state[0] == SlotState::kBadChecksum ? 0 : 1;
      std::string msg = "sector " + std::to_string(sector) + ": slot " + std::to_string(bad) +
                        " failed its checks (" + SlotStateName(p.state[bad]) + ")";
      if (p.state[bad] == SlotState::kBadChecksum) msg += " under tag " + p.tag[bad].ToString();
      msg += " and may hold a newer value than ";
      msg += p.newest >= 0
                 ? "slot " + std::to_string(p.newest) + " (" + p.tag[p.newest].ToString() + ")"
                 : std::string("the unwritten sector");
      return Status::Corruption(msg + "; not served until a repair from the peers");
    }
    if (p.newest >= 0) {
      return Triple{p.tag[p.newest], MakeSector(buf + p.newest * kSlotSize + kHeaderSize)};
    }
    if (!p.AnyEmpty()) {  // both written, neither valid: only bit rot does that
      return Status::Corruption("sector " + std::to_string(sector) +
                                ": no valid slot (slot 0: " + SlotStateName(p.state[0]) +
                                ", slot 1: " + SlotStateName(p.state[1]) + ")");
    }
    // Never written, or its first write was torn by a crash (or, indistinguishably, that
    // write's only copy rotted): the previous value, zeros.
    return Triple{Tag{}, ZeroSector()};
  }

  std::optional<Tag> CachedDurableTag(SectorIdx sector) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!failed_.ok() || pending_.count(sector)) return std::nullopt;
    const SlotHint* h = hints_.Find(sector);
    if (h == nullptr) return std::nullopt;
    return h->has_newest ? h->newest_tag : Tag{};
  }

  void Write(SectorIdx sector, const Triple& value, WriteCallback done) override {
    WriteImpl(sector, value, std::move(done), /*repair=*/false);
  }

  void Repair(SectorIdx sector, const Triple& value, WriteCallback done) override {
    WriteImpl(sector, value, std::move(done), /*repair=*/true);
  }

  void WriteImpl(SectorIdx sector, const Triple& value, WriteCallback done, bool repair) {
    ATOMDISK_CHECK(value.data != nullptr);
    std::unique_lock<std::mutex> lock(mu_);
    ATOMDISK_CHECK(!closed_);
    if (sector >= options_.sectors) return Defer(std::move(done), OutOfRange(sector));
    if (!failed_.ok()) return Defer(std::move(done), failed_);
    auto it = pending_.find(sector);
    if (it != pending_.end()) {
      // A write of this sector is in flight: this one waits behind it, replacing any older
      // waiting one (whose callbacks then complete with it). A value whose tag is not newer
      // than what is pending is satisfied by the pending one.
      Entry& e = it->second;
      if (e.has_waiting) {
        if (e.waiting.tag < value.tag) e.waiting = value;
        e.waiting_done.push_back(std::move(done));
      } else if (e.inflight.tag < value.tag) {
        e.has_waiting = true;
        e.waiting = value;
        e.waiting_done.push_back(std::move(done));
      } else {
        e.inflight_done.push_back(std::move(done));
      }
      return;
    }
    Entry& e = NewEntry(sector);
    e.inflight = value;
    e.inflight_done.push_back(std::move(done));
    if (repair) hints_.Erase(sector);  // a repair always reads both slots
    if (const SlotHint* hint = hints_.Find(sector)) {
      // The slots are known from the Read() that built this sector's register or from the
      // last sync: no pread needed.
      const SlotHint h = *hint;
      // (A repair never gets here: it forgot the hint above, since it must read both slots to
      // find a failed one. A cached sector is not suspect: Read() forgets suspect ones.)
      if (h.has_newest && value.tag <= h.newest_tag) {
        Finish(sector, Status::Ok());
        return;
      }
      lock.unlock();
      std::uint8_t* buf = caller_buf_.data();
      EncodeSlot(sector, value, buf);
      Status s = file_->WriteAt(SlotOffset(sector, h.target), buf, kSlotSize);
      lock.lock();
      if (!s.ok()) {
        hints_.Erase(sector);
        Finish(sector, s);
        return;
      }
      e.durable_slot = h.has_newest ? 1 - h.target : -1;
      e.target_slot = h.target;
      QueueForSync(sector);
      return;
    }
    WriteUncached(sector, value, e, lock, repair);
  }

  bool Failed() override {
    std::lock_guard<std::mutex> lock(mu_);
    return !failed_.ok();
  }

  void HoldSyncs() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;
    ++hold_depth_;
  }

  void ReleaseSyncs() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;  // Close() released everything
    ATOMDISK_CHECK(hold_depth_ > 0);
    if (--hold_depth_ == 0) ReleaseHeld();
  }

  std::size_t SyncNow() override {
    ATOMDISK_CHECK(!options_.background_sync);
    std::unique_lock<std::mutex> lock(mu_);
    ATOMDISK_CHECK(!closed_);
    return Round(lock);
  }

  void Close() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_) return;
      closed_ = true;
      stop_ = true;
      hold_depth_ = 0;
      ReleaseHeld();  // synced before the thread stops, like every queued write
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    // Manual mode: what was not synced is dropped, callbacks and all, like a process crash.
    std::unordered_map<SectorIdx, Entry> dropped;
    std::vector<std::pair<WriteCallback, Status>> dropped_ready;
    {
      std::lock_guard<std::mutex> lock(mu_);
      dropped.swap(pending_);
      dropped_ready.swap(ready_);
      queued_.clear();
      free_nodes_.clear();
    }
  }

  Status ForEachStored(const std::function<void(SectorIdx, Tag, bool)>& fn) override {
    return ScanRange(0, options_.sectors, /*verify_all=*/true, fn);
  }

  Status ScanRange(SectorIdx first, std::uint64_t count, bool verify_all,
                   const std::function<void(SectorIdx, Tag, bool)>& fn) override {
    ATOMDISK_CHECK(!in_scan_);  // fn must not scan again: the scan buffers are shared
    if (first >= options_.sectors || count == 0) return Status::Ok();
    const SectorIdx last = first + std::min(count, options_.sectors - first);  // exclusive
    {
      std::lock_guard<std::mutex> lock(mu_);
      // After a failed sync the file may show data the disk lost: report nothing from it.
      if (!failed_.ok()) return failed_;
    }
    in_scan_ = true;
    if (scan_buf_.empty()) {
      scan_buf_.resize(kScanChunkSectors * kSectorStride);
      scan_pending_.resize(kScanChunkSectors);
    }
    Status s = ScanChunks(first, last, verify_all, fn);
    in_scan_ = false;
    return s;
  }

 private:
  // A sector with a write in flight: in the file but not yet synced (or being synced, or being
  // issued), possibly with a newer write waiting behind it. Exists only while that is so.
  struct Entry {
    Triple inflight;
    std::vector<WriteCallback> inflight_done;
    int target_slot = 0;    // the slot `inflight` goes to
    int durable_slot = -1;  // the slot holding the newest durable value, -1 if none is valid
    bool has_waiting = false;
    Triple waiting;
    std::vector<WriteCallback> waiting_done;
  };
  using Map = std::unordered_map<SectorIdx, Entry>;

  // Write() or Repair() of a sector whose slots are not cached: reads both to find the
  // target. `e` is its new entry; needs `lock` held (released during the I/O).
  void WriteUncached(SectorIdx sector, const Triple& value, Entry& e,
                     std::unique_lock<std::mutex>& lock, bool repair) {
    lock.unlock();

    // The entry marks the sector busy; the sync thread ignores entries it has not been
    // handed, so the I/O runs without the lock. One pread of both slots (to find the one
    // holding the newest durable value), one pwrite of the other.
    std::uint8_t* buf = caller_buf_.data();
    Status s = file_->ReadAt(SlotOffset(sector, 0), buf, kSectorStride);
    SlotPair p;
    int target = 0;
    if (s.ok()) {
      p = Examine(sector, buf, /*verify_all=*/repair);
      const bool failed_slot = !p.NoneFailed();
      if (p.Suspect() && !repair && !AboveEveryFailedSlot(p, value.tag)) {
        // Only a repair's verdict, or a value newer than anything the failed slot may hold,
        // may replace what shadows the sector (docs/STORAGE.md, "Suspect sectors").
        lock.lock();
        hints_.Erase(sector);
        Finish(sector, Status::Corruption("sector " + std::to_string(sector) +
                                          " is suspect (a slot failed its checks) and awaits a "
                                          "repair from the peers; " +
                                          value.tag.ToString() + " not stored"));
        return;
      }
      // A repair of the tag the valid slot holds rewrites the failed slot with it (scrub found
      // nothing newer at the peers): then nothing can shadow the value any more.
      const bool heal = repair && failed_slot && p.newest >= 0 && value.tag == p.tag[p.newest];
      if (p.newest >= 0 && value.tag <= p.tag[p.newest] && !heal) {
        // Already durable: a newer or equal value is stored. Nothing to write.
        lock.lock();
        Finish(sector, Status::Ok());
        return;
      }
      target = p.Target();
      if (repair && p.newest < 0 && failed_slot) {
        // No valid slot: the repair's value goes over a failed one (both failed: slot 0).
        target = p.state[0] == SlotState::kEmpty ? 1 : 0;
      }
      EncodeSlot(sector, value, buf);
      s = file_->WriteAt(SlotOffset(sector, target), buf, kSlotSize);
    }
    lock.lock();
    if (!s.ok()) {
      hints_.Erase(sector);
      Finish(sector, s);
      return;
    }
    e.durable_slot = p.newest;
    e.target_slot = target;
    QueueForSync(sector);
  }

  // A write of `sector` is in the file: the next group commit covers it, or the one after
  // ReleaseSyncs while syncs are held. Needs mu_.
  void QueueForSync(SectorIdx sector) {
    if (hold_depth_ > 0) {
      held_.push_back(sector);
      return;
    }
    queued_.push_back(sector);
    cv_.notify_one();
  }

  // Hands the held writes to the group commit. Needs mu_.
  void ReleaseHeld() {
    if (held_.empty()) return;
    queued_.insert(queued_.end(), held_.begin(), held_.end());
    held_.clear();
    cv_.notify_one();
  }
  // A write the group-commit round issues (a waiting write whose predecessor is durable).
  struct Issue {
    SectorIdx sector;
    int slot;
    Triple value;
    Status status;
  };
  static constexpr std::size_t kMaxFreeNodes = 1024;
  // What is known of a sector's slots without reading them: where its next write goes and
  // its newest valid durable tag. Learned from Read() and from completed syncs; forgotten on
  // any error. Kept in SlotHints below, whose size is bounded whatever the device's.
  struct SlotHint {
    int target = 0;
    bool has_newest = false;
    Tag newest_tag;
  };
  // The slot cache: the SlotHint of the sectors read or synced lately, direct-mapped by
  // sector index, so a lookup is one array access and remembering allocates nothing. A
  // sector takes the entry of the one kMaxEntries sectors away (it is forgotten); each entry
  // names its sector, so a hint is exact or absent, never another sector's. Sized to the
  // device up to kMaxEntries (8 MiB): a 1 GiB device is cached whole. (An unordered_map
  // before: a node allocated per sector, a hash lookup that missed the CPU cache, and the
  // whole map cleared when it reached 65,536 sectors.)
  class SlotHints {
   public:
    static constexpr std::uint64_t kMaxEntries = std::uint64_t{1} << 18;
    explicit SlotHints(std::uint64_t sectors)
        : entries_(std::min<std::uint64_t>(std::bit_ceil(sectors), kMaxEntries)),
          mask_(entries_.size() - 1) {}
    const SlotHint* Find(SectorIdx sector) const {
      const Entry& e = entries_[sector & mask_];
      return e.sector == sector ? &e.hint : nullptr;
    }
    void Put(SectorIdx sector, const SlotHint& hint) { entries_[sector & mask_] = {sector, hint}; }
    void Erase(SectorIdx sector) {
      Entry& e = entries_[sector & mask_];
      if (e.sector == sector) e.sector = kNoSector;
    }

   private:
    static constexpr SectorIdx kNoSector = ~SectorIdx{0};
    struct Entry {
      SectorIdx sector = kNoSector;
      SlotHint hint;
    };
    std::vector<Entry> entries_;
    const std::uint64_t mask_;
  };
  void RememberSlots(SectorIdx sector, int target, bool has_newest, Tag newest_tag) {
    hints_.Put(sector, SlotHint{target, has_newest, newest_tag});
  }

  // ScanRange over [first, last): finds the next allocated byte, reads up to
  // kScanChunkSectors sectors from there in one pread, reports the written ones, repeats.
  // Chunked reads keep a dense range (or a preallocated file, where every byte counts as
  // data) to a few preads; a sparse range costs one NextDataOffset per chunk of data.
  Status ScanChunks(SectorIdx first, SectorIdx last, bool verify_all,
                    const std::function<void(SectorIdx, Tag, bool)>& fn) {
    const std::uint64_t end = last * kSectorStride;
    std::uint64_t pos = first * kSectorStride;
    while (pos < end) {
      Result<std::uint64_t> next = file_->NextDataOffset(pos);
      if (!next.ok()) return next.status();
      if (*next >= end) break;
      // NextDataOffset never goes backwards, but a fake might: never rescan a sector.
      const SectorIdx chunk_first = std::max(*next, pos) / kSectorStride;
      const std::uint64_t n = std::min<std::uint64_t>(kScanChunkSectors, last - chunk_first);
      pos = (chunk_first + n) * kSectorStride;
      // Which of these sectors have a write in flight, before reading: the sync thread may be
      // writing their slots (a waiting write it issues), so their bytes mean nothing. The
      // others cannot change while we read: only this thread starts writes.
      {
        std::lock_guard<std::mutex> lock(mu_);
        for (std::uint64_t i = 0; i < n; ++i) {
          scan_pending_[i].reset();
          if (pending_.empty()) continue;
          auto it = pending_.find(chunk_first + i);
          if (it == pending_.end()) continue;
          const Entry& e = it->second;
          scan_pending_[i] = e.has_waiting ? e.waiting.tag : e.inflight.tag;
        }
      }
      Status s = file_->ReadAt(SlotOffset(chunk_first, 0), scan_buf_.data(), n * kSectorStride);
      if (!s.ok()) return s;
      for (std::uint64_t i = 0; i < n; ++i) {
        const SectorIdx sector = chunk_first + i;
        if (scan_pending_[i]) {  // being rewritten: report what Read() would return
          fn(sector, *scan_pending_[i], true);
          continue;
        }
        SlotPair p = Examine(sector, scan_buf_.data() + i * kSectorStride, verify_all);
        if (!p.AnyWritten()) continue;  // a hole, or a block shared with a neighbour's slot
        if (!p.NoneFailed()) {
          // The slot cache may still describe the slot as it was before it rotted; a repair
          // must read the slots again (or it would find "already stored" and write nothing).
          std::lock_guard<std::mutex> lock(mu_);
          hints_.Erase(sector);
        }
        fn(sector, p.newest >= 0 ? p.tag[p.newest] : Tag{}, p.NoneFailed());
      }
    }
    return Status::Ok();
  }

  static Status OutOfRange(SectorIdx sector) {
    return Status::InvalidArgument("sector " + std::to_string(sector) + " out of range");
  }

  // Queues `done(status)` to run on the next round (never inside Write). Needs mu_.
  void Defer(WriteCallback done, Status status) {
    ready_.emplace_back(std::move(done), std::move(status));
    cv_.notify_one();
  }

  // Map nodes are recycled, so a steady stream of writes allocates nothing here.
  Entry& NewEntry(SectorIdx sector) {
    if (free_nodes_.empty()) return pending_.try_emplace(sector).first->second;
    Map::node_type node = std::move(free_nodes_.back());
    free_nodes_.pop_back();
    node.key() = sector;
    return pending_.insert(std::move(node)).position->second;
  }

  void Recycle(Map::iterator it) {
    Map::node_type node = pending_.extract(it);
    Entry& e = node.mapped();
    ATOMDISK_CHECK(e.inflight_done.empty() && e.waiting_done.empty());
    e.inflight = Triple{};
    e.waiting = Triple{};
    e.has_waiting = false;
    e.durable_slot = -1;
    e.target_slot = 0;
    if (free_nodes_.size() < kMaxFreeNodes) free_nodes_.push_back(std::move(node));
  }

  // The in-flight write of `sector` failed before being queued for a sync (or was found
  // already durable): its callbacks get `status`, and a waiting write, if any, is issued by
  // the next round... unless it is the round itself that calls this (see IssueWaiting).
  // Called only for entries without a waiting write (Write() path). Needs mu_.
  void Finish(SectorIdx sector, const Status& status) {
    auto it = pending_.find(sector);
    ATOMDISK_CHECK(it != pending_.end() && !it->second.has_waiting);
    for (WriteCallback& cb : it->second.inflight_done) Defer(std::move(cb), status);
    it->second.inflight_done.clear();
    Recycle(it);
  }

  // One group commit: sync every queued write, run the callbacks, issue the writes that were
  // waiting behind the synced ones (queued for the next round). Entered and left with mu_
  // held through `lock`; drops it around the I/O and the callbacks. Returns callbacks run.
  std::size_t Round(std::unique_lock<std::mutex>& lock) {
    ATOMDISK_CHECK(!in_round_);
    in_round_ = true;
    ATOMDISK_CHECK(batch_.empty() && run_.empty() && issue_.empty());
    batch_.swap(queued_);
    run_.swap(ready_);
    Status status = failed_;
    if (status.ok() && !batch_.empty()) {
      lock.unlock();
      const auto sync_start = std::chrono::steady_clock::now();
      status = file_->Sync();  // covers every write in batch_: each returned before this
      if (options_.on_sync) {
        options_.on_sync(
            batch_.size(),
            std::chrono::duration<double>(std::chrono::steady_clock::now() - sync_start).count());
      }
      lock.lock();
      if (!status.ok()) {
        // After a failed fdatasync the kernel may have dropped the dirty pages: what the file
        // shows is no longer what the disk holds. Stop rather than guess (reopen to recover).
        failed_ = Status::IOError("the store stopped after a failed sync (" + status.message() +
                                  "); reopen it");
      }
    }
    for (SectorIdx sector : batch_) {
      auto it = pending_.find(sector);
      ATOMDISK_CHECK(it != pending_.end());
      Entry& e = it->second;
      for (WriteCallback& cb : e.inflight_done) run_.emplace_back(std::move(cb), status);
      e.inflight_done.clear();
      if (status.ok()) {
        RememberSlots(sector, 1 - e.target_slot, true, e.inflight.tag);
      } else {
        hints_.Erase(sector);
      }
      if (!status.ok() || !e.has_waiting) {
        for (WriteCallback& cb : e.waiting_done) run_.emplace_back(std::move(cb), failed_);
        e.waiting_done.clear();
        Recycle(it);
        continue;
      }
      e.durable_slot = e.target_slot;
      Promote(sector, e);
    }
    batch_.clear();
    lock.unlock();
    std::size_t ran = 0;
    for (auto& [cb, s] : run_) {
      if (cb) {
        cb(s);
        ++ran;
      }
    }
    run_.clear();
    IssueWaiting();
    lock.lock();
    in_round_ = false;
    return ran;
  }

  // Makes the waiting write of `e` its in-flight one, aimed at the slot that does not hold
  // the newest durable value, and schedules it for issue. Needs mu_.
  void Promote(SectorIdx sector, Entry& e) {
    ATOMDISK_CHECK(e.has_waiting && e.inflight_done.empty() && e.durable_slot >= 0);
    e.inflight = std::move(e.waiting);
    e.waiting = Triple{};
    e.has_waiting = false;
    e.inflight_done.swap(e.waiting_done);
    e.target_slot = 1 - e.durable_slot;
    issue_.push_back(Issue{sector, e.target_slot, e.inflight, Status::Ok()});
  }

  // Writes issue_ (unlocked) and queues them for the next sync. A failed write fails its
  // callbacks (next round) and the write waiting behind it, if any, is tried in its place.
  // Called without mu_; returns without it.
  void IssueWaiting() {
    while (!issue_.empty()) {
      for (Issue& w : issue_) {
        EncodeSlot(w.sector, w.value, sync_buf_.data());
        w.status = file_->WriteAt(SlotOffset(w.sector, w.slot), sync_buf_.data(), kSlotSize);
        w.value = Triple{};
      }
      std::lock_guard<std::mutex> lock(mu_);
      const std::size_t n = issue_.size();
      for (std::size_t i = 0; i < n; ++i) {
        const SectorIdx sector = issue_[i].sector;
        const Status status = std::move(issue_[i].status);
        auto it = pending_.find(sector);
        ATOMDISK_CHECK(it != pending_.end());
        Entry& e = it->second;
        if (status.ok()) {
          queued_.push_back(sector);
          continue;
        }
        for (WriteCallback& cb : e.inflight_done) Defer(std::move(cb), status);
        e.inflight_done.clear();
        hints_.Erase(sector);
        if (e.has_waiting) {
          Promote(sector, e);  // appends to issue_: handled on the next pass
        } else {
          Recycle(it);
        }
      }
      issue_.erase(issue_.begin(), issue_.begin() + static_cast<std::ptrdiff_t>(n));
      if (!queued_.empty()) cv_.notify_one();
    }
  }

  void SyncLoop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return !queued_.empty() || !ready_.empty() || stop_; });
      if (queued_.empty() && ready_.empty()) {
        // Stopping, and nothing is left: every entry is queued or issued by this thread, and
        // Close() runs on the only thread that starts writes.
        ATOMDISK_CHECK(pending_.empty());
        return;
      }
      Round(lock);
    }
  }

  const std::unique_ptr<BlockFile> file_;
  const Options options_;
  const int lock_fd_;  // data_dir/LOCK, held while open; -1 from OpenOnFile
  std::thread thread_;

  std::mutex mu_;
  std::condition_variable cv_;     // the sync thread waits for queued_ / ready_ / stop_
  Map pending_;                    // sectors with a write in flight, see Entry
  std::vector<SectorIdx> queued_;  // written, waiting for the next sync
  std::vector<SectorIdx> held_;    // written while syncs are held (HoldSyncs)
  int hold_depth_ = 0;
  std::vector<std::pair<WriteCallback, Status>> ready_;  // callbacks due without a sync
  std::vector<Map::node_type> free_nodes_;
  SlotHints hints_{options_.sectors};
  Status failed_;  // set for good after a failed sync
  bool stop_ = false;
  bool closed_ = false;
  bool in_round_ = false;

  // Used by the round only (one at a time), outside mu_.
  std::vector<SectorIdx> batch_;
  std::vector<std::pair<WriteCallback, Status>> run_;
  std::vector<Issue> issue_;
  alignas(64) std::array<std::uint8_t, kSlotSize> sync_buf_;
  // Used by Read() and Write() (one caller thread).
  alignas(64) std::array<std::uint8_t, kSectorStride> caller_buf_;
  // Used by ScanRange() (the same caller thread), allocated on its first call.
  static constexpr std::uint64_t kScanChunkSectors = 16;  // 130 KiB per pread
  std::vector<std::uint8_t> scan_buf_;
  std::vector<std::optional<Tag>> scan_pending_;  // per chunk sector: its pending tag
  bool in_scan_ = false;
};

Status CheckOptions(const SectorStore::Options& options) {
  if (options.sectors == 0) return Status::InvalidArgument("the device needs at least 1 sector");
  if (options.sectors >
      static_cast<std::uint64_t>(std::numeric_limits<off_t>::max()) / kSectorStride) {
    return Status::InvalidArgument("too many sectors: " + std::to_string(options.sectors));
  }
  return Status::Ok();
}

}  // namespace

Result<std::unique_ptr<SectorStore>> SectorStore::Open(const std::string& data_dir,
                                                       Options options) {
  Status s = CheckOptions(options);
  if (!s.ok()) return s;
  if (data_dir.empty()) return Status::InvalidArgument("empty data_dir");
  s = CreateDataDir(data_dir);
  if (!s.ok()) return s;
  Result<int> lock_fd = LockDataDir(data_dir);
  if (!lock_fd.ok()) return lock_fd.status();
  auto fail = [&](Status st) -> Result<std::unique_ptr<SectorStore>> {
    ::close(*lock_fd);
    return st;
  };

  const std::string path = data_dir + "/" + kDataFileName;
  struct stat st;
  bool created = false;
  if (::stat(path.c_str(), &st) != 0) {
    if (errno != ENOENT) return fail(Status::FromErrno("stat " + path, errno));
    created = true;
  }
  Result<std::unique_ptr<BlockFile>> file = OpenPosixBlockFile(path, /*create=*/true);
  if (!file.ok()) return fail(file.status());
  if (created) {
    s = FsyncPath(data_dir);  // the new file's name is durable before anything goes in it
    if (!s.ok()) return fail(s);
  }
  const std::uint64_t end = options.sectors * kSectorStride;
  Result<std::uint64_t> size = (*file)->Size();
  if (!size.ok()) return fail(size.status());
  if (*size > end) {
    // Past the end may lie blocks reserved for a larger device and never written: holes to
    // SEEK_DATA. A slot written past the end reaches into the 4 KiB block that starts at the
    // first block boundary after its start, so searching from the first boundary at or after
    // `end` finds it (and never mistakes the last sector's slot for data past the end).
    Result<std::uint64_t> data = (*file)->NextDataOffset((end + 4095) / 4096 * 4096);
    if (!data.ok()) return fail(data.status());
    if (*data != BlockFile::kNoData && *data < *size) {
      return fail(Status::InvalidArgument(path + " holds data past sector " +
                                          std::to_string(options.sectors - 1) +
                                          ": was the device shrunk?"));
    }
  } else if (options.preallocate && *size < end && FreeBytes(data_dir) / 2 >= end - *size) {
    // Best effort: where it fails the file stays sparse, which only costs speed. The initial
    // sync (in the constructor) makes the reservation durable along with everything else.
    (void)(*file)->Allocate(end);
  }
  auto store = std::make_unique<SectorStoreImpl>(std::move(*file), options, *lock_fd);
  s = store->InitialStatus();
  if (!s.ok()) return s;  // the destructor releases the lock
  return std::unique_ptr<SectorStore>(std::move(store));
}

std::unique_ptr<SectorStore> SectorStore::OpenOnFile(std::unique_ptr<BlockFile> file,
                                                     Options options) {
  ATOMDISK_CHECK(CheckOptions(options).ok());
  return std::make_unique<SectorStoreImpl>(std::move(file), options, /*lock_fd=*/-1);
}

}  // namespace atomdisk
