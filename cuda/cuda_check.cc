#include "cuda/cuda_check.h"

#include <string>

namespace embstore::cuda {

Status CudaStatus(cudaError_t err, const char* what, const char* file, int line) {
  // Strip the directories: "cuda/gpu_engine_cuda.cc" is enough to find it.
  std::string where = file;
  const size_t cut = where.rfind("/cuda/");
  if (cut != std::string::npos) where = where.substr(cut + 1);
  const std::string msg = std::string(what) + " at " + where + ":" + std::to_string(line) + ": " +
                          cudaGetErrorName(err) + ": " + cudaGetErrorString(err);
  switch (err) {
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorInvalidDevice:
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorUnsupportedPtxVersion:
      return Status::NotSupported("no GPU: " + msg);
    case cudaErrorMemoryAllocation:
      return Status::IOError("GPU out of memory: " + msg);
    default:
      return Status::Internal("CUDA error: " + msg);
  }
}

}  // namespace embstore::cuda
