#include "kvtier/engine_layout.h"

#include <cstdint>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvtier/namespace.h"
#include "tests/testing/status_matchers.h"
#include "tests/unit/cuda/kv_reference.h"

namespace kvtier {
namespace {

using ::kvtier::testing::ContiguousStrides;
using ::kvtier::testing::StatusIs;
using ::testing::HasSubstr;

constexpr EngineShape kShape{.num_blocks = 7,
                             .tokens_per_block = 16,
                             .num_kv_heads = 4,
                             .head_size = 80,
                             .dtype = DType::kBFloat16};

std::vector<void*> FakeBases(size_t n) {
  std::vector<void*> bases;
  for (size_t i = 0; i < n; ++i) bases.push_back(reinterpret_cast<void*>(0x10000 * (i + 1)));
  return bases;
}

// Strides of the named constructors equal those of the documented tensor
// shapes, read as row-major torch tensors.
TEST(EngineLayoutTest, VllmFlashNhdStrides) {
  const EngineLayout l = EngineLayout::VllmFlashNhd(FakeBases(3), kShape);
  const auto s = ContiguousStrides({2, 7, 16, 4, 80});  // [2, nb, bs, H, D]
  EXPECT_EQ(l.strides.kv, s[0]);
  EXPECT_EQ(l.strides.block, s[1]);
  EXPECT_EQ(l.strides.token, s[2]);
  EXPECT_EQ(l.strides.head, s[3]);
  EXPECT_EQ(l.strides.dim, s[4]);
  EXPECT_EQ(l.num_layers, 3u);
  EXPECT_EQ(l.kv_tensors, 2u);
  ASSERT_OK(l.Validate());
  EXPECT_EQ(l.TensorSpanBytes(), 2u * 7 * 16 * 4 * 80 * 2);
}

TEST(EngineLayoutTest, VllmFlashHndStrides) {
  const EngineLayout l = EngineLayout::VllmFlashHnd(FakeBases(3), kShape);
  const auto s = ContiguousStrides({2, 7, 4, 16, 80});  // [2, nb, H, bs, D]
  EXPECT_EQ(l.strides.kv, s[0]);
  EXPECT_EQ(l.strides.block, s[1]);
  EXPECT_EQ(l.strides.head, s[2]);
  EXPECT_EQ(l.strides.token, s[3]);
  EXPECT_EQ(l.strides.dim, s[4]);
  ASSERT_OK(l.Validate());
  EXPECT_EQ(l.TensorSpanBytes(), 2u * 7 * 16 * 4 * 80 * 2);
}

TEST(EngineLayoutTest, FlashInferStrides) {
  const EngineLayout l = EngineLayout::FlashInfer(FakeBases(3), kShape);
  const auto s = ContiguousStrides({7, 2, 16, 4, 80});  // [nb, 2, bs, H, D]
  EXPECT_EQ(l.strides.block, s[0]);
  EXPECT_EQ(l.strides.kv, s[1]);
  EXPECT_EQ(l.strides.token, s[2]);
  EXPECT_EQ(l.strides.head, s[3]);
  EXPECT_EQ(l.strides.dim, s[4]);
  ASSERT_OK(l.Validate());

  const EngineLayout h = EngineLayout::FlashInferHnd(FakeBases(3), kShape);
  const auto t = ContiguousStrides({7, 2, 4, 16, 80});  // [nb, 2, H, bs, D]
  EXPECT_EQ(h.strides.block, t[0]);
  EXPECT_EQ(h.strides.kv, t[1]);
  EXPECT_EQ(h.strides.head, t[2]);
  EXPECT_EQ(h.strides.token, t[3]);
  ASSERT_OK(h.Validate());
}

TEST(EngineLayoutTest, MlaStrides) {
  EngineShape shape = kShape;
  shape.num_kv_heads = 1;
  shape.head_size = 576;
  const EngineLayout l = EngineLayout::Mla(FakeBases(2), shape);
  const auto s = ContiguousStrides({7, 16, 576});  // [nb, bs, D]
  EXPECT_EQ(l.strides.block, s[0]);
  EXPECT_EQ(l.strides.token, s[1]);
  EXPECT_EQ(l.strides.dim, s[2]);
  EXPECT_EQ(l.kv_tensors, 1u);
  ASSERT_OK(l.Validate());
  EXPECT_EQ(l.TensorSpanBytes(), 7u * 16 * 576 * 2);
  EXPECT_EQ(l.PayloadBytes(16), 2u * 16 * 576 * 2);  // two layers, K only
}

TEST(EngineLayoutTest, MlaWithSeveralHeadsOverlaps) {
  EngineShape shape = kShape;  // 4 heads, but MLA has no head axis
  const EngineLayout l = EngineLayout::Mla(FakeBases(2), shape);
  EXPECT_THAT(l.Validate(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("strides.head")));
}

TEST(EngineLayoutTest, CrossLayerStrides) {
  const EngineLayout l = EngineLayout::CrossLayer(reinterpret_cast<void*>(0x10000), 5, kShape);
  const auto s = ContiguousStrides({7, 5, 2, 16, 4, 80});  // [nb, L, 2, bs, H, D]
  EXPECT_EQ(l.strides.block, s[0]);
  EXPECT_EQ(l.strides.layer, s[1]);
  EXPECT_EQ(l.strides.kv, s[2]);
  EXPECT_EQ(l.strides.token, s[3]);
  EXPECT_EQ(l.strides.head, s[4]);
  EXPECT_EQ(l.strides.dim, s[5]);
  EXPECT_TRUE(l.layer_bases.empty());
  EXPECT_EQ(l.num_layers, 5u);
  ASSERT_OK(l.Validate());
  EXPECT_EQ(l.TensorSpanBytes(), 7u * 5 * 2 * 16 * 4 * 80 * 2);
  EXPECT_EQ(l.LayerBase(3), reinterpret_cast<std::byte*>(0x10000) + 3 * s[1] * 2);
}

TEST(EngineLayoutTest, PayloadBytesMatchNamespace) {
  const EngineLayout l = EngineLayout::VllmFlashNhd(FakeBases(3), kShape);
  NamespaceOptions o;
  o.model_id = "m";
  o.layout = l.ChunkLayout();
  o.tokens_per_chunk = 64;
  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(o));
  EXPECT_OK(l.CheckCompatible(ns));
  for (uint32_t tokens : {1u, 16u, 40u, 64u}) {
    EXPECT_EQ(l.PayloadBytes(tokens), ns.PayloadBytes(tokens)) << tokens;
  }
  EXPECT_EQ(l.LayerPayloadBytes(16), 2u * 16 * 4 * 80 * 2);
}

// Each Validate() failure names its field.
struct BadCase {
  const char* field;
  void (*mutate)(EngineLayout&);
};

class EngineLayoutValidateTest : public ::testing::TestWithParam<BadCase> {};

TEST_P(EngineLayoutValidateTest, NamesTheField) {
  EngineLayout l = EngineLayout::VllmFlashNhd(FakeBases(3), kShape);
  ASSERT_OK(l.Validate());
  GetParam().mutate(l);
  EXPECT_THAT(l.Validate(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(GetParam().field)));
}

INSTANTIATE_TEST_SUITE_P(
    Fields, EngineLayoutValidateTest,
    ::testing::Values(
        BadCase{"dtype", [](EngineLayout& l) { l.dtype = static_cast<DType>(99); }},
        BadCase{"num_layers", [](EngineLayout& l) { l.num_layers = 0; }},
        BadCase{"num_blocks", [](EngineLayout& l) { l.num_blocks = 0; }},
        BadCase{"tokens_per_block", [](EngineLayout& l) { l.tokens_per_block = 0; }},
        BadCase{"num_kv_heads", [](EngineLayout& l) { l.num_kv_heads = 0; }},
        BadCase{"head_size", [](EngineLayout& l) { l.head_size = 0; }},
        BadCase{"kv_tensors", [](EngineLayout& l) { l.kv_tensors = 3; }},
        BadCase{"layer_bases has 2 entries", [](EngineLayout& l) { l.layer_bases.pop_back(); }},
        BadCase{"layer_bases[1] is null", [](EngineLayout& l) { l.layer_bases[1] = nullptr; }},
        BadCase{"set exactly one",
                [](EngineLayout& l) { l.cross_layer_base = reinterpret_cast<void*>(0x100); }},
        BadCase{"strides.block = -1", [](EngineLayout& l) { l.strides.block = -1; }},
        BadCase{"strides.token", [](EngineLayout& l) { l.strides.token = 0; }},
        BadCase{"strides.head", [](EngineLayout& l) { l.strides.head = 40; }},
        BadCase{"strides.kv", [](EngineLayout& l) { l.strides.kv = l.strides.block * 3; }},
        BadCase{"bytes per block", [](EngineLayout& l) {
                  l.tokens_per_block = 65536;
                  l.head_size = 65536;
                }}));

TEST(EngineLayoutTest, CrossLayerWithoutBaseNamesLayerBases) {
  EngineLayout l = EngineLayout::CrossLayer(nullptr, 4, kShape);
  EXPECT_THAT(l.Validate(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("cross_layer_base is null")));
}

TEST(EngineLayoutTest, CrossLayerOverlappingLayersRefused) {
  EngineLayout l = EngineLayout::CrossLayer(reinterpret_cast<void*>(0x10000), 4, kShape);
  l.strides.layer = l.strides.kv;  // layer 1's K would be layer 0's V
  EXPECT_THAT(l.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("overlap")));
}

// A descriptor that disagrees with the namespace is an error, field by field.
struct MismatchCase {
  const char* field;
  void (*mutate)(KvLayout&);
};

class EngineLayoutCompatibleTest : public ::testing::TestWithParam<MismatchCase> {};

TEST_P(EngineLayoutCompatibleTest, MismatchIsInvalidArgument) {
  const EngineLayout l = EngineLayout::VllmFlashNhd(FakeBases(3), kShape);
  KvLayout chunk = l.ChunkLayout();
  ASSERT_OK(l.CheckCompatible(chunk));
  GetParam().mutate(chunk);
  EXPECT_THAT(l.CheckCompatible(chunk),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(GetParam().field)));

  NamespaceOptions o;
  o.model_id = "m";
  o.layout = chunk;
  o.tokens_per_chunk = 256;
  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(o));
  EXPECT_THAT(l.CheckCompatible(ns),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(GetParam().field)));
}

INSTANTIATE_TEST_SUITE_P(
    Fields, EngineLayoutCompatibleTest,
    ::testing::Values(MismatchCase{"dtype = bfloat16 in the engine, float16",
                                   [](KvLayout& c) { c.dtype = DType::kFloat16; }},
                      MismatchCase{"dtype", [](KvLayout& c) { c.dtype = DType::kFloat8E4M3; }},
                      MismatchCase{"num_layers", [](KvLayout& c) { c.num_layers = 32; }},
                      MismatchCase{"num_kv_heads", [](KvLayout& c) { c.num_kv_heads = 8; }},
                      MismatchCase{"head_size", [](KvLayout& c) { c.head_size = 128; }},
                      MismatchCase{"kv_tensors", [](KvLayout& c) { c.kv_tensors = 1; }},
                      MismatchCase{"tokens_per_block",
                                   [](KvLayout& c) { c.tokens_per_block = 32; }}));

TEST(EngineLayoutTest, CheckCompatibleValidatesFirst) {
  EngineLayout l = EngineLayout::VllmFlashNhd(FakeBases(3), kShape);
  const KvLayout chunk = l.ChunkLayout();
  l.layer_bases[0] = nullptr;
  EXPECT_THAT(l.CheckCompatible(chunk),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("layer_bases[0]")));
}

}  // namespace
}  // namespace kvtier
