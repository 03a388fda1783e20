#include "src/server/wire.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace kvtier::wire {
namespace {

using ::kvtier::testing::StatusIs;
using ::testing::HasSubstr;

TEST(Wire, KeyBytesSpellTheHex) {
  BlockKey k{0x0123456789abcdefull, 0xfedcba9876543210ull};
  std::string b = KeyToBytes(k);
  ASSERT_EQ(b.size(), 16u);
  std::string hex;
  for (unsigned char c : b) {
    static const char* d = "0123456789abcdef";
    hex += d[c >> 4];
    hex += d[c & 15];
  }
  EXPECT_EQ(hex, k.ToHex());
  ASSERT_OK_AND_ASSIGN(BlockKey back, KeyFromBytes(b, "key"));
  EXPECT_EQ(back, k);
}

TEST(Wire, BadKeysNameTheField) {
  EXPECT_THAT(KeyFromBytes("short", "keys[2]"), StatusIs(absl::StatusCode::kInvalidArgument,
                                                         HasSubstr("keys[2]: a key is 16 bytes")));
  EXPECT_THAT(KeyFromBytes(std::string(16, '\0'), "chunk.key"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("chunk.key")));
  EXPECT_OK(KeyFromBytes(std::string(16, '\0'), "chunk.parent", /*allow_zero=*/true));
  google::protobuf::RepeatedPtrField<std::string> keys;
  for (int i = 0; i < 5; ++i) *keys.Add() = KeyToBytes(BlockKey{1, uint64_t(i + 1)});
  EXPECT_THAT(KeysFromProto(keys, "keys", 4),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("max_keys_per_request")));
  *keys.Add() = "x";
  EXPECT_THAT(KeysFromProto(keys, "keys", 100),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("keys[5]")));
}

TEST(Wire, NamespaceRoundTripsAndKeepsItsId) {
  NamespaceOptions o;
  o.model_id = "m";
  o.model_revision = "r";
  o.layout = KvLayout{32, 8, 128, 2, 16, DType::kBFloat16};
  o.tokens_per_chunk = 512;
  o.tp_rank = 1;
  o.tp_size = 2;
  o.pp_rank = 0;
  o.pp_size = 1;
  o.cache_salt = "s";
  v1::Namespace p;
  NamespaceToProto(o, &p);
  ASSERT_OK_AND_ASSIGN(NamespaceOptions back, NamespaceFromProto(p));
  ASSERT_OK_AND_ASSIGN(Namespace a, Namespace::Create(o));
  ASSERT_OK_AND_ASSIGN(Namespace b, Namespace::Create(back));
  EXPECT_EQ(a.id(), b.id());
  EXPECT_EQ(a.layout_signature(), b.layout_signature());
}

TEST(Wire, NamespaceDefaultsAndErrors) {
  v1::Namespace p;
  p.set_model_id("m");
  EXPECT_THAT(NamespaceFromProto(p), StatusIs(absl::StatusCode::kInvalidArgument,
                                              HasSubstr("namespace.layout: required")));
  p.mutable_layout()->set_num_layers(2);
  p.mutable_layout()->set_num_kv_heads(2);
  p.mutable_layout()->set_head_size(64);
  EXPECT_THAT(NamespaceFromProto(p),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("namespace.layout.dtype")));
  p.mutable_layout()->set_dtype(v1::DTYPE_FLOAT16);
  ASSERT_OK_AND_ASSIGN(NamespaceOptions o, NamespaceFromProto(p));
  EXPECT_EQ(o.layout.kv_tensors, 2u);
  EXPECT_EQ(o.layout.tokens_per_block, 16u);
  EXPECT_EQ(o.tokens_per_chunk, 256u);
  EXPECT_EQ(o.tp_size, 1u);
  EXPECT_EQ(o.pp_size, 1u);
  p.mutable_layout()->set_head_size(0);
  EXPECT_THAT(NamespaceFromProto(p), StatusIs(absl::StatusCode::kInvalidArgument,
                                              HasSubstr("namespace.layout.head_size")));
  p.mutable_layout()->set_head_size(64);
  p.set_tp_rank(3);
  p.set_tp_size(2);
  EXPECT_THAT(NamespaceFromProto(p),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("namespace.tp_rank")));
  p.set_tp_rank(0);
  p.set_model_id("");
  EXPECT_THAT(NamespaceFromProto(p),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("namespace.model_id")));
  p.set_model_id("m");
  p.mutable_layout()->set_dtype(static_cast<v1::DType>(77));
  EXPECT_THAT(NamespaceFromProto(p),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("namespace.layout.dtype")));
}

TEST(Wire, ChunksAndStatsRoundTrip) {
  ChunkRef c{BlockKey{1, 2}, BlockKey{3, 4}, 256, 128};
  v1::ChunkInfo p;
  ChunkToProto(c, &p);
  ASSERT_OK_AND_ASSIGN(ChunkRef back, ChunkFromProto(p, "chunk"));
  EXPECT_EQ(back.key, c.key);
  EXPECT_EQ(back.parent, c.parent);
  EXPECT_EQ(back.first_token, 256u);
  EXPECT_EQ(back.num_tokens, 128u);
  ChunkRef first{BlockKey{5, 6}, BlockKey{}, 0, 16};
  ChunkToProto(first, &p);
  EXPECT_TRUE(p.parent().empty());
  p.set_parent("bad");
  EXPECT_THAT(ChunkFromProto(p, "chunks[7]"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("chunks[7].parent")));

  TierStats t;
  t.tier = Tier::kDram;
  t.capacity_bytes = 1;
  t.used_bytes = 2;
  t.chunks = 3;
  t.pinned_chunks = 4;
  t.hits = 5;
  t.misses = 6;
  t.saves = 7;
  t.save_rejections = 8;
  t.evictions = 9;
  t.bytes_written = 10;
  t.bytes_read = 11;
  t.corrupt_chunks = 12;
  v1::TierStats ps;
  TierStatsToProto(t, &ps);
  TierStats u = TierStatsFromProto(ps);
  EXPECT_EQ(u.tier, Tier::kDram);
  EXPECT_EQ(u.capacity_bytes + u.used_bytes + u.chunks + u.pinned_chunks + u.hits + u.misses +
                u.saves + u.save_rejections + u.evictions + u.bytes_written + u.bytes_read +
                u.corrupt_chunks,
            78u);
  EXPECT_EQ(u.corrupt_chunks, 12u);
}

}  // namespace
}  // namespace kvtier::wire
