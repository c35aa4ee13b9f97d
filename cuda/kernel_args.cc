#include "cuda/kernel_args.h"

#include "engine/plan.h"

namespace embstore::cuda {

PoolKind PoolKindOf(PoolingMode mode) {
  switch (mode) {
    case PoolingMode::kSum:
      return PoolKind::kSum;
    case PoolingMode::kMean:
      return PoolKind::kMean;
    case PoolingMode::kMax:
      return PoolKind::kMax;
  }
  return PoolKind::kMean;
}

PassKernels MakePassKernels(const SlotLayout& layout, const SlotArena& arena,
                            const MetaLayout& meta, const uint8_t* meta_base,
                            const int32_t* norm_slots, int64_t norm_count,
                            const QueryOptions& options, float* out) {
  PassKernels k;
  const int lanes = LanesPerRow(layout.vecs_per_row);
  k.renorm = options.max_norm.has_value();
  if (k.renorm) {
    NormArgs& na = k.norm;
    na.rows = arena.rows;
    na.row_bytes = layout.row_bytes;
    na.qparams = arena.qparams;
    na.slots = norm_slots;
    na.count = norm_count;
    na.dim = layout.dim;
    na.vecs_per_row = layout.vecs_per_row;
    na.lanes = lanes;
    na.norm_type = engine::TorchNormType(options.norm_type);
    na.kind = NormKindFor(na.norm_type);
    na.max_norm = *options.max_norm;
    na.row_scale = arena.row_scale;
  }
  PoolArgs& pa = k.pool;
  pa.rows = arena.rows;
  pa.row_bytes = layout.row_bytes;
  pa.qparams = arena.qparams;
  pa.row_scale = k.renorm ? arena.row_scale : nullptr;
  pa.bag_offsets = reinterpret_cast<const int64_t*>(meta_base + meta.offsets_at);
  pa.entry_slot = reinterpret_cast<const int32_t*>(meta_base + meta.slots_at);
  pa.entry_weight =
      meta.weights_at >= 0 ? reinterpret_cast<const float*>(meta_base + meta.weights_at) : nullptr;
  pa.num_bags = meta.bags;
  pa.dim = layout.dim;
  pa.vecs_per_row = layout.vecs_per_row;
  pa.lanes = lanes;
  pa.out = out;
  pa.vector_store = layout.dim % 4 == 0 && reinterpret_cast<uintptr_t>(pa.out) % 16 == 0;
  k.kind = PoolKindOf(options.mode);
  return k;
}

ScatterArgs MakeScatterArgs(const SlotLayout& layout, const SlotArena& arena,
                            const StagingLayout& staging, const uint8_t* staged) {
  ScatterArgs sa;
  sa.staged_rows = staged + staging.rows_at;
  sa.staged_qparams = staging.qparams_at >= 0
                          ? reinterpret_cast<const float*>(staged + staging.qparams_at)
                          : nullptr;
  sa.slots = reinterpret_cast<const int32_t*>(staged + staging.slots_at);
  sa.count = staging.n;
  sa.row_bytes = layout.row_bytes;
  sa.rows = arena.rows;
  sa.qparams = layout.quantized ? arena.qparams : nullptr;
  return sa;
}

}  // namespace embstore::cuda
