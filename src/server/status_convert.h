// Conversion between absl::Status (kvtier's error type) and grpc::Status.
// This is the only place the two meet: the daemon converts at the RPC edge,
// the client converts back (src/client links this file's library).
//
// The canonical codes have the same numbers in both, so the code maps one to
// one; the message is carried unchanged. Codes outside the canonical range
// become UNKNOWN.
//
// Thread-safety: pure functions.
#ifndef KVTIER_SRC_SERVER_STATUS_CONVERT_H_
#define KVTIER_SRC_SERVER_STATUS_CONVERT_H_

#include <string>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace kvtier::server {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

// A google.rpc.Code value (as carried in ChunkStatus.code) to absl.
absl::Status FromCode(int code, const std::string& message);

}  // namespace kvtier::server

#endif  // KVTIER_SRC_SERVER_STATUS_CONVERT_H_
