#include "daemon/core/peer_outbox.h"

#include <algorithm>
#include <utility>

namespace atomdisk {

bool SameSystemMessage(const SystemMessage& a, const SystemMessage& b) {
  return a.sender == b.sender && a.op_id == b.op_id && a.sector == b.sector &&
         a.content == b.content && a.tag == b.tag && a.data == b.data;
}

const PeerOutbox::Queue* PeerOutbox::Find(Rank to) const {
  for (const Queue& q : queues_) {
    if (q.to == to) return &q;
  }
  return nullptr;
}

PeerOutbox::Queue* PeerOutbox::Find(Rank to) {
  return const_cast<Queue*>(std::as_const(*this).Find(to));
}

bool PeerOutbox::WouldOverflow(Rank to, const SystemMessage& msg) const {
  const Queue* q = Find(to);
  if (!q) return false;
  return q->msgs.size() + 1 > kMaxBatchMessages ||
         q->bytes + 4 + SystemPayloadSize(msg) > kFlushBytes;
}

bool PeerOutbox::Add(Rank to, const SystemMessage& msg) {
  const bool was_empty = pending_ == 0;
  Queue* q = Find(to);
  if (!q) {
    queues_.push_back(Queue{to, {}, 0});
    q = &queues_.back();
  }
  q->msgs.push_back(msg);
  q->bytes += 4 + SystemPayloadSize(msg);
  ++pending_;
  return was_empty;
}

std::vector<PeerOutbox::Batch> PeerOutbox::Take() {
  std::vector<Batch> out;
  for (Queue& q : queues_) {
    if (q.msgs.empty()) continue;
    auto same = std::find_if(out.begin(), out.end(), [&](const Batch& b) {
      return std::equal(b.msgs.begin(), b.msgs.end(), q.msgs.begin(), q.msgs.end(),
                        SameSystemMessage);
    });
    if (same != out.end()) {
      same->to.push_back(q.to);
    } else {
      out.push_back(Batch{{q.to}, std::move(q.msgs)});
    }
    q.msgs.clear();
    q.bytes = 0;
  }
  pending_ = 0;
  return out;
}

}  // namespace atomdisk
