// Internal (CUDA builds only): the one place CUDA errors become Status.
//
// Every CUDA runtime call in cuda/ goes through EMBSTORE_CUDA_CHECK and every
// kernel launch through EMBSTORE_LAUNCH_KERNEL. Both return a non-OK Status
// from the enclosing function (which must return Status or Result<T>) naming
// the failed call and its file:line; neither throws nor aborts.
#ifndef EMBSTORE_CUDA_CUDA_CHECK_H_
#define EMBSTORE_CUDA_CUDA_CHECK_H_

#include <cuda_runtime_api.h>

#include "embstore/status.h"

namespace embstore::cuda {

// Maps a CUDA error to a Status: no driver/device -> NotSupported ("no GPU:
// ..."), out of memory -> IOError, anything else -> Internal. The message
// reads "<what> at <file>:<line>: <cuda error name>: <description>".
Status CudaStatus(cudaError_t err, const char* what, const char* file, int line);

}  // namespace embstore::cuda

#define EMBSTORE_CUDA_CHECK(expr)                                                         \
  do {                                                                                    \
    const cudaError_t embstore_cuda_err_ = (expr);                                        \
    if (embstore_cuda_err_ != cudaSuccess) {                                              \
      return ::embstore::cuda::CudaStatus(embstore_cuda_err_, #expr, __FILE__, __LINE__); \
    }                                                                                     \
  } while (0)

// Launches `kernel` (a kernel or a pointer to one; wrap template ids in a
// variable first) and checks the launch. Errors of the kernel's execution
// surface at the next checked synchronizing call.
#define EMBSTORE_LAUNCH_KERNEL(kernel, grid, block, shared_bytes, stream, ...)                  \
  do {                                                                                          \
    kernel<<<(grid), (block), (shared_bytes), (stream)>>>(__VA_ARGS__);                         \
    const cudaError_t embstore_launch_err_ = cudaGetLastError();                                \
    if (embstore_launch_err_ != cudaSuccess) {                                                  \
      return ::embstore::cuda::CudaStatus(embstore_launch_err_, "launch of " #kernel, __FILE__, \
                                          __LINE__);                                            \
    }                                                                                           \
  } while (0)

#endif  // EMBSTORE_CUDA_CUDA_CHECK_H_
