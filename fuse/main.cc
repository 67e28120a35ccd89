// atomdisk-fuse: mounts the cluster as a directory holding one file, `disk`.
//
//   atomdisk-fuse --config FILE [--node RANK|HOST:PORT]... MOUNTPOINT [-f] [-d] [-o OPTIONS]
//
// See docs/FUSE.md for the options and what they trade.
#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>
#include <vector>

#include "client/client.h"
#include "common/config.h"
#include "common/logging.h"
#include "common/metrics_server.h"
#include "fuse/disk_fs.h"
#include "fuse/fuse_metrics.h"
#include "fuse/mount.h"

namespace atomdisk::fuse {
namespace {

int Fail(const std::string& message, int code = 1) {
  std::fprintf(stderr, "atomdisk-fuse: %s\n", message.c_str());
  ReportDaemonReady(code);
  return code;
}

int Main(int argc, char** argv) {
  CLI::App app{"atomdisk-fuse: mount an atomdisk cluster as one file, MOUNTPOINT/disk"};
  std::string config_path;
  std::vector<std::string> nodes;
  std::string mountpoint_arg;
  bool foreground = false;
  bool debug = false;
  std::vector<std::string> o_args;
  std::string log_level = "info";
  app.add_option("--config", config_path, "cluster.toml")->required();
  app.add_option("--node", nodes,
                 "node to use, RANK or HOST:PORT; repeat; the first is preferred "
                 "(default: every node of the config in rank order)");
  app.add_option("mountpoint", mountpoint_arg, "an existing empty directory")->required();
  app.add_flag("-f,--foreground", foreground, "stay in the foreground");
  app.add_flag("-d,--debug", debug, "log every FUSE request (implies -f)");
  app.add_option("-o", o_args,
                 "comma-separated options: timeout=SECONDS, attempt_timeout=SECONDS, cached, "
                 "no_parallel_writes, threads=N, inflight=N, clone_fd, max_background=N, "
                 "metrics=HOST:PORT, and "
                 "libfuse mount options (allow_other, ...)")
      ->allow_extra_args(false);
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (debug) foreground = true;

  if (Status s = SetupLogging(log_level, "atomdisk-fuse"); !s.ok()) return Fail(s.ToString());
  MountTuning tuning;
  if (Status s = ParseMountOptions(o_args, &tuning); !s.ok()) return Fail(s.message());
  Result<std::string> mountpoint = ResolveMountpoint(mountpoint_arg);
  if (!mountpoint.ok()) return Fail(mountpoint.status().message());
  Result<ClusterConfig> config = LoadClusterConfig(config_path, ConfigUse::kClient);
  if (!config.ok()) return Fail(config.status().message());
  for (const std::string& w : config->warnings) {
    std::fprintf(stderr, "atomdisk-fuse: warning: %s\n", w.c_str());
  }
  Result<client::ClientOptions> client_options = client::OptionsFromConfig(*config, nodes);
  if (!client_options.ok()) return Fail(client_options.status().message());
  client_options->op_timeout = tuning.op_timeout;
  client_options->attempt_timeout = std::min(tuning.attempt_timeout, tuning.op_timeout);
  client_options->max_inflight = tuning.max_inflight;

  // Fork before any thread exists; the parent exits with the child's mount status.
  if (!foreground) DaemonizeWaitingForChild();
  BlockTerminationSignals();

  std::unique_ptr<client::Client> client = client::Client::Create(*client_options);
  // GET /metrics on a thread of its own (after the fork: threads do not survive it).
  FuseMetrics fuse_metrics(client.get());
  std::unique_ptr<metrics::MetricsServer> metrics_server;
  if (tuning.metrics_port != 0) {
    auto server = metrics::MetricsServer::Start(tuning.metrics_host, tuning.metrics_port,
                                                &fuse_metrics.registry());
    if (!server.ok()) {
      client->Close();
      return Fail(server.status().message());
    }
    metrics_server = std::move(server).value();
  }
  // Refuse to mount a dead file: at least one node must answer now.
  const auto probe_timeout =
      std::min<std::chrono::milliseconds>(tuning.op_timeout, std::chrono::seconds(3));
  std::vector<client::NodeInfo> probe = client->Probe(probe_timeout);
  std::size_t reachable = 0;
  std::string why;
  for (const client::NodeInfo& n : probe) {
    if (n.reachable) {
      ++reachable;
    } else {
      why += (why.empty() ? "" : "; ") + n.endpoint.ToString() + ": " + n.error;
    }
  }
  if (reachable == 0) {
    client->Close();
    return Fail("no node answered within " + std::to_string(probe_timeout.count()) +
                    " ms, not mounting (" + why + ")",
                2);
  }
  if (reachable < config->Majority()) {
    std::fprintf(stderr,
                 "atomdisk-fuse: warning: %zu of %zu nodes answered, fewer than a majority; "
                 "I/O waits for a quorum (%s)\n",
                 reachable, probe.size(), why.c_str());
  }

  DiskFsOptions fs_options;
  fs_options.sectors = config->sectors;
  fs_options.cached = tuning.cached;
  fs_options.parallel_direct_writes = tuning.parallel_direct_writes;
  fs_options.max_background = tuning.max_background;
  fs_options.uid = getuid();
  fs_options.gid = getgid();
  fs_options.metrics = &fuse_metrics;
  DiskFs fs(fs_options, client.get());

  SessionOptions session;
  session.mountpoint = *mountpoint;
  session.fsname = "atomdisk";
  session.debug = debug;
  session.tuning = tuning;
  SessionHooks hooks;
  hooks.parallel_writes = &DiskFs::ParallelWritesOf;
  hooks.on_mounted = [&](bool ok, const std::string& error) {
    if (!ok) {
      std::fprintf(stderr, "atomdisk-fuse: %s\n", error.c_str());
      ReportDaemonReady(1);
      return;
    }
    std::fprintf(stderr,
                 "atomdisk-fuse: mounted %s/disk (%llu sectors, %zu of %zu nodes reachable, %s "
                 "I/O, timeout %lld ms)\n",
                 session.mountpoint.c_str(), static_cast<unsigned long long>(config->sectors),
                 reachable, probe.size(), tuning.cached ? "cached" : "direct",
                 static_cast<long long>(tuning.op_timeout.count()));
    ReportDaemonReady(0);
    sd_notify(0, "READY=1");  // for Type=notify units; a no-op elsewhere
  };
  hooks.before_unmount = [&] {
    sd_notify(0, "STOPPING=1");
    // Let writes in flight finish (each is bounded by the operation timeout), then fail
    // whatever remains so that every request has had its one reply.
    if (!fs.Drain(tuning.op_timeout + std::chrono::seconds(1))) {
      spdlog::warn("fuse: writes still in flight at exit; failing them");
    }
    client->Close();
  };
  int rc = RunSession(session, DiskFs::Ops(), &fs, hooks);
  client->Close();
  return rc;
}

}  // namespace
}  // namespace atomdisk::fuse

int main(int argc, char** argv) { return atomdisk::fuse::Main(argc, argv); }
