#include "daemon/store/sector_store.h"

#include <fcntl.h>
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
#include <initializer_list>
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

// Writes each of `values` to `sector` in turn, each synced before the next (the first of two
// lands in slot 0, the second in slot 1). Manual-sync stores only.
void WriteEachSynced(SectorStore& store, Results& results, SectorIdx sector,
                     std::initializer_list<Triple> values) {
  for (const Triple& v : values) {
    store.Write(sector, v, results.Add());
    store.SyncNow();
  }
}

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

// The metrics hook sees each group commit: how many writes one fdatasync covered.
TEST(SectorStoreTest, OnSyncReportsEachGroupCommit) {
  SectorStore::Options options = Manual(16);
  std::vector<std::size_t> batches;
  options.on_sync = [&](std::size_t sectors, double seconds) {
    EXPECT_GE(seconds, 0);
    batches.push_back(sectors);
  };
  auto store = SectorStore::OpenOnFile(std::make_unique<MemBlockFile>(), options);
  Results results;
  for (SectorIdx s = 0; s < 3; ++s) store->Write(s, Value(1), results.Add());
  EXPECT_EQ(store->SyncNow(), 3u);
  store->Write(5, Value(2), results.Add());
  EXPECT_EQ(store->SyncNow(), 1u);
  EXPECT_EQ(store->SyncNow(), 0u);  // nothing queued: no fdatasync, no report
  EXPECT_EQ(batches, (std::vector<std::size_t>{3, 1}));
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

// HoldSyncs: the writes of one batch go into the file at once but reach the group commit
// together at ReleaseSyncs; holds nest.
TEST(SectorStoreTest, HeldWritesWaitForTheReleaseAndShareOneSync) {
  auto disk = std::make_shared<FaultyBlockFile>();
  auto store = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(300));
  const std::uint64_t syncs = disk->SyncCount();
  Results results;
  store->HoldSyncs();
  store->HoldSyncs();
  for (SectorIdx s = 0; s < 256; ++s) store->Write(s, Value(1, 1, s), results.Add());
  EXPECT_EQ(disk->PendingWriteCount(), 256u);  // written at once
  EXPECT_TRUE(ReadsAs(*store, 7, Value(1, 1, 7)));
  EXPECT_EQ(store->SyncNow(), 0u);  // held: not handed to the group commit
  EXPECT_EQ(disk->SyncCount(), syncs);
  store->ReleaseSyncs();
  EXPECT_EQ(store->SyncNow(), 0u);  // the outer hold still holds
  store->ReleaseSyncs();
  EXPECT_EQ(store->SyncNow(), 256u);
  EXPECT_EQ(disk->SyncCount(), syncs + 1);
  EXPECT_TRUE(results.AllOk());
  EXPECT_EQ(disk->PendingWriteCount(), 0u);
}

// In background mode the sync thread starts nothing for held writes, and Close() syncs them.
TEST(SectorStoreTest, BackgroundHeldWritesGoAsOneBatchAndCloseSyncsThem) {
  auto disk = std::make_shared<FaultyBlockFile>();
  SectorStore::Options options;
  options.sectors = 600;
  std::mutex mu;
  std::vector<std::size_t> batches;
  options.on_sync = [&](std::size_t sectors, double) {
    std::lock_guard<std::mutex> lock(mu);
    batches.push_back(sectors);
  };
  auto store = SectorStore::OpenOnFile(ShareBlockFile(disk), options);
  Latch latch;
  store->HoldSyncs();
  for (SectorIdx s = 0; s < 256; ++s) store->Write(s, Value(1, 1, s), latch.Add());
  // Two whole rounds of the sync thread, each started by a write it answers without a sync (a
  // sector out of range): a held write wrongly queued would have been synced and answered by
  // the end of the second.
  Latch rounds;
  for (std::size_t round = 1; round <= 2; ++round) {
    store->Write(options.sectors, Value(1), rounds.Add());
    rounds.WaitFor(round);
  }
  EXPECT_EQ(latch.done(), 0u);
  store->ReleaseSyncs();
  latch.WaitFor(256);
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_EQ(batches, (std::vector<std::size_t>{256}));
  }
  // Held at Close: synced and acknowledged, then durable across a crash.
  store->HoldSyncs();
  for (SectorIdx s = 300; s < 310; ++s) store->Write(s, Value(2, 1, s), latch.Add());
  store->Close();
  EXPECT_EQ(latch.done(), 266u);
  EXPECT_TRUE(latch.errors().empty());
  disk->SimulateCrashLosingUnsynced();
  store = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(600));
  EXPECT_TRUE(ReadsAs(*store, 305, Value(2, 1, 305)));
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
  int suspects = 0;
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
        if (!r.ok() && r.status().code() == StatusCode::kCorruption) {
          // Suspect: a write torn by the crash, which looks like rot of a newer value; the
          // store serves neither. The valid slot behind it holds the old value.
          ++suspects;
          r = store->ReadNewestValid(s);
        }
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
  EXPECT_GT(suspects, 0);  // some crash tore a write over an older value
}

// --- Checksums ----------------------------------------------------------------------------------

TEST(SectorStoreTest, ChecksumCatchesAFlippedBit) {
  auto disk = std::make_shared<FaultyBlockFile>();
  auto store = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(8));
  Results results;
  WriteEachSynced(*store, results, 5, {Value(1), Value(2)});  // slot 0, then slot 1
  ASSERT_TRUE(results.AllOk());

  // Bit rot in the newest slot: the sector is suspect. The older value behind it is not served
  // either, since value 2 may have been acknowledged (docs/STORAGE.md, "Suspect sectors").
  disk->CorruptByte(SlotOffset(5, 1) + 64 + 1000);
  Result<Triple> r = store->Read(5);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
  EXPECT_NE(r.status().message().find("may hold a newer value"), std::string::npos)
      << r.status().ToString();
  EXPECT_FALSE(store->CachedDurableTag(5).has_value());
  EXPECT_TRUE(SameValue(*store->ReadNewestValid(5), Value(1)));
  std::vector<std::pair<SectorIdx, bool>> seen;
  ASSERT_TRUE(store
                  ->ForEachStored([&](SectorIdx s, Tag tag, bool ok) {
                    seen.emplace_back(s, ok);
                    EXPECT_EQ(tag, Value(1).tag);
                  })
                  .ok());
  EXPECT_EQ(seen, (std::vector<std::pair<SectorIdx, bool>>{{5, false}}));

  // Both slots bad: Corruption, never data, not even to a repair.
  disk->CorruptByte(SlotOffset(5, 0) + 64 + 7, 3);
  r = store->Read(5);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
  EXPECT_NE(r.status().message().find("sector 5"), std::string::npos) << r.status().ToString();
  EXPECT_EQ(store->ReadNewestValid(5).status().code(), StatusCode::kCorruption);

  // A new write above both failed slots' tags repairs the sector.
  store->Write(5, Value(3), results.Add());
  store->SyncNow();
  EXPECT_TRUE(results.AllOk());
  EXPECT_TRUE(ReadsAs(*store, 5, Value(3)));
}

TEST(SectorStoreTest, ASuspectSectorTakesOnlyNewerWritesOrARepair) {
  auto disk = std::make_shared<FaultyBlockFile>();
  auto store = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(8));
  Results results;
  WriteEachSynced(*store, results, 5, {Value(1), Value(4)});
  WriteEachSynced(*store, results, 6, {Value(1), Value(4)});
  ASSERT_TRUE(results.AllOk());
  disk->CorruptByte(SlotOffset(5, 1) + 64 + 99);  // value 4's data
  disk->CorruptByte(SlotOffset(6, 1) + 64 + 99);
  EXPECT_EQ(store->Read(5).status().code(), StatusCode::kCorruption);

  // A write below the failed slot's tag would hide that value 4 was ever there: refused.
  Results refused;
  store->Write(5, Value(3), refused.Add());
  store->SyncNow();
  ASSERT_EQ(refused.got.size(), 1u);
  EXPECT_EQ(refused.got[0].code(), StatusCode::kCorruption);
  EXPECT_EQ(store->Read(5).status().code(), StatusCode::kCorruption);
  // So is one of the valid slot's own tag, which is not a repair.
  store->Write(5, Value(1), refused.Add());
  store->SyncNow();
  ASSERT_EQ(refused.got.size(), 2u);
  EXPECT_EQ(refused.got[1].code(), StatusCode::kCorruption);

  // The failed slot's own tag brings back what it held.
  store->Write(5, Value(4), results.Add());
  store->SyncNow();
  EXPECT_TRUE(results.AllOk());
  EXPECT_TRUE(ReadsAs(*store, 5, Value(4)));

  // A repair's verdict lifts the suspicion whatever the failed slot claimed: here the peers
  // held nothing newer than value 1, which is rewritten over the failed slot.
  store->Repair(6, Value(1), results.Add());
  store->SyncNow();
  EXPECT_TRUE(results.AllOk());
  EXPECT_TRUE(ReadsAs(*store, 6, Value(1)));
  bool clean = false;
  ASSERT_TRUE(store->ScanRange(6, 1, true, [&](SectorIdx, Tag, bool ok) { clean = ok; }).ok());
  EXPECT_TRUE(clean);
  auto reopened = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(8));
  EXPECT_TRUE(ReadsAs(*reopened, 6, Value(1)));
  EXPECT_TRUE(ReadsAs(*reopened, 5, Value(4)));
}

TEST(SectorStoreTest, ARepairRewritesABadOlderSlot) {
  auto disk = std::make_shared<FaultyBlockFile>();
  auto store = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(8));
  Results results;
  WriteEachSynced(*store, results, 2, {Value(1), Value(2)});
  ASSERT_TRUE(results.AllOk());
  disk->CorruptByte(SlotOffset(2, 0) + 64 + 5);  // the older slot: nothing is shadowed
  EXPECT_TRUE(ReadsAs(*store, 2, Value(2)));
  bool clean = true;
  ASSERT_TRUE(store->ScanRange(2, 1, true, [&](SectorIdx, Tag, bool ok) { clean = ok; }).ok());
  EXPECT_FALSE(clean);
  // An ordinary write of the stored tag writes nothing; a repair rewrites the bad slot.
  store->Write(2, Value(2), results.Add());
  store->SyncNow();
  ASSERT_TRUE(store->ScanRange(2, 1, true, [&](SectorIdx, Tag, bool ok) { clean = ok; }).ok());
  EXPECT_FALSE(clean);
  store->Repair(2, Value(2), results.Add());
  store->SyncNow();
  EXPECT_TRUE(results.AllOk());
  ASSERT_TRUE(store->ScanRange(2, 1, true, [&](SectorIdx, Tag, bool ok) { clean = ok; }).ok());
  EXPECT_TRUE(clean);
  EXPECT_TRUE(ReadsAs(*store, 2, Value(2)));
}

TEST(SectorStoreTest, AKnownNewestSlotIsReadAloneAndRotFallsBackToBoth) {
  auto disk = std::make_shared<FaultyBlockFile>();
  auto store = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(8));
  Results results;
  WriteEachSynced(*store, results, 5, {Value(1), Value(2)});  // slot 0, then slot 1
  ASSERT_TRUE(results.AllOk());

  // The sync left the slots known: one slot read, the newest.
  std::uint64_t before = disk->ReadBytes();
  EXPECT_TRUE(ReadsAs(*store, 5, Value(2)));
  EXPECT_EQ(disk->ReadBytes() - before, kSlotSize);

  // A store that knows nothing yet reads both slots once, then only the newest.
  auto reopened = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(8));
  before = disk->ReadBytes();
  EXPECT_TRUE(ReadsAs(*reopened, 5, Value(2)));
  EXPECT_EQ(disk->ReadBytes() - before, 2 * kSlotSize);
  before = disk->ReadBytes();
  EXPECT_TRUE(ReadsAs(*reopened, 5, Value(2)));
  EXPECT_EQ(disk->ReadBytes() - before, kSlotSize);

  // Rot in the known newest slot's data: both slots are read, as without the shortcut, and
  // the sector is suspect; the shortcut is forgotten.
  disk->CorruptByte(SlotOffset(5, 1) + 64 + 1000);
  before = disk->ReadBytes();
  EXPECT_EQ(store->Read(5).status().code(), StatusCode::kCorruption);
  EXPECT_EQ(disk->ReadBytes() - before, 3 * kSlotSize);
  before = disk->ReadBytes();
  EXPECT_EQ(store->Read(5).status().code(), StatusCode::kCorruption);
  EXPECT_EQ(disk->ReadBytes() - before, 2 * kSlotSize);

  // Rot in the known newest slot's tag (ts 12 becomes 13): the same.
  WriteEachSynced(*store, results, 6, {Value(11), Value(12)});
  ASSERT_TRUE(results.AllOk());
  disk->CorruptByte(SlotOffset(6, 1) + 16);  // the ts
  before = disk->ReadBytes();
  EXPECT_EQ(store->Read(6).status().code(), StatusCode::kCorruption);
  EXPECT_EQ(disk->ReadBytes() - before, 3 * kSlotSize);
  EXPECT_TRUE(SameValue(*store->ReadNewestValid(6), Value(11)));
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

  // Sector 1's slots copied to sector 2's place: they are not sector 2's data. A header that
  // does not check out may have held anything: suspect, not "unwritten".
  std::vector<std::uint8_t> slots(2 * kSlotSize);
  ASSERT_TRUE(disk->ReadAt(SlotOffset(1, 0), slots.data(), kSlotSize).ok());
  ASSERT_TRUE(disk->WriteAt(SlotOffset(2, 0), slots.data(), kSlotSize).ok());
  EXPECT_EQ(store->Read(2).status().code(), StatusCode::kCorruption);
  EXPECT_TRUE(SameValue(*store->ReadNewestValid(2), Triple{Tag{}, ZeroSector()}));
  ASSERT_TRUE(disk->ReadAt(SlotOffset(1, 0), slots.data(), slots.size()).ok());
  ASSERT_TRUE(disk->WriteAt(SlotOffset(2, 0), slots.data(), slots.size()).ok());
  EXPECT_EQ(store->Read(2).status().code(), StatusCode::kCorruption);
  // No tag is above an unreadable header: only a repair takes sector 2 back.
  Results refused;
  store->Write(2, Value(50), refused.Add());
  store->SyncNow();
  ASSERT_EQ(refused.got.size(), 1u);
  EXPECT_EQ(refused.got[0].code(), StatusCode::kCorruption);

  // A flipped bit in the tag (header) of sector 6's newest slot, then of the other one.
  disk->CorruptByte(SlotOffset(6, 1) + 16);
  EXPECT_EQ(store->Read(6).status().code(), StatusCode::kCorruption);
  EXPECT_TRUE(SameValue(*store->ReadNewestValid(6), Value(11)));
  disk->CorruptByte(SlotOffset(6, 0) + 16);
  EXPECT_EQ(store->Read(6).status().code(), StatusCode::kCorruption);
  EXPECT_TRUE(ReadsAs(*store, 1, Value(2)));
}

TEST(SectorStoreTest, TornFirstWriteIsSuspectAndIsRewrittenInPlace) {
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
  // Its first 1000 bytes reached the disk, then power failed. Rot of an acknowledged first
  // write looks the same, so the sector is served by nobody until a repair or a newer write:
  // "unwritten" would be a lost write in the second case.
  auto disk = std::make_shared<FaultyBlockFile>();
  ASSERT_TRUE(disk->WriteAt(SlotOffset(3, 0), slot.data(), 1000).ok());
  ASSERT_TRUE(disk->Sync().ok());
  auto store = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(8));
  EXPECT_EQ(store->Read(3).status().code(), StatusCode::kCorruption);
  EXPECT_TRUE(SameValue(*store->ReadNewestValid(3), Triple{Tag{}, ZeroSector()}));
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

TEST(SectorStoreTest, CachedDurableTagIsKnownOnlyWhenNothingIsPending) {
  auto disk = std::make_shared<FaultyBlockFile>();
  auto store = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(8));
  EXPECT_FALSE(store->CachedDurableTag(3).has_value());  // never looked at
  EXPECT_TRUE(ReadsAs(*store, 3, Triple{Tag{}, ZeroSector()}));
  EXPECT_EQ(store->CachedDurableTag(3), Tag{});  // known never written

  Results results;
  store->Write(3, Value(5), results.Add());
  EXPECT_FALSE(store->CachedDurableTag(3).has_value());  // pending: not durable yet
  store->SyncNow();
  EXPECT_EQ(store->CachedDurableTag(3), (Tag{5, 1}));
  EXPECT_FALSE(store->CachedDurableTag(4).has_value());

  // A failed write forgets what it knew; a Read learns it again.
  disk->FailNextWrites(1);
  store->Write(3, Value(6), results.Add());
  store->SyncNow();
  ASSERT_EQ(results.got.size(), 2u);
  EXPECT_FALSE(results.got[1].ok());
  EXPECT_FALSE(store->CachedDurableTag(3).has_value());
  EXPECT_TRUE(ReadsAs(*store, 3, Value(5)));
  EXPECT_EQ(store->CachedDurableTag(3), (Tag{5, 1}));

  // Reopened over the same file: nothing is cached, the tag is read again.
  store->Close();
  store = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(8));
  EXPECT_FALSE(store->CachedDurableTag(3).has_value());
  EXPECT_TRUE(ReadsAs(*store, 3, Value(5)));
  EXPECT_EQ(store->CachedDurableTag(3), (Tag{5, 1}));
}

TEST(SectorStoreTest, AFailedStoreCachesNothing) {
  auto disk = std::make_shared<FaultyBlockFile>();
  auto store = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(8));
  Results results;
  store->Write(3, Value(1), results.Add());
  store->SyncNow();
  ASSERT_EQ(store->CachedDurableTag(3), (Tag{1, 1}));
  disk->FailNextSyncs(1);
  store->Write(4, Value(2), results.Add());
  store->SyncNow();
  ASSERT_TRUE(store->Failed());
  EXPECT_FALSE(store->CachedDurableTag(3).has_value());
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
  const std::string data_dir = dir.path() + "/data";
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

// Only the data_dir itself is created, never a missing parent (a typo or an unmounted disk
// would otherwise put the data on the wrong file system); a data_dir that is not a folder is
// refused the same way: InvalidArgument, what the caller asked for cannot work.
TEST(SectorStorePosixTest, OpenCreatesTheDataDirButNoParent) {
  TempDir dir;
  SectorStore::Options options;
  options.sectors = 8;
  auto store = SectorStore::Open(dir.path() + "/a/b/data", options);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), StatusCode::kInvalidArgument) << store.status().ToString();
  EXPECT_NE(store.status().message().find(dir.path() + "/a/b does not exist"), std::string::npos)
      << store.status().ToString();
  struct stat st;
  EXPECT_NE(::stat((dir.path() + "/a").c_str(), &st), 0);

  const std::string file = dir.path() + "/file";
  int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0600);
  ASSERT_GE(fd, 0);
  ::close(fd);
  for (const std::string& bad : {file, file + "/data", file + "/x/data"}) {
    SCOPED_TRACE(bad);
    store = SectorStore::Open(bad, options);
    ASSERT_FALSE(store.ok());
    EXPECT_EQ(store.status().code(), StatusCode::kInvalidArgument) << store.status().ToString();
  }

  store = SectorStore::Open(dir.path() + "/data/", options);  // a trailing slash is fine
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  ASSERT_EQ(::stat((dir.path() + "/data").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
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

// --- ScanRange ----------------------------------------------------------------------------------

// Forwards to another BlockFile and counts reads, or hides holes (NextDataOffset says "data"
// everywhere before the end, like a preallocated file).
class ProbeBlockFile final : public BlockFile {
 public:
  ProbeBlockFile(std::shared_ptr<BlockFile> file, bool hide_holes)
      : file_(std::move(file)), hide_holes_(hide_holes) {}
  Status ReadAt(std::uint64_t offset, void* buf, std::size_t n) override {
    ++reads;
    return file_->ReadAt(offset, buf, n);
  }
  Status WriteAt(std::uint64_t offset, const void* buf, std::size_t n) override {
    return file_->WriteAt(offset, buf, n);
  }
  Status Sync() override { return file_->Sync(); }
  Result<std::uint64_t> Size() override { return file_->Size(); }
  Result<std::uint64_t> NextDataOffset(std::uint64_t offset) override {
    ++seeks;
    if (hide_holes_) return BlockFile::NextDataOffset(offset);
    return file_->NextDataOffset(offset);
  }
  std::atomic<int> reads{0};
  std::atomic<int> seeks{0};

 private:
  const std::shared_ptr<BlockFile> file_;
  const bool hide_holes_;
};

enum class Backing { kMem, kFaulty, kPosix, kPreallocatedMem, kPreallocatedPosix };

std::string BackingName(const ::testing::TestParamInfo<Backing>& info) {
  switch (info.param) {
    case Backing::kMem:
      return "Mem";
    case Backing::kFaulty:
      return "Faulty";
    case Backing::kPosix:
      return "Posix";
    case Backing::kPreallocatedMem:
      return "PreallocatedMem";
    case Backing::kPreallocatedPosix:
      return "PreallocatedPosix";
  }
  return "?";
}

struct Scanned {
  SectorIdx sector;
  Tag tag;
  bool ok;
  friend bool operator==(const Scanned&, const Scanned&) = default;
};

std::ostream& operator<<(std::ostream& os, const Scanned& s) {
  return os << "{" << s.sector << ", " << s.tag.ToString() << ", " << (s.ok ? "ok" : "bad") << "}";
}

// A store over each kind of block file, in manual sync mode, with raw() giving direct access
// to the bytes under it (to corrupt them).
class ScanRangeTest : public ::testing::TestWithParam<Backing> {
 protected:
  static constexpr std::uint64_t kSectors = 1200;

  void SetUp() override { Open(); }

  void Open() {
    store_.reset();
    switch (GetParam()) {
      case Backing::kMem:
      case Backing::kPreallocatedMem: {
        if (!mem_) {
          mem_ = std::make_shared<MemBlockFile>();
          if (GetParam() == Backing::kPreallocatedMem) Preallocate(*mem_);
        }
        raw_ = mem_;
        store_ = SectorStore::OpenOnFile(ShareBlockFile(mem_), Manual(kSectors));
        break;
      }
      case Backing::kFaulty:
        if (!faulty_) faulty_ = std::make_shared<FaultyBlockFile>();
        raw_ = faulty_;
        store_ = SectorStore::OpenOnFile(ShareBlockFile(faulty_), Manual(kSectors));
        break;
      case Backing::kPosix:
      case Backing::kPreallocatedPosix: {
        const std::string path = dir_.path() + "/sectors.dat";
        if (GetParam() == Backing::kPreallocatedPosix && !std::filesystem::exists(path)) {
          auto f = OpenPosixBlockFile(path, /*create=*/true);
          ASSERT_TRUE(f.ok());
          Preallocate(**f);
        }
        auto store = SectorStore::Open(dir_.path(), Manual(kSectors));
        ASSERT_TRUE(store.ok()) << store.status().ToString();
        store_ = std::move(*store);
        auto f = OpenPosixBlockFile(path, /*create=*/false);
        ASSERT_TRUE(f.ok()) << f.status().ToString();
        raw_ = std::move(*f);
        break;
      }
    }
  }

  // Zeros written over the whole device: no holes left (a fully allocated sectors.dat).
  static void Preallocate(BlockFile& f) {
    std::vector<std::uint8_t> zeros(2 * kSlotSize * 64);
    const std::uint64_t end = 2 * kSlotSize * kSectors;
    for (std::uint64_t off = 0; off < end; off += zeros.size()) {
      const std::size_t n =
          static_cast<std::size_t>(std::min<std::uint64_t>(zeros.size(), end - off));
      ASSERT_TRUE(f.WriteAt(off, zeros.data(), n).ok());
    }
    ASSERT_TRUE(f.Sync().ok());
  }

  void Write(SectorIdx sector, const Triple& v) { store_->Write(sector, v, results_.Add()); }
  void Sync() {
    while (store_->SyncNow() > 0) {
    }
    ASSERT_TRUE(results_.AllOk());
  }

  std::vector<Scanned> Scan(SectorIdx first, std::uint64_t count, bool verify_all) {
    std::vector<Scanned> got;
    Status s = store_->ScanRange(first, count, verify_all, [&](SectorIdx sector, Tag tag, bool ok) {
      got.push_back(Scanned{sector, tag, ok});
    });
    EXPECT_TRUE(s.ok()) << s.ToString();
    return got;
  }

  // Flips one bit of the stored bytes at `offset`.
  void Flip(std::uint64_t offset) {
    std::uint8_t b = 0;
    ASSERT_TRUE(raw_->ReadAt(offset, &b, 1).ok());
    b ^= 0x10;
    ASSERT_TRUE(raw_->WriteAt(offset, &b, 1).ok());
  }

  TempDir dir_;
  std::shared_ptr<MemBlockFile> mem_;
  std::shared_ptr<FaultyBlockFile> faulty_;
  std::shared_ptr<BlockFile> raw_;
  std::unique_ptr<SectorStore> store_;
  Results results_;
};

TEST_P(ScanRangeTest, EmptyStoreReportsNothing) {
  for (bool verify_all : {false, true}) {
    EXPECT_TRUE(Scan(0, kSectors, verify_all).empty());
    EXPECT_TRUE(Scan(100, 256, verify_all).empty());
  }
  bool called = false;
  ASSERT_TRUE(store_->ForEachStored([&](SectorIdx, Tag, bool) { called = true; }).ok());
  EXPECT_FALSE(called);
}

TEST_P(ScanRangeTest, ReportsExactlyTheWrittenSectorsInRangeInOrder) {
  const std::vector<SectorIdx> written = {0, 1, 5, 15, 16, 17, 255, 256, 257, 511, 1000, 1199};
  std::map<SectorIdx, Tag> want;
  std::uint64_t ts = 1;
  for (SectorIdx s : written) {
    Triple v = Value(ts++, static_cast<Rank>(1 + s % 5), s);
    want[s] = v.tag;
    Write(s, v);
  }
  Sync();
  // A second value for some: both slots written, the newer one wins.
  for (SectorIdx s : {1ull, 256ull, 1199ull}) {
    Triple v = Value(ts++, 3, s);
    want[s] = v.tag;
    Write(s, v);
  }
  Sync();

  auto expect = [&](SectorIdx first, std::uint64_t count) {
    std::vector<Scanned> out;
    for (auto [s, tag] : want) {
      if (s >= first && s - first < count) out.push_back(Scanned{s, tag, true});
    }
    return out;
  };
  const std::pair<SectorIdx, std::uint64_t> ranges[] = {
      {0, kSectors}, {0, 1},         {1, 255},      {255, 2},       {256, 256},
      {2, 3},        {6, 9},         {16, 1},       {17, 238},      {1199, 1},
      {1100, 100},   {1100, 500},    {1199, 1000},  {0, ~0ull},     {1000, ~0ull},
      {kSectors, 1}, {kSectors, 10}, {5000, ~0ull}, {~0ull, ~0ull}, {3, 0},
  };
  for (bool verify_all : {false, true}) {
    for (auto [first, count] : ranges) {
      EXPECT_EQ(Scan(first, count, verify_all), expect(first, count))
          << "first " << first << " count " << count << " verify_all " << verify_all;
    }
  }
  std::vector<Scanned> all;
  ASSERT_TRUE(store_
                  ->ForEachStored([&](SectorIdx s, Tag tag, bool ok) {
                    all.push_back(Scanned{s, tag, ok});
                  })
                  .ok());
  EXPECT_EQ(all, expect(0, kSectors));

  // The same after a restart (nothing pending, nothing cached).
  Open();
  for (bool verify_all : {false, true}) {
    EXPECT_EQ(Scan(0, kSectors, verify_all), expect(0, kSectors));
    EXPECT_EQ(Scan(250, 10, verify_all), expect(250, 10));
  }
}

TEST_P(ScanRangeTest, RandomWritesAndRangesMatchAModel) {
  std::mt19937_64 rng(7);
  std::map<SectorIdx, Tag> model;  // the newest tag handed to the store
  for (int round = 0; round < 30; ++round) {
    for (int i = 0; i < 20; ++i) {
      // Clustered: many neighbours within one chunk, and some far apart.
      const SectorIdx s = rng() % 2 ? rng() % 40 + 300 : rng() % kSectors;
      Triple v = Value(static_cast<std::uint64_t>(round * 100 + i + 1), 1, s);
      model[s] = v.tag;
      Write(s, v);
    }
    if (round % 3 != 0) store_->SyncNow();  // leave some pending (and some waiting)
    for (int q = 0; q < 10; ++q) {
      const SectorIdx first = rng() % (kSectors + 20);
      const std::uint64_t count = rng() % 4 == 0 ? kSectors : rng() % 300;
      std::vector<Scanned> want;
      for (auto it = model.lower_bound(first); it != model.end() && it->first - first < count;
           ++it) {
        want.push_back(Scanned{it->first, it->second, true});
      }
      const bool verify_all = rng() % 2;
      ASSERT_EQ(Scan(first, count, verify_all), want)
          << "round " << round << " first " << first << " count " << count;
    }
  }
  Sync();
}

TEST_P(ScanRangeTest, PendingWritesAreReportedWithTheirTag) {
  Write(10, Value(1));
  Sync();
  Write(10, Value(2));  // in flight, not synced
  Write(20, Value(5));  // first write, not synced
  EXPECT_EQ(Scan(0, kSectors, true),
            (std::vector<Scanned>{{10, Value(2).tag, true}, {20, Value(5).tag, true}}));
  Write(10, Value(3));  // waits behind ts 2
  Write(10, Value(4));  // replaces ts 3
  for (bool verify_all : {false, true}) {
    EXPECT_EQ(Scan(5, 10, verify_all), (std::vector<Scanned>{{10, Value(4).tag, true}}));
  }
  store_->SyncNow();  // ts 2 and 5 durable; ts 4 issued, not yet synced
  EXPECT_EQ(Scan(0, kSectors, false),
            (std::vector<Scanned>{{10, Value(4).tag, true}, {20, Value(5).tag, true}}));
  Sync();
  EXPECT_EQ(Scan(0, kSectors, true),
            (std::vector<Scanned>{{10, Value(4).tag, true}, {20, Value(5).tag, true}}));
  // An older write than what is stored changes nothing.
  Write(20, Value(1));
  Sync();
  EXPECT_EQ(Scan(20, 1, true), (std::vector<Scanned>{{20, Value(5).tag, true}}));
}

TEST_P(ScanRangeTest, ARotReadForgetsTheCachedTag) {
  Write(6, Value(1));
  Sync();
  Write(6, Value(2));  // both slots written
  Write(8, Value(3));  // one slot only
  Sync();
  ASSERT_EQ(store_->CachedDurableTag(6), (Tag{2, 1}));
  ASSERT_EQ(store_->CachedDurableTag(8), (Tag{3, 1}));
  Flip(SlotOffset(6, 0) + 64);
  Flip(SlotOffset(6, 1) + 4000);
  Flip(SlotOffset(8, 0) + 2000);
  // The cache still believes the old tags until the file is read...
  EXPECT_EQ(store_->Read(6).status().code(), StatusCode::kCorruption);
  EXPECT_FALSE(store_->CachedDurableTag(6).has_value()) << "both slots bad: nothing to report";
  // Its only slot is bad: suspect (that write may have been acknowledged), not "unwritten".
  EXPECT_EQ(store_->Read(8).status().code(), StatusCode::kCorruption);
  EXPECT_FALSE(store_->CachedDurableTag(8).has_value());
}

TEST_P(ScanRangeTest, CorruptSlotsAreReported) {
  for (SectorIdx s : {3ull, 4ull, 5ull, 6ull, 7ull}) {
    Write(s, Value(1, 1, s));  // slot 0
    Sync();
    Write(s, Value(2, 1, s));  // slot 1, the newest
    Sync();
  }
  Write(8, Value(1));  // only slot 0
  Sync();
  Flip(SlotOffset(3, 1) + 64 + 100);  // newest slot's data: older value, not ok
  Flip(SlotOffset(4, 0) + 64 + 100);  // older slot's data: only a full check sees it
  Flip(SlotOffset(5, 1) + 16);        // newest slot's tag (header)
  Flip(SlotOffset(6, 0) + 64);        // both slots
  Flip(SlotOffset(6, 1) + 4000);
  Flip(SlotOffset(8, 0) + 2000);  // a sector's only slot: suspect
  const Tag t1 = Value(1).tag, t2 = Value(2).tag;
  EXPECT_EQ(Scan(0, kSectors, /*verify_all=*/true), (std::vector<Scanned>{{3, t1, false},
                                                                          {4, t2, false},
                                                                          {5, t1, false},
                                                                          {6, Tag{}, false},
                                                                          {7, t2, true},
                                                                          {8, Tag{}, false}}));
  EXPECT_EQ(Scan(0, kSectors, /*verify_all=*/false), (std::vector<Scanned>{{3, t1, false},
                                                                           {4, t2, true},
                                                                           {5, t1, false},
                                                                           {6, Tag{}, false},
                                                                           {7, t2, true},
                                                                           {8, Tag{}, false}}));
  bool all_ok = true;
  ASSERT_TRUE(store_->ForEachStored([&](SectorIdx, Tag, bool ok) { all_ok &= ok; }).ok());
  EXPECT_FALSE(all_ok);
  // The tags are those of the newest valid slot: what ReadNewestValid() returns. Read()
  // serves none of the sectors whose failed slot may be newer (suspect: 3, 5, 8).
  EXPECT_EQ(store_->ReadNewestValid(3)->tag, t1);
  EXPECT_EQ(store_->Read(3).status().code(), StatusCode::kCorruption);
  EXPECT_EQ(store_->Read(4)->tag, t2);
  EXPECT_EQ(store_->Read(5).status().code(), StatusCode::kCorruption);
  EXPECT_EQ(store_->Read(6).status().code(), StatusCode::kCorruption);
  EXPECT_EQ(store_->ReadNewestValid(8)->tag, Tag{});
  EXPECT_EQ(store_->Read(8).status().code(), StatusCode::kCorruption);

  // A rewrite repairs: the corrupt slot is the one written.
  Write(3, Value(9, 1, 3));
  Sync();
  EXPECT_EQ(Scan(3, 1, true), (std::vector<Scanned>{{3, Value(9).tag, true}}));
}

TEST(SectorStoreTest, AFailedStoreRefusesToScan) {
  auto disk = std::make_shared<FaultyBlockFile>();
  auto store = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(8));
  Results results;
  store->Write(1, Value(1), results.Add());
  store->SyncNow();
  ASSERT_TRUE(results.AllOk());
  disk->FailNextSyncs(1);
  store->Write(2, Value(2), results.Add());
  store->SyncNow();
  ASSERT_TRUE(store->Failed());
  Status s = store->ScanRange(0, 8, false, [](SectorIdx, Tag, bool) { FAIL(); });
  EXPECT_EQ(s.code(), StatusCode::kIOError) << s.ToString();
  EXPECT_EQ(store->ForEachStored([](SectorIdx, Tag, bool) { FAIL(); }).code(),
            StatusCode::kIOError);
  store.reset();  // reopening recovers
  store = SectorStore::OpenOnFile(ShareBlockFile(disk), Manual(8));
  std::vector<SectorIdx> seen;
  ASSERT_TRUE(
      store->ScanRange(0, 8, true, [&](SectorIdx s, Tag, bool) { seen.push_back(s); }).ok());
  EXPECT_FALSE(seen.empty());
  EXPECT_EQ(seen.front(), 1u);
}

INSTANTIATE_TEST_SUITE_P(AllBlockFiles, ScanRangeTest,
                         ::testing::Values(Backing::kMem, Backing::kFaulty, Backing::kPosix,
                                           Backing::kPreallocatedMem, Backing::kPreallocatedPosix),
                         BackingName);

TEST(SectorStoreTest, ScanRangeReadsADenseBucketInChunks) {
  auto mem = std::make_shared<MemBlockFile>();
  auto probe = std::make_shared<ProbeBlockFile>(mem, /*hide_holes=*/false);
  auto store = SectorStore::OpenOnFile(ShareBlockFile(probe), Manual(1024));
  Results results;
  for (SectorIdx s = 256; s < 512; ++s) store->Write(s, Value(1, 1, s), results.Add());
  store->SyncNow();
  ASSERT_TRUE(results.AllOk());
  probe->reads = 0;
  probe->seeks = 0;
  int n = 0;
  ASSERT_TRUE(store->ScanRange(256, 256, false, [&](SectorIdx, Tag, bool) { ++n; }).ok());
  EXPECT_EQ(n, 256);
  EXPECT_EQ(probe->reads, 16);
  EXPECT_EQ(probe->seeks, 16);
  // A sparse one: one read per written sector's chunk, holes skipped.
  probe->reads = 0;
  ASSERT_TRUE(store->ScanRange(0, 1024, false, [&](SectorIdx, Tag, bool) {}).ok());
  EXPECT_EQ(probe->reads, 16);
}

TEST(SectorStoreDeathTest, ScanRangeFromInsideAScanIsABug) {
  auto store = SectorStore::OpenOnFile(std::make_unique<MemBlockFile>(), Manual(8));
  Results results;
  store->Write(1, Value(1), results.Add());
  store->SyncNow();
  EXPECT_DEATH((void)store->ScanRange(0, 8, true,
                                      [&](SectorIdx, Tag, bool) {
                                        (void)store->ScanRange(0, 8, true,
                                                               [](SectorIdx, Tag, bool) {});
                                      }),
               "in_scan_");
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
