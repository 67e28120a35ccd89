#include "daemon/store/sector_store.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "daemon/store/faulty_block_file.h"
#include "daemon/store/mem_block_file.h"

namespace atomdisk {
namespace {

constexpr std::uint64_t kSlotSize = 64 + kSectorSize;  // the on-disk format (docs/STORAGE.md)

std::uint64_t SlotOffset(SectorIdx sector, int slot) {
  return (2 * sector + static_cast<std::uint64_t>(slot)) * kSlotSize;
}

// A value whose 4096 bytes are derived from (ts, wr, salt).
Triple Value(std::uint64_t ts, Rank wr = 1, std::uint64_t salt = 0) {
  SectorData d;
  std::mt19937_64 gen(ts * 1000003 + wr * 7919 + salt);
  for (std::size_t i = 0; i < kSectorSize; i += 8) {
    const std::uint64_t x = gen();
    std::memcpy(d.data() + i, &x, 8);
  }
  return Triple{Tag{ts, wr}, MakeSector(d.data())};
}

bool SameValue(const Triple& a, const Triple& b) { return a.tag == b.tag && *a.data == *b.data; }

::testing::AssertionResult ReadsAs(SectorStore& store, SectorIdx sector, const Triple& want) {
  Result<Triple> got = store.Read(sector);
  if (!got.ok()) return ::testing::AssertionFailure() << got.status().ToString();
  if (!SameValue(*got, want)) {
    return ::testing::AssertionFailure() << "sector " << sector << " holds " << got->tag.ToString()
                                         << ", want " << want.tag.ToString();
  }
  return ::testing::AssertionSuccess();
}

// Collects callback results.
struct Results {
  std::vector<Status> got;
  SectorStore::WriteCallback Add() {
    return [this](Status s) { got.push_back(std::move(s)); };
  }
  bool AllOk() const {
    for (const Status& s : got) {
      if (!s.ok()) return false;
    }
    return true;
  }
};

SectorStore::Options Manual(std::uint64_t sectors) {
  SectorStore::Options o;
  o.sectors = sectors;
  o.background_sync = false;
  return o;
}

class TempDir {
 public:
  TempDir() {
    std::string tmpl = ::testing::TempDir() + "/sector_store_test.XXXXXX";
    char* p = ::mkdtemp(tmpl.data());
    EXPECT_NE(p, nullptr);
    path_ = tmpl;
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Counts callbacks from the sync thread; the test thread waits for a number of them.
class Latch {
 public:
  SectorStore::WriteCallback Add() {
    return [this](Status s) {
      std::lock_guard<std::mutex> lock(mu_);
      if (!s.ok()) errors_.push_back(s.ToString());
      ++done_;
      cv_.notify_all();
    };
  }
  void WaitFor(std::size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return done_ >= n; });
  }
  std::size_t done() {
    std::lock_guard<std::mutex> lock(mu_);
    return done_;
  }
  std::vector<std::string> errors() {
    std::lock_guard<std::mutex> lock(mu_);
    return errors_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::size_t done_ = 0;
  std::vector<std::string> errors_;
};

// --- Basics ------------------------------------------------------------------------------------

TEST(SectorStoreTest, UnwrittenSectorReadsZeros) {
  auto store = SectorStore::OpenOnFile(std::make_unique<MemBlockFile>(), Manual(16));
  Result<Triple> r = store->Read(7);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->tag, Tag{});
  EXPECT_EQ(*r->data, *ZeroSector());
}

TEST(SectorStoreTest, RoundTrip) {
  auto disk = std::make_shared<FaultyBlockFile>();
  auto store = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(16));
  Results results;
  store->Write(3, Value(5, 2), results.Add());
  store->Write(15, Value(6, 1), results.Add());
  EXPECT_TRUE(ReadsAs(*store, 3, Value(5, 2)));  // before the sync, from memory
  EXPECT_EQ(store->SyncNow(), 2u);
  EXPECT_TRUE(results.AllOk());
  EXPECT_TRUE(ReadsAs(*store, 3, Value(5, 2)));  // from the file
  EXPECT_TRUE(ReadsAs(*store, 15, Value(6, 1)));
  EXPECT_TRUE(ReadsAs(*store, 4, Triple{Tag{}, ZeroSector()}));

  // And after a restart on the same disk, with the cache lost.
  store.reset();
  disk->SimulateCrashLosingUnsynced();
  store = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(16));
  EXPECT_TRUE(ReadsAs(*store, 3, Value(5, 2)));
  EXPECT_TRUE(ReadsAs(*store, 15, Value(6, 1)));
}

TEST(SectorStoreTest, SlotsAlternate) {
  auto disk = std::make_shared<FaultyBlockFile>();
  auto store = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(4));
  Results results;
  for (std::uint64_t ts = 1; ts <= 4; ++ts) {
    store->Write(2, Value(ts), results.Add());
    store->SyncNow();
    // The newest value sits in slot (ts+1)%2, the one before it in the other.
    std::uint8_t magic[4];
    ASSERT_TRUE(disk->ReadAt(SlotOffset(2, static_cast<int>((ts + 1) % 2)), magic, 4).ok());
    EXPECT_EQ(std::memcmp(magic, "ADS1", 4), 0);
  }
  EXPECT_TRUE(results.AllOk());
  EXPECT_TRUE(ReadsAs(*store, 2, Value(4)));
}

TEST(SectorStoreTest, OnePwritePerWrite) {
  auto disk = std::make_shared<FaultyBlockFile>();
  auto store = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(64));
  Results results;
  const std::uint64_t before = disk->WriteCount();
  for (SectorIdx s = 0; s < 64; ++s) store->Write(s, Value(1), results.Add());
  EXPECT_EQ(disk->WriteCount() - before, 64u);
}

TEST(SectorStoreTest, OutOfRangeSectorIsInvalidArgument) {
  auto store = SectorStore::OpenOnFile(std::make_unique<MemBlockFile>(), Manual(8));
  EXPECT_EQ(store->Read(8).status().code(), StatusCode::kInvalidArgument);
  Results results;
  store->Write(8, Value(1), results.Add());
  EXPECT_TRUE(results.got.empty());  // never from inside Write()
  EXPECT_EQ(store->SyncNow(), 1u);
  ASSERT_EQ(results.got.size(), 1u);
  EXPECT_EQ(results.got[0].code(), StatusCode::kInvalidArgument);
}

TEST(SectorStoreTest, OlderOrEqualTagIsSatisfiedByTheStoredValue) {
  auto disk = std::make_shared<FaultyBlockFile>();
  auto store = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(8));
  Results results;
  store->Write(1, Value(5), results.Add());
  store->SyncNow();
  const std::uint64_t writes = disk->WriteCount();
  const std::uint64_t syncs = disk->SyncCount();
  store->Write(1, Value(3), results.Add());
  store->Write(1, Value(5), results.Add());
  EXPECT_EQ(store->SyncNow(), 2u);
  EXPECT_TRUE(results.AllOk());
  EXPECT_EQ(disk->WriteCount(), writes);  // nothing written
  EXPECT_EQ(disk->SyncCount(), syncs);    // nothing synced
  EXPECT_TRUE(ReadsAs(*store, 1, Value(5)));
}

// --- Group commit and the in-flight rule --------------------------------------------------------

TEST(SectorStoreTest, OneSyncCoversEveryQueuedWrite) {
  auto disk = std::make_shared<FaultyBlockFile>();
  auto store = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(1000));
  const std::uint64_t syncs = disk->SyncCount();
  Results results;
  for (SectorIdx s = 0; s < 500; ++s) store->Write(s * 2, Value(s + 1), results.Add());
  EXPECT_EQ(disk->SyncCount(), syncs);
  EXPECT_EQ(store->SyncNow(), 500u);
  EXPECT_EQ(disk->SyncCount(), syncs + 1);
  EXPECT_EQ(results.got.size(), 500u);
  EXPECT_TRUE(results.AllOk());
  EXPECT_EQ(store->SyncNow(), 0u);  // nothing queued: no sync at all
  EXPECT_EQ(disk->SyncCount(), syncs + 1);
}

TEST(SectorStoreTest, CallbackNeverRunsBeforeTheSync) {
  auto disk = std::make_shared<FaultyBlockFile>();
  auto store = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(8));
  Results results;
  store->Write(0, Value(1), results.Add());
  EXPECT_TRUE(results.got.empty());
  EXPECT_EQ(disk->PendingWriteCount(), 1u);
  // Unacknowledged, so a crash may lose it: here it does.
  store.reset();
  EXPECT_TRUE(results.got.empty());  // a manual-mode close drops unsynced writes
  disk->SimulateCrashLosingUnsynced();
  store = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(8));
  EXPECT_TRUE(ReadsAs(*store, 0, Triple{Tag{}, ZeroSector()}));
}

// A MemBlockFile that records when writes finish and syncs start and finish, to check from the
// callbacks (on the sync thread) that every acknowledged write was covered by a whole sync.
class RecordingBlockFile final : public BlockFile {
 public:
  Status ReadAt(std::uint64_t offset, void* buf, std::size_t n) override {
    return mem_.ReadAt(offset, buf, n);
  }
  Status WriteAt(std::uint64_t offset, const void* buf, std::size_t n) override {
    Status s = mem_.WriteAt(offset, buf, n);
    std::lock_guard<std::mutex> lock(mu_);
    written_at_[offset / (2 * kSlotSize)] = ++clock_;
    return s;
  }
  Status Sync() override {
    std::uint64_t start;
    {
      std::lock_guard<std::mutex> lock(mu_);
      start = ++clock_;
    }
    Status s = mem_.Sync();
    std::lock_guard<std::mutex> lock(mu_);
    ++clock_;
    synced_before_ = std::max(synced_before_, start);
    return s;
  }
  Result<std::uint64_t> Size() override { return mem_.Size(); }

  // True if the last write of `sector` finished before a sync that has finished started.
  bool Durable(SectorIdx sector) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = written_at_.find(sector);
    return it != written_at_.end() && it->second < synced_before_;
  }

 private:
  MemBlockFile mem_;
  std::mutex mu_;
  std::uint64_t clock_ = 0;
  std::uint64_t synced_before_ = 0;  // every write finished before this was synced
  std::map<SectorIdx, std::uint64_t> written_at_;
};

TEST(SectorStoreTest, BackgroundCallbacksRunOnlyAfterACoveringSync) {
  auto disk = std::make_shared<RecordingBlockFile>();
  SectorStore::Options options;
  options.sectors = 2000;
  auto store = SectorStore::OpenOnFile(ShareBlockFile(disk), options);
  std::atomic<int> not_durable{0};
  Latch latch;
  for (SectorIdx s = 0; s < 2000; ++s) {
    auto count = latch.Add();
    store->Write(s, Value(1, 1, s), [&, s, count](Status st) {
      if (!disk->Durable(s)) ++not_durable;
      count(st);
    });
  }
  latch.WaitFor(2000);
  EXPECT_EQ(not_durable.load(), 0);
  EXPECT_TRUE(latch.errors().empty());
}

TEST(SectorStoreTest, SecondWriteWaitsAndOnlyTheNewestWaiterIsWritten) {
  auto disk = std::make_shared<FaultyBlockFile>();
  auto store = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(8));
  Results results;
  const std::uint64_t writes = disk->WriteCount();
  store->Write(4, Value(1), results.Add());
  store->Write(4, Value(2), results.Add());  // waits behind ts 1
  store->Write(4, Value(3), results.Add());  // replaces ts 2
  EXPECT_EQ(disk->WriteCount(), writes + 1);
  EXPECT_TRUE(ReadsAs(*store, 4, Value(3)));

  EXPECT_EQ(store->SyncNow(), 1u);  // ts 1 durable; ts 3 issued
  EXPECT_EQ(disk->WriteCount(), writes + 2);
  EXPECT_TRUE(ReadsAs(*store, 4, Value(3)));
  EXPECT_EQ(store->SyncNow(), 2u);  // ts 3 durable, and ts 2 with it
  EXPECT_EQ(results.got.size(), 3u);
  EXPECT_TRUE(results.AllOk());
  EXPECT_EQ(store->SyncNow(), 0u);
  EXPECT_TRUE(ReadsAs(*store, 4, Value(3)));
  store.reset();
  disk->SimulateCrashLosingUnsynced();
  store = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(8));
  EXPECT_TRUE(ReadsAs(*store, 4, Value(3)));
}

TEST(SectorStoreTest, ReopenMakesWhatTheCacheHeldDurable) {
  // A process restart (no power loss): what the old process left unsynced in the OS cache
  // is read by the new one, so it must be made durable before it is read.
  auto disk = std::make_shared<FaultyBlockFile>();
  auto store = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(8));
  Results results;
  store->Write(1, Value(7), results.Add());
  store.reset();
  store = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(8));
  EXPECT_TRUE(ReadsAs(*store, 1, Value(7)));
  disk->SimulateCrashLosingUnsynced();
  EXPECT_TRUE(ReadsAs(*store, 1, Value(7)));
}

// --- Crash atomicity ----------------------------------------------------------------------------

// For many seeds: random writes to a few sectors, random syncs and injected EIO, then a crash
// at a random point (unsynced writes lost, some kept, one maybe torn), a restart on the same
// disk, and a check that every sector holds its last acknowledged value or a later one, whole.
TEST(SectorStoreCrashTest, EverySectorIsOldOrNewAfterACrash) {
  constexpr std::uint64_t kSectors = 4;
  constexpr int kSeeds = 1500;
  int crashes = 0;
  for (int seed = 0; seed < kSeeds; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(static_cast<std::uint64_t>(seed));
    auto disk = std::make_shared<FaultyBlockFile>();
    std::uint64_t next_ts = 1;
    // Per sector: every value handed to Write (by ts), the newest acknowledged ts, and the ts
    // read right after the last restart (durable by then, so it must never go backwards).
    std::vector<std::map<std::uint64_t, Triple>> written(kSectors);
    std::vector<std::uint64_t> seen_at_start(kSectors, 0);
    auto acked_ptr = std::make_shared<std::vector<std::uint64_t>>(kSectors, 0);

    for (int life = 0; life < 4; ++life) {
      auto store = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(kSectors));
      for (SectorIdx s = 0; s < kSectors; ++s) {
        Result<Triple> r = store->Read(s);
        ASSERT_TRUE(r.ok()) << "sector " << s << ": " << r.status().ToString();
        const std::uint64_t ts = r->tag.ts;
        ASSERT_GE(ts, (*acked_ptr)[s]) << "sector " << s << " lost an acknowledged write";
        ASSERT_GE(ts, seen_at_start[s]) << "sector " << s << " went back in time";
        if (ts == 0) {
          ASSERT_EQ(*r->data, *ZeroSector());
        } else {
          ASSERT_TRUE(written[s].count(ts)) << "sector " << s << " holds unknown ts " << ts;
          ASSERT_TRUE(SameValue(*r, written[s].at(ts))) << "sector " << s << " is torn";
        }
        seen_at_start[s] = ts;
      }

      bool failed = false;  // after a failed sync the store refuses I/O until reopened
      bool write_faults = false;
      const int steps = static_cast<int>(rng() % 40);
      for (int step = 0; step < steps; ++step) {
        const std::uint64_t action = rng() % 100;
        if (action < 60) {
          const SectorIdx s = rng() % kSectors;
          const std::uint64_t ts = next_ts++;
          Triple v = Value(ts, static_cast<Rank>(1 + rng() % 3), static_cast<std::uint64_t>(seed));
          written[s].emplace(ts, v);
          store->Write(s, v, [acked_ptr, s, ts](Status st) {
            if (st.ok()) (*acked_ptr)[s] = std::max((*acked_ptr)[s], ts);
          });
          // Read() reflects the newest write unless that write failed.
          if (!failed && !write_faults) {
            ASSERT_TRUE(ReadsAs(*store, s, v));
          }
        } else if (action < 90) {
          store->SyncNow();
        } else if (action < 95) {
          disk->FailNextWrites(1);
          write_faults = true;
        } else if (action < 97) {
          disk->FailNextSyncs(1);
        }
        if (!failed) {
          Result<Triple> probe = store->Read(0);
          failed = !probe.ok() && probe.status().code() == StatusCode::kIOError;
        }
      }
      store.reset();  // drops unsynced writes and their callbacks
      disk->FailNextWrites(0);
      disk->FailNextSyncs(0);
      switch (rng() % 4) {
        case 0:
        case 1:
          disk->SimulateCrash(rng);
          ++crashes;
          break;
        case 2:
          disk->SimulateCrashLosingUnsynced();
          ++crashes;
          break;
        default:
          break;  // the process died, the machine did not: the cache survives
      }
    }
    if (HasFatalFailure()) return;
  }
  EXPECT_GT(crashes, kSeeds);
}

// --- Checksums ----------------------------------------------------------------------------------

TEST(SectorStoreTest, ChecksumCatchesAFlippedBit) {
  auto disk = std::make_shared<FaultyBlockFile>();
  auto store = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(8));
  Results results;
  store->Write(5, Value(1), results.Add());  // slot 0
  store->SyncNow();
  store->Write(5, Value(2), results.Add());  // slot 1
  store->SyncNow();
  ASSERT_TRUE(results.AllOk());

  // Bit rot in the newest slot: the older value is returned (scrub is what notices).
  disk->CorruptByte(SlotOffset(5, 1) + 64 + 1000);
  EXPECT_TRUE(ReadsAs(*store, 5, Value(1)));
  std::vector<std::pair<SectorIdx, bool>> seen;
  ASSERT_TRUE(store
                  ->ForEachStored([&](SectorIdx s, Tag tag, bool ok) {
                    seen.emplace_back(s, ok);
                    EXPECT_EQ(tag, Value(1).tag);
                  })
                  .ok());
  EXPECT_EQ(seen, (std::vector<std::pair<SectorIdx, bool>>{{5, false}}));

  // Both slots bad: Corruption, never data.
  disk->CorruptByte(SlotOffset(5, 0) + 64 + 7, 3);
  Result<Triple> r = store->Read(5);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
  EXPECT_NE(r.status().message().find("sector 5"), std::string::npos) << r.status().ToString();

  // A new write repairs the sector.
  store->Write(5, Value(3), results.Add());
  store->SyncNow();
  EXPECT_TRUE(results.AllOk());
  EXPECT_TRUE(ReadsAs(*store, 5, Value(3)));
}

TEST(SectorStoreTest, HeaderCorruptionAndMisplacedSlotsAreInvalid) {
  auto disk = std::make_shared<FaultyBlockFile>();
  auto store = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(8));
  Results results;
  for (std::uint64_t ts = 1; ts <= 2; ++ts) {  // both slots of sectors 1 and 6
    store->Write(1, Value(ts), results.Add());
    store->Write(6, Value(ts + 10), results.Add());
    store->SyncNow();
  }
  ASSERT_TRUE(results.AllOk());

  // Sector 1's slots copied to sector 2's place: they are not sector 2's data.
  std::vector<std::uint8_t> slots(2 * kSlotSize);
  ASSERT_TRUE(disk->ReadAt(SlotOffset(1, 0), slots.data(), kSlotSize).ok());
  ASSERT_TRUE(disk->WriteAt(SlotOffset(2, 0), slots.data(), kSlotSize).ok());
  EXPECT_TRUE(ReadsAs(*store, 2, Triple{Tag{}, ZeroSector()}));  // slot 1 still empty
  ASSERT_TRUE(disk->ReadAt(SlotOffset(1, 0), slots.data(), slots.size()).ok());
  ASSERT_TRUE(disk->WriteAt(SlotOffset(2, 0), slots.data(), slots.size()).ok());
  EXPECT_EQ(store->Read(2).status().code(), StatusCode::kCorruption);

  // A flipped bit in the tag (header) of sector 6's newest slot, then of the other one.
  disk->CorruptByte(SlotOffset(6, 1) + 16);
  EXPECT_TRUE(ReadsAs(*store, 6, Value(11)));
  disk->CorruptByte(SlotOffset(6, 0) + 16);
  EXPECT_EQ(store->Read(6).status().code(), StatusCode::kCorruption);
  EXPECT_TRUE(ReadsAs(*store, 1, Value(2)));
}

TEST(SectorStoreTest, TornFirstWriteReadsAsUnwrittenAndIsRewrittenInPlace) {
  // A valid slot image of sector 3, from a scratch store.
  std::vector<std::uint8_t> slot(kSlotSize);
  {
    auto scratch = std::make_shared<MemBlockFile>();
    auto store = SectorStore::OpenOnFile(ShareBlockFile(scratch), Manual(8));
    Results results;
    store->Write(3, Value(1), results.Add());
    store->SyncNow();
    ASSERT_TRUE(scratch->ReadAt(SlotOffset(3, 0), slot.data(), slot.size()).ok());
  }
  // Its first 1000 bytes reached the disk, then power failed.
  auto disk = std::make_shared<FaultyBlockFile>();
  ASSERT_TRUE(disk->WriteAt(SlotOffset(3, 0), slot.data(), 1000).ok());
  ASSERT_TRUE(disk->Sync().ok());
  auto store = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(8));
  EXPECT_TRUE(ReadsAs(*store, 3, Triple{Tag{}, ZeroSector()}));
  bool ok = true;
  ASSERT_TRUE(
      store->ForEachStored([&](SectorIdx, Tag, bool checksum_ok) { ok = checksum_ok; }).ok());
  EXPECT_FALSE(ok);

  // The next write goes to the torn slot: the empty one keeps standing for "unwritten", so
  // a crash tearing this write too still leaves the sector unwritten, not corrupt.
  Results results;
  store->Write(3, Value(2), results.Add());
  std::vector<std::uint8_t> other(kSlotSize, 0xff);
  ASSERT_TRUE(disk->ReadAt(SlotOffset(3, 1), other.data(), other.size()).ok());
  EXPECT_EQ(other, std::vector<std::uint8_t>(kSlotSize, 0));
  store->SyncNow();
  EXPECT_TRUE(results.AllOk());
  EXPECT_TRUE(ReadsAs(*store, 3, Value(2)));
}

// --- I/O errors ---------------------------------------------------------------------------------

TEST(SectorStoreTest, WriteEioGoesToTheCallbackAndTheOldValueStays) {
  auto disk = std::make_shared<FaultyBlockFile>();
  auto store = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(8));
  Results results;
  store->Write(3, Value(1), results.Add());
  store->SyncNow();
  disk->FailNextWrites(1);
  store->Write(3, Value(2), results.Add());
  EXPECT_EQ(results.got.size(), 1u);  // not from inside Write()
  EXPECT_EQ(store->SyncNow(), 1u);
  ASSERT_EQ(results.got.size(), 2u);
  EXPECT_EQ(results.got[1].code(), StatusCode::kIOError);
  EXPECT_TRUE(ReadsAs(*store, 3, Value(1)));

  // The sector, and the store, carry on.
  store->Write(3, Value(3), results.Add());
  store->SyncNow();
  ASSERT_EQ(results.got.size(), 3u);
  EXPECT_TRUE(results.got[2].ok());
  EXPECT_TRUE(ReadsAs(*store, 3, Value(3)));
}

TEST(SectorStoreTest, EioOnAWaitingWriteIssuedByTheRound) {
  auto disk = std::make_shared<FaultyBlockFile>();
  auto store = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(8));
  Results results;
  store->Write(3, Value(1), results.Add());
  store->Write(3, Value(2), results.Add());  // waits
  disk->FailNextWrites(1);
  EXPECT_EQ(store->SyncNow(), 1u);  // ts 1 OK; issuing ts 2 fails
  EXPECT_TRUE(results.got[0].ok());
  EXPECT_EQ(store->SyncNow(), 1u);
  ASSERT_EQ(results.got.size(), 2u);
  EXPECT_EQ(results.got[1].code(), StatusCode::kIOError);
  EXPECT_TRUE(ReadsAs(*store, 3, Value(1)));
}

TEST(SectorStoreTest, SyncEioFailsTheBatchAndStopsTheStore) {
  auto disk = std::make_shared<FaultyBlockFile>();
  auto store = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(8));
  Results results;
  store->Write(0, Value(1), results.Add());
  store->Write(1, Value(2), results.Add());
  store->Write(1, Value(3), results.Add());  // waiting
  disk->FailNextSyncs(1);
  EXPECT_EQ(store->SyncNow(), 3u);
  ASSERT_EQ(results.got.size(), 3u);
  for (const Status& s : results.got) EXPECT_EQ(s.code(), StatusCode::kIOError) << s.ToString();
  EXPECT_EQ(store->Read(0).status().code(), StatusCode::kIOError);
  store->Write(2, Value(4), results.Add());
  store->SyncNow();
  ASSERT_EQ(results.got.size(), 4u);
  EXPECT_EQ(results.got[3].code(), StatusCode::kIOError);

  // Reopening recovers; each sector is old or new.
  store.reset();
  store = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(8));
  for (SectorIdx s = 0; s < 3; ++s) EXPECT_TRUE(store->Read(s).ok());
}

// --- ForEachStored ------------------------------------------------------------------------------

TEST(SectorStoreTest, ForEachStoredVisitsExactlyTheWrittenSectors) {
  auto disk = std::make_shared<FaultyBlockFile>();
  constexpr std::uint64_t kSectors = 100000;
  auto store = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(kSectors));
  std::mt19937_64 rng(42);
  std::map<SectorIdx, Tag> want;
  Results results;
  for (int i = 0; i < 300; ++i) {
    const SectorIdx s = rng() % kSectors;
    Triple v = Value(static_cast<std::uint64_t>(i) + 1);
    want[s] = v.tag;
    store->Write(s, v, results.Add());
    if (i % 3 == 0) store->SyncNow();
  }
  std::map<SectorIdx, Tag> got;
  SectorIdx last = 0;
  ASSERT_TRUE(store
                  ->ForEachStored([&](SectorIdx s, Tag tag, bool ok) {
                    EXPECT_TRUE(got.empty() || s > last) << "out of order";
                    last = s;
                    EXPECT_TRUE(ok);
                    got[s] = tag;
                  })
                  .ok());
  EXPECT_EQ(got, want);
  store->SyncNow();
  store->SyncNow();
  got.clear();
  ASSERT_TRUE(store->ForEachStored([&](SectorIdx s, Tag tag, bool) { got[s] = tag; }).ok());
  EXPECT_EQ(got, want);
}

// --- The POSIX store ----------------------------------------------------------------------------

TEST(SectorStorePosixTest, OpenRejectsZeroSectors) {
  TempDir dir;
  SectorStore::Options options;
  options.sectors = 0;
  auto store = SectorStore::Open(dir.path() + "/data", options);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), StatusCode::kInvalidArgument);
}

TEST(SectorStorePosixTest, SecondOpenOfTheSameDataDirIsBusy) {
  TempDir dir;
  const std::string data_dir = dir.path() + "/a/b/data";
  SectorStore::Options options;
  options.sectors = 8;
  auto first = SectorStore::Open(data_dir, options);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  struct stat st;
  ASSERT_EQ(::stat(data_dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);

  auto second = SectorStore::Open(data_dir, options);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kBusy);
  EXPECT_NE(second.status().message().find(data_dir), std::string::npos);
  EXPECT_NE(second.status().message().find("pid " + std::to_string(::getpid())), std::string::npos)
      << second.status().ToString();

  first->reset();
  auto third = SectorStore::Open(data_dir, options);
  EXPECT_TRUE(third.ok()) << third.status().ToString();
}

TEST(SectorStorePosixTest, ThousandWritesInFlightWithBackgroundSync) {
  TempDir dir;
  constexpr std::uint64_t kSectors = 1000;
  SectorStore::Options options;
  options.sectors = kSectors;
  {
    auto store = SectorStore::Open(dir.path(), options);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    Latch latch;
    for (SectorIdx s = 0; s < kSectors; ++s) (*store)->Write(s, Value(1, 1, s), latch.Add());
    // Rewrites while the first ones are in flight: these wait inside the store.
    for (SectorIdx s = 0; s < kSectors; s += 3) (*store)->Write(s, Value(2, 1, s), latch.Add());
    for (SectorIdx s = 0; s < kSectors; ++s) {
      ASSERT_TRUE(ReadsAs(**store, s, Value(s % 3 == 0 ? 2 : 1, 1, s)));
    }
    latch.WaitFor(kSectors + (kSectors + 2) / 3);
    EXPECT_TRUE(latch.errors().empty()) << latch.errors().front();
  }
  auto store = SectorStore::Open(dir.path(), options);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  for (SectorIdx s = 0; s < kSectors; ++s) {
    ASSERT_TRUE(ReadsAs(**store, s, Value(s % 3 == 0 ? 2 : 1, 1, s)));
  }
}

TEST(SectorStorePosixTest, CloseDrainsQueuedAndWaitingWrites) {
  TempDir dir;
  SectorStore::Options options;
  options.sectors = 64;
  auto store = SectorStore::Open(dir.path(), options);
  ASSERT_TRUE(store.ok());
  Latch latch;
  for (std::uint64_t ts = 1; ts <= 5; ++ts) {
    for (SectorIdx s = 0; s < 64; ++s) (*store)->Write(s, Value(ts, 1, s), latch.Add());
  }
  (*store)->Close();
  EXPECT_EQ(latch.done(), 5u * 64);
  EXPECT_TRUE(latch.errors().empty());
  store->reset();
  store = SectorStore::Open(dir.path(), options);
  ASSERT_TRUE(store.ok());
  for (SectorIdx s = 0; s < 64; ++s) ASSERT_TRUE(ReadsAs(**store, s, Value(5, 1, s)));
}

TEST(SectorStorePosixTest, LargeDeviceStaysSparseWithoutPreallocation) {
  TempDir dir;
  constexpr std::uint64_t kSectors = 1ull << 21;  // an 8 GiB device
  SectorStore::Options options;
  options.sectors = kSectors;
  options.preallocate = false;
  auto store = SectorStore::Open(dir.path(), options);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  Latch latch;
  (*store)->Write(kSectors - 1, Value(9), latch.Add());
  (*store)->Write(0, Value(8), latch.Add());
  latch.WaitFor(2);
  ASSERT_TRUE(latch.errors().empty());

  struct stat st;
  ASSERT_EQ(::stat((dir.path() + "/sectors.dat").c_str(), &st), 0);
  EXPECT_EQ(static_cast<std::uint64_t>(st.st_size), (2 * kSectors - 1) * kSlotSize);
  EXPECT_LT(static_cast<std::uint64_t>(st.st_blocks) * 512, 256u * 1024);

  std::vector<SectorIdx> seen;
  ASSERT_TRUE((*store)
                  ->ForEachStored([&](SectorIdx s, Tag, bool ok) {
                    EXPECT_TRUE(ok);
                    seen.push_back(s);
                  })
                  .ok());
  EXPECT_EQ(seen, (std::vector<SectorIdx>{0, kSectors - 1}));
  EXPECT_TRUE(ReadsAs(**store, kSectors - 1, Value(9)));
  EXPECT_TRUE(ReadsAs(**store, kSectors - 2, Triple{Tag{}, ZeroSector()}));
}

TEST(SectorStorePosixTest, PreallocatedFileReadsAndScansLikeASparseOne) {
  TempDir dir;
  constexpr std::uint64_t kSectors = 4096;  // 16 MiB, a 34 MB file
  SectorStore::Options options;
  options.sectors = kSectors;
  options.preallocate = true;
  auto store = SectorStore::Open(dir.path(), options);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  struct stat st;
  ASSERT_EQ(::stat((dir.path() + "/sectors.dat").c_str(), &st), 0);
  EXPECT_EQ(static_cast<std::uint64_t>(st.st_size), 2 * kSectors * kSlotSize);
  // tmpfs and ext4 both reserve blocks; a file system that cannot leaves the file sparse.
  if (static_cast<std::uint64_t>(st.st_blocks) * 512 < 2 * kSectors * kSlotSize) {
    GTEST_SKIP() << "this file system does not preallocate";
  }

  Latch latch;
  (*store)->Write(4000, Value(9), latch.Add());
  (*store)->Write(5, Value(8), latch.Add());
  latch.WaitFor(2);
  ASSERT_TRUE(latch.errors().empty());
  EXPECT_TRUE(ReadsAs(**store, 6, Triple{Tag{}, ZeroSector()}));
  EXPECT_TRUE(ReadsAs(**store, 4000, Value(9)));
  // Reserved blocks are holes to SEEK_DATA (ext4, xfs, tmpfs), and wherever the scan does
  // land on them their zeroed headers read as never written: only written sectors show.
  std::vector<SectorIdx> seen;
  ASSERT_TRUE((*store)
                  ->ForEachStored([&](SectorIdx s, Tag, bool ok) {
                    EXPECT_TRUE(ok);
                    seen.push_back(s);
                  })
                  .ok());
  EXPECT_EQ(seen, (std::vector<SectorIdx>{5, 4000}));
  store->reset();

  // Reopening preallocates nothing more and changes nothing.
  store = SectorStore::Open(dir.path(), options);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  EXPECT_TRUE(ReadsAs(**store, 5, Value(8)));
  EXPECT_TRUE(ReadsAs(**store, 4000, Value(9)));
}

TEST(SectorStorePosixTest, ShrinkingIsRefusedOnlyOverWrittenSectors) {
  TempDir dir;
  SectorStore::Options options;
  options.sectors = 4096;
  options.preallocate = true;
  auto store = SectorStore::Open(dir.path(), options);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  Latch latch;
  (*store)->Write(2047, Value(3), latch.Add());  // the last sector of the smaller device
  (*store)->Write(3000, Value(4), latch.Add());
  latch.WaitFor(2);
  ASSERT_TRUE(latch.errors().empty());
  store->reset();

  options.sectors = 2048;  // sector 3000 holds data past the end
  store = SectorStore::Open(dir.path(), options);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), StatusCode::kInvalidArgument);

  options.sectors = 3001;  // just big enough
  store = SectorStore::Open(dir.path(), options);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  EXPECT_TRUE(ReadsAs(**store, 3000, Value(4)));
  store->reset();

  // A preallocated tail nobody wrote (a file of a larger device) is no reason to refuse.
  TempDir other;
  options.sectors = 4096;
  store = SectorStore::Open(other.path(), options);
  ASSERT_TRUE(store.ok());
  (*store)->Write(2047, Value(5), latch.Add());
  latch.WaitFor(3);
  ASSERT_TRUE(latch.errors().empty());
  store->reset();
  options.sectors = 2048;
  store = SectorStore::Open(other.path(), options);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  EXPECT_TRUE(ReadsAs(**store, 2047, Value(5)));
}

}  // namespace
}  // namespace atomdisk
