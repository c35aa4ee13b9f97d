// GpuEngine::Impl: resident mode (gpu_engine_impl.h).
//
// When the cache has a slot for every row of the first table it serves, the
// whole table is copied in once (slot = row) and batches on it skip the
// per-id bookkeeping: no dedup, no lookups, the ids are the slots. Another
// table of the same layout ends the mode for good (until Clear() or a new
// layout): the cache starts over as a cache, so that alternating tables do
// not copy whole tables back and forth.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <vector>

#include "cuda/cuda_check.h"
#include "cuda/gpu_engine_impl.h"

namespace embstore::cuda {

Status GpuEngine::Impl::EnterResident(const TableView& table, int max_threads) {
  constexpr int64_t kChunk = int64_t{1} << 20;
  std::vector<int64_t> rows;
  std::vector<int32_t> slots;
  for (int64_t first = 0; first < table.rows; first += kChunk) {
    const int64_t n = std::min(kChunk, table.rows - first);
    rows.resize(static_cast<size_t>(n));
    slots.resize(static_cast<size_t>(n));
    for (int64_t k = 0; k < n; ++k) {
      rows[k] = first + k;
      slots[k] = static_cast<int32_t>(first + k);
    }
    EMBSTORE_RETURN_IF_ERROR(FillSlots(table, layout_, arena_, rows, slots, options_.staging_bytes,
                                       max_threads, &batch_staging_, compute_));
  }
  EMBSTORE_CUDA_CHECK(cudaStreamSynchronize(compute_));
  resident_ = true;
  resident_id_ = IdentityOf(table);
  counters_.lookups += table.rows;
  counters_.misses += table.rows;
  counters_.bytes_copied += table.rows * layout_.transfer_bytes();
  return Status::OK();
}

void GpuEngine::Impl::LeaveResident() {
  if (!resident_) return;
  resident_ = false;
  cache_->Clear();
  tables_.clear();
}

Status GpuEngine::Impl::RunResident(const engine::BagPlan& plan, const QueryOptions& options,
                                    float* out, bool out_on_device, size_t out_bytes) {
  const DirectPlan direct = PlanDirect(plan);
  const MetaLayout& meta = direct.layout;
  EMBSTORE_RETURN_IF_ERROR(meta_host_.Grow(static_cast<size_t>(meta.total)));
  EMBSTORE_RETURN_IF_ERROR(meta_device_.Grow(static_cast<size_t>(meta.total)));
  FillDirectMeta(plan, direct, meta_host_.data(), options.max_threads != 1);
  float* out_dev = out;
  if (!out_on_device) {
    EMBSTORE_RETURN_IF_ERROR(out_device_.Grow(out_bytes));
    out_dev = reinterpret_cast<float*>(out_device_.data());
  }
  EMBSTORE_CUDA_CHECK(cudaMemcpyAsync(meta_device_.data(), meta_host_.data(),
                                      static_cast<size_t>(meta.total), cudaMemcpyHostToDevice,
                                      compute_));
  const uint8_t* dmeta = meta_device_.data();
  // max_norm scales for every entry's row (a row used twice is computed
  // twice, to the same value).
  EMBSTORE_RETURN_IF_ERROR(LaunchKernels(meta, dmeta,
                                         reinterpret_cast<const int32_t*>(dmeta + meta.slots_at),
                                         meta.entries, options, out_dev));
  if (!out_on_device) {
    EMBSTORE_CUDA_CHECK(cudaMemcpyAsync(out, out_dev, out_bytes, cudaMemcpyDeviceToHost, compute_));
  }
  EMBSTORE_CUDA_CHECK(cudaStreamSynchronize(compute_));
  counters_.lookups += meta.entries;
  counters_.hits += meta.entries;
  ++counters_.sub_batches;
  return Status::OK();
}

}  // namespace embstore::cuda
