// The CUDA entry points of a build without nvcc: every one reports that CUDA
// is not built in, so callers fall back to the CPU runtime and pageable memory.
#include "absl/status/status.h"
#include "cuda/cuda_backend.h"

namespace kvtier {
namespace {

absl::Status NotBuilt() {
  return absl::FailedPreconditionError(
      "kvtier was built without CUDA (no nvcc at configure time, or KVTIER_CUDA=OFF)");
}

}  // namespace

absl::StatusOr<std::unique_ptr<DeviceRuntime>> CreateCudaDeviceRuntime(int) { return NotBuilt(); }

absl::Status CudaDeviceAvailable() { return NotBuilt(); }

absl::Status CudaRegisterHostMemory(void*, size_t) { return NotBuilt(); }

absl::Status CudaUnregisterHostMemory(void*) { return NotBuilt(); }

}  // namespace kvtier
