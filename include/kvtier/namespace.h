// Namespaces, KV layouts and chunking.
//
// A Namespace holds everything that makes two KV tensors incompatible: model id
// and revision, dtype, KV layout, parallel shard, chunk size and the tenant's
// cache salt. It hashes to a 64-bit id that enters every key, so keys never
// match across namespaces and a tenant without the salt never observes another
// tenant's hits.
//
// A chunk is the stored object: `tokens_per_chunk` tokens (a multiple of the
// engine's block size) whose payload is every layer's K and V for those tokens.
// Payload byte layout (layer-major, row-major within a tensor):
//
//   for layer in [0, num_layers):
//     for t in [0, kv_tensors):            // 0 = K, 1 = V (MLA: K only)
//       [num_tokens][num_kv_heads][head_size] elements of `dtype`
//
// Thread-safety: Namespace is an immutable value; copies are cheap-ish (it
// owns a few strings) and safe to share across threads.
#ifndef KVTIER_INCLUDE_KVTIER_NAMESPACE_H_
#define KVTIER_INCLUDE_KVTIER_NAMESPACE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kvtier/keys.h"

namespace kvtier {

// Element type of the KV tensors. Values are part of the on-disk format.
enum class DType : uint8_t {
  kFloat16 = 1,
  kBFloat16 = 2,
  kFloat32 = 3,
  kFloat8E4M3 = 4,
  kFloat8E5M2 = 5,
  kUInt8 = 6,  // opaque bytes, e.g. quantized KV
};

// Bytes per element; 0 for an unknown value.
size_t DTypeSize(DType dtype);
// "float16", "bfloat16", "float32", "float8_e4m3", "float8_e5m2", "uint8".
std::string_view DTypeName(DType dtype);
// Inverse of DTypeName; also accepts "fp16", "half", "bf16", "fp8", "fp32".
absl::StatusOr<DType> ParseDType(std::string_view name);

// The shape of one chunk's KV.
struct KvLayout {
  uint32_t num_layers = 0;         // attention layers held by this shard
  uint32_t num_kv_heads = 0;       // KV heads held by this shard (MLA: 1)
  uint32_t head_size = 0;          // elements per head (MLA: latent + rope dims)
  uint32_t kv_tensors = 2;         // 2 = separate K and V, 1 = MLA (latent only)
  uint32_t tokens_per_block = 16;  // the engine's paged block size, tokens
  DType dtype = DType::kFloat16;

  // InvalidArgument naming the field for zero or absurd values.
  absl::Status Validate() const;
  // Bytes of one token across all layers, K and V.
  size_t BytesPerToken() const;
  // Bytes of one (layer, kv tensor) slab for `num_tokens` tokens.
  size_t TensorBytes(uint32_t num_tokens) const;
};

struct NamespaceOptions {
  std::string model_id;        // e.g. "meta-llama/Llama-3.1-8B-Instruct"
  std::string model_revision;  // commit or tag; empty means unversioned
  KvLayout layout;
  uint32_t tokens_per_chunk = 256;  // multiple of layout.tokens_per_block
  uint32_t tp_rank = 0;             // tensor-parallel rank of this shard
  uint32_t tp_size = 1;             // tensor-parallel world size
  uint32_t pp_rank = 0;             // pipeline-parallel rank
  uint32_t pp_size = 1;             // pipeline-parallel world size
  std::string cache_salt;           // tenant secret; empty for the shared space

  absl::Status Validate() const;
};

// One chunk of a token sequence: its key (the key of its last block), the key
// of the chunk before it (zero for the first), and the tokens it covers.
struct ChunkRef {
  BlockKey key;
  BlockKey parent;
  uint32_t first_token = 0;
  uint32_t num_tokens = 0;
};

class Namespace {
 public:
  // Validates `options` and computes the id and layout signature.
  static absl::StatusOr<Namespace> Create(NamespaceOptions options);

  uint64_t id() const { return id_; }
  // 16 lowercase hex digits of id().
  std::string IdHex() const;
  const NamespaceOptions& options() const { return options_; }
  const KvLayout& layout() const { return options_.layout; }
  uint32_t tokens_per_chunk() const { return options_.tokens_per_chunk; }
  // Hash of the layout fields and tokens_per_chunk; stored in every chunk
  // header so a reader with another layout refuses the bytes.
  uint64_t layout_signature() const { return layout_signature_; }
  // Payload bytes of a chunk holding `num_tokens` tokens.
  size_t PayloadBytes(uint32_t num_tokens) const;
  size_t FullChunkPayloadBytes() const { return PayloadBytes(options_.tokens_per_chunk); }

  // Block keys of every full block of `tokens` (a trailing partial block has
  // no key). `extra`, when not empty, holds one span of extra keys per block.
  absl::StatusOr<std::vector<BlockKey>> BlockKeys(
      absl::Span<const TokenId> tokens,
      absl::Span<const absl::Span<const uint64_t>> extra = {}) const;

  // Splits `tokens` into chunks. Only full chunks are returned unless
  // `include_partial` is set, in which case a trailing run of full blocks
  // shorter than a chunk becomes one last, shorter chunk.
  absl::StatusOr<std::vector<ChunkRef>> Chunks(absl::Span<const TokenId> tokens,
                                               bool include_partial = false) const;

  // Same from the engine's own block hashes, one per engine block, in order.
  absl::StatusOr<std::vector<ChunkRef>> ChunksFromEngineHashes(
      absl::Span<const std::vector<std::byte>> block_hashes, bool include_partial = false) const;

  // The chunk keys of a chunk list, in order (what Cache::Lookup takes).
  static std::vector<BlockKey> Keys(absl::Span<const ChunkRef> chunks);

 private:
  Namespace(NamespaceOptions options, uint64_t id, uint64_t layout_signature)
      : options_(std::move(options)), id_(id), layout_signature_(layout_signature) {}

  absl::StatusOr<std::vector<ChunkRef>> ChunksFromBlockKeys(absl::Span<const BlockKey> block_keys,
                                                            bool include_partial) const;

  NamespaceOptions options_;
  uint64_t id_ = 0;
  uint64_t layout_signature_ = 0;
};

}  // namespace kvtier

#endif  // KVTIER_INCLUDE_KVTIER_NAMESPACE_H_
