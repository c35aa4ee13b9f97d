// Factorization-machine scoring over batched bags (embstore extension).
//
// Inputs are the batched-bag layout of query.h: indices and weights [B, N],
// inclusive end offsets [B, K]. Bag m of sample b is pooled (weighted sum) from
// a vectors table [rows, D] into V_m and from a biases table [rows, 1] into
// beta_m, with the engine's batched pooling. Then per sample:
//   FM:  y = bias + sum_m beta_m + 0.5 * sum_d ((sum_m V_m)^2 - sum_m V_m^2)[d]
//   FFM: D = F * k, V_m[f] = the k-slice for field f, bag m in field fields[b, m]:
//        y = bias + sum_m beta_m + sum_{m < m'} <V_m[f_m'], V_m'[f_m]>
//
// Thread-safety: reentrant; many threads may score against the same tables.
#ifndef EMBSTORE_FM_H_
#define EMBSTORE_FM_H_

#include <optional>
#include <span>
#include <vector>

#include "embstore/query.h"

namespace embstore {

enum class FmModel { kFm = 0, kFfm = 1 };

struct FmRequest {
  // The bags: indices/weights [B, N], ends [B, K] (see BatchedBagRequest).
  BatchedBagRequest bags;
  // FFM only: the field of each bag, [B, K] values in [0, num_fields).
  // Absent: bag m is in field m (requires K <= num_fields).
  std::optional<IndexArray> fields;
  // FFM only: F, the number of fields; the vectors table's dim must be F * k.
  // 0 means F = K.
  int64_t num_fields = 0;
  // The global bias added to every score.
  double bias = 0.0;
};

// Writes B scores into `out`. REQUIRES: out.size() == bags.batch.
// `options` may set max_threads; its mode must be kSum (the default for FM is
// a weighted sum, whatever options.mode says is refused otherwise) and
// padding_idx/max_norm apply to both tables' pooling as in a query.
Status FmScore(FmModel model, const TableView& vectors, const TableView& biases,
               const FmRequest& request, const QueryOptions& options, std::span<float> out);

// The same, into a new vector of B scores. A batch whose scores cannot fit in
// the memory this process may use is refused, naming the size, before
// anything is allocated (2-D inputs with K = 0 can name any B).
Result<std::vector<float>> FmScore(FmModel model, const TableView& vectors, const TableView& biases,
                                   const FmRequest& request, const QueryOptions& options);

}  // namespace embstore

#endif  // EMBSTORE_FM_H_
