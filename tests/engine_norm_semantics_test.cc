// Hand-worked examples of max_norm, one per point of docs/SEMANTICS: every
// norm type against numbers printed by torch 1.13, strictness, huge values and
// float overflow, extreme p, RowNorm, and the store never changing.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <span>
#include <vector>

#include "embstore/query.h"
#include "engine/kernels_ref.h"
#include "engine/plan.h"
#include "engine/pool.h"
#include "engine_semantics_util.h"
#include "engine_test_util.h"

namespace embstore {
namespace {

using namespace testing;  // NOLINT(google-build-using-namespace): the suites' shared helpers

// Numbers printed by torch 1.13:
//   W = arange(12).reshape(4, 3); F.embedding_bag([1, 2, 0], W, [0, 2],
//   mode=..., max_norm=1.0, norm_type=p)
TEST(Semantics, MaxNormMatchesTorchForEveryNormType) {
  struct Row {
    double p;
    PoolingMode mode;
    std::vector<float> want;
  };
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<Row> rows = {
      {2.0, PoolingMode::kSum, {0.915803194, 1.13914776, 1.36249232, 0, 0.44721356, 0.894427121}},
      {2.0,
       PoolingMode::kMean,
       {0.457901597, 0.569573879, 0.681246161, 0, 0.44721356, 0.894427121}},
      {2.0, PoolingMode::kMax, {0.49153918, 0.573462367, 0.707106709, 0, 0.44721356, 0.894427121}},
      {1.0,
       PoolingMode::kSum,
       {0.535714269, 0.666666687, 0.797619104, 0, 0.333333313, 0.666666627}},
      {1.0,
       PoolingMode::kMax,
       {0.285714298, 0.333333343, 0.416666687, 0, 0.333333313, 0.666666627}},
      {inf, PoolingMode::kSum, {1.35000002, 1.67499995, 2, 0, 0.49999997, 0.99999994}},
      {inf, PoolingMode::kMean, {0.675000012, 0.837499976, 1, 0, 0.49999997, 0.99999994}},
      {inf, PoolingMode::kMax, {0.75, 0.875, 1, 0, 0.49999997, 0.99999994}},
      // -inf: torch's min |x|.
      {-inf, PoolingMode::kSum, {1.99999988, 2.5, 2.99999976, 0, 1, 2}},
      {0.0, PoolingMode::kSum, {2.99999976, 3.66666651, 4.33333302, 0, 0.49999997, 0.99999994}},
      {0.0, PoolingMode::kMax, {1.99999988, 2.33333325, 2.66666651, 0, 0.49999997, 0.99999994}},
      {0.5,
       PoolingMode::kSum,
       {0.179791018, 0.223793864, 0.267796695, 0, 0.171572849, 0.343145698}},
      {3.0, PoolingMode::kSum, {1.08643699, 1.35084319, 1.61524928, 0, 0.480749816, 0.961499631}},
      {3.0,
       PoolingMode::kMean,
       {0.543218493, 0.675421596, 0.807624638, 0, 0.480749816, 0.961499631}},
      {3.0,
       PoolingMode::kMax,
       {0.586436987, 0.684176505, 0.833333254, 0, 0.480749816, 0.961499631}},
  };
  const TestTable t = Arange43();
  Query1D q{{1, 2, 0}, {0, 2}, {}};
  for (const Row& row : rows) {
    SCOPED_TRACE("p=" + std::to_string(row.p) + " mode=" + PoolingModeName(row.mode));
    QueryOptions o;
    o.mode = row.mode;
    o.max_norm = 1.0;
    o.norm_type = row.p;
    ExpectPooled(t.view(), q.Request(), o, row.want, 2e-6);
  }
}

TEST(Semantics, MaxNormIsStrictAndScalesAsTorch) {
  const TestTable t({3, 4, 0.3f, 0.4f}, 2, 2, DType::kF32);  // norms 5 and 0.5
  QueryOptions o;
  o.mode = PoolingMode::kSum;
  Query1D q{{0}, {0}, {}};
  o.max_norm = 5.0;  // exactly the norm: unchanged
  ExpectPooled(t.view(), q.Request(), o, {3, 4}, 0);
  o.max_norm = 2.0;
  const float scale = static_cast<float>(2.0 / (5.0 + 1e-7));
  ExpectPooled(t.view(), q.Request(), o, {3 * scale, 4 * scale}, 0);
  // Below max_norm: unchanged.
  Query1D q1{{1}, {0}, {}};
  ExpectPooled(t.view(), q1.Request(), o, {0.3f, 0.4f}, 0);
}

// Rows whose squares overflow float (|x| > 1.8e19) still get the double
// norm; rows holding inf are scaled to 0 * inf = NaN, as torch does.
TEST(Semantics, MaxNormWithHugeValues) {
  const int64_t dim = 40;
  std::vector<float> v(2 * dim, 0.0f);
  v[3] = 3e20f;
  v[17] = 4e20f;
  v[dim + 5] = std::numeric_limits<float>::infinity();
  v[dim + 6] = 1.0f;
  const TestTable t(v, 2, dim, DType::kF32);
  Query1D q{{0, 1}, {0, 1}, {}};
  QueryOptions o;
  o.mode = PoolingMode::kSum;
  o.max_norm = 1.0;
  std::vector<float> want(2 * dim, 0.0f);
  const float scale =
      static_cast<float>(1.0 / (static_cast<double>(static_cast<float>(5e20)) + 1e-7));
  want[3] = 3e20f * scale;
  want[17] = 4e20f * scale;
  // Row 1: norm inf, scale 1 / inf = 0: inf * 0 = NaN, the rest 0.
  want[dim + 5] = kNaN;
  ExpectPooled(t.view(), q.Request(), o, want, 1e-6);
}

// A difference from torch, kept (docs/semantics.md): a finite row whose
// float32 norm overflows. torch 1.13 computes the norm of [1e38]*4 as inf and
// scales the row to 0; embstore's norm is 2e38 and the row is scaled to norm
// 0.5, 0.25 per element.
TEST(Semantics, MaxNormOfARowWhoseFloatNormOverflows) {
  const TestTable t(std::vector<float>(4, 1e38f), 1, 4, DType::kF32);
  Query1D q{{0}, {0}, {}};
  QueryOptions o;
  o.mode = PoolingMode::kSum;
  o.max_norm = 0.5;
  ExpectPooled(t.view(), q.Request(), o, {0.25f, 0.25f, 0.25f, 0.25f}, 1e-6);
}

// A difference from torch, documented (docs/semantics.md): with
// include_last_offset, indices after offsets[B] take no part in mean either.
// indices [0, 1], offsets [0, 1]: one bag, [0, 1) = row 0 alone; torch 1.13
// divides row 0 by 2 (the count up to the end of the input).
TEST(Semantics, IncludeLastOffsetMeanIgnoresTrailingEntries) {
  const TestTable t = Arange43();
  Query1D q{{0, 1}, {0, 1}, {}};
  QueryOptions o;
  o.include_last_offset = true;
  o.mode = PoolingMode::kMean;
  ExpectPooled(t.view(), q.Request(), o, {0, 1, 2});
}

TEST(Semantics, MaxNormNeverModifiesTheStore) {
  std::mt19937_64 rng(3);
  for (DType dtype : kAllDTypes) {
    const TestTable t = testing::RandomTable(20, 17, dtype, rng);
    const std::vector<uint8_t> before = t.Bytes();
    Query1D q{{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 19, 19}, {0, 5, 12}, {}};
    QueryOptions o;
    o.max_norm = 0.1;
    for (PoolingMode mode : {PoolingMode::kSum, PoolingMode::kMean, PoolingMode::kMax}) {
      o.mode = mode;
      for (double p : {1.0, 2.0, 3.0, std::numeric_limits<double>::infinity()}) {
        o.norm_type = p;
        auto first = EmbeddingBag(t.view(), q.Request(), o);
        ASSERT_TRUE(first.ok());
        auto second = EmbeddingBag(t.view(), q.Request(), o);  // same answer again
        ASSERT_TRUE(second.ok());
        EXPECT_EQ(first->values, second->values);
      }
    }
    EXPECT_EQ(t.Bytes(), before) << testing::DTypeLabel(dtype);
  }
}

TEST(Semantics, RowNorm) {
  const std::vector<float> row = {3, -4, 0};
  EXPECT_DOUBLE_EQ(RowNorm(row, 2), 5);
  EXPECT_DOUBLE_EQ(RowNorm(row, 1), 7);
  EXPECT_DOUBLE_EQ(RowNorm(row, std::numeric_limits<double>::infinity()), 4);
  EXPECT_DOUBLE_EQ(RowNorm(row, 0), 2);  // torch: number of non-zeros
  EXPECT_NEAR(RowNorm(row, 3), std::cbrt(27.0 + 64.0), 1e-6);
  EXPECT_DOUBLE_EQ(RowNorm(row, -std::numeric_limits<double>::infinity()), 0);  // min |x|
  EXPECT_DOUBLE_EQ(RowNorm({{3.0f, -2.0f}}, -std::numeric_limits<double>::infinity()), 2);
  EXPECT_TRUE(std::isnan(RowNorm(row, -1)));
  EXPECT_TRUE(std::isnan(RowNorm({{1.0f, kNaN}}, std::numeric_limits<double>::infinity())));
  EXPECT_EQ(RowNorm({}, 2), 0);
}

// max_norm with extreme norm_type values, against torch 1.13
// (tests/golden/gen_norm_type_goldens.py): p is converted to float (1e308 is
// the max-abs norm, 1e-300 the count of nonzeros) and |x|^p overflows and
// underflows as float arithmetic does. Fast kernels, the reference and the
// public RowNorm agree with torch.
TEST(Semantics, ExtremeNormTypesMatchTorch) {
  const std::string path = std::string(EMBSTORE_SOURCE_DIR) + "/tests/golden/norm_type_edges.json";
  std::ifstream in(path);
  ASSERT_TRUE(in.good()) << path;
  const nlohmann::json doc = nlohmann::json::parse(in);
  std::vector<float> values;
  for (const auto& row : doc["rows"]) {
    for (const auto& x : row) values.push_back(x.get<float>());
  }
  const int64_t dim = doc["dim"].get<int64_t>();
  const auto rows = static_cast<int64_t>(values.size()) / dim;
  int checked = 0;
  for (DType dtype : {DType::kF32}) {
    const testing::TestTable t(values, rows, dim, dtype);
    for (const auto& c : doc["cases"]) {
      ++checked;
      const std::vector<int64_t> ids = c["indices"].get<std::vector<int64_t>>();
      const std::vector<int64_t> offsets = c["offsets"].get<std::vector<int64_t>>();
      const std::vector<float> expected = c["expected"].get<std::vector<float>>();
      BagRequest r;
      r.indices = std::span<const int64_t>(ids);
      r.indices_shape = {static_cast<int64_t>(ids.size())};
      r.offsets = std::span<const int64_t>(offsets);
      QueryOptions o;
      o.mode = PoolingMode::kSum;
      o.max_norm = c["max_norm"].get<double>();
      o.norm_type = c["norm_type"].get<double>();
      SCOPED_TRACE("norm_type " + std::to_string(o.norm_type) + " max_norm " +
                   std::to_string(*o.max_norm));
      auto fast = EmbeddingBag(t.view(), r, o);
      ASSERT_TRUE(fast.ok()) << fast.status().message();
      ASSERT_EQ(fast->values.size(), expected.size());
      std::vector<float> ref(expected.size(), -1.0f);
      ASSERT_TRUE(engine::EmbeddingBagRef(t.view(), r, o, ref).ok());
      for (size_t i = 0; i < expected.size(); ++i) {
        const float tol = 1e-5f * (1.0f + std::abs(expected[i]));
        EXPECT_NEAR(fast->values[i], expected[i], tol) << "fast, element " << i;
        EXPECT_NEAR(ref[i], expected[i], tol) << "reference, element " << i;
      }
    }
  }
  EXPECT_EQ(checked, 30);  // the cases of norm_type_edges.json
  // The public RowNorm: 1e308 is the max-abs norm, 1e-300 counts nonzeros,
  // 400 overflows float (5^400) to inf, 0.5^400 underflows to 0.
  const std::vector<float> row = {5.0f, -5.0f, 0.5f};
  EXPECT_EQ(RowNorm(row, 1e308), 5.0);
  EXPECT_EQ(RowNorm(row, 1e-300), 3.0);
  EXPECT_TRUE(std::isinf(RowNorm(row, 400)));
  EXPECT_EQ(RowNorm(std::vector<float>{0.5f, 0.5f, 0.5f}, 400), 0.0);
}

}  // namespace
}  // namespace embstore
