#include "tests/harness/cluster.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "common/hmac.h"
#include "common/wire.h"

extern char** environ;

#ifndef ATOMDISK_DAEMON_BIN
#define ATOMDISK_DAEMON_BIN ""
#endif

namespace atomdisk::testing {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// Picks `n` distinct free loopback ports: bind each to port 0 and hold all of them until
// every port is known, so the same port is not handed out twice.
Result<std::vector<std::uint16_t>> FreePorts(int n) {
  std::vector<int> fds;
  std::vector<std::uint16_t> ports;
  Status error;
  for (int i = 0; i < n && error.ok(); ++i) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      error = Status::FromErrno("socket", errno);
      break;
    }
    fds.push_back(fd);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    socklen_t len = sizeof addr;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      error = Status::FromErrno("bind to a free port", errno);
      break;
    }
    ports.push_back(ntohs(addr.sin_port));
  }
  for (int fd : fds) ::close(fd);
  if (!error.ok()) return error;
  return ports;
}

bool CanConnect(std::uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    return std::string("was killed by signal ") + std::to_string(WTERMSIG(status)) + " (" +
           ::strsignal(WTERMSIG(status)) + ")";
  }
  return "changed state " + std::to_string(status);
}

// argv/envp as the char* arrays exec wants, built before fork (no allocation after it).
struct ExecArgs {
  std::vector<std::string> storage;
  std::vector<char*> argv, envp;
  ExecArgs(const std::vector<std::string>& args, const std::vector<std::string>& extra_env) {
    storage = args;
    std::size_t env_start = storage.size();
    // Extra entries replace inherited ones of the same name (getenv takes the first).
    auto overridden = [&](const char* entry) {
      for (const auto& e : extra_env) {
        std::size_t eq = e.find('=');
        if (eq != std::string::npos && std::strncmp(entry, e.c_str(), eq + 1) == 0) return true;
      }
      return false;
    };
    for (char** e = environ; *e != nullptr; ++e) {
      if (!overridden(*e)) storage.emplace_back(*e);
    }
    for (const auto& e : extra_env) storage.push_back(e);
    for (std::size_t i = 0; i < env_start; ++i) argv.push_back(storage[i].data());
    argv.push_back(nullptr);
    for (std::size_t i = env_start; i < storage.size(); ++i) envp.push_back(storage[i].data());
    envp.push_back(nullptr);
  }
};

// In a forked child: only async-signal-safe calls from here to exec.
[[noreturn]] void ExecChild(const ExecArgs& args, const char* cwd) {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  ::sigaction(SIGPIPE, &dfl, nullptr);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  if (cwd != nullptr && ::chdir(cwd) != 0) ::_exit(126);
  ::execve(args.argv[0], args.argv.data(), args.envp.data());
  const char msg[] = "exec failed\n";
  ssize_t ignored = ::write(STDERR_FILENO, msg, sizeof msg - 1);
  (void)ignored;
  ::_exit(127);
}

}  // namespace

std::string ProcessResult::Describe() const {
  std::string s = timed_out ? "timed out"
                  : signal  ? "signal " + std::to_string(signal)
                            : "exit " + std::to_string(exit_code);
  return s + "; stdout: " + out.substr(0, 2000) + "; stderr: " + err.substr(0, 2000);
}

bool WaitFor(const std::function<bool()>& condition, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  while (true) {
    if (condition()) return true;
    if (Clock::now() >= deadline) return condition();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

ProcessResult RunProcess(const std::vector<std::string>& argv, const RunOptions& options) {
  ProcessResult result;
  // A child that closes its stdin early must not kill us with SIGPIPE.
  static const bool kIgnoredSigpipe = [] {
    std::signal(SIGPIPE, SIG_IGN);
    return true;
  }();
  (void)kIgnoredSigpipe;
  ExecArgs args(argv, options.env);
  int in[2], out[2], err[2];
  if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) {
    result.err = std::string("pipe: ") + std::strerror(errno);
    return result;
  }
  const char* cwd = options.cwd.empty() ? nullptr : options.cwd.c_str();
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(in[0], STDIN_FILENO);
    ::dup2(out[1], STDOUT_FILENO);
    ::dup2(err[1], STDERR_FILENO);
    ExecChild(args, cwd);
  }
  ::close(in[0]);
  ::close(out[1]);
  ::close(err[1]);
  if (pid < 0) {
    result.err = std::string("fork: ") + std::strerror(errno);
    ::close(in[1]);
    ::close(out[0]);
    ::close(err[0]);
    return result;
  }
  ::fcntl(in[1], F_SETFL, O_NONBLOCK);
  std::size_t written = 0;
  int in_fd = in[1];
  if (options.stdin_data.empty()) {
    ::close(in_fd);
    in_fd = -1;
  }
  int out_fd = out[0], err_fd = err[0];
  auto deadline = Clock::now() + options.timeout;
  char buf[65536];
  while (out_fd >= 0 || err_fd >= 0) {
    pollfd fds[3];
    int n = 0;
    if (out_fd >= 0) fds[n++] = {out_fd, POLLIN, 0};
    if (err_fd >= 0) fds[n++] = {err_fd, POLLIN, 0};
    if (in_fd >= 0) fds[n++] = {in_fd, POLLOUT, 0};
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      result.timed_out = true;
      ::kill(pid, SIGKILL);
      break;
    }
    int r =
        ::poll(fds, static_cast<nfds_t>(n), static_cast<int>(std::min<long>(left.count(), 100)));
    if (r < 0 && errno != EINTR) break;
    for (int i = 0; i < n && r > 0; ++i) {
      if (fds[i].revents == 0) continue;
      if (fds[i].fd == in_fd) {
        ssize_t w = ::write(in_fd, options.stdin_data.data() + written,
                            options.stdin_data.size() - written);
        if (w > 0) written += static_cast<std::size_t>(w);
        if (w < 0 && errno != EAGAIN && errno != EINTR) written = options.stdin_data.size();
        if (written == options.stdin_data.size()) {
          ::close(in_fd);
          in_fd = -1;
        }
        continue;
      }
      ssize_t got = ::read(fds[i].fd, buf, sizeof buf);
      if (got > 0) {
        (fds[i].fd == out_fd ? result.out : result.err).append(buf, static_cast<std::size_t>(got));
      } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
        if (fds[i].fd == out_fd) {
          ::close(out_fd);
          out_fd = -1;
        } else {
          ::close(err_fd);
          err_fd = -1;
        }
      }
    }
  }
  for (int fd : {in_fd, out_fd, err_fd}) {
    if (fd >= 0) ::close(fd);
  }
  int status = 0;
  // The pipes closed (or we killed it): the child is exiting; reap it, bounded.
  bool reaped = WaitFor([&] { return ::waitpid(pid, &status, WNOHANG) == pid; },
                        result.timed_out ? std::chrono::milliseconds(10000) : options.timeout);
  if (!reaped) {
    result.timed_out = true;
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
  }
  if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) result.signal = WTERMSIG(status);
  return result;
}

TestCluster::TestCluster(TestClusterOptions options) : options_(std::move(options)) {}

std::string TestCluster::DaemonPath() {
  if (const char* env = std::getenv("ATOMDISK_DAEMON"); env != nullptr && *env != '\0') {
    return env;
  }
  return ATOMDISK_DAEMON_BIN;
}

bool TestCluster::DaemonAvailable() {
  std::string path = DaemonPath();
  return !path.empty() && ::access(path.c_str(), X_OK) == 0;
}

Result<std::unique_ptr<TestCluster>> TestCluster::Create(TestClusterOptions options) {
  if (options.daemon.empty()) options.daemon = DaemonPath();
  std::unique_ptr<TestCluster> c(new TestCluster(std::move(options)));
  Status s = c->Init();
  if (!s.ok()) return s;
  return c;
}

Result<std::unique_ptr<TestCluster>> TestCluster::Start(TestClusterOptions options) {
  Result<std::unique_ptr<TestCluster>> c = Create(std::move(options));
  if (!c.ok()) return c;
  Status s = (*c)->StartAll();
  if (!s.ok()) return s;  // the destructor kills what started and removes the directory
  // A new cluster votes once every node has reached every other; sanitizer builds start
  // several times slower, and a loaded CI machine slower still (an ASan run once saw 10 s
  // pass with one peer link still redialling). How a cluster starts is not what a test
  // built on one checks, so they get three times as long.
  const auto vote_timeout = (*c)->options_.start_timeout * (UnderSanitizer() ? 3 : 1);
  for (const auto& n : (*c)->config_.nodes) {
    s = (*c)->WaitVoting(n.rank, vote_timeout);
    if (!s.ok()) return s;
  }
  return c;
}

Status TestCluster::Init() {
  if (options_.nodes < 1) return Status::InvalidArgument("a cluster needs at least one node");
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/atomdisk-test-XXXXXX";
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) return Status::FromErrno("mkdtemp " + pattern, errno);
  dir_ = buf.data();
  Result<std::vector<std::uint16_t>> ports = FreePorts(options_.nodes * (options_.metrics ? 2 : 1));
  if (!ports.ok()) return ports.status();
  std::vector<std::string> addresses;
  for (int i = 0; i < options_.nodes; ++i)
    addresses.push_back("127.0.0.1:" + std::to_string((*ports)[i]));
  if (options_.tls != "off" && options_.tls != "accept" && options_.tls != "require") {
    return Status::InvalidArgument("TestClusterOptions::tls \"" + options_.tls + "\"");
  }
  Status s = WriteNewCluster(dir_, addresses, options_.sectors, options_.tls != "off");
  if (!s.ok()) return s;
  config_path_ = dir_ + "/cluster.toml";
  if (options_.tls == "accept") {
    std::ifstream in(config_path_);
    std::stringstream text;
    text << in.rdbuf();
    in.close();
    std::string toml = text.str();
    const std::string line = "tls = \"require\"\n";
    const std::size_t at = toml.find(line);
    if (at == std::string::npos) return Status::IOError("no " + line + " in " + config_path_);
    toml.replace(at, line.size(), "tls = \"accept\"\n");
    std::ofstream out(config_path_, std::ios::trunc);
    out << toml;
    if (!out.flush()) return Status::IOError("cannot rewrite " + config_path_);
  }
  if (!options_.config_extra.empty()) {
    std::ifstream in(config_path_);
    std::stringstream text;
    text << in.rdbuf();
    in.close();
    std::ofstream out(config_path_, std::ios::trunc);
    out << options_.config_extra << text.str();
    if (!out.flush()) return Status::IOError("cannot rewrite " + config_path_);
  }
  if (options_.metrics) {
    // A metrics_address line after each node's address line.
    std::ifstream in(config_path_);
    std::stringstream text;
    text << in.rdbuf();
    std::string toml = text.str();
    for (int i = 0; i < options_.nodes; ++i) {
      const std::string line = "address = \"" + addresses[i] + "\"\n";
      const std::size_t at = toml.find(line);
      if (at == std::string::npos) return Status::IOError("no " + line + " in " + config_path_);
      toml.insert(at + line.size(), "metrics_address = \"127.0.0.1:" +
                                        std::to_string((*ports)[options_.nodes + i]) + "\"\n");
    }
    std::ofstream out(config_path_, std::ios::trunc);
    out << toml;
    if (!out.flush()) return Status::IOError("cannot rewrite " + config_path_);
  }
  Result<ClusterConfig> config = LoadClusterConfig(config_path_);
  if (!config.ok()) return config.status();
  config_ = std::move(config).value();
  std::error_code ec;
  fs::create_directories(dir_ + "/logs", ec);
  if (ec) return Status::IOError("cannot create " + dir_ + "/logs: " + ec.message());
  return Status::Ok();
}

TestCluster::~TestCluster() {
  KillAll();
  if (dir_.empty()) return;
  if (const char* keep = std::getenv("ATOMDISK_KEEP_TEST_DIR"); keep != nullptr && *keep == '1') {
    std::fprintf(stderr, "TestCluster: keeping %s\n", dir_.c_str());
    return;
  }
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

std::string TestCluster::Address(int rank) const {
  const NodeConfig* n = config_.FindNode(static_cast<Rank>(rank));
  return n ? n->Address() : "";
}

std::string TestCluster::DataDir(int rank) const {
  const NodeConfig* n = config_.FindNode(static_cast<Rank>(rank));
  return n ? n->data_dir : "";
}

std::string TestCluster::LogPath(int rank) const {
  return dir_ + "/logs/node-" + std::to_string(rank) + ".log";
}

std::string TestCluster::LogTail(int rank, int lines) const {
  std::ifstream in(LogPath(rank));
  std::deque<std::string> tail;
  std::string line;
  while (std::getline(in, line)) {
    tail.push_back(line);
    if (static_cast<int>(tail.size()) > lines) tail.pop_front();
  }
  std::string out;
  for (const auto& l : tail) out += "  | " + l + "\n";
  return out;
}

pid_t TestCluster::Pid(int rank) const {
  auto it = pids_.find(rank);
  return it == pids_.end() ? -1 : it->second;
}

bool TestCluster::IsRunning(int rank) {
  auto it = pids_.find(rank);
  if (it == pids_.end()) return false;
  int status = 0;
  if (::waitpid(it->second, &status, WNOHANG) == it->second) {
    pids_.erase(it);
    return false;
  }
  return true;
}

Status TestCluster::StartNode(int rank) {
  const NodeConfig* node = config_.FindNode(static_cast<Rank>(rank));
  if (node == nullptr) return Status::InvalidArgument("no node " + std::to_string(rank));
  if (IsRunning(rank)) return Status::InvalidArgument("node " + std::to_string(rank) + " runs");
  if (options_.daemon.empty() || ::access(options_.daemon.c_str(), X_OK) != 0) {
    return Status::NotFound("atomdiskd not found at \"" + options_.daemon + "\"");
  }
  auto own = node_config_.find(rank);
  const std::string config =
      own != node_config_.end() && !own->second.empty() ? own->second : config_path_;
  std::vector<std::string> argv = {options_.daemon,   "--config",           config,
                                   "--rank",          std::to_string(rank), "--log-level",
                                   options_.log_level};
  argv.insert(argv.end(), options_.extra_args.begin(), options_.extra_args.end());
  ExecArgs args(argv, {});
  int log = ::open(LogPath(rank).c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log < 0) return Status::FromErrno("open " + LogPath(rank), errno);
  std::string banner = "=== TestCluster: starting node " + std::to_string(rank) + " ===\n";
  ssize_t ignored = ::write(log, banner.data(), banner.size());
  (void)ignored;
  int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  const pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid == 0) {
    // Die with the test process, even if it crashes before its destructors run.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(125);
    ::dup2(devnull, STDIN_FILENO);
    ::dup2(log, STDOUT_FILENO);
    ::dup2(log, STDERR_FILENO);
    ExecChild(args, nullptr);
  }
  int fork_errno = errno;
  ::close(log);
  if (devnull >= 0) ::close(devnull);
  if (pid < 0) return Status::FromErrno("fork", fork_errno);
  pids_[rank] = pid;
  return WaitListening(rank);
}

Status TestCluster::WaitListening(int rank) {
  const NodeConfig* node = config_.FindNode(static_cast<Rank>(rank));
  pid_t pid = pids_.at(rank);
  auto deadline = Clock::now() + options_.start_timeout;
  while (true) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      pids_.erase(rank);
      return Status::Unavailable("node " + std::to_string(rank) + " " + DescribeWaitStatus(status) +
                                 " during start-up; its log:\n" + LogTail(rank));
    }
    if (CanConnect(node->port)) return Status::Ok();
    if (Clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  (void)Kill9(rank);
  return Status::Timeout("node " + std::to_string(rank) + " did not accept connections on " +
                         node->Address() + " within " +
                         std::to_string(options_.start_timeout.count()) + " ms; its log:\n" +
                         LogTail(rank));
}

Result<std::string> TestCluster::Info(int rank, std::chrono::milliseconds timeout) {
  const NodeConfig* node = config_.FindNode(static_cast<Rank>(rank));
  if (node == nullptr) return Status::InvalidArgument("no node " + std::to_string(rank));
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::FromErrno("socket", errno);
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(node->port);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    return Status::FromErrno("connect to node " + std::to_string(rank), errno);
  }
  Hmac mac(config_.client_key);
  ClientCommand cmd;
  cmd.request_id = 1;
  cmd.op = ClientOp::kInfo;
  Frame frame = EncodeFrame(cmd, mac);
  if (::send(fd, frame.data(), frame.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(frame.size())) {
    return Status::FromErrno("send to node " + std::to_string(rank), errno);
  }
  auto read_all = [&](std::uint8_t* p, std::size_t n) -> Status {
    while (n > 0) {
      ssize_t r = ::recv(fd, p, n, 0);
      if (r <= 0) return Status::IOError("node " + std::to_string(rank) + ": no info answer");
      p += r;
      n -= static_cast<std::size_t>(r);
    }
    return Status::Ok();
  };
  std::array<std::uint8_t, kFrameLengthSize> prefix;
  if (Status st = read_all(prefix.data(), prefix.size()); !st.ok()) return st;
  Result<std::uint64_t> len = DecodeResponseFrameLength(prefix);
  if (!len.ok()) return len.status();
  std::vector<std::uint8_t> body(*len);
  if (Status st = read_all(body.data(), body.size()); !st.ok()) return st;
  auto payload = VerifyFrameBody(body, mac);
  if (!payload.ok()) return payload.status();
  auto resp = DecodeClientResponse(*payload);
  if (!resp.ok()) return resp.status();
  return resp->info;
}

Status TestCluster::WaitVoting(int rank, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  std::string last = "no answer";
  while (true) {
    if (!IsRunning(rank)) {
      return Status::Unavailable("node " + std::to_string(rank) +
                                 " exited while we waited for it to vote; its log:\n" +
                                 LogTail(rank));
    }
    Result<std::string> info = Info(rank, std::chrono::milliseconds(1000));
    if (info.ok()) {
      auto j = nlohmann::json::parse(*info, nullptr, /*allow_exceptions=*/false);
      if (j.is_object() && j.value("voting", false)) return Status::Ok();
      last = j.is_object() ? j.value("state", std::string("?")) : *info;
    } else {
      last = info.status().ToString();
    }
    if (Clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return Status::Timeout("node " + std::to_string(rank) + " does not vote after " +
                         std::to_string(timeout.count()) + " ms (" + last + "); its log:\n" +
                         LogTail(rank));
}

Status TestCluster::Kill9(int rank) {
  auto it = pids_.find(rank);
  if (it == pids_.end()) return Status::Ok();
  ::kill(it->second, SIGKILL);
  int status = 0;
  while (::waitpid(it->second, &status, 0) < 0 && errno == EINTR) {
  }
  pids_.erase(it);
  return Status::Ok();
}

Status TestCluster::Stop(int rank) {
  auto it = pids_.find(rank);
  if (it == pids_.end()) return Status::Ok();
  pid_t pid = it->second;
  ::kill(pid, SIGTERM);
  int status = 0;
  bool exited =
      WaitFor([&] { return ::waitpid(pid, &status, WNOHANG) == pid; }, options_.stop_timeout);
  pids_.erase(rank);
  if (!exited) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    return Status::Timeout("node " + std::to_string(rank) + " did not stop within " +
                           std::to_string(options_.stop_timeout.count()) +
                           " ms of SIGTERM (killed); its log:\n" + LogTail(rank));
  }
  bool clean = (WIFEXITED(status) && WEXITSTATUS(status) == 0) ||
               (WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM);
  if (!clean) {
    return Status::Unavailable("node " + std::to_string(rank) + " " + DescribeWaitStatus(status) +
                               " on SIGTERM; its log:\n" + LogTail(rank));
  }
  return Status::Ok();
}

Status TestCluster::Restart(int rank) {
  Status s = Stop(rank);
  if (!s.ok()) return s;
  return StartNode(rank);
}

void TestCluster::KillAll() {
  std::vector<int> ranks;
  for (const auto& [rank, pid] : pids_) ranks.push_back(rank);
  for (int r : ranks) (void)Kill9(r);
}

Status TestCluster::StartAll() {
  for (const auto& n : config_.nodes) {
    if (IsRunning(n.rank)) continue;
    Status s = StartNode(n.rank);
    if (!s.ok()) return s;
  }
  return Status::Ok();
}

bool UnderSanitizer() {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  return true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
  return true;
#else
  return false;
#endif
#else
  return false;
#endif
}

}  // namespace atomdisk::testing
