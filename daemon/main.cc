// atomdiskd: one node of an atomdisk cluster.
//
//   atomdiskd --config cluster.toml --rank 1 [--data-dir DIR] [--log-level LEVEL]
//             [--preallocate]
//
// Exit codes: 0 clean stop (SIGTERM/SIGINT), 1 runtime failure (cannot listen, data_dir in
// use or unusable), 2 bad command line or configuration.
#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>

#include <CLI/CLI.hpp>
#include <boost/asio.hpp>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <thread>

#include "common/config.h"
#include "common/logging.h"
#include "common/metrics_server.h"
#include "daemon/node.h"
#include "daemon/node_metrics.h"
#include "daemon/store/identity.h"
#include "daemon/store/sector_store.h"
#include "daemon/version.h"

namespace {

int Fail(int code, const std::string& message) {
  std::fprintf(stderr, "atomdiskd: %s\n", message.c_str());
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace atomdisk;
  CLI::App app{
      "atomdiskd: one node of an atomdisk cluster (a linearizable, replicated block "
      "device)"};
  std::string config_path, data_dir, log_level = "info";
  int rank = 0;
  app.add_option("--config", config_path, "cluster configuration file (TOML)")->required();
  app.add_option("--rank", rank, "this node's rank in the configuration")->required();
  app.add_option("--data-dir", data_dir, "override the node's data_dir from the configuration");
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, critical, off");
  bool preallocate = false;
  app.add_flag("--preallocate", preallocate,
               "reserve the blocks of sectors.dat for the whole device at start-up (fallocate) "
               "instead of leaving it sparse");
  app.set_version_flag("--version", std::string("atomdiskd ") + kAtomdiskVersion);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }

  if (Status s = SetupLogging(log_level, "atomdiskd"); !s.ok()) return Fail(2, s.message());
  auto config = LoadClusterConfig(config_path);
  if (!config.ok()) return Fail(2, config.status().message());
  for (const std::string& w : config->warnings) spdlog::warn("{}", w);
  if (rank < 1 || rank > kMaxRank || !config->FindNode(static_cast<Rank>(rank))) {
    return Fail(2, config_path + ": no node with rank " + std::to_string(rank));
  }
  const NodeConfig& me = *config->FindNode(static_cast<Rank>(rank));
  if (data_dir.empty()) data_dir = me.data_dir;
  if (data_dir.empty()) {
    return Fail(2, config_path + ": node " + std::to_string(rank) +
                       " has no data_dir; give one there or with --data-dir");
  }

  // Fed by the store's sync thread and the node's io thread; served (if metrics_address is
  // set) from a thread of its own (docs/OPERATIONS.md, "Metrics").
  NodeMetrics node_metrics(*config, static_cast<Rank>(rank));
  const std::string metrics_host = me.metrics_host;
  const std::uint16_t metrics_port = me.metrics_port;

  SectorStore::Options store_options;
  store_options.sectors = config->sectors;
  store_options.preallocate = preallocate;
  store_options.on_sync = [&node_metrics](std::size_t sectors, double seconds) {
    node_metrics.StoreSync(sectors, seconds);
  };
  auto store = SectorStore::Open(data_dir, store_options);
  if (!store.ok()) return Fail(1, store.status().message());

  // Which cluster and rank this data_dir belongs to, and whether it may vote
  // (docs/RESYNC.md).
  NodeMembership membership;
  membership.data_dir = data_dir;
  auto identity = LoadIdentity(data_dir);
  if (!identity.ok()) return Fail(1, identity.status().message());
  membership.identity = *identity;
  if (membership.identity) {
    const Identity& id = *membership.identity;
    if (id.cluster_id != config->ClusterId()) {
      return Fail(2, IdentityPath(data_dir) + " belongs to cluster " + id.cluster_id.ToString() +
                         ", but " + config_path + " is cluster " + config->ClusterId().ToString() +
                         "; refusing to mix them (wrong data_dir or wrong config?)");
    }
    if (id.rank != rank) {
      return Fail(2, IdentityPath(data_dir) + " belongs to rank " + std::to_string(id.rank) +
                         ", not " + std::to_string(rank) + "; refusing to start");
    }
  } else {
    bool any = false;
    Status s = (*store)->ScanRange(0, config->sectors, /*verify_all=*/false,
                                   [&](SectorIdx, Tag, bool) { any = true; });
    if (!s.ok()) return Fail(1, "cannot scan " + data_dir + ": " + s.message());
    membership.store_empty = !any;
  }

  boost::asio::io_context io(1);
  Node node(io, std::move(config).value(), static_cast<Rank>(rank), std::move(store).value(),
            std::move(membership));
  node.SetMetrics(&node_metrics);
  if (Status s = node.Listen(); !s.ok()) return Fail(1, s.message());
  std::unique_ptr<metrics::MetricsServer> metrics_server;
  if (metrics_port != 0) {
    auto server =
        metrics::MetricsServer::Start(metrics_host, metrics_port, &node_metrics.registry());
    if (!server.ok()) return Fail(1, server.status().message());
    metrics_server = std::move(server).value();
    spdlog::info("metrics at http://{}:{}/metrics", metrics_host, metrics_port);
  }
  if (Status s = node.Start(); !s.ok()) return Fail(1, s.message());
  spdlog::info("atomdiskd {} rank {} serving on {} (data_dir {})", kAtomdiskVersion, rank,
               me.Address(), data_dir);
  sd_notify(0, "READY=1");

  int exit_code = 0;
  node.SetOnFatal([&](const std::string& why) {
    // Like PostgreSQL after a failed fsync: do not guess what reached the disk; restart
    // (systemd's Restart=on-failure) and read it back.
    spdlog::critical("{}; exiting so that the node restarts and rereads its disk", why);
    exit_code = 1;
    node.Stop();
    io.stop();
  });
  boost::asio::signal_set signals(io, SIGINT, SIGTERM);
  std::mutex stop_mu;
  std::condition_variable stop_cv;
  bool loop_done = false;
  std::thread watchdog;
  signals.async_wait([&](boost::system::error_code ec, int signo) {
    if (ec) return;
    spdlog::info("signal {}: stopping", signo);
    sd_notify(0, "STOPPING=1");
    node.Stop();
    // The loop ends by itself once the closed connections' handlers finish; if something
    // still holds it after 2 s, end it regardless.
    watchdog = std::thread([&] {
      std::unique_lock lock(stop_mu);
      if (!stop_cv.wait_for(lock, std::chrono::seconds(2), [&] { return loop_done; })) io.stop();
    });
  });
  io.run();
  {
    std::lock_guard lock(stop_mu);
    loop_done = true;
  }
  stop_cv.notify_all();
  if (watchdog.joinable()) watchdog.join();
  spdlog::info("stopped");
  return exit_code;
}
