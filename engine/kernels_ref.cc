#include "engine/kernels_ref.h"

#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "codec/row_codec.h"

namespace embstore::engine {

void DequantizeRowRef(const TableView& table, int64_t r, float* out) {
  codec::DecodeRow(table.Row(r), table.dim, table.dtype, out);
}

double RowNormRef(const float* row, int64_t n, double norm_type) {
  if (std::isnan(norm_type) || (norm_type < 0 && !std::isinf(norm_type))) return std::nan("");
  const double p = TorchNormType(norm_type);
  double norm = 0;
  if (p == 2) {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += static_cast<double>(row[i]) * static_cast<double>(row[i]);
    norm = std::sqrt(s);
  } else if (p == 1) {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += std::fabs(static_cast<double>(row[i]));
    norm = s;
  } else if (std::isinf(p) && p < 0) {
    float m = std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < n; ++i) {
      if (std::isnan(row[i])) return std::nan("");
      if (std::fabs(row[i]) < m) m = std::fabs(row[i]);
    }
    norm = m;
  } else if (std::isinf(p)) {
    float m = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (std::isnan(row[i])) return std::nan("");
      if (std::fabs(row[i]) > m) m = std::fabs(row[i]);
    }
    norm = m;
  } else if (p == 0) {
    double count = 0;
    for (int64_t i = 0; i < n; ++i) count += row[i] != 0.0f ? 1 : 0;
    norm = count;
  } else {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) {
      s += static_cast<float>(std::pow(std::fabs(static_cast<double>(row[i])), p));
    }
    norm = s > std::numeric_limits<float>::max() ? std::numeric_limits<double>::infinity()
                                                 : std::pow(s, 1.0 / p);
  }
  return static_cast<double>(static_cast<float>(norm));
}

Status PoolPlanRef(const TableView& table, const BagPlan& plan, const QueryOptions& options,
                   std::span<float> out) {
  EMBSTORE_RETURN_IF_ERROR(ValidatePoolInputs(table, plan, options, out.size()));
  const int64_t dim = table.dim;
  std::vector<float> acc(dim), v(dim);
  for (int64_t b = 0; b < plan.num_bags(); ++b) {
    int64_t count = 0;
    for (int64_t pos = plan.bag_begin[b]; pos < plan.bag_end[b]; ++pos) {
      const int64_t id = plan.indices[pos];
      if (id == plan.padding_row) continue;
      DequantizeRowRef(table, id, v.data());
      if (options.max_norm.has_value()) {
        const double norm = RowNormRef(v.data(), dim, options.norm_type);
        if (norm > *options.max_norm) {
          const float scale = static_cast<float>(*options.max_norm / (norm + 1e-7));
          for (int64_t d = 0; d < dim; ++d) v[d] = v[d] * scale;
        }
      }
      if (plan.weights != nullptr) {
        for (int64_t d = 0; d < dim; ++d) v[d] = plan.weights[pos] * v[d];
      }
      for (int64_t d = 0; d < dim; ++d) {
        if (options.mode == PoolingMode::kMax) {
          // The first entry initializes; later ones replace only when
          // strictly greater (ties and NaN keep the earlier value).
          acc[d] = (count == 0 || v[d] > acc[d]) ? v[d] : acc[d];
        } else {
          acc[d] = (count == 0 ? 0.0f : acc[d]) + v[d];
        }
      }
      ++count;
    }
    float* out_row = out.data() + b * dim;
    for (int64_t d = 0; d < dim; ++d) {
      if (count == 0) {
        out_row[d] = 0.0f;
      } else if (options.mode == PoolingMode::kMean) {
        out_row[d] = acc[d] / static_cast<float>(count);
      } else {
        out_row[d] = acc[d];
      }
    }
  }
  return Status::OK();
}

namespace {

// The plan's pooled output in a new buffer of its shape.
Result<PooledOutput> PoolPlanToNewRef(const TableView& table, const BagPlan& plan,
                                      const QueryOptions& options) {
  PooledOutput result;
  result.shape = plan.OutputShape(table.dim);
  result.values.resize(static_cast<size_t>(plan.num_bags() * table.dim));
  EMBSTORE_RETURN_IF_ERROR(PoolPlanRef(table, plan, options, result.values));
  return result;
}

}  // namespace

Status EmbeddingBagRef(const TableView& table, const BagRequest& request,
                       const QueryOptions& options, std::span<float> out) {
  EMBSTORE_ASSIGN_OR_RETURN(const BagPlan plan, PlanBags(table, request, options));
  return PoolPlanRef(table, plan, options, out);
}

Result<PooledOutput> EmbeddingBagRef(const TableView& table, const BagRequest& request,
                                     const QueryOptions& options) {
  EMBSTORE_ASSIGN_OR_RETURN(const BagPlan plan, PlanBags(table, request, options));
  return PoolPlanToNewRef(table, plan, options);
}

Status BatchedEmbeddingBagRef(const TableView& table, const BatchedBagRequest& request,
                              const QueryOptions& options, std::span<float> out) {
  EMBSTORE_ASSIGN_OR_RETURN(const BagPlan plan, PlanBatchedBags(table, request, options));
  return PoolPlanRef(table, plan, options, out);
}

Result<PooledOutput> BatchedEmbeddingBagRef(const TableView& table,
                                            const BatchedBagRequest& request,
                                            const QueryOptions& options) {
  EMBSTORE_ASSIGN_OR_RETURN(const BagPlan plan, PlanBatchedBags(table, request, options));
  return PoolPlanToNewRef(table, plan, options);
}

}  // namespace embstore::engine
