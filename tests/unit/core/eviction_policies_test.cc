#include "src/core/eviction_policies.h"

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "src/core/eviction.h"
#include "tests/testing/status_matchers.h"

namespace kvtier {
namespace {

using ::kvtier::testing::StatusIs;
using ::testing::HasSubstr;

std::vector<EntryId> DrainVictims(EvictionPolicy& p) {
  std::vector<EntryId> out;
  while (auto v = p.PickVictim([](EntryId) { return true; })) {
    out.push_back(*v);
    p.OnErase(*v);
  }
  return out;
}

// Inserts `id` as an evictable entry (a chain tail), the way the tier does.
void Add(EvictionPolicy& p, EntryId id, EntryTraits traits = {}) {
  p.OnInsert(id, traits);
  p.SetEvictable(id, true);
}

EntryTraits Key(uint64_t fingerprint, uint32_t depth = 0, uint64_t bytes = 1) {
  return EntryTraits{depth, bytes, fingerprint};
}

std::unique_ptr<EvictionPolicy> MakeTwoQueue(TwoQueueOptions options = {}) {
  auto p = NewTwoQueuePolicy(options);
  EXPECT_TRUE(p.ok()) << p.status();
  return *std::move(p);
}

std::unique_ptr<EvictionPolicy> MakeChain(uint32_t deep_depth, uint32_t settle_inserts) {
  ChainTwoQueueOptions o;
  o.deep_depth = deep_depth;
  o.settle_inserts = settle_inserts;
  auto p = NewChainTwoQueuePolicy(o);
  EXPECT_TRUE(p.ok()) << p.status();
  return *std::move(p);
}

std::unique_ptr<EvictionPolicy> MakeCost(CostOptions options = {}) {
  auto p = NewCostPolicy(options);
  EXPECT_TRUE(p.ok()) << p.status();
  return *std::move(p);
}

// ---- behaviour every policy shares -------------------------------------

class EveryPolicy : public ::testing::TestWithParam<std::string> {
 protected:
  std::unique_ptr<EvictionPolicy> Make() {
    auto p = NewEvictionPolicy(GetParam());
    EXPECT_TRUE(p.ok()) << p.status();
    return *std::move(p);
  }
};

TEST_P(EveryPolicy, SelectableByName) { EXPECT_EQ(Make()->Name(), GetParam()); }

TEST_P(EveryPolicy, EmptyHasNoVictim) {
  auto p = Make();
  EXPECT_FALSE(p->PickVictim([](EntryId) { return true; }).has_value());
  p->OnInsert(1, Key(11));  // resident, but not evictable yet
  EXPECT_FALSE(p->PickVictim([](EntryId) { return true; }).has_value());
}

TEST_P(EveryPolicy, OnlyEvictableEntriesAreVictims) {
  auto p = Make();
  for (EntryId id = 0; id < 6; ++id) p->OnInsert(id, Key(100 + id, id));
  p->SetEvictable(1, true);
  p->SetEvictable(4, true);
  p->SetEvictable(5, true);
  p->SetEvictable(5, false);  // gained a child
  p->OnAccess(4);
  std::vector<EntryId> victims = DrainVictims(*p);
  std::sort(victims.begin(), victims.end());
  EXPECT_EQ(victims, (std::vector<EntryId>{1, 4}));
}

TEST_P(EveryPolicy, AcceptFilterIsHonoured) {
  auto p = Make();
  for (EntryId id = 0; id < 5; ++id) Add(*p, id, Key(200 + id, 3));
  for (EntryId wanted = 0; wanted < 5; ++wanted) {
    std::optional<EntryId> v = p->PickVictim([&](EntryId id) { return id == wanted; });
    ASSERT_TRUE(v.has_value());
    EXPECT_EQ(*v, wanted);
  }
  EXPECT_FALSE(p->PickVictim([](EntryId) { return false; }).has_value());
}

TEST_P(EveryPolicy, ErasedAndReusedIdsAreTrackedAfresh) {
  auto p = Make();
  Add(*p, 0, Key(1));
  Add(*p, 1, Key(2));
  p->OnErase(0);
  p->OnErase(0);  // twice is harmless
  EXPECT_EQ(DrainVictims(*p), (std::vector<EntryId>{1}));
  p->OnInsert(0, Key(3));  // the tier reuses ids; this is a new, not-yet-evictable entry
  EXPECT_FALSE(p->PickVictim([](EntryId) { return true; }).has_value());
  p->SetEvictable(0, true);
  EXPECT_EQ(DrainVictims(*p), (std::vector<EntryId>{0}));
}

TEST_P(EveryPolicy, CallsForUnknownIdsAreIgnored) {
  auto p = Make();
  p->OnAccess(7);
  p->SetEvictable(7, true);
  p->OnErase(7);
  EXPECT_FALSE(p->PickVictim([](EntryId) { return true; }).has_value());
}

INSTANTIATE_TEST_SUITE_P(Policies, EveryPolicy, ::testing::Values("lru", "2q", "2q-chain", "cost"));

TEST(EvictionPolicyFactory, UnknownNameNamesTheField) {
  EXPECT_THAT(NewEvictionPolicy("arc"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("eviction_policy")));
}

TEST(HistoryOptions, ZeroesAreRefused) {
  TwoQueueOptions a;
  a.history.keys_per_entry = 0;
  EXPECT_THAT(NewTwoQueuePolicy(a),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("history.keys_per_entry")));
  CostOptions b;
  b.history.min_keys = 0;
  EXPECT_THAT(NewCostPolicy(b),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("history.min_keys")));
}

// ---- 2q ----------------------------------------------------------------

TEST(TwoQueuePolicy, FirstTimersGoBeforeReReferencedEntries) {
  auto p = MakeTwoQueue();
  for (EntryId id = 0; id < 4; ++id) Add(*p, id, Key(10 + id));
  p->OnAccess(2);  // proven reuse: protected
  p->OnAccess(0);
  Add(*p, 4, Key(14));  // newest, but a first-timer
  // Probation (1, 3, 4) least recent first, then protected (2, 0).
  EXPECT_EQ(DrainVictims(*p), (std::vector<EntryId>{1, 3, 4, 2, 0}));
}

TEST(TwoQueuePolicy, ReinsertedChunkIsRememberedAcrossEviction) {
  auto p = MakeTwoQueue();
  Add(*p, 0, Key(500));
  Add(*p, 1, Key(501));
  ASSERT_EQ(*p->PickVictim([](EntryId) { return true; }), 0u);
  p->OnErase(0);
  // The same chunk comes back under another id: its second sighting.
  Add(*p, 2, Key(500));
  Add(*p, 3, Key(502));
  EXPECT_EQ(DrainVictims(*p), (std::vector<EntryId>{1, 3, 2}));
}

TEST(TwoQueuePolicy, WithoutFingerprintsOnlyAccessesPromote) {
  auto p = MakeTwoQueue();
  Add(*p, 0);  // fingerprint 0: no history
  p->OnErase(0);
  Add(*p, 1);
  Add(*p, 2);
  p->OnAccess(1);
  EXPECT_EQ(DrainVictims(*p), (std::vector<EntryId>{2, 1}));
}

TEST(TwoQueuePolicy, ARegainedCandidateKeepsItsQueueAndRecency) {
  auto p = MakeTwoQueue();
  Add(*p, 0, Key(1));
  p->OnAccess(0);             // protected, accessed before 1 and 2 arrive
  p->SetEvictable(0, false);  // got a child
  Add(*p, 1, Key(2));
  Add(*p, 2, Key(3));
  p->OnAccess(1);
  p->SetEvictable(0, true);  // its child left
  EXPECT_EQ(DrainVictims(*p), (std::vector<EntryId>{2, 0, 1}));
}

TEST(TwoQueuePolicy, HistoryIsBounded) {
  TwoQueueOptions o;
  o.history.keys_per_entry = 1;
  o.history.min_keys = 2;
  auto p = MakeTwoQueue(o);
  // Fingerprints 1..4 are seen once each and evicted; only the last
  // max(2, 1 x resident) = 2 stay remembered.
  for (EntryId id = 0; id < 4; ++id) {
    Add(*p, id, Key(id + 1));
    p->OnErase(id);
  }
  Add(*p, 10, Key(1));  // forgotten: a first-timer again
  Add(*p, 11, Key(4));  // remembered: protected
  Add(*p, 12, Key(99));
  EXPECT_EQ(DrainVictims(*p), (std::vector<EntryId>{10, 12, 11}));
}

// ---- 2q-chain ------------------------------------------------------------

TEST(ChainTwoQueuePolicy, QueuesGoRunEndsProbationProtected) {
  auto p = MakeChain(/*deep_depth=*/100, /*settle_inserts=*/2);
  Add(*p, 0, Key(10));
  Add(*p, 1, Key(11));
  Add(*p, 2, Key(12));  // 0 settles: an unread tail with no child, a run end
  Add(*p, 3, Key(13));  // 1 settles too
  p->OnAccess(1);       // read: protected
  // Run ends (0), probation (2, 3), protected (1).
  EXPECT_EQ(DrainVictims(*p), (std::vector<EntryId>{0, 2, 3, 1}));
}

TEST(ChainTwoQueuePolicy, AnEntryWithAChildWhenItSettlesIsNoRunEnd) {
  auto p = MakeChain(/*deep_depth=*/100, /*settle_inserts=*/1);
  p->OnInsert(0, Key(1, 0));
  p->SetEvictable(0, true);
  p->SetEvictable(0, false);  // its child arrives
  p->OnInsert(1, Key(2, 1));  // 0 settles with a child: stays in probation
  p->SetEvictable(1, true);
  Add(*p, 2, Key(3));  // another run: 1 settles childless, a run end
  ASSERT_EQ(*p->PickVictim([](EntryId) { return true; }), 1u);
  p->OnErase(1);
  p->SetEvictable(0, true);  // the parent is a tail again
  Add(*p, 3, Key(4));        // 2 settles: a run end, newer than 0
  // Run end 2, then probation 0 (oldest) and 3.
  EXPECT_EQ(DrainVictims(*p), (std::vector<EntryId>{2, 0, 3}));
}

TEST(ChainTwoQueuePolicy, ARunEndIsChosenOverAnOlderProbationTail) {
  auto p = MakeChain(/*deep_depth=*/100, /*settle_inserts=*/1);
  Add(*p, 0, Key(1));
  p->SetEvictable(0, false);  // pinned while 1 and 2 arrive
  Add(*p, 1, Key(2));         // 0 is not a candidate when it settles: stays in probation
  Add(*p, 2, Key(3));         // 1 settles: run end
  p->SetEvictable(0, true);
  // Least recent first would be 0, 1, 2; the run end 1 goes first.
  EXPECT_EQ(DrainVictims(*p), (std::vector<EntryId>{1, 0, 2}));
}

TEST(ChainTwoQueuePolicy, DeepFirstTimersAreProtected) {
  auto p = MakeChain(/*deep_depth=*/3, /*settle_inserts=*/100);
  Add(*p, 0, Key(1, 5));
  Add(*p, 1, Key(2, 2));
  Add(*p, 2, Key(3, 3));
  Add(*p, 3, Key(4, 0));
  // Probation (1, 3), then protected (0, 2).
  EXPECT_EQ(DrainVictims(*p), (std::vector<EntryId>{1, 3, 0, 2}));
}

TEST(ChainTwoQueuePolicy, ADeepRunEndIsStillARunEnd) {
  auto p = MakeChain(/*deep_depth=*/3, /*settle_inserts=*/1);
  Add(*p, 0, Key(1, 4));  // protected by depth
  Add(*p, 1, Key(2, 0));  // 0 settles unread: run end
  Add(*p, 2, Key(3, 0));  // 1 settles: run end
  p->OnAccess(1);
  EXPECT_EQ(DrainVictims(*p), (std::vector<EntryId>{0, 2, 1}));
}

TEST(ChainTwoQueuePolicy, SeenBeforeIsNeverARunEnd) {
  auto p = MakeChain(/*deep_depth=*/100, /*settle_inserts=*/1);
  Add(*p, 0, Key(7));
  p->OnErase(0);
  Add(*p, 1, Key(7));  // second sighting: protected
  Add(*p, 2, Key(8));  // 1 settles, but it is no first-timer
  Add(*p, 3, Key(9));  // 2 settles: run end
  EXPECT_EQ(DrainVictims(*p), (std::vector<EntryId>{2, 3, 1}));
}

TEST(ChainTwoQueuePolicy, AReusedIdIsNotSettledByItsPredecessor) {
  auto p = MakeChain(/*deep_depth=*/100, /*settle_inserts=*/2);
  Add(*p, 7, Key(7));
  p->SetEvictable(7, false);  // pinned while it settles: stays in probation
  Add(*p, 0, Key(1));
  p->OnErase(0);
  Add(*p, 0, Key(2));  // 7 settles
  Add(*p, 1, Key(3));  // the erased entry 0 settles, not the new one
  p->SetEvictable(7, true);
  // Probation least recent first: 7, the new 0, 1; no run end.
  EXPECT_EQ(DrainVictims(*p), (std::vector<EntryId>{7, 0, 1}));
}

TEST(ChainTwoQueueOptions, ZeroesAreRefused) {
  ChainTwoQueueOptions a;
  a.deep_depth = 0;
  EXPECT_THAT(NewChainTwoQueuePolicy(a),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("deep_depth")));
  ChainTwoQueueOptions b;
  b.settle_inserts = 0;
  EXPECT_THAT(NewChainTwoQueuePolicy(b),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("settle_inserts")));
  ChainTwoQueueOptions c;
  c.history.keys_per_entry = 0;
  EXPECT_THAT(NewChainTwoQueuePolicy(c),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("history.keys_per_entry")));
}

// ---- cost --------------------------------------------------------------

TEST(CostPolicy, CheapToRecomputeGoesFirst) {
  auto p = MakeCost();
  Add(*p, 0, Key(1, /*depth=*/9));
  Add(*p, 1, Key(2, /*depth=*/0));
  Add(*p, 2, Key(3, /*depth=*/4));
  Add(*p, 3, Key(4, /*depth=*/0));  // ties with 1: least recent first
  EXPECT_EQ(DrainVictims(*p), (std::vector<EntryId>{1, 3, 2, 0}));
}

TEST(CostPolicy, LargerEntriesGoFirstAtEqualDepth) {
  auto p = MakeCost();
  Add(*p, 0, Key(1, 2, /*bytes=*/100));
  Add(*p, 1, Key(2, 2, /*bytes=*/400));
  EXPECT_EQ(DrainVictims(*p), (std::vector<EntryId>{1, 0}));
}

TEST(CostPolicy, AccessesRaisePriority) {
  auto p = MakeCost();
  Add(*p, 0, Key(1, 1));  // 2 per sighting
  Add(*p, 1, Key(2, 2));  // 3 per sighting
  p->OnAccess(0);         // 2 x 2 = 4 > 3
  EXPECT_EQ(DrainVictims(*p), (std::vector<EntryId>{1, 0}));
}

TEST(CostPolicy, EvictionsAgeSurvivors) {
  auto p = MakeCost();
  Add(*p, 0, Key(1, 5));  // priority 6
  Add(*p, 1, Key(2, 3));  // priority 4
  ASSERT_EQ(*p->PickVictim([](EntryId) { return true; }), 1u);
  p->OnErase(1);          // L = 4
  Add(*p, 2, Key(3, 1));  // 4 + 2 = 6: ties with 0, newer
  Add(*p, 3, Key(4, 0));  // 4 + 1 = 5: below the old deep entry
  EXPECT_EQ(DrainVictims(*p), (std::vector<EntryId>{3, 0, 2}));
}

TEST(CostPolicy, RemovalsDoNotAge) {
  auto p = MakeCost();
  Add(*p, 0, Key(1, 5));  // 6
  Add(*p, 1, Key(2, 9));  // 10
  p->OnErase(1);          // removed by the tier, not chosen as a victim
  Add(*p, 2, Key(3, 2));  // 0 + 3 = 3, not 10 + 3
  EXPECT_EQ(DrainVictims(*p), (std::vector<EntryId>{2, 0}));
}

TEST(CostPolicy, ReinsertedChunkKeepsItsCount) {
  auto p = MakeCost();
  Add(*p, 0, Key(77, 0));  // 1
  p->OnErase(0);           // removal: no aging
  Add(*p, 1, Key(77, 0));  // second sighting: 2
  Add(*p, 2, Key(78, 0));  // first sighting: 1
  EXPECT_EQ(DrainVictims(*p), (std::vector<EntryId>{2, 1}));
}

}  // namespace
}  // namespace kvtier
