// The bag inputs `query` and `score` share: batched bags from --indices [B,N]
// and --bag-ends [B,K], and --weights of the indices' shape.
#ifndef EMBSTORE_TOOLS_BAG_ARGS_H_
#define EMBSTORE_TOOLS_BAG_ARGS_H_

#include <cstdint>
#include <vector>

#include "embstore/query.h"
#include "embstore/status.h"
#include "tools/cli_util.h"

namespace embstore::cli {

// How a SPEC's shape splits into samples: a 2-D [B, X] is B samples of X; a
// 1-D [X] (an inline list) is one sample of X.
struct SampleShape {
  int64_t batch = 0;
  int64_t per_sample = 0;
};
SampleShape SamplesOf(const std::vector<int64_t>& shape);

// The batched bags of `indices` [B, N] and `ends` [B, K] (inclusive end
// offsets), viewing both arrays, which must outlive the request; without
// weights. InvalidArgument when the two have different numbers of samples.
Result<BatchedBagRequest> BatchedBags(const IntArray& indices, const IntArray& ends);

// per_sample_weights must have the shape of the indices (torch's rule).
Status CheckWeightsShape(const FloatArray& weights, const std::vector<int64_t>& indices_shape);

}  // namespace embstore::cli

#endif  // EMBSTORE_TOOLS_BAG_ARGS_H_
