#include "tools/bag_args.h"

#include <string>

#include "checkpoint/checkpoint_internal.h"

namespace embstore::cli {

SampleShape SamplesOf(const std::vector<int64_t>& shape) {
  if (shape.size() == 2) return {shape[0], shape[1]};
  return {1, shape[0]};
}

Result<BatchedBagRequest> BatchedBags(const IntArray& indices, const IntArray& ends) {
  const SampleShape is = SamplesOf(indices.shape), es = SamplesOf(ends.shape);
  BatchedBagRequest req;
  req.batch = is.batch;
  req.items = is.per_sample;
  req.bags_per_sample = es.per_sample;
  if (es.batch != req.batch) {
    return Status::InvalidArgument("--bag-ends has " + std::to_string(es.batch) +
                                   " samples but --indices has " + std::to_string(req.batch));
  }
  req.indices = indices.view();
  req.ends = ends.view();
  return req;
}

Status CheckWeightsShape(const FloatArray& weights, const std::vector<int64_t>& indices_shape) {
  if (weights.shape == indices_shape) return Status::OK();
  return Status::InvalidArgument(
      "--weights has shape " + storage::ckpt::ShapeString(weights.shape) +
      " but --indices has shape " + storage::ckpt::ShapeString(indices_shape) +
      " (per-sample weights must have the shape of the indices)");
}

}  // namespace embstore::cli
