// PeerOutbox: the system messages a node core sends while it handles the events at hand,
// held per peer and handed out together (docs/PROTOCOL.md, "System batches"), so that a run
// of sectors costs a peer one frame, one tag and one write instead of one per message.
//
// Queues keep each peer's messages in the order they were sent. Take groups the peers whose
// queues hold the same messages in the same order (a coordinator sends every peer the same
// ReadTags and WriteProcs), so that their batch is encoded and signed once for all of them.
// No I/O and no clock: the core decides when to flush (daemon/core/node_core.h).
#pragma once

#include <cstddef>
#include <vector>

#include "common/types.h"
#include "common/wire.h"

namespace atomdisk {

class PeerOutbox {
 public:
  // A peer's queue is flushed before it would pass this many payload bytes (or
  // kMaxBatchMessages messages): about 15 WriteProcs, so a 1 MiB extent goes to a peer in
  // about 17 frames, each well inside kMaxBatchPayload.
  static constexpr std::size_t kFlushBytes = 64 * 1024;

  // Whether queueing `msg` for `to` would pass the caps: flush (Take) first.
  bool WouldOverflow(Rank to, const SystemMessage& msg) const;
  // Queues `msg` for `to`; true if the outbox was empty before (arrange a flush).
  bool Add(Rank to, const SystemMessage& msg);
  bool empty() const { return pending_ == 0; }
  std::size_t pending() const { return pending_; }

  struct Batch {
    std::vector<Rank> to;             // one or more peers, ascending by first send
    std::vector<SystemMessage> msgs;  // in the order they were sent, at least one
  };
  // Empties the outbox: one batch per group of peers with identical queues.
  std::vector<Batch> Take();

 private:
  struct Queue {
    Rank to = 0;
    std::vector<SystemMessage> msgs;
    std::size_t bytes = 0;
  };
  const Queue* Find(Rank to) const;
  Queue* Find(Rank to);

  std::vector<Queue> queues_;  // a handful of peers: searched linearly
  std::size_t pending_ = 0;
};

// Whether two system messages are the same message (the same data buffer, not merely equal
// bytes): what lets peers share one signed frame.
bool SameSystemMessage(const SystemMessage& a, const SystemMessage& b);

}  // namespace atomdisk
