#include "daemon/core/peer_outbox.h"

#include <utility>

namespace atomdisk {

bool SameSystemMessage(const SystemMessage& a, const SystemMessage& b) {
  return a.sender == b.sender && a.op_id == b.op_id && a.sector == b.sector &&
         a.content == b.content && a.tag == b.tag && a.data == b.data;
}

bool PeerOutbox::WouldOverflow(Rank to, const SystemMessage& msg) const {
  const Load& l = load_[to];
  return l.msgs + 1 > kMaxBatchMessages || l.bytes + 4 + SystemPayloadSize(msg) > kFlushBytes;
}

bool PeerOutbox::Add(Rank to, const SystemMessage& msg) {
  const bool was_empty = entries_.empty();
  Load& l = load_[to];
  if (l.msgs == 0) loaded_.push_back(to);
  l.bytes += 4 + SystemPayloadSize(msg);
  ++l.msgs;
  // The same message for another peer right after: held once, for both.
  if (!entries_.empty() && !entries_.back().to.test(to) &&
      SameSystemMessage(entries_.back().msg, msg)) {
    entries_.back().to.set(to);
    return false;
  }
  Entry e{msg, {}};
  e.to.set(to);
  entries_.push_back(std::move(e));
  return was_empty;
}

std::vector<PeerOutbox::Batch> PeerOutbox::Take() {
  std::vector<Batch> out;
  std::vector<RankSet> sets;  // out[i] goes to sets[i]
  for (Entry& e : entries_) {
    std::size_t i = 0;
    while (i < sets.size() && sets[i] != e.to) ++i;
    if (i == sets.size()) {
      sets.push_back(e.to);
      Batch b;
      for (std::size_t r = 0; r < e.to.size(); ++r) {
        if (e.to.test(r)) b.to.push_back(static_cast<Rank>(r));
      }
      out.push_back(std::move(b));
    }
    out[i].msgs.push_back(std::move(e.msg));
  }
  entries_.clear();
  for (Rank r : loaded_) load_[r] = Load{};
  loaded_.clear();
  return out;
}

}  // namespace atomdisk
