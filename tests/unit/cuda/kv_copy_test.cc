// The CPU gather/scatter against the naive reference, for every layout, dtype
// width, block size, odd head sizes and partial chunks.
#include "cuda/kv_copy.h"

#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "absl/types/span.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvtier/engine_layout.h"
#include "tests/testing/status_matchers.h"
#include "tests/unit/cuda/kv_reference.h"

namespace kvtier {
namespace {

using ::kvtier::testing::FirstDifference;
using ::kvtier::testing::HostPool;
using ::kvtier::testing::PoolKind;
using ::kvtier::testing::RandomBlockIds;
using ::kvtier::testing::RefCopy;
using ::kvtier::testing::RefGather;
using ::kvtier::testing::StatusIs;
using ::testing::HasSubstr;

constexpr uint32_t kLayers = 2;
constexpr uint32_t kBlocksPerChunk = 3;
constexpr uint32_t kPoolBlocks = 5;
constexpr uint32_t kHeadSizes[] = {128, 80, 96, 72, 1, 64};

using Param = std::tuple<PoolKind, DType, uint32_t>;  // kind, dtype, tokens per block

EngineShape ShapeFor(PoolKind kind, DType dtype, uint32_t block_size, uint32_t head_size) {
  EngineShape s;
  s.num_blocks = kPoolBlocks;
  s.tokens_per_block = block_size;
  s.num_kv_heads = kind == PoolKind::kMla ? 1 : 2;
  s.head_size = head_size;
  s.dtype = dtype;
  return s;
}

// Token counts of one chunk: a whole chunk, whole blocks short of a chunk, a
// partial last block, and a single token.
std::vector<uint32_t> TokenCounts(uint32_t bs) {
  return {kBlocksPerChunk * bs, 2 * bs, 2 * bs + (bs > 2 ? bs / 2 + 1 : 1), 1};
}

std::vector<int32_t> IdsFor(const std::vector<int32_t>& ids, uint32_t tokens, uint32_t bs) {
  return {ids.begin(), ids.begin() + (tokens + bs - 1) / bs};
}

void ExpectPoolsEqual(const HostPool& got, const HostPool& want, const std::string& what) {
  for (size_t i = 0; i < got.storage().size(); ++i) {
    const int64_t diff =
        FirstDifference(got.storage()[i].data(), want.storage()[i].data(), got.storage()[i].size());
    EXPECT_EQ(diff, -1) << what << ": pool tensor " << i << " differs at byte " << diff;
  }
}

class KvCopyTest : public ::testing::TestWithParam<Param> {};

TEST_P(KvCopyTest, MatchesReference) {
  const auto [kind, dtype, bs] = GetParam();
  uint64_t seed = 1;
  for (uint32_t head_size : kHeadSizes) {
    SCOPED_TRACE(::testing::Message() << "head_size " << head_size);
    const EngineShape shape = ShapeFor(kind, dtype, bs, head_size);
    HostPool pool(kind, kLayers, shape, ++seed);
    const EngineLayout& layout = pool.layout();
    ASSERT_OK(layout.Validate());
    if (kind == PoolKind::kPaddedRows) {
      // The span ends at the last element, before the trailing padding.
      ASSERT_LE(layout.TensorSpanBytes(), pool.tensor_bytes());
    } else {
      ASSERT_EQ(layout.TensorSpanBytes(), pool.tensor_bytes());
    }
    const std::vector<int32_t> chunk_ids = RandomBlockIds(kPoolBlocks, kBlocksPerChunk, seed);

    for (uint32_t tokens : TokenCounts(bs)) {
      SCOPED_TRACE(::testing::Message() << "num_tokens " << tokens);
      const std::vector<int32_t> ids = IdsFor(chunk_ids, tokens, bs);
      const size_t bytes = layout.PayloadBytes(tokens);

      // Gather into a payload full of garbage: every byte must be written.
      std::vector<std::byte> payload(bytes);
      testing::FillRandom(payload.data(), bytes, ++seed);
      ASSERT_OK(Gather(layout, ids, tokens, absl::MakeSpan(payload)));
      const std::vector<std::byte> want = RefGather(layout, ids, tokens);
      ASSERT_EQ(FirstDifference(payload.data(), want.data(), bytes), -1) << "gather";

      // Scatter a random payload: the addressed elements take it, nothing
      // else changes (compared against the reference over the whole pool).
      std::vector<std::byte> incoming(bytes);
      testing::FillRandom(incoming.data(), bytes, ++seed);
      HostPool expected = pool;
      RefCopy(expected.layout(), ids, tokens, incoming.data(), false, 0, kLayers);
      ASSERT_OK(Scatter(layout, ids, tokens, incoming));
      ExpectPoolsEqual(pool, expected, "scatter");

      // scatter(gather(x)) restores x in the addressed elements and leaves
      // every other byte as it was.
      ASSERT_OK(Gather(layout, ids, tokens, absl::MakeSpan(payload)));
      pool.Refill(++seed);
      HostPool untouched = pool;
      RefCopy(untouched.layout(), ids, tokens, payload.data(), false, 0, kLayers);
      ASSERT_OK(Scatter(layout, ids, tokens, payload));
      ExpectPoolsEqual(pool, untouched, "round trip");
      std::vector<std::byte> again(bytes);
      ASSERT_OK(Gather(layout, ids, tokens, absl::MakeSpan(again)));
      EXPECT_EQ(FirstDifference(again.data(), payload.data(), bytes), -1) << "round trip";
    }

    // Per layer: gathering layer by layer (in any order) builds the same
    // payload; scattering one layer touches only that layer.
    const uint32_t tokens = TokenCounts(bs)[2];
    const std::vector<int32_t> ids = IdsFor(chunk_ids, tokens, bs);
    const size_t bytes = layout.PayloadBytes(tokens);
    std::vector<std::byte> by_layer(bytes);
    testing::FillRandom(by_layer.data(), bytes, ++seed);
    for (uint32_t layer = kLayers; layer-- > 0;) {
      ASSERT_OK(GatherLayer(layout, layer, ids, tokens, absl::MakeSpan(by_layer)));
    }
    const std::vector<std::byte> want = RefGather(layout, ids, tokens);
    EXPECT_EQ(FirstDifference(by_layer.data(), want.data(), bytes), -1) << "gather by layer";

    std::vector<std::byte> incoming(bytes);
    testing::FillRandom(incoming.data(), bytes, ++seed);
    HostPool expected = pool;
    RefCopy(expected.layout(), ids, tokens, incoming.data(), false, 1, 2);
    ASSERT_OK(ScatterLayer(layout, 1, ids, tokens, incoming));
    ExpectPoolsEqual(pool, expected, "scatter layer 1");
  }
}

std::string ParamName(const ::testing::TestParamInfo<Param>& info) {
  const auto [kind, dtype, bs] = info.param;
  return testing::PoolKindName(kind) + "_" + std::string(DTypeName(dtype)) + "_bs" +
         std::to_string(bs);
}

INSTANTIATE_TEST_SUITE_P(AllLayouts, KvCopyTest,
                         ::testing::Combine(::testing::ValuesIn(testing::kAllPoolKinds),
                                            ::testing::Values(DType::kFloat16, DType::kBFloat16,
                                                              DType::kFloat8E4M3, DType::kFloat32),
                                            ::testing::Values(16u, 32u, 64u, 128u, 256u)),
                         ParamName);

// Arguments that must be refused before any byte moves.
class KvCopyArgsTest : public ::testing::Test {
 protected:
  KvCopyArgsTest()
      : pool_(PoolKind::kFlashNhd, 2,
              EngineShape{.num_blocks = 8,
                          .tokens_per_block = 16,
                          .num_kv_heads = 2,
                          .head_size = 8,
                          .dtype = DType::kBFloat16},
              7) {}

  // Gather and Scatter both fail with InvalidArgument mentioning `field`,
  // and the pool is unchanged.
  void ExpectRefused(const std::vector<int32_t>& ids, uint32_t tokens, size_t payload_bytes,
                     const std::string& field) {
    const HostPool before = pool_;
    std::vector<std::byte> payload(payload_bytes);
    EXPECT_THAT(Gather(pool_.layout(), ids, tokens, absl::MakeSpan(payload)),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(field)));
    EXPECT_THAT(Scatter(pool_.layout(), ids, tokens, payload),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(field)));
    EXPECT_THAT(GatherLayer(pool_.layout(), 0, ids, tokens, absl::MakeSpan(payload)),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(field)));
    EXPECT_THAT(ScatterLayer(pool_.layout(), 0, ids, tokens, payload),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(field)));
    ExpectPoolsEqual(pool_, before, "refused call");
  }

  size_t Bytes(uint32_t tokens) const { return pool_.layout().PayloadBytes(tokens); }

  HostPool pool_;
};

TEST_F(KvCopyArgsTest, RefusesZeroTokens) { ExpectRefused({}, 0, 0, "num_tokens"); }

TEST_F(KvCopyArgsTest, RefusesWrongBlockCount) {
  ExpectRefused({1, 2}, 40, Bytes(40), "block_ids: 2 ids");
  ExpectRefused({1, 2, 3, 4}, 40, Bytes(40), "expected 3");
}

TEST_F(KvCopyArgsTest, RefusesBlockIdsOutsideThePool) {
  ExpectRefused({1, 8}, 32, Bytes(32), "block_ids[1] = 8");
  ExpectRefused({-1, 2}, 32, Bytes(32), "block_ids[0] = -1");
}

TEST_F(KvCopyArgsTest, RefusesPayloadOfWrongSize) {
  ExpectRefused({1, 2}, 32, Bytes(32) - 1, "payload");
  ExpectRefused({1, 2}, 32, Bytes(32) + 2, "payload");
}

TEST_F(KvCopyArgsTest, RefusesLayerOutOfRange) {
  std::vector<std::byte> payload(Bytes(16));
  EXPECT_THAT(GatherLayer(pool_.layout(), 2, {{3}}, 16, absl::MakeSpan(payload)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("layer = 2")));
  EXPECT_THAT(ScatterLayer(pool_.layout(), 2, {{3}}, 16, payload),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("layer = 2")));
}

TEST_F(KvCopyArgsTest, ScatterRefusesRepeatedBlocks) {
  const std::vector<int32_t> ids = {4, 1, 4};
  std::vector<std::byte> payload(Bytes(48));
  EXPECT_OK(Gather(pool_.layout(), ids, 48, absl::MakeSpan(payload)));  // reading twice is fine
  const HostPool before = pool_;
  EXPECT_THAT(Scatter(pool_.layout(), ids, 48, payload),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("block 4 appears")));
  ExpectPoolsEqual(pool_, before, "refused scatter");
}

TEST_F(KvCopyArgsTest, RefusesInvalidLayout) {
  EngineLayout bad = pool_.layout();
  bad.layer_bases[1] = nullptr;
  std::vector<std::byte> payload(Bytes(16));
  EXPECT_THAT(Gather(bad, {{0}}, 16, absl::MakeSpan(payload)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("layer_bases[1]")));
  EXPECT_THAT(Scatter(bad, {{0}}, 16, payload),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("layer_bases[1]")));
}

// The plan takes the widest contiguous path each layout allows.
TEST(KvCopyPlanTest, MergesContiguousRuns) {
  const EngineShape s{.num_blocks = 4,
                      .tokens_per_block = 16,
                      .num_kv_heads = 8,
                      .head_size = 128,
                      .dtype = DType::kBFloat16};
  const std::vector<void*> bases = {reinterpret_cast<void*>(0x1000)};

  const KvCopyPlan nhd = MakeKvCopyPlan(EngineLayout::VllmFlashNhd(bases, s));
  EXPECT_EQ(nhd.whole_block, 1u);
  EXPECT_EQ(SegmentCount(nhd, 16), 1u);
  EXPECT_EQ(SegmentBytes(nhd, 16), 16u * 8 * 128 * 2);
  EXPECT_EQ(SegmentBytes(nhd, 5), 5u * 8 * 128 * 2);

  const KvCopyPlan hnd = MakeKvCopyPlan(EngineLayout::VllmFlashHnd(bases, s));
  EXPECT_EQ(hnd.whole_block, 0u);
  EXPECT_EQ(SegmentCount(hnd, 16), 16u * 8);
  EXPECT_EQ(SegmentBytes(hnd, 16), 128u * 2);
  // Segment 9 is token 1, head 1: one token row (256 B) plus one head (16 * 256 B).
  EXPECT_EQ(SegmentOffset(hnd, 9), 256 + 16 * 256);

  EngineShape mla = s;
  mla.num_kv_heads = 1;
  mla.head_size = 576;
  const KvCopyPlan m = MakeKvCopyPlan(EngineLayout::Mla(bases, mla));
  EXPECT_EQ(m.whole_block, 1u);
  EXPECT_EQ(m.kv_tensors, 1u);
}

}  // namespace
}  // namespace kvtier
