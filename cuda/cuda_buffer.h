// Internal (CUDA builds only): device memory, pinned host memory, and the
// current-device scope of the GPU engine's host code.
//
// Thread-safety: none of their own; each buffer belongs to one owner, which
// serializes its use (see gpu_engine_impl.h).
#ifndef EMBSTORE_CUDA_CUDA_BUFFER_H_
#define EMBSTORE_CUDA_CUDA_BUFFER_H_

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "cuda/cuda_check.h"
#include "embstore/status.h"

namespace embstore::cuda {

// The size a buffer that holds `have` bytes grows to when asked for `want`:
// at least 1.5 times as large (so that slowly growing requests do not
// reallocate each time), rounded up to whole MiB.
inline size_t GrownBytes(size_t want, size_t have) {
  const size_t kStep = size_t{1} << 20;
  const size_t target = std::max(want, have + have / 2);
  return (target + kStep - 1) / kStep * kStep;
}

// Where a CudaBuffer's memory comes from.
struct DeviceMemory {  // device memory of the current device
  static Status Allocate(void** ptr, size_t bytes) {
    EMBSTORE_CUDA_CHECK(cudaMalloc(ptr, bytes));
    return Status::OK();
  }
  static void Release(void* ptr) { cudaFree(ptr); }  // only fails for a dead context
};
struct PinnedMemory {  // page-locked host memory: copies from it are true DMA and asynchronous
  static Status Allocate(void** ptr, size_t bytes) {
    EMBSTORE_CUDA_CHECK(cudaHostAlloc(ptr, bytes, cudaHostAllocDefault));
    return Status::OK();
  }
  static void Release(void* ptr) { cudaFreeHost(ptr); }
};

// Memory of kind `Memory`, freed on destruction. Grow() replaces the
// allocation (the old contents are lost), so the caller makes sure no queued
// work still uses it.
template <class Memory>
class CudaBuffer {
 public:
  CudaBuffer() = default;
  CudaBuffer(const CudaBuffer&) = delete;
  CudaBuffer& operator=(const CudaBuffer&) = delete;
  ~CudaBuffer() { Free(); }

  // Makes the buffer hold at least `bytes`: exactly that many when `exact`,
  // else GrownBytes (room for later growth). A no-op when it already does.
  Status Grow(size_t bytes, bool exact = false) {
    if (bytes <= bytes_) return Status::OK();
    // Sized from the old capacity (x1.5), so it is read before Free() clears it.
    const size_t want = exact ? bytes : GrownBytes(bytes, bytes_);
    Free();
    EMBSTORE_RETURN_IF_ERROR(Memory::Allocate(&ptr_, want));
    bytes_ = want;
    return Status::OK();
  }
  void Free() {
    if (ptr_ != nullptr) Memory::Release(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  uint8_t* data() const { return static_cast<uint8_t*>(ptr_); }
  size_t size() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

using DeviceBuffer = CudaBuffer<DeviceMemory>;
using PinnedBuffer = CudaBuffer<PinnedMemory>;

// Makes `device` current for the scope and restores the caller's device.
class DeviceScope {
 public:
  DeviceScope() = default;
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;
  Status Enter(int device) {
    EMBSTORE_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) {
      EMBSTORE_CUDA_CHECK(cudaSetDevice(device));
      restore_ = true;
    }
    return Status::OK();
  }
  ~DeviceScope() {
    if (restore_) cudaSetDevice(previous_);
  }

 private:
  int previous_ = 0;
  bool restore_ = false;
};

}  // namespace embstore::cuda

#endif  // EMBSTORE_CUDA_CUDA_BUFFER_H_
