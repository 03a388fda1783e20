// GoogleTest matchers for absl::Status (Debian's Abseil ships none).
//
//   EXPECT_THAT(s, StatusIs(absl::StatusCode::kNotFound));
//   EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("field")));
//   ASSERT_OK(s); ASSERT_OK_AND_ASSIGN(auto v, StatusOrReturningCall());
#ifndef KVTIER_TESTS_TESTING_STATUS_MATCHERS_H_
#define KVTIER_TESTS_TESTING_STATUS_MATCHERS_H_

#include <ostream>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvtier::testing {

inline const absl::Status& GetStatus(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& GetStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

MATCHER_P(StatusIs, code, "") {
  const absl::Status& s = ::kvtier::testing::GetStatus(arg);
  *result_listener << "status is " << s;
  return s.code() == code;
}

MATCHER_P2(StatusIs, code, message_matcher, "") {
  const absl::Status& s = ::kvtier::testing::GetStatus(arg);
  *result_listener << "status is " << s;
  return s.code() == code && ::testing::Matches(message_matcher)(std::string(s.message()));
}

}  // namespace kvtier::testing

#define KVTIER_TEST_CONCAT_INNER_(a, b) a##b
#define KVTIER_TEST_CONCAT_(a, b) KVTIER_TEST_CONCAT_INNER_(a, b)

#define ASSERT_OK(expr)                                                  \
  do {                                                                   \
    const ::absl::Status kvtier_s_ = ::kvtier::testing::GetStatus(expr); \
    ASSERT_TRUE(kvtier_s_.ok()) << kvtier_s_;                            \
  } while (0)
#define EXPECT_OK(expr)                                                  \
  do {                                                                   \
    const ::absl::Status kvtier_s_ = ::kvtier::testing::GetStatus(expr); \
    EXPECT_TRUE(kvtier_s_.ok()) << kvtier_s_;                            \
  } while (0)

#define ASSERT_OK_AND_ASSIGN(lhs, expr) \
  ASSERT_OK_AND_ASSIGN_IMPL_(KVTIER_TEST_CONCAT_(statusor_, __LINE__), lhs, expr)
#define ASSERT_OK_AND_ASSIGN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                               \
  ASSERT_TRUE(statusor.ok()) << statusor.status();      \
  lhs = std::move(statusor).value()

#endif  // KVTIER_TESTS_TESTING_STATUS_MATCHERS_H_
