// Micro-benchmarks (Google Benchmark) of the per-message CPU costs on the data path:
// HMAC-SHA256 of a frame, encoding and decoding the biggest messages, and the register's
// work for one write as a coordinator. Run: build/bin/atomdisk-microbench.
#include <benchmark/benchmark.h>

#include "common/hmac.h"
#include "common/wire.h"
#include "daemon/register/register.h"

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

}  // namespace
}  // namespace atomdisk

BENCHMARK_MAIN();
