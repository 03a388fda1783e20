#include "src/index/event_ingest.h"

#define MSGPACK_NO_BOOST 1
#include <msgpack.hpp>

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvtier/v1/events.pb.h"
#include "src/index/event_publisher.h"
#include "src/server/wire.h"
#include "tests/testing/mutate.h"
#include "tests/testing/status_matchers.h"

namespace kvtier::index {
namespace {

using ::kvtier::testing::StatusIs;

using ::testing::HasSubstr;

constexpr uint64_t kNs = 0x1234;

v1::EventBatch Batch(const std::string& node, uint64_t seq, const std::vector<BlockKey>& keys,
                     bool stored = true) {
  v1::EventBatch b;
  b.set_node_id(node);
  b.set_incarnation(5);
  b.set_sequence(seq);
  b.set_namespace_id(kNs);
  v1::CacheEvent* e = b.add_events();
  if (stored) {
    e->mutable_stored()->set_tier(v1::TIER_DRAM);
    for (const BlockKey& k : keys) e->mutable_stored()->add_keys(wire::KeyToBytes(k));
  } else {
    e->mutable_removed()->set_tier(v1::TIER_DRAM);
    for (const BlockKey& k : keys) e->mutable_removed()->add_keys(wire::KeyToBytes(k));
  }
  return b;
}

class EventIngestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ClusterIndexOptions o;
    o.shards = 4;
    ASSERT_OK_AND_ASSIGN(index_, ClusterIndex::Create(o));
    ingest_ = std::make_unique<EventIngest>(index_.get());
    v1::NodeHeartbeat hb;
    hb.set_node_id("n1");
    hb.set_incarnation(5);
    hb.set_grpc_address("127.0.0.1:1");
    ASSERT_OK(ingest_->ApplyHeartbeat(hb.SerializeAsString(), absl::Now()));
  }
  std::unique_ptr<ClusterIndex> index_;
  std::unique_ptr<EventIngest> ingest_;
  const std::vector<BlockKey> chain_ = {{1, 1}, {1, 2}, {1, 3}};
};

TEST_F(EventIngestTest, AppliesBatchesInOrderAndSkipsDuplicates) {
  const std::string subject = EventSubject(kNs);
  ASSERT_OK(ingest_->ApplyEventBatch(subject, Batch("n1", 1, chain_).SerializeAsString()));
  ASSERT_OK(ingest_->ApplyEventBatch(subject, Batch("n1", 1, chain_).SerializeAsString()));
  ASSERT_OK(
      ingest_->ApplyEventBatch(subject, Batch("n1", 3, {chain_[2]}, false).SerializeAsString()));
  std::vector<NodeMatchResult> r = index_->Lookup(kNs, chain_, {}, absl::Now());
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].matched, 2u);
  const IngestCounters c = ingest_->Counters();
  EXPECT_EQ(c.batches, 2u);
  EXPECT_EQ(c.duplicates, 1u);
  EXPECT_EQ(c.gaps, 1u);
  EXPECT_EQ(c.malformed, 0u);
}

TEST_F(EventIngestTest, MalformedMessagesAreCountedAndChangeNothing) {
  const std::string subject = EventSubject(kNs);
  EXPECT_THAT(ingest_->ApplyEventBatch(subject, "\xff\xff not a protobuf"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  v1::EventBatch short_key = Batch("n1", 1, chain_);
  short_key.mutable_events(0)->mutable_stored()->set_keys(1, "short");
  EXPECT_THAT(ingest_->ApplyEventBatch(subject, short_key.SerializeAsString()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("events[0].stored.keys[1]")));
  EXPECT_THAT(
      ingest_->ApplyEventBatch(EventSubject(kNs + 1), Batch("n1", 1, chain_).SerializeAsString()),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("namespace_id")));
  v1::EventBatch no_node = Batch("", 1, chain_);
  EXPECT_THAT(ingest_->ApplyEventBatch(subject, no_node.SerializeAsString()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("node_id")));
  v1::EventBatch bad_tier = Batch("n1", 1, chain_);
  bad_tier.mutable_events(0)->mutable_stored()->set_tier(static_cast<v1::Tier>(42));
  EXPECT_THAT(ingest_->ApplyEventBatch(subject, bad_tier.SerializeAsString()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tier")));
  EXPECT_EQ(ingest_->Counters().malformed, 5u);
  EXPECT_EQ(index_->Stats(absl::Now()).entries, 0u);
  // The valid batch after them still applies (the sequence was not consumed).
  ASSERT_OK(ingest_->ApplyEventBatch(subject, Batch("n1", 1, chain_).SerializeAsString()));
  EXPECT_EQ(index_->Stats(absl::Now()).entries, 3u);
}

// vLLM's wire format: msgspec array_like tagged structs.
std::string VllmBatch(const std::function<void(msgpack::packer<msgpack::sbuffer>&)>& events,
                      uint32_t n) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(buf);
  pk.pack_array(2);
  pk.pack_double(1700000000.5);
  pk.pack_array(n);
  events(pk);
  return std::string(buf.data(), buf.size());
}

TEST_F(EventIngestTest, VllmStoredRemovedAndCleared) {
  ASSERT_OK_AND_ASSIGN(uint32_t v, index_->NodeIndex("vllm-a", NodeSource::kVllm));
  const uint64_t ns = VllmNamespaceId();
  // BlockStored with int hashes (older vLLM) and one with bytes, CPU medium.
  ASSERT_OK(ingest_->ApplyVllmBatch(v, ns,
                                    VllmBatch(
                                        [](auto& pk) {
                                          pk.pack_array(7);
                                          pk.pack(std::string("BlockStored"));
                                          pk.pack(std::vector<int64_t>{11, -12, 13});
                                          pk.pack_nil();
                                          pk.pack(std::vector<int>{1, 2, 3});
                                          pk.pack(16);
                                          pk.pack_nil();
                                          pk.pack_nil();
                                          pk.pack_array(5);  // trailing defaults omitted
                                          pk.pack(std::string("BlockStored"));
                                          pk.pack_array(1);
                                          pk.pack_bin(4);
                                          pk.pack_bin_body("\x01\x02\x03\x04", 4);
                                          pk.pack(int64_t{13});
                                          pk.pack(std::vector<int>{});
                                          pk.pack(16);
                                        },
                                        2)));
  const std::vector<BlockKey> chain = {
      VllmKey(ns, VllmIntHashBytes(11)), VllmKey(ns, VllmIntHashBytes(-12)),
      VllmKey(ns, VllmIntHashBytes(13)), VllmKey(ns, std::string("\x01\x02\x03\x04", 4))};
  std::vector<NodeMatchResult> r = index_->Lookup(ns, chain, {}, absl::Now());
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].node_id, "vllm-a");
  EXPECT_EQ(r[0].matched, 4u);
  EXPECT_EQ(r[0].tier_counts[static_cast<int>(Tier::kGpu)], 4u);
  ASSERT_OK(ingest_->ApplyVllmBatch(v, ns,
                                    VllmBatch(
                                        [](auto& pk) {
                                          pk.pack_array(3);
                                          pk.pack(std::string("BlockRemoved"));
                                          pk.pack(std::vector<int64_t>{13});
                                          pk.pack(std::string("GPU"));
                                        },
                                        1)));
  r = index_->Lookup(ns, chain, {}, absl::Now());
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].matched, 2u);
  ASSERT_OK(ingest_->ApplyVllmBatch(v, ns,
                                    VllmBatch(
                                        [](auto& pk) {
                                          pk.pack_array(1);
                                          pk.pack(std::string("AllBlocksCleared"));
                                        },
                                        1)));
  EXPECT_TRUE(index_->Lookup(ns, chain, {}, absl::Now()).empty());
  EXPECT_EQ(ingest_->Counters().vllm_cleared, 1u);
}

TEST_F(EventIngestTest, VllmMalformedIsCounted) {
  ASSERT_OK_AND_ASSIGN(uint32_t v, index_->NodeIndex("vllm-a", NodeSource::kVllm));
  EXPECT_THAT(ingest_->ApplyVllmBatch(v, 1, "\xc1"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ingest_->ApplyVllmBatch(v, 1,
                                      VllmBatch(
                                          [](auto& pk) {
                                            pk.pack_array(2);
                                            pk.pack(std::string("BlockMoved"));
                                            pk.pack(1);
                                          },
                                          1)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("BlockMoved")));
  EXPECT_THAT(ingest_->ApplyVllmBatch(v, 1,
                                      VllmBatch(
                                          [](auto& pk) {
                                            pk.pack_array(5);
                                            pk.pack(std::string("BlockStored"));
                                            pk.pack(std::vector<double>{1.5});
                                            pk.pack_nil();
                                            pk.pack_nil();
                                            pk.pack(16);
                                          },
                                          1)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("block_hashes[0]")));
  // A count the payload cannot hold is refused before anything is reserved
  // (array32 of 2^31 elements, map32 of 2^31 pairs).
  EXPECT_THAT(
      ingest_->ApplyVllmBatch(v, 1, std::string("\x92\xcb\0\0\0\0\0\0\0\0\xdd\x80\0\0\0", 15)),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("size overflow")));
  EXPECT_THAT(ingest_->ApplyVllmBatch(v, 1, std::string("\xdf\x80\0\0\0", 5)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("size overflow")));
  EXPECT_EQ(ingest_->Counters().malformed, 5u);
}

// Damaged vLLM batches that would remove a stored chain: each one either
// decodes (and may change the index) or fails, is counted, and leaves the
// chain exactly as it was.
TEST_F(EventIngestTest, VllmDamagedBatchesFailWithoutChangingAnything) {
  ASSERT_OK_AND_ASSIGN(uint32_t v, index_->NodeIndex("vllm-a", NodeSource::kVllm));
  const uint64_t ns = VllmNamespaceId();
  const std::vector<int64_t> hashes = {101, 102, 103, 104};
  std::vector<BlockKey> chain;
  chain.reserve(hashes.size());
  for (int64_t h : hashes) chain.push_back(VllmKey(ns, VllmIntHashBytes(h)));
  const std::string store = VllmBatch(
      [&](auto& pk) {
        pk.pack_array(7);
        pk.pack(std::string("BlockStored"));
        pk.pack(hashes);
        pk.pack_nil();
        pk.pack(std::vector<int>{1, 2, 3});
        pk.pack(16);
        pk.pack_nil();
        pk.pack(std::string("CPU"));
      },
      1);
  const std::vector<std::string> seeds = {
      VllmBatch(
          [&](auto& pk) {
            pk.pack_array(3);
            pk.pack(std::string("BlockRemoved"));
            pk.pack(hashes);
            pk.pack(std::string("CPU"));
          },
          1),
      VllmBatch(
          [&](auto& pk) {
            pk.pack_array(5);
            pk.pack(std::string("BlockStored"));
            pk.pack(std::vector<int64_t>{7, 8});
            pk.pack(int64_t{104});
            pk.pack(std::vector<int>{});
            pk.pack(16);
            pk.pack_array(2);
            pk.pack(std::string("BlockRemoved"));
            pk.pack(std::vector<int64_t>{102});
            pk.pack_array(1);
            pk.pack(std::string("AllBlocksCleared"));
          },
          3),
  };
  testing::Mutator m(77);
  int failed = 0, applied = 0;
  for (int i = 0; i < 4000; ++i) {
    ASSERT_OK(ingest_->ApplyVllmBatch(v, ns, store));
    const uint64_t malformed = ingest_->Counters().malformed;
    const std::string bad = m.Mutate(seeds[m.Below(seeds.size())]);
    if (ingest_->ApplyVllmBatch(v, ns, bad).ok()) {
      ++applied;
      continue;
    }
    ++failed;
    EXPECT_EQ(ingest_->Counters().malformed, malformed + 1) << "iteration " << i;
    std::vector<NodeMatchResult> r = index_->Lookup(ns, chain, {}, absl::Now());
    ASSERT_EQ(r.size(), 1u) << "iteration " << i;
    EXPECT_EQ(r[0].matched, chain.size()) << "iteration " << i;
    EXPECT_EQ(r[0].tier_counts[static_cast<int>(Tier::kDram)], chain.size()) << "iteration " << i;
  }
  EXPECT_GT(failed, 1000);
  EXPECT_GT(applied, 100);
}

TEST_F(EventIngestTest, BadNodeIdsAreRefusedOnEveryPath) {
  const size_t nodes = index_->Nodes(absl::Now()).size();
  const std::string long_id(200, 'x');
  EXPECT_THAT(
      ingest_->ApplyEventBatch(EventSubject(kNs), Batch(long_id, 1, chain_).SerializeAsString()),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("node_id")));
  EXPECT_THAT(
      ingest_->ApplyEventBatch(EventSubject(kNs), Batch("a b", 1, chain_).SerializeAsString()),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("node_id")));
  v1::NodeHeartbeat hb;
  hb.set_node_id(long_id);
  hb.set_incarnation(1);
  EXPECT_THAT(ingest_->ApplyHeartbeat(hb.SerializeAsString(), absl::Now()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("heartbeat.node_id")));
  EXPECT_THAT(ingest_->ApplyHeartbeat(NodeSubject("x"), hb.SerializeAsString(), absl::Now()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("heartbeat.node_id")));
  hb.set_node_id("n2/../n1");
  EXPECT_THAT(ingest_->ApplyHeartbeat(hb.SerializeAsString(), absl::Now()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("heartbeat.node_id")));
  EXPECT_EQ(ingest_->Counters().malformed, 5u);
  EXPECT_EQ(index_->Nodes(absl::Now()).size(), nodes);
  EXPECT_EQ(index_->Stats(absl::Now()).entries, 0u);
}

TEST_F(EventIngestTest, OverLongAddressesAreRefused) {
  v1::NodeHeartbeat hb;
  hb.set_node_id("n2");
  hb.set_incarnation(1);
  hb.set_grpc_address(std::string(kMaxAddressBytes + 1, 'a'));
  EXPECT_THAT(ingest_->ApplyHeartbeat(NodeSubject("n2"), hb.SerializeAsString(), absl::Now()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("heartbeat.grpc_address")));
  hb.set_grpc_address("10.0.0.2:7443");
  hb.set_ucx_address(std::string(1 << 20, 'u'));
  EXPECT_THAT(ingest_->ApplyHeartbeat(NodeSubject("n2"), hb.SerializeAsString(), absl::Now()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("heartbeat.ucx_address")));
  EXPECT_EQ(ingest_->Counters().malformed, 2u);
  EXPECT_EQ(ingest_->Counters().heartbeats, 1u);  // SetUp's
  EXPECT_EQ(index_->Nodes(absl::Now()).size(), 1u);
  hb.set_ucx_address("10.0.0.2:13337");
  ASSERT_OK(ingest_->ApplyHeartbeat(NodeSubject("n2"), hb.SerializeAsString(), absl::Now()));
  EXPECT_EQ(index_->Nodes(absl::Now()).size(), 2u);
}

TEST_F(EventIngestTest, HeartbeatForAnotherNodesSubjectChangesNothing) {
  ASSERT_OK(
      ingest_->ApplyEventBatch(EventSubject(kNs), Batch("n1", 1, chain_).SerializeAsString()));
  // A forged heartbeat of n1 (newer incarnation, another address) sent on
  // the subject of node "evil".
  v1::NodeHeartbeat forged;
  forged.set_node_id("n1");
  forged.set_incarnation(99);
  forged.set_grpc_address("6.6.6.6:1");
  EXPECT_THAT(ingest_->ApplyHeartbeat(NodeSubject("evil"), forged.SerializeAsString(), absl::Now()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("subject")));
  EXPECT_THAT(ingest_->ApplyHeartbeat(NodeSubject("n1.x"), forged.SerializeAsString(), absl::Now()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("subject")));
  EXPECT_EQ(ingest_->Counters().malformed, 2u);
  std::vector<NodeStatus> nodes = index_->Nodes(absl::Now());
  ASSERT_EQ(nodes.size(), 1u);
  EXPECT_EQ(nodes[0].node_id, "n1");
  EXPECT_EQ(nodes[0].incarnation, 5u);
  EXPECT_EQ(nodes[0].grpc_address, "127.0.0.1:1");
  EXPECT_EQ(nodes[0].entries, chain_.size());
  std::vector<NodeMatchResult> r = index_->Lookup(kNs, chain_, {}, absl::Now());
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].matched, chain_.size());
  // On its own subject the same heartbeat is n1's restart.
  ASSERT_OK(ingest_->ApplyHeartbeat(NodeSubject("n1"), forged.SerializeAsString(), absl::Now()));
  EXPECT_TRUE(index_->Lookup(kNs, chain_, {}, absl::Now()).empty());
}

TEST(VllmSequenceTest, GapsAndRestarts) {
  VllmSequence seq;
  EXPECT_EQ(seq.Next(7).missed, 0u);  // joined a running endpoint
  EXPECT_FALSE(seq.Next(8).restarted);
  VllmSequence::Step step = seq.Next(11);
  EXPECT_EQ(step.missed, 2u);
  EXPECT_FALSE(step.restarted);
  step = seq.Next(0);  // vLLM started again
  EXPECT_TRUE(step.restarted);
  EXPECT_EQ(step.missed, 0u);
  EXPECT_FALSE(seq.Next(1).restarted);
  EXPECT_TRUE(seq.Next(1).restarted);  // a number never repeats within one run
  step = seq.Next(3);
  EXPECT_FALSE(step.restarted);
  EXPECT_EQ(step.missed, 1u);
}

TEST_F(EventIngestTest, VllmRestartDropsTheEndpointsBlocks) {
  ASSERT_OK_AND_ASSIGN(uint32_t v, index_->NodeIndex("vllm-a", NodeSource::kVllm));
  const uint64_t ns = VllmNamespaceId();
  const std::string store = VllmBatch(
      [](auto& pk) {
        pk.pack_array(5);
        pk.pack(std::string("BlockStored"));
        pk.pack(std::vector<int64_t>{21, 22});
        pk.pack_nil();
        pk.pack(std::vector<int>{});
        pk.pack(16);
      },
      1);
  const std::vector<BlockKey> chain = {VllmKey(ns, VllmIntHashBytes(21)),
                                       VllmKey(ns, VllmIntHashBytes(22))};
  // What ZmqLoop does per message: the sequence first, then the batch.
  VllmSequence seq;
  for (uint64_t s : {40u, 41u}) {
    ASSERT_FALSE(seq.Next(s).restarted);
    ASSERT_OK(ingest_->ApplyVllmBatch(v, ns, store));
  }
  ASSERT_EQ(index_->Lookup(ns, chain, {}, absl::Now()).size(), 1u);
  // vLLM restarted (numbers from 0 again) with an empty block pool.
  ASSERT_TRUE(seq.Next(0).restarted);
  EXPECT_EQ(ingest_->ApplyVllmRestart(v), chain.size());
  EXPECT_TRUE(index_->Lookup(ns, chain, {}, absl::Now()).empty());
  EXPECT_EQ(ingest_->Counters().vllm_restarts, 1u);
  EXPECT_EQ(index_->Nodes(absl::Now()).size(), 2u);
  // What the new process stores is kept.
  ASSERT_OK(ingest_->ApplyVllmBatch(v, ns, store));
  std::vector<NodeMatchResult> r = index_->Lookup(ns, chain, {}, absl::Now());
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].matched, 2u);
}

TEST(VllmKeys, IntHashesAreBigEndianAndNamespaced) {
  EXPECT_EQ(VllmIntHashBytes(0x0102030405060708),
            std::string("\x01\x02\x03\x04\x05\x06\x07\x08", 8));
  EXPECT_EQ(VllmIntHashBytes(-1), std::string(8, '\xff'));
  EXPECT_NE(VllmKey(1, "ab"), VllmKey(2, "ab"));
  EXPECT_NE(VllmNamespaceId(), 0u);
}

}  // namespace
}  // namespace kvtier::index
