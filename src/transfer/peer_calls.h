// PinForRead and Release carried as UCX calls (UcxEngine::Call) instead of
// gRPC: the framing both sides use. docs/transfer.md, "Pins over UCX".
//
// Request: method (1 byte), the holder's call secret (from its Hello, which
// needs the peer token), then the serialized v1 request message.
// Reply: an absl::StatusCode (1 byte), then the serialized v1 response
// message when it is OK, else the error message.
#ifndef KVTIER_SRC_TRANSFER_PEER_CALLS_H_
#define KVTIER_SRC_TRANSFER_PEER_CALLS_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/message_lite.h"

namespace kvtier::transfer {

enum class PeerCallMethod : uint8_t {
  kPinForRead = 1,
  kRelease = 2,
};

// Bytes of a call secret (HelloResponse.call_secret).
inline constexpr size_t kCallSecretBytes = 16;

inline std::string EncodePeerCall(PeerCallMethod method, absl::string_view secret,
                                  const google::protobuf::MessageLite& request) {
  std::string out;
  out.push_back(static_cast<char>(method));
  out.append(secret.data(), secret.size());
  request.AppendToString(&out);
  return out;
}

// The method and the request message's bytes of a call; InvalidArgument for a
// short request, PermissionDenied for a wrong secret.
struct DecodedPeerCall {
  PeerCallMethod method = PeerCallMethod::kPinForRead;
  absl::string_view message;
};
inline absl::Status DecodePeerCall(absl::string_view call, absl::string_view secret,
                                   DecodedPeerCall& out) {
  if (call.size() < 1 + secret.size()) {
    return absl::InvalidArgumentError("peer call: shorter than its header");
  }
  // Compared in constant time: the secret is what authenticates a call.
  unsigned char diff = 0;
  for (size_t i = 0; i < secret.size(); ++i) {
    diff |= static_cast<unsigned char>(call[1 + i] ^ secret[i]);
  }
  if (diff != 0) {
    return absl::PermissionDeniedError("peer call: wrong call secret (say Hello first)");
  }
  out.method = static_cast<PeerCallMethod>(static_cast<uint8_t>(call[0]));
  out.message = call.substr(1 + secret.size());
  return absl::OkStatus();
}

inline std::string EncodePeerReply(const absl::Status& status,
                                   const google::protobuf::MessageLite& response) {
  std::string out;
  out.push_back(static_cast<char>(status.code()));
  if (status.ok()) {
    response.AppendToString(&out);
  } else {
    out.append(status.message().data(), status.message().size());
  }
  return out;
}

// Parses a reply into `response`; the callee's error as it sent it.
inline absl::Status DecodePeerReply(absl::string_view reply,
                                    google::protobuf::MessageLite& response) {
  if (reply.empty()) return absl::DataLossError("peer call: empty reply");
  const uint8_t raw = static_cast<uint8_t>(reply[0]);
  reply.remove_prefix(1);
  // absl's codes are 0..16; anything else did not come from EncodePeerReply.
  if (raw > static_cast<uint8_t>(absl::StatusCode::kUnauthenticated)) {
    return absl::DataLossError("peer call: reply with an unknown status code");
  }
  const auto code = static_cast<absl::StatusCode>(raw);
  if (code != absl::StatusCode::kOk) return absl::Status(code, reply);
  if (!response.ParseFromArray(reply.data(), static_cast<int>(reply.size()))) {
    return absl::DataLossError("peer call: reply does not parse");
  }
  return absl::OkStatus();
}

}  // namespace kvtier::transfer

#endif  // KVTIER_SRC_TRANSFER_PEER_CALLS_H_
