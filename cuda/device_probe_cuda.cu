// The CUDA build's probe. Every runtime call is checked; an absent driver or
// device is reported as "no GPU", never as a crash.
#include <cuda_runtime.h>

#include "cuda/device_probe.h"

namespace embstore::cuda {

bool BuiltWithCuda() { return true; }

Result<std::vector<DeviceInfo>> ListDevices() {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    std::string why = err != cudaSuccess ? cudaGetErrorString(err) : "no CUDA device found";
    cudaGetLastError();  // clear the sticky error
    return Status::NotSupported("no GPU: " + why);
  }
  std::vector<DeviceInfo> out;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp p;
    err = cudaGetDeviceProperties(&p, i);
    if (err != cudaSuccess) return Status::IOError(std::string("cudaGetDeviceProperties: ") + cudaGetErrorString(err));
    out.push_back(DeviceInfo{i, p.name, p.major, p.minor, static_cast<uint64_t>(p.totalGlobalMem)});
  }
  return out;
}

}  // namespace embstore::cuda
