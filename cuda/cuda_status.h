// Translation of CUDA runtime errors into absl::Status. Private to cuda/.
#ifndef KVTIER_CUDA_CUDA_STATUS_H_
#define KVTIER_CUDA_CUDA_STATUS_H_

#include <cuda_runtime_api.h>

#include "absl/strings/string_view.h"

#include "absl/status/status.h"

namespace kvtier {

// OK for cudaSuccess; otherwise "<what>: <cudaErrorName>: <message>" with a
// code by kind: ResourceExhausted (out of memory), InvalidArgument (bad value,
// pointer or registration), FailedPrecondition (no device, driver too old, no
// kernel image for this GPU), Internal (everything else, e.g. a faulting
// kernel, which also poisons the CUDA context).
absl::Status CudaStatus(cudaError_t err, absl::string_view what);

}  // namespace kvtier

#endif  // KVTIER_CUDA_CUDA_STATUS_H_
