// How one (layer, kv tensor, engine block) maps onto a chunk, reduced to byte
// offsets, shared by the CPU copy and the CUDA kernels.
//
// The chunk side of a block is always contiguous ([tokens][heads][head_size]).
// The engine side is cut into equal "segments" that are contiguous in both:
//
//   - the whole block when tokens, heads and elements are packed (NHD, MLA);
//   - one token row (all heads) when heads and elements are packed;
//   - one head row when only the elements are packed (HND);
//   - one element otherwise.
//
// Segment s of a block holding n tokens starts at chunk offset s * SegmentBytes(n)
// and at engine offset SegmentOffset(s). Only plain C++ here: this header is
// compiled by both the host compiler and nvcc.
#ifndef KVTIER_CUDA_KV_COPY_PLAN_H_
#define KVTIER_CUDA_KV_COPY_PLAN_H_

#include <cstdint>

#if defined(__CUDACC__)
#define KVTIER_HOST_DEVICE __host__ __device__
#else
#define KVTIER_HOST_DEVICE
#endif

namespace kvtier {

struct KvCopyPlan {
  int64_t kv_stride = 0;     // bytes between K and V of one layer
  int64_t block_stride = 0;  // bytes between engine blocks
  int64_t token_stride = 0;  // bytes between tokens of a block (engine side)
  int64_t head_stride = 0;   // bytes between heads (engine side)
  int64_t dim_stride = 0;    // bytes between elements of a head (engine side)
  uint32_t num_layers = 0;   // layers in the pool
  uint32_t kv_tensors = 0;   // 2 = K and V, 1 = MLA
  uint32_t tokens_per_block = 0;
  uint32_t token_bytes = 0;  // chunk bytes per token per tensor: heads * head_size * elem
  // Segment shape. When whole_block is set a block of n tokens is one segment
  // of n * token_bytes; otherwise it is n * heads_per_token * pieces_per_head
  // segments of segment_bytes each.
  uint32_t whole_block = 0;      // 1 when tokens, heads and elements are packed
  uint32_t heads_per_token = 0;  // head rows per token row (1 when heads are packed)
  uint32_t pieces_per_head = 0;  // segments per head row (1 when elements are packed)
  uint32_t segment_bytes = 0;    // bytes per segment when !whole_block
  // OR of the engine strides the segment offsets use, for alignment tests.
  uint64_t stride_bits = 0;
};

KVTIER_HOST_DEVICE inline uint32_t SegmentCount(const KvCopyPlan& p, uint32_t tokens) {
  return p.whole_block ? 1u : tokens * p.heads_per_token * p.pieces_per_head;
}

KVTIER_HOST_DEVICE inline uint32_t SegmentBytes(const KvCopyPlan& p, uint32_t tokens) {
  return p.whole_block ? tokens * p.token_bytes : p.segment_bytes;
}

// Engine byte offset of segment `s` from the block's (layer, kv, block) origin.
KVTIER_HOST_DEVICE inline int64_t SegmentOffset(const KvCopyPlan& p, uint32_t s) {
  if (p.whole_block) return 0;
  const uint32_t piece = s % p.pieces_per_head;
  const uint32_t row = s / p.pieces_per_head;
  const uint32_t head = row % p.heads_per_token;
  const uint32_t token = row / p.heads_per_token;
  return token * p.token_stride + head * p.head_stride + piece * p.dim_stride;
}

}  // namespace kvtier

#endif  // KVTIER_CUDA_KV_COPY_PLAN_H_
