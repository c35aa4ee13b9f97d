// Internal: the arguments the GPU engine gives its kernels, in plain C++.
//
// GpuEngine (gpu_engine_impl.cc, slot_fill.cc) launches the kernels with
// exactly these structs, and the CPU tests (cuda/testing/emulated_gpu.h) run
// the kernels' host twins (pool_math.h) on the very same structs, so that CI,
// which has no GPU, checks the engine's own argument setup.
//
// Thread-safety: pure functions of their arguments.
#ifndef EMBSTORE_CUDA_KERNEL_ARGS_H_
#define EMBSTORE_CUDA_KERNEL_ARGS_H_

#include <cstdint>

#include "cuda/batch_prep.h"
#include "cuda/pool_math.h"
#include "cuda/slot_layout.h"
#include "embstore/query.h"
#include "embstore/types.h"

namespace embstore::cuda {

// Where the slots of the row cache live: `rows` (SlotLayout::row_bytes per
// slot), int8 scale and bias (two floats per slot; null unless quantized),
// and one max_norm scale per slot.
struct SlotArena {
  uint8_t* rows = nullptr;
  float* qparams = nullptr;
  float* row_scale = nullptr;
};

// The kernel for a pooling mode.
PoolKind PoolKindOf(PoolingMode mode);

// The kernels of one pass: with max_norm, the row-scale kernel over the given
// slots (first), then the pooling kernel over the pass's bags.
struct PassKernels {
  bool renorm = false;  // run the row-scale kernel with `norm` first
  NormArgs norm;
  PoolKind kind = PoolKind::kSum;
  PoolArgs pool;
};

// The kernels' arguments for a pass whose metadata (laid out by `meta`) is at
// `meta_base`, whose max_norm scales are computed for the `norm_count` slots
// at `norm_slots` (ignored without max_norm), writing bag b's result at
// out + b * layout.dim. All pointers are into the memory the kernels read
// (device memory on the GPU).
PassKernels MakePassKernels(const SlotLayout& layout, const SlotArena& arena,
                            const MetaLayout& meta, const uint8_t* meta_base,
                            const int32_t* norm_slots, int64_t norm_count,
                            const QueryOptions& options, float* out);

// The scatter kernel's arguments for `staged` (laid out by `staging`): its
// rows into their slots of `arena`.
ScatterArgs MakeScatterArgs(const SlotLayout& layout, const SlotArena& arena,
                            const StagingLayout& staging, const uint8_t* staged);

}  // namespace embstore::cuda

#endif  // EMBSTORE_CUDA_KERNEL_ARGS_H_
