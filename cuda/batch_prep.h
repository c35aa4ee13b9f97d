// Internal: the host-side preparation of a GPU batch, in plain C++.
//
//   BagPlan (engine/plan.h, validated)
//     -> DedupBags:   distinct rows, and per bag its non-padding entries as
//                     indices into those rows (CSR)
//     -> SplitBatch:  passes of whole bags whose distinct rows fit the cache
//     -> (SlotCache::Acquire gives each distinct row a slot)
//     -> GatherRows:  missing rows, re-laid out for their slots, into staging
//     -> FillMeta:    the pass's bag offsets, entry slots, weights and the
//                     distinct slots (for the max_norm kernel), for the device
//
// None of this touches CUDA, so the whole pipeline runs on a CPU in the unit
// tests (tests/cuda_pool_math_test.cc) with the kernels' host twins.
//
// Thread-safety: pure functions of their arguments.
#ifndef EMBSTORE_CUDA_BATCH_PREP_H_
#define EMBSTORE_CUDA_BATCH_PREP_H_

#include <cstdint>
#include <span>
#include <vector>

#include "cuda/cache_policy.h"
#include "cuda/slot_layout.h"
#include "embstore/status.h"
#include "embstore/types.h"
#include "engine/plan.h"

namespace embstore::cuda {

// A batch with its rows deduplicated and padding entries dropped. Dropping
// padding keeps the semantics: padding neither adds nor counts, and a bag of
// only padding is empty (zeros).
struct DedupedBatch {
  std::vector<int64_t> unique_rows;   // distinct row ids (order: see DedupBags)
  std::vector<int64_t> bag_offsets;   // num_bags + 1: bag b = entries [o[b], o[b+1])
  std::vector<int32_t> entry_unique;  // per entry: index into unique_rows
  std::vector<float> entry_weight;    // per entry when weighted, else empty

  int64_t num_bags() const { return static_cast<int64_t>(bag_offsets.size()) - 1; }
  int64_t num_entries() const { return static_cast<int64_t>(entry_unique.size()); }
  int64_t num_unique() const { return static_cast<int64_t>(unique_rows.size()); }
  bool weighted = false;  // the request had per-sample weights
};

// Batches of at least this many positions, on a machine with 4 or more
// cores, are deduplicated in parallel (TBB), partitioned by row hash; their
// rows are numbered partition by partition. Others serially, rows numbered in
// first-use order.
inline constexpr int64_t kParallelDedupEntries = int64_t{1} << 16;

// REQUIRES: a plan from PlanBags/PlanBatchedBags (ids inside bags in range).
// InvalidArgument if a batch has 2^31 or more entries. `scratch`, if given,
// is the hash map to use (cleared first): reusing one across batches saves
// allocating and faulting in a fresh table each time.
Result<DedupedBatch> DedupBags(const engine::BagPlan& plan, FlatIdMap* scratch = nullptr);
// The partitioned algorithm, whatever the batch size (for tests).
Result<DedupedBatch> DedupBagsPartitioned(const engine::BagPlan& plan);

// One pass over the device: bags [first_bag, last_bag) and the distinct rows
// (indices into DedupedBatch::unique_rows) they use.
struct SubBatch {
  int64_t first_bag = 0;
  int64_t last_bag = 0;
  std::vector<int32_t> uniques;
};

// Splits a batch into passes of consecutive whole bags whose distinct rows fit
// in `capacity` slots (one pass when the whole batch fits; none for zero
// bags). Greedy: each pass takes as many bags as fit. A bag that alone uses
// more distinct rows than `capacity` gives InvalidArgument naming the bag.
Result<std::vector<SubBatch>> SplitBatch(const DedupedBatch& batch, int64_t capacity);

// Where each part lives in a pass's metadata buffer (byte offsets, 16-byte
// aligned): bag offsets (int64, bags + 1, relative to the pass's first
// entry), entry slots (int32), entry weights (float, when weighted) and the
// pass's distinct slots (int32, when renormalizing).
struct MetaLayout {
  int64_t bags = 0, entries = 0, uniques = 0;
  int64_t offsets_at = 0;
  int64_t slots_at = 0;
  int64_t weights_at = -1;  // -1: unweighted
  int64_t uniques_at = -1;  // -1: no max_norm
  int64_t total = 0;
};
MetaLayout ComputeMetaLayout(const DedupedBatch& batch, const SubBatch& sub, bool with_uniques);

// Writes the pass's metadata at `meta` (layout.total bytes). slot_of_unique
// is indexed like DedupedBatch::unique_rows; only the pass's rows are read.
void FillMeta(const DedupedBatch& batch, const SubBatch& sub,
              std::span<const int32_t> slot_of_unique, const MetaLayout& layout, uint8_t* meta);

// Resident mode: a table held whole in slots 0..rows-1 (slot = row) needs no
// dedup and no cache lookups. The pass is the whole plan; entry slots are the
// row ids themselves (padding dropped). REQUIRES: rows < 2^31.
struct DirectPlan {
  std::vector<int64_t> bag_offsets;  // num_bags + 1, over non-padding entries
  MetaLayout layout;                 // uniques_at = -1: max_norm reads the entry slots
};
DirectPlan PlanDirect(const engine::BagPlan& plan);
// Writes the metadata (offsets, entry slots = rows, weights); parallel over
// bags with TBB when `parallel`.
void FillDirectMeta(const engine::BagPlan& plan, const DirectPlan& direct, uint8_t* meta,
                    bool parallel);

// A staging buffer for n rows: the rows as their slots hold them
// (layout.row_bytes each), then (int8) scale and bias per row, then the
// destination slot of each row. Byte offsets, 16-byte aligned.
struct StagingLayout {
  int64_t n = 0;
  int64_t rows_at = 0;
  int64_t qparams_at = -1;  // -1: not int8
  int64_t slots_at = 0;
  int64_t total = 0;
};
StagingLayout ComputeStagingLayout(int64_t n, const SlotLayout& layout);
// The most rows a staging buffer of `bytes` holds (at least 1).
int64_t StagingRowsFor(int64_t bytes, const SlotLayout& layout);

// Copies rows[i] of `table` into staging row i (elements zero-padded to the
// slot's row_bytes; int8 scale/bias split out) and records slots[i], for
// i < rows.size(). Parallel over rows with TBB when `parallel`. The rows'
// pages are read ahead as `prefetch` says (its prefetch and prefetch_depth;
// engine/page_prefetch.h), so the misses of a cold table come in
// concurrently.
// REQUIRES: every row in range; layout matches the table; staging holds
// ComputeStagingLayout(rows.size(), layout).total bytes.
void GatherRows(const TableView& table, const SlotLayout& layout, std::span<const int64_t> rows,
                std::span<const int32_t> slots, const StagingLayout& staging_layout,
                uint8_t* staging, bool parallel, const QueryOptions& prefetch = QueryOptions());

}  // namespace embstore::cuda

#endif  // EMBSTORE_CUDA_BATCH_PREP_H_
