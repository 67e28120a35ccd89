#include "tests/daemon/daemon_test_util.h"

#include <gtest/gtest.h>
#include <time.h>

#include <fstream>
#include <sstream>

namespace atomdisk::itest {

std::int64_t MonotonicNs() {
  timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

LiveCluster::LiveCluster(int nodes, TestClusterOptions options) {
  options.nodes = nodes;
  auto started = Harness::Start(std::move(options));
  if (!started.ok()) {
    ADD_FAILURE() << "cluster of " << nodes << " did not start: " << started.status().ToString();
    return;
  }
  harness_ = std::move(started).value();
}

std::uint16_t LiveCluster::port(int rank) const {
  const NodeConfig* node = harness_->config().FindNode(static_cast<Rank>(rank));
  return node ? node->port : 0;
}

std::unique_ptr<RawClient> LiveCluster::Connect(int rank, bool quiet,
                                                const std::string& source) const {
  auto client = RawClient::Connect(port(rank), client_key(), milliseconds(2000), source);
  if (!client.ok()) {
    if (!quiet) ADD_FAILURE() << "connect to node " << rank << ": " << client.status().ToString();
    return nullptr;
  }
  return std::move(client).value();
}

bool LiveCluster::Check(const Status& s, const char* what, int rank) {
  if (s.ok()) return true;
  ADD_FAILURE() << what << " node " << rank << ": " << s.ToString() << "\nlog tail:\n"
                << harness_->LogTail(rank);
  return false;
}

bool LiveCluster::Kill9(int rank) { return Check(harness_->Kill9(rank), "kill -9", rank); }
bool LiveCluster::Stop(int rank) { return Check(harness_->Stop(rank), "stop", rank); }
bool LiveCluster::Restart(int rank) { return Check(harness_->Restart(rank), "restart", rank); }
bool LiveCluster::StartNode(int rank) { return Check(harness_->StartNode(rank), "start", rank); }

bool ServesWriteAndRead(const LiveCluster& cluster, int rank, SectorIdx sector, std::uint64_t id) {
  auto client = cluster.Connect(rank);
  if (!client) return false;
  Status s = client->Write(sector, IdSector(id));
  if (!s.ok()) {
    ADD_FAILURE() << "node " << rank << " does not serve a write: " << s.ToString();
    return false;
  }
  auto data = client->Read(sector);
  if (!data.ok()) {
    ADD_FAILURE() << "node " << rank << " does not serve a read: " << data.status().ToString();
    return false;
  }
  if (CheckedId(**data) != id) {
    ADD_FAILURE() << "node " << rank << " read back " << CheckedId(**data) << ", wrote " << id;
    return false;
  }
  return true;
}

bool WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << contents;
  out.close();
  return static_cast<bool>(out);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) lines.push_back(line);
  }
  return lines;
}

}  // namespace atomdisk::itest
