// GPU discovery: the CUDA devices this build can use. No CUDA types: the
// header compiles anywhere (and as C++17, for the library's .cu files), and
// without CUDA the same functions return NotSupported ("no GPU: ...").
#ifndef EMBSTORE_GPU_DEVICE_H_
#define EMBSTORE_GPU_DEVICE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "embstore/status.h"

namespace embstore::cuda {

struct DeviceInfo {
  int ordinal = 0;
  std::string name;
  int compute_major = 0;
  int compute_minor = 0;
  uint64_t total_memory_bytes = 0;
};

// True when this build includes the CUDA module.
bool BuiltWithCuda();

// Lists CUDA devices. NotSupported with a clear message when the build has no
// CUDA or no device/driver is present ("no GPU").
Result<std::vector<DeviceInfo>> ListDevices();

// Measures the device memory bandwidth of `device` the way benchmarks
// compare against it: the median over `repeats` of a device-to-device copy
// of `bytes`, counting bytes read plus bytes written, in bytes per second.
// NotSupported without a GPU; IOError if the buffers do not fit.
Result<double> MeasureCopyBandwidth(int device, int64_t bytes = int64_t{1} << 30, int repeats = 20);

}  // namespace embstore::cuda

#endif  // EMBSTORE_GPU_DEVICE_H_
