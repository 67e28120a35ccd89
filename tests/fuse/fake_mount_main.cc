// atomdisk-fuse-fake: the FUSE front-end over an in-memory FakeClient, for tests of the
// FUSE layer that need no daemons. Foreground only.
//
//   atomdisk-fuse-fake --sectors N [--latency-us US] [--down-file PATH] MOUNTPOINT [-o ...]
//
// While PATH exists, every operation fails after the timeout as if no quorum were reachable.
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cstdio>
#include <thread>

#include "common/logging.h"
#include "fuse/disk_fs.h"
#include "fuse/mount.h"
#include "tests/fuse/fake_client.h"

int main(int argc, char** argv) {
  using namespace atomdisk;
  using namespace atomdisk::fuse;
  CLI::App app{"atomdisk-fuse-fake"};
  std::uint64_t sectors = 16384;
  std::int64_t latency_us = 0;
  std::string down_file;
  std::string mountpoint_arg;
  std::vector<std::string> o_args;
  app.add_option("--sectors", sectors);
  app.add_option("--latency-us", latency_us);
  app.add_option("--down-file", down_file);
  app.add_option("mountpoint", mountpoint_arg)->required();
  bool foreground_ignored = true;
  app.add_flag("-f", foreground_ignored, "ignored: always in the foreground");
  app.add_option("-o", o_args);
  CLI11_PARSE(app, argc, argv);
  if (Status s = SetupLogging("info", "atomdisk-fuse-fake"); !s.ok()) return 1;
  MountTuning tuning;
  if (Status s = ParseMountOptions(o_args, &tuning); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.message().c_str());
    return 1;
  }
  Result<std::string> mountpoint = ResolveMountpoint(mountpoint_arg);
  if (!mountpoint.ok()) {
    std::fprintf(stderr, "%s\n", mountpoint.status().message().c_str());
    return 1;
  }
  BlockTerminationSignals();
  FakeClient client(sectors, std::chrono::microseconds(latency_us), tuning.op_timeout);
  std::atomic<bool> stop{false};
  std::thread watcher;
  if (!down_file.empty()) {
    watcher = std::thread([&] {
      while (!stop) {
        struct stat st;
        client.SetDown(stat(down_file.c_str(), &st) == 0);
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    });
  }
  DiskFsOptions fs_options;
  fs_options.sectors = sectors;
  fs_options.cached = tuning.cached;
  fs_options.parallel_direct_writes = tuning.parallel_direct_writes;
  fs_options.max_background = tuning.max_background;
  fs_options.uid = getuid();
  fs_options.gid = getgid();
  DiskFs fs(fs_options, &client);
  SessionOptions session;
  session.mountpoint = *mountpoint;
  session.fsname = "atomdisk-fake";
  session.tuning = tuning;
  SessionHooks hooks;
  hooks.parallel_writes = &DiskFs::ParallelWritesOf;
  hooks.on_mounted = [](bool ok, const std::string& error) {
    std::fprintf(stderr, "atomdisk-fuse-fake: %s\n", ok ? "mounted" : error.c_str());
  };
  hooks.before_unmount = [&] {
    fs.Drain(tuning.op_timeout + std::chrono::seconds(1));
    client.Close();
  };
  int rc = RunSession(session, DiskFs::Ops(), &fs, hooks);
  stop = true;
  if (watcher.joinable()) watcher.join();
  std::fprintf(stderr,
               "atomdisk-fuse-fake: %llu sector reads, %llu writes, %llu rmw, %llu "
               "opens with parallel direct writes\n",
               static_cast<unsigned long long>(fs.sector_reads()),
               static_cast<unsigned long long>(fs.sector_writes()),
               static_cast<unsigned long long>(fs.rmw_sectors()),
               static_cast<unsigned long long>(fs.parallel_writes().patched()));
  return rc;
}
