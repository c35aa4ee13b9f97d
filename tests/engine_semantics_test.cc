// Hand-worked examples, one per point of docs/SEMANTICS: modes, layouts,
// include_last_offset, weights, padding (negative too), max_norm for every p
// (against numbers printed by torch 1.13), empty and all-padding bags, max
// ties and the NaN-first rule, the extensions, and the store never changing.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
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

TEST(Semantics, ModesWithOffsets) {
  const TestTable t = Arange43();
  Query1D q{{0, 1, 2, 3}, {0, 1, 1}, {}};  // bags {0}, {}, {1, 2, 3}
  QueryOptions o;
  o.mode = PoolingMode::kSum;
  ExpectPooled(t.view(), q.Request(), o, {0, 1, 2, 0, 0, 0, 18, 21, 24});
  o.mode = PoolingMode::kMean;
  ExpectPooled(t.view(), q.Request(), o, {0, 1, 2, 0, 0, 0, 6, 7, 8});
  o.mode = PoolingMode::kMax;
  ExpectPooled(t.view(), q.Request(), o, {0, 1, 2, 0, 0, 0, 9, 10, 11});
}

TEST(Semantics, DefaultModeIsMean) { EXPECT_EQ(QueryOptions{}.mode, PoolingMode::kMean); }

TEST(Semantics, TwoDimensionalInput) {
  const TestTable t = Arange43();
  std::vector<int32_t> ids = {0, 1, 2, 3};
  BagRequest r;
  r.indices = std::span<const int32_t>(ids);
  r.indices_shape = {2, 2};
  QueryOptions o;
  o.mode = PoolingMode::kSum;
  ExpectPooled(t.view(), r, o, {3, 5, 7, 15, 17, 19});
  o.mode = PoolingMode::kMax;
  ExpectPooled(t.view(), r, o, {3, 4, 5, 9, 10, 11});
  auto shaped = EmbeddingBag(t.view(), r, o);
  ASSERT_TRUE(shaped.ok());
  EXPECT_EQ(shaped->shape, (std::vector<int64_t>{2, 3}));
  auto count = CountBags(t.view(), r, o);
  ASSERT_TRUE(count.ok());
  EXPECT_EQ(*count, 2);
}

// torch 1.13: F.embedding_bag(arange(6).reshape(3, 2) % 4 ... ) with
// include_last_offset=True on 2-D input gives B - 1 bags (its offsets are
// [0, N, ..., (B-1) N]); sum = [[3, 5, 7], [15, 17, 19]] for B = 3, N = 2.
TEST(Semantics, TwoDimensionalIncludeLastOffsetDropsLastRowAsTorch) {
  std::vector<float> v(30);
  for (int i = 0; i < 30; ++i) v[i] = static_cast<float>(i);
  const TestTable t(v, 10, 3, DType::kF32);
  std::vector<int64_t> ids = {0, 1, 2, 3, 4, 5};
  BagRequest r;
  r.indices = std::span<const int64_t>(ids);
  r.indices_shape = {3, 2};
  QueryOptions o;
  o.mode = PoolingMode::kSum;
  o.include_last_offset = true;
  ExpectPooled(t.view(), r, o, {3, 5, 7, 15, 17, 19});
  // Our rule for the entries after the last bag holds in every mode (torch's
  // mean divides its last bag by a count that includes them: pytorch#191965).
  o.mode = PoolingMode::kMean;
  ExpectPooled(t.view(), r, o, {1.5, 2.5, 3.5, 7.5, 8.5, 9.5});
  // One row: no bag at all.
  r.indices_shape = {1, 6};
  auto none = EmbeddingBag(t.view(), r, o);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->shape, (std::vector<int64_t>{0, 3}));
}

// torch: indices [0,1,2,3], offsets [0,1,2], include_last_offset -> sum
// [[0,1,2],[3,4,5]]; index 3 after offsets[B] takes no part.
TEST(Semantics, IncludeLastOffsetIgnoresTrailingEntries) {
  const TestTable t = Arange43();
  Query1D q{{0, 1, 2, 3}, {0, 1, 2}, {}};
  QueryOptions o;
  o.include_last_offset = true;
  o.mode = PoolingMode::kSum;
  ExpectPooled(t.view(), q.Request(), o, {0, 1, 2, 3, 4, 5});
  o.mode = PoolingMode::kMean;
  ExpectPooled(t.view(), q.Request(), o, {0, 1, 2, 3, 4, 5});
  o.mode = PoolingMode::kMax;
  ExpectPooled(t.view(), q.Request(), o, {0, 1, 2, 3, 4, 5});
  // As torch, ids after offsets[B] are not even checked.
  Query1D bad{{0, 1, 1000}, {0, 1, 2}, {}};
  ExpectPooled(t.view(), bad.Request(), o, {0, 1, 2, 3, 4, 5});
  // A single offset: zero bags.
  Query1D one{{0, 1}, {0}, {}};
  auto none = EmbeddingBag(t.view(), one.Request(), o);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->shape, (std::vector<int64_t>{0, 3}));
}

TEST(Semantics, EmptyOffsetsGiveNoBags) {
  const TestTable t = Arange43();
  Query1D q{{0, 1}, {}, {}};
  auto r = EmbeddingBag(t.view(), q.Request(), QueryOptions{});
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->shape, (std::vector<int64_t>{0, 3}));
}

// torch: indices [0,3,1], offsets [0], padding_idx 3, weights [1,2,3] ->
// [[9, 13, 17]].
TEST(Semantics, PerSampleWeightsSkipPadding) {
  const TestTable t = Arange43();
  Query1D q{{0, 3, 1}, {0}, {1, 2, 3}};
  QueryOptions o;
  o.mode = PoolingMode::kSum;
  o.padding_idx = 3;
  ExpectPooled(t.view(), q.Request(), o, {9, 13, 17});
}

// torch: indices [0,3,3], offsets [0,2], padding_idx -1, mean ->
// [[0,1,2],[0,0,0]] (the second bag is all padding).
TEST(Semantics, NegativePaddingIdx) {
  const TestTable t = Arange43();
  Query1D q{{0, 3, 3}, {0, 2}, {}};
  QueryOptions o;
  o.padding_idx = -1;
  for (PoolingMode mode : {PoolingMode::kSum, PoolingMode::kMean, PoolingMode::kMax}) {
    o.mode = mode;
    ExpectPooled(t.view(), q.Request(), o, {0, 1, 2, 0, 0, 0});
  }
  o.padding_idx = -4;  // row 0
  o.mode = PoolingMode::kMean;
  Query1D q2{{0, 1, 2}, {0}, {}};
  ExpectPooled(t.view(), q2.Request(), o, {4.5, 5.5, 6.5});
}

TEST(Semantics, EmptyAndAllPaddingBagsAreZeroInEveryMode) {
  // Negative rows, so a max over nothing cannot pass for a max of rows.
  const TestTable t({-1, -2, -3, -4, -5, -6}, 2, 3, DType::kF32);
  Query1D q{{1, 1}, {0, 0, 2}, {5, 6}};  // {}, {1, 1} (padding), {}
  QueryOptions o;
  o.padding_idx = 1;
  for (PoolingMode mode : {PoolingMode::kSum, PoolingMode::kMean, PoolingMode::kMax}) {
    o.mode = mode;
    ExpectPooled(t.view(), q.Request(), o, std::vector<float>(9, 0.0f));
    QueryOptions renorm = o;
    renorm.max_norm = 0.5;
    ExpectPooled(t.view(), q.Request(), renorm, std::vector<float>(9, 0.0f));
  }
}

TEST(Semantics, MaxOfNegativeRowsIsNotZero) {
  const TestTable t({-1, -5, -3, -2}, 2, 2, DType::kF32);
  Query1D q{{0, 1}, {0}, {}};
  QueryOptions o;
  o.mode = PoolingMode::kMax;
  ExpectPooled(t.view(), q.Request(), o, {-1, -2});
}

// Ties: the first entry wins, visible with -0 and +0 (torch gives -0 for
// rows [[-0.], [0.]] and bag [0, 1]).
TEST(Semantics, MaxTiesKeepTheFirstEntry) {
  const TestTable t({-0.0f, 0.0f}, 2, 1, DType::kF32);
  QueryOptions o;
  o.mode = PoolingMode::kMax;
  for (int64_t dim_copies : {1}) {
    (void)dim_copies;
    Query1D a{{0, 1}, {0}, {}};
    auto ra = EmbeddingBag(t.view(), a.Request(), o);
    ASSERT_TRUE(ra.ok());
    EXPECT_TRUE(std::signbit(ra->values[0]));
    Query1D b{{1, 0}, {0}, {}};
    auto rb = EmbeddingBag(t.view(), b.Request(), o);
    ASSERT_TRUE(rb.ok());
    EXPECT_FALSE(std::signbit(rb->values[0]));
  }
  // The same with a wide row (vector lanes and tail) on every ISA.
  const int64_t dim = 37;
  std::vector<float> v(2 * dim);
  for (int64_t d = 0; d < dim; ++d) {
    v[d] = -0.0f;
    v[dim + d] = 0.0f;
  }
  const TestTable wide(v, 2, dim, DType::kF32);
  Query1D q{{0, 1, 1, 0}, {0, 2}, {}};
  auto plan = engine::PlanBags(wide.view(), q.Request(), o);
  ASSERT_TRUE(plan.ok());
  for (engine::Isa isa : engine::SupportedIsas()) {
    std::vector<float> out(2 * dim);
    ASSERT_TRUE(engine::PoolPlanWithIsa(isa, wide.view(), *plan, o, out).ok());
    for (int64_t d = 0; d < dim; ++d) {
      EXPECT_TRUE(std::signbit(out[d])) << engine::IsaName(isa) << " d=" << d;
      EXPECT_FALSE(std::signbit(out[dim + d])) << engine::IsaName(isa) << " d=" << d;
    }
  }
}

// torch: rows [[nan, 1], [2, nan]], bags [0, 1] and [1, 0] ->
// [[nan, 1], [2, nan]]: a NaN stays only when it comes first.
TEST(Semantics, MaxNanStaysOnlyWhenFirst) {
  const int64_t dim = 19;  // vector lanes and a tail on every ISA
  std::vector<float> v(2 * dim);
  for (int64_t d = 0; d < dim; ++d) {
    v[d] = d % 2 == 0 ? kNaN : 1.0f;
    v[dim + d] = d % 2 == 0 ? 2.0f : kNaN;
  }
  const TestTable t(v, 2, dim, DType::kF32);
  Query1D q{{0, 1, 1, 0}, {0, 2}, {}};
  QueryOptions o;
  o.mode = PoolingMode::kMax;
  std::vector<float> want(2 * dim);
  for (int64_t d = 0; d < dim; ++d) {
    want[d] = d % 2 == 0 ? kNaN : 1.0f;
    want[dim + d] = d % 2 == 0 ? 2.0f : kNaN;
  }
  ExpectPooled(t.view(), q.Request(), o, want);
  // Weighted max follows the same rule.
  q.weights = {1, 1, 1, 1};
  ExpectPooled(t.view(), q.Request(), o, want);
}

// Extension: weighted max = max_j(w_j * W[i_j]).
TEST(Semantics, WeightedMax) {
  const TestTable t({1, -1, 2, -2}, 2, 2, DType::kF32);
  Query1D q{{0, 1}, {0}, {-1, 0.5}};  // values [-1, 1] and [1, -1]
  QueryOptions o;
  o.mode = PoolingMode::kMax;
  ExpectPooled(t.view(), q.Request(), o, {1, 1});
}

// Extension: weighted mean = weighted sum / number of non-padding entries.
TEST(Semantics, WeightedMean) {
  const TestTable t = Arange43();
  Query1D q{{0, 1, 3}, {0}, {2, 4, 100}};
  QueryOptions o;
  o.mode = PoolingMode::kMean;
  o.padding_idx = 3;
  ExpectPooled(t.view(), q.Request(), o, {(0 + 12) / 2.0f, (2 + 16) / 2.0f, (4 + 20) / 2.0f});
}

// The worked example of seeds/003 (WeightedEmbeddingBag) on its 6 x 4 table:
// indices and weights of shape [3, 4], inclusive ends of shape [3, 3] ->
// output [3, 3, 4]. The seed prints 4 decimals, hence the 1e-3 tolerance.
TEST(Semantics, BatchedBagsSeedExample) {
  const std::vector<float> w = {-0.4172f, -0.1485f, 0.9262f,  -0.4852f,  //
                                0.1526f,  -0.5395f, 0.0916f,  -1.2741f,  //
                                -0.3022f, -0.0705f, -0.1614f, -0.2234f,  //
                                0.8110f,  -0.2389f, 0.7278f,  -0.1804f,  //
                                1.3034f,  1.2308f,  -0.3032f, 1.7542f,   //
                                0.2870f,  -3.3745f, 1.4647f,  -0.4888f};
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    const TestTable t(w, 6, 4, dtype);
    const std::vector<int32_t> ids = {0, 4, 2, 5, 1, 1, 4, 5, 1, 2, 3, 5};
    const std::vector<float> weights = {0.2f, 0.1f, 0.9f, 0.8f, 0.5f, 0.2f,
                                        0.3f, 0.3f, 2.f,  -2.f, 0.3f, 0.6f};
    const std::vector<int32_t> ends = {0, 1, 3, 0, 2, 3, 1, 2, 3};
    BatchedBagRequest r = WeightedBatch(ids, weights, ends, 3, 4, 3);
    QueryOptions o;
    o.mode = PoolingMode::kSum;
    auto got = BatchedEmbeddingBag(t.view(), r, o);
    ASSERT_TRUE(got.ok()) << got.status().message();
    EXPECT_EQ(got->shape, (std::vector<int64_t>{3, 3, 4}));
    const std::vector<float> want = {
        -0.0834f, -0.0297f, 0.1852f,  -0.0970f, 0.1303f,  0.1231f,  -0.0303f, 0.1754f,  -0.0424f,
        -2.7630f, 1.0265f,  -0.5921f, 0.0763f,  -0.2697f, 0.0458f,  -0.6370f, 0.4215f,  0.2613f,
        -0.0726f, 0.2714f,  0.0861f,  -1.0124f, 0.4394f,  -0.1466f, 0.9096f,  -0.9380f, 0.5059f,
        -2.1014f, 0.2433f,  -0.0717f, 0.2183f,  -0.0541f, 0.1722f,  -2.0247f, 0.8788f,  -0.2933f};
    const double tol = dtype == DType::kF32 ? 1e-3 : 2e-2;  // f16/bf16 round the table
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_NEAR(got->values[i], want[i], tol) << testing::DTypeLabel(dtype) << " i=" << i;
    }
  }
}

// SEMANTICS: ends [1, 2, 3] over items [v1, v2, v3, v5], weights
// [2, -2, 0.3, 0.6] -> [2 v1 - 2 v2, 0.3 v3, 0.6 v5]; equal ends give an
// empty bag; items after the last end are padding (never even looked at).
TEST(Semantics, BatchedBagsEndsRules) {
  const TestTable t = Arange43();
  const std::vector<int64_t> ids = {1, 2, 3, 0, /*sample 1*/ 2, 3, 77, -5};
  const std::vector<float> weights = {2, -2, 0.5f, 0.25f, 1, 1, 1, 1};
  const std::vector<int64_t> ends = {1, 2, 3, /*sample 1*/ -1, 1, 1};
  BatchedBagRequest r = WeightedBatch(ids, weights, ends, 2, 4, 3);
  QueryOptions o;
  o.mode = PoolingMode::kSum;
  auto got = BatchedEmbeddingBag(t.view(), r, o);
  ASSERT_TRUE(got.ok()) << got.status().message();
  const std::vector<float> want = {2 * 3 - 2 * 6,
                                   2 * 4 - 2 * 7,
                                   2 * 5 - 2 * 8,  // 2 v1 - 2 v2
                                   0.5f * 9,
                                   0.5f * 10,
                                   0.5f * 11,  // 0.5 v3
                                   0,
                                   0.25f * 1,
                                   0.25f * 2,  // 0.25 v0
                                   0,
                                   0,
                                   0,  // ends -1: empty
                                   6 + 9,
                                   7 + 10,
                                   8 + 11,  // items 0..1
                                   0,
                                   0,
                                   0};  // equal ends: empty
  ASSERT_EQ(got->values.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_FLOAT_EQ(got->values[i], want[i]) << i;
  // Mean and max over the same bags; unweighted.
  r.weights.reset();
  o.mode = PoolingMode::kMean;
  auto mean = BatchedEmbeddingBag(t.view(), r, o);
  ASSERT_TRUE(mean.ok());
  EXPECT_FLOAT_EQ(mean->values[0], 4.5f);   // (3 + 6) / 2
  EXPECT_FLOAT_EQ(mean->values[12], 7.5f);  // (6 + 9) / 2
  o.mode = PoolingMode::kMax;
  o.padding_idx = 3;  // padding applies inside batched bags too
  auto max = BatchedEmbeddingBag(t.view(), r, o);
  ASSERT_TRUE(max.ok());
  EXPECT_FLOAT_EQ(max->values[0], 6);
  EXPECT_FLOAT_EQ(max->values[12], 6);  // {2, 3}: 3 is padding
  EXPECT_FLOAT_EQ(max->values[3], 0);   // {3}: all padding
}

TEST(Semantics, MixedIndexAndOffsetTypes) {
  const TestTable t = Arange43();
  const std::vector<int32_t> ids = {3, 1, 2};
  const std::vector<int64_t> offsets = {0, 1};
  BagRequest r;
  r.indices = std::span<const int32_t>(ids);
  r.offsets = std::span<const int64_t>(offsets);
  QueryOptions o;
  o.mode = PoolingMode::kSum;
  ExpectPooled(t.view(), r, o, {9, 10, 11, 9, 11, 13});
  const std::vector<int64_t> ids64 = {3, 1, 2};
  const std::vector<int32_t> offsets32 = {0, 1};
  r.indices = std::span<const int64_t>(ids64);
  r.offsets = std::span<const int32_t>(offsets32);
  ExpectPooled(t.view(), r, o, {9, 10, 11, 9, 11, 13});
}

TEST(Semantics, StorageDTypesDequantize) {
  // f16 including a subnormal, inf and the largest finite value.
  const std::vector<float> hv = {1.5f, -2.25f, 5.9604645e-8f, 65504.0f};
  const TestTable h(hv, 2, 2, DType::kF16);
  Query1D q{{0, 1}, {0, 1}, {}};
  QueryOptions o;
  o.mode = PoolingMode::kSum;
  ExpectPooled(h.view(), q.Request(), o, {1.5f, -2.25f, 5.9604645e-8f, 65504.0f}, 0);
  // bf16 keeps the upper half of the float.
  const TestTable b({1.0f, -3.0f, 0.15625f, 1e30f}, 2, 2, DType::kBF16);
  ExpectPooled(b.view(), q.Request(), o, {1.0f, -3.0f, 0.15625f, b.Row(1)[1]}, 0);
  // int8: code * scale + bias, with scale/bias per row.
  std::vector<uint8_t> raw(2 * 16, 0);
  const uint8_t codes[2][3] = {{0, 10, 255}, {1, 2, 3}};
  const float sb[2][2] = {{0.5f, -1.0f}, {2.0f, 0.25f}};
  for (int r = 0; r < 2; ++r) {
    std::memcpy(&raw[r * 16], codes[r], 3);
    std::memcpy(&raw[r * 16 + 3], &sb[r][0], 4);
    std::memcpy(&raw[r * 16 + 7], &sb[r][1], 4);
  }
  TableView v;
  v.data = raw.data();
  v.rows = 2;
  v.dim = 3;
  v.row_stride = 16;
  v.dtype = DType::kInt8Rowwise;
  v.name = "q";
  Query1D both{{0, 1}, {0}, {}};
  ExpectPooled(v, both.Request(), o, {-1.0f + 2.25f, 4.0f + 4.25f, 126.5f + 6.25f}, 0);
  o.mode = PoolingMode::kMax;
  ExpectPooled(v, both.Request(), o, {2.25f, 4.25f, 126.5f}, 0);
}

TEST(Semantics, EdgeTables) {
  // dim 0: bags exist, output is empty.
  const TestTable zero_dim({}, 5, 0, DType::kF32);
  Query1D q{{0, 4}, {0, 1, 2}, {}};
  auto r = EmbeddingBag(zero_dim.view(), q.Request(), QueryOptions{});
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->shape, (std::vector<int64_t>{3, 0}));
  EXPECT_TRUE(r->values.empty());
  // 0 rows: only empty bags are possible; they give zeros.
  const TestTable no_rows({}, 0, 4, DType::kF32);
  Query1D empty{{}, {0, 0}, {}};
  auto e = EmbeddingBag(no_rows.view(), empty.Request(), QueryOptions{});
  ASSERT_TRUE(e.ok()) << e.status().message();
  EXPECT_EQ(e->values, std::vector<float>(8, 0.0f));
}

// FM reuse: one batched plan pools a second table with enough rows.
TEST(Semantics, PlanPoolsAnotherTable) {
  const TestTable vectors = Arange43();
  const TestTable biases({0.5f, 1.5f, 2.5f, 3.5f}, 4, 1, DType::kF32, true, "biases");
  const std::vector<int64_t> ids = {1, 2, 3, 0};
  const std::vector<float> weights = {1, 2, 3, 4};
  const std::vector<int64_t> ends = {0, 3};
  BatchedBagRequest r = WeightedBatch(ids, weights, ends, 1, 4, 2);
  QueryOptions o;
  o.mode = PoolingMode::kSum;
  auto plan = engine::PlanBatchedBags(vectors.view(), r, o);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->min_rows, 4);
  std::vector<float> beta(2);
  ASSERT_TRUE(engine::PoolPlan(biases.view(), *plan, o, beta).ok());
  EXPECT_FLOAT_EQ(beta[0], 1.5f);
  EXPECT_FLOAT_EQ(beta[1], 2 * 2.5f + 3 * 3.5f + 4 * 0.5f);
  const TestTable small({1, 2}, 2, 1, DType::kF32, true, "small");
  const Status s = engine::PoolPlan(small.view(), *plan, o, beta);
  EXPECT_EQ(s.code(), Status::Code::kInvalidArgument);
  EXPECT_NE(s.message().find("small"), std::string::npos) << s.message();
}

TEST(Semantics, ModeNames) {
  EXPECT_STREQ(PoolingModeName(PoolingMode::kSum), "sum");
  EXPECT_STREQ(PoolingModeName(PoolingMode::kMean), "mean");
  EXPECT_STREQ(PoolingModeName(PoolingMode::kMax), "max");
  EXPECT_EQ(ParsePoolingMode("max"), PoolingMode::kMax);
  EXPECT_EQ(ParsePoolingMode("mean"), PoolingMode::kMean);
  EXPECT_EQ(ParsePoolingMode("sum"), PoolingMode::kSum);
  EXPECT_FALSE(ParsePoolingMode("avg").has_value());
}

}  // namespace
}  // namespace embstore
