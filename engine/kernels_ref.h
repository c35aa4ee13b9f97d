// Internal: the plain scalar reference implementation (the "twin" of the fast
// kernels). One bag at a time, one row at a time, one element at a time, on
// the calling thread; written for obviousness, not speed. Tests compare
// every fast kernel (every ISA the machine has) against it.
//
// Thread-safety: reentrant, like the public API.
#ifndef EMBSTORE_ENGINE_KERNELS_REF_H_
#define EMBSTORE_ENGINE_KERNELS_REF_H_

#include <cstdint>
#include <span>

#include "embstore/query.h"
#include "embstore/status.h"
#include "embstore/types.h"
#include "engine/plan.h"

namespace embstore::engine {

// Writes row r of `table` as dim float32 values (int8: code * scale + bias,
// computed as a float multiply then a float add).
// REQUIRES: 0 <= r < table.rows; out holds table.dim floats.
void DequantizeRowRef(const TableView& table, int64_t r, float* out);

// The norm max_norm compares against: computed in double, then rounded to
// float32 (torch computes the norm of a float32 row as a float32). p = 2:
// sqrt(sum x^2); p = 1: sum |x|; p = inf: max |x| (NaN if any x is NaN);
// p = -inf: min |x| (as torch); p = 0: number of non-zero x (as torch);
// other p > 0: (sum |x|^p)^(1/p). Returns NaN for NaN or finite p < 0.
double RowNormRef(const float* row, int64_t n, double norm_type);

// Same contract as PoolPlan (engine/pool.h), computed the plain way.
Status PoolPlanRef(const TableView& table, const BagPlan& plan, const QueryOptions& options,
                   std::span<float> out);

// Same contracts as the public functions of embstore/query.h.
Status EmbeddingBagRef(const TableView& table, const BagRequest& request,
                       const QueryOptions& options, std::span<float> out);
Result<PooledOutput> EmbeddingBagRef(const TableView& table, const BagRequest& request,
                                     const QueryOptions& options);
Status BatchedEmbeddingBagRef(const TableView& table, const BatchedBagRequest& request,
                              const QueryOptions& options, std::span<float> out);
Result<PooledOutput> BatchedEmbeddingBagRef(const TableView& table,
                                            const BatchedBagRequest& request,
                                            const QueryOptions& options);

}  // namespace embstore::engine

#endif  // EMBSTORE_ENGINE_KERNELS_REF_H_
