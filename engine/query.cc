// The public query API (embstore/query.h): plan, then pool with the fast
// kernels. No exception leaves these functions.
#include "embstore/query.h"

#include <string>
#include <utility>

#include "engine/guarded.h"
#include "engine/kernels_ref.h"
#include "engine/plan.h"
#include "engine/pool.h"

namespace embstore {
namespace {

using engine::Guarded;

Result<PooledOutput> PoolIntoNew(const TableView& table, const engine::BagPlan& plan,
                                 const QueryOptions& options) {
  PooledOutput result;
  result.shape = plan.OutputShape(table.dim);
  result.values.resize(static_cast<size_t>(plan.num_bags()) * static_cast<size_t>(table.dim));
  EMBSTORE_RETURN_IF_ERROR(engine::PoolPlan(table, plan, options, result.values));
  return result;
}

}  // namespace

const char* PoolingModeName(PoolingMode mode) {
  switch (mode) {
    case PoolingMode::kSum:
      return "sum";
    case PoolingMode::kMean:
      return "mean";
    case PoolingMode::kMax:
      return "max";
  }
  return "unknown";
}

std::optional<PoolingMode> ParsePoolingMode(std::string_view name) {
  if (name == "sum") return PoolingMode::kSum;
  if (name == "mean") return PoolingMode::kMean;
  if (name == "max") return PoolingMode::kMax;
  return std::nullopt;
}

Result<int64_t> CountBags(const TableView& table, const BagRequest& request,
                          const QueryOptions& options) {
  return Guarded<Result<int64_t>>([&]() -> Result<int64_t> {
    EMBSTORE_ASSIGN_OR_RETURN(const engine::BagPlan plan,
                              engine::PlanBags(table, request, options));
    return plan.num_bags();
  });
}

Result<int64_t> CountBags(const TableView& table, const BatchedBagRequest& request,
                          const QueryOptions& options) {
  return Guarded<Result<int64_t>>([&]() -> Result<int64_t> {
    EMBSTORE_ASSIGN_OR_RETURN(const engine::BagPlan plan,
                              engine::PlanBatchedBags(table, request, options));
    return plan.num_bags();
  });
}

Status EmbeddingBag(const TableView& table, const BagRequest& request, const QueryOptions& options,
                    std::span<float> out) {
  return Guarded<Status>([&]() -> Status {
    EMBSTORE_ASSIGN_OR_RETURN(const engine::BagPlan plan,
                              engine::PlanBags(table, request, options));
    return engine::PoolPlan(table, plan, options, out);
  });
}

Result<PooledOutput> EmbeddingBag(const TableView& table, const BagRequest& request,
                                  const QueryOptions& options) {
  return Guarded<Result<PooledOutput>>([&]() -> Result<PooledOutput> {
    EMBSTORE_ASSIGN_OR_RETURN(const engine::BagPlan plan,
                              engine::PlanBags(table, request, options));
    return PoolIntoNew(table, plan, options);
  });
}

Status BatchedEmbeddingBag(const TableView& table, const BatchedBagRequest& request,
                           const QueryOptions& options, std::span<float> out) {
  return Guarded<Status>([&]() -> Status {
    EMBSTORE_ASSIGN_OR_RETURN(const engine::BagPlan plan,
                              engine::PlanBatchedBags(table, request, options));
    return engine::PoolPlan(table, plan, options, out);
  });
}

Result<PooledOutput> BatchedEmbeddingBag(const TableView& table, const BatchedBagRequest& request,
                                         const QueryOptions& options) {
  return Guarded<Result<PooledOutput>>([&]() -> Result<PooledOutput> {
    EMBSTORE_ASSIGN_OR_RETURN(const engine::BagPlan plan,
                              engine::PlanBatchedBags(table, request, options));
    return PoolIntoNew(table, plan, options);
  });
}

double RowNorm(std::span<const float> row, double norm_type) {
  return engine::RowNormRef(row.data(), static_cast<int64_t>(row.size()), norm_type);
}

}  // namespace embstore
