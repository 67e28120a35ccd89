// atomdisk-fuse: mounts the cluster as a directory holding one file, `disk`.
//
//   atomdisk-fuse --config FILE [--node RANK|HOST:PORT]... MOUNTPOINT [-f] [-d] [-o OPTIONS]
//
// Exit codes: 0 mounted (without -f) or a clean stop, 1 runtime failure (the mount failed),
// 2 bad command line or configuration (also a MOUNTPOINT that is not an empty directory,
// or no node answering at start-up). See docs/FUSE.md for the options and what they trade.
#include <spdlog/sinks/syslog_sink.h>
#include <spdlog/spdlog.h>
#include <syslog.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "client/client.h"
#include "common/build_info.h"
#include "common/config.h"
#include "common/logging.h"
#include "common/malloc_tuning.h"
#include "common/metrics_server.h"
#include "fuse/disk_fs.h"
#include "fuse/fuse_metrics.h"
#include "fuse/mount.h"

namespace atomdisk::fuse {
namespace {

constexpr int kExitRuntime = 1;
constexpr int kExitUsage = 2;

// Logs a start-up error (after SetupLogging) and tells a waiting parent.
int Fail(const std::string& message, int code = kExitRuntime) {
  spdlog::error("{}", message);
  ReportDaemonReady(code);
  return code;
}

// Without -f the process detaches once mounted and its standard error goes to /dev/null:
// from the fork on, every log line also goes to syslog (ident atomdisk-fuse, facility
// daemon; under systemd, syslog(3) lands in the journal). Call before any thread starts.
void AlsoLogToSyslog() {
  auto sink =
      std::make_shared<spdlog::sinks::syslog_sink_mt>("atomdisk-fuse", LOG_PID, LOG_DAEMON, false);
  spdlog::default_logger()->sinks().push_back(std::move(sink));
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
  app.add_option("--config", config_path, "cluster.toml")->required()->type_name("FILE");
  // One value per --node: a flag-less word after it is the mount point.
  app.add_option("--node", nodes,
                 "node to use, RANK or HOST:PORT; repeat; the first is preferred "
                 "(default: every node of the config in rank order)")
      ->type_name("RANK|HOST:PORT")
      ->allow_extra_args(false);
  app.add_option("mountpoint", mountpoint_arg, "an existing empty directory, not a mount point")
      ->required();
  app.add_flag("-f,--foreground", foreground, "stay in the foreground");
  app.add_flag("-d,--debug", debug, "log every FUSE request (implies -f)");
  app.add_option("-o", o_args,
                 "comma-separated options: timeout=SECONDS, attempt_timeout=SECONDS, cached, "
                 "no_parallel_writes, threads=N, inflight=N, clone_fd, max_background=N, "
                 "metrics=HOST:PORT, and "
                 "libfuse mount options (allow_other, ...)")
      ->allow_extra_args(false);
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, critical, off");
  app.set_version_flag("--version", VersionLine("atomdisk-fuse"));
  app.footer(
      "Logs: one line per event on standard error, `TIME LEVEL atomdisk-fuse: MESSAGE` (under\n"
      "systemd, the journal). Without -f they also go to syslog (ident atomdisk-fuse, facility\n"
      "daemon), since standard error is closed once the mount is up.\n"
      "Stop: fusermount3 -u MOUNTPOINT, or SIGTERM/SIGINT, which wait while the mount is in\n"
      "use (a loop device, an open file); a second signal forces.\n"
      "Exit codes: 0 mounted (without -f) or a clean stop, 1 runtime failure, 2 usage or\n"
      "configuration error. See docs/FUSE.md.\n");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    if (SetupLogging("info", "atomdisk-fuse").ok()) {
      spdlog::error("{} (atomdisk-fuse --help shows the usage)", e.what());
    }
    return kExitUsage;
  }
  if (debug) foreground = true;

  if (Status s = SetupLogging(log_level, "atomdisk-fuse"); !s.ok()) {
    if (SetupLogging("info", "atomdisk-fuse").ok()) spdlog::error("--log-level: {}", s.message());
    return kExitUsage;
  }
  MountTuning tuning;
  if (Status s = ParseMountOptions(o_args, &tuning); !s.ok()) return Fail(s.message(), kExitUsage);
  Result<std::string> mountpoint = ResolveMountpoint(mountpoint_arg);
  if (!mountpoint.ok()) return Fail(mountpoint.status().message(), kExitUsage);
  Result<ClusterConfig> config = LoadClusterConfig(config_path, ConfigUse::kClient);
  if (!config.ok()) return Fail(config.status().message(), kExitUsage);
  for (const std::string& w : config->warnings) spdlog::warn("{}", w);
  if (MallocTuning t = TuneMallocForLargeBuffers(); !t.applied) {
    spdlog::debug("allocator left at glibc's settings: {}", t.why);
  }
  Result<client::ClientOptions> client_options = client::OptionsFromConfig(*config, nodes);
  if (!client_options.ok()) return Fail(client_options.status().message(), kExitUsage);
  client_options->op_timeout = tuning.op_timeout;
  client_options->attempt_timeout = std::min(tuning.attempt_timeout, tuning.op_timeout);
  client_options->max_inflight = tuning.max_inflight;

  // Fork before any thread exists; the parent exits with the child's mount status.
  if (!foreground) {
    DaemonizeWaitingForChild();
    AlsoLogToSyslog();
  }
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
  std::size_t reachable = 0, key_rejected = 0;
  std::string why;
  for (const client::NodeInfo& n : probe) {
    if (n.reachable) {
      ++reachable;
    } else {
      key_rejected += n.key_rejected ? 1 : 0;
      why += (why.empty() ? "" : "; ") + n.endpoint.ToString() + ": " + n.error;
    }
  }
  if (reachable == 0 && key_rejected > 0) {
    client->Close();
    return Fail("the client key does not match the cluster's: " + std::to_string(key_rejected) +
                    " of " + std::to_string(probe.size()) +
                    " nodes answered and rejected it, not mounting (" + why + ")",
                2);
  }
  if (reachable == 0) {
    client->Close();
    return Fail("no node answered within " + std::to_string(probe_timeout.count()) +
                    " ms, not mounting (" + why + ")",
                2);
  }
  if (reachable < config->Majority()) {
    spdlog::warn("{} of {} nodes answered, fewer than a majority; I/O waits for a quorum ({})",
                 reachable, probe.size(), why);
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
      spdlog::error("{}", error);
      ReportDaemonReady(kExitRuntime);
      return;
    }
    spdlog::info("mounted {}/disk ({} sectors, {} of {} nodes reachable, {} I/O, timeout {} ms)",
                 session.mountpoint, config->sectors, reachable, probe.size(),
                 tuning.cached ? "cached" : "direct", tuning.op_timeout.count());
    ReportDaemonReady(0);
    sd_notify(0, "READY=1");  // for Type=notify units; a no-op elsewhere
  };
  hooks.stopping = [](const std::string& status) {
    sd_notify(0, ("STOPPING=1\nSTATUS=" + status).c_str());
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
