// `kvtier bench gpu`: gather and scatter of engine KV blocks beside one
// contiguous copy of the same bytes (the PCIe ceiling on a GPU, memcpy on the
// CPU path) and beside one copy per (layer, K/V, block).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cuda/device_runtime.h"
#include "kvtier/engine_layout.h"
#include "src/cli/bench.h"
#include "src/cli/report.h"

namespace kvtier::cli {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint32_t kBlockTokens = 16;
constexpr uint32_t kChunkTokens = 256;
constexpr uint32_t kBlocksPerChunk = kChunkTokens / kBlockTokens;
constexpr double kTarget = 0.9;

struct Model {
  const char* name;
  uint32_t layers;
  uint32_t kv_heads;
  uint32_t head_size;
};

constexpr Model kModels[] = {
    {"llama3-8b", 32, 8, 128},
    {"llama3-70b", 80, 8, 128},
    {"llama3-70b-tp8", 80, 1, 128},  // one tensor-parallel shard of eight
};

// Memory of one runtime, freed on destruction.
class Allocation {
 public:
  Allocation(DeviceRuntime* rt, bool pinned) : rt_(rt), pinned_(pinned) {}
  ~Allocation() {
    if (ptr_ != nullptr) (void)(pinned_ ? rt_->FreePinned(ptr_) : rt_->FreeDevice(ptr_));
  }
  Allocation(const Allocation&) = delete;
  Allocation& operator=(const Allocation&) = delete;

  absl::Status Allocate(size_t bytes) {
    absl::StatusOr<void*> p = pinned_ ? rt_->AllocPinned(bytes) : rt_->AllocDevice(bytes);
    if (!p.ok()) return p.status();
    ptr_ = static_cast<std::byte*>(*p);
    return absl::OkStatus();
  }
  std::byte* get() const { return ptr_; }

 private:
  DeviceRuntime* rt_;
  bool pinned_;
  std::byte* ptr_ = nullptr;
};

struct Row {
  std::string model;
  uint32_t layers = 0, kv_heads = 0, head_size = 0, chunks = 0;
  uint64_t bytes = 0;  // moved per operation
  // Medians over repetitions, bytes per second.
  double ceiling_out = 0, gather = 0, direct_out = 0, per_copy_out = 0;
  double ceiling_in = 0, scatter = 0, direct_in = 0, per_copy_in = 0;
  // Medians of the per-repetition ratios to the ceiling.
  double gather_ratio = 0, direct_out_ratio = 0, per_copy_out_ratio = 0;
  double scatter_ratio = 0, direct_in_ratio = 0, per_copy_in_ratio = 0;
};

std::vector<double> Ratios(const std::vector<double>& a, const std::vector<double>& b) {
  std::vector<double> r;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) r.push_back(a[i] / b[i]);
  return r;
}

// Runs `op` (enqueue work on `stream`), waits for the stream, and returns
// bytes per second.
template <typename Op>
absl::StatusOr<double> Time(DeviceRuntime& rt, DeviceStream stream, uint64_t bytes, Op op) {
  const auto t0 = Clock::now();
  if (absl::Status s = op(); !s.ok()) return s;
  if (absl::Status s = rt.SynchronizeStream(stream); !s.ok()) return s;
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return static_cast<double>(bytes) / seconds;
}

absl::StatusOr<Row> RunModel(DeviceRuntime& rt, DeviceStream stream, const Model& m,
                             uint32_t chunks, int64_t reps) {
  const uint32_t pool_blocks = 2 * chunks * kBlocksPerChunk;
  const EngineShape shape{.num_blocks = pool_blocks,
                          .tokens_per_block = kBlockTokens,
                          .num_kv_heads = m.kv_heads,
                          .head_size = m.head_size,
                          .dtype = DType::kBFloat16};
  // vLLM-style pool: one [2, blocks, 16, heads, 128] tensor per layer.
  std::vector<std::unique_ptr<Allocation>> layers;
  std::vector<void*> bases;
  const EngineLayout probe = EngineLayout::VllmFlashNhd(
      std::vector<void*>(m.layers, reinterpret_cast<void*>(uintptr_t{256})), shape);
  const size_t layer_bytes = probe.TensorSpanBytes();
  std::vector<std::byte> pattern(layer_bytes);
  for (size_t i = 0; i < pattern.size(); ++i) pattern[i] = static_cast<std::byte>(i * 131 + 7);
  for (uint32_t l = 0; l < m.layers; ++l) {
    layers.push_back(std::make_unique<Allocation>(&rt, false));
    if (absl::Status s = layers.back()->Allocate(layer_bytes); !s.ok()) return s;
    if (absl::Status s = rt.Memcpy(layers.back()->get(), pattern.data(), layer_bytes, stream);
        !s.ok()) {
      return s;
    }
    bases.push_back(layers.back()->get());
  }
  if (absl::Status s = rt.SynchronizeStream(stream); !s.ok()) return s;
  pattern = {};
  const EngineLayout layout = EngineLayout::VllmFlashNhd(bases, shape);
  absl::StatusOr<std::unique_ptr<KvCopier>> copier = rt.CreateKvCopier(layout);
  if (!copier.ok()) return copier.status();
  // The same kernels reading and writing pinned host memory directly.
  absl::StatusOr<std::unique_ptr<KvCopier>> direct =
      rt.CreateKvCopier(layout, KvCopierOptions{.host_staging_bytes = 0});
  if (!direct.ok()) return direct.status();

  // Chunks take random distinct blocks, as an engine's free list hands out.
  std::vector<int32_t> ids(pool_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::mt19937_64 rng(42);
  std::shuffle(ids.begin(), ids.end(), rng);
  const size_t chunk_bytes = layout.PayloadBytes(kChunkTokens);
  const uint64_t total = uint64_t{chunk_bytes} * chunks;
  Allocation payload(&rt, true), contiguous(&rt, false);
  if (absl::Status s = payload.Allocate(total); !s.ok()) return s;
  if (absl::Status s = contiguous.Allocate(total); !s.ok()) return s;
  std::vector<ChunkTransfer> batch;
  for (uint32_t c = 0; c < chunks; ++c) {
    batch.push_back({absl::MakeConstSpan(ids).subspan(size_t{c} * kBlocksPerChunk, kBlocksPerChunk),
                     kChunkTokens, payload.get() + size_t{c} * chunk_bytes, chunk_bytes});
  }

  // One copy per (layer, K/V, block): an NHD block of one tensor is
  // contiguous on both sides.
  const size_t block_bytes = layout.TensorBytes(kBlockTokens);
  const size_t es = layout.ElementBytes();
  auto per_copy = [&](bool out) -> absl::Status {
    for (uint32_t c = 0; c < chunks; ++c) {
      std::byte* chunk = payload.get() + size_t{c} * chunk_bytes;
      for (uint32_t l = 0; l < m.layers; ++l) {
        for (uint32_t kv = 0; kv < 2; ++kv) {
          std::byte* slab = chunk + (size_t{l} * 2 + kv) * layout.TensorBytes(kChunkTokens);
          for (uint32_t b = 0; b < kBlocksPerChunk; ++b) {
            std::byte* engine =
                layout.LayerBase(l) +
                es * (kv * layout.strides.kv + batch[c].block_ids[b] * layout.strides.block);
            std::byte* host = slab + size_t{b} * block_bytes;
            absl::Status s = out ? rt.Memcpy(host, engine, block_bytes, stream)
                                 : rt.Memcpy(engine, host, block_bytes, stream);
            if (!s.ok()) return s;
          }
        }
      }
    }
    return absl::OkStatus();
  };

  std::vector<double> ceiling_out, gather, dir_out, per_out, ceiling_in, scatter, dir_in, per_in;
  for (int64_t r = -1; r < reps; ++r) {  // repetition -1 warms up and is dropped
    absl::StatusOr<double> a = Time(rt, stream, total, [&] {
      return rt.Memcpy(payload.get(), contiguous.get(), total, stream);
    });
    absl::StatusOr<double> g =
        Time(rt, stream, total, [&] { return (*copier)->Gather(batch, stream); });
    absl::StatusOr<double> so =
        Time(rt, stream, total, [&] { return (*direct)->Gather(batch, stream); });
    absl::StatusOr<double> p = Time(rt, stream, total, [&] { return per_copy(true); });
    absl::StatusOr<double> b = Time(rt, stream, total, [&] {
      return rt.Memcpy(contiguous.get(), payload.get(), total, stream);
    });
    absl::StatusOr<double> s =
        Time(rt, stream, total, [&] { return (*copier)->Scatter(batch, stream); });
    absl::StatusOr<double> si =
        Time(rt, stream, total, [&] { return (*direct)->Scatter(batch, stream); });
    absl::StatusOr<double> q = Time(rt, stream, total, [&] { return per_copy(false); });
    for (const auto* x : {&a, &g, &so, &p, &b, &s, &si, &q}) {
      if (!x->ok()) return x->status();
    }
    if (r < 0) continue;
    ceiling_out.push_back(*a);
    gather.push_back(*g);
    dir_out.push_back(*so);
    per_out.push_back(*p);
    ceiling_in.push_back(*b);
    scatter.push_back(*s);
    dir_in.push_back(*si);
    per_in.push_back(*q);
  }

  Row row;
  row.model = m.name;
  row.layers = m.layers;
  row.kv_heads = m.kv_heads;
  row.head_size = m.head_size;
  row.chunks = chunks;
  row.bytes = total;
  row.ceiling_out = Median(ceiling_out);
  row.gather = Median(gather);
  row.direct_out = Median(dir_out);
  row.per_copy_out = Median(per_out);
  row.ceiling_in = Median(ceiling_in);
  row.scatter = Median(scatter);
  row.direct_in = Median(dir_in);
  row.per_copy_in = Median(per_in);
  row.gather_ratio = Median(Ratios(gather, ceiling_out));
  row.direct_out_ratio = Median(Ratios(dir_out, ceiling_out));
  row.per_copy_out_ratio = Median(Ratios(per_out, ceiling_out));
  row.scatter_ratio = Median(Ratios(scatter, ceiling_in));
  row.direct_in_ratio = Median(Ratios(dir_in, ceiling_in));
  row.per_copy_in_ratio = Median(Ratios(per_in, ceiling_in));
  return row;
}

}  // namespace

int RunGpuBench(Flags& flags) {
  const bool json = flags.Bool("json");
  const std::string device = flags.String("device", "auto");
  const std::string models = flags.String("models", "llama3-8b,llama3-70b,llama3-70b-tp8");
  int64_t chunks = flags.Int("chunks", 0);
  int64_t reps = flags.Int("reps", 0);
  if (absl::Status s = flags.Finish(); !s.ok()) {
    std::fprintf(stderr, "kvtier bench gpu: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  DeviceRuntimeOptions o;
  if (device == "cpu") {
    o.kind = DeviceRuntimeOptions::Kind::kCpu;
  } else if (device == "cuda") {
    o.kind = DeviceRuntimeOptions::Kind::kCuda;
  } else if (device != "auto") {
    std::fprintf(stderr, "kvtier bench gpu: --device must be auto, cpu or cuda (got '%s')\n",
                 device.c_str());
    return 2;
  }
  std::vector<Model> selected;
  for (absl::string_view name : absl::StrSplit(models, ',', absl::SkipEmpty())) {
    auto it = std::find_if(std::begin(kModels), std::end(kModels),
                           [&](const Model& m) { return name == m.name; });
    if (it == std::end(kModels)) {
      std::fprintf(stderr, "kvtier bench gpu: --models: unknown model '%s'\n",
                   std::string(name).c_str());
      return 2;
    }
    selected.push_back(*it);
  }
  absl::StatusOr<std::unique_ptr<DeviceRuntime>> rt = DeviceRuntime::Create(o);
  if (!rt.ok()) {
    std::fprintf(stderr, "kvtier bench gpu: %s\n", rt.status().ToString().c_str());
    return 1;
  }
  const bool gpu = (*rt)->IsGpu();
  if (chunks <= 0) chunks = gpu ? 8 : 1;
  if (reps <= 0) reps = gpu ? 10 : 15;
  if (chunks > 64) {
    std::fprintf(stderr, "kvtier bench gpu: --chunks must be at most 64\n");
    return 2;
  }
  absl::StatusOr<DeviceStream> stream = (*rt)->CreateStream();
  if (!stream.ok()) {
    std::fprintf(stderr, "kvtier bench gpu: %s\n", stream.status().ToString().c_str());
    return 1;
  }

  std::vector<Row> rows;
  for (const Model& m : selected) {
    absl::StatusOr<Row> row = RunModel(**rt, *stream, m, static_cast<uint32_t>(chunks), reps);
    if (!row.ok()) {
      std::fprintf(stderr, "kvtier bench gpu: %s: %s\n", m.name, row.status().ToString().c_str());
      (void)(*rt)->DestroyStream(*stream);
      return 1;
    }
    rows.push_back(*row);
  }
  (void)(*rt)->DestroyStream(*stream);

  double worst_gather = 1e9, worst_scatter = 1e9;
  for (const Row& r : rows) {
    worst_gather = std::min(worst_gather, r.gather_ratio);
    worst_scatter = std::min(worst_scatter, r.scatter_ratio);
  }
  const char* reference = gpu ? "cudaMemcpyAsync" : "memcpy";

  if (json) {
    Json results = Json::Array();
    for (const Row& r : rows) {
      results.Push(Json::Object()
                       .Set("model", r.model)
                       .Set("layers", static_cast<uint64_t>(r.layers))
                       .Set("kv_heads", static_cast<uint64_t>(r.kv_heads))
                       .Set("head_size", static_cast<uint64_t>(r.head_size))
                       .Set("dtype", "bfloat16")
                       .Set("tokens_per_block", static_cast<uint64_t>(kBlockTokens))
                       .Set("chunk_tokens", static_cast<uint64_t>(kChunkTokens))
                       .Set("chunks", static_cast<uint64_t>(r.chunks))
                       .Set("bytes", r.bytes)
                       .Set("ceiling_d2h_gbps", r.ceiling_out / 1e9)
                       .Set("gather_gbps", r.gather / 1e9)
                       .Set("gather_ratio", r.gather_ratio)
                       .Set("direct_gather_gbps", r.direct_out / 1e9)
                       .Set("direct_gather_ratio", r.direct_out_ratio)
                       .Set("per_block_copy_d2h_gbps", r.per_copy_out / 1e9)
                       .Set("per_block_copy_d2h_ratio", r.per_copy_out_ratio)
                       .Set("ceiling_h2d_gbps", r.ceiling_in / 1e9)
                       .Set("scatter_gbps", r.scatter / 1e9)
                       .Set("scatter_ratio", r.scatter_ratio)
                       .Set("direct_scatter_gbps", r.direct_in / 1e9)
                       .Set("direct_scatter_ratio", r.direct_in_ratio)
                       .Set("per_block_copy_h2d_gbps", r.per_copy_in / 1e9)
                       .Set("per_block_copy_h2d_ratio", r.per_copy_in_ratio));
    }
    Json j = Json::Object();
    j.Set("suite", "gpu")
        .Set("runtime", std::string((*rt)->Name()))
        .Set("device", (*rt)->Description())
        .Set("reference", reference)
        .Set("reps", reps)
        .Set("results", std::move(results))
        .Set("ratios", Json::Object()
                           .Set("min_gather_vs_ceiling", worst_gather)
                           .Set("min_scatter_vs_ceiling", worst_scatter));
    if (gpu) {
      j.Set("targets",
            Json::Object().Set("gather_vs_ceiling", kTarget).Set("scatter_vs_ceiling", kTarget));
    } else {
      j.Set("note", "no CUDA device: measured the CPU path against memcpy");
    }
    std::printf("%s\n", j.Dump().c_str());
    return 0;
  }

  std::printf("kvtier bench gpu on %s\n", (*rt)->Description().c_str());
  if (!gpu) {
    std::printf(
        "no CUDA device: measuring the CPU gather/scatter against memcpy of the same bytes\n");
  }
  std::printf(
      "bf16, %u-token blocks, %u-token chunks, random block ids; medians of %lld repetitions\n"
      "ceiling = one %s of a contiguous buffer of the same bytes; kvtier = KvCopier\n"
      "(kernels through a device staging buffer, one copy per chunk); direct = the\n"
      "kernels reading and writing pinned host memory; per-block = one %s\n"
      "per (layer, K/V, block); ratio = median of per-repetition ratios to the ceiling\n\n",
      kBlockTokens, kChunkTokens, static_cast<long long>(reps), reference, reference);
  Table t({"model", "bytes", "direction", "ceiling", "kvtier", "ratio", "direct", "ratio",
           "per-block", "ratio"});
  for (const Row& r : rows) {
    t.AddRow({r.model, HumanBytes(r.bytes), gpu ? "gather D2H" : "gather", HumanRate(r.ceiling_out),
              HumanRate(r.gather), Fixed(r.gather_ratio, 2), HumanRate(r.direct_out),
              Fixed(r.direct_out_ratio, 2), HumanRate(r.per_copy_out),
              Fixed(r.per_copy_out_ratio, 2)});
    t.AddRow({r.model, HumanBytes(r.bytes), gpu ? "scatter H2D" : "scatter",
              HumanRate(r.ceiling_in), HumanRate(r.scatter), Fixed(r.scatter_ratio, 2),
              HumanRate(r.direct_in), Fixed(r.direct_in_ratio, 2), HumanRate(r.per_copy_in),
              Fixed(r.per_copy_in_ratio, 2)});
  }
  t.Print();
  if (gpu) {
    std::printf("\ntarget: gather and scatter >= %.2fx the ceiling (worst here: %.2fx, %.2fx)\n",
                kTarget, worst_gather, worst_scatter);
  } else {
    std::printf(
        "\nworst ratios to memcpy: gather %.2fx, scatter %.2fx (the %.2fx target is for "
        "the CUDA path)\n",
        worst_gather, worst_scatter, kTarget);
  }
  return 0;
}

}  // namespace kvtier::cli
