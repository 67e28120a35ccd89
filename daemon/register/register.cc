#include "daemon/register/register.h"

#include <algorithm>
#include <array>
#include <string>

namespace atomdisk {

#ifdef ATOMDISK_SIM_BUGS
#define BUG(name) (config_->bugs.name)
#else
#define BUG(name) false
#endif

SystemMessage AnswerTo(Rank self, const Uuid& op_id, SectorIdx sector, SystemContent content) {
  SystemMessage m;
  m.sender = self;
  m.op_id = op_id;
  m.sector = sector;
  m.content = content;
  return m;
}

std::size_t RegisterConfig::Quorum() const {
#ifdef ATOMDISK_SIM_BUGS
  if (bugs.minority_quorum) return std::max<std::size_t>(1, ranks.size() / 2);
#endif
  return ranks.size() / 2 + 1;
}

Register::Register(SectorIdx sector, Triple durable, const RegisterConfig* config, RegisterEnv* env)
    : sector_(sector), config_(config), env_(env), durable_(durable), stored_(durable) {}

void Register::StartRead(std::uint64_t token, std::int64_t now_ms) {
  queue_.push_back({token, false, nullptr});
  if (!current_) StartNext(now_ms);
}

void Register::StartWrite(std::uint64_t token, SectorPtr data, std::int64_t now_ms) {
  ATOMDISK_CHECK(data != nullptr);
  queue_.push_back({token, true, std::move(data)});
  if (!current_) StartNext(now_ms);
}

std::size_t Register::RankIndex(Rank r) const {
  auto it = std::find(config_->ranks.begin(), config_->ranks.end(), r);
  return it == config_->ranks.end() ? config_->ranks.size()
                                    : static_cast<std::size_t>(it - config_->ranks.begin());
}

void Register::ResetAnswers() {
  current_->answered.assign(config_->ranks.size(), false);
  current_->answers = 0;
}

void Register::StartNext(std::int64_t now_ms) {
  // A read not before durable_ has its data (see the constructor): its collect starts from
  // it. A write's collect needs only the tag.
  while (!current_ && !queue_.empty() && (durable_.data || queue_.front().is_write)) {
    QueuedOp op = std::move(queue_.front());
    queue_.erase(queue_.begin());
    current_.emplace();
    Current& c = *current_;
    c.token = op.token;
    c.is_write = op.is_write;
    c.write_data = std::move(op.data);
    StartCollect(now_ms);
  }
}

void Register::StartCollect(std::int64_t now_ms) {
  Current& c = *current_;
  // A fresh id: answers to an earlier collect round of this operation are ignored.
  c.id = env_->NewOpId();
  c.phase = Phase::kCollect;
  ResetAnswers();
  // Our own Value, without the network: what is durable here.
  c.best = durable_;
  c.all_same = true;
  if (config_->votes) RecordAnswer(config_->self);
  c.backoff_ms = config_->retransmit_initial_ms;
  c.next_send_ms = now_ms + c.backoff_ms;
  SendPhase(/*only_unanswered=*/true, /*first_send=*/true);
  MaybeFinish(now_ms);  // a one-node cluster finishes at once
}

void Register::RecordAnswer(Rank from) {
  std::size_t i = RankIndex(from);
  if (i >= current_->answered.size() || current_->answered[i]) return;
  current_->answered[i] = true;
  ++current_->answers;
}

void Register::SendPhase(bool only_unanswered, bool first_send) {
  Current& c = *current_;
  SystemMessage msg;
  msg.sender = config_->self;
  msg.op_id = c.id;
  msg.sector = sector_;
  if (c.phase == Phase::kCollect) {
    msg.content = SystemContent::kReadProc;  // or kReadTag, per peer (below)
  } else if (c.phase == Phase::kImpose) {
    msg.content = SystemContent::kWriteProc;
    msg.tag = c.target.tag;
    msg.data = c.target.data;
  } else {
    return;  // kPersistOwn sends nothing until our own copy is durable
  }
  const std::size_t n = config_->ranks.size();
  auto send_to = [&](std::size_t i) {
    if (c.phase == Phase::kCollect) {
      msg.content = !c.values_mode && config_->IsTagPeer(i) ? SystemContent::kReadTag
                                                            : SystemContent::kReadProc;
    }
    env_->Send(config_->ranks[i], msg);
  };
  auto askable = [&](std::size_t i) {
    return config_->ranks[i] != config_->self && !(only_unanswered && c.answered[i]);
  };
  if (first_send && c.phase == Phase::kCollect && config_->thrifty_collect && !c.values_mode) {
    // The first `need` responsive peers from a start that rotates; everyone if there are
    // fewer. One PeerResponsive call per peer looked at.
    const std::size_t quorum = config_->Quorum();
    const std::size_t need = quorum > c.answers ? quorum - c.answers : 0;
    const std::size_t start = static_cast<std::size_t>((sector_ + rotation_) % n);
    std::array<std::uint8_t, kMaxRank> picked;  // rank indexes (n <= kMaxRank)
    std::size_t found = 0;
    for (std::size_t k = 0; k < n && found < need; ++k) {
      const std::size_t i = (start + k) % n;
      if (askable(i) && env_->PeerResponsive(config_->ranks[i])) {
        picked[found++] = static_cast<std::uint8_t>(i);
      }
    }
    if (found == need) {
      ++rotation_;
      for (std::size_t j = 0; j < found; ++j) send_to(picked[j]);
      return;
    }
  }
  for (std::size_t i = 0; i < n; ++i) {
    if (askable(i)) send_to(i);
  }
}

void Register::OnMessage(const SystemMessage& msg, std::int64_t now_ms) {
  switch (msg.content) {
    case SystemContent::kReadProc:
    case SystemContent::kReadTag: {
      if (!config_->votes) return;  // joining: our copy may lack what we once promised
      // Durable only, with or without its data: what a majority agreeing on it may rely on.
      const bool tag_only = msg.content == SystemContent::kReadTag;
      SystemMessage reply = AnswerTo(config_->self, msg.op_id, sector_,
                                     tag_only ? SystemContent::kTag : SystemContent::kValue);
      if (!tag_only && !durable_.data) {
        // Durable here is a value this register never read (see the constructor); the newer
        // one being persisted will be, soon. Answer then: a later answer is a slower network.
        if (BUG(value_before_durable) && stored_.data) {
          SendValue(msg.sender, msg.op_id, stored_);
          return;
        }
        for (const auto& p : pending_values_) {
          if (p.to == msg.sender && p.id == msg.op_id) return;  // a retransmission
        }
        pending_values_.push_back({msg.sender, msg.op_id, Tag{}});
        return;
      }
      reply.tag = durable_.tag;
      if (!tag_only) reply.data = durable_.data;
      env_->Send(msg.sender, reply);
      return;
    }
    case SystemContent::kWriteProc: {
      if (!msg.data) return;
      AcceptAndPersist(Triple{msg.tag, msg.data});
      if (!config_->votes) return;  // stored, but a joining node acknowledges nothing
      if (DurableCovers(msg.tag) || BUG(ack_before_persist)) {
        env_->Send(msg.sender, AnswerTo(config_->self, msg.op_id, sector_, SystemContent::kAck));
      } else {
        for (const auto& p : pending_acks_) {
          if (p.to == msg.sender && p.id == msg.op_id) return;  // a retransmission
        }
        pending_acks_.push_back({msg.sender, msg.op_id, msg.tag});
      }
      return;
    }
    case SystemContent::kValue: {
      if (!current_ || current_->id != msg.op_id || current_->phase != Phase::kCollect) return;
      if (!msg.data) return;
      std::size_t i = RankIndex(msg.sender);
      if (i >= current_->answered.size() || current_->answered[i]) return;
      Current& c = *current_;
      if (msg.tag != c.best.tag) c.all_same = false;
      // A writer never reuses a tag, so a value with the best tag, from anyone, is its value.
      if (msg.tag > c.best.tag || (msg.tag == c.best.tag && !c.best.data)) {
        c.best = Triple{msg.tag, msg.data};
      }
      RecordAnswer(msg.sender);
      MaybeFinish(now_ms);
      return;
    }
    case SystemContent::kTag: {
      if (!current_ || current_->id != msg.op_id || current_->phase != Phase::kCollect) return;
      if (current_->values_mode) return;  // no ReadTag went out under this id: not our answer
      std::size_t i = RankIndex(msg.sender);
      if (i >= current_->answered.size() || current_->answered[i]) return;
      Current& c = *current_;
      if (msg.tag != c.best.tag) c.all_same = false;
      // A newer tag whose value we do not hold: a read fetches it in values mode.
      if (msg.tag > c.best.tag) c.best = Triple{msg.tag, nullptr};
      RecordAnswer(msg.sender);
      MaybeFinish(now_ms);
      return;
    }
    case SystemContent::kAck: {
      if (!current_ || current_->id != msg.op_id || current_->phase != Phase::kImpose) return;
      RecordAnswer(msg.sender);
      MaybeFinish(now_ms);
      return;
    }
  }
}

void Register::MaybeFinish(std::int64_t now_ms) {
  if (!current_) return;
  Current& c = *current_;
  std::size_t quorum = config_->Quorum();
  if (c.phase == Phase::kCollect) {
    if (c.answers < quorum) return;
    if (!c.is_write) {
      if (!c.best.data) {
        // Some peer holds a newer tag than every value we hold (we are behind): ask everyone
        // again, for values this time. One extra round trip, only on a node that is behind.
        c.values_mode = true;
        StartCollect(now_ms);
        return;
      }
      // Every Value or Tag reports a durable triple, so when a majority agrees on the highest
      // tag it is already stored on a majority: return without the impose round trip.
      if (c.all_same || BUG(skip_impose)) {
        Finish(c.best.data, now_ms);
        return;
      }
      c.target = c.best;
      EnterImpose(now_ms);
      return;
    }
    if (c.best.tag.ts >= kMaxTagTs || config_->min_write_ts > kMaxTagTs) {
      // No tag above the highest collected one is allowed: refuse rather than wrap (a
      // wrapped ts would be stored under the old value and acknowledged, a lost write).
      const std::uint64_t token = c.token;
      std::string why = "sector " + std::to_string(sector_) + ": its tag " + c.best.tag.ToString() +
                        " is at the top of the timestamp range";
      current_.reset();  // `c` is gone from here on
      env_->Refuse(token, why);
      StartNext(now_ms);
      return;
    }
    c.target = Triple{Tag{std::max(c.best.tag.ts + 1, config_->min_write_ts), config_->self},
                      c.write_data};
    if (c.target.tag.ts < config_->write_ts_lease) {
      // Under the lease: a crash that loses our own copy cannot lead to this tag's reuse
      // (the next incarnation writes above the lease), so persist it and send WriteProc at
      // once; our own Ack counts when the persist completes.
      EnterImpose(now_ms);
      return;
    }
    env_->WantWriteTsLease(c.target.tag.ts);
    c.phase = Phase::kPersistOwn;
    AcceptAndPersist(c.target);
    if (DurableCovers(c.target.tag) || BUG(ack_before_persist)) EnterImpose(now_ms);
    return;
  }
  if (c.phase == Phase::kImpose && c.answers >= quorum) {
    Finish(c.is_write ? nullptr : c.target.data, now_ms);
  }
}

void Register::EnterImpose(std::int64_t now_ms) {
  Current& c = *current_;
  c.phase = Phase::kImpose;
  ResetAnswers();
  // Impose locally: accept if newer; our own Ack counts once durable covers the target.
  AcceptAndPersist(c.target);
  c.self_acked = config_->votes && (DurableCovers(c.target.tag) || BUG(ack_before_persist));
  if (c.self_acked) RecordAnswer(config_->self);
  c.backoff_ms = config_->retransmit_initial_ms;
  c.next_send_ms = now_ms + c.backoff_ms;
  SendPhase(/*only_unanswered=*/true);
  MaybeFinish(now_ms);
}

void Register::Finish(SectorPtr data, std::int64_t now_ms) {
  std::uint64_t token = current_->token;
  current_.reset();
  env_->Complete(token, std::move(data));
  StartNext(now_ms);
}

bool Register::DurableCovers(Tag tag) const { return durable_.tag >= tag; }

void Register::AcceptAndPersist(const Triple& t) {
  if (t.tag > stored_.tag) {
    stored_ = t;
    persisting_.push_back(t);
    env_->Persist(sector_, t);
    return;
  }
  // Older or equal: the stored triple covers it. Make sure that one is durable or on its way
  // (a failed persist leaves stored_ ahead of durable_ with nothing in flight).
  if (!DurableCovers(t.tag) && persisting_.empty()) {
    persisting_.push_back(stored_);
    env_->Persist(sector_, stored_);
  }
}

void Register::OnPersisted(Tag tag, const Status& status, std::int64_t now_ms) {
  auto it = std::find_if(persisting_.begin(), persisting_.end(),
                         [&](const Triple& t) { return t.tag == tag; });
  if (it == persisting_.end()) return;  // not ours (a stale completion after a reset)
  Triple t = *it;
  persisting_.erase(it);
  if (!status.ok()) {
    // Not durable. Keep stored_ (the value is still the newest we accepted); the next
    // retransmission of the WriteProc, or our own phase retry, persists it again.
    return;
  }
  if (t.tag > durable_.tag) {
    durable_ = t;
    OnDurableAdvanced(now_ms);
  }
}

void Register::OnDurableElsewhere(const Triple& value, std::int64_t now_ms) {
  // Above stored_ it cannot be (an absorb stores what it writes); below durable_ it says
  // nothing new.
  if (value.tag <= durable_.tag || value.tag > stored_.tag || !value.data) return;
  durable_ = value;
  OnDurableAdvanced(now_ms);
}

void Register::SendValue(Rank to, const Uuid& id, const Triple& value) {
  SystemMessage reply = AnswerTo(config_->self, id, sector_, SystemContent::kValue);
  reply.tag = value.tag;
  reply.data = value.data;
  env_->Send(to, reply);
}

bool Register::NeedsDurableData() const {
  if (durable_.data || stored_.tag != durable_.tag || !persisting_.empty()) return false;
  // Nothing newer is on its way to become durable here: only a read of the store brings it.
  return !pending_values_.empty() || (!current_ && !queue_.empty());
}

void Register::SetDurableData(const Triple& value, std::int64_t now_ms) {
  if (durable_.data || value.tag != durable_.tag || !value.data) return;
  durable_ = value;
  if (stored_.tag == durable_.tag) stored_ = value;
  OnDurableAdvanced(now_ms);
}

void Register::OnDurableAdvanced(std::int64_t now_ms) {
  FlushAcks();
  // durable_ has data now (every value persisted, reported durable or loaded carries it).
  for (const auto& p : pending_values_) SendValue(p.to, p.id, durable_);
  pending_values_.clear();
  if (!current_) {
    StartNext(now_ms);  // client operations held until durable_ had its data
    return;
  }
  Current& c = *current_;
  if (c.phase == Phase::kPersistOwn && DurableCovers(c.target.tag)) {
    EnterImpose(now_ms);
  } else if (c.phase == Phase::kImpose && !c.self_acked && config_->votes &&
             DurableCovers(c.target.tag)) {
    c.self_acked = true;
    RecordAnswer(config_->self);
    MaybeFinish(now_ms);
  }
}

void Register::FlushAcks() {
  auto keep = pending_acks_.begin();
  for (auto& p : pending_acks_) {
    if (DurableCovers(p.tag)) {
      env_->Send(p.to, AnswerTo(config_->self, p.id, sector_, SystemContent::kAck));
    } else {
      *keep++ = p;
    }
  }
  pending_acks_.erase(keep, pending_acks_.end());
}

void Register::OnVotesChanged(std::int64_t now_ms) {
  if (!config_->votes || !current_) return;
  Current& c = *current_;
  if (c.phase == Phase::kCollect) {
    // Our answer is what is durable here now. The value durable when the operation started
    // (already in c.best: any real value is safe in the maximum) predates the join pass that
    // just ended and may lack what this node once promised; the pass brought those values
    // since. Counting only the old one as our answer was a real bug (the simulator, seed 1710
    // with 3 nodes: a read returned a value overwritten long before).
    if (!BUG(stale_self_at_vote)) {
      if (durable_.tag != c.best.tag) c.all_same = false;
      if (durable_.tag > c.best.tag || (durable_.tag == c.best.tag && !c.best.data)) {
        c.best = durable_;
      }
    }
    RecordAnswer(config_->self);
    MaybeFinish(now_ms);
  } else if (c.phase == Phase::kImpose && !c.self_acked && DurableCovers(c.target.tag)) {
    c.self_acked = true;
    RecordAnswer(config_->self);
    MaybeFinish(now_ms);
  }
}

void Register::Tick(std::int64_t now_ms) {
  if (persisting_.empty() && durable_.tag < stored_.tag) {
    // A persist failed (an I/O error on its write) and nothing will retry it for us once
    // the operation that brought the value is over: retry here, so that the value becomes
    // durable and the register can go idle.
    persisting_.push_back(stored_);
    env_->Persist(sector_, stored_);
  }
  if (!current_ || now_ms < current_->next_send_ms) return;
  Current& c = *current_;
  if (c.phase == Phase::kPersistOwn || (c.phase == Phase::kImpose && !c.self_acked)) {
    AcceptAndPersist(c.target);  // re-issues the persist if a previous one failed
  }
  SendPhase(/*only_unanswered=*/true);
  c.backoff_ms = std::min(c.backoff_ms * 2, config_->retransmit_max_ms);
  c.next_send_ms = now_ms + c.backoff_ms;
}

void Register::RetransmitSoon(std::int64_t now_ms) {
  if (!current_) return;
  current_->backoff_ms = config_->retransmit_initial_ms;
  current_->next_send_ms = std::min(current_->next_send_ms, now_ms);
}

bool Register::WantsValue(const SystemMessage& msg) const {
  if (msg.content != SystemContent::kValue) return true;
  if (!current_ || current_->id != msg.op_id || current_->phase != Phase::kCollect) return false;
  std::size_t i = RankIndex(msg.sender);
  return i < current_->answered.size() && !current_->answered[i];
}

const Triple& Register::Served() const {
  const bool own_unleased =
      stored_.tag.wr == config_->self && stored_.tag.ts >= config_->write_ts_lease;
  return stored_.tag > durable_.tag && !own_unleased ? stored_ : durable_;
}

bool Register::Idle() const {
  // stored_ ahead of durable_ (a persist failed) keeps the register: rebuilt from the store,
  // it could take a value whose sync never succeeded for a durable one.
  return !current_ && queue_.empty() && persisting_.empty() && pending_acks_.empty() &&
         pending_values_.empty() && stored_.tag == durable_.tag;
}

void Register::CheckInvariants() const {
  // Only a tag-only durable value lacks data (see the constructor); anything accepted above
  // it carries its data.
  ATOMDISK_CHECK(stored_.data != nullptr || stored_.tag == durable_.tag);
  ATOMDISK_CHECK(durable_.data != nullptr || stored_.data == nullptr || stored_.tag > durable_.tag);
  ATOMDISK_CHECK(pending_values_.empty() || !durable_.data);
  ATOMDISK_CHECK(!current_ || durable_.data != nullptr || current_->is_write);
  ATOMDISK_CHECK(durable_.tag <= stored_.tag);
  for (const auto& t : persisting_) ATOMDISK_CHECK(t.tag <= stored_.tag);
  for (const auto& p : pending_acks_) ATOMDISK_CHECK(p.tag <= stored_.tag);
  if (current_) {
    ATOMDISK_CHECK(current_->answers <= config_->ranks.size());
    ATOMDISK_CHECK(current_->answered.size() == config_->ranks.size());
    // Values mode is a read's, and there every answer carries a value.
    ATOMDISK_CHECK(!current_->values_mode || !current_->is_write);
    if (current_->phase == Phase::kCollect && current_->values_mode) {
      ATOMDISK_CHECK(current_->best.data != nullptr);
    }
    if (current_->phase != Phase::kCollect) {
      ATOMDISK_CHECK(current_->target.data != nullptr);
      if (!BUG(ack_before_persist)) {
        ATOMDISK_CHECK(!current_->self_acked || DurableCovers(current_->target.tag));
      }
    }
  }
}

}  // namespace atomdisk
