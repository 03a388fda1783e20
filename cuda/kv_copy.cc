#include "cuda/kv_copy.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "src/common/status_macros.h"

namespace kvtier {
namespace {

template <bool kGather>
inline void CopyBytes(std::byte* engine, std::byte* chunk, size_t bytes) {
  if constexpr (kGather) {
    std::memcpy(chunk, engine, bytes);
  } else {
    std::memcpy(engine, chunk, bytes);
  }
}

// Copies `count` segments of a fixed size known at compile time (so the
// per-element layouts do not pay for a memcpy call per element).
template <bool kGather, size_t kBytes>
void CopyFixedSegments(const KvCopyPlan& p, std::byte* engine, std::byte* chunk, uint32_t count) {
  for (uint32_t s = 0; s < count; ++s) {
    CopyBytes<kGather>(engine + SegmentOffset(p, s), chunk + size_t{s} * kBytes, kBytes);
  }
}

// Moves the `tokens` tokens of one (layer, kv tensor, block).
template <bool kGather>
void CopyBlock(const KvCopyPlan& p, std::byte* engine, std::byte* chunk, uint32_t tokens) {
  const uint32_t count = SegmentCount(p, tokens);
  const uint32_t bytes = SegmentBytes(p, tokens);
  switch (bytes) {
    case 1:
      return CopyFixedSegments<kGather, 1>(p, engine, chunk, count);
    case 2:
      return CopyFixedSegments<kGather, 2>(p, engine, chunk, count);
    case 4:
      return CopyFixedSegments<kGather, 4>(p, engine, chunk, count);
    default:
      break;
  }
  for (uint32_t s = 0; s < count; ++s) {
    CopyBytes<kGather>(engine + SegmentOffset(p, s), chunk + size_t{s} * bytes, bytes);
  }
}

// Moves layers [first_layer, first_layer + num_layers) of one chunk.
// `payload` is the whole chunk payload; it is only read when !kGather.
template <bool kGather>
void CopyLayers(const EngineLayout& l, uint32_t first_layer, uint32_t num_layers,
                absl::Span<const int32_t> block_ids, uint32_t num_tokens, std::byte* payload) {
  const KvCopyPlan p = MakeKvCopyPlan(l);
  const size_t tensor_bytes = l.TensorBytes(num_tokens);
  const size_t block_chunk_bytes = size_t{l.tokens_per_block} * p.token_bytes;
  for (uint32_t layer = first_layer; layer < first_layer + num_layers; ++layer) {
    std::byte* base = l.LayerBase(layer);
    for (uint32_t kv = 0; kv < l.kv_tensors; ++kv) {
      std::byte* slab = payload + (size_t{layer} * l.kv_tensors + kv) * tensor_bytes;
      for (size_t b = 0; b < block_ids.size(); ++b) {
        const uint32_t first_token = static_cast<uint32_t>(b) * l.tokens_per_block;
        const uint32_t tokens = std::min(l.tokens_per_block, num_tokens - first_token);
        std::byte* engine = base + kv * p.kv_stride + block_ids[b] * p.block_stride;
        CopyBlock<kGather>(p, engine, slab + b * block_chunk_bytes, tokens);
      }
    }
  }
}

absl::Status CheckLayer(const EngineLayout& l, uint32_t layer) {
  if (layer >= l.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer = ", layer, " is out of range; num_layers = ", l.num_layers));
  }
  return absl::OkStatus();
}

}  // namespace

KvCopyPlan MakeKvCopyPlan(const EngineLayout& l) {
  const int64_t es = static_cast<int64_t>(l.ElementBytes());
  KvCopyPlan p;
  p.kv_stride = l.kv_tensors > 1 ? l.strides.kv * es : 0;
  p.block_stride = l.strides.block * es;
  p.token_stride = l.strides.token * es;
  p.head_stride = l.strides.head * es;
  p.dim_stride = l.strides.dim * es;
  p.num_layers = l.num_layers;
  p.kv_tensors = l.kv_tensors;
  p.tokens_per_block = l.tokens_per_block;
  p.token_bytes = static_cast<uint32_t>(l.TensorBytes(1));

  const int64_t row = l.head_size;
  const bool dims_packed = l.head_size == 1 || l.strides.dim == 1;
  const bool heads_packed = dims_packed && (l.num_kv_heads == 1 || l.strides.head == row);
  const bool tokens_packed =
      heads_packed && (l.tokens_per_block == 1 || l.strides.token == row * l.num_kv_heads);
  p.heads_per_token = 1;
  p.pieces_per_head = 1;
  if (tokens_packed) {
    p.whole_block = 1;
    p.segment_bytes = 0;
    p.stride_bits = 0;
  } else if (heads_packed) {
    p.segment_bytes = p.token_bytes;
    p.stride_bits = static_cast<uint64_t>(p.token_stride);
  } else if (dims_packed) {
    p.heads_per_token = l.num_kv_heads;
    p.segment_bytes = static_cast<uint32_t>(row * es);
    p.stride_bits = static_cast<uint64_t>(p.token_stride | p.head_stride);
  } else {
    p.heads_per_token = l.num_kv_heads;
    p.pieces_per_head = l.head_size;
    p.segment_bytes = static_cast<uint32_t>(es);
    p.stride_bits = static_cast<uint64_t>(p.token_stride | p.head_stride | p.dim_stride);
  }
  return p;
}

absl::Status CheckChunkArgs(const EngineLayout& l, absl::Span<const int32_t> block_ids,
                            uint32_t num_tokens, size_t payload_bytes, bool for_scatter) {
  if (num_tokens == 0) return absl::InvalidArgumentError("num_tokens: must be at least 1");
  const size_t expected = (size_t{num_tokens} + l.tokens_per_block - 1) / l.tokens_per_block;
  if (block_ids.size() != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("block_ids: ", block_ids.size(), " ids for num_tokens = ", num_tokens,
                     " with tokens_per_block = ", l.tokens_per_block, "; expected ", expected));
  }
  for (size_t i = 0; i < block_ids.size(); ++i) {
    if (block_ids[i] < 0 || static_cast<uint32_t>(block_ids[i]) >= l.num_blocks) {
      return absl::InvalidArgumentError(absl::StrCat("block_ids[", i, "] = ", block_ids[i],
                                                     " is outside the pool of ", l.num_blocks,
                                                     " blocks"));
    }
  }
  if (payload_bytes != l.PayloadBytes(num_tokens)) {
    return absl::InvalidArgumentError(absl::StrCat("payload: ", payload_bytes, " bytes, expected ",
                                                   l.PayloadBytes(num_tokens),
                                                   " for num_tokens = ", num_tokens));
  }
  if (for_scatter && block_ids.size() > 1) {
    std::vector<int32_t> sorted(block_ids.begin(), block_ids.end());
    std::sort(sorted.begin(), sorted.end());
    auto dup = std::adjacent_find(sorted.begin(), sorted.end());
    if (dup != sorted.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "block_ids: block ", *dup, " appears more than once; a scatter would write it twice"));
    }
  }
  return absl::OkStatus();
}

absl::Status Gather(const EngineLayout& layout, absl::Span<const int32_t> block_ids,
                    uint32_t num_tokens, absl::Span<std::byte> payload) {
  KVTIER_RETURN_IF_ERROR(layout.Validate());
  KVTIER_RETURN_IF_ERROR(CheckChunkArgs(layout, block_ids, num_tokens, payload.size(), false));
  CopyLayers<true>(layout, 0, layout.num_layers, block_ids, num_tokens, payload.data());
  return absl::OkStatus();
}

absl::Status Scatter(const EngineLayout& layout, absl::Span<const int32_t> block_ids,
                     uint32_t num_tokens, absl::Span<const std::byte> payload) {
  KVTIER_RETURN_IF_ERROR(layout.Validate());
  KVTIER_RETURN_IF_ERROR(CheckChunkArgs(layout, block_ids, num_tokens, payload.size(), true));
  // Scatter only reads the payload; CopyLayers shares one pointer type.
  CopyLayers<false>(layout, 0, layout.num_layers, block_ids, num_tokens,
                    const_cast<std::byte*>(payload.data()));
  return absl::OkStatus();
}

absl::Status GatherLayer(const EngineLayout& layout, uint32_t layer,
                         absl::Span<const int32_t> block_ids, uint32_t num_tokens,
                         absl::Span<std::byte> payload) {
  KVTIER_RETURN_IF_ERROR(layout.Validate());
  KVTIER_RETURN_IF_ERROR(CheckLayer(layout, layer));
  KVTIER_RETURN_IF_ERROR(CheckChunkArgs(layout, block_ids, num_tokens, payload.size(), false));
  CopyLayers<true>(layout, layer, 1, block_ids, num_tokens, payload.data());
  return absl::OkStatus();
}

absl::Status ScatterLayer(const EngineLayout& layout, uint32_t layer,
                          absl::Span<const int32_t> block_ids, uint32_t num_tokens,
                          absl::Span<const std::byte> payload) {
  KVTIER_RETURN_IF_ERROR(layout.Validate());
  KVTIER_RETURN_IF_ERROR(CheckLayer(layout, layer));
  KVTIER_RETURN_IF_ERROR(CheckChunkArgs(layout, block_ids, num_tokens, payload.size(), true));
  CopyLayers<false>(layout, layer, 1, block_ids, num_tokens,
                    const_cast<std::byte*>(payload.data()));
  return absl::OkStatus();
}

}  // namespace kvtier
