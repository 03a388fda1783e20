// Test helpers for the KV copy tests: engine pools of every supported layout
// in host memory, random contents, and a naive element-by-element reference
// gather/scatter written straight from the address formula in
// engine_layout.h (it shares no code with cuda/kv_copy.cc).
#ifndef KVTIER_TESTS_UNIT_CUDA_KV_REFERENCE_H_
#define KVTIER_TESTS_UNIT_CUDA_KV_REFERENCE_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "kvtier/engine_layout.h"
#include "kvtier/namespace.h"

namespace kvtier::testing {

enum class PoolKind {
  kFlashNhd,       // vLLM flash [2, nb, bs, H, D]
  kFlashHnd,       // vLLM flash [2, nb, H, bs, D]
  kFlashInfer,     // [nb, 2, bs, H, D]
  kFlashInferHnd,  // [nb, 2, H, bs, D]
  kMla,            // [nb, bs, D]
  kCrossLayer,     // [nb, L, 2, bs, H, D]
  kPaddedRows,     // NHD with padding after every token row and block
  kDimMajor,       // [2, nb, bs, D, H]: elements of a head are not adjacent
};

inline std::string PoolKindName(PoolKind k) {
  switch (k) {
    case PoolKind::kFlashNhd:
      return "FlashNhd";
    case PoolKind::kFlashHnd:
      return "FlashHnd";
    case PoolKind::kFlashInfer:
      return "FlashInfer";
    case PoolKind::kFlashInferHnd:
      return "FlashInferHnd";
    case PoolKind::kMla:
      return "Mla";
    case PoolKind::kCrossLayer:
      return "CrossLayer";
    case PoolKind::kPaddedRows:
      return "PaddedRows";
    case PoolKind::kDimMajor:
      return "DimMajor";
  }
  return "Unknown";
}

inline constexpr PoolKind kAllPoolKinds[] = {
    PoolKind::kFlashNhd, PoolKind::kFlashHnd,   PoolKind::kFlashInfer, PoolKind::kFlashInferHnd,
    PoolKind::kMla,      PoolKind::kCrossLayer, PoolKind::kPaddedRows, PoolKind::kDimMajor,
};

// Row-major strides of a tensor of shape `dims`, in elements.
inline std::vector<int64_t> ContiguousStrides(const std::vector<int64_t>& dims) {
  std::vector<int64_t> s(dims.size(), 1);
  for (size_t i = dims.size() - 1; i > 0; --i) s[i - 1] = s[i] * dims[i];
  return s;
}

// Elements of one base pointer's tensor, from its physical shape.
inline uint64_t PhysicalElements(PoolKind kind, uint32_t layers, const EngineShape& s) {
  const uint64_t nb = s.num_blocks, bs = s.tokens_per_block, h = s.num_kv_heads, d = s.head_size;
  switch (kind) {
    case PoolKind::kMla:
      return nb * bs * d;
    case PoolKind::kCrossLayer:
      return nb * layers * 2 * bs * h * d;
    case PoolKind::kPaddedRows:
      // kv stride = nb * block stride; block stride = bs * (h*d + 4) + 12.
      return 2 * nb * (bs * (h * d + 4) + 12);
    default:
      return 2 * nb * bs * h * d;
  }
}

// The layout of `kind` over `bases` (one per layer, or one for kCrossLayer).
inline EngineLayout MakeLayout(PoolKind kind, std::vector<void*> bases, uint32_t layers,
                               const EngineShape& s) {
  switch (kind) {
    case PoolKind::kFlashNhd:
      return EngineLayout::VllmFlashNhd(std::move(bases), s);
    case PoolKind::kFlashHnd:
      return EngineLayout::VllmFlashHnd(std::move(bases), s);
    case PoolKind::kFlashInfer:
      return EngineLayout::FlashInfer(std::move(bases), s);
    case PoolKind::kFlashInferHnd:
      return EngineLayout::FlashInferHnd(std::move(bases), s);
    case PoolKind::kMla:
      return EngineLayout::Mla(std::move(bases), s);
    case PoolKind::kCrossLayer:
      return EngineLayout::CrossLayer(bases.at(0), layers, s);
    case PoolKind::kPaddedRows: {
      EngineLayout l = EngineLayout::VllmFlashNhd(std::move(bases), s);
      l.strides.token = int64_t{s.num_kv_heads} * s.head_size + 4;
      l.strides.block = l.strides.token * s.tokens_per_block + 12;
      l.strides.kv = l.strides.block * s.num_blocks;
      return l;
    }
    case PoolKind::kDimMajor: {
      EngineLayout l = EngineLayout::VllmFlashNhd(std::move(bases), s);
      const std::vector<int64_t> st =
          ContiguousStrides({2, s.num_blocks, s.tokens_per_block, s.head_size, s.num_kv_heads});
      l.strides.kv = st[0];
      l.strides.block = st[1];
      l.strides.token = st[2];
      l.strides.dim = st[3];
      l.strides.head = st[4];
      return l;
    }
  }
  return {};
}

// splitmix64: fast, deterministic bytes.
inline void FillRandom(std::byte* p, size_t n, uint64_t seed) {
  uint64_t x = seed;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    x += 0x9E3779B97F4A7C15ull;
    uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    std::memcpy(p + i, &z, 8);
  }
  for (; i < n; ++i) p[i] = static_cast<std::byte>((seed + i) * 131);
}

// A pool of `kind` in host memory with random contents. Copies own their
// bytes and describe them (the layout follows the storage).
class HostPool {
 public:
  HostPool(PoolKind kind, uint32_t layers, const EngineShape& shape, uint64_t seed)
      : kind_(kind), layers_(layers), shape_(shape) {
    const size_t bytes = PhysicalElements(kind, layers, shape) * DTypeSize(shape.dtype);
    storage_.resize(kind == PoolKind::kCrossLayer ? 1 : layers);
    for (size_t i = 0; i < storage_.size(); ++i) {
      storage_[i].resize(bytes);
      FillRandom(storage_[i].data(), bytes, seed * 1000 + i);
    }
    Describe();
  }
  HostPool(const HostPool& other)
      : kind_(other.kind_), layers_(other.layers_), shape_(other.shape_), storage_(other.storage_) {
    Describe();
  }
  HostPool& operator=(const HostPool&) = delete;

  const EngineLayout& layout() const { return layout_; }
  const EngineShape& shape() const { return shape_; }
  PoolKind kind() const { return kind_; }
  std::vector<std::vector<std::byte>>& storage() { return storage_; }
  const std::vector<std::vector<std::byte>>& storage() const { return storage_; }
  size_t tensor_bytes() const { return storage_[0].size(); }

  // Overwrites the whole pool with new random bytes.
  void Refill(uint64_t seed) {
    for (size_t i = 0; i < storage_.size(); ++i) {
      FillRandom(storage_[i].data(), storage_[i].size(), seed * 1000 + i);
    }
  }

 private:
  void Describe() {
    std::vector<void*> bases;
    for (auto& s : storage_) bases.push_back(s.data());
    layout_ = MakeLayout(kind_, std::move(bases), layers_, shape_);
  }

  PoolKind kind_;
  uint32_t layers_;
  EngineShape shape_;
  std::vector<std::vector<std::byte>> storage_;
  EngineLayout layout_;
};

// The address of one element, straight from engine_layout.h's formula.
inline std::byte* RefElement(const EngineLayout& l, uint32_t layer, uint32_t kv, int32_t block,
                             uint32_t token, uint32_t head, uint32_t dim) {
  const int64_t es = static_cast<int64_t>(DTypeSize(l.dtype));
  std::byte* base = l.cross_layer_base != nullptr
                        ? static_cast<std::byte*>(l.cross_layer_base) + layer * l.strides.layer * es
                        : static_cast<std::byte*>(l.layer_bases[layer]);
  return base + es * (kv * l.strides.kv + block * l.strides.block + token * l.strides.token +
                      head * l.strides.head + dim * l.strides.dim);
}

// Offset of one element in a chunk payload (namespace.h's layout).
inline size_t RefChunkOffset(const EngineLayout& l, uint32_t num_tokens, uint32_t layer,
                             uint32_t kv, uint32_t token, uint32_t head, uint32_t dim) {
  const size_t es = DTypeSize(l.dtype);
  return ((((size_t{layer} * l.kv_tensors + kv) * num_tokens + token) * l.num_kv_heads + head) *
              l.head_size +
          dim) *
         es;
}

// Element-by-element gather (to_chunk) or scatter of layers
// [first_layer, last_layer).
inline void RefCopy(const EngineLayout& l, const std::vector<int32_t>& ids, uint32_t num_tokens,
                    std::byte* payload, bool to_chunk, uint32_t first_layer, uint32_t last_layer) {
  const size_t es = DTypeSize(l.dtype);
  for (uint32_t layer = first_layer; layer < last_layer; ++layer) {
    for (uint32_t kv = 0; kv < l.kv_tensors; ++kv) {
      for (uint32_t t = 0; t < num_tokens; ++t) {
        const int32_t block = ids[t / l.tokens_per_block];
        const uint32_t pos = t % l.tokens_per_block;
        for (uint32_t h = 0; h < l.num_kv_heads; ++h) {
          for (uint32_t d = 0; d < l.head_size; ++d) {
            std::byte* e = RefElement(l, layer, kv, block, pos, h, d);
            std::byte* c = payload + RefChunkOffset(l, num_tokens, layer, kv, t, h, d);
            if (to_chunk) {
              std::memcpy(c, e, es);
            } else {
              std::memcpy(e, c, es);
            }
          }
        }
      }
    }
  }
}

inline std::vector<std::byte> RefGather(const EngineLayout& l, const std::vector<int32_t>& ids,
                                        uint32_t num_tokens) {
  std::vector<std::byte> out(l.PayloadBytes(num_tokens));
  RefCopy(l, ids, num_tokens, out.data(), true, 0, l.num_layers);
  return out;
}

// `count` distinct block ids drawn from [0, num_blocks), in random order.
inline std::vector<int32_t> RandomBlockIds(uint32_t num_blocks, uint32_t count, uint64_t seed) {
  std::vector<int32_t> all(num_blocks);
  std::iota(all.begin(), all.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(count);
  return all;
}

// Index of the first differing byte, or -1 when equal.
inline int64_t FirstDifference(const std::byte* a, const std::byte* b, size_t n) {
  if (std::memcmp(a, b, n) == 0) return -1;
  for (size_t i = 0; i < n; ++i) {
    if (a[i] != b[i]) return static_cast<int64_t>(i);
  }
  return -1;
}

// Why a GPU test skips, from DeviceRuntime::Create(kCuda)'s failure: always
// starting "no CUDA device visible" (the failure says it, or the build has no
// CUDA at all).
inline std::string NoCudaReason(const absl::Status& failure) {
  const std::string why(failure.message());
  return absl::StartsWith(why, "no CUDA device visible") ? why : "no CUDA device visible: " + why;
}

}  // namespace kvtier::testing

#endif  // KVTIER_TESTS_UNIT_CUDA_KV_REFERENCE_H_
