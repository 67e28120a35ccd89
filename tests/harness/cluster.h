// TestCluster: real atomdiskd processes on loopback for integration tests.
//
//   auto cluster = atomdisk::testing::TestCluster::Start({.nodes = 3});
//   ASSERT_TRUE(cluster.ok()) << cluster.status().ToString();
//   ... use (*cluster)->config_path() with the client library or the CLI ...
//   ASSERT_TRUE((*cluster)->Kill9(2).ok());
//   ASSERT_TRUE((*cluster)->Restart(2).ok());
//
// Start() makes a fresh directory (mkdtemp under $TMPDIR or /tmp) holding cluster.toml,
// client.key, system.key (WriteNewCluster), each node's data_dir and a log per node, picks
// free 127.0.0.1 ports (bind to port 0, read the port, close), and starts one
// `atomdiskd --config DIR/cluster.toml --rank R --log-level LEVEL` per node, waiting
// (bounded, by connect retry) until each accepts connections, and then until every node
// votes (a new cluster's nodes register with each other first: docs/RESYNC.md). Another process
// could take a port between our probe and the daemon's bind; the daemon then fails to start and
// Start() reports it with the node's log tail.
//
// Ownership and clean-up: the TestCluster owns its processes and its directory. The
// destructor SIGKILLs every node still running, reaps it and removes the directory, also
// when a test assertion failed (set ATOMDISK_KEEP_TEST_DIR=1 to keep the directory for a
// post-mortem; its path is logged then). Each daemon is also started with
// PR_SET_PDEATHSIG = SIGKILL, so it dies with the test process even if that crashes and no
// destructor runs.
//
// Namespace: atomdisk::testing. Inside namespace atomdisk it hides gtest's `testing`, so
// spell gtest's as ::testing there (TEST/TEST_F already do).
//
// Threading: not thread-safe; use one TestCluster from one thread (the test's), which must
// outlive the nodes it starts (PR_SET_PDEATHSIG fires when the forking thread exits). The fork in
// StartNode is safe in a multithreaded test: the child only calls async-signal-safe
// functions before exec.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/status.h"

namespace atomdisk::testing {

struct TestClusterOptions {
  int nodes = 3;
  std::uint64_t sectors = 4096;
  std::string log_level = "warn";
  // Extra arguments for every atomdiskd (after the standard ones).
  std::vector<std::string> extra_args;
  // How long a node may take to accept connections after it was started.
  std::chrono::milliseconds start_timeout{10000};
  // How long Stop() waits after SIGTERM before it gives up and SIGKILLs.
  std::chrono::milliseconds stop_timeout{10000};
  // The daemon binary; empty means DaemonPath().
  std::string daemon;
  // Give every node a metrics_address on a free 127.0.0.1 port (config().nodes[i].metrics_port).
  bool metrics = false;
  // Top-level cluster.toml lines written at the top of the file (e.g. "max_connections = 32\n").
  std::string config_extra;
  // The cluster's tls setting (docs/TLS.md): "require" as `atomdisk init` writes it, "accept"
  // (same certificates; frames in clear accepted too: tests of the HMAC layer), or "off" (no
  // certificates at all).
  std::string tls = "require";
};

class TestCluster {
 public:
  // Creates the directory and the config and starts every node. On error, everything
  // started so far is killed and removed again; the status names the node and includes the
  // tail of its log.
  static Result<std::unique_ptr<TestCluster>> Start(TestClusterOptions options = {});
  // Like Start() but starts no node (for tests of start-up itself, or of the CLI's `init`).
  static Result<std::unique_ptr<TestCluster>> Create(TestClusterOptions options = {});

  ~TestCluster();
  TestCluster(const TestCluster&) = delete;
  TestCluster& operator=(const TestCluster&) = delete;

  // The build's atomdiskd: the compile definition ATOMDISK_DAEMON_BIN, overridable with
  // $ATOMDISK_DAEMON. Whether it exists is for the caller to check (DaemonAvailable()).
  static std::string DaemonPath();
  static bool DaemonAvailable();

  const std::string& dir() const { return dir_; }
  const std::string& config_path() const { return config_path_; }
  const ClusterConfig& config() const { return config_; }
  int size() const { return static_cast<int>(config_.nodes.size()); }
  std::string Address(int rank) const;  // "127.0.0.1:PORT"
  std::string DataDir(int rank) const;
  std::string LogPath(int rank) const;
  // The last `lines` lines of a node's log (stdout and stderr of every run, appended).
  std::string LogTail(int rank, int lines = 20) const;

  // Starts a node that is not running and waits until it accepts connections. Error if it
  // is already running, exits early, or does not listen within start_timeout.
  Status StartNode(int rank);
  // SIGKILL and reap. OK if it was not running.
  Status Kill9(int rank);
  // SIGTERM and wait for it to exit (bounded by stop_timeout; then SIGKILL and an error).
  // Returns an error too if it exited with a non-zero status or a signal other than SIGTERM.
  Status Stop(int rank);
  // Stop (if running) and StartNode.
  Status Restart(int rank);
  // From its next start on, node `rank` runs with this config file instead of config_path()
  // (a node in the middle of a rolling change of settings); empty: config_path() again.
  void SetNodeConfig(int rank, std::string path) { node_config_[rank] = std::move(path); }
  // Kills every node (SIGKILL); for the end of a test or a whole-cluster crash.
  void KillAll();
  // Starts every node that is not running.
  Status StartAll();
  // Node `rank`'s kInfo answer (JSON text: docs/PROTOCOL.md), on a fresh connection, within
  // `timeout`.
  Result<std::string> Info(int rank, std::chrono::milliseconds timeout = std::chrono::seconds(2));
  // Waits until node `rank` says it votes (kInfo "voting": true; docs/RESYNC.md), bounded by
  // `timeout`; Timeout with the node's state and log tail otherwise.
  Status WaitVoting(int rank, std::chrono::milliseconds timeout);

  bool IsRunning(int rank);   // reaps it if it exited
  pid_t Pid(int rank) const;  // -1 when not running

 private:
  explicit TestCluster(TestClusterOptions options);
  Status Init();
  Status WaitListening(int rank);

  TestClusterOptions options_;
  std::string dir_;
  std::string config_path_;
  std::map<int, std::string> node_config_;
  ClusterConfig config_;
  std::map<int, pid_t> pids_;  // running nodes by rank
};

// Runs a program to completion with arguments, optional standard input and a deadline,
// capturing standard output and error. For CLI tests. A program that outlives the deadline
// is SIGKILLed and reported with timed_out = true.
struct ProcessResult {
  int exit_code = -1;  // -1 if killed by a signal
  int signal = 0;      // the signal that ended it, or 0
  bool timed_out = false;
  std::string out;
  std::string err;
  // "exit 2; stderr: ..." for assertion messages.
  std::string Describe() const;
};
struct RunOptions {
  std::string stdin_data;
  std::chrono::milliseconds timeout{60000};
  std::vector<std::string> env;  // extra "NAME=VALUE" entries
  std::string cwd;               // empty: inherit
};
ProcessResult RunProcess(const std::vector<std::string>& argv, const RunOptions& options = {});

// Polls `condition` every few milliseconds until it is true or `timeout` passes; returns the
// last value. The way to wait for something in these tests (never a bare sleep).
bool WaitFor(const std::function<bool()>& condition, std::chrono::milliseconds timeout);

// True when built with AddressSanitizer or ThreadSanitizer: the daemons run several times
// slower, so timing bounds are looser and load-driven tests are smaller.
bool UnderSanitizer();

}  // namespace atomdisk::testing
