// atomdisk-physlimits: the physical floor under a replicated write on this machine, measured
// in the same run as the cluster benchmark (scripts/bench-cluster.sh):
//   - loopback TCP round trip carrying a 4 KiB message (one ping-pong at a time);
//   - 4 KiB pwrite + fdatasync on a file in --dir (the disk the nodes' data_dirs are on),
//     with 1 and with 3 streams at once (three nodes on one disk);
//   - HMAC-SHA256 over 4 KiB with the project's Hmac (what every frame carrying a sector
//     costs to sign, and again to verify), on one core;
//   - the CPU one stored write costs a node (a pwrite of a 4160-byte slot at a random place
//     in a 545 MB file, and its share of an fdatasync) when one fdatasync covers 1, 4 or 16
//     writes (group commit's batch sizes), and when 256 consecutive sectors share one (a
//     1 MiB sequential write).
// Prints one line per measurement: name, count, p50 and p99 in microseconds, and the CPU
// time per operation where measured (--json for a machine-readable object). The CPU figures
// bound what two cores can do (docs/BENCHMARKS.md, "What two cores allow").
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/hmac.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Stats {
  std::string name;
  std::size_t count = 0;
  double p50_us = 0, p99_us = 0;
  double cpu_us = -1;  // CPU time (user + system, this thread) per operation; < 0: not measured
};

// User + system CPU time of the calling thread (precise, unlike getrusage's tick counts).
double ThreadCpuSeconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

Stats Summarize(const std::string& name, std::vector<double> us) {
  std::sort(us.begin(), us.end());
  Stats s{name, us.size(), 0, 0};
  if (!us.empty()) {
    s.p50_us = us[us.size() / 2];
    s.p99_us = us[std::min(us.size() - 1, us.size() * 99 / 100)];
  }
  return s;
}

bool FullIo(int fd, char* buf, std::size_t n, bool write) {
  std::size_t off = 0;
  while (off < n) {
    ssize_t r = write ? ::write(fd, buf + off, n - off) : ::read(fd, buf + off, n - off);
    if (r <= 0) return false;
    off += static_cast<std::size_t>(r);
  }
  return true;
}

Stats LoopbackRoundTrip(int iterations) {
  int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(listener, 1) != 0 ||
      ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    std::perror("physlimits: loopback listen");
    std::exit(1);
  }
  std::thread server([listener, iterations] {
    int c = ::accept(listener, nullptr, nullptr);
    int one = 1;
    ::setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    std::vector<char> buf(4096 + 64);
    for (int i = 0; i < iterations + 100; ++i) {
      if (!FullIo(c, buf.data(), buf.size(), false) || !FullIo(c, buf.data(), 64, true)) break;
    }
    ::close(c);
  });
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  ::setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (::connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    std::perror("physlimits: connect");
    std::exit(1);
  }
  std::vector<char> buf(4096 + 64, 'x');
  std::vector<double> us;
  for (int i = 0; i < iterations + 100; ++i) {
    auto t0 = Clock::now();
    if (!FullIo(s, buf.data(), buf.size(), true) || !FullIo(s, buf.data(), 64, false)) break;
    auto dt = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
    if (i >= 100) us.push_back(dt);  // the first ones warm up the path
  }
  ::close(s);
  server.join();
  ::close(listener);
  return Summarize("loopback_rtt_4k", std::move(us));
}

Stats WriteSync(const std::string& dir, int streams, int iterations) {
  std::vector<std::vector<double>> per(static_cast<std::size_t>(streams));
  std::vector<std::thread> threads;
  for (int t = 0; t < streams; ++t) {
    threads.emplace_back([&, t] {
      std::string path =
          dir + "/physlimits." + std::to_string(::getpid()) + "." + std::to_string(t);
      int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
      if (fd < 0) {
        std::perror(("physlimits: " + path).c_str());
        std::exit(1);
      }
      std::vector<char> buf(4096, static_cast<char>(t));
      for (int i = 0; i < iterations; ++i) {
        auto t0 = Clock::now();
        off_t off = static_cast<off_t>((i % 1024) * 8192);
        if (::pwrite(fd, buf.data(), buf.size(), off) != 4096 || ::fdatasync(fd) != 0) {
          std::perror("physlimits: write/fdatasync");
          std::exit(1);
        }
        per[static_cast<std::size_t>(t)].push_back(
            std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
      }
      ::close(fd);
      ::unlink(path.c_str());
    });
  }
  for (auto& th : threads) th.join();
  std::vector<double> all;
  for (auto& v : per) all.insert(all.end(), v.begin(), v.end());
  return Summarize("write_fdatasync_4k_x" + std::to_string(streams), std::move(all));
}

Stats Hmac4k(int iterations) {
  std::vector<std::uint8_t> key(64, 0x5a), data(4096, 0xa5);
  atomdisk::Hmac mac(key);
  std::vector<double> us;
  us.reserve(static_cast<std::size_t>(iterations));
  std::uint8_t sink = 0;
  const double cpu0 = ThreadCpuSeconds();
  for (int i = 0; i < iterations; ++i) {
    auto t0 = Clock::now();
    sink ^= mac.Compute(data)[0];
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    data[static_cast<std::size_t>(i) % data.size()] = sink;
  }
  Stats s = Summarize("hmac_sha256_4k", std::move(us));
  s.cpu_us = (ThreadCpuSeconds() - cpu0) * 1e6 / iterations;
  return s;
}

// The store's write pattern (docs/STORAGE.md): a 4160-byte slot (64-byte header + 4 KiB) of
// a random sector of 65,536 (or, `sequential`, of the next sector, alternating slots per pass
// as the store does), in a file written whole first (so nothing allocates), then one
// fdatasync per `batch` writes. Latency is per batch; CPU is per write.
Stats SlotWriteCpu(const std::string& dir, int batch, int writes, bool sequential) {
  constexpr std::size_t kSlot = 4160;
  constexpr std::uint64_t kSectors = 65536;
  constexpr std::uint64_t kSlots = 2 * kSectors;
  std::string path = dir + "/physlimits." + std::to_string(::getpid()) + ".slots";
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    std::perror(("physlimits: " + path).c_str());
    std::exit(1);
  }
  {
    std::vector<char> chunk(kSlot * 256, 1);
    for (std::uint64_t slot = 0; slot < kSlots; slot += 256) {
      if (::pwrite(fd, chunk.data(), chunk.size(), static_cast<off_t>(slot * kSlot)) !=
          static_cast<ssize_t>(chunk.size())) {
        std::perror("physlimits: fill");
        std::exit(1);
      }
    }
    if (::fdatasync(fd) != 0) std::perror("physlimits: fdatasync");
  }
  std::vector<char> buf(kSlot, 7);
  std::mt19937_64 rng(1);
  std::vector<double> us;
  const double cpu0 = ThreadCpuSeconds();
  int done = 0;
  while (done < writes) {
    auto t0 = Clock::now();
    for (int j = 0; j < batch; ++j, ++done) {
      const auto n = static_cast<std::uint64_t>(done);
      const std::uint64_t slot =
          sequential ? 2 * (n % kSectors) + (n / kSectors) % 2 : rng() % kSlots;
      off_t off = static_cast<off_t>(slot * kSlot);
      if (::pwrite(fd, buf.data(), kSlot, off) != static_cast<ssize_t>(kSlot)) {
        std::perror("physlimits: pwrite");
        std::exit(1);
      }
    }
    if (::fdatasync(fd) != 0) {
      std::perror("physlimits: fdatasync");
      std::exit(1);
    }
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  const double cpu = ThreadCpuSeconds() - cpu0;
  ::close(fd);
  ::unlink(path.c_str());
  Stats s = Summarize(std::string(sequential ? "slot_write_seq_batch" : "slot_write_sync_batch") +
                          std::to_string(batch),
                      std::move(us));
  s.cpu_us = cpu * 1e6 / done;
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "atomdisk-physlimits: loopback round trip, 4 KiB write+fdatasync latency, HMAC and "
      "stored-write CPU cost"};
  std::string dir = ".";
  int iterations = 5000;
  bool json = false;
  app.add_option("--dir", dir, "directory on the disk to measure (the data_dirs' disk)");
  app.add_option("--iterations", iterations, "samples per measurement")
      ->check(CLI::Range(10, 10000000));
  app.add_flag("--json", json, "print one JSON object");
  CLI11_PARSE(app, argc, argv);

  std::vector<Stats> results = {LoopbackRoundTrip(iterations), WriteSync(dir, 1, iterations / 2),
                                WriteSync(dir, 3, iterations / 2), Hmac4k(iterations * 4)};
  for (int batch : {1, 4, 16}) results.push_back(SlotWriteCpu(dir, batch, iterations, false));
  results.push_back(SlotWriteCpu(dir, 256, iterations * 16, true));
  if (json) {
    std::printf("{");
    for (std::size_t i = 0; i < results.size(); ++i) {
      std::printf("%s\"%s\":{\"count\":%zu,\"p50_us\":%.1f,\"p99_us\":%.1f", i ? "," : "",
                  results[i].name.c_str(), results[i].count, results[i].p50_us, results[i].p99_us);
      if (results[i].cpu_us >= 0) std::printf(",\"cpu_us_per_op\":%.2f", results[i].cpu_us);
      std::printf("}");
    }
    std::printf("}\n");
  } else {
    std::printf("%-26s %8s %10s %10s %12s\n", "measurement", "samples", "p50 us", "p99 us",
                "cpu us/op");
    for (const auto& r : results) {
      std::printf("%-26s %8zu %10.1f %10.1f", r.name.c_str(), r.count, r.p50_us, r.p99_us);
      if (r.cpu_us >= 0) {
        std::printf(" %12.2f\n", r.cpu_us);
      } else {
        std::printf(" %12s\n", "-");
      }
    }
  }
  return 0;
}
