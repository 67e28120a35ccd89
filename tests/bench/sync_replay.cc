// atomdisk-sync-replay: what someone on the network path can do with one recorded sync frame,
// as issue 17 measured it. Sends one Entries request "from" a peer (signed with the system key,
// as a recording of a real one would be: same bytes every time) to a node, --rate times a
// second for --duration seconds, over one connection, and reads nothing (the node answers the
// peer, not us). scripts/bench-sync-replay.sh measures the node's CPU and a client's latency
// around it.
//
//   atomdisk-sync-replay --config cluster.toml --node 1 --as 2 [--rate 94] [--duration 10]
//       [--first 0] [--count 4096]
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <thread>

#include "common/config.h"
#include "common/hmac.h"
#include "common/sync_wire.h"
#include "tests/bench/bench_socket.h"

int main(int argc, char** argv) {
  CLI::App app{"replay one recorded sync Entries request at a node"};
  std::string config_path;
  int rank = 1, as = 2;
  double rate = 94, duration_s = 10;
  std::uint64_t first = 0;
  std::uint32_t count = atomdisk::kMaxEntrySectors;
  app.add_option("--config", config_path, "cluster.toml")->required();
  app.add_option("--node", rank, "rank of the node to send to");
  app.add_option("--as", as, "the peer rank the request names as its sender");
  app.add_option("--rate", rate, "requests a second")->check(CLI::Range(0.1, 100000.0));
  app.add_option("--duration", duration_s, "seconds")->check(CLI::Range(0.1, 3600.0));
  app.add_option("--first", first, "first sector of the Entries range");
  app.add_option("--count", count, "sectors in the range")
      ->check(CLI::Range(1u, atomdisk::kMaxEntrySectors));
  CLI11_PARSE(app, argc, argv);
  auto config = atomdisk::LoadClusterConfig(config_path);
  if (!config.ok()) {
    std::fprintf(stderr, "atomdisk-sync-replay: %s\n", config.status().ToString().c_str());
    return 2;
  }
  const atomdisk::NodeConfig* node = config->FindNode(static_cast<atomdisk::Rank>(rank));
  if (node == nullptr || config->FindNode(static_cast<atomdisk::Rank>(as)) == nullptr) {
    std::fprintf(stderr, "atomdisk-sync-replay: --node %d and --as %d must be nodes of %s\n", rank,
                 as, config_path.c_str());
    return 2;
  }
  atomdisk::Hmac mac(config->system_key);
  atomdisk::SyncMessage m;
  m.sender = static_cast<atomdisk::Rank>(as);
  m.kind = atomdisk::SyncKind::kEntries;
  m.request_id = 0x5eed;
  m.first = first;
  m.count = count;
  const atomdisk::Frame frame = atomdisk::EncodeFrame(m, mac);
  int fd = atomdisk::bench::Dial(node->host, node->port);
  if (fd < 0) {
    std::fprintf(stderr, "atomdisk-sync-replay: cannot connect to node %d\n", rank);
    return 1;
  }
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  const auto period = std::chrono::duration<double>(1.0 / rate);
  long sent = 0;
  for (auto next = start; Clock::now() - start < std::chrono::duration<double>(duration_s);) {
    if (!atomdisk::bench::SendAll(fd, frame)) break;
    ++sent;
    next += std::chrono::duration_cast<Clock::duration>(period);
    std::this_thread::sleep_until(next);
  }
  const double took = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf("sent %ld Entries requests of %u sectors (%zu-byte frame) in %.1f s: %.1f/s\n", sent,
              count, frame.size(), took, static_cast<double>(sent) / took);
  ::close(fd);
  return 0;
}
