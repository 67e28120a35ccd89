// Micro-benchmarks (Google Benchmark) of the per-message CPU costs on the data path:
// HMAC-SHA256 of a frame, encoding and decoding the biggest messages, and the register's
// work for one write as a coordinator, and a store read of a sector from the OS cache. Run:
// build/bin/atomdisk-microbench.
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "common/hmac.h"
#include "common/wire.h"
#include "daemon/register/register.h"
#include "daemon/store/sector_store.h"

namespace atomdisk {
namespace {

std::vector<std::uint8_t> Key(std::size_t n) { return std::vector<std::uint8_t>(n, 0x42); }

void BM_Hmac4K(benchmark::State& state) {
  Hmac mac(Key(64));
  std::vector<std::uint8_t> data(4146, 7);
  for (auto _ : state) benchmark::DoNotOptimize(mac.Compute(data));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * data.size()));
}
BENCHMARK(BM_Hmac4K);

SystemMessage WriteProc() {
  SystemMessage m;
  m.sender = 1;
  m.sector = 12345;
  m.content = SystemContent::kWriteProc;
  m.tag = {7, 1};
  m.data = ZeroSector();
  return m;
}

void BM_EncodeWriteProcFrame(benchmark::State& state) {
  Hmac mac(Key(64));
  SystemMessage m = WriteProc();
  for (auto _ : state) benchmark::DoNotOptimize(EncodeFrame(m, mac));
}
BENCHMARK(BM_EncodeWriteProcFrame);

void BM_VerifyAndDecodeWriteProc(benchmark::State& state) {
  Hmac mac(Key(64));
  Frame f = EncodeFrame(WriteProc(), mac);
  std::span<const std::uint8_t> body(f.data() + kFrameLengthSize, f.size() - kFrameLengthSize);
  for (auto _ : state) {
    auto payload = VerifyFrameBody(body, mac);
    benchmark::DoNotOptimize(DecodeSystemMessage(*payload));
  }
}
BENCHMARK(BM_VerifyAndDecodeWriteProc);

// A register coordinating writes in a 3-node cluster, with every answer delivered at once.
class InstantEnv : public RegisterEnv {
 public:
  Register* reg = nullptr;
  std::vector<SystemMessage> outbox;
  std::vector<Triple> persists;
  std::uint64_t ids = 0;
  void Send(Rank, const SystemMessage& m) override { outbox.push_back(m); }
  void Persist(SectorIdx, const Triple& t) override { persists.push_back(t); }
  void Complete(std::uint64_t, SectorPtr) override {}
  void Refuse(std::uint64_t, const std::string&) override {}
  Uuid NewOpId() override {
    Uuid u;
    ++ids;
    std::memcpy(u.bytes.data(), &ids, sizeof(ids));
    return u;
  }
};

void BM_RegisterWriteRoundTrips(benchmark::State& state) {
  RegisterConfig cfg;
  cfg.self = 1;
  cfg.ranks = {1, 2, 3};
  InstantEnv env;
  Register reg(0, Triple{{}, ZeroSector()}, &cfg, &env);
  SectorPtr data = ZeroSector();
  std::uint64_t token = 0;
  for (auto _ : state) {
    reg.StartWrite(++token, data, 0);
    // Answer the ReadProcs from ranks 2 and 3, complete the persist, ack the WriteProcs.
    for (int phase = 0; phase < 3; ++phase) {
      auto out = std::move(env.outbox);
      env.outbox.clear();
      for (auto& t : env.persists) reg.OnPersisted(t.tag, Status::Ok(), 0);
      env.persists.clear();
      for (auto& m : out) {
        SystemMessage r = m;
        r.sender = m.sender == 1 ? 2 : m.sender;
        if (m.content == SystemContent::kReadProc) {
          r.content = SystemContent::kValue;
          r.tag = reg.durable().tag;
          r.data = data;
        } else if (m.content == SystemContent::kWriteProc) {
          r.content = SystemContent::kAck;
        } else {
          continue;
        }
        reg.OnMessage(r, 0);
      }
    }
  }
}
BENCHMARK(BM_RegisterWriteRoundTrips);

// SectorStore::Read of written sectors whose file pages are in the OS cache: the first read
// of a sector after opening (/0: both slots read and examined), and a later one (/1: the
// store knows which slot holds the newest value and reads only that one). In a directory
// under $TMPDIR (default /var/tmp: a disk, not tmpfs).
void BM_StoreRead(benchmark::State& state) {
  const bool known = state.range(0) != 0;
  constexpr SectorIdx kSectors = 4096;
  const char* tmp = std::getenv("TMPDIR");
  const std::string dir =
      std::string(tmp ? tmp : "/var/tmp") + "/atomdisk-microbench." + std::to_string(::getpid());
  SectorStore::Options options;
  options.sectors = kSectors;
  options.background_sync = false;
  {
    auto store = SectorStore::Open(dir, options);
    if (!store.ok()) {
      state.SkipWithError(store.status().ToString().c_str());
      return;
    }
    auto data = ZeroSector();
    for (std::uint64_t ts = 1; ts <= 2; ++ts) {  // both slots of every sector
      for (SectorIdx s = 0; s < kSectors; ++s) (*store)->Write(s, Triple{{ts, 1}, data}, {});
      (*store)->SyncNow();
    }
  }
  std::unique_ptr<SectorStore> store;
  SectorIdx next = kSectors;
  for (auto _ : state) {
    if (next == kSectors) {  // a pass over every sector; /0 starts each from a fresh store
      next = 0;
      if (!known || !store) {
        state.PauseTiming();
        store.reset();
        store = std::move(SectorStore::Open(dir, options)).value();
        if (known) {
          for (SectorIdx s = 0; s < kSectors; ++s) benchmark::DoNotOptimize(store->Read(s));
        }
        state.ResumeTiming();
      }
    }
    benchmark::DoNotOptimize(store->Read(next++));
  }
  store.reset();
  std::filesystem::remove_all(dir);
}
BENCHMARK(BM_StoreRead)->Arg(0)->Arg(1);

}  // namespace
}  // namespace atomdisk

BENCHMARK_MAIN();
