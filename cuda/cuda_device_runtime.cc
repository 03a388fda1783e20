// The CUDA device runtime: CUDA runtime API calls behind DeviceRuntime, and
// KvCopier on the kernels of kv_copy_kernels.cu.
#include <cuda.h>  // driver API types only; the driver is reached through cudart
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_status.h"
#include "cuda/device_runtime.h"
#include "cuda/kv_copy.h"
#include "cuda/kv_copy_kernels.cuh"
#include "src/common/status_macros.h"

namespace kvtier {
namespace {

cudaStream_t AsStream(DeviceStream s) { return static_cast<cudaStream_t>(s); }
cudaEvent_t AsEvent(DeviceEvent e) { return static_cast<cudaEvent_t>(e); }

std::string PtrString(const void* p) {
  return absl::StrCat("0x", absl::Hex(reinterpret_cast<uintptr_t>(p)));
}

absl::Status SetDevice(int device) { return CudaStatus(cudaSetDevice(device), "cudaSetDevice"); }

// Where [ptr, ptr + bytes) lives, as the current device sees it.
struct Region {
  cudaMemoryType type = cudaMemoryTypeUnregistered;
  int device = -1;
  uint64_t device_address = 0;  // 0 when the current device cannot address it
};

// cuMemGetAddressRange, looked up through the runtime so kvtier links no
// driver library; null when the driver does not offer it.
using GetAddressRangeFn = CUresult (*)(CUdeviceptr* base, size_t* size, CUdeviceptr ptr);
GetAddressRangeFn AddressRangeFn() {
  static const GetAddressRangeFn fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
    if (cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &f, 12000, cudaEnableDefault,
                                         &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      (void)cudaGetLastError();
      return GetAddressRangeFn{nullptr};
    }
    return reinterpret_cast<GetAddressRangeFn>(f);
  }();
  return fn;
}

// Resolves a range that must lie inside one allocation or registration.
// `what` names the argument in errors. Device and managed memory are checked
// against the driver's allocation bounds; host memory by its last byte (a
// range running into a neighbouring registration is not detected).
absl::StatusOr<Region> Resolve(const void* ptr, size_t bytes, absl::string_view what) {
  cudaPointerAttributes first{};
  KVTIER_RETURN_IF_ERROR(CudaStatus(cudaPointerGetAttributes(&first, ptr),
                                    absl::StrCat(what, ": cudaPointerGetAttributes")));
  Region r;
  r.type = first.type;
  r.device = first.device;
  if (first.type == cudaMemoryTypeUnregistered || first.devicePointer == nullptr) return r;
  r.device_address = reinterpret_cast<uint64_t>(first.devicePointer);
  if (bytes <= 1) return r;
  if (first.type == cudaMemoryTypeDevice || first.type == cudaMemoryTypeManaged) {
    CUdeviceptr base = 0;
    size_t size = 0;
    GetAddressRangeFn range = AddressRangeFn();
    if (range != nullptr && range(&base, &size, r.device_address) == CUDA_SUCCESS &&
        r.device_address + bytes > base + size) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": the ", bytes, " bytes at ", PtrString(ptr),
                       " are not inside one device allocation (it holds ",
                       base + size - r.device_address, " bytes from there)"));
    }
    return r;
  }
  const void* last_ptr = static_cast<const char*>(ptr) + bytes - 1;
  cudaPointerAttributes last{};
  KVTIER_RETURN_IF_ERROR(CudaStatus(cudaPointerGetAttributes(&last, last_ptr),
                                    absl::StrCat(what, ": cudaPointerGetAttributes")));
  if (last.type != first.type ||
      reinterpret_cast<uint64_t>(last.devicePointer) != r.device_address + bytes - 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": the ", bytes, " bytes at ", PtrString(ptr),
                     " are not inside one host allocation or registration"));
  }
  return r;
}

class CudaKvCopier final : public KvCopier {
 public:
  static absl::StatusOr<std::unique_ptr<KvCopier>> Create(int device, const EngineLayout& layout,
                                                          const KvCopierOptions& options) {
    KVTIER_RETURN_IF_ERROR(layout.Validate());
    KVTIER_RETURN_IF_ERROR(SetDevice(device));
    // Every base must be memory of this device and hold the whole tensor the
    // strides describe; the kernels trust both.
    const size_t span = layout.TensorSpanBytes();
    std::vector<const void*> bases;
    if (layout.cross_layer_base != nullptr) {
      bases.push_back(layout.cross_layer_base);
    } else {
      bases.assign(layout.layer_bases.begin(), layout.layer_bases.end());
    }
    for (size_t i = 0; i < bases.size(); ++i) {
      const std::string what = layout.cross_layer_base != nullptr
                                   ? std::string("engine_layout.cross_layer_base")
                                   : absl::StrCat("engine_layout.layer_bases[", i, "]");
      KVTIER_ASSIGN_OR_RETURN(Region r, Resolve(bases[i], span, what));
      if ((r.type != cudaMemoryTypeDevice && r.type != cudaMemoryTypeManaged) ||
          r.device != device || r.device_address == 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, " = ", PtrString(bases[i]), " is not memory of CUDA device ", device,
                         " (memory type ", static_cast<int>(r.type), ", device ", r.device, ")"));
      }
    }
    std::vector<uint64_t> addresses(layout.num_layers);
    for (uint32_t layer = 0; layer < layout.num_layers; ++layer) {
      addresses[layer] = reinterpret_cast<uint64_t>(layout.LayerBase(layer));
    }
    void* table = nullptr;
    const size_t table_bytes = addresses.size() * sizeof(uint64_t);
    KVTIER_RETURN_IF_ERROR(CudaStatus(cudaMalloc(&table, table_bytes), "cudaMalloc(layer table)"));
    std::unique_ptr<CudaKvCopier> copier(
        new CudaKvCopier(layout, device, static_cast<uint64_t*>(table), options));
    KVTIER_RETURN_IF_ERROR(
        CudaStatus(cudaMemcpy(table, addresses.data(), table_bytes, cudaMemcpyHostToDevice),
                   "cudaMemcpy(layer table)"));
    if (options.host_staging_bytes > 0) {
      KVTIER_RETURN_IF_ERROR(
          CudaStatus(cudaEventCreateWithFlags(&copier->staging_free_, cudaEventDisableTiming),
                     "cudaEventCreate(staging)"));
    }
    return std::unique_ptr<KvCopier>(std::move(copier));
  }

  ~CudaKvCopier() override {
    // Work still queued may use the table and the staging buffer; cudaFree
    // waits for the device.
    if (cudaSetDevice(device_) != cudaSuccess) return;
    cudaFree(layer_table_);
    if (staging_ != nullptr) cudaFree(staging_);
    if (staging_free_ != nullptr) cudaEventDestroy(staging_free_);
  }

 protected:
  absl::Status CopyImpl(bool gather, uint32_t first_layer, uint32_t num_layers,
                        absl::Span<const ChunkTransfer> chunks, DeviceStream stream) override {
    KVTIER_RETURN_IF_ERROR(SetDevice(device_));
    // Resolve every payload before enqueuing anything, so a bad one fails
    // the whole call with nothing started.
    std::vector<Target> direct, staged;
    for (size_t i = 0; i < chunks.size(); ++i) {
      KVTIER_ASSIGN_OR_RETURN(Region r, DevicePayload(chunks[i].payload, chunks[i].payload_bytes,
                                                      absl::StrCat("chunks[", i, "].payload")));
      const bool host = r.type != cudaMemoryTypeDevice && r.type != cudaMemoryTypeManaged;
      (host && options_.host_staging_bytes > 0 ? staged : direct)
          .push_back({&chunks[i], r.device_address});
    }
    KVTIER_RETURN_IF_ERROR(Launch(gather, first_layer, num_layers, direct, AsStream(stream)));
    if (staged.empty()) return absl::OkStatus();
    return CopyStaged(gather, first_layer, num_layers, staged, AsStream(stream));
  }

 private:
  // A chunk and the device address the kernel uses for its payload.
  struct Target {
    const ChunkTransfer* chunk;
    uint64_t payload;
  };

  CudaKvCopier(const EngineLayout& layout, int device, uint64_t* layer_table,
               const KvCopierOptions& options)
      : KvCopier(layout),
        device_(device),
        plan_(MakeKvCopyPlan(layout)),
        layer_table_(layer_table),
        options_(options) {}

  // Enqueues the kernels for `targets`, as few launches as the launch limits
  // allow.
  absl::Status Launch(bool gather, uint32_t first_layer, uint32_t num_layers,
                      absl::Span<const Target> targets, cudaStream_t stream) const {
    if (targets.empty()) return absl::OkStatus();
    auto args = std::make_unique<KvCopyArgs>();
    args->plan = plan_;
    args->layer_bases = layer_table_;
    args->first_layer = first_layer;
    args->num_layers = num_layers;
    auto flush = [&]() -> absl::Status {
      if (args->num_blocks == 0) return absl::OkStatus();
      absl::Status s;
      if (num_layers == 1) {
        s = gather ? LaunchKvGatherLayer(*args, first_layer, stream)
                   : LaunchKvScatterLayer(*args, first_layer, stream);
      } else {
        s = gather ? LaunchKvGather(*args, stream) : LaunchKvScatter(*args, stream);
      }
      args->num_blocks = 0;
      args->num_chunks = 0;
      return s;
    };
    for (const Target& t : targets) {
      const absl::Span<const int32_t> ids = t.chunk->block_ids;
      uint32_t b = 0;
      while (b < ids.size()) {
        if (args->num_blocks == kMaxLaunchBlocks || args->num_chunks == kMaxLaunchChunks) {
          KVTIER_RETURN_IF_ERROR(flush());
        }
        KvLaunchChunk& entry = args->chunks[args->num_chunks++];
        entry.payload = t.payload;
        entry.num_tokens = t.chunk->num_tokens;
        entry.first_block = b;
        entry.begin = args->num_blocks;
        const uint32_t take = std::min<uint32_t>(static_cast<uint32_t>(ids.size()) - b,
                                                 kMaxLaunchBlocks - args->num_blocks);
        std::copy_n(ids.begin() + b, take, args->block_ids + args->num_blocks);
        args->num_blocks += take;
        b += take;
      }
    }
    return flush();
  }

  // Host payloads through the staging buffer, in rounds that fit it. Gather:
  // kernels into staging, then one device-to-host copy of each chunk's moved
  // layers (contiguous in the payload). Scatter: the reverse. Calls from
  // several streams take turns on the buffer: each waits for the event the
  // previous one recorded after its last use.
  absl::Status CopyStaged(bool gather, uint32_t first_layer, uint32_t num_layers,
                          absl::Span<const Target> targets, cudaStream_t stream) {
    constexpr size_t kAlign = 256;
    auto aligned = [](size_t n) { return (n + kAlign - 1) / kAlign * kAlign; };
    size_t largest = 0, sum = 0;
    for (const Target& t : targets) {
      largest = std::max(largest, aligned(t.chunk->payload_bytes));
      sum += aligned(t.chunk->payload_bytes);
    }
    absl::MutexLock lock(&staging_mu_);
    const size_t want = std::max(largest, std::min(sum, options_.host_staging_bytes));
    if (want > staging_bytes_) {
      // cudaFree waits for work still using the old buffer.
      if (staging_ != nullptr) {
        KVTIER_RETURN_IF_ERROR(CudaStatus(cudaFree(staging_), "cudaFree(staging)"));
        staging_ = nullptr;
        staging_bytes_ = 0;
      }
      KVTIER_RETURN_IF_ERROR(
          CudaStatus(cudaMalloc(&staging_, want), absl::StrCat("cudaMalloc(staging, ", want, ")")));
      staging_bytes_ = want;
    }
    KVTIER_RETURN_IF_ERROR(
        CudaStatus(cudaStreamWaitEvent(stream, staging_free_, 0), "cudaStreamWaitEvent(staging)"));
    auto* base = static_cast<std::byte*>(staging_);
    std::vector<Target> round;
    size_t used = 0;
    auto run_round = [&]() -> absl::Status {
      if (round.empty()) return absl::OkStatus();
      auto move_bytes = [&](bool to_host) -> absl::Status {
        for (const Target& t : round) {
          const size_t layer_bytes = layout().LayerPayloadBytes(t.chunk->num_tokens);
          const size_t offset = size_t{first_layer} * layer_bytes;
          const size_t bytes = size_t{num_layers} * layer_bytes;
          std::byte* dev = reinterpret_cast<std::byte*>(t.payload) + offset;
          std::byte* host = t.chunk->payload + offset;
          KVTIER_RETURN_IF_ERROR(CudaStatus(
              to_host ? cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, stream)
                      : cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, stream),
              "cudaMemcpyAsync(staging)"));
        }
        return absl::OkStatus();
      };
      if (gather) {
        KVTIER_RETURN_IF_ERROR(Launch(true, first_layer, num_layers, round, stream));
        KVTIER_RETURN_IF_ERROR(move_bytes(true));
      } else {
        KVTIER_RETURN_IF_ERROR(move_bytes(false));
        KVTIER_RETURN_IF_ERROR(Launch(false, first_layer, num_layers, round, stream));
      }
      round.clear();
      used = 0;
      return absl::OkStatus();
    };
    absl::Status status;
    for (const Target& t : targets) {
      const size_t need = aligned(t.chunk->payload_bytes);
      if (used + need > staging_bytes_) {
        status = run_round();
        if (!status.ok()) break;
      }
      round.push_back({t.chunk, reinterpret_cast<uint64_t>(base + used)});
      used += need;
    }
    if (status.ok()) status = run_round();
    // Recorded even after a failure, so the next user waits for whatever
    // was enqueued.
    const absl::Status recorded =
        CudaStatus(cudaEventRecord(staging_free_, stream), "cudaEventRecord(staging)");
    return status.ok() ? recorded : status;
  }

  absl::StatusOr<Region> DevicePayload(const void* ptr, size_t bytes,
                                       const std::string& what) const {
    KVTIER_ASSIGN_OR_RETURN(Region r, Resolve(ptr, bytes, what));
    if (r.type == cudaMemoryTypeUnregistered) {
      return absl::FailedPreconditionError(
          absl::StrCat(what,
                       ": pageable host memory the device cannot address; allocate it with "
                       "AllocPinned or pin it with RegisterHostMemoryForDevice"));
    }
    if (r.type == cudaMemoryTypeDevice && r.device != device_) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": memory of CUDA device ", r.device,
                                                     "; this copier runs on device ", device_));
    }
    if (r.device_address == 0) {
      return absl::FailedPreconditionError(
          absl::StrCat(what, ": host memory registered without a device mapping"));
    }
    return r;
  }

  const int device_;
  const KvCopyPlan plan_;
  uint64_t* const layer_table_;  // device array of num_layers base addresses
  const KvCopierOptions options_;

  absl::Mutex staging_mu_;
  void* staging_ ABSL_GUARDED_BY(staging_mu_) = nullptr;
  size_t staging_bytes_ ABSL_GUARDED_BY(staging_mu_) = 0;
  // Recorded after each use of the staging buffer; null without staging.
  cudaEvent_t staging_free_ = nullptr;
};

class CudaDeviceRuntime final : public DeviceRuntime {
 public:
  CudaDeviceRuntime(int device, int count, std::string description)
      : device_(device), count_(count), description_(std::move(description)) {}

  std::string_view Name() const override { return "cuda"; }
  bool IsGpu() const override { return true; }
  int DeviceCount() const override { return count_; }
  std::string Description() const override { return description_; }

  absl::StatusOr<void*> AllocPinned(size_t bytes) override {
    if (bytes == 0) return absl::InvalidArgumentError("bytes: must be at least 1");
    KVTIER_RETURN_IF_ERROR(SetDevice(device_));
    void* p = nullptr;
    KVTIER_RETURN_IF_ERROR(
        CudaStatus(cudaHostAlloc(&p, bytes, cudaHostAllocPortable | cudaHostAllocMapped),
                   absl::StrCat("cudaHostAlloc(", bytes, ")")));
    return p;
  }
  absl::Status FreePinned(void* ptr) override {
    return CudaStatus(cudaFreeHost(ptr), "cudaFreeHost");
  }
  absl::StatusOr<void*> AllocDevice(size_t bytes) override {
    if (bytes == 0) return absl::InvalidArgumentError("bytes: must be at least 1");
    KVTIER_RETURN_IF_ERROR(SetDevice(device_));
    void* p = nullptr;
    KVTIER_RETURN_IF_ERROR(
        CudaStatus(cudaMalloc(&p, bytes), absl::StrCat("cudaMalloc(", bytes, ")")));
    return p;
  }
  absl::Status FreeDevice(void* ptr) override {
    KVTIER_RETURN_IF_ERROR(SetDevice(device_));
    return CudaStatus(cudaFree(ptr), "cudaFree");
  }
  absl::Status RegisterHost(void* base, size_t bytes) override {
    return RegisterHostMemoryForDevice(base, bytes);
  }
  absl::Status UnregisterHost(void* base) override { return UnregisterHostMemoryForDevice(base); }

  absl::Status Memcpy(void* dst, const void* src, size_t bytes, DeviceStream stream) override {
    if (bytes == 0) return absl::OkStatus();
    KVTIER_RETURN_IF_ERROR(SetDevice(device_));
    return CudaStatus(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, AsStream(stream)),
                      "cudaMemcpyAsync");
  }
  absl::StatusOr<DeviceStream> CreateStream() override {
    KVTIER_RETURN_IF_ERROR(SetDevice(device_));
    cudaStream_t s = nullptr;
    KVTIER_RETURN_IF_ERROR(
        CudaStatus(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate"));
    return static_cast<DeviceStream>(s);
  }
  absl::Status DestroyStream(DeviceStream stream) override {
    return CudaStatus(cudaStreamDestroy(AsStream(stream)), "cudaStreamDestroy");
  }
  absl::Status SynchronizeStream(DeviceStream stream) override {
    KVTIER_RETURN_IF_ERROR(SetDevice(device_));
    return CudaStatus(cudaStreamSynchronize(AsStream(stream)), "cudaStreamSynchronize");
  }
  absl::StatusOr<DeviceEvent> CreateEvent() override {
    KVTIER_RETURN_IF_ERROR(SetDevice(device_));
    cudaEvent_t e = nullptr;
    KVTIER_RETURN_IF_ERROR(
        CudaStatus(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate"));
    return static_cast<DeviceEvent>(e);
  }
  absl::Status DestroyEvent(DeviceEvent event) override {
    return CudaStatus(cudaEventDestroy(AsEvent(event)), "cudaEventDestroy");
  }
  absl::Status RecordEvent(DeviceEvent event, DeviceStream stream) override {
    return CudaStatus(cudaEventRecord(AsEvent(event), AsStream(stream)), "cudaEventRecord");
  }
  absl::Status StreamWaitEvent(DeviceStream stream, DeviceEvent event) override {
    return CudaStatus(cudaStreamWaitEvent(AsStream(stream), AsEvent(event), 0),
                      "cudaStreamWaitEvent");
  }
  absl::Status SynchronizeEvent(DeviceEvent event) override {
    return CudaStatus(cudaEventSynchronize(AsEvent(event)), "cudaEventSynchronize");
  }
  absl::StatusOr<bool> EventDone(DeviceEvent event) override {
    const cudaError_t err = cudaEventQuery(AsEvent(event));
    if (err == cudaErrorNotReady) {
      (void)cudaGetLastError();  // not an error; do not leave it for the next check
      return false;
    }
    KVTIER_RETURN_IF_ERROR(CudaStatus(err, "cudaEventQuery"));
    return true;
  }

  using DeviceRuntime::CreateKvCopier;
  absl::StatusOr<std::unique_ptr<KvCopier>> CreateKvCopier(
      const EngineLayout& layout, const KvCopierOptions& options) override {
    return CudaKvCopier::Create(device_, layout, options);
  }

 private:
  const int device_;
  const int count_;
  const std::string description_;
};

absl::StatusOr<int> VisibleDevices() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    return absl::FailedPreconditionError(
        absl::StrCat("no CUDA device visible: cudaGetDeviceCount: ", cudaGetErrorName(err), ": ",
                     cudaGetErrorString(err)));
  }
  if (count <= 0) {
    return absl::FailedPreconditionError("no CUDA device visible: cudaGetDeviceCount reports 0");
  }
  return count;
}

}  // namespace

absl::Status CudaDeviceAvailable() { return VisibleDevices().status(); }

absl::StatusOr<std::unique_ptr<DeviceRuntime>> CreateCudaDeviceRuntime(int device) {
  KVTIER_ASSIGN_OR_RETURN(const int count, VisibleDevices());
  if (device < 0 || device >= count) {
    return absl::InvalidArgumentError(
        absl::StrCat("device = ", device, " but ", count, " CUDA device(s) are visible"));
  }
  KVTIER_RETURN_IF_ERROR(SetDevice(device));
  cudaDeviceProp prop{};
  KVTIER_RETURN_IF_ERROR(
      CudaStatus(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties"));
  int unified = 0;
  KVTIER_RETURN_IF_ERROR(
      CudaStatus(cudaDeviceGetAttribute(&unified, cudaDevAttrUnifiedAddressing, device),
                 "cudaDeviceGetAttribute"));
  if (!unified) {
    return absl::FailedPreconditionError(
        absl::StrCat("CUDA device ", device, " has no unified addressing; kvtier needs it"));
  }
  int driver = 0;
  int runtime = 0;
  (void)cudaDriverGetVersion(&driver);
  (void)cudaRuntimeGetVersion(&runtime);
  std::string description =
      absl::StrCat(prop.name, ", sm_", prop.major, prop.minor, ", ", prop.totalGlobalMem >> 20,
                   " MiB, device ", device, " of ", count, ", driver ", driver / 1000, ".",
                   (driver % 1000) / 10, ", runtime ", runtime / 1000, ".", (runtime % 1000) / 10);
  return std::unique_ptr<DeviceRuntime>(
      new CudaDeviceRuntime(device, count, std::move(description)));
}

absl::Status CudaRegisterHostMemory(void* base, size_t bytes) {
  return CudaStatus(
      cudaHostRegister(base, bytes, cudaHostRegisterPortable | cudaHostRegisterMapped),
      absl::StrCat("cudaHostRegister(", bytes, " bytes)"));
}

absl::Status CudaUnregisterHostMemory(void* base) {
  return CudaStatus(cudaHostUnregister(base), "cudaHostUnregister");
}

}  // namespace kvtier
