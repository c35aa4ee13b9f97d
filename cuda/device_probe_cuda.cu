// The CUDA build's probe. Every runtime call is checked; an absent driver or
// device is reported as "no GPU", never as a crash.
#include <cuda_runtime.h>

#include <algorithm>
#include <string>
#include <vector>

#include "cuda/cuda_check.h"
#include "embstore/gpu_device.h"

namespace embstore::cuda {

bool BuiltWithCuda() { return true; }

namespace {
std::string VersionString(int v) {  // 13000 -> "13.0"
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}
}  // namespace

Result<std::vector<DeviceInfo>> ListDevices() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    cudaGetLastError();  // clear the error
    std::string why;
    int driver = 0, runtime = 0;
    cudaDriverGetVersion(&driver);  // 0 when no driver is installed
    cudaRuntimeGetVersion(&runtime);
    if (err == cudaErrorInsufficientDriver && driver == 0) {
      why = "no NVIDIA driver is installed on this machine";
    } else if (err == cudaErrorInsufficientDriver) {
      why = "the NVIDIA driver supports CUDA " + VersionString(driver) +
            ", older than this build's CUDA " + VersionString(runtime);
    } else if (err == cudaErrorNoDevice || (err == cudaSuccess && count == 0)) {
      why = "no CUDA device found";
    } else {
      why = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
    }
    return Status::NotSupported("no GPU: " + why);
  }
  std::vector<DeviceInfo> out;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp p;
    EMBSTORE_CUDA_CHECK(cudaGetDeviceProperties(&p, i));
    out.push_back(DeviceInfo{i, p.name, p.major, p.minor, static_cast<uint64_t>(p.totalGlobalMem)});
  }
  return out;
}

namespace {
// Owns what MeasureCopyBandwidth allocates, whichever way it returns.
struct CopyBench {
  void* a = nullptr;
  void* b = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  int previous = -1;
  ~CopyBench() {
    if (a) cudaFree(a);
    if (b) cudaFree(b);
    if (start) cudaEventDestroy(start);
    if (stop) cudaEventDestroy(stop);
    if (previous >= 0) cudaSetDevice(previous);
  }
};
}  // namespace

Result<double> MeasureCopyBandwidth(int device, int64_t bytes, int repeats) {
  EMBSTORE_RETURN_IF_ERROR(ListDevices().status());
  if (bytes <= 0 || repeats <= 0) return Status::InvalidArgument("bytes and repeats must be > 0");
  CopyBench c;
  int previous = 0;
  EMBSTORE_CUDA_CHECK(cudaGetDevice(&previous));
  c.previous = previous;
  EMBSTORE_CUDA_CHECK(cudaSetDevice(device));
  const size_t n = static_cast<size_t>(bytes);
  EMBSTORE_CUDA_CHECK(cudaMalloc(&c.a, n));
  EMBSTORE_CUDA_CHECK(cudaMalloc(&c.b, n));
  EMBSTORE_CUDA_CHECK(cudaMemset(c.a, 1, n));  // not zeros: see METHOD.md
  EMBSTORE_CUDA_CHECK(cudaEventCreate(&c.start));
  EMBSTORE_CUDA_CHECK(cudaEventCreate(&c.stop));
  EMBSTORE_CUDA_CHECK(cudaMemcpy(c.b, c.a, n, cudaMemcpyDeviceToDevice));  // warm-up
  std::vector<float> ms(static_cast<size_t>(repeats));
  for (float& t : ms) {
    EMBSTORE_CUDA_CHECK(cudaEventRecord(c.start));
    EMBSTORE_CUDA_CHECK(cudaMemcpyAsync(c.b, c.a, n, cudaMemcpyDeviceToDevice));
    EMBSTORE_CUDA_CHECK(cudaEventRecord(c.stop));
    EMBSTORE_CUDA_CHECK(cudaEventSynchronize(c.stop));
    EMBSTORE_CUDA_CHECK(cudaEventElapsedTime(&t, c.start, c.stop));
  }
  std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
  const double seconds = ms[ms.size() / 2] / 1e3;
  return 2.0 * static_cast<double>(bytes) / seconds;
}

}  // namespace embstore::cuda
