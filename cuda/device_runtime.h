// The device runtime: the seam between kvtier and the accelerator.
//
// DeviceRuntime hides whether KV lives in GPU memory (the CUDA runtime) or in
// host memory (the CPU runtime), so the rest of kvtier selects the path at run
// time and tests run everywhere. It offers what the data path needs: device
// count, pinned and device allocations, host memory registration (pinning),
// stream-ordered copies, streams and events, and KvCopier, which gathers engine
// blocks into chunk payloads and scatters them back.
//
// Streams and events are opaque handles (cudaStream_t / cudaEvent_t on the
// CUDA runtime, so an engine can pass its own stream, e.g. torch's
// `stream.cuda_stream`); a null stream is the default stream. The CPU runtime
// completes every operation before returning, so its streams and events are
// null handles and synchronizing is free.
//
// Thread-safety: a DeviceRuntime and a KvCopier may be used from several
// threads at once; ordering between calls is what their streams say.
#ifndef KVTIER_CUDA_DEVICE_RUNTIME_H_
#define KVTIER_CUDA_DEVICE_RUNTIME_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kvtier/engine_layout.h"

namespace kvtier {

using DeviceStream = void*;  // cudaStream_t on the CUDA runtime; null = default stream
using DeviceEvent = void*;   // cudaEvent_t on the CUDA runtime

// One chunk of a batched gather or scatter.
struct ChunkTransfer {
  absl::Span<const int32_t> block_ids;  // engine blocks, in token order
  uint32_t num_tokens = 0;              // tokens in the chunk (the last block may be partial)
  std::byte* payload = nullptr;         // the whole chunk payload (see below)
  size_t payload_bytes = 0;             // must be layout.PayloadBytes(num_tokens)
};

// Moves KV between one engine pool and chunk payloads. Created by
// DeviceRuntime::CreateKvCopier; bound to one EngineLayout.
//
// On the CUDA runtime the payloads may be device memory of the same device,
// pinned host memory (AllocPinned) or registered host memory
// (RegisterHostMemoryForDevice); the copies are enqueued on `stream` and the
// call returns before they finish: block ids are captured at the call, but
// the payloads and the pool must stay valid, and must not be touched by
// others, until the stream reaches that point. On the CPU runtime the copy is
// done when the call returns.
//
// Host payloads move through a device staging buffer by default (see
// KvCopierOptions): the kernels gather into it at device-memory speed and
// one DMA copy per chunk crosses PCIe, which runs at the bus's full rate;
// kernels that read host memory directly reach about 0.9 of it.
class KvCopier {
 public:
  virtual ~KvCopier() = default;
  KvCopier(const KvCopier&) = delete;
  KvCopier& operator=(const KvCopier&) = delete;

  const EngineLayout& layout() const { return layout_; }

  // Every layer of every chunk: blocks -> payloads.
  // InvalidArgument (nothing is enqueued) for an empty batch or a chunk that
  // fails CheckChunkArgs (cuda/kv_copy.h); FailedPrecondition for a payload
  // the device cannot address (pageable host memory on the CUDA runtime);
  // Internal or ResourceExhausted when the device fails.
  absl::Status Gather(absl::Span<const ChunkTransfer> chunks, DeviceStream stream);
  // Every layer of every chunk: payloads -> blocks. Same errors, plus
  // InvalidArgument when a block appears twice in the batch.
  absl::Status Scatter(absl::Span<const ChunkTransfer> chunks, DeviceStream stream);
  // Layer `layer` only. The payloads are still whole chunk payloads; only
  // that layer's slice is written or read. InvalidArgument also when
  // layer >= num_layers.
  absl::Status GatherLayer(uint32_t layer, absl::Span<const ChunkTransfer> chunks,
                           DeviceStream stream);
  absl::Status ScatterLayer(uint32_t layer, absl::Span<const ChunkTransfer> chunks,
                            DeviceStream stream);

 protected:
  // REQUIRES: layout.Validate() is OK.
  explicit KvCopier(EngineLayout layout) : layout_(std::move(layout)) {}

  // Moves layers [first_layer, first_layer + num_layers) of `chunks`, already
  // checked. `gather` chooses the direction.
  virtual absl::Status CopyImpl(bool gather, uint32_t first_layer, uint32_t num_layers,
                                absl::Span<const ChunkTransfer> chunks, DeviceStream stream) = 0;

 private:
  absl::Status Copy(bool gather, uint32_t first_layer, uint32_t num_layers,
                    absl::Span<const ChunkTransfer> chunks, DeviceStream stream);

  const EngineLayout layout_;
};

struct KvCopierOptions {
  // Device memory for staging host payloads (CUDA runtime). A batch whose
  // host payloads exceed it moves in several rounds; a single chunk larger
  // than it grows the buffer to that chunk. 0 = no staging: the kernels read
  // and write pinned host memory directly (no device memory used, about 10%
  // slower across PCIe). Allocated on first use; ignored on the CPU runtime.
  size_t host_staging_bytes = size_t{128} << 20;
};

struct DeviceRuntimeOptions {
  enum class Kind {
    kAuto,  // CUDA when kvtier was built with it and a device is visible, else CPU
    kCpu,   // host memory only
    kCuda,  // CUDA; FailedPrecondition when unavailable
  };
  Kind kind = Kind::kAuto;
  int device = 0;  // CUDA device ordinal

  // InvalidArgument for a negative device or an unknown kind.
  absl::Status Validate() const;
};

class DeviceRuntime {
 public:
  // kAuto never fails for want of a GPU (it falls back to the CPU runtime);
  // kCuda returns FailedPrecondition naming the reason (built without CUDA,
  // no device visible, driver missing) and InvalidArgument for a device
  // ordinal that is not visible.
  static absl::StatusOr<std::unique_ptr<DeviceRuntime>> Create(const DeviceRuntimeOptions& options);

  virtual ~DeviceRuntime() = default;

  // "cpu" or "cuda".
  virtual std::string_view Name() const = 0;
  // True for a runtime whose device memory is GPU memory.
  virtual bool IsGpu() const = 0;
  // CUDA devices visible to this process; 0 on the CPU runtime.
  virtual int DeviceCount() const = 0;
  // One line describing the device ("NVIDIA H100 80GB HBM3, sm_90, ..." or
  // "cpu (no CUDA device: ...)").
  virtual std::string Description() const = 0;

  // Page-locked host memory the device can read and write (plain host memory
  // on the CPU runtime), 256-byte aligned. ResourceExhausted when it cannot
  // be allocated. Free with FreePinned.
  virtual absl::StatusOr<void*> AllocPinned(size_t bytes) = 0;
  virtual absl::Status FreePinned(void* ptr) = 0;
  // Device memory (host memory on the CPU runtime), 256-byte aligned. Free
  // with FreeDevice.
  virtual absl::StatusOr<void*> AllocDevice(size_t bytes) = 0;
  virtual absl::Status FreeDevice(void* ptr) = 0;
  // Pins [base, base + bytes) for DMA. FailedPrecondition on the CPU runtime
  // (callers keep using the memory unpinned, and say so).
  virtual absl::Status RegisterHost(void* base, size_t bytes) = 0;
  virtual absl::Status UnregisterHost(void* base) = 0;

  // Copies `bytes` from `src` to `dst` in stream order; either side may be
  // host or device memory.
  virtual absl::Status Memcpy(void* dst, const void* src, size_t bytes, DeviceStream stream) = 0;
  virtual absl::StatusOr<DeviceStream> CreateStream() = 0;
  virtual absl::Status DestroyStream(DeviceStream stream) = 0;
  // Blocks until everything enqueued on `stream` has finished.
  virtual absl::Status SynchronizeStream(DeviceStream stream) = 0;
  virtual absl::StatusOr<DeviceEvent> CreateEvent() = 0;
  virtual absl::Status DestroyEvent(DeviceEvent event) = 0;
  // Marks the current end of `stream`.
  virtual absl::Status RecordEvent(DeviceEvent event, DeviceStream stream) = 0;
  // Makes later work on `stream` wait for `event` (no host blocking).
  virtual absl::Status StreamWaitEvent(DeviceStream stream, DeviceEvent event) = 0;
  // Blocks the calling thread until `event` has happened.
  virtual absl::Status SynchronizeEvent(DeviceEvent event) = 0;
  // Whether `event` has happened, without blocking.
  virtual absl::StatusOr<bool> EventDone(DeviceEvent event) = 0;

  // A copier for the pool `layout` describes. InvalidArgument when the
  // layout fails Validate() or (CUDA) a base pointer is not memory of this
  // runtime's device or its allocation is smaller than the tensor the
  // strides describe (TensorSpanBytes).
  virtual absl::StatusOr<std::unique_ptr<KvCopier>> CreateKvCopier(
      const EngineLayout& layout, const KvCopierOptions& options) = 0;
  absl::StatusOr<std::unique_ptr<KvCopier>> CreateKvCopier(const EngineLayout& layout) {
    return CreateKvCopier(layout, KvCopierOptions{});
  }
};

// The CPU runtime (also what kAuto gives without a GPU).
std::unique_ptr<DeviceRuntime> CreateCpuDeviceRuntime();

// Pins host memory (e.g. the DRAM arena's slots) for DMA by every CUDA device,
// and maps it so kernels can address it. InvalidArgument for a null base or
// zero bytes; FailedPrecondition when kvtier was built without CUDA or no
// CUDA device is visible (the caller keeps the memory pageable and reports
// the fallback); Internal or ResourceExhausted when the driver refuses.
absl::Status RegisterHostMemoryForDevice(void* base, size_t bytes);
// Undoes RegisterHostMemoryForDevice. Same FailedPrecondition cases;
// InvalidArgument when `base` was not registered.
absl::Status UnregisterHostMemoryForDevice(void* base);

}  // namespace kvtier

#endif  // KVTIER_CUDA_DEVICE_RUNTIME_H_
