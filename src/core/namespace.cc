#include "kvtier/namespace.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "src/common/bytes.h"
#include "src/common/status_macros.h"
#include "src/core/hash.h"

namespace kvtier {
namespace {

// Upper bounds that no real model reaches; larger values are typos.
constexpr uint32_t kMaxLayers = 1024;
constexpr uint32_t kMaxKvHeads = 1024;
constexpr uint32_t kMaxHeadSize = 65536;
constexpr uint32_t kMaxTokensPerBlock = 65536;
constexpr uint32_t kMaxTokensPerChunk = 1u << 20;
constexpr size_t kMaxIdLength = 4096;

void AppendString(std::string& out, std::string_view s) {
  AppendLE<uint32_t>(out, static_cast<uint32_t>(s.size()));
  out.append(s);
}

void AppendLayout(std::string& out, const KvLayout& l, uint32_t tokens_per_chunk) {
  AppendLE<uint32_t>(out, l.num_layers);
  AppendLE<uint32_t>(out, l.num_kv_heads);
  AppendLE<uint32_t>(out, l.head_size);
  AppendLE<uint32_t>(out, l.kv_tensors);
  AppendLE<uint32_t>(out, l.tokens_per_block);
  AppendLE<uint8_t>(out, static_cast<uint8_t>(l.dtype));
  AppendLE<uint32_t>(out, tokens_per_chunk);
}

absl::Status CheckRange(absl::string_view field, uint64_t value, uint64_t lo, uint64_t hi) {
  if (value < lo || value > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " = ", value, " is out of range [", lo, ", ", hi, "]"));
  }
  return absl::OkStatus();
}

}  // namespace

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kFloat16:
    case DType::kBFloat16:
      return 2;
    case DType::kFloat32:
      return 4;
    case DType::kFloat8E4M3:
    case DType::kFloat8E5M2:
    case DType::kUInt8:
      return 1;
  }
  return 0;
}

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat16:
      return "float16";
    case DType::kBFloat16:
      return "bfloat16";
    case DType::kFloat32:
      return "float32";
    case DType::kFloat8E4M3:
      return "float8_e4m3";
    case DType::kFloat8E5M2:
      return "float8_e5m2";
    case DType::kUInt8:
      return "uint8";
  }
  return "unknown";
}

absl::StatusOr<DType> ParseDType(std::string_view name) {
  std::string n = absl::AsciiStrToLower(absl::string_view(name.data(), name.size()));
  if (n == "float16" || n == "fp16" || n == "half") return DType::kFloat16;
  if (n == "bfloat16" || n == "bf16") return DType::kBFloat16;
  if (n == "float32" || n == "fp32" || n == "float") return DType::kFloat32;
  if (n == "float8_e4m3" || n == "float8_e4m3fn" || n == "fp8" || n == "fp8_e4m3") {
    return DType::kFloat8E4M3;
  }
  if (n == "float8_e5m2" || n == "fp8_e5m2") return DType::kFloat8E5M2;
  if (n == "uint8" || n == "int8") return DType::kUInt8;
  return absl::InvalidArgumentError(absl::StrCat("dtype: unknown value '", std::string(name), "'"));
}

absl::Status KvLayout::Validate() const {
  KVTIER_RETURN_IF_ERROR(CheckRange("layout.num_layers", num_layers, 1, kMaxLayers));
  KVTIER_RETURN_IF_ERROR(CheckRange("layout.num_kv_heads", num_kv_heads, 1, kMaxKvHeads));
  KVTIER_RETURN_IF_ERROR(CheckRange("layout.head_size", head_size, 1, kMaxHeadSize));
  KVTIER_RETURN_IF_ERROR(CheckRange("layout.kv_tensors", kv_tensors, 1, 2));
  KVTIER_RETURN_IF_ERROR(
      CheckRange("layout.tokens_per_block", tokens_per_block, 1, kMaxTokensPerBlock));
  if (DTypeSize(dtype) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("layout.dtype = ", static_cast<int>(dtype), " is not a known dtype"));
  }
  return absl::OkStatus();
}

size_t KvLayout::BytesPerToken() const {
  return static_cast<size_t>(num_layers) * kv_tensors * num_kv_heads * head_size * DTypeSize(dtype);
}

size_t KvLayout::TensorBytes(uint32_t num_tokens) const {
  return static_cast<size_t>(num_tokens) * num_kv_heads * head_size * DTypeSize(dtype);
}

absl::Status NamespaceOptions::Validate() const {
  if (model_id.empty()) return absl::InvalidArgumentError("model_id: must not be empty");
  if (model_id.size() > kMaxIdLength || model_revision.size() > kMaxIdLength ||
      cache_salt.size() > kMaxIdLength) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model_id, model_revision and cache_salt must be at most ", kMaxIdLength, " bytes"));
  }
  KVTIER_RETURN_IF_ERROR(layout.Validate());
  KVTIER_RETURN_IF_ERROR(CheckRange("tokens_per_chunk", tokens_per_chunk, 1, kMaxTokensPerChunk));
  if (tokens_per_chunk % layout.tokens_per_block != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokens_per_chunk = ", tokens_per_chunk,
                     " is not a multiple of layout.tokens_per_block = ", layout.tokens_per_block));
  }
  if (tp_size == 0 || tp_rank >= tp_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("tp_rank = ", tp_rank, " must be below tp_size = ", tp_size));
  }
  if (pp_size == 0 || pp_rank >= pp_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("pp_rank = ", pp_rank, " must be below pp_size = ", pp_size));
  }
  return absl::OkStatus();
}

absl::StatusOr<Namespace> Namespace::Create(NamespaceOptions options) {
  KVTIER_RETURN_IF_ERROR(options.Validate());
  // Canonical encoding, versioned by its leading tag; changing it changes
  // every id, so it is pinned by test vectors.
  std::string buf = "kvtier.namespace.v1";
  AppendString(buf, options.model_id);
  AppendString(buf, options.model_revision);
  AppendLayout(buf, options.layout, options.tokens_per_chunk);
  AppendLE<uint32_t>(buf, options.tp_rank);
  AppendLE<uint32_t>(buf, options.tp_size);
  AppendLE<uint32_t>(buf, options.pp_rank);
  AppendLE<uint32_t>(buf, options.pp_size);
  AppendString(buf, options.cache_salt);
  uint64_t id = Xxh3_64(AsBytes(buf));

  std::string sig = "kvtier.layout.v1";
  AppendLayout(sig, options.layout, options.tokens_per_chunk);
  uint64_t signature = Xxh3_64(AsBytes(sig));
  return Namespace(std::move(options), id, signature);
}

std::string Namespace::IdHex() const { return absl::StrFormat("%016x", id_); }

size_t Namespace::PayloadBytes(uint32_t num_tokens) const {
  return static_cast<size_t>(num_tokens) * options_.layout.BytesPerToken();
}

absl::StatusOr<std::vector<BlockKey>> Namespace::BlockKeys(
    absl::Span<const TokenId> tokens, absl::Span<const absl::Span<const uint64_t>> extra) const {
  const size_t bs = options_.layout.tokens_per_block;
  const size_t num_blocks = tokens.size() / bs;
  if (!extra.empty() && extra.size() < num_blocks) {
    return absl::InvalidArgumentError(absl::StrCat(
        "extra: has ", extra.size(), " entries, want one per block (", num_blocks, ")"));
  }
  std::vector<BlockKey> keys;
  keys.reserve(num_blocks);
  BlockKey parent;
  for (size_t b = 0; b < num_blocks; ++b) {
    absl::Span<const uint64_t> e = extra.empty() ? absl::Span<const uint64_t>() : extra[b];
    parent = HashBlock(id_, parent, tokens.subspan(b * bs, bs), e);
    keys.push_back(parent);
  }
  return keys;
}

absl::StatusOr<std::vector<ChunkRef>> Namespace::ChunksFromBlockKeys(
    absl::Span<const BlockKey> block_keys, bool include_partial) const {
  const uint32_t bs = options_.layout.tokens_per_block;
  const size_t blocks_per_chunk = options_.tokens_per_chunk / bs;
  std::vector<ChunkRef> chunks;
  chunks.reserve(block_keys.size() / blocks_per_chunk + 1);
  BlockKey parent;
  for (size_t first = 0; first < block_keys.size(); first += blocks_per_chunk) {
    size_t n = std::min(blocks_per_chunk, block_keys.size() - first);
    if (n < blocks_per_chunk && !include_partial) break;
    ChunkRef c;
    c.key = block_keys[first + n - 1];
    c.parent = parent;
    c.first_token = static_cast<uint32_t>(first * bs);
    c.num_tokens = static_cast<uint32_t>(n * bs);
    chunks.push_back(c);
    parent = c.key;
  }
  return chunks;
}

absl::StatusOr<std::vector<ChunkRef>> Namespace::Chunks(absl::Span<const TokenId> tokens,
                                                        bool include_partial) const {
  if (tokens.size() > UINT32_MAX) {
    return absl::InvalidArgumentError("tokens: more than 2^32 tokens");
  }
  KVTIER_ASSIGN_OR_RETURN(std::vector<BlockKey> keys, BlockKeys(tokens));
  return ChunksFromBlockKeys(keys, include_partial);
}

absl::StatusOr<std::vector<ChunkRef>> Namespace::ChunksFromEngineHashes(
    absl::Span<const std::vector<std::byte>> block_hashes, bool include_partial) const {
  std::vector<BlockKey> keys;
  keys.reserve(block_hashes.size());
  for (size_t i = 0; i < block_hashes.size(); ++i) {
    if (block_hashes[i].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("block_hashes[", i, "]: empty hash"));
    }
    keys.push_back(KeyFromEngineHash(id_, block_hashes[i]));
  }
  return ChunksFromBlockKeys(keys, include_partial);
}

std::vector<BlockKey> Namespace::Keys(absl::Span<const ChunkRef> chunks) {
  std::vector<BlockKey> keys;
  keys.reserve(chunks.size());
  for (const ChunkRef& c : chunks) keys.push_back(c.key);
  return keys;
}

}  // namespace kvtier
