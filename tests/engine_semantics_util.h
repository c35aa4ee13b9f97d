// Shared by the semantics suites (engine_semantics_test, engine_norm_semantics_test):
// the arange table of the torch sessions they quote and the check that runs the
// public API, the reference and every ISA on one hand-worked example.
#ifndef EMBSTORE_TESTS_ENGINE_SEMANTICS_UTIL_H_
#define EMBSTORE_TESTS_ENGINE_SEMANTICS_UTIL_H_

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "embstore/query.h"
#include "engine/kernels_ref.h"
#include "engine/plan.h"
#include "engine/pool.h"
#include "engine_test_util.h"

namespace embstore::testing {

inline constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// W = arange(12).reshape(4, 3), as in the torch sessions quoted below.
inline TestTable Arange43(DType dtype = DType::kF32) {
  std::vector<float> v(12);
  for (int i = 0; i < 12; ++i) v[i] = static_cast<float>(i);
  return TestTable(v, 4, 3, dtype);
}

struct Query1D {
  std::vector<int64_t> ids;
  std::vector<int64_t> offsets;
  std::vector<float> weights;
  BagRequest Request() const {
    BagRequest r;
    r.indices = std::span<const int64_t>(ids);
    r.offsets = std::span<const int64_t>(offsets);
    if (!weights.empty()) r.weights = std::span<const float>(weights);
    return r;
  }
};

// Runs the public API, the reference and every ISA; checks they all give
// `want` (tolerance relative to max(1, |want|); NaN must match NaN).
inline void ExpectPooled(const TableView& table, const BagRequest& request,
                         const QueryOptions& options, const std::vector<float>& want,
                         double tol = 1e-6) {
  auto got = EmbeddingBag(table, request, options);
  ASSERT_TRUE(got.ok()) << got.status().message();
  ASSERT_EQ(got->values.size(), want.size());
  auto ref = engine::EmbeddingBagRef(table, request, options);
  ASSERT_TRUE(ref.ok());
  auto plan = engine::PlanBags(table, request, options);
  ASSERT_TRUE(plan.ok());
  std::vector<std::pair<std::string, std::vector<float>>> results = {{"public", got->values},
                                                                     {"reference", ref->values}};
  for (engine::Isa isa : engine::SupportedIsas()) {
    std::vector<float> out(want.size(), 99.0f);
    ASSERT_TRUE(engine::PoolPlanWithIsa(isa, table, *plan, options, out).ok());
    results.emplace_back(engine::IsaName(isa), out);
  }
  for (const auto& [who, values] : results) {
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_TRUE(Close(values[i], want[i], tol))
          << who << "[" << i << "] = " << values[i] << ", want " << want[i];
    }
  }
}

// A weighted batched-bag request over the caller's arrays (which must outlive
// it): indices and weights [batch, items], ends [batch, bags_per_sample].
template <class Int>
BatchedBagRequest WeightedBatch(const std::vector<Int>& ids, const std::vector<float>& weights,
                                const std::vector<Int>& ends, int64_t batch, int64_t items,
                                int64_t bags_per_sample) {
  BatchedBagRequest r;
  r.indices = std::span<const Int>(ids);
  r.weights = std::span<const float>(weights);
  r.ends = std::span<const Int>(ends);
  r.batch = batch;
  r.items = items;
  r.bags_per_sample = bags_per_sample;
  return r;
}

}  // namespace embstore::testing

#endif  // EMBSTORE_TESTS_ENGINE_SEMANTICS_UTIL_H_
