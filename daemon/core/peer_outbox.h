// PeerOutbox: the system messages a node core sends while it handles the events at hand,
// held and handed out together (docs/PROTOCOL.md, "Extension: system batches"), so that a
// run of sectors costs a peer a few frames, tags and writes instead of one per message.
//
// A message sent to several peers in a row (a register sends every peer the same ReadTag or
// WriteProc, one Send after the other) is held once, with the set of peers it goes to. Take
// groups the messages by that set: each group becomes one batch, encoded and signed once for
// all of its peers, so a WriteProc's 4 KiB is still MACed once however many peers get it.
// Messages keep their order within a group; between groups a peer may get them in another
// order than they were sent, which the register protocol allows (any message may be delayed,
// docs/REGISTER.md). No I/O and no clock: the core decides when to flush
// (daemon/core/node_core.h).
#pragma once

#include <array>
#include <bitset>
#include <cstddef>
#include <vector>

#include "common/types.h"
#include "common/wire.h"

namespace atomdisk {

class PeerOutbox {
 public:
  // What a peer is sent in one flush stays below this many payload bytes (and
  // kMaxBatchMessages messages): about 15 WriteProcs, so every batch fits well inside
  // kMaxBatchPayload and a 1 MiB extent goes to a peer in about 17 frames.
  static constexpr std::size_t kFlushBytes = 64 * 1024;

  // Whether queueing `msg` for `to` would pass the caps: flush (Take) first.
  bool WouldOverflow(Rank to, const SystemMessage& msg) const;
  // Queues `msg` for `to`; true if the outbox was empty before.
  bool Add(Rank to, const SystemMessage& msg);
  bool empty() const { return entries_.empty(); }
  // Messages held (a message held for several peers counts once).
  std::size_t pending() const { return entries_.size(); }

  struct Batch {
    std::vector<Rank> to;             // one or more peers, ascending
    std::vector<SystemMessage> msgs;  // in the order they were sent, at least one
  };
  // Empties the outbox: one batch per set of peers, in the order each set first appeared.
  std::vector<Batch> Take();

 private:
  using RankSet = std::bitset<256>;
  struct Entry {
    SystemMessage msg;
    RankSet to;
  };
  struct Load {
    std::size_t bytes = 0, msgs = 0;
  };

  std::vector<Entry> entries_;
  std::array<Load, 256> load_{};  // what each peer is sent so far in this flush
  std::vector<Rank> loaded_;      // the peers whose load_ is not zero
};

// Whether two system messages are the same message (the same data buffer, not merely equal
// bytes): what lets peers share one signed frame.
bool SameSystemMessage(const SystemMessage& a, const SystemMessage& b);

}  // namespace atomdisk
