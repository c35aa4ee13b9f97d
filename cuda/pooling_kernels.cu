// Launchers for the device kernels: pick the instantiation for the dtype and
// pooling kind, size the grid, and launch through EMBSTORE_LAUNCH_KERNEL.
//
// Instantiations: 4 dtypes x 3 kinds of PoolKernel, 4 RowScaleKernel, one
// ScatterKernel. Weights and max_norm are run-time flags (uniform across a
// warp, so they cost a predictable branch, not a divergence), which keeps
// nvcc's work small.
#include <algorithm>
#include <string>

#include "cuda/cuda_check.h"
#include "cuda/pooling_kernels.cuh"
#include "cuda/pooling_kernels.h"

namespace embstore::cuda {
namespace {

int64_t BlocksFor(int64_t threads) { return (threads + kThreadsPerBlock - 1) / kThreadsPerBlock; }

Status CheckGrid(int64_t blocks, const char* what) {
  if (blocks > 0x7fffffff) {
    return Status::InvalidArgument(std::string(what) + ": the batch is too large for one launch");
  }
  return Status::OK();
}

template <DType kD, PoolKind kKind>
Status LaunchPoolT(const PoolArgs& args, cudaStream_t stream) {
  const int64_t blocks = BlocksFor(args.num_bags * args.lanes);
  EMBSTORE_RETURN_IF_ERROR(CheckGrid(blocks, "pooling"));
  if (blocks == 0) return Status::OK();
  void (*kernel)(const PoolArgs) = PoolKernel<kD, kKind>;
  EMBSTORE_LAUNCH_KERNEL(kernel, static_cast<unsigned>(blocks), kThreadsPerBlock, 0, stream, args);
  return Status::OK();
}

template <DType kD>
Status LaunchPoolKind(PoolKind kind, const PoolArgs& args, cudaStream_t stream) {
  switch (kind) {
    case PoolKind::kSum:
      return LaunchPoolT<kD, PoolKind::kSum>(args, stream);
    case PoolKind::kMean:
      return LaunchPoolT<kD, PoolKind::kMean>(args, stream);
    case PoolKind::kMax:
      return LaunchPoolT<kD, PoolKind::kMax>(args, stream);
  }
  return Status::Internal("unknown pooling kind");
}

template <DType kD>
Status LaunchRowScalesT(const NormArgs& args, cudaStream_t stream) {
  const int64_t blocks = BlocksFor(args.count * args.lanes);
  EMBSTORE_RETURN_IF_ERROR(CheckGrid(blocks, "max_norm"));
  if (blocks == 0) return Status::OK();
  void (*kernel)(const NormArgs) = RowScaleKernel<kD>;
  EMBSTORE_LAUNCH_KERNEL(kernel, static_cast<unsigned>(blocks), kThreadsPerBlock, 0, stream, args);
  return Status::OK();
}

}  // namespace

Status LaunchPool(DType dtype, PoolKind kind, const PoolArgs& args, cudaStream_t stream) {
  switch (dtype) {
    case DType::kF32:
      return LaunchPoolKind<DType::kF32>(kind, args, stream);
    case DType::kF16:
      return LaunchPoolKind<DType::kF16>(kind, args, stream);
    case DType::kBF16:
      return LaunchPoolKind<DType::kBF16>(kind, args, stream);
    case DType::kInt8Rowwise:
      return LaunchPoolKind<DType::kInt8Rowwise>(kind, args, stream);
  }
  return Status::Internal("unknown dtype");
}

Status LaunchRowScales(DType dtype, const NormArgs& args, cudaStream_t stream) {
  switch (dtype) {
    case DType::kF32:
      return LaunchRowScalesT<DType::kF32>(args, stream);
    case DType::kF16:
      return LaunchRowScalesT<DType::kF16>(args, stream);
    case DType::kBF16:
      return LaunchRowScalesT<DType::kBF16>(args, stream);
    case DType::kInt8Rowwise:
      return LaunchRowScalesT<DType::kInt8Rowwise>(args, stream);
  }
  return Status::Internal("unknown dtype");
}

Status LaunchScatter(const ScatterArgs& args, cudaStream_t stream) {
  const int64_t units = args.count * (args.row_bytes / kVectorBytes);
  if (units == 0) return Status::OK();
  // Enough blocks to fill the GPU; the kernel strides over the rest.
  const int64_t blocks = std::min<int64_t>(std::max<int64_t>(BlocksFor(units), 1), 4096);
  EMBSTORE_LAUNCH_KERNEL(ScatterKernel, static_cast<unsigned>(blocks), kThreadsPerBlock, 0, stream,
                         args);
  return Status::OK();
}

}  // namespace embstore::cuda
