// Unit tests of the register state machine (daemon/register/register.cc), driven by hand
// through a fake environment that records every effect: messages sent, persists issued,
// operations completed. Each test feeds events one by one and checks the effects, and calls
// CheckInvariants() after every step.
#include "daemon/register/register.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "common/types.h"
#include "common/wire.h"

namespace atomdisk {
namespace {

SectorPtr Fill(std::uint8_t byte) {
  SectorData d;
  d.fill(byte);
  return MakeSector(d.data());
}

Uuid IdOf(std::uint64_t n) {
  Uuid u;
  for (int i = 0; i < 8; ++i) u.bytes[15 - i] = static_cast<std::uint8_t>(n >> (8 * i));
  return u;
}

struct Sent {
  Rank to;
  SystemMessage msg;
};

struct Completed {
  std::uint64_t token;
  SectorPtr data;
};

// Records every effect; hands out op ids 1, 2, 3, ...
class FakeEnv : public RegisterEnv {
 public:
  void Send(Rank to, const SystemMessage& msg) override { sent.push_back({to, msg}); }
  void Persist(SectorIdx sector, const Triple& value) override {
    EXPECT_EQ(sector, kSector);
    persisted.push_back(value);
  }
  void Complete(std::uint64_t token, SectorPtr data) override {
    completed.push_back({token, std::move(data)});
  }
  void Refuse(std::uint64_t token, const std::string& why) override {
    refused.push_back({token, why});
  }
  Uuid NewOpId() override { return IdOf(++last_id); }
  void WantWriteTsLease(std::uint64_t ts) override { lease_wanted.push_back(ts); }
  bool PeerResponsive(Rank peer) override {
    return std::find(unresponsive.begin(), unresponsive.end(), peer) == unresponsive.end();
  }

  // The messages sent since the last call, and forgets them.
  std::vector<Sent> TakeSent() { return std::exchange(sent, {}); }
  std::vector<Triple> TakePersisted() { return std::exchange(persisted, {}); }

  static constexpr SectorIdx kSector = 7;
  std::vector<Sent> sent;
  std::vector<Triple> persisted;
  std::vector<Completed> completed;
  std::vector<std::pair<std::uint64_t, std::string>> refused;
  std::uint64_t last_id = 0;
  std::vector<std::uint64_t> lease_wanted;
  std::vector<Rank> unresponsive;  // PeerResponsive says false for these
};

class RegisterTest : public ::testing::Test {
 protected:
  void MakeCluster(std::size_t n, Triple durable = {Tag{}, ZeroSector()}) {
    config_.self = 1;
    config_.ranks.clear();
    for (std::size_t i = 1; i <= n; ++i) config_.ranks.push_back(static_cast<Rank>(i));
    config_.retransmit_initial_ms = 100;
    config_.retransmit_max_ms = 1000;
    reg_.emplace(FakeEnv::kSector, durable, &config_, &env_);
    reg_->CheckInvariants();
  }

  SystemMessage Msg(Rank from, Uuid id, SystemContent content, Tag tag = {},
                    SectorPtr data = nullptr) {
    SystemMessage m;
    m.sender = from;
    m.op_id = id;
    m.sector = FakeEnv::kSector;
    m.content = content;
    m.tag = tag;
    m.data = std::move(data);
    return m;
  }

  void Deliver(const SystemMessage& m, std::int64_t now_ms = 0) {
    reg_->OnMessage(m, now_ms);
    reg_->CheckInvariants();
  }
  void Persisted(Tag tag, Status status = Status::Ok(), std::int64_t now_ms = 0) {
    reg_->OnPersisted(tag, status, now_ms);
    reg_->CheckInvariants();
  }
  void Tick(std::int64_t now_ms) {
    reg_->Tick(now_ms);
    reg_->CheckInvariants();
  }

  RegisterConfig config_;
  FakeEnv env_;
  std::optional<Register> reg_;
};

// Every message in `sent` has this content and id; returns the ranks they went to.
std::vector<Rank> Targets(const std::vector<Sent>& sent, SystemContent content, Uuid id) {
  std::vector<Rank> to;
  for (const auto& s : sent) {
    EXPECT_EQ(s.msg.content, content) << SystemContentName(s.msg.content);
    EXPECT_EQ(s.msg.op_id, id);
    EXPECT_EQ(s.msg.sender, 1);
    EXPECT_EQ(s.msg.sector, FakeEnv::kSector);
    to.push_back(s.to);
  }
  return to;
}

TEST_F(RegisterTest, QuorumIsAMajority) {
  MakeCluster(3);
  EXPECT_EQ(config_.Quorum(), 2u);
  MakeCluster(4);
  EXPECT_EQ(config_.Quorum(), 3u);
  MakeCluster(5);
  EXPECT_EQ(config_.Quorum(), 3u);
}

TEST_F(RegisterTest, ReadTakesOneRoundTripWhenAMajorityAgrees) {
  SectorPtr v = Fill(0xaa);
  MakeCluster(3, {Tag{4, 2}, v});
  reg_->StartRead(11, 0);
  reg_->CheckInvariants();
  Uuid id = IdOf(1);
  EXPECT_EQ(Targets(env_.TakeSent(), SystemContent::kReadProc, id), (std::vector<Rank>{2, 3}));
  Deliver(Msg(2, id, SystemContent::kValue, Tag{4, 2}, Fill(0xaa)));
  ASSERT_EQ(env_.completed.size(), 1u);
  EXPECT_EQ(env_.completed[0].token, 11u);
  EXPECT_EQ(*env_.completed[0].data, *v);
  EXPECT_TRUE(env_.sent.empty()) << "no impose phase when every Value agrees";
  EXPECT_TRUE(env_.persisted.empty());
  EXPECT_TRUE(reg_->Idle());
}

TEST_F(RegisterTest, WantsValueOnlyWhileItsOperationCollects) {
  MakeCluster(3, {Tag{4, 2}, Fill(0xaa)});
  Uuid id = IdOf(1);
  SystemMessage from2 = Msg(2, id, SystemContent::kValue, Tag{4, 2}, Fill(0xaa));
  SystemMessage from3 = Msg(3, id, SystemContent::kValue, Tag{4, 2}, Fill(0xaa));
  EXPECT_FALSE(reg_->WantsValue(from2)) << "no operation yet";
  EXPECT_TRUE(reg_->WantsValue(Msg(2, id, SystemContent::kReadProc))) << "requests always count";
  reg_->StartWrite(11, Fill(0xbb), 0);
  EXPECT_TRUE(reg_->WantsValue(from2));
  EXPECT_TRUE(reg_->WantsValue(from3));
  EXPECT_FALSE(reg_->WantsValue(Msg(2, IdOf(9), SystemContent::kValue, Tag{4, 2}, Fill(0xaa))))
      << "another operation's id";
  EXPECT_FALSE(reg_->WantsValue(Msg(1, id, SystemContent::kValue, Tag{4, 2}, Fill(0xaa))))
      << "our own answer is never sent";
  EXPECT_FALSE(reg_->WantsValue(Msg(7, id, SystemContent::kValue, Tag{4, 2}, Fill(0xaa))))
      << "not a member";
  Deliver(from2);  // a quorum: the write moves on to persisting its own copy
  EXPECT_FALSE(reg_->WantsValue(from2)) << "answered already";
  EXPECT_FALSE(reg_->WantsValue(from3)) << "the phase is over: the register ignores it";
  // What WantsValue says is what OnMessage does: delivering it changes nothing.
  env_.TakeSent();
  std::vector<Triple> persisted = env_.TakePersisted();
  Deliver(from3);
  EXPECT_TRUE(env_.sent.empty());
  EXPECT_TRUE(env_.persisted.empty());
  ASSERT_EQ(persisted.size(), 1u);
  EXPECT_EQ(persisted[0].tag, (Tag{5, 1}));
}

TEST_F(RegisterTest, ReadImposesWhenValuesDiffer) {
  MakeCluster(3, {Tag{1, 1}, Fill(1)});
  reg_->StartRead(5, 0);
  Uuid id = IdOf(1);
  env_.TakeSent();
  SectorPtr newer = Fill(9);
  Deliver(Msg(2, id, SystemContent::kValue, Tag{3, 2}, newer));
  EXPECT_TRUE(env_.completed.empty());
  // Impose: WriteProc with the highest triple to the others, and a local persist of it.
  auto sent = env_.TakeSent();
  EXPECT_EQ(Targets(sent, SystemContent::kWriteProc, id), (std::vector<Rank>{2, 3}));
  for (const auto& s : sent) {
    EXPECT_EQ(s.msg.tag, (Tag{3, 2}));
    EXPECT_EQ(*s.msg.data, *newer);
  }
  auto persisted = env_.TakePersisted();
  ASSERT_EQ(persisted.size(), 1u);
  EXPECT_EQ(persisted[0].tag, (Tag{3, 2}));
  EXPECT_EQ(reg_->stored().tag, (Tag{3, 2}));
  EXPECT_EQ(reg_->durable().tag, (Tag{1, 1}));
  // One remote Ack is not a majority while our own copy is not durable.
  Deliver(Msg(2, id, SystemContent::kAck));
  EXPECT_TRUE(env_.completed.empty());
  Persisted(Tag{3, 2});
  ASSERT_EQ(env_.completed.size(), 1u);
  EXPECT_EQ(*env_.completed[0].data, *newer);
  EXPECT_EQ(reg_->durable().tag, (Tag{3, 2}));
  EXPECT_TRUE(reg_->Idle());
}

TEST_F(RegisterTest, ReadImposesWhenOwnValueIsNewest) {
  MakeCluster(3, {Tag{6, 1}, Fill(6)});
  reg_->StartRead(5, 0);
  Uuid id = IdOf(1);
  env_.TakeSent();
  Deliver(Msg(3, id, SystemContent::kValue, Tag{2, 3}, Fill(2)));
  // Our durable copy covers the target already: we count ourselves, and need one Ack.
  EXPECT_TRUE(env_.TakePersisted().empty());
  EXPECT_EQ(Targets(env_.TakeSent(), SystemContent::kWriteProc, id), (std::vector<Rank>{2, 3}));
  EXPECT_TRUE(env_.completed.empty());
  Deliver(Msg(3, id, SystemContent::kAck));
  ASSERT_EQ(env_.completed.size(), 1u);
  EXPECT_EQ((*env_.completed[0].data)[0], 6);
}

TEST_F(RegisterTest, WritePersistsOwnCopyBeforeSendingWriteProc) {
  MakeCluster(3, {Tag{2, 3}, Fill(2)});
  SectorPtr x = Fill(0x77);
  reg_->StartWrite(42, x, 0);
  Uuid id = IdOf(1);
  EXPECT_EQ(Targets(env_.TakeSent(), SystemContent::kReadProc, id), (std::vector<Rank>{2, 3}));
  EXPECT_TRUE(env_.persisted.empty()) << "nothing is stored before the first phase";
  Deliver(Msg(3, id, SystemContent::kValue, Tag{5, 2}, Fill(5)));
  // New tag: (max ts + 1, own rank), persisted here before anyone hears of it.
  auto persisted = env_.TakePersisted();
  ASSERT_EQ(persisted.size(), 1u);
  EXPECT_EQ(persisted[0].tag, (Tag{6, 1}));
  EXPECT_EQ(*persisted[0].data, *x);
  EXPECT_TRUE(env_.TakeSent().empty()) << "no WriteProc before our own copy is durable";
  Tick(500);  // a retransmission deadline passing must not leak the WriteProc either
  for (const auto& s : env_.TakeSent()) EXPECT_NE(s.msg.content, SystemContent::kWriteProc);
  Persisted(Tag{6, 1}, Status::Ok(), 501);
  auto sent = env_.TakeSent();
  EXPECT_EQ(Targets(sent, SystemContent::kWriteProc, id), (std::vector<Rank>{2, 3}));
  for (const auto& s : sent) {
    EXPECT_EQ(s.msg.tag, (Tag{6, 1}));
    EXPECT_EQ(*s.msg.data, *x);
  }
  EXPECT_TRUE(env_.completed.empty());
  Deliver(Msg(2, id, SystemContent::kAck), 502);
  ASSERT_EQ(env_.completed.size(), 1u);
  EXPECT_EQ(env_.completed[0].token, 42u);
  EXPECT_EQ(env_.completed[0].data, nullptr);
  EXPECT_TRUE(reg_->Idle());
}

// Without a lease covering its ts the write persists first (above) and asks for a lease.
TEST_F(RegisterTest, WriteAboveTheLeaseAsksForOne) {
  config_.write_ts_lease = 6;
  MakeCluster(3, {Tag{2, 3}, Fill(2)});
  reg_->StartWrite(42, Fill(0x77), 0);
  Uuid id = IdOf(1);
  env_.TakeSent();
  Deliver(Msg(3, id, SystemContent::kValue, Tag{5, 2}, Fill(5)));  // ts 6: not below 6
  EXPECT_EQ(env_.lease_wanted, (std::vector<std::uint64_t>{6}));
  EXPECT_EQ(env_.TakePersisted().size(), 1u);
  EXPECT_TRUE(env_.TakeSent().empty()) << "no WriteProc before our own copy is durable";
}

// Under the lease the WriteProc goes out with our own persist in flight; our own Ack counts
// only once that persist completes, so the write needs a majority of durable copies still.
TEST_F(RegisterTest, WriteUnderTheLeaseSendsWriteProcWhilePersisting) {
  config_.write_ts_lease = 7;
  MakeCluster(3, {Tag{2, 3}, Fill(2)});
  SectorPtr x = Fill(0x77);
  reg_->StartWrite(42, x, 0);
  Uuid id = IdOf(1);
  env_.TakeSent();
  Deliver(Msg(3, id, SystemContent::kValue, Tag{5, 2}, Fill(5)));
  EXPECT_TRUE(env_.lease_wanted.empty());
  auto persisted = env_.TakePersisted();
  ASSERT_EQ(persisted.size(), 1u);
  EXPECT_EQ(persisted[0].tag, (Tag{6, 1}));
  auto sent = env_.TakeSent();
  EXPECT_EQ(Targets(sent, SystemContent::kWriteProc, id), (std::vector<Rank>{2, 3}));
  for (const auto& s : sent) EXPECT_EQ(s.msg.tag, (Tag{6, 1}));
  // One peer's Ack alone is not a majority: our own copy is not durable yet.
  Deliver(Msg(2, id, SystemContent::kAck), 1);
  EXPECT_TRUE(env_.completed.empty());
  Persisted(Tag{6, 1}, Status::Ok(), 2);
  ASSERT_EQ(env_.completed.size(), 1u);
  EXPECT_EQ(env_.completed[0].token, 42u);
  EXPECT_TRUE(reg_->Idle());

  // A second write whose own persist fails still finishes on the two peers' Acks, and the
  // failed persist is retried by the tick until the register can go idle.
  config_.write_ts_lease = 100;  // raised meanwhile (ts 7 would not be under 7)
  reg_->StartWrite(43, Fill(0x78), 3);
  Uuid id2 = IdOf(2);
  env_.TakeSent();
  Deliver(Msg(2, id2, SystemContent::kValue, Tag{6, 1}, x), 4);
  ASSERT_EQ(env_.TakePersisted().size(), 1u);
  EXPECT_EQ(Targets(env_.TakeSent(), SystemContent::kWriteProc, id2), (std::vector<Rank>{2, 3}));
  Persisted(Tag{7, 1}, Status::IOError("disk on fire"), 5);
  Deliver(Msg(2, id2, SystemContent::kAck), 6);
  Deliver(Msg(3, id2, SystemContent::kAck), 7);
  ASSERT_EQ(env_.completed.size(), 2u);
  EXPECT_FALSE(reg_->Idle());
  Tick(200);
  ASSERT_EQ(env_.TakePersisted().size(), 1u);
  Persisted(Tag{7, 1}, Status::Ok(), 201);
  EXPECT_TRUE(reg_->Idle());
}

TEST_F(RegisterTest, WriteAfterFailedOwnPersistRetriesOnTick) {
  MakeCluster(3);
  reg_->StartWrite(1, Fill(3), 0);
  Uuid id = IdOf(1);
  env_.TakeSent();
  Deliver(Msg(2, id, SystemContent::kValue, Tag{}, ZeroSector()));
  ASSERT_EQ(env_.TakePersisted().size(), 1u);
  Persisted(Tag{1, 1}, Status::IOError("disk on fire"));
  EXPECT_TRUE(env_.TakeSent().empty());
  Tick(100);
  auto again = env_.TakePersisted();
  ASSERT_EQ(again.size(), 1u) << "the failed persist is issued again";
  EXPECT_EQ(again[0].tag, (Tag{1, 1}));
  Persisted(Tag{1, 1});
  EXPECT_EQ(Targets(env_.TakeSent(), SystemContent::kWriteProc, id), (std::vector<Rank>{2, 3}));
}

TEST_F(RegisterTest, AckWaitsForDurableStore) {
  MakeCluster(3);
  Uuid id = IdOf(100);
  SectorPtr v = Fill(4);
  Deliver(Msg(2, id, SystemContent::kWriteProc, Tag{4, 2}, v));
  auto persisted = env_.TakePersisted();
  ASSERT_EQ(persisted.size(), 1u);
  EXPECT_EQ(persisted[0].tag, (Tag{4, 2}));
  EXPECT_TRUE(env_.sent.empty()) << "no Ack before the store is durable";
  EXPECT_FALSE(reg_->Idle());
  // A Value meanwhile reports the durable triple, not the one being persisted.
  Deliver(Msg(3, IdOf(101), SystemContent::kReadProc));
  auto value = env_.TakeSent();
  ASSERT_EQ(value.size(), 1u);
  EXPECT_EQ(value[0].to, 3);
  EXPECT_EQ(value[0].msg.content, SystemContent::kValue);
  EXPECT_EQ(value[0].msg.tag, Tag{});
  // A retransmitted WriteProc neither persists again nor queues a second Ack.
  Deliver(Msg(2, id, SystemContent::kWriteProc, Tag{4, 2}, v));
  EXPECT_TRUE(env_.TakePersisted().empty());
  EXPECT_TRUE(env_.sent.empty());
  Persisted(Tag{4, 2});
  auto acks = env_.TakeSent();
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_EQ(acks[0].to, 2);
  EXPECT_EQ(acks[0].msg.content, SystemContent::kAck);
  EXPECT_EQ(acks[0].msg.op_id, id);
  EXPECT_TRUE(reg_->Idle());
  // Once durable, a retransmission is acked at once; so is an older triple.
  Deliver(Msg(2, id, SystemContent::kWriteProc, Tag{4, 2}, v));
  Deliver(Msg(3, IdOf(102), SystemContent::kWriteProc, Tag{3, 3}, Fill(3)));
  acks = env_.TakeSent();
  ASSERT_EQ(acks.size(), 2u);
  EXPECT_EQ(acks[0].to, 2);
  EXPECT_EQ(acks[1].to, 3);
  EXPECT_EQ(acks[1].msg.op_id, IdOf(102));
  EXPECT_TRUE(env_.TakePersisted().empty());
  EXPECT_EQ(reg_->stored().tag, (Tag{4, 2})) << "an older triple never replaces a newer one";
}

TEST_F(RegisterTest, AckForOlderTagWaitsForNewerPersist) {
  MakeCluster(3);
  Deliver(Msg(2, IdOf(100), SystemContent::kWriteProc, Tag{5, 2}, Fill(5)));
  ASSERT_EQ(env_.TakePersisted().size(), 1u);
  // (3,3) is older than the stored (5,2), which covers it once durable: no new persist,
  // and no Ack yet since nothing >= (3,3) is durable.
  Deliver(Msg(3, IdOf(101), SystemContent::kWriteProc, Tag{3, 3}, Fill(3)));
  EXPECT_TRUE(env_.TakePersisted().empty());
  EXPECT_TRUE(env_.sent.empty());
  Persisted(Tag{5, 2});
  auto acks = env_.TakeSent();
  ASSERT_EQ(acks.size(), 2u);
  EXPECT_EQ(acks[0].to, 2);
  EXPECT_EQ(acks[1].to, 3);
}

TEST_F(RegisterTest, FailedPersistIsRetriedByRetransmission) {
  MakeCluster(3);
  Uuid id = IdOf(100);
  Deliver(Msg(2, id, SystemContent::kWriteProc, Tag{1, 2}, Fill(1)));
  ASSERT_EQ(env_.TakePersisted().size(), 1u);
  Persisted(Tag{1, 2}, Status::IOError("EIO"));
  EXPECT_TRUE(env_.sent.empty()) << "a failed persist is never acked";
  EXPECT_EQ(reg_->durable().tag, Tag{});
  Deliver(Msg(2, id, SystemContent::kWriteProc, Tag{1, 2}, Fill(1)));
  auto again = env_.TakePersisted();
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].tag, (Tag{1, 2}));
  Persisted(Tag{1, 2});
  ASSERT_EQ(env_.sent.size(), 1u);
  EXPECT_EQ(env_.sent[0].msg.content, SystemContent::kAck);
}

TEST_F(RegisterTest, RetransmitsOnTickWithBackoff) {
  MakeCluster(5);
  reg_->StartRead(1, 0);
  Uuid id = IdOf(1);
  EXPECT_EQ(env_.TakeSent().size(), 4u);
  Tick(99);
  EXPECT_TRUE(env_.sent.empty());
  Tick(100);
  EXPECT_EQ(Targets(env_.TakeSent(), SystemContent::kReadProc, id),
            (std::vector<Rank>{2, 3, 4, 5}));
  // Answered nodes are not asked again.
  Deliver(Msg(4, id, SystemContent::kValue, Tag{}, ZeroSector()), 150);
  EXPECT_TRUE(env_.completed.empty()) << "2 of 5 answers are not a majority";
  Tick(299);
  EXPECT_TRUE(env_.sent.empty()) << "backoff doubled: next at 100 + 200";
  Tick(300);
  EXPECT_EQ(Targets(env_.TakeSent(), SystemContent::kReadProc, id), (std::vector<Rank>{2, 3, 5}));
  Tick(699);
  EXPECT_TRUE(env_.sent.empty());
  Tick(700);  // + 400
  EXPECT_EQ(env_.TakeSent().size(), 3u);
  Tick(1499);
  EXPECT_TRUE(env_.sent.empty());
  Tick(1500);  // + 800
  EXPECT_EQ(env_.TakeSent().size(), 3u);
  Tick(2499);
  EXPECT_TRUE(env_.sent.empty());
  Tick(2500);  // capped at retransmit_max_ms = 1000
  EXPECT_EQ(env_.TakeSent().size(), 3u);
  Tick(3500);
  EXPECT_EQ(env_.TakeSent().size(), 3u);
}

TEST_F(RegisterTest, RetransmitSoonSendsAtTheNextTickAndRestartsTheBackoff) {
  MakeCluster(5);
  reg_->RetransmitSoon(0);  // idle: nothing to send
  Tick(0);
  EXPECT_TRUE(env_.sent.empty());
  reg_->StartRead(1, 0);
  Uuid id = IdOf(1);
  env_.TakeSent();
  Deliver(Msg(4, id, SystemContent::kValue, Tag{}, ZeroSector()), 10);
  for (std::int64_t t : {100, 300, 700, 1500}) {
    Tick(t);
    env_.TakeSent();
  }
  Tick(2000);
  EXPECT_TRUE(env_.sent.empty()) << "the back-off has reached 1 s: next at 2500";
  // A peer link came back up (NodeCore::OnPeerLinkUp): at once, to the unanswered only.
  reg_->RetransmitSoon(2010);
  Tick(2010);
  EXPECT_EQ(Targets(env_.TakeSent(), SystemContent::kReadProc, id), (std::vector<Rank>{2, 3, 5}));
  Tick(2209);
  EXPECT_TRUE(env_.sent.empty());
  Tick(2210);  // the back-off starts over: 2010 + 200
  EXPECT_EQ(env_.TakeSent().size(), 3u);
}

TEST_F(RegisterTest, ImposePhaseRetransmitsWriteProcToUnacked) {
  MakeCluster(5, {Tag{2, 1}, Fill(2)});
  reg_->StartRead(1, 0);
  Uuid id = IdOf(1);
  env_.TakeSent();
  Deliver(Msg(2, id, SystemContent::kValue, Tag{}, ZeroSector()), 10);
  Deliver(Msg(3, id, SystemContent::kValue, Tag{2, 1}, Fill(2)), 10);
  EXPECT_EQ(Targets(env_.TakeSent(), SystemContent::kWriteProc, id),
            (std::vector<Rank>{2, 3, 4, 5}));
  Deliver(Msg(5, id, SystemContent::kAck), 20);
  Tick(110);  // the impose phase restarted the backoff at 10
  EXPECT_EQ(Targets(env_.TakeSent(), SystemContent::kWriteProc, id), (std::vector<Rank>{2, 3, 4}));
  Deliver(Msg(3, id, SystemContent::kAck), 120);
  ASSERT_EQ(env_.completed.size(), 1u);
  Tick(10000);
  EXPECT_TRUE(env_.sent.empty()) << "nothing is retransmitted once the operation is done";
}

TEST_F(RegisterTest, StaleAndMisplacedAnswersAreIgnored) {
  MakeCluster(5);
  reg_->StartRead(1, 0);
  Uuid id = IdOf(1);
  env_.TakeSent();
  // Another operation's id, Acks in the first phase, unknown senders, duplicates.
  Deliver(Msg(2, IdOf(77), SystemContent::kValue, Tag{9, 2}, Fill(9)));
  Deliver(Msg(3, id, SystemContent::kAck));
  Deliver(Msg(4, id, SystemContent::kAck));
  Deliver(Msg(9, id, SystemContent::kValue, Tag{}, ZeroSector()));
  Deliver(Msg(2, id, SystemContent::kValue, Tag{}, ZeroSector()));
  Deliver(Msg(2, id, SystemContent::kValue, Tag{}, ZeroSector()));
  EXPECT_TRUE(env_.completed.empty()) << "self + node 2 are 2 answers of the 3 needed";
  EXPECT_TRUE(env_.sent.empty());
  Deliver(Msg(3, id, SystemContent::kValue, Tag{}, ZeroSector()));
  ASSERT_EQ(env_.completed.size(), 1u);
  EXPECT_EQ(*env_.completed[0].data, *ZeroSector());
  // Late answers to the finished operation change nothing.
  Deliver(Msg(4, id, SystemContent::kValue, Tag{8, 4}, Fill(8)));
  Deliver(Msg(4, id, SystemContent::kAck));
  EXPECT_EQ(env_.completed.size(), 1u);
  EXPECT_TRUE(env_.sent.empty());
  EXPECT_TRUE(reg_->Idle());
}

TEST_F(RegisterTest, ValuesAreIgnoredInTheImposePhase) {
  MakeCluster(3);
  reg_->StartRead(1, 0);
  Uuid id = IdOf(1);
  env_.TakeSent();
  Deliver(Msg(2, id, SystemContent::kValue, Tag{1, 2}, Fill(1)));
  auto sent = env_.TakeSent();
  ASSERT_EQ(sent.size(), 2u);
  EXPECT_EQ(sent[0].msg.content, SystemContent::kWriteProc);
  // A late Value carrying something newer must not change the triple being imposed.
  Deliver(Msg(3, id, SystemContent::kValue, Tag{7, 3}, Fill(7)));
  Persisted(Tag{1, 2});
  Deliver(Msg(3, id, SystemContent::kAck));
  ASSERT_EQ(env_.completed.size(), 1u);
  EXPECT_EQ((*env_.completed[0].data)[0], 1);
}

TEST_F(RegisterTest, OperationsOnASectorRunOneAtATimeInOrder) {
  MakeCluster(3);
  reg_->StartWrite(1, Fill(1), 0);
  reg_->StartRead(2, 0);
  reg_->StartWrite(3, Fill(3), 0);
  reg_->CheckInvariants();
  EXPECT_EQ(Targets(env_.TakeSent(), SystemContent::kReadProc, IdOf(1)), (std::vector<Rank>{2, 3}));
  EXPECT_EQ(env_.last_id, 1u) << "queued operations have not started";
  // Finish the write.
  Deliver(Msg(2, IdOf(1), SystemContent::kValue, Tag{}, ZeroSector()));
  Persisted(Tag{1, 1});
  env_.TakeSent();
  Deliver(Msg(2, IdOf(1), SystemContent::kAck));
  ASSERT_EQ(env_.completed.size(), 1u);
  EXPECT_EQ(env_.completed[0].token, 1u);
  // The read starts at once with a fresh id.
  EXPECT_EQ(Targets(env_.TakeSent(), SystemContent::kReadProc, IdOf(2)), (std::vector<Rank>{2, 3}));
  Deliver(Msg(3, IdOf(2), SystemContent::kValue, Tag{1, 1}, Fill(1)));
  ASSERT_EQ(env_.completed.size(), 2u);
  EXPECT_EQ(env_.completed[1].token, 2u);
  EXPECT_EQ((*env_.completed[1].data)[0], 1);
  // Then the second write, whose tag follows the first's.
  EXPECT_EQ(Targets(env_.TakeSent(), SystemContent::kReadProc, IdOf(3)), (std::vector<Rank>{2, 3}));
  Deliver(Msg(3, IdOf(3), SystemContent::kValue, Tag{1, 1}, Fill(1)));
  auto persisted = env_.TakePersisted();
  ASSERT_EQ(persisted.size(), 2u);
  EXPECT_EQ(persisted[1].tag, (Tag{2, 1}));
}

TEST_F(RegisterTest, IdleOnlyWhenNothingIsInFlight) {
  MakeCluster(3);
  EXPECT_TRUE(reg_->Idle());
  EXPECT_FALSE(reg_->HasClientWork());
  reg_->StartRead(1, 0);
  EXPECT_FALSE(reg_->Idle());
  EXPECT_TRUE(reg_->HasClientWork());
  Deliver(Msg(2, IdOf(1), SystemContent::kValue, Tag{}, ZeroSector()));
  EXPECT_TRUE(reg_->Idle());
  EXPECT_FALSE(reg_->HasClientWork());
  // A persist in flight (with an Ack waiting for it) keeps the register busy.
  Deliver(Msg(2, IdOf(50), SystemContent::kWriteProc, Tag{1, 2}, Fill(1)));
  EXPECT_FALSE(reg_->Idle());
  EXPECT_FALSE(reg_->HasClientWork());
  Persisted(Tag{1, 2});
  EXPECT_TRUE(reg_->Idle());
  // A failed persist with its Ack still owed keeps it busy too.
  Deliver(Msg(3, IdOf(51), SystemContent::kWriteProc, Tag{2, 3}, Fill(2)));
  Persisted(Tag{2, 3}, Status::IOError("EIO"));
  EXPECT_FALSE(reg_->Idle());
}

TEST_F(RegisterTest, StaleStoreCompletionIsIgnored) {
  MakeCluster(3, {Tag{3, 1}, Fill(3)});
  Persisted(Tag{9, 9});  // never asked for
  EXPECT_EQ(reg_->durable().tag, (Tag{3, 1}));
  EXPECT_TRUE(env_.sent.empty());
}

TEST_F(RegisterTest, DurableTagNeverDecreases) {
  MakeCluster(3);
  Deliver(Msg(2, IdOf(60), SystemContent::kWriteProc, Tag{2, 2}, Fill(2)));
  Deliver(Msg(3, IdOf(61), SystemContent::kWriteProc, Tag{4, 3}, Fill(4)));
  auto persisted = env_.TakePersisted();
  ASSERT_EQ(persisted.size(), 2u);
  // The newer one completes first; the older completion must not roll durable back.
  Persisted(Tag{4, 3});
  EXPECT_EQ(reg_->durable().tag, (Tag{4, 3}));
  Persisted(Tag{2, 2});
  EXPECT_EQ(reg_->durable().tag, (Tag{4, 3}));
  EXPECT_EQ(env_.sent.size(), 2u) << "both WriteProcs acked";
  EXPECT_TRUE(reg_->Idle());
}

TEST_F(RegisterTest, SingleNodeClusterFinishesAtOnce) {
  config_.self = 1;
  config_.ranks = {1};
  reg_.emplace(FakeEnv::kSector, Triple{Tag{}, ZeroSector()}, &config_, &env_);
  reg_->StartRead(1, 0);
  ASSERT_EQ(env_.completed.size(), 1u);
  reg_->StartWrite(2, Fill(5), 0);
  ASSERT_EQ(env_.TakePersisted().size(), 1u);
  Persisted(Tag{1, 1});
  ASSERT_EQ(env_.completed.size(), 2u);
  EXPECT_TRUE(env_.sent.empty());
}

// ---- a node that does not vote (joining after a lost disk, docs/RESYNC.md) ----

TEST_F(RegisterTest, NonVotingNodeAnswersNoReadProcAndAcksNoWriteProcButStoresIt) {
  MakeCluster(3);
  config_.votes = false;
  Deliver(Msg(2, IdOf(100), SystemContent::kReadProc));
  EXPECT_TRUE(env_.TakeSent().empty()) << "a joining node sent a Value";
  Deliver(Msg(2, IdOf(101), SystemContent::kWriteProc, Tag{5, 2}, Fill(5)));
  std::vector<Triple> p = env_.TakePersisted();
  ASSERT_EQ(p.size(), 1u) << "the WriteProc's value must still be stored";
  EXPECT_EQ(p[0].tag, (Tag{5, 2}));
  Persisted(Tag{5, 2});
  EXPECT_TRUE(env_.TakeSent().empty()) << "a joining node acknowledged a WriteProc";
  EXPECT_EQ(reg_->durable().tag, (Tag{5, 2}));
}

TEST_F(RegisterTest, NonVotingCoordinatorNeedsAMajorityOfPeers) {
  MakeCluster(3);
  config_.votes = false;
  reg_->StartRead(1, 0);
  reg_->CheckInvariants();
  env_.TakeSent();
  // One peer alone would be a majority together with us; without our vote it is not.
  Deliver(Msg(2, IdOf(1), SystemContent::kValue, Tag{}, ZeroSector()));
  EXPECT_TRUE(env_.completed.empty());
  Deliver(Msg(3, IdOf(1), SystemContent::kValue, Tag{}, ZeroSector()));
  ASSERT_EQ(env_.completed.size(), 1u);
  EXPECT_EQ(env_.completed[0].token, 1u);
}

TEST_F(RegisterTest, OperationStartedBeforeVotingFinishesOnceTheNodeVotes) {
  MakeCluster(1);
  config_.votes = false;
  reg_->StartRead(9, 0);
  reg_->CheckInvariants();
  EXPECT_TRUE(env_.completed.empty()) << "a one-node cluster that does not vote has no quorum";
  config_.votes = true;
  reg_->OnVotesChanged(0);
  reg_->CheckInvariants();
  ASSERT_EQ(env_.completed.size(), 1u);
  EXPECT_EQ(env_.completed[0].token, 9u);
}

// A joining node's read: its first phase began while the disk was still empty; the join pass
// then brought a newer value, and the node starts voting. Its own answer is that newer value,
// not the empty one of the start (the simulator found this at seed 1710, 3 nodes: the read
// imposed a value overwritten long before).
TEST_F(RegisterTest, NodeThatStartsVotingMidReadAnswersWithWhatIsDurableNow) {
  MakeCluster(3);
  config_.votes = false;
  reg_->StartRead(4, 0);
  const Uuid id = IdOf(1);  // the first operation id the register takes
  env_.TakeSent();
  Deliver(Msg(2, id, SystemContent::kValue, Tag{2, 2}, Fill(2)));  // a stale peer
  EXPECT_TRUE(env_.completed.empty());
  reg_->Absorb(Triple{Tag{9, 3}, Fill(9)});  // the join pass
  ASSERT_EQ(env_.TakePersisted().size(), 1u);
  Persisted(Tag{9, 3});
  config_.votes = true;
  reg_->OnVotesChanged(0);
  reg_->CheckInvariants();
  std::vector<Sent> sent = env_.TakeSent();
  bool imposed = false;
  for (const Sent& s : sent) {
    if (s.msg.content != SystemContent::kWriteProc) continue;
    imposed = true;
    EXPECT_EQ(s.msg.tag, (Tag{9, 3})) << "imposed the stale value";
  }
  EXPECT_TRUE(imposed);
}

TEST_F(RegisterTest, FailedPersistIsRetriedByTickSoTheRegisterCanGoIdle) {
  MakeCluster(3);
  Deliver(Msg(2, IdOf(7), SystemContent::kWriteProc, Tag{3, 2}, Fill(3)));
  ASSERT_EQ(env_.TakePersisted().size(), 1u);
  Persisted(Tag{3, 2}, Status::IOError("injected"));
  EXPECT_FALSE(reg_->Idle());
  Tick(10);
  std::vector<Triple> p = env_.TakePersisted();
  ASSERT_EQ(p.size(), 1u) << "the failed persist was not retried";
  EXPECT_EQ(p[0].tag, (Tag{3, 2}));
  Persisted(Tag{3, 2});
  EXPECT_TRUE(reg_->Idle());
}

// A resync absorb whose own Persist failed while the absorb's separate store write succeeded
// (daemon/core/node_core.cc): the store says the value is durable, so durable() follows at
// once instead of waiting for the next tick's re-persist. Older or unknown values change
// nothing.
TEST_F(RegisterTest, DurableElsewhereAdvancesDurableOnlyToWhatItStored) {
  MakeCluster(3);
  reg_->Absorb(Triple{Tag{5, 2}, Fill(5)});
  ASSERT_EQ(env_.TakePersisted().size(), 1u);
  Persisted(Tag{5, 2}, Status::IOError("injected"));
  EXPECT_EQ(reg_->durable().tag, Tag{});
  EXPECT_FALSE(reg_->Idle());
  // Above what the register stored: not something it holds, ignored.
  reg_->OnDurableElsewhere(Triple{Tag{6, 2}, Fill(6)}, 1);
  EXPECT_EQ(reg_->durable().tag, Tag{});
  reg_->OnDurableElsewhere(Triple{Tag{5, 2}, Fill(5)}, 1);
  reg_->CheckInvariants();
  EXPECT_EQ(reg_->durable().tag, (Tag{5, 2}));
  EXPECT_EQ(reg_->durable().data->at(0), 5);
  EXPECT_TRUE(reg_->Idle());
  // Below durable(): nothing moves back.
  reg_->OnDurableElsewhere(Triple{Tag{1, 1}, Fill(1)}, 2);
  EXPECT_EQ(reg_->durable().tag, (Tag{5, 2}));
  Tick(10);
  EXPECT_TRUE(env_.TakePersisted().empty()) << "nothing is left to re-persist";
}

// ---- the tag-only first phase (docs/REGISTER.md) ----

// The ranks each content went to, in send order; every message must carry `id`.
std::vector<Rank> SentAs(const std::vector<Sent>& sent, SystemContent content, Uuid id) {
  std::vector<Rank> to;
  for (const auto& s : sent) {
    EXPECT_EQ(s.msg.op_id, id);
    if (s.msg.content == content) to.push_back(s.to);
  }
  return to;
}

TEST_F(RegisterTest, TagPeersGetReadTagAndTheOthersReadProc) {
  MakeCluster(5);
  config_.tag_peers = {true, true, false, true, false};  // self's entry is never used
  reg_->StartRead(1, 0);
  Uuid id = IdOf(1);
  auto sent = env_.TakeSent();
  ASSERT_EQ(sent.size(), 4u);
  EXPECT_EQ(SentAs(sent, SystemContent::kReadTag, id), (std::vector<Rank>{2, 4}));
  EXPECT_EQ(SentAs(sent, SystemContent::kReadProc, id), (std::vector<Rank>{3, 5}));
  // Retransmissions follow the current list: a peer that stopped advertising gets ReadProc.
  Deliver(Msg(4, id, SystemContent::kTag, Tag{}, nullptr), 10);
  config_.tag_peers[1] = false;
  Tick(100);
  sent = env_.TakeSent();
  EXPECT_TRUE(SentAs(sent, SystemContent::kReadTag, id).empty());
  EXPECT_EQ(SentAs(sent, SystemContent::kReadProc, id), (std::vector<Rank>{2, 3, 5}));
  // A list shorter than ranks (or empty) means ReadProc for the ranks it does not cover.
  config_.tag_peers = {false, true};
  Tick(300);
  sent = env_.TakeSent();
  EXPECT_EQ(SentAs(sent, SystemContent::kReadTag, id), (std::vector<Rank>{2}));
  EXPECT_EQ(SentAs(sent, SystemContent::kReadProc, id), (std::vector<Rank>{3, 5}));
  // Writes ask tag peers for tags too.
  Deliver(Msg(2, id, SystemContent::kTag, Tag{}, nullptr), 301);
  ASSERT_EQ(env_.completed.size(), 1u);
  reg_->StartWrite(2, Fill(3), 302);
  sent = env_.TakeSent();
  EXPECT_EQ(SentAs(sent, SystemContent::kReadTag, IdOf(2)), (std::vector<Rank>{2}));
  EXPECT_EQ(SentAs(sent, SystemContent::kReadProc, IdOf(2)), (std::vector<Rank>{3, 4, 5}));
}

TEST_F(RegisterTest, AnswersReadTagWithTheDurableTagOnly) {
  MakeCluster(3, {Tag{3, 3}, Fill(3)});
  Deliver(Msg(2, IdOf(100), SystemContent::kWriteProc, Tag{4, 2}, Fill(4)));
  ASSERT_EQ(env_.TakePersisted().size(), 1u);
  // Being persisted is not durable: the Tag, like a Value, reports (3,3).
  Deliver(Msg(3, IdOf(101), SystemContent::kReadTag));
  auto sent = env_.TakeSent();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].to, 3);
  EXPECT_EQ(sent[0].msg.content, SystemContent::kTag);
  EXPECT_EQ(sent[0].msg.op_id, IdOf(101));
  EXPECT_EQ(sent[0].msg.sector, FakeEnv::kSector);
  EXPECT_EQ(sent[0].msg.tag, (Tag{3, 3}));
  EXPECT_EQ(sent[0].msg.data, nullptr) << "a Tag carries no sector data";
  Persisted(Tag{4, 2});
  env_.TakeSent();  // the Ack
  Deliver(Msg(3, IdOf(102), SystemContent::kReadTag));
  sent = env_.TakeSent();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].msg.content, SystemContent::kTag);
  EXPECT_EQ(sent[0].msg.tag, (Tag{4, 2}));
  // ReadProc still gets a Value.
  Deliver(Msg(3, IdOf(103), SystemContent::kReadProc));
  sent = env_.TakeSent();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].msg.content, SystemContent::kValue);
  ASSERT_NE(sent[0].msg.data, nullptr);
  EXPECT_EQ((*sent[0].msg.data)[0], 4);
}

TEST_F(RegisterTest, NonVotingNodeAnswersNoReadTag) {
  MakeCluster(3, {Tag{3, 3}, Fill(3)});
  config_.votes = false;
  Deliver(Msg(2, IdOf(100), SystemContent::kReadTag));
  EXPECT_TRUE(env_.TakeSent().empty()) << "a joining node sent a Tag";
  config_.votes = true;
  Deliver(Msg(2, IdOf(101), SystemContent::kReadTag));
  EXPECT_EQ(env_.TakeSent().size(), 1u);
}

TEST_F(RegisterTest, WriteCompletesFromTagAnswersAlone) {
  MakeCluster(3, {Tag{2, 3}, Fill(2)});
  config_.tag_peers = {false, true, true};
  SectorPtr x = Fill(0x77);
  reg_->StartWrite(42, x, 0);
  Uuid id = IdOf(1);
  EXPECT_EQ(Targets(env_.TakeSent(), SystemContent::kReadTag, id), (std::vector<Rank>{2, 3}));
  Deliver(Msg(3, id, SystemContent::kTag, Tag{5, 2}, nullptr));
  auto persisted = env_.TakePersisted();
  ASSERT_EQ(persisted.size(), 1u);
  EXPECT_EQ(persisted[0].tag, (Tag{6, 1})) << "the new tag lies above the Tag's";
  EXPECT_EQ(*persisted[0].data, *x);
  Persisted(Tag{6, 1}, Status::Ok(), 1);
  EXPECT_EQ(Targets(env_.TakeSent(), SystemContent::kWriteProc, id), (std::vector<Rank>{2, 3}));
  Deliver(Msg(2, id, SystemContent::kAck), 2);
  ASSERT_EQ(env_.completed.size(), 1u);
  EXPECT_EQ(env_.completed[0].token, 42u);
  EXPECT_EQ(env_.last_id, 1u) << "a write never re-asks for values";
  EXPECT_TRUE(reg_->Idle());
}

TEST_F(RegisterTest, ReadReturnsItsOwnValueWhenTheQuorumsTagsMatchIt) {
  SectorPtr v = Fill(0xaa);
  MakeCluster(3, {Tag{4, 2}, v});
  config_.tag_peers = {false, true, true};
  reg_->StartRead(11, 0);
  Uuid id = IdOf(1);
  EXPECT_EQ(Targets(env_.TakeSent(), SystemContent::kReadTag, id), (std::vector<Rank>{2, 3}));
  Deliver(Msg(2, id, SystemContent::kTag, Tag{4, 2}, nullptr));
  ASSERT_EQ(env_.completed.size(), 1u);
  EXPECT_EQ(env_.completed[0].token, 11u);
  ASSERT_NE(env_.completed[0].data, nullptr);
  EXPECT_EQ(*env_.completed[0].data, *v);
  EXPECT_TRUE(env_.sent.empty()) << "no impose phase and no second round";
  EXPECT_TRUE(env_.persisted.empty());
  EXPECT_TRUE(reg_->Idle());
}

TEST_F(RegisterTest, ReadWithOwnNewestValueImposesItAfterTags) {
  MakeCluster(3, {Tag{6, 1}, Fill(6)});
  config_.tag_peers = {false, true, true};
  reg_->StartRead(5, 0);
  Uuid id = IdOf(1);
  env_.TakeSent();
  Deliver(Msg(3, id, SystemContent::kTag, Tag{2, 3}, nullptr));
  EXPECT_EQ(Targets(env_.TakeSent(), SystemContent::kWriteProc, id), (std::vector<Rank>{2, 3}));
  Deliver(Msg(3, id, SystemContent::kAck));
  ASSERT_EQ(env_.completed.size(), 1u);
  EXPECT_EQ((*env_.completed[0].data)[0], 6);
}

TEST_F(RegisterTest, ReadBehindAQuorumsTagAsksEveryoneForValues) {
  MakeCluster(3, {Tag{1, 1}, Fill(1)});
  config_.tag_peers = {false, true, true};
  reg_->StartRead(5, 0);
  Uuid first = IdOf(1);
  EXPECT_EQ(Targets(env_.TakeSent(), SystemContent::kReadTag, first), (std::vector<Rank>{2, 3}));
  // Node 2 holds (3,2), whose value we do not have: a quorum answered, but the read cannot
  // return (1,1) nor impose (3,2). It asks everyone again with ReadProc, under a new id.
  Deliver(Msg(2, first, SystemContent::kTag, Tag{3, 2}, nullptr), 10);
  EXPECT_TRUE(env_.completed.empty());
  EXPECT_TRUE(env_.persisted.empty());
  Uuid second = IdOf(2);
  EXPECT_EQ(Targets(env_.TakeSent(), SystemContent::kReadProc, second), (std::vector<Rank>{2, 3}));
  EXPECT_FALSE(reg_->WantsValue(Msg(3, first, SystemContent::kValue, Tag{3, 2}, Fill(3))))
      << "a Value of the first round";
  EXPECT_TRUE(reg_->WantsValue(Msg(3, second, SystemContent::kValue, Tag{3, 2}, Fill(3))));
  // Late answers of the first round, and a Tag in values mode, are ignored: none of them
  // may complete the quorum (self + one more would).
  Deliver(Msg(3, first, SystemContent::kTag, Tag{3, 2}, nullptr), 11);
  Deliver(Msg(3, first, SystemContent::kValue, Tag{1, 1}, Fill(1)), 11);
  Deliver(Msg(3, second, SystemContent::kTag, Tag{1, 1}, nullptr), 11);
  EXPECT_TRUE(env_.completed.empty());
  EXPECT_TRUE(env_.sent.empty());
  // Retransmissions in values mode are ReadProc, even to tag peers.
  Tick(110);
  EXPECT_EQ(Targets(env_.TakeSent(), SystemContent::kReadProc, second), (std::vector<Rank>{2, 3}));
  // Node 2's Value: (3,2) with its data, newer than ours, so the read imposes it.
  SectorPtr newer = Fill(3);
  Deliver(Msg(2, second, SystemContent::kValue, Tag{3, 2}, newer), 120);
  auto sent = env_.TakeSent();
  EXPECT_EQ(Targets(sent, SystemContent::kWriteProc, second), (std::vector<Rank>{2, 3}));
  for (const auto& m : sent) EXPECT_EQ(*m.msg.data, *newer);
  auto persisted = env_.TakePersisted();
  ASSERT_EQ(persisted.size(), 1u);
  EXPECT_EQ(persisted[0].tag, (Tag{3, 2}));
  Persisted(Tag{3, 2}, Status::Ok(), 121);
  Deliver(Msg(2, second, SystemContent::kAck), 122);
  ASSERT_EQ(env_.completed.size(), 1u);
  EXPECT_EQ(*env_.completed[0].data, *newer);
  EXPECT_TRUE(reg_->Idle());
  // The next operation starts in tag mode again.
  reg_->StartRead(6, 200);
  EXPECT_EQ(Targets(env_.TakeSent(), SystemContent::kReadTag, IdOf(3)), (std::vector<Rank>{2, 3}));
}

// In values mode a majority that agrees returns at once, like a classic read; the new round
// starts from what is durable here then.
TEST_F(RegisterTest, ReadInValuesModeReturnsInOneRoundWhenTheValuesAgree) {
  MakeCluster(3, {Tag{1, 1}, Fill(1)});
  config_.tag_peers = {false, true, true};
  reg_->StartRead(5, 0);
  env_.TakeSent();
  // Another node's WriteProc of (2,3) becomes durable here while our read collects.
  SectorPtr v = Fill(2);
  Deliver(Msg(3, IdOf(100), SystemContent::kWriteProc, Tag{2, 3}, v), 1);
  ASSERT_EQ(env_.TakePersisted().size(), 1u);
  Persisted(Tag{2, 3}, Status::Ok(), 2);
  EXPECT_EQ(SentAs(env_.TakeSent(), SystemContent::kAck, IdOf(100)), (std::vector<Rank>{3}));
  // The read began with (1,1) and now hears of (2,3) in a Tag: it re-asks for values...
  Deliver(Msg(2, IdOf(1), SystemContent::kTag, Tag{2, 3}, nullptr), 3);
  EXPECT_EQ(Targets(env_.TakeSent(), SystemContent::kReadProc, IdOf(2)), (std::vector<Rank>{2, 3}));
  EXPECT_TRUE(env_.completed.empty());
  // ... and one Value agreeing with our durable (2,3) completes it, with no impose.
  Deliver(Msg(2, IdOf(2), SystemContent::kValue, Tag{2, 3}, Fill(2)), 4);
  ASSERT_EQ(env_.completed.size(), 1u);
  EXPECT_EQ(*env_.completed[0].data, *v);
  EXPECT_TRUE(env_.sent.empty());
  EXPECT_TRUE(env_.persisted.empty());
}

TEST_F(RegisterTest, MixedTagAndValuePeers) {
  // Node 2 and 3 answer Tags, 4 and 5 Values; a quorum is 3 (self and two more).
  for (bool value_first : {false, true}) {
    SCOPED_TRACE(value_first);
    env_ = FakeEnv();
    MakeCluster(5, {Tag{2, 1}, Fill(2)});
    config_.tag_peers = {false, true, true, false, false};
    reg_->StartRead(1, 0);
    Uuid id = IdOf(1);
    auto sent = env_.TakeSent();
    EXPECT_EQ(SentAs(sent, SystemContent::kReadTag, id), (std::vector<Rank>{2, 3}));
    EXPECT_EQ(SentAs(sent, SystemContent::kReadProc, id), (std::vector<Rank>{4, 5}));
    // A Tag reports (5,3), a Value carries it: the read holds the value and imposes it at
    // once, with no values-mode round, whichever answer comes first.
    SectorPtr newest = Fill(5);
    SystemMessage tag = Msg(2, id, SystemContent::kTag, Tag{5, 3}, nullptr);
    SystemMessage value = Msg(4, id, SystemContent::kValue, Tag{5, 3}, newest);
    Deliver(value_first ? value : tag);
    Deliver(value_first ? tag : value);
    EXPECT_EQ(env_.last_id, 1u) << "no second collect round";
    sent = env_.TakeSent();
    EXPECT_EQ(Targets(sent, SystemContent::kWriteProc, id), (std::vector<Rank>{2, 3, 4, 5}));
    for (const auto& m : sent) EXPECT_EQ(*m.msg.data, *newest);
    Persisted(Tag{5, 3});
    Deliver(Msg(5, id, SystemContent::kAck));
    Deliver(Msg(3, id, SystemContent::kAck));
    ASSERT_EQ(env_.completed.size(), 1u);
    EXPECT_EQ(*env_.completed[0].data, *newest);
  }
  // All agree with our own durable value: a Tag and a Value make the quorum, no impose.
  env_ = FakeEnv();
  SectorPtr own = Fill(2);
  MakeCluster(5, {Tag{2, 1}, own});
  config_.tag_peers = {false, true, true, false, false};
  reg_->StartRead(1, 0);
  env_.TakeSent();
  Deliver(Msg(3, IdOf(1), SystemContent::kTag, Tag{2, 1}, nullptr));
  Deliver(Msg(5, IdOf(1), SystemContent::kValue, Tag{2, 1}, Fill(2)));
  ASSERT_EQ(env_.completed.size(), 1u);
  EXPECT_EQ(*env_.completed[0].data, *own);
  EXPECT_TRUE(env_.sent.empty());
}

// After a disk replacement the node's writes take ts from a floor above anything its old
// incarnation may have used (docs/RESYNC.md); the floor only ever raises the ts.
TEST_F(RegisterTest, WriteTsIsAtLeastTheConfiguredFloor) {
  for (auto [floor, want] : {std::pair<std::uint64_t, std::uint64_t>{1000, 1000},
                             std::pair<std::uint64_t, std::uint64_t>{3, 6}}) {
    SCOPED_TRACE(floor);
    env_ = FakeEnv();
    config_.min_write_ts = floor;
    MakeCluster(3, {Tag{2, 3}, Fill(2)});
    reg_->StartWrite(42, Fill(0x77), 0);
    Uuid id = IdOf(1);
    EXPECT_EQ(Targets(env_.TakeSent(), SystemContent::kReadProc, id), (std::vector<Rank>{2, 3}));
    Deliver(Msg(3, id, SystemContent::kValue, Tag{5, 2}, Fill(5)));
    auto persisted = env_.TakePersisted();
    ASSERT_EQ(persisted.size(), 1u);
    EXPECT_EQ(persisted[0].tag, (Tag{want, 1}));
    Persisted(Tag{want, 1}, Status::Ok(), 1);
    auto sent = env_.TakeSent();
    EXPECT_EQ(Targets(sent, SystemContent::kWriteProc, id), (std::vector<Rank>{2, 3}));
    for (const auto& s : sent) EXPECT_EQ(s.msg.tag, (Tag{want, 1}));
    Deliver(Msg(2, id, SystemContent::kAck), 2);
    ASSERT_EQ(env_.completed.size(), 1u);
    EXPECT_TRUE(reg_->Idle());
  }
}

// A write whose collect finds the highest allowed ts has no tag to write with: it is refused
// (nothing stored, nothing sent, no completion), never wrapped to a low ts and acknowledged,
// and the next operation on the sector runs.
TEST_F(RegisterTest, WriteAtTheTopOfTheTimestampRangeIsRefusedNotWrapped) {
  for (std::uint64_t top : {kMaxTagTs, kMaxTagTs - 1}) {
    SCOPED_TRACE(top);
    env_ = FakeEnv();
    MakeCluster(3);
    reg_->StartWrite(42, Fill(0x77), 0);
    reg_->StartRead(43, 0);
    Uuid id = IdOf(1);
    EXPECT_EQ(Targets(env_.TakeSent(), SystemContent::kReadProc, id), (std::vector<Rank>{2, 3}));
    Deliver(Msg(3, id, SystemContent::kValue, Tag{top, 2}, Fill(5)));
    if (top == kMaxTagTs) {
      ASSERT_EQ(env_.refused.size(), 1u);
      EXPECT_EQ(env_.refused[0].first, 42u);
      EXPECT_NE(env_.refused[0].second.find("top of the timestamp range"), std::string::npos);
      EXPECT_TRUE(env_.TakePersisted().empty());
      EXPECT_TRUE(env_.completed.empty());
      // The queued read runs next and asks again (op id 2).
      EXPECT_EQ(Targets(env_.TakeSent(), SystemContent::kReadProc, IdOf(2)),
                (std::vector<Rank>{2, 3}));
    } else {
      // One below the top still writes, at the top.
      EXPECT_TRUE(env_.refused.empty());
      auto persisted = env_.TakePersisted();
      ASSERT_EQ(persisted.size(), 1u);
      EXPECT_EQ(persisted[0].tag, (Tag{kMaxTagTs, 1}));
    }
  }
}

}  // namespace
}  // namespace atomdisk

namespace atomdisk {
namespace {

// Thrifty collect (RegisterConfig::thrifty_collect): the first ask goes to a quorum's worth of
// responsive peers, rotating; a retransmission asks everyone still unanswered.
TEST_F(RegisterTest, ThriftyCollectAsksOnlyWhatTheQuorumNeedsAndRotates) {
  MakeCluster(3, {Tag{4, 2}, Fill(4)});
  config_.tag_peers = {false, true, true};
  config_.thrifty_collect = true;
  std::vector<Rank> first_targets;
  for (std::uint64_t op = 0; op < 4; ++op) {
    reg_->StartRead(op, 0);
    Uuid id = IdOf(op + 1);
    auto to = Targets(env_.TakeSent(), SystemContent::kReadTag, id);
    ASSERT_EQ(to.size(), 1u) << "self plus one peer make the quorum";
    first_targets.push_back(to[0]);
    Deliver(Msg(to[0], id, SystemContent::kTag, Tag{4, 2}, nullptr));
    ASSERT_EQ(env_.completed.size(), op + 1);
  }
  EXPECT_NE(std::count(first_targets.begin(), first_targets.end(), 2), 0) << "spread over peers";
  EXPECT_NE(std::count(first_targets.begin(), first_targets.end(), 3), 0) << "spread over peers";
}

TEST_F(RegisterTest, ThriftyCollectRetransmitsToEveryUnansweredPeer) {
  MakeCluster(5, {Tag{1, 1}, Fill(1)});
  config_.tag_peers = {false, true, true, true, true};
  config_.thrifty_collect = true;
  SectorPtr x = Fill(9);
  reg_->StartWrite(3, x, 0);
  Uuid id = IdOf(1);
  auto to = Targets(env_.TakeSent(), SystemContent::kReadTag, id);
  ASSERT_EQ(to.size(), 2u) << "self plus two peers make the quorum of five";
  Deliver(Msg(to[0], id, SystemContent::kTag, Tag{1, 1}, nullptr), 5);
  EXPECT_TRUE(env_.persisted.empty());
  Tick(100);  // the other one never answered: ask all three still unanswered
  auto again = Targets(env_.TakeSent(), SystemContent::kReadTag, id);
  EXPECT_EQ(again.size(), 3u);
  EXPECT_EQ(std::count(again.begin(), again.end(), to[0]), 0);
  Deliver(Msg(again[0], id, SystemContent::kTag, Tag{7, 4}, nullptr), 101);
  auto persisted = env_.TakePersisted();
  ASSERT_EQ(persisted.size(), 1u);
  EXPECT_EQ(persisted[0].tag, (Tag{8, 1}));
}

TEST_F(RegisterTest, ThriftyCollectSkipsUnresponsivePeersAndAsksAllWhenTooFewAre) {
  MakeCluster(3, {Tag{4, 2}, Fill(4)});
  config_.thrifty_collect = true;
  env_.unresponsive = {2};
  for (std::uint64_t op = 0; op < 3; ++op) {
    reg_->StartRead(op, 0);
    Uuid id = IdOf(op + 1);
    EXPECT_EQ(Targets(env_.TakeSent(), SystemContent::kReadProc, id), (std::vector<Rank>{3}));
    Deliver(Msg(3, id, SystemContent::kValue, Tag{4, 2}, Fill(4)));
  }
  env_.unresponsive = {2, 3};
  reg_->StartRead(9, 0);
  EXPECT_EQ(Targets(env_.TakeSent(), SystemContent::kReadProc, IdOf(4)), (std::vector<Rank>{2, 3}))
      << "nobody responsive: the classic ask of everyone";
}

TEST_F(RegisterTest, ThriftyReadBehindAsksEveryoneInValuesMode) {
  MakeCluster(3, {Tag{1, 1}, Fill(1)});
  config_.tag_peers = {false, true, true};
  config_.thrifty_collect = true;
  reg_->StartRead(5, 0);
  auto to = Targets(env_.TakeSent(), SystemContent::kReadTag, IdOf(1));
  ASSERT_EQ(to.size(), 1u);
  Deliver(Msg(to[0], IdOf(1), SystemContent::kTag, Tag{3, 2}, nullptr), 1);
  EXPECT_EQ(Targets(env_.TakeSent(), SystemContent::kReadProc, IdOf(2)), (std::vector<Rank>{2, 3}))
      << "the peer that holds the newer value must be asked";
}

TEST_F(RegisterTest, ImposeGoesToEveryPeerUnderThriftyCollect) {
  MakeCluster(3, {Tag{1, 1}, Fill(1)});
  config_.tag_peers = {false, true, true};
  config_.thrifty_collect = true;
  config_.write_ts_lease = 1000;
  reg_->StartWrite(3, Fill(5), 0);
  auto to = Targets(env_.TakeSent(), SystemContent::kReadTag, IdOf(1));
  ASSERT_EQ(to.size(), 1u);
  Deliver(Msg(to[0], IdOf(1), SystemContent::kTag, Tag{1, 1}, nullptr), 1);
  EXPECT_EQ(Targets(env_.TakeSent(), SystemContent::kWriteProc, IdOf(1)),
            (std::vector<Rank>{2, 3}));
}

// Built from a cached durable tag alone (no data) for a WriteProc with a higher tag, as the
// node core does for a replica's overwrite: nothing of the old value is ever needed.
class TagOnlyRegisterTest : public RegisterTest {
 protected:
  // The ranks that got a message with this content and id (others are ignored).
  static std::vector<Rank> To(const std::vector<Sent>& sent, SystemContent content, Uuid id) {
    std::vector<Rank> out;
    for (const Sent& s : sent) {
      if (s.msg.content == content && s.msg.op_id == id) out.push_back(s.to);
    }
    return out;
  }
  // A 3-node register at node 1 whose durable tag (5, 3) is known without its data.
  void MakeIdleFromTag() {
    config_.self = 1;
    config_.ranks = {1, 2, 3};
    config_.retransmit_initial_ms = 100;
    config_.retransmit_max_ms = 1000;
    reg_.emplace(FakeEnv::kSector, Triple{Tag{5, 3}, nullptr}, &config_, &env_);
    reg_->CheckInvariants();
  }
  // That register, handed rank 2's WriteProc of (9, 2) with 0x22s under op id 50.
  void MakeFromTag() {
    MakeIdleFromTag();
    Deliver(Msg(2, IdOf(50), SystemContent::kWriteProc, Tag{9, 2}, Fill(0x22)));
  }
};

TEST_F(TagOnlyRegisterTest, PersistsAndAcksTheWriteProcAsABuiltRegisterWould) {
  MakeFromTag();
  auto persisted = env_.TakePersisted();
  ASSERT_EQ(persisted.size(), 1u);
  EXPECT_EQ(persisted[0].tag, (Tag{9, 2}));
  EXPECT_TRUE(env_.TakeSent().empty()) << "no Ack before the persist";
  EXPECT_FALSE(reg_->Idle());
  Persisted(Tag{9, 2});
  auto sent = env_.TakeSent();
  EXPECT_EQ(To(sent, SystemContent::kAck, IdOf(50)), (std::vector<Rank>{2}));
  EXPECT_EQ(reg_->durable().tag, (Tag{9, 2}));
  EXPECT_EQ((*reg_->durable().data)[0], 0x22);
  EXPECT_TRUE(reg_->Idle());
}

TEST_F(TagOnlyRegisterTest, AnswersATagAtOnceAndAValueOnlyOnceTheNewValueIsDurable) {
  MakeFromTag();
  env_.TakePersisted();
  Deliver(Msg(3, IdOf(60), SystemContent::kReadTag));
  auto sent = env_.TakeSent();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].msg.content, SystemContent::kTag);
  EXPECT_EQ(sent[0].msg.tag, (Tag{5, 3})) << "the durable tag, not the one being persisted";
  Deliver(Msg(3, IdOf(61), SystemContent::kReadProc));
  Deliver(Msg(3, IdOf(61), SystemContent::kReadProc));  // a retransmission: answered once
  EXPECT_TRUE(env_.TakeSent().empty()) << "no data to answer with yet";
  EXPECT_FALSE(reg_->Idle());
  Persisted(Tag{9, 2});
  sent = env_.TakeSent();
  auto values = std::count_if(sent.begin(), sent.end(),
                              [](const Sent& s) { return s.msg.content == SystemContent::kValue; });
  EXPECT_EQ(values, 1);
  for (const Sent& s : sent) {
    if (s.msg.content != SystemContent::kValue) continue;
    EXPECT_EQ(s.to, 3);
    EXPECT_EQ(s.msg.op_id, IdOf(61));
    EXPECT_EQ(s.msg.tag, (Tag{9, 2}));
    ASSERT_TRUE(s.msg.data);
    EXPECT_EQ((*s.msg.data)[0], 0x22);
  }
}

TEST_F(TagOnlyRegisterTest, AFailedPersistKeepsAnswersWaitingUntilTheRetrySucceeds) {
  MakeFromTag();
  env_.TakePersisted();
  Deliver(Msg(3, IdOf(61), SystemContent::kReadProc));
  Persisted(Tag{9, 2}, Status::IOError("disk"));
  EXPECT_TRUE(env_.TakeSent().empty());
  Tick(10);  // re-issues the persist
  auto persisted = env_.TakePersisted();
  ASSERT_EQ(persisted.size(), 1u);
  EXPECT_EQ(persisted[0].tag, (Tag{9, 2}));
  Persisted(Tag{9, 2}, Status::Ok(), 10);
  auto sent = env_.TakeSent();
  EXPECT_EQ(To(sent, SystemContent::kValue, IdOf(61)), (std::vector<Rank>{3}));
  EXPECT_TRUE(reg_->Idle());
}

TEST_F(TagOnlyRegisterTest, ClientOperationsWaitForTheDurableValueThenStartFromIt) {
  MakeFromTag();
  env_.TakePersisted();
  reg_->StartRead(11, 0);
  reg_->CheckInvariants();
  EXPECT_TRUE(env_.TakeSent().empty()) << "the collect starts from durable data";
  EXPECT_TRUE(reg_->HasClientWork());
  Persisted(Tag{9, 2});
  auto sent = env_.TakeSent();
  // The Ack for rank 2, then the read's collect to both peers.
  EXPECT_EQ(To(sent, SystemContent::kAck, IdOf(50)), (std::vector<Rank>{2}));
  const Uuid id = IdOf(env_.last_id);
  std::size_t asks = 0;
  for (const Sent& s : sent) {
    if (s.msg.op_id != id) continue;
    EXPECT_TRUE(s.msg.content == SystemContent::kReadProc ||
                s.msg.content == SystemContent::kReadTag);
    ++asks;
  }
  EXPECT_EQ(asks, 2u);
  Deliver(Msg(2, id, SystemContent::kValue, Tag{9, 2}, Fill(0x22)));
  ASSERT_EQ(env_.completed.size(), 1u);
  EXPECT_EQ(env_.completed[0].token, 11u);
  ASSERT_TRUE(env_.completed[0].data);
  EXPECT_EQ((*env_.completed[0].data)[0], 0x22);
}

// The coordinator's side: a client write may start on a register built from the cached tag
// alone (its collect needs only tags); a read waits for durable data, and when nothing will
// bring it (the write was refused) the owner is asked to read the store.
class TagOnlyCoordinatorTest : public TagOnlyRegisterTest {
 protected:
  // Answers the current collect (the last op id) from `from` with a Value of `tag`.
  void AnswerCollect(Rank from, Tag tag, std::uint8_t fill) {
    Deliver(Msg(from, IdOf(env_.last_id), SystemContent::kValue, tag, Fill(fill)));
  }
};

TEST_F(TagOnlyCoordinatorTest, AWriteCompletesAndAReadBehindItGetsItsValue) {
  MakeIdleFromTag();
  EXPECT_TRUE(reg_->Idle()) << "nothing in flight: may be dropped and rebuilt";
  EXPECT_FALSE(reg_->NeedsDurableData());
  reg_->StartWrite(21, Fill(0x33), 0);
  reg_->StartRead(22, 0);
  reg_->CheckInvariants();
  EXPECT_FALSE(reg_->NeedsDurableData()) << "the write will bring a newer value";
  AnswerCollect(2, Tag{5, 3}, 0x11);
  // Impose of (6, 1): our own persist and WriteProcs.
  // (6, 1) is above the write ts lease (0 here): our own copy first, then the WriteProcs.
  auto persisted = env_.TakePersisted();
  ASSERT_EQ(persisted.size(), 1u);
  EXPECT_EQ(persisted[0].tag, (Tag{6, 1}));
  Persisted(Tag{6, 1});
  Deliver(Msg(2, IdOf(env_.last_id), SystemContent::kAck));
  ASSERT_GE(env_.completed.size(), 1u);
  EXPECT_EQ(env_.completed[0].token, 21u);
  // The read started once durable_ had data; all agree on (6, 1): no impose.
  AnswerCollect(2, Tag{6, 1}, 0x33);
  ASSERT_EQ(env_.completed.size(), 2u);
  EXPECT_EQ(env_.completed[1].token, 22u);
  ASSERT_TRUE(env_.completed[1].data);
  EXPECT_EQ((*env_.completed[1].data)[0], 0x33);
}

TEST_F(TagOnlyCoordinatorTest, ARefusedWriteLeavesTheReadToTheOwnersStoreRead) {
  MakeIdleFromTag();
  reg_->StartWrite(21, Fill(0x33), 0);
  reg_->StartRead(22, 0);
  Deliver(Msg(3, IdOf(70), SystemContent::kReadProc));  // a peer's read asks for our value
  // Nothing is persisting yet, so the store holds the durable value: the owner may read it.
  EXPECT_TRUE(reg_->NeedsDurableData());
  AnswerCollect(2, Tag{kMaxTagTs, 2}, 0x44);  // no tag above it: the write is refused
  ASSERT_EQ(env_.refused.size(), 1u);
  EXPECT_EQ(env_.refused[0].first, 21u);
  EXPECT_TRUE(env_.TakePersisted().empty());
  // The read and the ReadProc wait for data nothing will bring.
  EXPECT_TRUE(reg_->NeedsDurableData());
  EXPECT_FALSE(reg_->Idle());
  env_.TakeSent();
  reg_->SetDurableData(Triple{Tag{4, 3}, Fill(0x55)}, 0);  // not its tag: ignored
  EXPECT_TRUE(reg_->NeedsDurableData());
  reg_->SetDurableData(Triple{Tag{5, 3}, Fill(0x55)}, 0);
  reg_->CheckInvariants();
  EXPECT_FALSE(reg_->NeedsDurableData());
  auto sent = env_.TakeSent();
  ASSERT_EQ(To(sent, SystemContent::kValue, IdOf(70)), (std::vector<Rank>{3}));
  for (const Sent& m : sent) {
    if (m.msg.op_id != IdOf(70)) continue;
    EXPECT_EQ(m.msg.tag, (Tag{5, 3}));
    ASSERT_TRUE(m.msg.data);
    EXPECT_EQ((*m.msg.data)[0], 0x55);
  }
  // The read runs now: the peer's newer value wins.
  AnswerCollect(2, Tag{kMaxTagTs, 2}, 0x44);
  Deliver(Msg(2, IdOf(env_.last_id), SystemContent::kAck));
  Deliver(Msg(3, IdOf(env_.last_id), SystemContent::kAck));
  ASSERT_EQ(env_.completed.size(), 1u);
  EXPECT_EQ(env_.completed[0].token, 22u);
  ASSERT_TRUE(env_.completed[0].data);
  EXPECT_EQ((*env_.completed[0].data)[0], 0x44);
}

}  // namespace
}  // namespace atomdisk
