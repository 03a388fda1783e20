#include "src/index/cluster_index.h"

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace kvtier::index {
namespace {

using ::kvtier::testing::StatusIs;

std::vector<BlockKey> Chain(uint64_t seed, size_t n) {
  std::vector<BlockKey> out;
  for (size_t i = 0; i < n; ++i) out.push_back(BlockKey{seed, i + 1});
  return out;
}

class ClusterIndexTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ClusterIndexOptions o;
    o.shards = 4;
    o.node_timeout = absl::Seconds(5);
    ASSERT_OK_AND_ASSIGN(index_, ClusterIndex::Create(o));
  }
  uint32_t Node(const std::string& id) {
    NodeAnnouncement a;
    a.node_id = id;
    a.incarnation = 1;
    a.grpc_address = id + ":1";
    absl::StatusOr<uint32_t> n = index_->Heartbeat(a, now_);
    EXPECT_OK(n.status());
    return n.value_or(0);
  }
  std::vector<NodeMatchResult> Look(absl::Span<const BlockKey> chain, LookupOptions lo = {}) {
    return index_->Lookup(7, chain, lo, now_);
  }
  absl::Time now_ = absl::FromUnixSeconds(1000000);
  std::unique_ptr<ClusterIndex> index_;
};

TEST_F(ClusterIndexTest, OptionsAreValidated) {
  ClusterIndexOptions o;
  o.shards = 3;
  EXPECT_THAT(ClusterIndex::Create(o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("shards")));
  o = {};
  o.max_entries = 0;
  EXPECT_THAT(ClusterIndex::Create(o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("max_entries")));
}

TEST_F(ClusterIndexTest, PrefixLengthsAndTierMixPerNode) {
  const uint32_t a = Node("a");
  const uint32_t b = Node("b");
  const std::vector<BlockKey> chain = Chain(1, 8);
  index_->Store(a, 7, chain, Tier::kDram);
  index_->Store(a, 7, absl::MakeConstSpan(chain).subspan(0, 2), Tier::kNvme);
  index_->Store(b, 7, absl::MakeConstSpan(chain).subspan(0, 3), Tier::kNvme);
  index_->Store(b, 7, absl::MakeConstSpan(chain).subspan(4, 4), Tier::kDram);  // gap at 3
  LookupOptions lo;
  lo.include_tiers = true;
  std::vector<NodeMatchResult> r = Look(chain, lo);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].node_id, "a");
  EXPECT_EQ(r[0].matched, 8u);
  EXPECT_EQ(r[0].tier_counts[static_cast<int>(Tier::kDram)], 8u);  // DRAM beats NVMe
  EXPECT_EQ(r[0].grpc_address, "a:1");
  EXPECT_EQ(r[1].node_id, "b");
  EXPECT_EQ(r[1].matched, 3u);
  EXPECT_EQ(r[1].tier_counts[static_cast<int>(Tier::kNvme)], 3u);
  EXPECT_THAT(r[1].tiers, ::testing::ElementsAre(Tier::kNvme, Tier::kNvme, Tier::kNvme));
  // Another namespace sees nothing.
  EXPECT_TRUE(index_->Lookup(8, chain, {}, now_).empty());
  // A chain whose first key nobody holds matches nobody.
  EXPECT_EQ(Look(absl::MakeConstSpan(chain).subspan(4)).size(), 2u);  // both hold 4..7
  EXPECT_EQ(Look(absl::MakeConstSpan(chain).subspan(3)).size(), 1u);  // b lacks 3
  EXPECT_TRUE(Look(Chain(2, 3)).empty());
}

TEST_F(ClusterIndexTest, RemoveClearsOneTierThenTheHolder) {
  const uint32_t a = Node("a");
  const std::vector<BlockKey> chain = Chain(1, 4);
  index_->Store(a, 7, chain, Tier::kDram);
  index_->Store(a, 7, chain, Tier::kNvme);
  index_->Remove(a, 7, absl::MakeConstSpan(&chain[2], 1), Tier::kDram);
  std::vector<NodeMatchResult> r = Look(chain);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].matched, 4u);
  EXPECT_EQ(r[0].tier_counts[static_cast<int>(Tier::kNvme)], 1u);
  index_->Remove(a, 7, absl::MakeConstSpan(&chain[2], 1), Tier::kNvme);
  r = Look(chain);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].matched, 2u);
  EXPECT_EQ(index_->Stats(now_).entries, 3u);
}

TEST_F(ClusterIndexTest, DeadNodesLeaveAnswersThenTheirEntriesGo) {
  const uint32_t a = Node("a");
  const uint32_t b = Node("b");
  const std::vector<BlockKey> chain = Chain(1, 4);
  index_->Store(a, 7, chain, Tier::kDram);
  index_->Store(b, 7, chain, Tier::kDram);
  now_ += absl::Seconds(3);
  Node("b");  // b keeps beating, a does not
  now_ += absl::Seconds(3);
  std::vector<NodeMatchResult> r = Look(chain);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].node_id, "b");
  EXPECT_EQ(index_->Sweep(now_), 0u);  // dead, not yet for twice the timeout
  now_ += absl::Seconds(5);
  Node("b");
  EXPECT_EQ(index_->Sweep(now_), 4u);
  EXPECT_EQ(index_->Stats(now_).entries, 4u);
  // A leaving heartbeat drops a node at once.
  NodeAnnouncement bye;
  bye.node_id = "b";
  bye.incarnation = 1;
  bye.leaving = true;
  ASSERT_OK(index_->Heartbeat(bye, now_).status());
  EXPECT_TRUE(Look(chain).empty());
}

TEST_F(ClusterIndexTest, SequencesAndIncarnations) {
  const uint32_t a = Node("a");
  EXPECT_EQ(index_->BeginBatch(a, 1, 1), BatchOrder::kNext);
  EXPECT_EQ(index_->BeginBatch(a, 1, 2), BatchOrder::kNext);
  EXPECT_EQ(index_->BeginBatch(a, 1, 2), BatchOrder::kDuplicate);
  EXPECT_EQ(index_->BeginBatch(a, 1, 5), BatchOrder::kGap);
  index_->Store(a, 7, Chain(1, 3), Tier::kDram);
  // A restarted daemon: its old entries go.
  EXPECT_EQ(index_->BeginBatch(a, 2, 1), BatchOrder::kNext);
  EXPECT_TRUE(Look(Chain(1, 3)).empty());
  EXPECT_EQ(index_->BeginBatch(a, 1, 9), BatchOrder::kDuplicate);
  std::vector<NodeStatus> nodes = index_->Nodes(now_);
  ASSERT_EQ(nodes.size(), 1u);
  EXPECT_EQ(nodes[0].sequence_gaps, 2u);
  EXPECT_EQ(nodes[0].incarnation, 2u);
}

TEST_F(ClusterIndexTest, RestartKeepsWhatTheNewIncarnationStoresMeanwhile) {
  // The heartbeat and the first batch of a restarted node arrive together
  // (NATS delivers each subscription on its own thread), either one first:
  // the clear of the old entries must not drop what the new incarnation
  // stores meanwhile, and the old entries are out of every answer once the
  // heartbeat returns.
  ClusterIndexOptions o;
  o.shards = 256;
  o.node_timeout = absl::Hours(1);
  const std::vector<BlockKey> old_keys = Chain(1, 100000);
  const std::vector<BlockKey> new_keys = Chain(2, 10000);
  for (int round = 0; round < 20 && !HasFailure(); ++round) {
    const bool heartbeat_first = round % 2 == 0;
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<ClusterIndex> index, ClusterIndex::Create(o));
    NodeAnnouncement boot1;
    boot1.node_id = "a";
    boot1.incarnation = 1;
    boot1.grpc_address = "a:1";
    ASSERT_OK_AND_ASSIGN(uint32_t a, index->Heartbeat(boot1, now_));
    ASSERT_EQ(index->BeginBatch(a, 1, 1), BatchOrder::kNext);
    index->Store(a, 7, old_keys, Tier::kDram);
    NodeAnnouncement boot2 = boot1;
    boot2.incarnation = 2;
    // The other thread has made boot 2 known (its clear may be under way).
    auto wait_for_boot2 = [&] {
      while (index->Nodes(now_)[0].incarnation != 2) std::this_thread::yield();
    };

    size_t old_served = 0;
    std::thread heartbeat([&] {
      if (!heartbeat_first) wait_for_boot2();
      EXPECT_OK(index->Heartbeat(boot2, now_).status());
      for (size_t i = 0; i < old_keys.size(); i += 5) {
        if (!index->Lookup(7, absl::MakeConstSpan(&old_keys[i], 1), {}, now_).empty()) {
          ++old_served;
        }
      }
    });
    std::thread batch([&] {
      if (heartbeat_first) wait_for_boot2();
      EXPECT_NE(index->BeginBatch(a, 2, 1), BatchOrder::kDuplicate);
      for (size_t i = 0; i < new_keys.size(); i += 100) {
        index->Store(a, 7, absl::MakeConstSpan(new_keys).subspan(i, 100), Tier::kDram);
        std::this_thread::yield();
      }
    });
    heartbeat.join();
    batch.join();

    EXPECT_EQ(old_served, 0u) << "round " << round;
    size_t new_found = 0;
    for (const BlockKey& k : new_keys) {
      new_found += index->Lookup(7, absl::MakeConstSpan(&k, 1), {}, now_).size();
    }
    EXPECT_EQ(new_found, new_keys.size()) << "round " << round;
    EXPECT_TRUE(index->Lookup(7, old_keys, {}, now_).empty()) << "round " << round;
    EXPECT_EQ(index->Stats(now_).entries, new_keys.size()) << "round " << round;
    EXPECT_EQ(index->Stats(now_).purged_entries, old_keys.size()) << "round " << round;
    std::vector<NodeStatus> nodes = index->Nodes(now_);
    ASSERT_EQ(nodes.size(), 1u);
    EXPECT_EQ(nodes[0].entries, new_keys.size()) << "round " << round;
    EXPECT_EQ(nodes[0].incarnation, 2u);
  }
}

TEST_F(ClusterIndexTest, NodeIdsAndAddressesAreBounded) {
  EXPECT_THAT(index_->NodeIndex(std::string(200, 'a'), NodeSource::kKvtier).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("node_id")));
  EXPECT_THAT(index_->NodeIndex("", NodeSource::kVllm).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  NodeAnnouncement a;
  a.node_id = std::string(200, 'b');
  a.incarnation = 1;
  EXPECT_THAT(index_->Heartbeat(a, now_).status(), StatusIs(absl::StatusCode::kInvalidArgument));
  a.node_id = "b";
  a.grpc_address = std::string(kMaxAddressBytes + 1, 'x');
  EXPECT_THAT(index_->Heartbeat(a, now_).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("address")));
  a.grpc_address = "b:1";
  a.ucx_address = std::string(kMaxAddressBytes + 1, 'x');
  EXPECT_THAT(index_->Heartbeat(a, now_).status(), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_TRUE(index_->Nodes(now_).empty());
  a.ucx_address = std::string(kMaxAddressBytes, 'x');
  a.node_id = std::string(kMaxNodeIdBytes, 'b');
  EXPECT_OK(index_->Heartbeat(a, now_).status());
  EXPECT_EQ(index_->Nodes(now_).size(), 1u);
}

TEST_F(ClusterIndexTest, BoundDropsOldestKeysFirstAndCountsThem) {
  ClusterIndexOptions o;
  o.shards = 1;
  o.max_entries = 100;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<ClusterIndex> small, ClusterIndex::Create(o));
  ASSERT_OK_AND_ASSIGN(uint32_t a, small->NodeIndex("v", NodeSource::kVllm));
  const std::vector<BlockKey> old_chain = Chain(1, 60);
  const std::vector<BlockKey> new_chain = Chain(2, 60);
  small->Store(a, 7, old_chain, Tier::kGpu);
  small->Store(a, 7, new_chain, Tier::kGpu);
  const ClusterIndexStats s = small->Stats(now_);
  EXPECT_EQ(s.entries, 100u);
  EXPECT_EQ(s.dropped_entries, 20u);
  EXPECT_TRUE(small->Lookup(7, old_chain, {}, now_).empty());  // its first keys went
  std::vector<NodeMatchResult> r = small->Lookup(7, new_chain, {}, now_);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].matched, 60u);
  EXPECT_GT(small->MemoryBytes(), 100u * 24u);
}

TEST_F(ClusterIndexTest, ExcludeAndMaxNodes) {
  for (const char* id : {"a", "b", "c"}) index_->Store(Node(id), 7, Chain(1, 2), Tier::kDram);
  LookupOptions lo;
  lo.exclude_nodes = {"b"};
  std::vector<NodeMatchResult> r = Look(Chain(1, 2), lo);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].node_id, "a");
  EXPECT_EQ(r[1].node_id, "c");
  lo.max_nodes = 1;
  EXPECT_EQ(Look(Chain(1, 2), lo).size(), 1u);
}

}  // namespace
}  // namespace kvtier::index
