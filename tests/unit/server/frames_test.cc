// The zero-copy Save/Load frames are the generated messages on the wire.
#include "src/server/frames.h"

#include <string>
#include <vector>

#include "google/protobuf/stubs/logging.h"
#include "gtest/gtest.h"
#include "kvtier/v1/cache.pb.h"
#include "tests/testing/frame_reference.h"
#include "tests/testing/mutate.h"

namespace kvtier::wire {
namespace {

std::string Flatten(grpc::ByteBuffer& bb) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(bb.Dump(&slices).ok());
  std::string out;
  for (const grpc::Slice& s : slices)
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

// A ByteBuffer of `bytes` split into pieces of `piece` bytes, as a socket
// read might deliver it.
grpc::ByteBuffer Split(const std::string& bytes, size_t piece) {
  std::vector<grpc::Slice> slices;
  for (size_t i = 0; i < bytes.size(); i += piece) {
    slices.emplace_back(bytes.substr(i, piece));
  }
  return grpc::ByteBuffer(slices.data(), slices.size());
}

std::vector<std::byte> Bytes(size_t n) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>(i * 7 + 3);
  return v;
}

TEST(Frames, LoadFrameEncodesAsLoadResponse) {
  std::vector<std::byte> payload = Bytes(300000);
  auto owner = std::make_shared<int>(1);
  LoadFrame f;
  f.has_chunk = true;
  f.chunk.set_key(std::string(16, 'k'));
  f.chunk.set_payload_bytes(payload.size());
  f.chunk.set_num_tokens(32);
  f.data = payload;
  f.data_owner = owner;
  grpc::ByteBuffer bb;
  ASSERT_TRUE(SerializeFrame(f, &bb).ok());
  f.Clear();
  EXPECT_EQ(owner.use_count(), 2) << "the slice holds the owner";
  v1::LoadResponse parsed;
  ASSERT_TRUE(parsed.ParseFromString(Flatten(bb)));
  EXPECT_EQ(parsed.chunk().payload_bytes(), payload.size());
  EXPECT_EQ(parsed.chunk().num_tokens(), 32u);
  EXPECT_EQ(parsed.data(),
            std::string(reinterpret_cast<const char*>(payload.data()), payload.size()));
  bb.Clear();
  EXPECT_EQ(owner.use_count(), 1) << "released with the last slice";
}

TEST(Frames, LoadResponseDecodesAcrossSlices) {
  v1::LoadResponse m;
  m.mutable_chunk()->set_code(0);
  m.mutable_chunk()->set_payload_bytes(5000);
  std::vector<std::byte> payload = Bytes(5000);
  m.set_data(reinterpret_cast<const char*>(payload.data()), payload.size());
  const std::string wire = m.SerializeAsString();
  for (size_t piece : {1ul, 7ul, 100ul, 4096ul, wire.size()}) {
    grpc::ByteBuffer bb = Split(wire, piece);
    LoadFrame f;
    ASSERT_TRUE(DeserializeFrame(&bb, &f).ok()) << piece;
    EXPECT_TRUE(f.has_chunk);
    EXPECT_EQ(f.chunk.payload_bytes(), 5000u);
    ASSERT_EQ(f.received.size(), payload.size());
    std::vector<std::byte> out(payload.size());
    f.received.CopyTo(out.data());
    EXPECT_EQ(out, payload) << piece;
  }
}

TEST(Frames, SaveFrameRoundTripsWithTheGeneratedMessage) {
  std::vector<std::byte> payload = Bytes(70000);
  SaveFrame f;
  f.has_namespace = true;
  f.ns.set_model_id("m");
  f.ns.set_cache_salt("s");
  f.has_chunk = true;
  f.chunk.set_key(std::string(16, 'x'));
  f.chunk.set_num_tokens(64);
  f.data = payload;
  grpc::ByteBuffer bb;
  ASSERT_TRUE(SerializeFrame(f, &bb).ok());
  v1::SaveRequest parsed;
  ASSERT_TRUE(parsed.ParseFromString(Flatten(bb)));
  EXPECT_EQ(parsed.namespace_().model_id(), "m");
  EXPECT_EQ(parsed.chunk().num_tokens(), 64u);
  EXPECT_EQ(parsed.data().size(), payload.size());

  // And back, from the generated encoding, with an unknown field mixed in.
  std::string wire = parsed.SerializeAsString();
  wire += std::string("\xa0\x06\x2a", 3);  // field 100, varint 42
  grpc::ByteBuffer in = Split(wire, 333);
  SaveFrame g;
  ASSERT_TRUE(DeserializeFrame(&in, &g).ok());
  EXPECT_TRUE(g.has_namespace);
  EXPECT_EQ(g.ns.cache_salt(), "s");
  EXPECT_TRUE(g.has_chunk);
  EXPECT_EQ(g.chunk.key(), std::string(16, 'x'));
  std::vector<std::byte> out(g.received.size());
  g.received.CopyTo(out.data());
  EXPECT_EQ(out, payload);
}

TEST(Frames, MalformedBytesAreRejected) {
  v1::SaveRequest m;
  m.set_data(std::string(100, 'd'));
  std::string wire = m.SerializeAsString();
  wire.resize(wire.size() - 10);  // the data field runs past the end
  grpc::ByteBuffer bb = Split(wire, 16);
  SaveFrame f;
  grpc::Status s = DeserializeFrame(&bb, &f);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  grpc::ByteBuffer bad = Split(std::string("\x0f", 1), 1);  // wire type 7
  LoadFrame l;
  EXPECT_FALSE(DeserializeFrame(&bad, &l).ok());
}

// Bytes in a slice that counts its destruction.
struct CountedBytes {
  std::string bytes;
  int* freed;
};
void FreeCounted(void* p) {
  auto* b = static_cast<CountedBytes*>(p);
  ++*b->freed;
  delete b;
}

// gRPC releases the buffer it hands to Deserialize without destroying it,
// so the deserializer must; the payload then lives exactly as long as the
// frame that references it.
template <typename Frame, typename Message>
void ExpectDeserializeReleasesTheBuffer() {
  Message m;
  m.set_data(std::string(70000, 'd'));
  int freed = 0;
  auto* box = new CountedBytes{m.SerializeAsString(), &freed};
  grpc::Slice slice(box->bytes.data(), box->bytes.size(), FreeCounted, box);
  grpc::ByteBuffer bb(&slice, 1);
  slice = grpc::Slice();  // only the buffer references the bytes now
  Frame f;
  ASSERT_TRUE(grpc::SerializationTraits<Frame>::Deserialize(&bb, &f).ok());
  EXPECT_FALSE(bb.Valid());
  EXPECT_EQ(f.received.size(), 70000u);
  EXPECT_EQ(freed, 0);  // the frame still holds the payload
  f.Clear();
  EXPECT_EQ(freed, 1);
}

TEST(Frames, DeserializeReleasesTheReceivedBuffer) {
  ExpectDeserializeReleasesTheBuffer<SaveFrame, v1::SaveRequest>();
  ExpectDeserializeReleasesTheBuffer<LoadFrame, v1::LoadResponse>();
}

using testing::HasTopLevelGroup;
using testing::Received;
using testing::SplitRandomly;

// Tags are read as protobuf reads them: at most 5 bytes, bits above 32
// dropped, field number 0 refused.
TEST(Frames, TagsAreReadAsProtobufReadsThem) {
  struct Case {
    std::string bytes;
    bool ok;
    std::string data;
  };
  const Case cases[] = {
      // Field 2 (data) in a 5-byte tag whose top bits fall off.
      {std::string("\x92\x80\x80\x80\x70\x03"
                   "abc",
                   9),
       true, "abc"},
      // An unknown fixed32 field the same way.
      {std::string("\xf5\xf5\xf5\xf5\x25\x01\x02\x03\x04", 9), true, ""},
      // Field 1 as a varint in a 6-byte tag: too long.
      {std::string("\x88\x80\x80\x80\x80\x00\x00", 7), false, ""},
      // Bits above 32 only: field number 0.
      {std::string("\x80\x80\x80\x80\x10\x00", 6), false, ""},
  };
  google::protobuf::LogSilencer quiet;
  for (const Case& c : cases) {
    v1::LoadResponse ref;
    EXPECT_EQ(ref.ParseFromString(c.bytes), c.ok) << "protobuf";
    grpc::Slice slice(c.bytes);
    grpc::ByteBuffer bb(&slice, 1);
    LoadFrame f;
    EXPECT_EQ(DeserializeFrame(&bb, &f).ok(), c.ok);
    if (c.ok) {
      EXPECT_EQ(Received(f.received), c.data);
      EXPECT_EQ(ref.data(), c.data);
    }
  }
}

// Damaged encodings decode exactly as protobuf's generated parser decodes
// them, or fail; they never decode to something else. The only inputs the
// frame decoder may refuse that protobuf takes are groups (wire types 3 and
// 4), which no kvtier message uses.
TEST(Frames, DamagedBytesDecodeAsProtobufDoesOrFail) {
  std::vector<std::string> save_seeds, load_seeds;
  {
    v1::SaveRequest m;
    m.mutable_namespace_()->set_model_id("llama");
    m.mutable_namespace_()->set_cache_salt("tenant-a");
    m.mutable_chunk()->set_key(std::string(16, 'k'));
    m.mutable_chunk()->set_num_tokens(256);
    m.set_data(std::string(300, 'd'));
    save_seeds.push_back(m.SerializeAsString());
    m.clear_namespace_();
    save_seeds.push_back(m.SerializeAsString() + std::string("\xa0\x06\x2a", 3));
    m.clear_data();
    save_seeds.push_back(m.SerializeAsString());
  }
  {
    v1::LoadResponse m;
    m.mutable_chunk()->set_key(std::string(16, 'k'));
    m.mutable_chunk()->set_code(5);
    m.mutable_chunk()->set_message("not cached");
    m.mutable_chunk()->set_payload_bytes(300);
    m.set_data(std::string(300, 'd'));
    load_seeds.push_back(m.SerializeAsString());
    m.clear_data();
    load_seeds.push_back(m.SerializeAsString());
  }
  google::protobuf::LogSilencer quiet;  // protobuf logs each refusal
  testing::Mutator m(20261126);
  int both_ok = 0, both_failed = 0;
  for (int i = 0; i < 20000; ++i) {
    const bool save = (i & 1) == 0;
    const std::vector<std::string>& seeds = save ? save_seeds : load_seeds;
    const std::string bytes = m.Mutate(seeds[m.Below(seeds.size())]);
    grpc::ByteBuffer bb = SplitRandomly(bytes, m);
    bool ours_ok, theirs_ok, group = false;
    if (save) {
      SaveFrame f;
      ours_ok = DeserializeFrame(&bb, &f).ok();
      v1::SaveRequest ref;
      theirs_ok = ref.ParseFromString(bytes);
      group = HasTopLevelGroup(ref);
      if (ours_ok && theirs_ok) {
        EXPECT_EQ(f.has_namespace, ref.has_namespace_()) << "iteration " << i;
        EXPECT_EQ(f.ns.SerializeAsString(), ref.namespace_().SerializeAsString()) << i;
        EXPECT_EQ(f.has_chunk, ref.has_chunk()) << "iteration " << i;
        EXPECT_EQ(f.chunk.SerializeAsString(), ref.chunk().SerializeAsString()) << i;
        EXPECT_EQ(Received(f.received), ref.data()) << "iteration " << i;
      }
    } else {
      LoadFrame f;
      ours_ok = DeserializeFrame(&bb, &f).ok();
      v1::LoadResponse ref;
      theirs_ok = ref.ParseFromString(bytes);
      group = HasTopLevelGroup(ref);
      if (ours_ok && theirs_ok) {
        EXPECT_EQ(f.has_chunk, ref.has_chunk()) << "iteration " << i;
        EXPECT_EQ(f.chunk.SerializeAsString(), ref.chunk().SerializeAsString()) << i;
        EXPECT_EQ(Received(f.received), ref.data()) << "iteration " << i;
      }
    }
    EXPECT_FALSE(ours_ok && !theirs_ok) << "accepted what protobuf refuses, iteration " << i;
    EXPECT_FALSE(!ours_ok && theirs_ok && !group) << "refused what protobuf takes, iteration " << i;
    both_ok += ours_ok && theirs_ok;
    both_failed += !ours_ok && !theirs_ok;
  }
  // Both outcomes are exercised, not one of them.
  EXPECT_GT(both_ok, 2000);
  EXPECT_GT(both_failed, 2000);
}

}  // namespace
}  // namespace kvtier::wire
