// Descriptions of an inference engine's paged KV cache, so kvtier can move KV
// between the engine's blocks and its own chunks.
//
// An engine keeps the KV of every layer in a pool of fixed-size blocks. An
// EngineLayout says where element (layer, kv, block, token, head, dim) of that
// pool lives:
//
//   address = base(layer) + DTypeSize(dtype) * (kv * strides.kv
//             + block * strides.block + token * strides.token
//             + head * strides.head + dim * strides.dim)
//
//   base(layer) = layer_bases[layer]                         (a tensor per layer)
//               = cross_layer_base + DTypeSize(dtype) * layer * strides.layer
//                                                             (one cross-layer tensor)
//
// `kv` is 0 for K and 1 for V (MLA has only the latent, kv_tensors = 1);
// `token` is the position inside the block. Strides count elements, as
// torch.Tensor.stride() does. The named constructors fill the strides of the
// common engine layouts; any other layout can fill the fields directly.
//
// A chunk holds the same KV in kvtier's layout (namespace.h): for each layer,
// for each kv tensor, [num_tokens][num_kv_heads][head_size]. Gather and scatter
// (cuda/kv_copy.h, cuda/device_runtime.h) only move bytes; they never convert
// between dtypes, so a layout must match the namespace exactly
// (CheckCompatible).
//
// Thread-safety: a plain value; the pointers are not owned and must outlive
// every copy that uses them.
#ifndef KVTIER_INCLUDE_KVTIER_ENGINE_LAYOUT_H_
#define KVTIER_INCLUDE_KVTIER_ENGINE_LAYOUT_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kvtier/namespace.h"

namespace kvtier {

// Distance between neighbouring elements along each axis, in elements.
struct EngineStrides {
  int64_t layer = 0;  // between layers; only for a cross-layer pool
  int64_t kv = 0;     // between K and V; ignored when kv_tensors == 1
  int64_t block = 0;  // between engine blocks
  int64_t token = 0;  // between tokens of one block
  int64_t head = 0;   // between KV heads
  int64_t dim = 1;    // between the elements of one head
};

// The sizes every named constructor takes.
struct EngineShape {
  uint32_t num_blocks = 0;        // blocks in the pool; block ids must be below it
  uint32_t tokens_per_block = 0;  // the engine's block size, tokens
  uint32_t num_kv_heads = 1;      // KV heads held by this shard (MLA: 1)
  uint32_t head_size = 0;         // elements per head (MLA: latent + rope dims)
  DType dtype = DType::kFloat16;  // element type; bytes are moved, never converted
};

struct EngineLayout {
  // Element 0 of each layer's tensor, num_layers entries; empty when
  // cross_layer_base is set. Device pointers for the CUDA runtime, host
  // pointers for the CPU runtime.
  std::vector<void*> layer_bases;
  // Element 0 of a single tensor holding every layer (strides.layer apart);
  // null when layer_bases is used.
  void* cross_layer_base = nullptr;
  EngineStrides strides;          // elements
  DType dtype = DType::kFloat16;  // element type
  uint32_t num_layers = 0;        // attention layers held by this shard
  uint32_t num_blocks = 0;        // blocks in the pool; block ids must be below it
  uint32_t tokens_per_block = 0;  // the engine's block size, tokens
  uint32_t num_kv_heads = 0;      // KV heads held by this shard
  uint32_t head_size = 0;         // elements per head
  uint32_t kv_tensors = 2;        // 2 = K and V, 1 = MLA latent only

  // vLLM FlashAttention, one tensor per layer:
  // [2, num_blocks, tokens_per_block, num_kv_heads, head_size] (NHD).
  static EngineLayout VllmFlashNhd(std::vector<void*> layer_bases, const EngineShape& shape);
  // The same logical shape stored heads-first:
  // [2, num_blocks, num_kv_heads, tokens_per_block, head_size] (HND).
  static EngineLayout VllmFlashHnd(std::vector<void*> layer_bases, const EngineShape& shape);
  // FlashInfer, one tensor per layer:
  // [num_blocks, 2, tokens_per_block, num_kv_heads, head_size] (NHD).
  static EngineLayout FlashInfer(std::vector<void*> layer_bases, const EngineShape& shape);
  // FlashInfer HND: [num_blocks, 2, num_kv_heads, tokens_per_block, head_size].
  static EngineLayout FlashInferHnd(std::vector<void*> layer_bases, const EngineShape& shape);
  // MLA (one latent per token, no V), one tensor per layer:
  // [num_blocks, tokens_per_block, head_size]. shape.num_kv_heads must be 1;
  // any other value fails Validate().
  static EngineLayout Mla(std::vector<void*> layer_bases, const EngineShape& shape);
  // One tensor for all layers:
  // [num_blocks, num_layers, 2, tokens_per_block, num_kv_heads, head_size].
  static EngineLayout CrossLayer(void* base, uint32_t num_layers, const EngineShape& shape);

  // InvalidArgument naming the field for: sizes that are zero or out of
  // range, an unknown dtype, both or neither of layer_bases and
  // cross_layer_base, a layer_bases entry that is null or a count other than
  // num_layers, negative strides, strides under which two elements share an
  // address, and blocks over 2 GiB per (layer, kv tensor).
  absl::Status Validate() const;

  // Validate(), then InvalidArgument naming the first field (dtype,
  // num_layers, num_kv_heads, head_size, kv_tensors, tokens_per_block) that
  // differs from `chunk_layout`. A layout that does not match the chunks is
  // an error: gather and scatter never reinterpret bytes.
  absl::Status CheckCompatible(const KvLayout& chunk_layout) const;
  absl::Status CheckCompatible(const Namespace& ns) const;

  // The chunk layout this pool fills (for building a NamespaceOptions).
  KvLayout ChunkLayout() const;
  // Bytes per element.
  size_t ElementBytes() const { return DTypeSize(dtype); }
  // Bytes of one (layer, kv tensor) slab of a chunk: num_tokens * heads * head_size.
  size_t TensorBytes(uint32_t num_tokens) const;
  // Bytes of one layer's slice of a chunk (all its kv tensors).
  size_t LayerPayloadBytes(uint32_t num_tokens) const;
  // Bytes of a whole chunk payload; equals Namespace::PayloadBytes for a
  // compatible namespace.
  size_t PayloadBytes(uint32_t num_tokens) const;
  // Bytes from a base pointer to one past the last element it addresses: one
  // layer's tensor, or the whole pool for a cross-layer layout. REQUIRES: Validate() is OK.
  size_t TensorSpanBytes() const;
  // The address of element (layer, 0, 0, 0, 0, 0). REQUIRES: Validate() is OK
  // and layer < num_layers.
  std::byte* LayerBase(uint32_t layer) const;
};

}  // namespace kvtier

#endif  // KVTIER_INCLUDE_KVTIER_ENGINE_LAYOUT_H_
