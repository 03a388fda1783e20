#include "src/core/admission.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace kvtier {
namespace {

using ::kvtier::testing::StatusIs;
using ::testing::HasSubstr;

TEST(Admission, AllAdmitsEverything) {
  ASSERT_OK_AND_ASSIGN(auto p, NewAdmissionPolicy("all"));
  EXPECT_EQ(p->Name(), "all");
  ChunkMeta m;
  EXPECT_TRUE(p->Admit(m, 0));
  EXPECT_TRUE(p->Admit(m, 5));
}

TEST(Admission, SecondChanceAdmitsOnlyChunksReadAtLeastOnce) {
  ASSERT_OK_AND_ASSIGN(auto p, NewAdmissionPolicy("second-chance"));
  EXPECT_EQ(p->Name(), "second-chance");
  ChunkMeta m;
  EXPECT_FALSE(p->Admit(m, 0));
  EXPECT_TRUE(p->Admit(m, 1));
  EXPECT_TRUE(p->Admit(m, 100));
}

TEST(Admission, UnknownNameIsRejectedNamingTheField) {
  EXPECT_THAT(NewAdmissionPolicy("lfu"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("admission_policy")));
}

}  // namespace
}  // namespace kvtier
