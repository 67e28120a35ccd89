// Resync, voter membership and scrub on real atomdiskd processes (docs/RESYNC.md, issue 7):
// a restarted node catches up with the writes it missed; a node with an empty data_dir does
// not vote until it has pulled everything, while the others keep serving; a kill -9 in the
// middle of a join pass resumes where it was; scrub finds and repairs corrupt sectors; a
// data_dir of another cluster, or a garbage IDENTITY, is refused.
//
// Every check of a node's data is made offline, on its stopped store (SectorStore, like
// `atomdisk inspect`): each written sector must hold exactly the newest data written to it,
// with a tag no older than a healthy node's, and every slot must pass its checksums.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "client/client.h"
#include "daemon/store/sector_store.h"
#include "daemon/sync/identity.h"
#include "daemon/sync/syncer.h"
#include "tests/daemon/daemon_test_util.h"
#include "tests/daemon/raw_client.h"

namespace atomdisk::itest {
namespace {

namespace fs = std::filesystem;
using atomdisk::testing::ProcessResult;
using atomdisk::testing::RunOptions;
using atomdisk::testing::RunProcess;
using nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;
using Clock = std::chrono::steady_clock;

// 65536 sectors = 4 resync windows of kWindowBuckets * 256 = 16384 sectors.
constexpr std::uint64_t kDeviceSectors = 65536;
constexpr std::uint64_t kWindowSectors = kWindowBuckets * 256;
static_assert(kDeviceSectors == 4 * kWindowSectors);

// docs/STORAGE.md: two slots per sector, each a 64-byte header and 4096 data bytes.
constexpr std::uint64_t kHeaderBytes = 64;
constexpr std::uint64_t kSlotBytes = kHeaderBytes + kSectorSize;

double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::uint64_t SplitMix64(std::uint64_t& x) {
  std::uint64_t z = (x += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// The data written to `sector` as its `version`-th value: a stream seeded by both, so that
// a value of another sector or another version never matches.
SectorPtr Pattern(SectorIdx sector, std::uint32_t version) {
  auto data = std::make_shared<SectorData>();
  std::uint64_t seed = sector * 0x100000001B3ULL + version;
  for (std::size_t i = 0; i < kSectorSize; i += 8) {
    std::uint64_t w = SplitMix64(seed);
    std::memcpy(data->data() + i, &w, 8);
  }
  return data;
}

std::vector<SectorIdx> Range(SectorIdx first, SectorIdx end, SectorIdx stride = 1) {
  std::vector<SectorIdx> v;
  for (SectorIdx s = first; s < end; s += stride) v.push_back(s);
  return v;
}

// The `atomdisk` CLI: $ATOMDISK_CLI, else the one next to the daemon binary (both are in the
// build's bin folder; CMake builds it before daemon_itest).
std::string CliPath() {
  if (const char* env = std::getenv("ATOMDISK_CLI"); env != nullptr && *env != '\0') return env;
  return (fs::path(Harness::DaemonPath()).parent_path() / "atomdisk").string();
}

// Reads `n` bytes at `offset` of `path`, or flips (XOR 0xff) them when `flip`. False on any
// I/O error (reported as a test failure).
bool FileBytes(const std::string& path, std::uint64_t offset, std::uint8_t* buf, std::size_t n,
               bool flip) {
  int fd = ::open(path.c_str(), flip ? O_RDWR : O_RDONLY);
  if (fd < 0) {
    ADD_FAILURE() << "open " << path << ": " << std::strerror(errno);
    return false;
  }
  // Past the end of the sparse file reads as zeros (never-written slots).
  std::memset(buf, 0, n);
  ssize_t got = ::pread(fd, buf, n, static_cast<off_t>(offset));
  bool ok = flip ? got == static_cast<ssize_t>(n) : got >= 0;
  if (ok && flip) {
    for (std::size_t i = 0; i < n; ++i) buf[i] ^= 0xff;
    ok = ::pwrite(fd, buf, n, static_cast<off_t>(offset)) == static_cast<ssize_t>(n) &&
         ::fdatasync(fd) == 0;
  }
  if (!ok) ADD_FAILURE() << "pread/pwrite " << path << " at " << offset << " failed";
  ::close(fd);
  return ok;
}

// What a slot's header says (docs/STORAGE.md): written or empty, and its ts.
struct SlotHeader {
  bool written = false;
  bool magic_ok = false;
  std::uint64_t ts = 0;
};

SlotHeader ReadSlotHeader(const std::string& sectors_dat, SectorIdx sector, int slot) {
  std::uint8_t h[kHeaderBytes] = {};
  SlotHeader out;
  if (!FileBytes(sectors_dat, (2 * sector + slot) * kSlotBytes, h, sizeof h, false)) return out;
  out.written = std::any_of(h, h + kHeaderBytes, [](std::uint8_t b) { return b != 0; });
  out.magic_ok = std::memcmp(h, "ADS1", 4) == 0;
  for (int i = 7; i >= 0; --i) out.ts = (out.ts << 8) | h[16 + i];
  return out;
}

// Corrupts 16 data bytes of `slot` of `sector` (its header stays intact, so only the
// checksum tells).
bool CorruptSlotData(const std::string& sectors_dat, SectorIdx sector, int slot) {
  std::uint8_t buf[16];
  return FileBytes(sectors_dat, (2 * sector + slot) * kSlotBytes + kHeaderBytes + 1000, buf,
                   sizeof buf, true);
}

// Creates a harness (no node started). Its directory goes to /dev/shm unless
// $ATOMDISK_RESYNC_TEST_ON_DISK=1: these tests write hundreds of MB, and on a disk mounted
// with online discard (ext4 -o discard, as on the CI VMs) deleting them afterwards takes
// minutes, longer than the tests. Nothing here depends on fdatasync reaching a disk; the
// store's crash-safety has tests of its own (tests/store).
Result<std::unique_ptr<Harness>> CreateHarness(TestClusterOptions options) {
  const char* on_disk = std::getenv("ATOMDISK_RESYNC_TEST_ON_DISK");
  const bool shm =
      (on_disk == nullptr || std::string(on_disk) != "1") && ::access("/dev/shm", W_OK | X_OK) == 0;
  if (!shm) return Harness::Create(std::move(options));
  const char* old = std::getenv("TMPDIR");
  const std::string saved = old ? old : "";
  ::setenv("TMPDIR", "/dev/shm", 1);
  auto created = Harness::Create(std::move(options));
  if (old) {
    ::setenv("TMPDIR", saved.c_str(), 1);
  } else {
    ::unsetenv("TMPDIR");
  }
  return created;
}

class ResyncTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (HasFailure() && h_) {
      for (int r = 1; r <= h_->size(); ++r) {
        std::fprintf(stderr, "--- node %d log tail:\n%s", r, h_->LogTail(r, 40).c_str());
      }
    }
  }

  // Creates a 3-node cluster; `extra_toml` lines go into cluster.toml's top-level table
  // (before the first [[nodes]]). Starts every node and waits until all of them vote.
  // `sectors` other than kDeviceSectors is for tests that never open a store offline.
  void StartCluster(const std::string& extra_toml = "", const std::string& log_level = "info",
                    std::uint64_t sectors = kDeviceSectors) {
    auto created = CreateHarness({.nodes = 3, .sectors = sectors, .log_level = log_level});
    ASSERT_TRUE(created.ok()) << created.status().ToString();
    h_ = std::move(created).value();
    if (!extra_toml.empty()) {
      std::string toml = ReadFile(h_->config_path());
      std::size_t at = toml.find("[[nodes]]");
      ASSERT_NE(at, std::string::npos) << toml;
      toml.insert(at, extra_toml + "\n");
      ASSERT_TRUE(WriteFile(h_->config_path(), toml));
    }
    Status s = h_->StartAll();
    ASSERT_TRUE(s.ok()) << s.ToString();
    for (int r = 1; r <= 3; ++r) {
      ASSERT_TRUE(WaitInfo(r, seconds(30), [](const json& j) { return j.value("voting", false); }))
          << "node " << r << " does not vote 30 s after the cluster started";
    }
    written_.assign(sectors, 0);
  }

  // Node `rank`'s kInfo JSON on a fresh connection; nullopt if it does not answer.
  std::optional<json> Info(int rank) {
    const NodeConfig* n = h_->config().FindNode(static_cast<Rank>(rank));
    auto c = RawClient::Connect(n->port, h_->config().client_key, milliseconds(1000));
    if (!c.ok()) return std::nullopt;
    auto j = (*c)->Info(milliseconds(3000));
    if (!j.ok()) return std::nullopt;
    return *j;
  }

  // Polls Info(rank) every 10 ms until `pred` holds (true) or `timeout` passes (false).
  // `last` gets the last answer; `each` sees every answer.
  bool WaitInfo(int rank, milliseconds timeout, const std::function<bool(const json&)>& pred,
                json* last = nullptr, const std::function<void(const json&)>& each = nullptr) {
    auto deadline = Clock::now() + timeout;
    while (true) {
      std::optional<json> j = Info(rank);
      if (j) {
        if (each) each(*j);
        if (last) *last = *j;
        if (pred(*j)) return true;
      }
      if (Clock::now() >= deadline) return false;
      std::this_thread::sleep_for(milliseconds(10));
    }
  }

  // Waits until node `rank` has finished a resync pass since it started and none runs.
  bool WaitPassDone(int rank, milliseconds timeout, json* last = nullptr) {
    return WaitInfo(
        rank, timeout,
        [](const json& j) {
          const json& r = j.at("resync");
          return j.value("voting", false) && !r.value("active", true) &&
                 r.value("passes_done", 0ULL) >= 1;
        },
        last);
  }

  std::unique_ptr<client::Client> MakeClient(const std::vector<std::string>& nodes) {
    auto options = client::OptionsFromConfig(h_->config(), nodes);
    EXPECT_TRUE(options.ok()) << options.status().ToString();
    if (!options.ok()) return nullptr;
    options->op_timeout = milliseconds(30000);
    options->max_inflight = 256;
    return client::Client::Create(*options);
  }

  // Writes Pattern(s, version) to every sector of `sectors` through `nodes` (ranks, the first
  // preferred), pipelined in batches; records them in written_. Returns false (with a test
  // failure) if any write failed.
  bool WriteAll(const std::vector<SectorIdx>& sectors, std::uint32_t version,
                const std::vector<std::string>& nodes) {
    auto c = MakeClient(nodes);
    if (!c) return false;
    std::mutex mu;
    std::condition_variable cv;
    std::size_t done = 0, failed = 0;
    std::string first_error;
    // In flight at once: enough to keep three nodes busy, few enough that each write finishes
    // well within the 30 s timeout on three sanitizer-built daemons sharing two cores.
    constexpr std::size_t kBatch = 256;
    for (std::size_t begin = 0; begin < sectors.size() && failed == 0; begin += kBatch) {
      const std::size_t end = std::min(sectors.size(), begin + kBatch);
      for (std::size_t i = begin; i < end; ++i) {
        c->Write(sectors[i], Pattern(sectors[i], version), [&](Status s) {
          std::lock_guard lock(mu);
          ++done;
          if (!s.ok() && failed++ == 0) first_error = s.ToString();
          cv.notify_all();
        });
      }
      std::unique_lock lock(mu);
      if (!cv.wait_for(lock, seconds(120), [&] { return done == end; })) {
        ADD_FAILURE() << "writes did not finish within 120 s (" << done << " of " << end << ")";
        lock.unlock();
        c->Close();  // fails what is left, so no callback outlives this frame
        return false;
      }
    }
    c->Close();
    if (failed > 0) {
      ADD_FAILURE() << failed << " of " << sectors.size()
                    << " writes failed; first: " << first_error;
      return false;
    }
    for (SectorIdx s : sectors) written_[s] = version;
    return true;
  }

  // Opens node `rank`'s store offline (the node must be stopped).
  std::unique_ptr<SectorStore> OpenStore(int rank) {
    SectorStore::Options options;
    options.sectors = kDeviceSectors;
    options.background_sync = false;
    auto store = SectorStore::Open(h_->DataDir(rank), options);
    EXPECT_TRUE(store.ok()) << "node " << rank << "'s store: " << store.status().ToString();
    return store.ok() ? std::move(store).value() : nullptr;
  }

  // After a repair: stops `rank`, whose store must then have no unreadable and no torn slot
  // (atomdisk inspect) and hold `stored_sectors` sectors if given, stops `reference`, and
  // checks `rank` holds the newest data (ExpectStoreHoldsNewest).
  void ExpectRepairedStore(int rank, int reference, std::uint64_t stored_sectors = 0) {
    ASSERT_TRUE(h_->Stop(rank).ok());
    json inspect = Inspect(rank);
    EXPECT_EQ(inspect.value("unreadable", 1ULL), 0u) << inspect.dump();
    EXPECT_EQ(inspect.value("torn_slots", 1ULL), 0u) << inspect.dump();
    if (stored_sectors > 0) {
      EXPECT_EQ(inspect.value("stored_sectors", 0ULL), stored_sectors);
    }
    ASSERT_TRUE(h_->Stop(reference).ok());
    ExpectStoreHoldsNewest(rank, reference);
  }

  // The stopped node `rank` holds, for every sector in written_, exactly the newest data
  // written, with a tag no older than the stopped node `reference`'s (0: no tag check), and
  // every stored slot passes its checksums (nothing torn, nothing corrupt).
  void ExpectStoreHoldsNewest(int rank, int reference = 0) {
    std::unique_ptr<SectorStore> store = OpenStore(rank);
    ASSERT_NE(store, nullptr);
    std::unique_ptr<SectorStore> ref = reference > 0 ? OpenStore(reference) : nullptr;
    if (reference > 0) {
      ASSERT_NE(ref, nullptr);
    }
    std::uint64_t checked = 0, wrong_data = 0, old_tag = 0, unreadable = 0;
    std::string examples;
    auto example = [&](const std::string& line) {
      if (wrong_data + old_tag + unreadable <= 5) examples += "\n  " + line;
    };
    for (SectorIdx s = 0; s < kDeviceSectors; ++s) {
      if (written_[s] == 0) continue;
      ++checked;
      Result<Triple> t = store->Read(s);
      if (!t.ok()) {
        ++unreadable;
        example("sector " + std::to_string(s) + ": " + t.status().ToString());
        continue;
      }
      if (*t->data != *Pattern(s, written_[s])) {
        ++wrong_data;
        example("sector " + std::to_string(s) + ": not version " + std::to_string(written_[s]) +
                " (tag " + t->tag.ToString() + ")");
      }
      if (ref) {
        Result<Triple> r = ref->Read(s);
        if (r.ok() && t->tag < r->tag) {
          ++old_tag;
          example("sector " + std::to_string(s) + ": tag " + t->tag.ToString() + " < node " +
                  std::to_string(reference) + "'s " + r->tag.ToString());
        }
      }
    }
    std::uint64_t bad_slots = 0;
    Status s = store->ForEachStored([&](SectorIdx sector, Tag, bool ok) {
      if (!ok && bad_slots++ < 5) examples += "\n  sector " + std::to_string(sector) + ": bad slot";
    });
    EXPECT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(wrong_data + old_tag + unreadable + bad_slots, 0u)
        << "node " << rank << ": of " << checked << " written sectors, " << wrong_data
        << " hold other data, " << old_tag << " an older tag, " << unreadable << " are unreadable; "
        << bad_slots << " sectors have a bad slot:" << examples;
    EXPECT_GT(checked, 0u);
  }

  // `atomdisk --config CFG ARGS...` to completion.
  ProcessResult Cli(const std::vector<std::string>& args, milliseconds timeout = seconds(120)) {
    std::vector<std::string> argv = {CliPath(), "--config", h_->config_path()};
    argv.insert(argv.end(), args.begin(), args.end());
    RunOptions options;
    options.timeout = timeout;
    return RunProcess(argv, options);
  }

  // Runs `atomdisk --node RANK scrub --json` and returns that node's scrub result.
  json Scrub(int rank, int* exit_code) {
    ProcessResult r = Cli({"--node", std::to_string(rank), "scrub", "--json", "--timeout", "90s"});
    *exit_code = r.exit_code;
    json out = json::parse(r.out, nullptr, false);
    if (!out.is_array() || out.size() != 1 || !out[0].contains("scrub")) {
      ADD_FAILURE() << "atomdisk scrub: unexpected output: " << r.Describe();
      return json::object();
    }
    EXPECT_EQ(out[0].value("rank", 0), rank);
    return out[0]["scrub"];
  }

  // `atomdisk inspect DATA_DIR --json` of the stopped node `rank`.
  json Inspect(int rank) {
    RunOptions options;
    options.timeout = seconds(60);
    ProcessResult r = RunProcess({CliPath(), "inspect", h_->DataDir(rank), "--json"}, options);
    EXPECT_EQ(r.exit_code, 0) << r.Describe();
    json j = json::parse(r.out, nullptr, false);
    if (!j.is_object()) {
      ADD_FAILURE() << "atomdisk inspect: not JSON: " << r.Describe();
      return json::object();
    }
    j.erase("sectors");  // the summary is what the tests check (and print)
    return j;
  }

  std::unique_ptr<Harness> h_;
  std::vector<std::uint32_t> written_;  // newest version written per sector (0: never)
};

// (a) A node stopped while 20,000 sectors were written catches up when it restarts.
TEST_F(ResyncTest, RestartedNodePullsTheWritesItMissed) {
  ASSERT_NO_FATAL_FAILURE(StartCluster());
  // 5,000 sectors that node 3 will hold an old value of, then 20,000 newer ones (windows 0
  // and 1) while it is down.
  ASSERT_TRUE(WriteAll(Range(0, 5000), 1, {"1", "2", "3"}));
  ASSERT_TRUE(h_->Stop(3).ok());
  ASSERT_TRUE(WriteAll(Range(0, 20000), 2, {"1", "2"}));

  const auto t0 = Clock::now();
  ASSERT_TRUE(h_->StartNode(3).ok()) << h_->LogTail(3);
  json info;
  ASSERT_TRUE(WaitPassDone(3, seconds(60), &info))
      << "node 3's resync pass did not finish within 60 s; last status: " << info.dump();
  const double took_s = SecondsSince(t0);
  const json& r = info["resync"];
  EXPECT_FALSE(r.value("join", true)) << "a node that kept its disk needs no join pass";
  EXPECT_GE(r.value("sectors_pulled", 0ULL), 20000u) << info.dump();
  EXPECT_EQ(r.value("sectors_to_go", 1ULL), 0u) << info.dump();
  std::printf("[ resync   ] node 3 pulled %llu sectors (%.1f MB) in %.2f s after its start\n",
              static_cast<unsigned long long>(r.value("sectors_pulled", 0ULL)),
              r.value("bytes_pulled", 0.0) / 1e6, took_s);

  ASSERT_TRUE(h_->Stop(3).ok());
  ASSERT_TRUE(h_->Stop(1).ok());
  ExpectStoreHoldsNewest(3, /*reference=*/1);
}

// (b) A node whose disk was replaced (empty data_dir) does not vote until its join pass has
// pulled everything; meanwhile the other two serve reads and writes.
TEST_F(ResyncTest, NodeWithEmptyDiskJoinsBeforeItVotes) {
  ASSERT_NO_FATAL_FAILURE(StartCluster());
  ASSERT_TRUE(WriteAll(Range(0, 24000), 1, {"1", "2", "3"}));
  ASSERT_TRUE(h_->Stop(3).ok());
  std::error_code ec;
  fs::remove_all(h_->DataDir(3), ec);
  ASSERT_FALSE(ec) << ec.message();

  // Foreground I/O through nodes 1 and 2 for the whole join: each write of a sector of
  // [40000, 40064) is read back at once and must be what was written.
  std::atomic<std::uint64_t> fg_ok{0}, fg_failed{0};
  std::mutex fg_mu;
  std::string fg_error;
  std::unique_ptr<client::Client> fg_client = MakeClient({"1", "2"});
  ASSERT_NE(fg_client, nullptr);
  StoppableThreads fg;  // joined before fg_client is destroyed
  fg.Spawn([&] {
    for (std::uint32_t v = 1; !fg.stopping(); ++v) {
      SectorIdx s = 40000 + v % 64;
      Status w = fg_client->WriteSync(s, Pattern(s, v));
      Result<SectorPtr> rd = w.ok() ? fg_client->ReadSync(s) : Result<SectorPtr>(w);
      if (rd.ok() && **rd == *Pattern(s, v)) {
        ++fg_ok;
      } else {
        ++fg_failed;
        std::lock_guard lock(fg_mu);
        if (fg_error.empty()) {
          fg_error = rd.ok() ? "sector " + std::to_string(s) + " read back other data"
                             : rd.status().ToString();
        }
      }
    }
  });

  ASSERT_TRUE(h_->StartNode(3).ok()) << h_->LogTail(3);
  bool saw_joining = false, joined_without_pass = false, voted_with_active_join = false;
  std::uint64_t fg_at_join_start = 0, fg_at_vote = 0, not_voting_polls = 0;
  std::string bad_state;
  json info;
  const auto t0 = Clock::now();
  bool voted = WaitInfo(
      3, seconds(90), [](const json& j) { return j.value("voting", false); }, &info,
      [&](const json& j) {
        const json& r = j.at("resync");
        if (!j.value("voting", true)) {
          ++not_voting_polls;
          // Before the peers answered there is no pass yet; once there is, it is a join.
          if (r.value("active", false)) {
            if (!r.value("join", false) && bad_state.empty()) bad_state = j.dump();
            if (!saw_joining) fg_at_join_start = fg_ok.load();
            saw_joining = true;
          }
        } else {
          fg_at_vote = fg_ok.load();
          if (r.value("passes_done", 0ULL) < 1) joined_without_pass = true;
          if (r.value("active", false) && r.value("join", false)) voted_with_active_join = true;
        }
      });
  const double took_s = SecondsSince(t0);
  ASSERT_TRUE(voted) << "node 3 does not vote 90 s after it started with an empty disk; last "
                        "status: "
                     << info.dump();
  EXPECT_TRUE(saw_joining) << "never saw node 3 not voting with a join pass running ("
                           << not_voting_polls << " polls saw it not voting)";
  EXPECT_TRUE(bad_state.empty()) << "node 3 ran a non-join pass while not voting: " << bad_state;
  EXPECT_FALSE(joined_without_pass) << "node 3 voted before a pass finished: " << info.dump();
  EXPECT_FALSE(voted_with_active_join) << info.dump();
  EXPECT_GE(info["resync"].value("sectors_pulled", 0ULL), 24000u) << info.dump();
  EXPECT_GT(fg_at_vote, fg_at_join_start)
      << "no foreground read+write through nodes 1 and 2 completed while node 3 joined";
  std::printf(
      "[ join     ] node 3 joined with %llu sectors (%.1f MB) in %.2f s; %llu "
      "foreground write+reads meanwhile\n",
      static_cast<unsigned long long>(info["resync"].value("sectors_pulled", 0ULL)),
      info["resync"].value("bytes_pulled", 0.0) / 1e6, took_s,
      static_cast<unsigned long long>(fg_at_vote - fg_at_join_start));
  fg.StopAndJoin();
  fg_client->Close();
  EXPECT_EQ(fg_failed.load(), 0u) << "foreground I/O failed during the join: " << fg_error;
  EXPECT_GT(fg_ok.load(), 0u);

  ASSERT_TRUE(h_->Stop(3).ok());
  ASSERT_TRUE(h_->Stop(1).ok());
  auto identity = LoadIdentity(h_->DataDir(3));
  ASSERT_TRUE(identity.ok()) << identity.status().ToString();
  ASSERT_TRUE(identity->has_value()) << "node 3 wrote no IDENTITY";
  EXPECT_TRUE((*identity)->voting);
  EXPECT_FALSE((*identity)->resync_join);
  ExpectStoreHoldsNewest(3, /*reference=*/1);
}

// (c) Bit rot on a running node: data bytes of sectors that were written once (slot 0 is
// their only copy) are flipped under the daemon, after its start-up pass. `atomdisk scrub`
// finds exactly those, repairs them from the peers, and the store is clean afterwards.
TEST_F(ResyncTest, ScrubRepairsSectorsCorruptedUnderARunningNode) {
  ASSERT_NO_FATAL_FAILURE(StartCluster());
  ASSERT_TRUE(WriteAll(Range(0, 3000), 1, {"1", "2", "3"}));
  json info;
  ASSERT_TRUE(WaitPassDone(2, seconds(30), &info)) << info.dump();

  const std::string dat = h_->DataDir(2) + "/sectors.dat";
  const std::vector<SectorIdx> damaged = {3, 700, 701, 1500, 2999};
  for (SectorIdx s : damaged) {
    SlotHeader h0 = ReadSlotHeader(dat, s, 0), h1 = ReadSlotHeader(dat, s, 1);
    ASSERT_TRUE(h0.written && h0.magic_ok && !h1.written) << "sector " << s;
    ASSERT_TRUE(CorruptSlotData(dat, s, 0));
  }

  int code = -1;
  json sc = Scrub(2, &code);
  EXPECT_EQ(code, 0) << sc.dump();
  EXPECT_GE(sc.value("sectors_checked", 0ULL), 3000u) << sc.dump();
  EXPECT_EQ(sc.value("corrupt", 0ULL), damaged.size()) << sc.dump();
  EXPECT_EQ(sc.value("repaired", 0ULL), damaged.size()) << sc.dump();
  EXPECT_EQ(sc.value("unrepaired", 1ULL), 0u) << sc.dump();

  // A second scrub finds nothing left.
  json again = Scrub(2, &code);
  EXPECT_EQ(code, 0) << again.dump();
  EXPECT_EQ(again.value("corrupt", 1ULL), 0u)
      << "the repair did not reach the disk: " << again.dump();

  ASSERT_NO_FATAL_FAILURE(ExpectRepairedStore(2, /*reference=*/1, /*stored_sectors=*/3000));
}

// (c') The same damage done while the node is down, to the newest slot of sectors written
// twice and to the only slot of sectors written once. Between its start-up resync pass
// (which sees an older tag, or none, and pulls) and `atomdisk scrub`, every damaged sector
// is repaired: nothing is left corrupt or unrepaired, and the store is clean.
TEST_F(ResyncTest, CorruptionFoundAfterARestartIsRepaired) {
  ASSERT_NO_FATAL_FAILURE(StartCluster());
  ASSERT_TRUE(WriteAll(Range(0, 3000), 1, {"1", "2", "3"}));
  ASSERT_TRUE(WriteAll(Range(0, 1000), 2, {"1", "2", "3"}));
  ASSERT_TRUE(h_->Stop(2).ok());

  const std::string dat = h_->DataDir(2) + "/sectors.dat";
  std::vector<SectorIdx> damaged = {10, 500, 999, 1200, 1800, 2999};
  for (SectorIdx s : damaged) {
    SlotHeader h0 = ReadSlotHeader(dat, s, 0), h1 = ReadSlotHeader(dat, s, 1);
    ASSERT_TRUE(h0.written && h0.magic_ok) << "sector " << s;
    const bool twice = s < 1000;
    ASSERT_EQ(h1.written, twice) << "sector " << s;
    ASSERT_TRUE(CorruptSlotData(dat, s, twice && h1.ts > h0.ts ? 1 : 0));
  }

  ASSERT_TRUE(h_->StartNode(2).ok()) << h_->LogTail(2);
  json info;
  ASSERT_TRUE(WaitPassDone(2, seconds(30), &info)) << info.dump();
  const std::uint64_t pulled = info["resync"].value("sectors_pulled", 0ULL);

  int code = -1;
  json sc = Scrub(2, &code);
  EXPECT_EQ(code, 0) << sc.dump();
  EXPECT_EQ(sc.value("unrepaired", 1ULL), 0u) << sc.dump();
  EXPECT_EQ(sc.value("corrupt", 0ULL), sc.value("repaired", 1ULL)) << sc.dump();
  // The start-up pass's digest scan meets a corrupt slot too and repairs it at once (a read
  // repair), so each damaged sector is pulled, read-repaired or repaired by the scrub.
  ASSERT_TRUE(WaitInfo(
      2, seconds(10), [](const json& j) { return j["scrub"].value("pending_repairs", 1ULL) == 0; },
      &info))
      << info.dump();
  const std::uint64_t read_repaired = info["scrub"].value("read_repaired", 0ULL);
  EXPECT_EQ(info["scrub"].value("read_unrepaired", 1ULL), 0u) << info.dump();
  EXPECT_GE(pulled + read_repaired + sc.value("repaired", 0ULL), damaged.size())
      << "resync pulled " << pulled << ", read repairs " << read_repaired
      << ", scrub: " << sc.dump();
  std::printf(
      "[ scrub    ] start-up pass pulled %llu, read-repaired %llu; scrub found %llu corrupt, "
      "repaired %llu\n",
      static_cast<unsigned long long>(pulled), static_cast<unsigned long long>(read_repaired),
      static_cast<unsigned long long>(sc.value("corrupt", 0ULL)),
      static_cast<unsigned long long>(sc.value("repaired", 0ULL)));

  ASSERT_NO_FATAL_FAILURE(ExpectRepairedStore(2, /*reference=*/1));
}

// (c'') A slot whose header rotted while its node was down (or a write torn by a power cut):
// the node cannot tell what it held, so the sector is suspect (docs/STORAGE.md). Its newest
// valid tag equals the peers', so the start-up pass pulls nothing; but the pass's digest scan
// meets the failed slot, and the node repairs the sector from its peers at once, without a
// read or a scrub (docs/RESYNC.md, "Read repair"): it is not left one copy short.
TEST_F(ResyncTest, ASuspectSectorIsRepairedWithoutAReadOrAScrub) {
  ASSERT_NO_FATAL_FAILURE(StartCluster());
  ASSERT_TRUE(WriteAll(Range(0, 100), 1, {"1", "2", "3"}));
  ASSERT_TRUE(WriteAll(Range(0, 100), 2, {"1", "2", "3"}));
  json info;
  ASSERT_TRUE(WaitPassDone(2, seconds(30), &info)) << info.dump();
  ASSERT_TRUE(h_->Stop(2).ok());

  const std::string dat = h_->DataDir(2) + "/sectors.dat";
  const std::vector<SectorIdx> damaged = {7, 42};
  for (SectorIdx s : damaged) {
    SlotHeader h0 = ReadSlotHeader(dat, s, 0), h1 = ReadSlotHeader(dat, s, 1);
    ASSERT_TRUE(h0.magic_ok && h1.magic_ok) << "sector " << s;
    const int older = h0.ts < h1.ts ? 0 : 1;
    std::uint8_t magic[4];
    ASSERT_TRUE(FileBytes(dat, (2 * s + older) * kSlotBytes, magic, sizeof magic, true));
  }

  ASSERT_TRUE(h_->StartNode(2).ok()) << h_->LogTail(2);
  ASSERT_TRUE(WaitPassDone(2, seconds(30), &info)) << info.dump();
  EXPECT_EQ(info["resync"].value("sectors_pulled", 1ULL), 0u) << info.dump();
  ASSERT_TRUE(WaitInfo(
      2, seconds(10),
      [&](const json& j) {
        return j["scrub"].value("read_repaired", 0ULL) >= damaged.size() &&
               j["scrub"].value("pending_repairs", 1ULL) == 0;
      },
      &info))
      << info.dump() << "\n"
      << h_->LogTail(2);
  EXPECT_EQ(info["scrub"].value("read_unrepaired", 1ULL), 0u) << info.dump();
  EXPECT_EQ(info["scrub"].value("runs_done", 1ULL), 0u) << info.dump();
  EXPECT_EQ(info["counters"].value("unreadable_sectors", 1ULL), 0u)
      << "nothing read the damaged sectors: " << info.dump();

  // The node serves the newest data...
  auto c = MakeClient({"2"});
  ASSERT_NE(c, nullptr);
  for (SectorIdx s : damaged) {
    Result<SectorPtr> rd = c->ReadSync(s);
    ASSERT_TRUE(rd.ok()) << "sector " << s << ": " << rd.status().ToString() << "\n"
                         << h_->LogTail(2);
    EXPECT_EQ(**rd, *Pattern(s, 2)) << "sector " << s;
  }
  c->Close();
  // ...and the repair reached the disk: the store is clean and holds the newest data.
  ASSERT_NO_FATAL_FAILURE(ExpectRepairedStore(2, /*reference=*/1));
}

// A new cluster whose data_dirs were made by `atomdiskd --bootstrap` serves with one node
// down (without it, it waits for every node: "a new cluster needs every node once"); the node
// that was down joins later; --bootstrap refuses a data_dir that is in use or has data.
TEST_F(ResyncTest, BootstrappedClusterServesWithOneNodeDown) {
  auto created = CreateHarness({.nodes = 3, .sectors = kDeviceSectors});
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  h_ = std::move(created).value();
  written_.assign(kDeviceSectors, 0);
  RunOptions options;
  options.timeout = seconds(15);
  auto bootstrap = [&](int rank) {
    return RunProcess({Harness::DaemonPath(), "--config", h_->config_path(), "--rank",
                       std::to_string(rank), "--bootstrap"},
                      options);
  };
  for (int r = 1; r <= 3; ++r) {
    ProcessResult b = bootstrap(r);
    ASSERT_EQ(b.exit_code, 0) << b.Describe();
    EXPECT_NE(b.err.find("founding member"), std::string::npos) << b.err;
    EXPECT_NE(ReadFile(IdentityPath(h_->DataDir(r))).find("genesis = true"), std::string::npos);
  }
  ProcessResult again = bootstrap(1);  // idempotent before the first start
  EXPECT_EQ(again.exit_code, 0) << again.Describe();

  ASSERT_TRUE(h_->StartNode(1).ok()) << h_->LogTail(1);
  ASSERT_TRUE(h_->StartNode(2).ok()) << h_->LogTail(2);
  for (int r : {1, 2}) {
    ASSERT_TRUE(WaitInfo(r, seconds(30), [](const json& j) { return j.value("voting", false); }))
        << "node " << r << " of a bootstrapped cluster does not vote with node 3 down\n"
        << h_->LogTail(r);
  }
  ASSERT_TRUE(WriteAll(Range(0, 64), 1, {"1", "2"}));

  // In use, or voting already: refused, IDENTITY untouched.
  const std::string before = ReadFile(IdentityPath(h_->DataDir(1)));
  ProcessResult busy = bootstrap(1);
  EXPECT_EQ(busy.exit_code, 1) << busy.Describe();  // the LOCK: a running node uses it
  ASSERT_TRUE(h_->Stop(1).ok());
  ProcessResult member = bootstrap(1);
  EXPECT_EQ(member.exit_code, 2) << member.Describe();
  EXPECT_NE(member.err.find("already a member"), std::string::npos) << member.err;
  EXPECT_EQ(ReadFile(IdentityPath(h_->DataDir(1))).find("genesis"), std::string::npos);
  ASSERT_TRUE(h_->StartNode(1).ok()) << h_->LogTail(1);

  // The founding member that was down starts now: it registers and votes, with no join pass.
  ASSERT_TRUE(h_->StartNode(3).ok()) << h_->LogTail(3);
  ASSERT_TRUE(WaitInfo(3, seconds(30), [](const json& j) { return j.value("voting", false); }))
      << h_->LogTail(3);
  EXPECT_EQ(h_->LogTail(3, 200).find("join pass"), std::string::npos) << h_->LogTail(3, 200);
  auto c = MakeClient({"3"});
  ASSERT_NE(c, nullptr);
  for (SectorIdx sector : Range(0, 64)) {
    Result<SectorPtr> rd = c->ReadSync(sector);
    ASSERT_TRUE(rd.ok()) << rd.status().ToString();
    EXPECT_EQ(**rd, *Pattern(sector, 1)) << "sector " << sector;
  }
}

// --bootstrap on a data_dir that holds data (an old store without IDENTITY) is refused.
TEST_F(ResyncTest, BootstrapRefusesADataDirWithData) {
  auto created = CreateHarness({.nodes = 1, .sectors = 64});
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  h_ = std::move(created).value();
  written_.assign(64, 0);
  ASSERT_TRUE(h_->StartNode(1).ok()) << h_->LogTail(1);
  ASSERT_TRUE(WriteAll(Range(0, 4), 1, {"1"}));
  ASSERT_TRUE(h_->Stop(1).ok());
  std::error_code ec;
  fs::remove(IdentityPath(h_->DataDir(1)), ec);
  RunOptions options;
  options.timeout = seconds(15);
  ProcessResult r = RunProcess(
      {Harness::DaemonPath(), "--config", h_->config_path(), "--rank", "1", "--bootstrap"},
      options);
  EXPECT_EQ(r.exit_code, 2) << r.Describe();
  EXPECT_NE(r.err.find("holds data"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(IdentityPath(h_->DataDir(1))));
}

// (e) A data_dir whose IDENTITY names another cluster, or another rank, is refused (exit 2)
// and left as it was.
TEST_F(ResyncTest, RefusesADataDirOfAnotherClusterOrRank) {
  auto created = CreateHarness({.nodes = 1, .sectors = 64});
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  h_ = std::move(created).value();
  const std::string dir = h_->DataDir(1);
  ASSERT_TRUE(fs::create_directories(dir));
  const std::string ours = h_->config().ClusterId().ToString();
  const std::string other =
      ours == std::string(32, 'a') ? std::string(32, 'b') : std::string(32, 'a');
  // Written by the store library, so that only the cluster or the rank is wrong.
  auto identity_file = [&](const std::string& cluster_hex, Rank rank) {
    Identity id;
    auto uuid = ParseUuid(cluster_hex);
    EXPECT_TRUE(uuid.ok()) << uuid.status().ToString();
    if (uuid.ok()) id.cluster_id = *uuid;
    id.rank = rank;
    id.voting = true;
    id.voters = {1, 2};
    EXPECT_TRUE(SaveIdentity(dir, id).ok());
    return ReadFile(IdentityPath(dir));
  };
  struct Case {
    std::string identity;
    std::vector<std::string> needles;
  };
  const std::vector<Case> cases = {
      {identity_file(other, 1), {"IDENTITY", other, ours, "refusing"}},
      {identity_file(ours, 2), {"IDENTITY", "rank 2", "refusing"}},
  };
  for (const Case& c : cases) {
    ASSERT_TRUE(WriteFile(IdentityPath(dir), c.identity));
    RunOptions options;
    options.timeout = seconds(15);
    ProcessResult r =
        RunProcess({Harness::DaemonPath(), "--config", h_->config_path(), "--rank", "1"}, options);
    EXPECT_FALSE(r.timed_out) << "atomdiskd started on a foreign data_dir:\n" << c.identity;
    EXPECT_EQ(r.exit_code, 2) << r.Describe();
    for (const std::string& n : c.needles) {
      EXPECT_NE(r.err.find(n), std::string::npos) << "stderr lacks \"" << n << "\": " << r.err;
    }
    EXPECT_EQ(ReadFile(IdentityPath(dir)), c.identity) << "IDENTITY was changed";
  }
}

// (e) A garbage IDENTITY (not TOML; TOML with invalid values; binary) is refused with a
// message naming the file, and never overwritten.
TEST_F(ResyncTest, RefusesAndKeepsAGarbageIdentity) {
  auto created = CreateHarness({.nodes = 1, .sectors = 64});
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  h_ = std::move(created).value();
  const std::string dir = h_->DataDir(1);
  ASSERT_TRUE(fs::create_directories(dir));
  std::string binary(300, '\0');
  for (std::size_t i = 0; i < binary.size(); ++i) binary[i] = static_cast<char>(i * 37 + 11);
  const std::vector<std::string> garbage = {
      "this is {{ not toml\n",
      "format = 1\ncluster_id = \"xyz\"\nrank = -4\nvoting = \"maybe\"\n",
      binary,
  };
  for (const std::string& g : garbage) {
    ASSERT_TRUE(WriteFile(IdentityPath(dir), g));
    RunOptions options;
    options.timeout = seconds(15);
    ProcessResult r =
        RunProcess({Harness::DaemonPath(), "--config", h_->config_path(), "--rank", "1"}, options);
    EXPECT_FALSE(r.timed_out) << "atomdiskd started on a garbage IDENTITY";
    EXPECT_TRUE(r.exit_code == 1 || r.exit_code == 2) << r.Describe();
    EXPECT_NE(r.err.find("IDENTITY"), std::string::npos) << "stderr lacks the file: " << r.err;
    EXPECT_EQ(ReadFile(IdentityPath(dir)), g) << "the garbage IDENTITY was changed";
  }
}

// Suites named *Slow* run in the integration_slow label (tests/daemon/CMakeLists.txt).
class ResyncSlowTest : public ResyncTest {};

// (d) A node with an empty disk is killed -9 in the middle of its (rate-limited) join pass;
// restarted, it resumes at the window it had reached, finishes, votes, and holds everything.
TEST_F(ResyncSlowTest, KilledJoinPassResumesWhereItWas) {
  // 5 MB/s: 4,000 sectors (16 MB) per window take about 3 s to pull.
  const auto t0 = Clock::now();
  ASSERT_NO_FATAL_FAILURE(StartCluster("resync_rate_mb = 5"));
  const std::vector<SectorIdx> sectors = Range(0, kDeviceSectors, 4);
  ASSERT_TRUE(WriteAll(sectors, 1, {"1", "2", "3"}));
  std::printf("[ resume   ] cluster started and %zu sectors written in %.1f s\n", sectors.size(),
              SecondsSince(t0));
  ASSERT_TRUE(h_->Stop(3).ok());
  std::error_code ec;
  fs::remove_all(h_->DataDir(3), ec);
  ASSERT_FALSE(ec) << ec.message();
  const auto t_start = Clock::now();
  ASSERT_TRUE(h_->StartNode(3).ok()) << h_->LogTail(3);

  json info;
  ASSERT_TRUE(WaitInfo(
      3, seconds(60),
      [](const json& j) {
        const json& r = j.at("resync");
        return r.value("active", false) && r.value("join", false) && r.value("window", 0ULL) >= 1;
      },
      &info))
      << "node 3's join pass did not reach window 1 within 60 s: " << info.dump();
  // The resume point is saved once a window is done (at most every 0.5 s): give it time.
  std::this_thread::sleep_for(milliseconds(700));
  ASSERT_TRUE(WaitInfo(
      3, seconds(5), [](const json&) { return true; }, &info));
  const std::uint64_t window_at_kill = info["resync"].value("window", 0ULL);
  std::printf("[ resume   ] killing node 3 in window %llu, %.1f s after its start: %s\n",
              static_cast<unsigned long long>(window_at_kill), SecondsSince(t_start),
              info["resync"].dump().c_str());
  ASSERT_TRUE(info["resync"].value("active", false) && !info.value("voting", true))
      << "the join pass finished too early to be interrupted: " << info.dump();
  ASSERT_TRUE(h_->Kill9(3).ok());

  ASSERT_TRUE(h_->StartNode(3).ok()) << h_->LogTail(3);
  ASSERT_TRUE(WaitInfo(
      3, seconds(30), [](const json& j) { return j.at("resync").value("active", false); }, &info))
      << "no pass after the restart: " << info.dump();
  EXPECT_FALSE(info.value("voting", true)) << "a half-joined node votes: " << info.dump();
  EXPECT_TRUE(info["resync"].value("join", false)) << info.dump();
  EXPECT_GE(info["resync"].value("window", 0ULL), window_at_kill)
      << "the pass restarted from an earlier window than the " << window_at_kill
      << " it had reached: " << info.dump();

  ASSERT_TRUE(WaitInfo(
      3, seconds(90), [](const json& j) { return j.value("voting", false); }, &info))
      << "node 3 does not vote 90 s after the restart: " << info.dump();
  std::printf("[ resume   ] node 3 votes %.1f s after its first start: %s\n", SecondsSince(t_start),
              info["resync"].dump().c_str());
  // Windows before the resume point are not pulled again.
  const std::uint64_t left = sectors.size() - window_at_kill * (kWindowSectors / 4);
  EXPECT_LE(info["resync"].value("sectors_pulled", ~0ULL), left)
      << "resumed at window " << window_at_kill << " but pulled more than the " << left
      << " sectors from there on: " << info.dump();
  // The Syncer notes where each pass starts: "join pass from 1, 2: window W of 4".
  const std::string log = ReadFile(h_->LogPath(3));
  const std::size_t last_start = log.rfind("join pass from");
  ASSERT_NE(last_start, std::string::npos) << "the log names no join pass";
  const std::string line = log.substr(last_start, log.find('\n', last_start) - last_start);
  const std::size_t w_at = line.find(": window ");
  ASSERT_NE(w_at, std::string::npos) << line;
  EXPECT_GE(std::stoull(line.substr(w_at + 9)), window_at_kill) << line;

  ASSERT_TRUE(h_->Stop(3).ok());
  ASSERT_TRUE(h_->Stop(1).ok());
  ExpectStoreHoldsNewest(3, /*reference=*/1);
}

// `atomdisk status` during a join shows "join resync P% (window W of N)": P is the share of
// the device's sectors in the windows done, not of the windows. On a device of 2.25 windows
// (36,864 sectors: 16,384 + 16,384 + 4,096) that is 0%, 44% and 89% in windows 0, 1 and 2,
// where counting windows would say 0%, 33% and 67%.
TEST_F(ResyncSlowTest, JoinPercentCountsSectors) {
  constexpr std::uint64_t kSectors = 2 * kWindowSectors + kWindowSectors / 4;
  const std::map<std::uint64_t, int> expected = {{0, 0}, {1, 44}, {2, 89}};
  // 4 MB/s: the 2,048 sectors (8 MiB) written in each full window take about 2 s to pull.
  ASSERT_NO_FATAL_FAILURE(StartCluster("resync_rate_mb = 4", "info", kSectors));
  ASSERT_TRUE(WriteAll(Range(0, kSectors, 8), 1, {"1", "2", "3"}));
  ASSERT_TRUE(h_->Stop(3).ok());
  std::error_code ec;
  fs::remove_all(h_->DataDir(3), ec);
  ASSERT_FALSE(ec) << ec.message();
  ASSERT_TRUE(h_->StartNode(3).ok()) << h_->LogTail(3);

  const std::regex line_re(R"(join resync (\d+)% \(window (\d+) of (\d+)\))");
  std::map<std::uint64_t, int> seen;  // window -> percentage printed
  const auto deadline = Clock::now() + seconds(90);
  bool voting = false;
  while (!voting && Clock::now() < deadline) {
    ProcessResult r = Cli({"status"}, seconds(20));
    std::smatch m;
    if (std::regex_search(r.out, m, line_re)) {
      const std::uint64_t window = std::stoull(m[2]);
      const int percent = std::stoi(m[1]);
      EXPECT_EQ(std::stoull(m[3]), 3u) << r.out;
      ASSERT_TRUE(expected.count(window)) << r.out;
      EXPECT_EQ(percent, expected.at(window)) << "window " << window << ": " << r.out;
      seen[window] = percent;
    }
    auto info = Info(3);
    voting = info && info->value("voting", false);
    std::this_thread::sleep_for(milliseconds(100));
  }
  ASSERT_TRUE(voting) << "node 3 does not vote 90 s after it started";
  std::string windows;
  for (const auto& [w, p] : seen)
    windows += " " + std::to_string(w) + ":" + std::to_string(p) + "%";
  std::printf("[ percent  ] windows seen:%s\n", windows.c_str());
  // Windows 1 or 2 tell sectors from windows; at 2 s a window, status sees them.
  EXPECT_TRUE(seen.count(1) || seen.count(2)) << "status never showed window 1 or 2:" << windows;
}

}  // namespace
}  // namespace atomdisk::itest
