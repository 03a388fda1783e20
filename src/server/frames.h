// Save and Load stream messages that carry chunk bytes without copying them.
//
// On the wire these are exactly kvtier.v1.SaveRequest and LoadResponse
// (cache.proto); only the C++ representation differs from the generated
// classes: the payload is not held in a std::string. Sending, the payload
// becomes a gRPC slice that points at the caller's memory (a pinned DRAM slot
// on the daemon, the caller's buffer on the client), so the bytes go from
// there to the socket with no copy in user space. Receiving, the payload
// stays in the slices gRPC read it into, and the receiver copies it once,
// straight to its destination (an arena slot, the caller's buffer).
//
// grpc::SerializationTraits are specialized for both types below, so they
// work with the ordinary sync stream classes (ServerReader<SaveFrame>,
// ClientReader<LoadFrame>, ...).
//
// Thread-safety: values; a frame is used by one thread at a time.
#ifndef KVTIER_SRC_SERVER_FRAMES_H_
#define KVTIER_SRC_SERVER_FRAMES_H_

#include <cstddef>
#include <memory>
#include <vector>

#include "absl/types/span.h"
#include "grpcpp/impl/serialization_traits.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/slice.h"
#include "grpcpp/support/status.h"
#include "kvtier/v1/cache.pb.h"

namespace kvtier::wire {

// Received payload bytes: pieces of the slices gRPC read them into.
class ReceivedBytes {
 public:
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  // Copies all the bytes to `dst` (size() bytes).
  void CopyTo(std::byte* dst) const;
  void Clear();
  void Append(const grpc::Slice& slice, size_t offset, size_t length);

 private:
  struct Piece {
    grpc::Slice slice;  // holds a reference
    size_t offset;
    size_t length;
  };
  std::vector<Piece> pieces_;
  size_t size_ = 0;
};

// kvtier.v1.LoadResponse.
struct LoadFrame {
  bool has_chunk = false;
  v1::LoadedChunk chunk;
  // Sending: the payload bytes and their owner, kept alive until gRPC is
  // done with them (the owner may be null when the bytes outlive the call).
  absl::Span<const std::byte> data;
  std::shared_ptr<const void> data_owner;
  // Receiving.
  ReceivedBytes received;

  void Clear();
};

// kvtier.v1.SaveRequest.
struct SaveFrame {
  bool has_namespace = false;
  v1::Namespace ns;
  bool has_chunk = false;
  v1::ChunkInfo chunk;
  // Sending: the payload bytes; they must stay valid until the call ends
  // (the client sends from the caller's buffer and finishes the call before
  // returning).
  absl::Span<const std::byte> data;
  // Receiving.
  ReceivedBytes received;

  void Clear();
};

// Encoding and decoding (used by the SerializationTraits below).
grpc::Status SerializeFrame(const LoadFrame& frame, grpc::ByteBuffer* out);
grpc::Status DeserializeFrame(grpc::ByteBuffer* in, LoadFrame* frame);
grpc::Status SerializeFrame(const SaveFrame& frame, grpc::ByteBuffer* out);
grpc::Status DeserializeFrame(grpc::ByteBuffer* in, SaveFrame* frame);

}  // namespace kvtier::wire

template <>
class grpc::SerializationTraits<kvtier::wire::LoadFrame, void> {
 public:
  static grpc::Status Serialize(const kvtier::wire::LoadFrame& frame, grpc::ByteBuffer* bb,
                                bool* own_buffer) {
    *own_buffer = true;
    return kvtier::wire::SerializeFrame(frame, bb);
  }
  static grpc::Status Deserialize(grpc::ByteBuffer* bb, kvtier::wire::LoadFrame* frame) {
    return kvtier::wire::DeserializeFrame(bb, frame);
  }
};

template <>
class grpc::SerializationTraits<kvtier::wire::SaveFrame, void> {
 public:
  static grpc::Status Serialize(const kvtier::wire::SaveFrame& frame, grpc::ByteBuffer* bb,
                                bool* own_buffer) {
    *own_buffer = true;
    return kvtier::wire::SerializeFrame(frame, bb);
  }
  static grpc::Status Deserialize(grpc::ByteBuffer* bb, kvtier::wire::SaveFrame* frame) {
    return kvtier::wire::DeserializeFrame(bb, frame);
  }
};

#endif  // KVTIER_SRC_SERVER_FRAMES_H_
