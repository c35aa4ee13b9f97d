// Internal (CUDA builds only): host entry points of the device kernels.
//
// Each function launches one kernel on `stream` through
// EMBSTORE_LAUNCH_KERNEL and returns the launch's Status; the work itself is
// asynchronous. The argument structs (plain C++) are in pool_math.h.
#ifndef EMBSTORE_CUDA_POOLING_KERNELS_H_
#define EMBSTORE_CUDA_POOLING_KERNELS_H_

#include <cuda_runtime_api.h>

#include "cuda/pool_math.h"
#include "embstore/status.h"
#include "embstore/types.h"

namespace embstore::cuda {

// Pools every bag of `args` (one group of args.lanes threads per bag).
Status LaunchPool(DType dtype, PoolKind kind, const PoolArgs& args, cudaStream_t stream);

// Writes args.row_scale[slot] for each of args.slots (one group per row).
Status LaunchRowScales(DType dtype, const NormArgs& args, cudaStream_t stream);

// Copies staged rows (and int8 scale/bias) into their slots.
Status LaunchScatter(const ScatterArgs& args, cudaStream_t stream);

}  // namespace embstore::cuda

#endif  // EMBSTORE_CUDA_POOLING_KERNELS_H_
