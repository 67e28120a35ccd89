#include "tests/fuse/fake_client.h"

namespace atomdisk::fuse {

FakeClient::FakeClient(std::uint64_t sectors, std::chrono::microseconds latency,
                       std::chrono::milliseconds op_timeout)
    : sectors_(sectors), latency_(latency), op_timeout_(op_timeout) {
  thread_ = std::thread([this] { Run(); });
}

FakeClient::~FakeClient() { Close(); }

void FakeClient::Schedule(std::chrono::microseconds delay, std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!closed_) {
      queue_.emplace(Clock::now() + delay, std::move(fn));
      cv_.notify_one();
      return;
    }
  }
  fn();  // closed: complete at once, on the caller's thread
}

void FakeClient::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!closed_) {
    if (queue_.empty()) {
      cv_.wait(lock);
      continue;
    }
    auto due = queue_.begin()->first;
    if (Clock::now() < due) {
      cv_.wait_until(lock, due);
      continue;
    }
    auto fn = std::move(queue_.begin()->second);
    queue_.erase(queue_.begin());
    lock.unlock();
    fn();
    lock.lock();
  }
}

void FakeClient::Read(SectorIdx sector, ReadCallback done) {
  if (sector >= sectors_) {
    Schedule(latency_, [done] { done(Status::InvalidArgument("sector out of range")); });
    return;
  }
  if (down_) {
    Schedule(op_timeout_, [done] { done(Status::Timeout("fake: no quorum")); });
    return;
  }
  Schedule(latency_, [this, sector, done] {
    SectorPtr value;
    {
      std::lock_guard<std::mutex> lock(data_mu_);
      auto it = data_.find(sector);
      value = it == data_.end() ? ZeroSector() : it->second;
    }
    done(std::move(value));
  });
}

void FakeClient::Write(SectorIdx sector, SectorPtr data, WriteCallback done) {
  if (sector >= sectors_) {
    Schedule(latency_, [done] { done(Status::InvalidArgument("sector out of range")); });
    return;
  }
  if (down_) {
    Schedule(op_timeout_, [done] { done(Status::Timeout("fake: no quorum")); });
    return;
  }
  Schedule(latency_, [this, sector, data = std::move(data), done] {
    {
      std::lock_guard<std::mutex> lock(data_mu_);
      data_[sector] = data;
    }
    done(Status::Ok());
  });
}

std::vector<client::NodeInfo> FakeClient::Probe(std::chrono::milliseconds) {
  client::NodeInfo info;
  info.endpoint.host = "fake";
  info.reachable = !down_;
  info.error = down_ ? "down" : "";
  return {info};
}

void FakeClient::Close() {
  std::multimap<Clock::time_point, std::function<void()>> pending;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;
    closed_ = true;
    cv_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
  // Operations still queued run now; their results stand (the fake never loses an answer).
  {
    std::lock_guard<std::mutex> lock(mu_);
    pending.swap(queue_);
  }
  for (auto& [due, fn] : pending) fn();
}

}  // namespace atomdisk::fuse
