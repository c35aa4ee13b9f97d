// Internal: pooling a validated BagPlan with the fast kernels, in parallel.
//
// This is the entry point for other engine code that builds its own bags:
// FM/FFM scoring pools the vectors and the biases tables over one batched
// plan, and backward passes will reuse the same plan:
//
//   EMBSTORE_ASSIGN_OR_RETURN(BagPlan plan, PlanBatchedBags(vectors, request, options));
//   std::vector<float> pooled(plan.num_bags() * vectors.dim);     // [B, K, k]
//   EMBSTORE_RETURN_IF_ERROR(PoolPlan(vectors, plan, options, pooled));
//   std::vector<float> beta(plan.num_bags());                     // [B, K, 1]
//   EMBSTORE_RETURN_IF_ERROR(PoolPlan(biases, plan, options, beta));
//
// Thread-safety: reentrant; any number of threads may pool the same table
// and plan at once.
#ifndef EMBSTORE_ENGINE_POOL_H_
#define EMBSTORE_ENGINE_POOL_H_

#include <span>
#include <vector>

#include "embstore/query.h"
#include "embstore/status.h"
#include "embstore/types.h"
#include "engine/plan.h"

namespace embstore::engine {

// Instruction sets the kernels are built for.
enum class Isa { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };
const char* IsaName(Isa isa);  // "generic", "avx2", "avx512"

// Whether this CPU (and OS) can run the kernels of `isa`.
bool IsaSupported(Isa isa);
// Every supported ISA, generic first.
std::vector<Isa> SupportedIsas();
// The one PoolPlan uses: the widest supported (detected once per process).
Isa BestIsa();

// Pools every bag of `plan` from `table` into `out` ([num_bags, dim],
// row-major; every element is written). Uses the plan's ids, weights and
// padding row; from `options` only mode, max_norm, norm_type and max_threads
// (padding_idx and include_last_offset were applied when planning).
// Validates first (ValidatePoolInputs: the plan fits this table, out has
// num_bags * dim floats) and writes nothing on error. The table may differ
// from the one the plan was built against if it has at least plan.min_rows
// rows (FM's biases table next to its vectors table).
Status PoolPlan(const TableView& table, const BagPlan& plan, const QueryOptions& options,
                std::span<float> out);

// PoolPlan with an explicit ISA, for tests and benchmarks comparing ISAs.
// NotSupported if this CPU cannot run `isa`.
Status PoolPlanWithIsa(Isa isa, const TableView& table, const BagPlan& plan,
                       const QueryOptions& options, std::span<float> out);

}  // namespace embstore::engine

#endif  // EMBSTORE_ENGINE_POOL_H_
