// Internal: request validation and the normalized bag plan.
//
// Every request layout (torch's 1-D indices + offsets, with or without
// include_last_offset; 2-D indices; batched bags with inclusive end offsets)
// is validated in full and turned into one form: per bag, a half-open range
// [bag_begin[b], bag_end[b]) of positions into the flat index array, plus the
// resolved padding row. Kernels, the reference twin, and later consumers
// (backward/gradients, FM/FFM scoring) all work from a BagPlan and never look
// at the original layout again.
//
// Thread-safety: a BagPlan is an immutable value once built; any number of
// threads may read it at once.
#ifndef EMBSTORE_ENGINE_PLAN_H_
#define EMBSTORE_ENGINE_PLAN_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "embstore/query.h"
#include "embstore/status.h"
#include "embstore/types.h"

namespace embstore::engine {

// torch evaluates a float row's p-norm with p converted to float: 1e308 is
// inf (the max-abs norm), 1e-300 is 0 (the count of nonzeros). Every norm in
// the engine (CPU kernels, reference, GPU, renorm) takes p through this. The
// general p-norm is also evaluated as torch's float arithmetic has it: each
// |x|^p rounded to float (overflow to inf, underflow to 0) and a sum past the
// float range is inf (tests/golden/norm_type_edges.json).
inline double TorchNormType(double p) { return static_cast<double>(static_cast<float>(p)); }

struct BagPlan {
  // The flat ids and per-sample weights of the request. NOT owned: the
  // request's buffers must outlive the plan.
  IndexArray indices;
  const float* weights = nullptr;  // parallel to indices; null means all 1

  // Bag b covers positions [bag_begin[b], bag_end[b]) of `indices`. Ranges
  // never overlap and appear in increasing order, but need not be contiguous
  // (batched bags skip their trailing padding items; include_last_offset
  // drops indices after offsets[B]). Every id at a position inside some bag
  // is in [0, min_rows); ids outside every bag were never looked at.
  std::vector<int64_t> bag_begin;
  std::vector<int64_t> bag_end;

  // Positions equal to this row are skipped (neither pooled nor counted).
  // -1 means no padding. Already resolved (a negative padding_idx p has
  // become p + rows of the table the plan was built against).
  int64_t padding_row = -1;

  // Largest id referenced by any bag, plus one (0 if no bag has an entry).
  // A table with at least this many rows can be pooled with this plan.
  int64_t min_rows = 0;

  // The output shape without the trailing dim: {B} or {B, K} (batched).
  std::vector<int64_t> bag_shape;

  int64_t num_bags() const { return static_cast<int64_t>(bag_begin.size()); }
  // Number of positions covered by all bags together.
  int64_t num_entries() const;
  // bag_shape followed by dim.
  std::vector<int64_t> OutputShape(int64_t dim) const;
};

// Validates `request` (layout, offsets, weights, every id used, padding) and
// `options` against `table`, and builds the plan. On error returns
// InvalidArgument with a message meant for a person, e.g.
//   "indices[17] = 1000 is out of range for table 'items' (1000 rows)".
Result<BagPlan> PlanBags(const TableView& table, const BagRequest& request,
                         const QueryOptions& options);
Result<BagPlan> PlanBatchedBags(const TableView& table, const BatchedBagRequest& request,
                                const QueryOptions& options);

// PlanBags and PlanBatchedBags without the check of the ids: the layout,
// offsets or ends, weights, padding and options are validated, the ids not
// (the plan's min_rows stays 0, so PoolPlan must not be given it). For a
// caller that pools the request in parts, each validated by the engine, and
// needs only the number of bags first.
Result<BagPlan> PlanBagLayout(const TableView& table, const BagRequest& request,
                              const QueryOptions& options);
Result<BagPlan> PlanBatchedBagLayout(const TableView& table, const BatchedBagRequest& request,
                                     const QueryOptions& options);

// The ids of a prefetch, validated as one bag of a request (so the messages
// are a query's), as a plan of that one bag.
Result<BagPlan> PlanIds(const TableView& table, IndexArray ids);

// Checks that a view is usable: dim, rows >= 0, a known dtype, a row stride
// large enough for a row, and data present when there are rows.
Status ValidateTable(const TableView& table);

inline constexpr int64_t kMaxPrefetchDepth = 65536;

// Checks the parts of QueryOptions that do not depend on the request: mode,
// max_norm (> 0, not NaN), norm_type (>= 0, +inf or -inf; not NaN),
// max_threads (>= 0), prefetch (a known mode), prefetch_depth (1..65536).
Status ValidatePoolOptions(const QueryOptions& options);

// Refuses, before anything is allocated, a request for `count` things of
// `bytes_each` bytes that cannot be addressed or exceeds the memory this
// process may use (UsableMemoryBytes), naming the count, `what` they are
// ("bags of dim 8", "samples") and the bytes.
Status CheckFitsInMemory(int64_t count, int64_t bytes_each, const std::string& what);

// Everything PoolPlan checks before writing: the table, the options, that
// the plan fits the table (min_rows, padding row) and that `out_size` is
// num_bags * dim.
Status ValidatePoolInputs(const TableView& table, const BagPlan& plan, const QueryOptions& options,
                          size_t out_size);

}  // namespace embstore::engine

#endif  // EMBSTORE_ENGINE_PLAN_H_
