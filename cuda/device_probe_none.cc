// The CPU-only build's probe: always "no GPU".
#include "embstore/gpu_device.h"

namespace embstore::cuda {

bool BuiltWithCuda() { return false; }

Result<std::vector<DeviceInfo>> ListDevices() {
  return Status::NotSupported(
      "no GPU: this embstore was built without CUDA (EMBSTORE_CUDA=OFF or no nvcc)");
}

Result<double> MeasureCopyBandwidth(int, int64_t, int) {
  return Status::NotSupported(
      "no GPU: this embstore was built without CUDA (EMBSTORE_CUDA=OFF or no nvcc)");
}

}  // namespace embstore::cuda
