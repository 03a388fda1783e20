#include "cuda/kv_copy_kernels.cuh"

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "cuda/cuda_status.h"

namespace kvtier {
namespace {

// Vectors in flight per thread per step; more outstanding accesses hide the
// latency of PCIe reads and writes.
constexpr uint32_t kUnroll = 4;

// Copies `total` vectors of type V between the engine side (segments of
// `vectors_per_segment` vectors at SegmentOffset) and the contiguous chunk
// side. kSingle: the whole block is one segment.
template <typename V, bool kGather, bool kSingle>
__device__ __forceinline__ void CopyVectors(const KvCopyPlan& plan, char* engine, char* chunk,
                                            uint32_t total, uint32_t vectors_per_segment) {
  auto engine_at = [&](uint32_t i) -> V* {
    if constexpr (kSingle) {
      return reinterpret_cast<V*>(engine) + i;
    } else {
      const uint32_t segment = i / vectors_per_segment;
      const uint32_t within = i - segment * vectors_per_segment;
      return reinterpret_cast<V*>(engine + SegmentOffset(plan, segment)) + within;
    }
  };
  V* chunk_v = reinterpret_cast<V*>(chunk);
  const uint32_t stride = blockDim.x * kUnroll;
  for (uint32_t first = threadIdx.x; first < total; first += stride) {
    V values[kUnroll];
#pragma unroll
    for (uint32_t u = 0; u < kUnroll; ++u) {
      const uint32_t i = first + u * blockDim.x;
      if (i < total) values[u] = kGather ? *engine_at(i) : chunk_v[i];
    }
#pragma unroll
    for (uint32_t u = 0; u < kUnroll; ++u) {
      const uint32_t i = first + u * blockDim.x;
      if (i < total) {
        if constexpr (kGather) {
          chunk_v[i] = values[u];
        } else {
          *engine_at(i) = values[u];
        }
      }
    }
  }
}

template <typename V, bool kGather>
__device__ __forceinline__ void CopyWith(const KvCopyPlan& plan, char* engine, char* chunk,
                                         uint32_t segments, uint32_t segment_bytes) {
  const uint32_t per_segment = segment_bytes / sizeof(V);
  if (segments == 1) {
    CopyVectors<V, kGather, true>(plan, engine, chunk, per_segment, per_segment);
  } else {
    CopyVectors<V, kGather, false>(plan, engine, chunk, segments * per_segment, per_segment);
  }
}

template <bool kGather>
__global__ void __launch_bounds__(kKvCopyThreads)
    KvCopyKernel(const __grid_constant__ KvCopyArgs args) {
  const KvCopyPlan& plan = args.plan;
  const uint32_t flat = blockIdx.x;

  // The chunk this engine block belongs to: the last one starting at or before it.
  uint32_t c = 0;
  for (uint32_t i = 1; i < args.num_chunks; ++i) {
    if (args.chunks[i].begin <= flat) c = i;
  }
  const KvLaunchChunk& chunk = args.chunks[c];
  const uint32_t block_in_chunk = chunk.first_block + (flat - chunk.begin);
  const uint32_t first_token = block_in_chunk * plan.tokens_per_block;
  const uint32_t tokens = min(plan.tokens_per_block, chunk.num_tokens - first_token);
  const uint32_t layer = args.first_layer + blockIdx.y / plan.kv_tensors;
  const uint32_t kv = blockIdx.y % plan.kv_tensors;

  char* engine = reinterpret_cast<char*>(args.layer_bases[layer]) + kv * plan.kv_stride +
                 static_cast<int64_t>(args.block_ids[flat]) * plan.block_stride;
  const uint64_t slab = uint64_t{layer} * plan.kv_tensors + kv;
  char* payload = reinterpret_cast<char*>(chunk.payload) +
                  (slab * chunk.num_tokens + first_token) * plan.token_bytes;

  const uint32_t segments = SegmentCount(plan, tokens);
  const uint32_t segment_bytes = SegmentBytes(plan, tokens);
  const uint64_t bits = reinterpret_cast<uintptr_t>(engine) | reinterpret_cast<uintptr_t>(payload) |
                        segment_bytes | (segments > 1 ? plan.stride_bits : 0);
  if ((bits & 15) == 0) {
    CopyWith<uint4, kGather>(plan, engine, payload, segments, segment_bytes);
  } else if ((bits & 7) == 0) {
    CopyWith<uint2, kGather>(plan, engine, payload, segments, segment_bytes);
  } else if ((bits & 3) == 0) {
    CopyWith<uint32_t, kGather>(plan, engine, payload, segments, segment_bytes);
  } else if ((bits & 1) == 0) {
    CopyWith<uint16_t, kGather>(plan, engine, payload, segments, segment_bytes);
  } else {
    CopyWith<uint8_t, kGather>(plan, engine, payload, segments, segment_bytes);
  }
}

absl::Status CheckArgs(const KvCopyArgs& a) {
  if (a.layer_bases == nullptr) return absl::InvalidArgumentError("layer_bases: null");
  if (a.num_blocks == 0 || a.num_blocks > kMaxLaunchBlocks) {
    return absl::InvalidArgumentError(absl::StrCat("num_blocks = ", a.num_blocks,
                                                   " is out of range [1, ", kMaxLaunchBlocks, "]"));
  }
  if (a.num_chunks == 0 || a.num_chunks > kMaxLaunchChunks) {
    return absl::InvalidArgumentError(absl::StrCat("num_chunks = ", a.num_chunks,
                                                   " is out of range [1, ", kMaxLaunchChunks, "]"));
  }
  if (a.chunks[0].begin != 0) return absl::InvalidArgumentError("chunks[0].begin must be 0");
  if (a.plan.kv_tensors == 0 || a.plan.kv_tensors > 2 || a.plan.tokens_per_block == 0) {
    return absl::InvalidArgumentError("plan: kv_tensors or tokens_per_block out of range");
  }
  if (a.num_layers == 0 || a.first_layer >= a.plan.num_layers ||
      a.num_layers > a.plan.num_layers - a.first_layer) {
    return absl::InvalidArgumentError(absl::StrCat("layers [", a.first_layer, ", ",
                                                   a.first_layer + a.num_layers,
                                                   ") exceed num_layers = ", a.plan.num_layers));
  }
  return absl::OkStatus();
}

template <bool kGather>
absl::Status Launch(const KvCopyArgs& args, cudaStream_t stream) {
  if (absl::Status s = CheckArgs(args); !s.ok()) return s;
  // Clear an error an earlier, already reported call left behind, so the
  // check below sees only this launch's.
  (void)cudaGetLastError();
  const dim3 grid(args.num_blocks, args.num_layers * args.plan.kv_tensors);
  KvCopyKernel<kGather><<<grid, kKvCopyThreads, 0, stream>>>(args);
  return CudaStatus(cudaGetLastError(), kGather ? "KvGather launch" : "KvScatter launch");
}

}  // namespace

absl::Status LaunchKvGather(const KvCopyArgs& args, cudaStream_t stream) {
  return Launch<true>(args, stream);
}

absl::Status LaunchKvScatter(const KvCopyArgs& args, cudaStream_t stream) {
  return Launch<false>(args, stream);
}

absl::Status LaunchKvGatherLayer(KvCopyArgs args, uint32_t layer, cudaStream_t stream) {
  args.first_layer = layer;
  args.num_layers = 1;
  return Launch<true>(args, stream);
}

absl::Status LaunchKvScatterLayer(KvCopyArgs args, uint32_t layer, cudaStream_t stream) {
  args.first_layer = layer;
  args.num_layers = 1;
  return Launch<false>(args, stream);
}

}  // namespace kvtier
