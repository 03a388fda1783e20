#include "src/server/status_convert.h"

#include "gtest/gtest.h"

namespace kvtier::server {
namespace {

TEST(StatusConvert, EveryCanonicalCodeRoundTrips) {
  for (int code = 1; code <= 16; ++code) {
    absl::Status s(static_cast<absl::StatusCode>(code), "field: message");
    grpc::Status g = ToGrpcStatus(s);
    EXPECT_EQ(static_cast<int>(g.error_code()), code);
    EXPECT_EQ(g.error_message(), "field: message");
    absl::Status back = FromGrpcStatus(g);
    EXPECT_EQ(back, s);
  }
}

TEST(StatusConvert, OkStaysOk) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
  EXPECT_TRUE(FromCode(0, "ignored").ok());
}

TEST(StatusConvert, NamedCodesMapToTheirGrpcNames) {
  EXPECT_EQ(ToGrpcStatus(absl::InvalidArgumentError("keys[3]: bad")).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(ToGrpcStatus(absl::PermissionDeniedError("no")).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(ToGrpcStatus(absl::UnavailableError("later")).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(FromGrpcStatus(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "full")).code(),
            absl::StatusCode::kResourceExhausted);
}

TEST(StatusConvert, UnknownCodesBecomeUnknown) {
  EXPECT_EQ(ToGrpcStatus(absl::Status(static_cast<absl::StatusCode>(42), "odd")).error_code(),
            grpc::StatusCode::UNKNOWN);
  absl::Status s = FromCode(99, "from the wire");
  EXPECT_EQ(s.code(), absl::StatusCode::kUnknown);
  EXPECT_EQ(s.message(), "from the wire");
  EXPECT_EQ(FromCode(-1, "negative").code(), absl::StatusCode::kUnknown);
}

}  // namespace
}  // namespace kvtier::server
