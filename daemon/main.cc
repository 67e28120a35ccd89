// atomdiskd: one node of an atomdisk cluster.
//
//   atomdiskd --config cluster.toml --rank 1 [--data-dir DIR] [--log-level LEVEL]
//             [--preallocate] [--bootstrap]
//
// --bootstrap prepares an empty data_dir as a founding member of a new cluster (an IDENTITY
// with genesis = true, docs/RESYNC.md "Bootstrapping a new cluster") and exits: run it once
// per node when the cluster is created, never in a unit and never for a replaced disk.
//
// Exit codes: 0 clean stop (SIGTERM/SIGINT); 1 runtime failure, which a restart may cure
// (cannot listen, data_dir in use by another process, I/O errors, permissions); 2 bad command
// line or configuration, which no restart cures (bad flags or config, a data_dir whose parent
// is missing or that is not a folder, a device shrunk below the data stored, a data_dir
// whose IDENTITY names another cluster or rank or does not parse). atomdiskd@.service
// restarts on 1, not on 2 (RestartPreventExitStatus=2).
//
// Every line on stderr, start-up errors included, has the form of common/logging.h.
#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>

#include <CLI/CLI.hpp>
#include <boost/asio.hpp>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "common/build_info.h"
#include "common/config.h"
#include "common/logging.h"
#include "common/malloc_tuning.h"
#include "common/metrics_server.h"
#include "daemon/core/node_metrics.h"
#include "daemon/net/node_server.h"
#include "daemon/store/sector_store.h"
#include "daemon/sync/identity.h"

namespace {

constexpr int kExitRuntime = 1;
constexpr int kExitConfig = 2;

// Logs why the daemon does not start (one error line) and returns `code`.
int Fail(int code, const std::string& message) {
  spdlog::error("{}", message);
  return code;
}

// --bootstrap: writes the genesis IDENTITY into an empty data_dir (the store is open, so no
// running node uses it) and returns the exit code.
int Bootstrap(const atomdisk::ClusterConfig& config, atomdisk::Rank rank,
              const std::string& data_dir, const atomdisk::NodeMembership& membership) {
  using namespace atomdisk;
  if (membership.identity) {
    if (membership.identity->genesis) {
      spdlog::info(
          "{} is already a founding member of cluster {} (rank {}); start atomdiskd "
          "without --bootstrap",
          data_dir, config.ClusterId().ToString(), rank);
      return 0;
    }
    return Fail(kExitConfig,
                "--bootstrap: " + IdentityPath(data_dir) +
                    " exists: this data_dir is already a member of the cluster; --bootstrap is "
                    "only for the empty data_dirs of a new cluster");
  }
  if (!membership.store_empty) {
    return Fail(kExitConfig, "--bootstrap: " + data_dir +
                                 " holds data; --bootstrap is only for the empty data_dirs of a "
                                 "new cluster");
  }
  Identity genesis;
  genesis.cluster_id = config.ClusterId();
  genesis.rank = rank;
  genesis.genesis = true;
  if (Status s = SaveIdentity(data_dir, genesis); !s.ok()) return Fail(kExitRuntime, s.message());
  spdlog::info(
      "{} is now a founding member of cluster {} (rank {}): the cluster serves once a majority "
      "of its nodes runs; start atomdiskd without --bootstrap",
      data_dir, config.ClusterId().ToString(), rank);
  return 0;
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
  bool bootstrap = false;
  app.add_flag("--bootstrap", bootstrap,
               "prepare this node's empty data_dir as a founding member of a NEW cluster, so "
               "the cluster serves once a majority of its nodes is up, then exit; never for a "
               "replaced disk of an existing cluster (docs/RESYNC.md)");
  app.set_version_flag("--version", VersionLine("atomdiskd"));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    // A bad command line is logged like any other start-up error.
    (void)SetupLogging("info", "atomdiskd");
    return Fail(kExitConfig, std::string(e.what()) + " (atomdiskd --help lists the flags)");
  }

  // Sets up logging at info even when the level is bad, so that this too is logged.
  if (Status s = SetupLogging(log_level, "atomdiskd"); !s.ok()) {
    return Fail(kExitConfig, "--log-level: " + s.message());
  }
  auto config = LoadClusterConfig(config_path);
  if (!config.ok()) return Fail(kExitConfig, config.status().message());
  for (const std::string& w : config->warnings) spdlog::warn("{}", w);
  if (MallocTuning t = TuneMallocForLargeBuffers(); !t.applied) {
    spdlog::debug("allocator left at glibc's settings: {}", t.why);
  }
  if (rank < 1 || rank > kMaxRank || !config->FindNode(static_cast<Rank>(rank))) {
    return Fail(kExitConfig, config_path + ": no node with rank " + std::to_string(rank));
  }
  const NodeConfig& me = *config->FindNode(static_cast<Rank>(rank));
  if (data_dir.empty()) data_dir = me.data_dir;
  if (data_dir.empty()) {
    return Fail(kExitConfig, config_path + ": node " + std::to_string(rank) +
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
  if (!store.ok()) {
    // InvalidArgument: the data_dir or the device size as configured cannot work (a missing
    // parent, not a folder, data past the configured end); anything else may pass.
    const bool config_error = store.status().code() == StatusCode::kInvalidArgument;
    return Fail(config_error ? kExitConfig : kExitRuntime, store.status().message());
  }

  // Which cluster and rank this data_dir belongs to, and whether it may vote
  // (docs/RESYNC.md).
  NodeMembership membership;
  membership.data_dir = data_dir;
  auto identity = LoadIdentity(data_dir);
  if (!identity.ok()) {
    if (identity.status().code() == StatusCode::kCorruption) {
      // No restart makes it readable. Without it the node rejoins like an empty disk.
      return Fail(kExitConfig, identity.status().message() +
                                   "; move it away to let the node rejoin (docs/OPERATIONS.md)");
    }
    return Fail(kExitRuntime, identity.status().message());
  }
  membership.identity = *identity;
  if (membership.identity) {
    const Identity& id = *membership.identity;
    if (id.cluster_id != config->ClusterId()) {
      return Fail(kExitConfig, IdentityPath(data_dir) + " belongs to cluster " +
                                   id.cluster_id.ToString() + ", but " + config_path +
                                   " is cluster " + config->ClusterId().ToString() +
                                   "; refusing to mix them (wrong data_dir or wrong config?)");
    }
    if (id.rank != rank) {
      return Fail(kExitConfig, IdentityPath(data_dir) + " belongs to rank " +
                                   std::to_string(id.rank) + ", not " + std::to_string(rank) +
                                   "; refusing to start");
    }
  } else {
    bool any = false;
    Status s = (*store)->ScanRange(0, config->sectors, /*verify_all=*/false,
                                   [&](SectorIdx, Tag, bool) { any = true; });
    if (!s.ok()) return Fail(kExitRuntime, "cannot scan " + data_dir + ": " + s.message());
    membership.store_empty = !any;
  }
  if (bootstrap) return Bootstrap(*config, static_cast<Rank>(rank), data_dir, membership);

  boost::asio::io_context io(1);
  NodeServer node(io, std::move(config).value(), static_cast<Rank>(rank), std::move(store).value(),
                  std::move(membership));
  // Before Listen: once a client can connect, SIGTERM must already mean a clean stop (until
  // the wait below, signals are queued).
  boost::asio::signal_set signals(io, SIGINT, SIGTERM);
  node.SetMetrics(&node_metrics);
  if (Status s = node.Listen(); !s.ok()) return Fail(kExitRuntime, s.message());
  std::unique_ptr<metrics::MetricsServer> metrics_server;
  if (metrics_port != 0) {
    auto server =
        metrics::MetricsServer::Start(metrics_host, metrics_port, &node_metrics.registry());
    if (!server.ok()) return Fail(kExitRuntime, server.status().message());
    metrics_server = std::move(server).value();
    spdlog::info("metrics at http://{}:{}/metrics", metrics_host, metrics_port);
  }
  // Before Start: a node that cannot save its IDENTITY fails inside it.
  int exit_code = 0;
  node.SetOnFatal([&](const std::string& why) {
    // Like PostgreSQL after a failed fsync: do not guess what reached the disk; restart
    // (systemd's Restart=on-failure) and read it back.
    spdlog::critical("{}; exiting so that the node restarts and rereads its disk", why);
    exit_code = kExitRuntime;
    node.Stop();
    io.stop();
  });
  if (Status s = node.Start(); !s.ok()) return Fail(kExitRuntime, s.message());
  if (exit_code != 0) return exit_code;  // failed inside Start (logged by the handler)
  spdlog::info("atomdiskd {} (revision {}) rank {} serving on {} (data_dir {})", BuildVersion(),
               BuildRevision(), rank, me.Address(), data_dir);
  sd_notify(0, "READY=1");

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
