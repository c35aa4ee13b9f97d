// Internal (CUDA builds only): copying table rows into cache slots.
//
// Rows travel from the table (usually an mmapped file) through pinned
// staging buffers and their device twins to their slots: the gather of one
// chunk into one staging buffer overlaps the copy and scatter of the previous
// chunk from the other.
//
// Thread-safety: a Staging belongs to one thread at a time (the batch path
// holds the engine's mutex; the prefetch worker owns its own).
#ifndef EMBSTORE_CUDA_SLOT_FILL_H_
#define EMBSTORE_CUDA_SLOT_FILL_H_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <span>
#include <vector>

#include "cuda/cache_policy.h"
#include "cuda/cuda_buffer.h"
#include "cuda/kernel_args.h"
#include "cuda/slot_layout.h"
#include "embstore/query.h"
#include "embstore/status.h"
#include "embstore/types.h"

namespace embstore::cuda {

// Double-buffered staging of misses: pinned host buffers and their device
// twins, each with an event recorded when the scatter that read it is done.
struct Staging {
  PinnedBuffer host[2];
  DeviceBuffer device[2];
  cudaEvent_t done[2] = {nullptr, nullptr};
  int next = 0;

  Status Init();
  void Destroy();
  // Grows both buffers to `bytes`, first waiting for queued work on them.
  Status Reserve(size_t bytes);
};

// Copies rows[i] of `table` into slot slots[i] of `arena`, on `stream`,
// through `staging` in chunks of at most `staging_bytes`. Gathers with up to
// `max_threads` threads (QueryOptions::max_threads: 0 all, 1 the calling
// thread only). A cold table's rows have their pages read ahead as
// `prefetch` (QueryOptions::prefetch, prefetch_depth) says. Returns once the
// last copy is queued; the staging events tell when the buffers are free
// again.
Status FillSlots(const TableView& table, const SlotLayout& layout, const SlotArena& arena,
                 std::span<const int64_t> rows, std::span<const int32_t> slots,
                 int64_t staging_bytes, int max_threads, Staging* staging, cudaStream_t stream,
                 const QueryOptions& prefetch = QueryOptions());

// The rows and slots of a list of fills.
void SplitFills(std::span<const SlotCache::Fill> fills, std::vector<int64_t>* rows,
                std::vector<int32_t>* slots);

}  // namespace embstore::cuda

#endif  // EMBSTORE_CUDA_SLOT_FILL_H_
