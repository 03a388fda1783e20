// CUDA kernels that gather engine KV blocks into chunk payloads and scatter
// them back, with their host launchers. Private to cuda/; the device runtime
// (cuda_device_runtime.cc) builds the arguments.
//
// One launch moves up to kMaxLaunchBlocks engine blocks, drawn from up to
// kMaxLaunchChunks chunks, for a range of layers: thread block (x, y) moves
// engine block x of the launch for layer first_layer + y / kv_tensors and kv
// tensor y % kv_tensors. The block ids and chunk table travel in the kernel
// arguments, so a launch needs no staging copy and is ordered on its stream
// like any other work; the layer base pointers are a device array uploaded
// once per pool.
//
// Payload and pool addresses must be addressable by the device running the
// kernel: device memory, or pinned/registered host memory by its device
// pointer. 16-byte loads and stores are used when both sides and every
// stride allow it, then 8, 4, 2 and 1 byte.
#ifndef KVTIER_CUDA_KV_COPY_KERNELS_CUH_
#define KVTIER_CUDA_KV_COPY_KERNELS_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "cuda/kv_copy_plan.h"

namespace kvtier {

inline constexpr uint32_t kMaxLaunchBlocks = 512;
inline constexpr uint32_t kMaxLaunchChunks = 32;
// Threads per thread block.
inline constexpr uint32_t kKvCopyThreads = 256;

// One chunk's share of a launch: the launch moves blocks
// [first_block, first_block + (next begin - begin)) of the chunk.
struct KvLaunchChunk {
  uint64_t payload = 0;      // device address of the whole chunk payload
  uint32_t num_tokens = 0;   // tokens in the whole chunk (sizes its tensor slabs)
  uint32_t first_block = 0;  // index within the chunk of its first block in this launch
  uint32_t begin = 0;        // index into KvCopyArgs::block_ids of that block
  uint32_t reserved = 0;
};

// Kernel arguments, passed by value (under the 4 KiB parameter limit).
struct KvCopyArgs {
  KvCopyPlan plan;
  const uint64_t* layer_bases = nullptr;  // device array of plan.num_layers addresses
  uint32_t first_layer = 0;               // first layer moved
  uint32_t num_layers = 0;                // layers moved
  uint32_t num_chunks = 0;                // entries of `chunks` used, ascending `begin`
  uint32_t num_blocks = 0;                // entries of `block_ids` used
  KvLaunchChunk chunks[kMaxLaunchChunks];
  int32_t block_ids[kMaxLaunchBlocks];  // engine block ids, chunk after chunk
};
static_assert(sizeof(KvCopyArgs) <= 4096, "kernel arguments exceed 4 KiB");

// Enqueue one gather (pool -> payloads) or scatter (payloads -> pool) of the
// layers [first_layer, first_layer + num_layers) on `stream`. InvalidArgument
// for arguments outside the limits above; the CUDA launch error otherwise.
absl::Status LaunchKvGather(const KvCopyArgs& args, cudaStream_t stream);
absl::Status LaunchKvScatter(const KvCopyArgs& args, cudaStream_t stream);
// The same for one layer (args.first_layer and num_layers are overridden).
absl::Status LaunchKvGatherLayer(KvCopyArgs args, uint32_t layer, cudaStream_t stream);
absl::Status LaunchKvScatterLayer(KvCopyArgs args, uint32_t layer, cudaStream_t stream);

}  // namespace kvtier

#endif  // KVTIER_CUDA_KV_COPY_KERNELS_CUH_
