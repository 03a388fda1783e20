// Gather and scatter between an engine's paged KV blocks and kvtier chunk
// payloads, on the CPU.
//
// Gather copies the KV of `num_tokens` tokens, held in engine blocks
// `block_ids` (in token order: token t lives in block_ids[t / tokens_per_block]
// at position t % tokens_per_block), out of the pool `layout` describes into a
// chunk payload in kvtier's layout (namespace.h). Scatter is the inverse: it
// writes exactly those tokens' elements and nothing else, so the rest of the
// pool, including the unused tail of a partial last block, is untouched.
// Bytes are moved verbatim (fp16, bf16, fp8, ... never converted).
//
// These functions run on host memory: the pool and the payload must both be
// addressable by the CPU (the CPU runtime, and the reference for the CUDA
// kernels in tests). cuda/device_runtime.h selects the CPU or CUDA path at
// run time and batches chunks.
//
// Thread-safety: the functions keep no state. Concurrent calls are safe when
// they write disjoint memory.
#ifndef KVTIER_CUDA_KV_COPY_H_
#define KVTIER_CUDA_KV_COPY_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "cuda/kv_copy_plan.h"
#include "kvtier/engine_layout.h"

namespace kvtier {

// Copies every layer of the chunk into `payload`, which must be exactly
// layout.PayloadBytes(num_tokens) bytes.
// InvalidArgument (naming the field) when the layout fails Validate(),
// num_tokens is 0, block_ids does not hold exactly
// ceil(num_tokens / tokens_per_block) ids, an id is negative or not below
// num_blocks, or the payload has the wrong size.
absl::Status Gather(const EngineLayout& layout, absl::Span<const int32_t> block_ids,
                    uint32_t num_tokens, absl::Span<std::byte> payload);

// Copies every layer of `payload` back into the blocks. Same errors as
// Gather, plus InvalidArgument when a block id repeats (two chunk ranges
// would write one block).
absl::Status Scatter(const EngineLayout& layout, absl::Span<const int32_t> block_ids,
                     uint32_t num_tokens, absl::Span<const std::byte> payload);

// Per-layer variants, so an engine can compute layer `layer` while the next
// one moves. `payload` is the whole chunk payload (same size rule as above);
// only layer `layer`'s slice is written (Gather) or read (Scatter).
// InvalidArgument also when layer >= layout.num_layers.
absl::Status GatherLayer(const EngineLayout& layout, uint32_t layer,
                         absl::Span<const int32_t> block_ids, uint32_t num_tokens,
                         absl::Span<std::byte> payload);
absl::Status ScatterLayer(const EngineLayout& layout, uint32_t layer,
                          absl::Span<const int32_t> block_ids, uint32_t num_tokens,
                          absl::Span<const std::byte> payload);

// Checks one chunk's arguments as Gather (`for_scatter` false) or Scatter
// does, without touching memory. The runtimes call it for every chunk.
// REQUIRES: layout.Validate() is OK.
absl::Status CheckChunkArgs(const EngineLayout& layout, absl::Span<const int32_t> block_ids,
                            uint32_t num_tokens, size_t payload_bytes, bool for_scatter);

// The byte-level plan of `layout`. REQUIRES: layout.Validate() is OK.
KvCopyPlan MakeKvCopyPlan(const EngineLayout& layout);

}  // namespace kvtier

#endif  // KVTIER_CUDA_KV_COPY_H_
