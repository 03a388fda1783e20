// The CUDA half of the device runtime, behind a plain C++ interface so that
// device_runtime.cc needs no CUDA headers. Defined in cuda_device_runtime.cc
// when kvtier is built with CUDA, and in cuda_unavailable.cc otherwise (where
// every entry point reports that CUDA is not built in).
#ifndef KVTIER_CUDA_CUDA_BACKEND_H_
#define KVTIER_CUDA_CUDA_BACKEND_H_

#include <cstddef>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cuda/device_runtime.h"

namespace kvtier {

// The CUDA runtime on device `device`. FailedPrecondition when CUDA is not
// built in or no device is visible; InvalidArgument for an ordinal that is
// not visible.
absl::StatusOr<std::unique_ptr<DeviceRuntime>> CreateCudaDeviceRuntime(int device);

// OK when CUDA is built in and at least one device is visible; otherwise
// FailedPrecondition saying why.
absl::Status CudaDeviceAvailable();

// cudaHostRegister / cudaHostUnregister for every device. REQUIRES: base is
// not null and bytes > 0.
absl::Status CudaRegisterHostMemory(void* base, size_t bytes);
absl::Status CudaUnregisterHostMemory(void* base);

}  // namespace kvtier

#endif  // KVTIER_CUDA_CUDA_BACKEND_H_
