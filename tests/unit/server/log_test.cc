#include "src/server/log.h"

#include "gtest/gtest.h"

namespace kvtier::server {
namespace {

TEST(LogThrottle, OneLineAnIntervalWithTheCountHeldBack) {
  LogThrottle throttle(absl::Minutes(1));
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  uint64_t held_back = 99;
  ASSERT_TRUE(throttle.Allow(t0, &held_back));
  EXPECT_EQ(held_back, 0u);
  EXPECT_FALSE(throttle.Allow(t0 + absl::Seconds(1), &held_back));
  EXPECT_FALSE(throttle.Allow(t0 + absl::Seconds(59), &held_back));
  ASSERT_TRUE(throttle.Allow(t0 + absl::Seconds(60), &held_back));
  EXPECT_EQ(held_back, 2u);
  EXPECT_FALSE(throttle.Allow(t0 + absl::Seconds(61), &held_back));
  ASSERT_TRUE(throttle.Allow(t0 + absl::Minutes(5), &held_back));
  EXPECT_EQ(held_back, 1u);
}

}  // namespace
}  // namespace kvtier::server
