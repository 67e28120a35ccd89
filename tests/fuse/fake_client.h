// FakeClient: an in-memory client::Client for testing the FUSE front-end without daemons.
//
// Sectors live in a map; every operation completes on the fake's own thread after an
// optional delay, in completion order of their due times, like the real client. SetDown(true)
// makes operations fail with Timeout after the operation timeout (a lost quorum), which the
// FUSE layer must turn into EIO; SetDown(false) heals it.
// Thread-safety: every public method may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "client/client.h"

namespace atomdisk::fuse {

class FakeClient : public client::Client {
 public:
  FakeClient(std::uint64_t sectors, std::chrono::microseconds latency,
             std::chrono::milliseconds op_timeout);
  ~FakeClient() override;

  void Read(SectorIdx sector, ReadCallback done) override;
  void Write(SectorIdx sector, SectorPtr data, WriteCallback done) override;
  std::vector<client::NodeInfo> Probe(std::chrono::milliseconds timeout) override;
  std::size_t ReachableNodes() const override { return down_ ? 0 : 1; }
  std::size_t ConfiguredNodes() const override { return 1; }
  void Close() override;

  void SetDown(bool down) { down_ = down; }

 private:
  using Clock = std::chrono::steady_clock;
  void Schedule(std::chrono::microseconds delay, std::function<void()> fn);
  void Run();

  const std::uint64_t sectors_;
  const std::chrono::microseconds latency_;
  const std::chrono::milliseconds op_timeout_;
  std::atomic<bool> down_{false};

  std::mutex data_mu_;
  std::unordered_map<SectorIdx, SectorPtr> data_;  // guarded by data_mu_

  std::mutex mu_;
  std::condition_variable cv_;
  std::multimap<Clock::time_point, std::function<void()>> queue_;  // guarded by mu_
  bool closed_ = false;                                            // guarded by mu_
  std::thread thread_;
};

}  // namespace atomdisk::fuse
