#include "src/index/cluster_index.h"

#include <string>
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
