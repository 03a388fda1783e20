#include "kvtier/keys.h"

#include <xxhash.h>

#include <cstring>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvtier/namespace.h"
#include "tests/testing/status_matchers.h"

namespace kvtier {
namespace {

using ::kvtier::testing::StatusIs;
using ::testing::HasSubstr;

NamespaceOptions Llama8B() {
  NamespaceOptions o;
  o.model_id = "meta-llama/Llama-3.1-8B-Instruct";
  o.model_revision = "0e9e39f";
  o.layout = KvLayout{32, 8, 128, 2, 16, DType::kBFloat16};
  o.tokens_per_chunk = 256;
  return o;
}

template <typename T>
void Put(std::string& s, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  s.append(b, sizeof(T));
}

// The documented byte encoding, rebuilt here independently of keys.cc.
BlockKey ReferenceHashBlock(uint64_t ns, BlockKey parent, const std::vector<uint32_t>& tokens,
                            const std::vector<uint64_t>& extra) {
  std::string s = "kvtier.block.v1";
  Put<uint64_t>(s, ns);
  Put<uint64_t>(s, parent.hi);
  Put<uint64_t>(s, parent.lo);
  Put<uint32_t>(s, static_cast<uint32_t>(tokens.size()));
  for (uint32_t t : tokens) Put<uint32_t>(s, t);
  Put<uint32_t>(s, static_cast<uint32_t>(extra.size()));
  for (uint64_t e : extra) Put<uint64_t>(s, e);
  XXH128_hash_t h = XXH3_128bits(s.data(), s.size());
  return BlockKey{h.high64, h.low64};
}

TEST(BlockKeyTest, MatchesTheDocumentedEncoding) {
  std::vector<uint32_t> tokens = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
  BlockKey parent{0x0123456789abcdefull, 0xfedcba9876543210ull};
  EXPECT_EQ(HashBlock(42, parent, tokens, {}), ReferenceHashBlock(42, parent, tokens, {}));
  std::vector<uint64_t> extra = {7, 9};
  EXPECT_EQ(HashBlock(42, parent, tokens, extra), ReferenceHashBlock(42, parent, tokens, extra));
  EXPECT_NE(HashBlock(42, parent, tokens, extra), HashBlock(42, parent, tokens, {}));
}

// Fixed vectors: these values must never change, or every stored chunk and
// every other node's keys stop matching.
TEST(BlockKeyTest, FixedVectors) {
  std::vector<uint32_t> tokens(16);
  for (uint32_t i = 0; i < 16; ++i) tokens[i] = 1000 + i;
  EXPECT_EQ(HashBlock(0, BlockKey{}, tokens).ToHex(), "93a5b0d14b59ab384c80fc44e3a65d15");
  EXPECT_EQ(HashBlock(0x1122334455667788ull, BlockKey{1, 2}, tokens, {{99}}).ToHex(),
            "c57b8a6617b4597d84559d5349bc0855");
  std::vector<std::byte> engine(32);
  for (size_t i = 0; i < engine.size(); ++i) engine[i] = static_cast<std::byte>(i);
  EXPECT_EQ(KeyFromEngineHash(0x1122334455667788ull, engine).ToHex(),
            "81293905dd98119fe036df557e9aaf92");
  absl::StatusOr<Namespace> ns = Namespace::Create(Llama8B());
  ASSERT_OK(ns);
  EXPECT_EQ(ns->IdHex(), "a55485f397f52a90");
  EXPECT_EQ(ns->layout_signature(), 0xf3b009a3316d76f0ull);
}

TEST(BlockKeyTest, HexRoundTrip) {
  BlockKey k{0x0123456789abcdefull, 0x00000000000000ffull};
  EXPECT_EQ(k.ToHex(), "0123456789abcdef00000000000000ff");
  ASSERT_OK_AND_ASSIGN(BlockKey back, BlockKey::FromHex(k.ToHex()));
  EXPECT_EQ(back, k);
  EXPECT_THAT(BlockKey::FromHex("12"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(BlockKey::FromHex(std::string(31, '0') + "g"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("hex digit")));
}

TEST(NamespaceTest, EveryFieldChangesTheId) {
  ASSERT_OK_AND_ASSIGN(Namespace base, Namespace::Create(Llama8B()));
  std::vector<NamespaceOptions> variants(10, Llama8B());
  variants[0].model_id += "x";
  variants[1].model_revision = "main";
  variants[2].layout.dtype = DType::kFloat16;
  variants[3].layout.num_layers = 31;
  variants[4].layout.num_kv_heads = 4;
  variants[5].layout.head_size = 64;
  variants[6].tokens_per_chunk = 512;
  variants[7].tp_size = 2;
  variants[8].cache_salt = "tenant-a";
  variants[9].layout.tokens_per_block = 32;
  for (size_t i = 0; i < variants.size(); ++i) {
    ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(variants[i]));
    EXPECT_NE(ns.id(), base.id()) << "variant " << i;
  }
  // The salt changes the id but not the layout signature.
  ASSERT_OK_AND_ASSIGN(Namespace salted, Namespace::Create(variants[8]));
  EXPECT_EQ(salted.layout_signature(), base.layout_signature());
}

TEST(NamespaceTest, RejectsBadOptions) {
  NamespaceOptions o = Llama8B();
  o.tokens_per_chunk = 250;
  EXPECT_THAT(Namespace::Create(o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tokens_per_chunk")));
  o = Llama8B();
  o.model_id.clear();
  EXPECT_THAT(Namespace::Create(o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("model_id")));
  o = Llama8B();
  o.layout.num_layers = 0;
  EXPECT_THAT(Namespace::Create(o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("layout.num_layers")));
  o = Llama8B();
  o.layout.head_size = 1u << 30;
  EXPECT_THAT(Namespace::Create(o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("layout.head_size")));
  o = Llama8B();
  o.tp_rank = 2;
  o.tp_size = 2;
  EXPECT_THAT(Namespace::Create(o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tp_rank")));
  o = Llama8B();
  o.layout.dtype = static_cast<DType>(77);
  EXPECT_THAT(Namespace::Create(o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("layout.dtype")));
}

TEST(NamespaceTest, ChunksAreKeyedByTheirLastBlock) {
  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(Llama8B()));
  std::vector<TokenId> tokens(256 * 3 + 16 * 5 + 7);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<TokenId>(i * 31 + 5);
  ASSERT_OK_AND_ASSIGN(std::vector<BlockKey> blocks, ns.BlockKeys(tokens));
  ASSERT_EQ(blocks.size(), 3u * 16 + 5);  // the 7 trailing tokens have no key
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> chunks, ns.Chunks(tokens));
  ASSERT_EQ(chunks.size(), 3u);
  for (size_t c = 0; c < 3; ++c) {
    EXPECT_EQ(chunks[c].key, blocks[c * 16 + 15]);
    EXPECT_EQ(chunks[c].parent, c == 0 ? BlockKey{} : chunks[c - 1].key);
    EXPECT_EQ(chunks[c].first_token, c * 256);
    EXPECT_EQ(chunks[c].num_tokens, 256u);
  }
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> with_partial, ns.Chunks(tokens, true));
  ASSERT_EQ(with_partial.size(), 4u);
  EXPECT_EQ(with_partial[3].key, blocks.back());
  EXPECT_EQ(with_partial[3].num_tokens, 5u * 16);
  EXPECT_EQ(ns.PayloadBytes(256), 256u * 32 * 2 * 8 * 128 * 2);

  // A shared prefix gives shared keys; one changed token changes every key
  // from its block on.
  std::vector<TokenId> other = tokens;
  other[300] += 1;
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> other_chunks, ns.Chunks(other));
  EXPECT_EQ(other_chunks[0].key, chunks[0].key);
  EXPECT_NE(other_chunks[1].key, chunks[1].key);
  EXPECT_NE(other_chunks[2].key, chunks[2].key);
}

TEST(NamespaceTest, EngineHashesMapPerNamespace) {
  ASSERT_OK_AND_ASSIGN(Namespace a, Namespace::Create(Llama8B()));
  NamespaceOptions ob = Llama8B();
  ob.cache_salt = "tenant-b";
  ASSERT_OK_AND_ASSIGN(Namespace b, Namespace::Create(ob));
  std::vector<std::vector<std::byte>> hashes(32, std::vector<std::byte>(32));
  for (size_t i = 0; i < hashes.size(); ++i) hashes[i][0] = static_cast<std::byte>(i);
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> ca, a.ChunksFromEngineHashes(hashes));
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> cb, b.ChunksFromEngineHashes(hashes));
  ASSERT_EQ(ca.size(), 2u);
  EXPECT_EQ(ca[0].key, KeyFromEngineHash(a.id(), hashes[15]));
  EXPECT_EQ(ca[1].parent, ca[0].key);
  EXPECT_NE(ca[0].key, cb[0].key);
  hashes[3].clear();
  EXPECT_THAT(a.ChunksFromEngineHashes(hashes),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("block_hashes[3]")));
}

TEST(DTypeTest, NamesAndSizes) {
  EXPECT_EQ(DTypeSize(DType::kBFloat16), 2u);
  EXPECT_EQ(DTypeSize(DType::kFloat8E4M3), 1u);
  EXPECT_EQ(DTypeSize(DType::kFloat32), 4u);
  ASSERT_OK_AND_ASSIGN(DType d, ParseDType("bf16"));
  EXPECT_EQ(d, DType::kBFloat16);
  EXPECT_EQ(DTypeName(DType::kFloat8E5M2), "float8_e5m2");
  EXPECT_THAT(ParseDType("int4"), StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace kvtier
