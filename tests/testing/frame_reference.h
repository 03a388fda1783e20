// Helpers for checking the zero-copy frame decoder (src/server/frames.h)
// against protobuf's generated parser: frames_test and the fuzz_frames
// target both use them.
#ifndef KVTIER_TESTS_TESTING_FRAME_REFERENCE_H_
#define KVTIER_TESTS_TESTING_FRAME_REFERENCE_H_

#include <cstddef>
#include <string>
#include <vector>

#include "google/protobuf/message.h"
#include "google/protobuf/unknown_field_set.h"
#include "grpcpp/support/byte_buffer.h"
#include "src/server/frames.h"
#include "tests/testing/mutate.h"

namespace kvtier::testing {

// A ByteBuffer of `bytes` cut at places `m` picks.
inline grpc::ByteBuffer SplitRandomly(const std::string& bytes, Mutator& m) {
  std::vector<grpc::Slice> slices;
  for (size_t i = 0; i < bytes.size();) {
    const size_t piece = 1 + m.Below(bytes.size() - i);
    slices.emplace_back(bytes.substr(i, piece));
    i += piece;
  }
  return grpc::ByteBuffer(slices.data(), slices.size());
}

// Whether protobuf kept a group among the message's own unknown fields (the
// frame decoder refuses those; no kvtier message uses groups).
inline bool HasTopLevelGroup(const google::protobuf::Message& m) {
  const google::protobuf::UnknownFieldSet& u = m.GetReflection()->GetUnknownFields(m);
  for (int i = 0; i < u.field_count(); ++i) {
    if (u.field(i).type() == google::protobuf::UnknownField::TYPE_GROUP) return true;
  }
  return false;
}

// The bytes a frame received, as one string.
inline std::string Received(const wire::ReceivedBytes& r) {
  std::string out(r.size(), '\0');
  r.CopyTo(reinterpret_cast<std::byte*>(out.data()));
  return out;
}

}  // namespace kvtier::testing

#endif  // KVTIER_TESTS_TESTING_FRAME_REFERENCE_H_
