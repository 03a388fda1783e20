#include "cuda/device_runtime.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "cuda/cuda_backend.h"
#include "cuda/kv_copy.h"
#include "src/common/bytes.h"
#include "src/common/status_macros.h"

namespace kvtier {
namespace {

constexpr size_t kAlignment = 256;

// Prefixes a chunk's error with its position in the batch.
absl::Status InChunk(size_t i, const absl::Status& s) {
  return absl::Status(s.code(), absl::StrCat("chunks[", i, "].", s.message()));
}

class CpuKvCopier final : public KvCopier {
 public:
  explicit CpuKvCopier(EngineLayout layout) : KvCopier(std::move(layout)) {}

 protected:
  absl::Status CopyImpl(bool gather, uint32_t first_layer, uint32_t num_layers,
                        absl::Span<const ChunkTransfer> chunks, DeviceStream) override {
    // The free functions (kv_copy.h) check their arguments again; that is
    // cheap next to the copy.
    const bool all_layers = first_layer == 0 && num_layers == layout().num_layers;
    for (size_t i = 0; i < chunks.size(); ++i) {
      const ChunkTransfer& c = chunks[i];
      absl::Span<std::byte> payload(c.payload, c.payload_bytes);
      if (all_layers) {
        absl::Status s = gather ? ::kvtier::Gather(layout(), c.block_ids, c.num_tokens, payload)
                                : ::kvtier::Scatter(layout(), c.block_ids, c.num_tokens, payload);
        if (!s.ok()) return InChunk(i, s);
        continue;
      }
      for (uint32_t layer = first_layer; layer < first_layer + num_layers; ++layer) {
        absl::Status s =
            gather ? ::kvtier::GatherLayer(layout(), layer, c.block_ids, c.num_tokens, payload)
                   : ::kvtier::ScatterLayer(layout(), layer, c.block_ids, c.num_tokens, payload);
        if (!s.ok()) return InChunk(i, s);
      }
    }
    return absl::OkStatus();
  }
};

// Host memory plays the device. Everything completes before returning.
class CpuDeviceRuntime final : public DeviceRuntime {
 public:
  std::string_view Name() const override { return "cpu"; }
  bool IsGpu() const override { return false; }
  int DeviceCount() const override { return 0; }
  std::string Description() const override {
    absl::Status cuda = CudaDeviceAvailable();
    return cuda.ok() ? "cpu (host memory; a CUDA device is visible but not selected)"
                     : absl::StrCat("cpu (host memory; ", cuda.message(), ")");
  }

  absl::StatusOr<void*> AllocPinned(size_t bytes) override { return Alloc(bytes); }
  absl::Status FreePinned(void* ptr) override {
    std::free(ptr);
    return absl::OkStatus();
  }
  absl::StatusOr<void*> AllocDevice(size_t bytes) override { return Alloc(bytes); }
  absl::Status FreeDevice(void* ptr) override {
    std::free(ptr);
    return absl::OkStatus();
  }
  absl::Status RegisterHost(void*, size_t) override {
    return absl::FailedPreconditionError(
        "cpu runtime: no device to register host memory for; it stays pageable");
  }
  absl::Status UnregisterHost(void*) override {
    return absl::FailedPreconditionError("cpu runtime: no device to unregister host memory from");
  }

  absl::Status Memcpy(void* dst, const void* src, size_t bytes, DeviceStream) override {
    if (bytes == 0) return absl::OkStatus();
    if (dst == nullptr || src == nullptr) {
      return absl::InvalidArgumentError("Memcpy: dst and src must not be null");
    }
    std::memcpy(dst, src, bytes);
    return absl::OkStatus();
  }
  absl::StatusOr<DeviceStream> CreateStream() override { return DeviceStream{nullptr}; }
  absl::Status DestroyStream(DeviceStream) override { return absl::OkStatus(); }
  absl::Status SynchronizeStream(DeviceStream) override { return absl::OkStatus(); }
  absl::StatusOr<DeviceEvent> CreateEvent() override { return DeviceEvent{nullptr}; }
  absl::Status DestroyEvent(DeviceEvent) override { return absl::OkStatus(); }
  absl::Status RecordEvent(DeviceEvent, DeviceStream) override { return absl::OkStatus(); }
  absl::Status StreamWaitEvent(DeviceStream, DeviceEvent) override { return absl::OkStatus(); }
  absl::Status SynchronizeEvent(DeviceEvent) override { return absl::OkStatus(); }
  absl::StatusOr<bool> EventDone(DeviceEvent) override { return true; }

  using DeviceRuntime::CreateKvCopier;
  absl::StatusOr<std::unique_ptr<KvCopier>> CreateKvCopier(
      const EngineLayout& layout, const KvCopierOptions& /*options*/) override {
    KVTIER_RETURN_IF_ERROR(layout.Validate());
    return std::unique_ptr<KvCopier>(new CpuKvCopier(layout));
  }

 private:
  static absl::StatusOr<void*> Alloc(size_t bytes) {
    if (bytes == 0) return absl::InvalidArgumentError("bytes: must be at least 1");
    void* p = std::aligned_alloc(kAlignment, AlignUp(bytes, kAlignment));
    if (p == nullptr) {
      return absl::ResourceExhaustedError(
          absl::StrCat("cpu runtime: cannot allocate ", bytes, " bytes"));
    }
    return p;
  }
};

}  // namespace

absl::Status KvCopier::Gather(absl::Span<const ChunkTransfer> chunks, DeviceStream stream) {
  return Copy(true, 0, layout_.num_layers, chunks, stream);
}

absl::Status KvCopier::Scatter(absl::Span<const ChunkTransfer> chunks, DeviceStream stream) {
  return Copy(false, 0, layout_.num_layers, chunks, stream);
}

absl::Status KvCopier::GatherLayer(uint32_t layer, absl::Span<const ChunkTransfer> chunks,
                                   DeviceStream stream) {
  return Copy(true, layer, 1, chunks, stream);
}

absl::Status KvCopier::ScatterLayer(uint32_t layer, absl::Span<const ChunkTransfer> chunks,
                                    DeviceStream stream) {
  return Copy(false, layer, 1, chunks, stream);
}

absl::Status KvCopier::Copy(bool gather, uint32_t first_layer, uint32_t num_layers,
                            absl::Span<const ChunkTransfer> chunks, DeviceStream stream) {
  if (first_layer >= layout_.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layer = ", first_layer, " is out of range; num_layers = ", layout_.num_layers));
  }
  if (chunks.empty()) return absl::InvalidArgumentError("chunks: empty batch");
  size_t total_blocks = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    const ChunkTransfer& c = chunks[i];
    if (c.payload == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("chunks[", i, "].payload is null"));
    }
    absl::Status s = CheckChunkArgs(layout_, c.block_ids, c.num_tokens, c.payload_bytes, !gather);
    if (!s.ok()) return InChunk(i, s);
    total_blocks += c.block_ids.size();
  }
  if (!gather && chunks.size() > 1) {
    std::vector<int32_t> ids;
    ids.reserve(total_blocks);
    for (const ChunkTransfer& c : chunks)
      ids.insert(ids.end(), c.block_ids.begin(), c.block_ids.end());
    std::sort(ids.begin(), ids.end());
    auto dup = std::adjacent_find(ids.begin(), ids.end());
    if (dup != ids.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("chunks: block ", *dup,
                       " appears in more than one chunk; a scatter would write it twice"));
    }
  }
  return CopyImpl(gather, first_layer, num_layers, chunks, stream);
}

absl::Status DeviceRuntimeOptions::Validate() const {
  if (device < 0) {
    return absl::InvalidArgumentError(absl::StrCat("device = ", device, " must be >= 0"));
  }
  switch (kind) {
    case Kind::kAuto:
    case Kind::kCpu:
    case Kind::kCuda:
      return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("kind = ", static_cast<int>(kind), " is not a known runtime kind"));
}

absl::StatusOr<std::unique_ptr<DeviceRuntime>> DeviceRuntime::Create(
    const DeviceRuntimeOptions& options) {
  KVTIER_RETURN_IF_ERROR(options.Validate());
  switch (options.kind) {
    case DeviceRuntimeOptions::Kind::kCpu:
      return CreateCpuDeviceRuntime();
    case DeviceRuntimeOptions::Kind::kCuda:
      return CreateCudaDeviceRuntime(options.device);
    case DeviceRuntimeOptions::Kind::kAuto:
      if (!CudaDeviceAvailable().ok()) return CreateCpuDeviceRuntime();
      return CreateCudaDeviceRuntime(options.device);
  }
  return absl::InvalidArgumentError("kind: unknown");
}

std::unique_ptr<DeviceRuntime> CreateCpuDeviceRuntime() {
  return std::make_unique<CpuDeviceRuntime>();
}

absl::Status RegisterHostMemoryForDevice(void* base, size_t bytes) {
  if (base == nullptr) return absl::InvalidArgumentError("base: must not be null");
  if (bytes == 0) return absl::InvalidArgumentError("bytes: must be at least 1");
  KVTIER_RETURN_IF_ERROR(CudaDeviceAvailable());
  return CudaRegisterHostMemory(base, bytes);
}

absl::Status UnregisterHostMemoryForDevice(void* base) {
  if (base == nullptr) return absl::InvalidArgumentError("base: must not be null");
  KVTIER_RETURN_IF_ERROR(CudaDeviceAvailable());
  return CudaUnregisterHostMemory(base);
}

}  // namespace kvtier
