// Unit tests of the node core (daemon/core/node_core.cc) through a fake world: a NodeCoreEnv
// that records what the core sends, logs and saves, a ClientChannel that records responses,
// and a real SectorStore over an in-memory disk synced by hand. The simulator runs the same
// core under faults (docs/SIMULATION.md); these pin down its start-up and client rules.
#include "daemon/core/node_core.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "daemon/store/mem_block_file.h"

namespace atomdisk {
namespace {

ClusterConfig ThreeNodes() {
  ClusterConfig c;
  c.path = "test";
  c.sectors = 1024;
  c.client_key.assign(kClientKeySize, 0x11);
  c.system_key.assign(kSystemKeySize, 0x22);
  for (int i = 1; i <= 3; ++i) {
    NodeConfig n;
    n.rank = static_cast<Rank>(i);
    n.host = "127.0.0.1";
    n.port = static_cast<std::uint16_t>(7000 + i);
    c.nodes.push_back(n);
  }
  return c;
}

class FakeWorld : public NodeCoreEnv, public NodeCoreObserver {
 public:
  void SendSystem(Rank to, const SystemMessage& msg) override { sent.push_back({to, msg}); }
  void SendSync(Rank to, const SyncMessage& msg) override { sync_sent.push_back({to, msg}); }
  void SendSystemBatch(std::span<const Rank> to, std::span<const SystemMessage> msgs) override {
    batches.push_back({{to.begin(), to.end()}, {msgs.begin(), msgs.end()}});
  }
  void RequestFlush() override { ++flush_requests; }
  bool PeerConnected(Rank peer) override { return links_up && !peer_down[peer]; }
  PeerLinkStats PeerStats(Rank) override { return {links_up, 0, 0, 0}; }
  std::int64_t NowMs() override { return now_ms; }
  std::uint64_t WallClockMicros() override { return 1'000'000'000; }
  void Post(std::function<void()> fn) override { posted.push_back(std::move(fn)); }
  Status SaveIdentity(const Identity& identity) override {
    if (fail_saves) return Status::IOError("injected");
    saved.push_back(identity);
    return Status::Ok();
  }
  void Log(Level, const std::string& line) override { logs.push_back(line); }
  void Fatal(const std::string& why) override { fatal.push_back(why); }
  void OnStoreWrite(SectorIdx, const Triple&, bool) override {
    identities_saved_at_first_write.push_back(saved.size());
  }
  void OnRegisterLoaded(SectorIdx sector, const Triple& stored) override {
    loaded.push_back({sector, stored.tag, stored.data != nullptr});
  }

  void RunPosted() {
    auto fns = std::move(posted);
    posted.clear();
    for (auto& fn : fns) fn();
  }

  struct Sent {
    Rank to;
    SystemMessage msg;
  };
  std::vector<Sent> sent;
  struct SentBatch {
    std::vector<Rank> to;
    std::vector<SystemMessage> msgs;
  };
  std::vector<SentBatch> batches;
  int flush_requests = 0;
  std::vector<std::pair<Rank, SyncMessage>> sync_sent;
  std::vector<std::function<void()>> posted;
  std::vector<Identity> saved;
  std::vector<std::string> logs, fatal;
  std::vector<std::size_t> identities_saved_at_first_write;
  struct Loaded {
    SectorIdx sector;
    Tag tag;
    bool with_data;
  };
  std::vector<Loaded> loaded;  // registers built, as the observer saw them
  bool links_up = false;
  std::array<bool, 256> peer_down{};  // with links_up: these links are down all the same
  bool fail_saves = false;
  std::int64_t now_ms = 1000;
};

class RecordingChannel final : public ClientChannel,
                               public std::enable_shared_from_this<RecordingChannel> {
 public:
  bool SendFrame(SharedFrame frame) override {
    frames.push_back(*frame);
    return true;
  }
  void CloseChannel(const std::string& reason) override { closed_because = reason; }
  bool channel_closed() const override { return !closed_because.empty(); }
  const std::string& channel_name() const override { return name; }
  void OpStarted() override { ++open_ops; }
  void OpFinished() override { --open_ops; }
  std::weak_ptr<ClientChannel> WeakChannel() override { return weak_from_this(); }

  std::vector<Frame> frames;
  std::string closed_because;
  std::string name = "test-client";
  int open_ops = 0;
};

class NodeCoreTest : public ::testing::Test {
 protected:
  void MakeCore(std::optional<Identity> identity) {
    SectorStore::Options o;
    o.sectors = config_.sectors;
    o.background_sync = false;
    auto store = SectorStore::OpenOnFile(ShareBlockFile(disk_), o);
    store_ = store.get();
    NodeMembership m;
    m.identity = std::move(identity);
    m.store_empty = true;
    NodeCoreOptions options = NodeCoreOptions::FromConfig(config_);
    options.version = "test";
    core_ = std::make_unique<NodeCore>(config_, 1, std::move(store), std::move(m), &world_,
                                       std::move(options));
    core_->SetObserver(&world_);
  }
  Identity VotingIdentity() {
    Identity id;
    id.cluster_id = config_.ClusterId();
    id.rank = 1;
    id.voting = true;
    id.voters = {1, 2, 3};
    return id;
  }
  // A client command signed with `key`, as the frame body the core takes (no length).
  std::vector<std::uint8_t> CommandBody(const ClientCommand& cmd,
                                        const std::vector<std::uint8_t>& key) {
    Hmac mac(key);
    Frame f = EncodeFrame(cmd, mac);
    return std::vector<std::uint8_t>(f.begin() + kFrameLengthSize, f.end());
  }
  ClientResponse LastResponse() {
    EXPECT_FALSE(channel_->frames.empty());
    Hmac mac(config_.client_key);
    auto body = std::span<const std::uint8_t>(channel_->frames.back()).subspan(kFrameLengthSize);
    auto payload = VerifyFrameBody(body, mac);
    EXPECT_TRUE(payload.ok());
    auto resp = DecodeClientResponse(*payload);
    EXPECT_TRUE(resp.ok());
    return *resp;
  }

  ClusterConfig config_ = ThreeNodes();
  std::shared_ptr<MemBlockFile> disk_ = std::make_shared<MemBlockFile>();
  SectorStore* store_ = nullptr;
  FakeWorld world_;
  std::unique_ptr<NodeCore> core_;
  std::shared_ptr<RecordingChannel> channel_ = std::make_shared<RecordingChannel>();
};

// A data_dir without IDENTITY: the Syncer (which saves one) starts inside Start, before the
// core can store anything; otherwise a crash could leave data without IDENTITY, which the next
// start would take for a store from before identities and let vote (docs/RESYNC.md).
TEST_F(NodeCoreTest, WithoutIdentityTheSyncerSavesOneBeforeAnythingIsStored) {
  MakeCore(std::nullopt);
  core_->Start();
  ASSERT_NE(core_->syncer_if_started(), nullptr) << "the Syncer waited for the links";
  ASSERT_FALSE(world_.saved.empty());
  EXPECT_FALSE(world_.saved.back().voting);
  EXPECT_FALSE(core_->voting());
  // A WriteProc from a peer is stored (a joining node stores WriteProcs) only after that.
  SystemMessage wp;
  wp.sender = 2;
  wp.op_id.bytes[0] = 7;
  wp.sector = 5;
  wp.content = SystemContent::kWriteProc;
  wp.tag = Tag{3, 2};
  SectorData d;
  d.fill(0xAB);
  wp.data = MakeSector(d.data());
  EXPECT_TRUE(core_->OnSystemMessage(wp));
  ASSERT_EQ(world_.identities_saved_at_first_write.size(), 1u);
  EXPECT_GE(world_.identities_saved_at_first_write[0], 1u);
}

// An IDENTITY that cannot be saved at start is fatal, and from then on the core stores and
// answers nothing (the daemon exits; it must not store data without IDENTITY meanwhile).
TEST_F(NodeCoreTest, AfterFatalNothingIsStoredOrAnswered) {
  world_.fail_saves = true;
  MakeCore(std::nullopt);
  core_->Start();
  ASSERT_EQ(world_.fatal.size(), 1u);
  SystemMessage wp;
  wp.sender = 2;
  wp.sector = 5;
  wp.content = SystemContent::kWriteProc;
  wp.tag = Tag{3, 2};
  wp.data = ZeroSector();
  core_->OnSystemMessage(wp);
  core_->Tick();
  ClientCommand info;
  info.request_id = 1;
  info.op = ClientOp::kInfo;
  auto body = CommandBody(info, config_.client_key);
  core_->OnClientFrame(*channel_, body);
  EXPECT_TRUE(world_.identities_saved_at_first_write.empty()) << "stored after Fatal";
  EXPECT_TRUE(channel_->frames.empty());
  EXPECT_TRUE(world_.sent.empty());
  EXPECT_EQ(world_.fatal.size(), 1u);
}

// With IDENTITY the Syncer waits for the peer links (or 500 ms), so that its first Hellos
// and Digests are not dropped by links still connecting.
TEST_F(NodeCoreTest, WithIdentityTheSyncerWaitsForTheLinksOrHalfASecond) {
  MakeCore(VotingIdentity());
  core_->Start();
  EXPECT_EQ(core_->syncer_if_started(), nullptr);
  world_.now_ms += 100;
  core_->Tick();
  EXPECT_EQ(core_->syncer_if_started(), nullptr);
  world_.links_up = true;
  core_->Tick();
  ASSERT_NE(core_->syncer_if_started(), nullptr);
  EXPECT_TRUE(core_->voting());

  // And with the links down it starts regardless after 500 ms.
  core_.reset();
  disk_ = std::make_shared<MemBlockFile>();
  world_.links_up = false;
  MakeCore(VotingIdentity());
  core_->Start();
  world_.now_ms += 499;
  core_->Tick();
  EXPECT_EQ(core_->syncer_if_started(), nullptr);
  world_.now_ms += 1;
  core_->Tick();
  EXPECT_NE(core_->syncer_if_started(), nullptr);
}

TEST_F(NodeCoreTest, ClientFramesAreCheckedAndAnswered) {
  MakeCore(VotingIdentity());
  core_->Start();
  // A wrong key: AuthFailure, echoing the request id; nothing started.
  ClientCommand read;
  read.request_id = 41;
  read.sector = 3;
  read.op = ClientOp::kRead;
  auto bad = CommandBody(read, std::vector<std::uint8_t>(kClientKeySize, 0x99));
  core_->OnClientFrame(*channel_, bad);
  ClientResponse r = LastResponse();
  EXPECT_EQ(r.status, ResponseStatus::kAuthFailure);
  EXPECT_EQ(r.request_id, 41u);
  EXPECT_EQ(channel_->open_ops, 0);
  // A sector past the device: InvalidSectorIndex.
  read.sector = config_.sectors;
  auto beyond = CommandBody(read, config_.client_key);
  core_->OnClientFrame(*channel_, beyond);
  EXPECT_EQ(LastResponse().status, ResponseStatus::kInvalidSectorIndex);
  // Info: JSON with the node's rank and version.
  ClientCommand info;
  info.request_id = 43;
  info.op = ClientOp::kInfo;
  auto body = CommandBody(info, config_.client_key);
  core_->OnClientFrame(*channel_, body);
  r = LastResponse();
  ASSERT_EQ(r.status, ResponseStatus::kOk);
  auto j = nlohmann::json::parse(r.info);
  EXPECT_EQ(j["rank"], 1);
  EXPECT_EQ(j["version"], "test");
  EXPECT_EQ(j["peers"].size(), 2u);
  // A frame that does not decode closes the connection.
  std::vector<std::uint8_t> garbage(kMacSize + 3, 0);
  core_->OnClientFrame(*channel_, garbage);
  EXPECT_FALSE(channel_->closed_because.empty());
}

// A read this node coordinates goes to the peers; once a majority answers, the client gets
// the value, and the channel's open operation is closed.
TEST_F(NodeCoreTest, AReadIsAnsweredOnceAMajorityAnswers) {
  MakeCore(VotingIdentity());
  world_.links_up = true;
  core_->Start();
  core_->Tick();
  ASSERT_TRUE(core_->voting());
  world_.sent.clear();
  ClientCommand read;
  read.request_id = 9;
  read.sector = 12;
  read.op = ClientOp::kRead;
  auto body = CommandBody(read, config_.client_key);
  core_->OnClientFrame(*channel_, body);
  EXPECT_EQ(channel_->open_ops, 1);
  ASSERT_FALSE(world_.sent.empty());
  const SystemMessage ask = world_.sent.front().msg;
  SystemMessage answer = AnswerTo(
      world_.sent.front().to, ask.op_id, ask.sector,
      ask.content == SystemContent::kReadTag ? SystemContent::kTag : SystemContent::kValue);
  answer.tag = Tag{};
  if (answer.content == SystemContent::kValue) answer.data = ZeroSector();
  EXPECT_TRUE(core_->OnSystemMessage(answer));
  ClientResponse r = LastResponse();
  EXPECT_EQ(r.status, ResponseStatus::kOk);
  EXPECT_EQ(r.request_id, 9u);
  ASSERT_NE(r.data, nullptr);
  EXPECT_EQ(r.data->at(0), 0);
  EXPECT_EQ(channel_->open_ops, 0);
}

// Fast failover (docs/PROTOCOL.md, "No quorum here"): an extent that arrives while this
// node's links reach no majority is answered at once, every sector not done, and starts
// nothing; a lone atdd command keeps its behaviour (it waits for the quorum); with one peer of
// two back the extent runs.
TEST_F(NodeCoreTest, WithoutAQuorumAnExtentIsAnsweredNotDoneAtOnce) {
  MakeCore(VotingIdentity());
  world_.links_up = true;
  core_->Start();
  core_->Tick();
  ASSERT_TRUE(core_->voting());
  world_.peer_down[2] = world_.peer_down[3] = true;
  world_.sent.clear();
  ClientCommand w;
  w.request_id = 5;
  w.sector = 20;
  w.op = ClientOp::kWriteExtent;
  w.count = 3;
  for (int i = 0; i < 3; ++i) w.sectors.push_back(ZeroSector());
  core_->OnClientFrame(*channel_, CommandBody(w, config_.client_key));
  ClientResponse r = LastResponse();
  EXPECT_EQ(r.status, ResponseStatus::kOk);
  EXPECT_EQ(r.request_id, 5u);
  EXPECT_EQ(r.op, ClientOp::kWriteExtent);
  EXPECT_EQ(r.outcomes, std::vector<ExtentOutcome>(3, ExtentOutcome::kNotDone));
  ClientCommand re;
  re.request_id = 6;
  re.sector = 20;
  re.op = ClientOp::kReadExtent;
  re.count = 2;
  core_->OnClientFrame(*channel_, CommandBody(re, config_.client_key));
  r = LastResponse();
  EXPECT_EQ(r.request_id, 6u);
  EXPECT_EQ(r.outcomes, std::vector<ExtentOutcome>(2, ExtentOutcome::kNotDone));
  core_->FlushOutbox();
  EXPECT_TRUE(world_.sent.empty()) << "a refused extent sent something";
  EXPECT_TRUE(world_.batches.empty());
  EXPECT_EQ(core_->active_registers(), 0u);
  EXPECT_EQ(channel_->open_ops, 0);
  ClientCommand info;
  info.request_id = 7;
  info.op = ClientOp::kInfo;
  core_->OnClientFrame(*channel_, CommandBody(info, config_.client_key));
  auto j = nlohmann::json::parse(LastResponse().info);
  EXPECT_FALSE(j["quorum_reachable"].get<bool>());
  EXPECT_EQ(j["counters"]["no_quorum_extents"], 2);

  // A lone (atdd) command is not refused: it starts and waits.
  const std::size_t frames = channel_->frames.size();
  ClientCommand read;
  read.request_id = 8;
  read.sector = 30;
  read.op = ClientOp::kRead;
  core_->OnClientFrame(*channel_, CommandBody(read, config_.client_key));
  EXPECT_EQ(channel_->frames.size(), frames);
  EXPECT_EQ(channel_->open_ops, 1);

  // One peer back: with our own vote that is a majority of three, and the extent runs.
  world_.peer_down[2] = false;
  world_.sent.clear();
  w.request_id = 9;
  core_->OnClientFrame(*channel_, CommandBody(w, config_.client_key));
  core_->FlushOutbox();
  EXPECT_EQ(channel_->frames.size(), frames);
  EXPECT_EQ(channel_->open_ops, 4);
  EXPECT_FALSE(world_.sent.empty() && world_.batches.empty());
}

// A WriteProc for a sector with no register, whose durable tag the store's slot cache knows
// and which is older than the WriteProc's, builds the register from that tag without reading
// the sector; it acks once the value is durable, and a ReadProc gets the new value then.
TEST_F(NodeCoreTest, AReplicaOverwriteBuildsItsRegisterFromTheCachedTag) {
  MakeCore(VotingIdentity());
  world_.links_up = true;
  core_->Start();
  core_->Tick();
  ASSERT_TRUE(core_->voting());
  auto write_proc = [](Rank from, std::uint8_t id, Tag tag, std::uint8_t fill) {
    SystemMessage wp;
    wp.sender = from;
    wp.op_id.bytes[0] = id;
    wp.sector = 20;
    wp.content = SystemContent::kWriteProc;
    wp.tag = tag;
    SectorData d;
    d.fill(fill);
    wp.data = MakeSector(d.data());
    return wp;
  };
  auto acks_to = [&](Rank to, std::uint8_t id) {
    return std::count_if(world_.sent.begin(), world_.sent.end(), [&](const FakeWorld::Sent& s) {
      return s.to == to && s.msg.content == SystemContent::kAck && s.msg.op_id.bytes[0] == id;
    });
  };
  auto sync = [&] {
    // The end of each event, as the daemon's posted flush does: the store writes held for
    // one group commit go to the sync (SectorStore::HoldSyncs).
    for (;;) {
      core_->FlushOutbox();
      if (store_->SyncNow() == 0) break;
      world_.RunPosted();
    }
    world_.RunPosted();
  };
  // First write of the sector: nothing is cached yet, so its register is read from the store.
  world_.sent.clear();
  ASSERT_TRUE(core_->OnSystemMessage(write_proc(2, 1, Tag{5, 2}, 0xAA)));
  sync();
  EXPECT_EQ(acks_to(2, 1), 1);
  ASSERT_EQ(world_.loaded.size(), 1u);
  EXPECT_TRUE(world_.loaded[0].with_data);
  // Idle: dropped at the second tick that finds it so.
  core_->Tick();
  core_->Tick();
  ASSERT_EQ(core_->FindRegisterForChecks(20), nullptr);

  // The overwrite: built from the cached tag (5, 2), no data.
  ASSERT_TRUE(core_->OnSystemMessage(write_proc(3, 2, Tag{9, 3}, 0xBB)));
  ASSERT_EQ(world_.loaded.size(), 2u);
  EXPECT_FALSE(world_.loaded[1].with_data);
  EXPECT_EQ(world_.loaded[1].tag, (Tag{5, 2}));
  SystemMessage ask = AnswerTo(2, Uuid{}, 20, SystemContent::kReadProc);
  ask.op_id.bytes[0] = 3;
  ASSERT_TRUE(core_->OnSystemMessage(ask));
  core_->FlushOutbox();
  EXPECT_EQ(acks_to(3, 2), 0) << "acked before durable";
  auto ReadSectorData = [&]() -> int {
    auto r = core_->ReadSector(20);
    return r.ok() ? (*r->data)[0] : -1;
  };
  EXPECT_EQ(ReadSectorData(), 0xBB) << "resync serves the accepted value of a peer's write";
  sync();
  core_->FlushOutbox();
  EXPECT_EQ(acks_to(3, 2), 1);
  bool value_sent = false;
  auto check_value = [&](const SystemMessage& m) {
    if (m.content != SystemContent::kValue || m.op_id.bytes[0] != 3) return;
    value_sent = true;
    EXPECT_EQ(m.tag, (Tag{9, 3}));
    ASSERT_TRUE(m.data);
    EXPECT_EQ((*m.data)[0], 0xBB);
  };
  for (const auto& s : world_.sent) check_value(s.msg);
  for (const auto& b : world_.batches) {
    for (const auto& m : b.msgs) check_value(m);
  }
  EXPECT_TRUE(value_sent);

  // An older or equal tag is read from the store as before (it changes nothing there).
  core_->Tick();
  core_->Tick();
  ASSERT_EQ(core_->FindRegisterForChecks(20), nullptr);
  ASSERT_TRUE(core_->OnSystemMessage(write_proc(2, 4, Tag{9, 3}, 0xBB)));
  ASSERT_EQ(world_.loaded.size(), 3u);
  EXPECT_TRUE(world_.loaded[2].with_data);

  ClientCommand info;
  info.request_id = 1;
  info.op = ClientOp::kInfo;
  auto body = CommandBody(info, config_.client_key);
  core_->OnClientFrame(*channel_, body);
  ClientResponse r = LastResponse();
  ASSERT_EQ(r.status, ResponseStatus::kOk);
  auto j = nlohmann::json::parse(r.info);
  EXPECT_EQ(j["counters"]["registers_from_cached_tag"], 1);
}

// System batches (docs/PROTOCOL.md): what the core sends to peers that advertised
// kFeatureBatches waits in its outbox until FlushOutbox, and peers with the same queue share
// one batch; a peer without the feature, or whose link came up again since its HelloReply,
// gets each message alone; a Value never waits.
// The persists of the events at hand reach the store's group commit together, at the flush
// the core asks its env for (docs/STORAGE.md, "Held batches"): one fdatasync for a batch of
// WriteProcs, and nothing acked before it.
TEST_F(NodeCoreTest, PersistsOfOneTurnShareOneGroupCommitAtTheFlush) {
  MakeCore(VotingIdentity());
  world_.links_up = true;
  core_->Start();
  core_->Tick();
  ASSERT_TRUE(core_->voting());
  world_.RunPosted();
  while (store_->SyncNow() > 0) world_.RunPosted();
  world_.sent.clear();
  const int flushes_before = world_.flush_requests;
  for (std::uint8_t i = 0; i < 8; ++i) {
    SystemMessage wp;
    wp.sender = 2;
    wp.op_id.bytes[0] = i;
    wp.sector = 40 + i;
    wp.content = SystemContent::kWriteProc;
    wp.tag = Tag{3, 2};
    SectorData d;
    d.fill(i);
    wp.data = MakeSector(d.data());
    ASSERT_TRUE(core_->OnSystemMessage(wp));
  }
  EXPECT_EQ(world_.flush_requests, flushes_before + 1);  // asked once for the whole turn
  EXPECT_EQ(store_->SyncNow(), 0u);                      // held: nothing is synced before the flush
  core_->FlushOutbox();
  EXPECT_EQ(store_->SyncNow(), 8u);  // all eight reach the group commit at the flush
  world_.RunPosted();
  const auto acks = std::count_if(world_.sent.begin(), world_.sent.end(), [](const auto& s) {
    return s.to == 2 && s.msg.content == SystemContent::kAck;
  });
  EXPECT_EQ(acks, 8);
}

TEST_F(NodeCoreTest, MessagesToBatchingPeersWaitForTheFlushAndShareOneBatch) {
  MakeCore(VotingIdentity());
  world_.links_up = true;
  core_->Start();
  core_->Tick();
  ASSERT_TRUE(core_->voting());
  core_->SetPeerFeatures(2, kFeatureBatches);
  core_->SetPeerFeatures(3, kFeatureBatches);
  world_.sent.clear();
  auto read_extent = [&](std::uint64_t id, SectorIdx first) {
    ClientCommand read{.request_id = id, .sector = first, .op = ClientOp::kReadExtent, .count = 4};
    core_->OnClientFrame(*channel_, CommandBody(read, config_.client_key));
  };
  auto sent_to = [&](Rank to) {
    return std::count_if(world_.sent.begin(), world_.sent.end(),
                         [&](const FakeWorld::Sent& s) { return s.to == to; });
  };
  read_extent(5, 100);
  EXPECT_TRUE(world_.sent.empty()) << "sent before the flush";
  EXPECT_EQ(world_.flush_requests, 1) << "one flush asked for, when the outbox filled";
  EXPECT_TRUE(world_.batches.empty());
  core_->FlushOutbox();
  ASSERT_EQ(world_.batches.size(), 1u);
  EXPECT_EQ(world_.batches[0].to, (std::vector<Rank>{2, 3}));
  ASSERT_EQ(world_.batches[0].msgs.size(), 4u);
  for (std::size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(world_.batches[0].msgs[i].sector, 100 + i);
    EXPECT_EQ(world_.batches[0].msgs[i].content, SystemContent::kReadProc);
  }
  core_->FlushOutbox();  // nothing left: nothing sent again
  EXPECT_EQ(world_.batches.size(), 1u);
  EXPECT_TRUE(world_.sent.empty());

  // Peer 3's link comes up again: it may be an older version now, so it gets single messages
  // until its next HelloReply; peer 2 still gets a batch.
  core_->OnPeerLinkUp(3);
  world_.batches.clear();
  read_extent(6, 200);
  core_->FlushOutbox();
  ASSERT_EQ(world_.batches.size(), 1u);
  EXPECT_EQ(world_.batches[0].to, (std::vector<Rank>{2}));
  EXPECT_EQ(world_.batches[0].msgs.size(), 4u);
  EXPECT_EQ(sent_to(3), 4);
  EXPECT_EQ(sent_to(2), 0);

  // A HelloReply without the bit (a downgrade) stops batches to peer 2 as well.
  core_->SetPeerFeatures(2, 0);
  world_.batches.clear();
  world_.sent.clear();
  read_extent(7, 300);
  core_->FlushOutbox();
  EXPECT_TRUE(world_.batches.empty());
  EXPECT_EQ(sent_to(2), 4);
  EXPECT_EQ(sent_to(3), 4);

  // A Value (our answer to a peer's ReadProc) goes out at once, batches or not.
  core_->SetPeerFeatures(2, kFeatureBatches);
  world_.sent.clear();
  SystemMessage rp;
  rp.sender = 2;
  rp.op_id.bytes[0] = 42;
  rp.sector = 7;
  rp.content = SystemContent::kReadProc;
  EXPECT_TRUE(core_->OnSystemMessage(rp));
  ASSERT_EQ(world_.sent.size(), 1u);
  EXPECT_EQ(world_.sent[0].to, 2);
  EXPECT_EQ(world_.sent[0].msg.content, SystemContent::kValue);
}

TEST_F(NodeCoreTest, MessagesFromUnknownRanksOrOurselvesAreDropped) {
  MakeCore(VotingIdentity());
  core_->Start();
  SystemMessage m;
  m.content = SystemContent::kReadProc;
  m.sector = 1;
  m.sender = 1;  // ourselves
  EXPECT_FALSE(core_->OnSystemMessage(m));
  m.sender = 9;  // not in the cluster
  EXPECT_FALSE(core_->OnSystemMessage(m));
  SyncMessage s;
  s.sender = 9;
  EXPECT_FALSE(core_->OnSyncMessage(s));
  EXPECT_TRUE(world_.sent.empty());
}

// A tag above the timestamp range (docs/REGISTER.md, "Timestamp range") comes only from a
// forged or corrupt peer: the message is dropped, nothing is stored or answered, and a tag at
// the top of the range itself still passes.
TEST_F(NodeCoreTest, SystemMessagesAboveTheTimestampRangeAreDropped) {
  MakeCore(VotingIdentity());
  core_->Start();
  world_.RunPosted();
  SystemMessage wp;
  wp.sender = 2;
  wp.op_id.bytes[0] = 7;
  wp.sector = 5;
  wp.content = SystemContent::kWriteProc;
  wp.tag = Tag{kMaxTagTs + 1, 2};
  wp.data = ZeroSector();
  EXPECT_TRUE(core_->OnSystemMessage(wp));
  world_.RunPosted();
  EXPECT_TRUE(world_.identities_saved_at_first_write.empty()) << "stored a tag above the range";
  EXPECT_TRUE(world_.sent.empty()) << "answered a tag above the range";
  bool logged = false;
  for (const std::string& line : world_.logs) {
    logged = logged || line.find("above the timestamp range") != std::string::npos;
  }
  EXPECT_TRUE(logged);
  wp.tag = Tag{kMaxTagTs, 2};
  EXPECT_TRUE(core_->OnSystemMessage(wp));
  EXPECT_EQ(world_.identities_saved_at_first_write.size(), 1u) << "the top of the range itself";
}

}  // namespace
}  // namespace atomdisk
