// atomdisk-slow-readers: clients that ask a node for responses and never read them, as issue
// 17's slow-loris reader did. Opens N connections to one node, sends each K extent reads of
// 256 sectors (1 MiB of response each), signed with the client key, reads nothing, and holds
// the connections for S seconds; then prints how many the node closed meanwhile.
// scripts/bench-slow-readers.sh samples the node's RSS around it.
//
//   atomdisk-slow-readers --config cluster.toml --node 1 [--connections 100] [--reads 48]
//       [--hold 20]
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include "common/config.h"
#include "common/hmac.h"
#include "common/wire.h"
#include "tests/bench/bench_socket.h"

int main(int argc, char** argv) {
  CLI::App app{"clients that ask for responses and never read them"};
  std::string config_path;
  int rank = 1, connections = 100, reads = 48, hold_s = 20;
  app.add_option("--config", config_path, "cluster.toml")->required();
  app.add_option("--node", rank, "rank of the node to connect to");
  app.add_option("--connections", connections, "connections to open")->check(CLI::Range(1, 100000));
  app.add_option("--reads", reads, "extent reads of 256 sectors per connection")
      ->check(CLI::Range(1, 100000));
  app.add_option("--hold", hold_s, "seconds to hold the connections")->check(CLI::Range(0, 3600));
  CLI11_PARSE(app, argc, argv);
  auto config = atomdisk::LoadClusterConfig(config_path);
  if (!config.ok()) {
    std::fprintf(stderr, "atomdisk-slow-readers: %s\n", config.status().ToString().c_str());
    return 2;
  }
  const atomdisk::NodeConfig* node = config->FindNode(static_cast<atomdisk::Rank>(rank));
  if (node == nullptr) {
    std::fprintf(stderr, "atomdisk-slow-readers: no node %d in %s\n", rank, config_path.c_str());
    return 2;
  }
  atomdisk::Hmac mac(config->client_key);
  std::vector<int> fds;
  for (int c = 0; c < connections; ++c) {
    int fd = atomdisk::bench::Dial(node->host, node->port);
    if (fd < 0) continue;
    for (int i = 0; i < reads; ++i) {
      atomdisk::ClientCommand cmd;
      cmd.request_id = static_cast<std::uint64_t>(i) + 1;
      cmd.op = atomdisk::ClientOp::kReadExtent;
      cmd.sector = 0;
      cmd.count = atomdisk::kMaxExtentSectors;
      if (!atomdisk::bench::SendAll(fd, atomdisk::EncodeFrame(cmd, mac))) break;
    }
    fds.push_back(fd);
  }
  std::printf("opened %zu of %d connections, %d reads of 1 MiB asked on each\n", fds.size(),
              connections, reads);
  std::fflush(stdout);
  std::this_thread::sleep_for(std::chrono::seconds(hold_s));
  int closed = 0;
  for (int fd : fds) closed += atomdisk::bench::PeerClosed(fd) ? 1 : 0;
  std::printf("after %d s: %d of %zu closed by the node\n", hold_s, closed, fds.size());
  for (int fd : fds) ::close(fd);
  return 0;
}
