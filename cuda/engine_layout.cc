#include "kvtier/engine_layout.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "src/common/status_macros.h"

namespace kvtier {
namespace {

// The same bounds KvLayout::Validate applies; larger values are typos.
constexpr uint32_t kMaxLayers = 1024;
constexpr uint32_t kMaxKvHeads = 1024;
constexpr uint32_t kMaxHeadSize = 65536;
constexpr uint32_t kMaxTokensPerBlock = 65536;
constexpr uint32_t kMaxBlocks = static_cast<uint32_t>(std::numeric_limits<int32_t>::max());
// Bytes of one (layer, kv tensor, block): the kernels index within it in 32 bits.
constexpr uint64_t kMaxBlockBytes = uint64_t{1} << 31;

absl::Status CheckRange(absl::string_view field, uint64_t value, uint64_t lo, uint64_t hi) {
  if (value < lo || value > hi) {
    return absl::InvalidArgumentError(absl::StrCat("engine_layout.", field, " = ", value,
                                                   " is out of range [", lo, ", ", hi, "]"));
  }
  return absl::OkStatus();
}

// One axis of the tensor a base pointer addresses.
struct Axis {
  const char* name;
  int64_t stride;   // elements
  uint64_t extent;  // positions along the axis
};

// The axes addressed from one base pointer (layer included for cross-layer).
std::vector<Axis> Axes(const EngineLayout& l) {
  std::vector<Axis> axes = {
      {"strides.kv", l.strides.kv, l.kv_tensors},
      {"strides.block", l.strides.block, l.num_blocks},
      {"strides.token", l.strides.token, l.tokens_per_block},
      {"strides.head", l.strides.head, l.num_kv_heads},
      {"strides.dim", l.strides.dim, l.head_size},
  };
  if (l.cross_layer_base != nullptr)
    axes.push_back({"strides.layer", l.strides.layer, l.num_layers});
  return axes;
}

EngineLayout Base(std::vector<void*> layer_bases, const EngineShape& s, uint32_t kv_tensors) {
  EngineLayout l;
  l.num_layers = static_cast<uint32_t>(layer_bases.size());
  l.layer_bases = std::move(layer_bases);
  l.dtype = s.dtype;
  l.num_blocks = s.num_blocks;
  l.tokens_per_block = s.tokens_per_block;
  l.num_kv_heads = s.num_kv_heads;
  l.head_size = s.head_size;
  l.kv_tensors = kv_tensors;
  l.strides.dim = 1;
  return l;
}

}  // namespace

EngineLayout EngineLayout::VllmFlashNhd(std::vector<void*> layer_bases, const EngineShape& s) {
  EngineLayout l = Base(std::move(layer_bases), s, 2);
  const int64_t d = s.head_size;
  l.strides.head = d;
  l.strides.token = d * s.num_kv_heads;
  l.strides.block = l.strides.token * s.tokens_per_block;
  l.strides.kv = l.strides.block * s.num_blocks;
  return l;
}

EngineLayout EngineLayout::VllmFlashHnd(std::vector<void*> layer_bases, const EngineShape& s) {
  EngineLayout l = Base(std::move(layer_bases), s, 2);
  const int64_t d = s.head_size;
  l.strides.token = d;
  l.strides.head = d * s.tokens_per_block;
  l.strides.block = l.strides.head * s.num_kv_heads;
  l.strides.kv = l.strides.block * s.num_blocks;
  return l;
}

EngineLayout EngineLayout::FlashInfer(std::vector<void*> layer_bases, const EngineShape& s) {
  EngineLayout l = Base(std::move(layer_bases), s, 2);
  const int64_t d = s.head_size;
  l.strides.head = d;
  l.strides.token = d * s.num_kv_heads;
  l.strides.kv = l.strides.token * s.tokens_per_block;
  l.strides.block = l.strides.kv * 2;
  return l;
}

EngineLayout EngineLayout::FlashInferHnd(std::vector<void*> layer_bases, const EngineShape& s) {
  EngineLayout l = Base(std::move(layer_bases), s, 2);
  const int64_t d = s.head_size;
  l.strides.token = d;
  l.strides.head = d * s.tokens_per_block;
  l.strides.kv = l.strides.head * s.num_kv_heads;
  l.strides.block = l.strides.kv * 2;
  return l;
}

EngineLayout EngineLayout::Mla(std::vector<void*> layer_bases, const EngineShape& s) {
  EngineLayout l = Base(std::move(layer_bases), s, 1);
  const int64_t d = s.head_size;
  // No head axis in the tensor: every head would land on the same elements,
  // which Validate() reports when num_kv_heads > 1.
  l.strides.head = 0;
  l.strides.token = d;
  l.strides.block = d * s.tokens_per_block;
  l.strides.kv = 0;
  return l;
}

EngineLayout EngineLayout::CrossLayer(void* base, uint32_t num_layers, const EngineShape& s) {
  EngineLayout l = Base({}, s, 2);
  l.num_layers = num_layers;
  l.cross_layer_base = base;
  const int64_t d = s.head_size;
  l.strides.head = d;
  l.strides.token = d * s.num_kv_heads;
  l.strides.kv = l.strides.token * s.tokens_per_block;
  l.strides.layer = l.strides.kv * 2;
  l.strides.block = l.strides.layer * num_layers;
  return l;
}

absl::Status EngineLayout::Validate() const {
  if (DTypeSize(dtype) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("engine_layout.dtype = ", static_cast<int>(dtype), " is not a known dtype"));
  }
  KVTIER_RETURN_IF_ERROR(CheckRange("num_layers", num_layers, 1, kMaxLayers));
  KVTIER_RETURN_IF_ERROR(CheckRange("num_blocks", num_blocks, 1, kMaxBlocks));
  KVTIER_RETURN_IF_ERROR(CheckRange("tokens_per_block", tokens_per_block, 1, kMaxTokensPerBlock));
  KVTIER_RETURN_IF_ERROR(CheckRange("num_kv_heads", num_kv_heads, 1, kMaxKvHeads));
  KVTIER_RETURN_IF_ERROR(CheckRange("head_size", head_size, 1, kMaxHeadSize));
  KVTIER_RETURN_IF_ERROR(CheckRange("kv_tensors", kv_tensors, 1, 2));

  if (cross_layer_base != nullptr && !layer_bases.empty()) {
    return absl::InvalidArgumentError(
        "engine_layout.layer_bases and engine_layout.cross_layer_base are both set; set exactly "
        "one");
  }
  if (cross_layer_base == nullptr) {
    if (layer_bases.size() != num_layers) {
      return absl::InvalidArgumentError(absl::StrCat(
          "engine_layout.layer_bases has ", layer_bases.size(), " entries but num_layers = ",
          num_layers, layer_bases.empty() ? " (and cross_layer_base is null)" : ""));
    }
    for (size_t i = 0; i < layer_bases.size(); ++i) {
      if (layer_bases[i] == nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat("engine_layout.layer_bases[", i, "] is null"));
      }
    }
  }

  const uint64_t block_bytes =
      uint64_t{tokens_per_block} * num_kv_heads * head_size * DTypeSize(dtype);
  if (block_bytes >= kMaxBlockBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "engine_layout: tokens_per_block * num_kv_heads * head_size * dtype size = ", block_bytes,
        " bytes per block and tensor; the limit is ", kMaxBlockBytes - 1));
  }

  // Every stride must be non-negative, and no two elements may share an
  // address. Sufficient test: sorted by stride, each axis steps past
  // everything the smaller axes reach.
  std::vector<Axis> axes = Axes(*this);
  for (const Axis& a : axes) {
    if (a.stride < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("engine_layout.", a.name, " = ", a.stride, " is negative"));
    }
  }
  std::erase_if(axes, [](const Axis& a) { return a.extent <= 1; });
  std::sort(axes.begin(), axes.end(),
            [](const Axis& a, const Axis& b) { return a.stride < b.stride; });
  uint64_t reach = 0;  // largest element offset reached by the axes so far
  for (const Axis& a : axes) {
    const uint64_t stride = static_cast<uint64_t>(a.stride);
    if (stride <= reach) {
      return absl::InvalidArgumentError(absl::StrCat(
          "engine_layout.", a.name, " = ", a.stride,
          " makes elements overlap: the axes with smaller strides already reach offset ", reach,
          " elements"));
    }
    uint64_t span = 0;
    if (__builtin_mul_overflow(stride, a.extent - 1, &span) ||
        __builtin_add_overflow(reach, span, &reach) ||
        reach > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / 8) {
      return absl::InvalidArgumentError(
          absl::StrCat("engine_layout.", a.name, " = ", a.stride, " overflows 64-bit offsets"));
    }
  }
  return absl::OkStatus();
}

absl::Status EngineLayout::CheckCompatible(const KvLayout& c) const {
  KVTIER_RETURN_IF_ERROR(Validate());
  auto mismatch = [](absl::string_view field, auto here, auto there) {
    return absl::InvalidArgumentError(
        absl::StrCat("engine layout does not match the chunk layout: ", field, " = ", here,
                     " in the engine, ", there, " in the namespace"));
  };
  if (dtype != c.dtype)
    return mismatch("dtype", std::string(DTypeName(dtype)), std::string(DTypeName(c.dtype)));
  if (num_layers != c.num_layers) return mismatch("num_layers", num_layers, c.num_layers);
  if (num_kv_heads != c.num_kv_heads) return mismatch("num_kv_heads", num_kv_heads, c.num_kv_heads);
  if (head_size != c.head_size) return mismatch("head_size", head_size, c.head_size);
  if (kv_tensors != c.kv_tensors) return mismatch("kv_tensors", kv_tensors, c.kv_tensors);
  if (tokens_per_block != c.tokens_per_block) {
    return mismatch("tokens_per_block", tokens_per_block, c.tokens_per_block);
  }
  return absl::OkStatus();
}

absl::Status EngineLayout::CheckCompatible(const Namespace& ns) const {
  return CheckCompatible(ns.layout());
}

KvLayout EngineLayout::ChunkLayout() const {
  KvLayout c;
  c.num_layers = num_layers;
  c.num_kv_heads = num_kv_heads;
  c.head_size = head_size;
  c.kv_tensors = kv_tensors;
  c.tokens_per_block = tokens_per_block;
  c.dtype = dtype;
  return c;
}

size_t EngineLayout::TensorBytes(uint32_t num_tokens) const {
  return static_cast<size_t>(num_tokens) * num_kv_heads * head_size * DTypeSize(dtype);
}

size_t EngineLayout::LayerPayloadBytes(uint32_t num_tokens) const {
  return TensorBytes(num_tokens) * kv_tensors;
}

size_t EngineLayout::PayloadBytes(uint32_t num_tokens) const {
  return LayerPayloadBytes(num_tokens) * num_layers;
}

size_t EngineLayout::TensorSpanBytes() const {
  uint64_t last = 0;
  for (const Axis& a : Axes(*this)) {
    if (a.extent > 1) last += static_cast<uint64_t>(a.stride) * (a.extent - 1);
  }
  return static_cast<size_t>((last + 1) * DTypeSize(dtype));
}

std::byte* EngineLayout::LayerBase(uint32_t layer) const {
  if (cross_layer_base != nullptr) {
    return static_cast<std::byte*>(cross_layer_base) +
           static_cast<int64_t>(layer) * strides.layer * static_cast<int64_t>(DTypeSize(dtype));
  }
  return static_cast<std::byte*>(layer_bases[layer]);
}

}  // namespace kvtier
