#include "cuda/slot_fill.h"

#include <tbb/task_arena.h>

#include <algorithm>

#include "cuda/batch_prep.h"
#include "cuda/cuda_check.h"
#include "cuda/pooling_kernels.h"
#include "engine/threads.h"

namespace embstore::cuda {

Status Staging::Init() {
  for (cudaEvent_t& e : done) {
    EMBSTORE_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  }
  return Status::OK();
}

void Staging::Destroy() {
  for (cudaEvent_t& e : done) {
    if (e != nullptr) cudaEventDestroy(e);
    e = nullptr;
  }
}

Status Staging::Reserve(size_t bytes) {
  if (bytes <= host[0].size() && bytes <= device[0].size() && bytes <= host[1].size() &&
      bytes <= device[1].size()) {
    return Status::OK();
  }
  for (cudaEvent_t e : done) EMBSTORE_CUDA_CHECK(cudaEventSynchronize(e));
  for (int i = 0; i < 2; ++i) {
    EMBSTORE_RETURN_IF_ERROR(host[i].Grow(bytes));
    EMBSTORE_RETURN_IF_ERROR(device[i].Grow(bytes));
  }
  return Status::OK();
}

Status FillSlots(const TableView& table, const SlotLayout& layout, const SlotArena& arena,
                 std::span<const int64_t> rows, std::span<const int32_t> slots,
                 int64_t staging_bytes, int max_threads, Staging* staging, cudaStream_t stream,
                 const QueryOptions& prefetch) {
  const int64_t n = static_cast<int64_t>(rows.size());
  if (n == 0) return Status::OK();
  const int64_t chunk = StagingRowsFor(staging_bytes, layout);
  EMBSTORE_RETURN_IF_ERROR(staging->Reserve(
      static_cast<size_t>(ComputeStagingLayout(std::min(chunk, n), layout).total)));
  for (int64_t first = 0; first < n; first += chunk) {
    const int64_t count = std::min(chunk, n - first);
    const int i = staging->next;
    staging->next ^= 1;
    // The copy and scatter that last used buffer i must be done.
    EMBSTORE_CUDA_CHECK(cudaEventSynchronize(staging->done[i]));
    const StagingLayout sl = ComputeStagingLayout(count, layout);
    uint8_t* host = staging->host[i].data();
    const auto chunk_rows = rows.subspan(static_cast<size_t>(first), static_cast<size_t>(count));
    const auto chunk_slots = slots.subspan(static_cast<size_t>(first), static_cast<size_t>(count));
    if (max_threads > 1) {
      tbb::task_arena limited(engine::CapThreads(max_threads));
      limited.execute(
          [&] { GatherRows(table, layout, chunk_rows, chunk_slots, sl, host, true, prefetch); });
    } else {
      GatherRows(table, layout, chunk_rows, chunk_slots, sl, host, max_threads != 1, prefetch);
    }
    uint8_t* dev = staging->device[i].data();
    EMBSTORE_CUDA_CHECK(
        cudaMemcpyAsync(dev, host, static_cast<size_t>(sl.total), cudaMemcpyHostToDevice, stream));
    EMBSTORE_RETURN_IF_ERROR(LaunchScatter(MakeScatterArgs(layout, arena, sl, dev), stream));
    EMBSTORE_CUDA_CHECK(cudaEventRecord(staging->done[i], stream));
  }
  return Status::OK();
}

void SplitFills(std::span<const SlotCache::Fill> fills, std::vector<int64_t>* rows,
                std::vector<int32_t>* slots) {
  rows->resize(fills.size());
  slots->resize(fills.size());
  for (size_t k = 0; k < fills.size(); ++k) {
    (*rows)[k] = CacheKeyRow(fills[k].key);
    (*slots)[k] = fills[k].slot;
  }
}

}  // namespace embstore::cuda
