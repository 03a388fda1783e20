// The zero-copy decoder of gRPC Save and Load payloads (src/server/frames.h)
// against protobuf's generated parser: whatever the frame decoder accepts,
// protobuf accepts and reads the same namespace, chunk and data from; it
// refuses only what protobuf refuses, or top-level groups (wire types 3 and
// 4, which no kvtier message uses).
//
// Input: byte 0 picks the message (bit 0: SaveRequest or LoadResponse) and
// how the rest, the encoding, is cut into the slices of a gRPC ByteBuffer.
#include <string>
#include <vector>

#include "fuzz/fuzz_target.h"
#include "google/protobuf/stubs/logging.h"
#include "kvtier/v1/cache.pb.h"
#include "src/server/frames.h"
#include "tests/testing/frame_reference.h"
#include "tests/testing/mutate.h"

namespace kvtier::fuzz {
namespace {

using testing::HasTopLevelGroup;
using testing::Received;

// Decodes `bytes` cut into slices both ways and compares.
template <typename Frame, typename Message>
void Compare(const std::string& bytes, testing::Mutator& cuts) {
  grpc::ByteBuffer bb = testing::SplitRandomly(bytes, cuts);
  Frame f;
  const bool ours = wire::DeserializeFrame(&bb, &f).ok();
  Message ref;
  const bool theirs = ref.ParseFromString(bytes);
  KVTIER_FUZZ_CHECK(!(ours && !theirs));
  KVTIER_FUZZ_CHECK(!(!ours && theirs && !HasTopLevelGroup(ref)));
  if (!(ours && theirs)) return;
  KVTIER_FUZZ_CHECK(f.has_chunk == ref.has_chunk());
  KVTIER_FUZZ_CHECK(f.chunk.SerializeAsString() == ref.chunk().SerializeAsString());
  KVTIER_FUZZ_CHECK(Received(f.received) == ref.data());
  if constexpr (std::is_same_v<Message, v1::SaveRequest>) {
    KVTIER_FUZZ_CHECK(f.has_namespace == ref.has_namespace_());
    KVTIER_FUZZ_CHECK(f.ns.SerializeAsString() == ref.namespace_().SerializeAsString());
  }
}

}  // namespace

std::vector<std::string> Seeds() {
  std::vector<std::string> seeds;
  v1::SaveRequest save;
  save.mutable_namespace_()->set_model_id("llama");
  save.mutable_namespace_()->set_cache_salt("tenant-a");
  save.mutable_chunk()->set_key(std::string(16, 'k'));
  save.mutable_chunk()->set_num_tokens(256);
  save.set_data(std::string(300, 'd'));
  seeds.push_back('\0' + save.SerializeAsString());
  save.clear_namespace_();
  seeds.push_back('\2' + save.SerializeAsString() + std::string("\xa0\x06\x2a", 3));
  v1::LoadResponse load;
  load.mutable_chunk()->set_key(std::string(16, 'k'));
  load.mutable_chunk()->set_code(5);
  load.mutable_chunk()->set_message("not cached");
  load.mutable_chunk()->set_payload_bytes(300);
  load.set_data(std::string(300, 'd'));
  seeds.push_back('\1' + load.SerializeAsString());
  load.clear_data();
  seeds.push_back('\3' + load.SerializeAsString());
  return seeds;
}

}  // namespace kvtier::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static google::protobuf::LogSilencer* quiet = new google::protobuf::LogSilencer();
  (void)quiet;  // protobuf logs each refusal
  kvtier::testing::Mutator cuts(data[0]);
  const std::string bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  if ((data[0] & 1) == 0) {
    kvtier::fuzz::Compare<kvtier::wire::SaveFrame, kvtier::v1::SaveRequest>(bytes, cuts);
  } else {
    kvtier::fuzz::Compare<kvtier::wire::LoadFrame, kvtier::v1::LoadResponse>(bytes, cuts);
  }
  return 0;
}
