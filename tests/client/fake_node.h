// FakeNode: a tiny in-process server that speaks the client side of the atdd protocol
// (frames, HMAC tags, Read/Write/kInfo) over a real loopback TCP socket, for unit tests of
// the client library without daemons. It keeps sectors in a map (one node, no replication)
// and can misbehave on cue: stay silent, answer with bad tags or malformed frames, answer
// out of order, delay answers, drop the connection after N requests, refuse connections.
//
// Threading: one accept thread and one thread per connection, blocking sockets. Every
// public method may be called from any thread. The destructor stops everything.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/types.h"

namespace atomdisk::client {

class FakeNode {
 public:
  struct Behaviour {
    bool silent = false;           // read requests, never answer
    bool bad_tag = false;          // answer with a tag made with the wrong key
    bool garbage = false;          // answer with a frame whose length is impossible
    bool reverse_batches = false;  // answer each batch of requests read together backwards
    bool wrong_kind = false;       // answer a read as if it were a write
    int delay_ms = 0;              // wait this long before answering each batch
    int drop_after = 0;            // close the connection on receiving request N (>0)
    // Play an atdd course node: close the connection on any op but read and write (as it
    // does on an unknown op), Info included.
    bool atdd = false;
    // Take extent commands (Info lists "extents"); `not_done_every` > 0 reports every Nth
    // sector of each extent not done (as a node whose copy is unreadable), unapplied.
    bool extents = false;
    int not_done_every = 0;
    // With extents: every extent answered with every sector not done, nothing applied (a node
    // whose links reach no quorum, docs/PROTOCOL.md "No quorum here").
    bool no_quorum = false;
  };
  // Extent commands received (a node without the feature closes the connection instead).
  std::uint64_t extent_requests() const { return extent_requests_.load(); }

  FakeNode(std::vector<std::uint8_t> key, std::uint64_t sectors, Rank rank = 1);
  ~FakeNode();

  std::uint16_t port() const { return port_; }
  // Starts listening on 127.0.0.1 (a fixed port after the first start, so a client can
  // reconnect to the same address).
  void Start();
  // Closes the listening socket and every connection: connections are refused until Start.
  void Stop();

  void SetBehaviour(const Behaviour& b);

  // Counters since construction.
  std::uint64_t requests() const { return requests_.load(); }
  std::uint64_t connections() const { return connections_.load(); }
  std::uint64_t writes_applied(SectorIdx s);
  // The most requests ever read from one connection in one batch (pipelining evidence).
  std::uint64_t max_batch() const { return max_batch_.load(); }
  // The most requests received on a connection and not yet answered, at any moment.
  std::uint64_t max_outstanding() const { return max_outstanding_.load(); }
  SectorPtr Get(SectorIdx s);

 private:
  void AcceptLoop();
  void Serve(int fd);

  const std::vector<std::uint8_t> key_;
  const std::uint64_t sectors_;
  const Rank rank_;
  std::uint16_t port_ = 0;

  std::mutex mu_;
  Behaviour behaviour_;                        // guarded by mu_
  std::map<SectorIdx, SectorPtr> data_;        // guarded by mu_
  std::map<SectorIdx, std::uint64_t> writes_;  // guarded by mu_
  std::vector<int> conn_fds_;                  // guarded by mu_
  std::vector<std::thread> conn_threads_;      // guarded by mu_
  int listen_fd_ = -1;
  int wake_pipe_[2] = {-1, -1};
  std::thread accept_thread_;

  std::atomic<std::uint64_t> requests_{0}, connections_{0}, max_batch_{0}, max_outstanding_{0},
      extent_requests_{0};
};

}  // namespace atomdisk::client
