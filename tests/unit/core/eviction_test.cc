#include "src/core/eviction.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace kvtier {
namespace {

using ::kvtier::testing::StatusIs;

std::vector<EntryId> DrainVictims(EvictionPolicy& p) {
  std::vector<EntryId> out;
  while (auto v = p.PickVictim([](EntryId) { return true; })) {
    out.push_back(*v);
    p.OnErase(*v);
  }
  return out;
}

TEST(LruPolicy, OldestCandidateFirst) {
  auto p = NewLruPolicy();
  for (EntryId id = 0; id < 5; ++id) {
    p->OnInsert(id, {});
    p->SetEvictable(id, true);
  }
  p->OnAccess(1);
  p->OnAccess(0);
  EXPECT_EQ(DrainVictims(*p), (std::vector<EntryId>{2, 3, 4, 1, 0}));
}

TEST(LruPolicy, OnlyEvictableEntriesAreVictims) {
  auto p = NewLruPolicy();
  for (EntryId id = 0; id < 4; ++id) p->OnInsert(id, {});
  p->SetEvictable(2, true);
  p->SetEvictable(3, true);
  p->SetEvictable(3, false);
  EXPECT_EQ(DrainVictims(*p), (std::vector<EntryId>{2}));
}

TEST(LruPolicy, ARegainedCandidateKeepsItsRecency) {
  // A chain parent stops being a candidate while it has a child, and comes
  // back with the recency of its last access, not as the newest entry.
  auto p = NewLruPolicy();
  p->OnInsert(0, {});  // parent
  p->OnInsert(1, {});  // unrelated, newer
  p->SetEvictable(1, true);
  p->SetEvictable(0, true);
  EXPECT_EQ(*p->PickVictim([](EntryId) { return true; }), 0u);
}

TEST(LruPolicy, AcceptFilterSkips) {
  auto p = NewLruPolicy();
  for (EntryId id = 0; id < 3; ++id) {
    p->OnInsert(id, {});
    p->SetEvictable(id, true);
  }
  EXPECT_EQ(*p->PickVictim([](EntryId id) { return id == 2; }), 2u);
  EXPECT_FALSE(p->PickVictim([](EntryId) { return false; }).has_value());
}

TEST(EvictionPolicyFactory, UnknownNameIsAnError) {
  EXPECT_THAT(NewEvictionPolicy("fifo-ish"), StatusIs(absl::StatusCode::kInvalidArgument,
                                                      ::testing::HasSubstr("eviction_policy")));
  EXPECT_OK(NewEvictionPolicy("lru").status());
}

}  // namespace
}  // namespace kvtier
