// Internal, device-only: the __global__ kernels. The per-thread arithmetic is
// in pool_math.h (shared with the CPU tests); this file adds thread indexing
// and the warp-shuffle reduction of the max_norm norms.
#ifndef EMBSTORE_CUDA_POOLING_KERNELS_CUH_
#define EMBSTORE_CUDA_POOLING_KERNELS_CUH_

#include <cuda_runtime.h>

#include "cuda/pool_math.h"

namespace embstore::cuda {

inline constexpr int kThreadsPerBlock = 256;

// One group of a.lanes consecutive threads per bag (lanes is a power of two
// <= 32, so a group never straddles a warp).
template <DType kD, PoolKind kKind>
__global__ void __launch_bounds__(kThreadsPerBlock) PoolKernel(const PoolArgs a) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t bag = t / a.lanes;
  const int lane = static_cast<int>(t % a.lanes);
  if (bag >= a.num_bags) return;
  PoolBagLane<kD, kKind>(a, bag, lane);
}

__device__ __forceinline__ NormPartial ShuffleXor(const NormPartial& p, int offset, int width) {
  NormPartial q;
  q.sum = __shfl_xor_sync(0xffffffffu, p.sum, offset, width);
  q.m = __shfl_xor_sync(0xffffffffu, p.m, offset, width);
  q.nan = __shfl_xor_sync(0xffffffffu, static_cast<int>(p.nan), offset, width) != 0;
  return q;
}

// One group of a.lanes threads per distinct row: partial norms per lane,
// merged across the group with shuffles (every thread of the warp takes part,
// including those past the end), then lane 0 writes the scale.
template <DType kD>
__global__ void __launch_bounds__(kThreadsPerBlock) RowScaleKernel(const NormArgs a) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t i = t / a.lanes;
  const int lane = static_cast<int>(t % a.lanes);
  NormPartial p = NormIdentity(a.kind);
  if (i < a.count) p = NormLane<kD>(a, i, lane);
  for (int offset = a.lanes / 2; offset > 0; offset /= 2) {
    NormMerge(&p, a.kind, ShuffleXor(p, offset, a.lanes));
  }
  if (i < a.count && lane == 0) {
    a.row_scale[a.slots[i]] = NormScale(p, a.kind, a.norm_type, a.max_norm);
  }
}

// Grid-stride over (row, 16-byte unit) pairs.
__global__ void __launch_bounds__(kThreadsPerBlock) ScatterKernel(const ScatterArgs a) {
  const int64_t units = a.row_bytes / kVectorBytes;
  const int64_t total = a.count * units;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < total;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    ScatterUnit(a, k / units, k % units);
  }
}

}  // namespace embstore::cuda

#endif  // EMBSTORE_CUDA_POOLING_KERNELS_CUH_
