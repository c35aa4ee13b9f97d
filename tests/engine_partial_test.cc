// engine/partial.h: a request split by row shards, each shard pooled alone
// as a cluster node pools it, and the partials merged, equals the engine over
// the whole table: MAX bit for bit (ties of +0/-0 and equal values, NaN
// rows), SUM and MEAN within float rounding. Random requests over random
// shardings, with weights, padding, max_norm, include_last_offset and
// batched bags; and malformed partials are refused.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "embstore/query.h"
#include "engine/partial.h"
#include "tests/engine_test_util.h"

namespace embstore::engine {
namespace {

using testing::TestTable;

// What a node replies for one shard's part (serve/server.cc's PoolPartial,
// written plainly here as its reference twin).
struct NodeReply {
  std::vector<float> values;
  std::vector<int64_t> counts;
  std::vector<int32_t> positions;
  std::vector<int64_t> nan_cells;
  std::vector<uint32_t> nan_bits;
  Partial view() const { return Partial{values, counts, positions, nan_cells, nan_bits}; }
};

NodeReply PoolOnShard(const TableView& shard, const ShardPart& part, const QueryOptions& options,
                      int64_t bags) {
  NodeReply r;
  const int64_t dim = shard.dim;
  const auto n = static_cast<int64_t>(part.ids.size());
  r.values.assign(static_cast<size_t>(bags * dim), 0.0f);
  for (int64_t b = 0; b < bags; ++b) {
    const int64_t end = b + 1 < bags ? part.offsets[b + 1] : n;
    r.counts.push_back(end - part.offsets[b]);
  }
  QueryOptions qo = options;
  qo.padding_idx.reset();
  qo.include_last_offset = false;
  BagRequest req;
  if (options.mode != PoolingMode::kMax) {
    qo.mode = PoolingMode::kSum;
    req.indices = IndexArray(std::span<const int64_t>(part.ids));
    req.offsets = IndexArray(std::span<const int64_t>(part.offsets));
    if (!part.weights.empty()) req.weights = part.weights;
    EXPECT_TRUE(EmbeddingBag(shard, req, qo, r.values).ok());
    return r;
  }
  // MAX: every entry alone, then torch's rule with positions and NaNs.
  std::vector<int64_t> starts(static_cast<size_t>(n));
  for (int64_t k = 0; k < n; ++k) starts[static_cast<size_t>(k)] = k;
  req.indices = IndexArray(std::span<const int64_t>(part.ids));
  req.offsets = IndexArray(std::span<const int64_t>(starts));
  if (!part.weights.empty()) req.weights = part.weights;
  std::vector<float> entry(static_cast<size_t>(n * dim));
  if (n > 0) EXPECT_TRUE(EmbeddingBag(shard, req, qo, entry).ok());
  r.positions.assign(static_cast<size_t>(bags * dim), -1);
  for (int64_t b = 0; b < bags; ++b) {
    const int64_t end = b + 1 < bags ? part.offsets[b + 1] : n;
    for (int64_t d = 0; d < dim; ++d) {
      const size_t cell = static_cast<size_t>(b * dim + d);
      for (int64_t k = part.offsets[b]; k < end; ++k) {
        const float x = entry[static_cast<size_t>(k * dim + d)];
        if (k == part.offsets[b] && std::isnan(x)) {
          uint32_t bits = 0;
          std::memcpy(&bits, &x, sizeof bits);
          r.nan_cells.push_back(static_cast<int64_t>(cell));
          r.nan_bits.push_back(bits);
        }
        if (std::isnan(x)) continue;
        if (r.positions[cell] < 0 || x > r.values[cell]) {
          r.values[cell] = x;
          r.positions[cell] = static_cast<int32_t>(k);
        }
      }
    }
  }
  return r;
}

TableView ShardView(const TableView& whole, int64_t begin, int64_t end) {
  TableView v = whole;
  v.data = whole.data + static_cast<size_t>(begin) * whole.row_stride;
  v.rows = end - begin;
  return v;
}

// Pools `plan` over `table` split at `begins`, as the cluster does.
std::vector<float> PoolSharded(const TableView& table, const BagPlan& plan,
                               const std::vector<int64_t>& begins, const QueryOptions& options) {
  const std::vector<ShardPart> parts = SplitByShard(plan, begins);
  const int64_t bags = plan.num_bags();
  std::vector<NodeReply> replies(parts.size());
  std::vector<Partial> partials(parts.size());
  for (size_t s = 0; s < parts.size(); ++s) {
    if (!parts[s].any) continue;
    const int64_t end = s + 1 < begins.size() ? begins[s + 1] : table.rows;
    replies[s] = PoolOnShard(ShardView(table, begins[s], end), parts[s], options, bags);
    partials[s] = replies[s].view();
  }
  std::vector<float> out(static_cast<size_t>(bags * table.dim), 1.0f);
  const Status st = MergePartials(parts, partials, bags, table.dim, options.mode, out);
  EXPECT_TRUE(st.ok()) << st.message();
  return out;
}

void ExpectSame(const std::vector<float>& want, const std::vector<float>& got, PoolingMode mode,
                const std::string& what) {
  ASSERT_EQ(want.size(), got.size()) << what;
  for (size_t i = 0; i < want.size(); ++i) {
    if (mode == PoolingMode::kMax) {
      uint32_t a = 0, b = 0;
      std::memcpy(&a, &want[i], 4);
      std::memcpy(&b, &got[i], 4);
      ASSERT_EQ(a, b) << what << " element " << i << ": " << want[i] << " vs " << got[i];
    } else if (std::isnan(want[i])) {
      ASSERT_TRUE(std::isnan(got[i])) << what << " element " << i;
    } else {
      ASSERT_NEAR(want[i], got[i], 1e-5f * (1.0f + std::fabs(want[i]))) << what << " element " << i;
    }
  }
}

TEST(PartialTest, ShardedPoolingEqualsTheWholeTable) {
  std::mt19937_64 rng(20261202);
  const int64_t rows = 61, dim = 5;
  // Few distinct values, so ties are common; ±0 both; some NaN rows.
  const float kValues[] = {0.0f, -0.0f, 1.0f, -1.0f, 0.5f, 2.0f, -2.0f};
  std::vector<float> values(static_cast<size_t>(rows * dim));
  for (float& v : values) v = kValues[rng() % 7];
  for (int64_t r : {7, 30, 44}) {
    for (int64_t d = 0; d < dim; d += 2) values[static_cast<size_t>(r * dim + d)] = std::nanf("");
  }
  int cases = 0, max_cases = 0, tie_cells = 0;
  for (DType dtype : {DType::kF32, DType::kF16}) {
    const TestTable table(values, rows, dim, dtype);
    for (int trial = 0; trial < 300; ++trial) {
      // Shards: 1..6, random row boundaries.
      const int nshards = 1 + static_cast<int>(rng() % 6);
      std::vector<int64_t> begins = {0};
      while (static_cast<int>(begins.size()) < nshards) {
        const int64_t b = 1 + static_cast<int64_t>(rng() % (rows - 1));
        if (std::find(begins.begin(), begins.end(), b) == begins.end()) begins.push_back(b);
      }
      std::sort(begins.begin(), begins.end());
      QueryOptions o;
      const int mode = static_cast<int>(rng() % 3);
      o.mode = mode == 0 ? PoolingMode::kSum : mode == 1 ? PoolingMode::kMean : PoolingMode::kMax;
      if (rng() % 3 == 0) o.padding_idx = static_cast<int64_t>(rng() % rows);
      if (rng() % 4 == 0) o.max_norm = 1.5;
      const bool weighted = o.mode != PoolingMode::kMean && rng() % 3 == 0;
      const int64_t bags = 1 + static_cast<int64_t>(rng() % 6);
      std::vector<int64_t> ids, offsets;
      std::vector<float> weights;
      for (int64_t b = 0; b < bags; ++b) {
        offsets.push_back(static_cast<int64_t>(ids.size()));
        const int64_t n = static_cast<int64_t>(rng() % 7);  // empty bags too
        for (int64_t k = 0; k < n; ++k) {
          // NaN rows sometimes first in a bag.
          ids.push_back(rng() % 5 == 0 ? (rng() % 2 ? 7 : 44) : static_cast<int64_t>(rng() % rows));
          weights.push_back(static_cast<float>(static_cast<int>(rng() % 5) - 2) * 0.5f);
        }
      }
      BagRequest req;
      req.indices = IndexArray(std::span<const int64_t>(ids));
      req.offsets = IndexArray(std::span<const int64_t>(offsets));
      if (weighted) req.weights = weights;
      if (rng() % 4 == 0) {
        offsets.push_back(static_cast<int64_t>(ids.size()));
        req.offsets = IndexArray(std::span<const int64_t>(offsets));
        o.include_last_offset = true;
      }
      auto want = EmbeddingBag(table.view(), req, o);
      ASSERT_TRUE(want.ok()) << want.status().message();
      auto plan = PlanBags(table.view(), req, o);
      ASSERT_TRUE(plan.ok());
      const std::vector<float> got = PoolSharded(table.view(), *plan, begins, o);
      ExpectSame(want->values, got, o.mode,
                 std::string(DTypeName(dtype)) + " trial " + std::to_string(trial));
      ++cases;
      if (o.mode == PoolingMode::kMax) {
        ++max_cases;
        for (float v : got) tie_cells += v == 0.0f;  // ±0 ties decided by position
      }
    }
  }
  EXPECT_EQ(cases, 600);
  EXPECT_GT(max_cases, 100);
  EXPECT_GT(tie_cells, 100);
}

TEST(PartialTest, BatchedBagsSplitTheSameWay) {
  const int64_t rows = 40, dim = 3;
  std::vector<float> values(static_cast<size_t>(rows * dim));
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(i % 11) - 5.0f;
  const TestTable table(values, rows, dim, DType::kF32);
  // 2 samples x 6 items, 3 bags each (inclusive ends; an empty bag repeats
  // the end before it), the last items of sample 1 unused.
  const std::vector<int64_t> ids = {1, 39, 20, 5, 33, 12, 0, 21, 22, 38, 2, 3};
  const std::vector<int64_t> ends = {1, 1, 5, 0, 3, 3};
  for (PoolingMode mode : {PoolingMode::kSum, PoolingMode::kMean, PoolingMode::kMax}) {
    BatchedBagRequest req;
    req.indices = IndexArray(std::span<const int64_t>(ids));
    req.ends = IndexArray(std::span<const int64_t>(ends));
    req.batch = 2;
    req.items = 6;
    req.bags_per_sample = 3;
    QueryOptions o;
    o.mode = mode;
    auto want = BatchedEmbeddingBag(table.view(), req, o);
    ASSERT_TRUE(want.ok()) << want.status().message();
    auto plan = PlanBatchedBags(table.view(), req, o);
    ASSERT_TRUE(plan.ok());
    EXPECT_EQ(plan->OutputShape(dim), (std::vector<int64_t>{2, 3, 3}));
    ExpectSame(want->values, PoolSharded(table.view(), *plan, {0, 10, 21, 35}, o), mode, "batched");
  }
}

TEST(PartialTest, MalformedPartialsAreRefused) {
  const int64_t rows = 10, dim = 2;
  std::vector<float> values(static_cast<size_t>(rows * dim), 1.0f);
  const TestTable table(values, rows, dim, DType::kF32);
  const std::vector<int64_t> ids = {1, 8}, offsets = {0};
  BagRequest req;
  req.indices = IndexArray(std::span<const int64_t>(ids));
  req.offsets = IndexArray(std::span<const int64_t>(offsets));
  QueryOptions o;
  o.mode = PoolingMode::kMax;
  auto plan = PlanBags(table.view(), req, o);
  ASSERT_TRUE(plan.ok());
  const std::vector<int64_t> begins = {0, 5};
  const std::vector<ShardPart> parts = SplitByShard(*plan, begins);
  ASSERT_EQ(parts.size(), 2u);
  EXPECT_EQ(parts[1].ids, (std::vector<int64_t>{3}));
  EXPECT_EQ(parts[1].positions, (std::vector<int64_t>{1}));
  std::vector<float> vals(2, 1.0f), out(2);
  std::vector<int64_t> counts = {1};
  std::vector<int32_t> good = {0, 0}, past = {0, 1};
  std::vector<int64_t> nan_cells = {1};
  std::vector<uint32_t> no_bits;
  std::vector<Partial> p(2, Partial{vals, counts, good, {}, {}});
  EXPECT_TRUE(MergePartials(parts, p, 1, dim, o.mode, out).ok());
  p[1].max_positions = past;
  Status st = MergePartials(parts, p, 1, dim, o.mode, out);
  EXPECT_EQ(st.code(), Status::Code::kInvalidArgument);
  EXPECT_NE(st.message().find("shard 1's partial names a position past its ids"), std::string::npos)
      << st.message();
  p[1].max_positions = {};
  EXPECT_NE(MergePartials(parts, p, 1, dim, o.mode, out).message().find("max positions"),
            std::string::npos);
  p[1].max_positions = good;
  p[1].nan_cells = nan_cells;
  EXPECT_FALSE(MergePartials(parts, p, 1, dim, o.mode, out).ok());  // cells without bits
  p[1].nan_cells = {};
  p[0].values = std::span<const float>(vals.data(), 1);
  EXPECT_NE(MergePartials(parts, p, 1, dim, PoolingMode::kSum, out)
                .message()
                .find("shard 0's partial has the wrong number of values"),
            std::string::npos);
  EXPECT_FALSE(
      MergePartials(parts, std::span<const Partial>(p.data(), 1), 1, dim, PoolingMode::kSum, out)
          .ok());
}

}  // namespace
}  // namespace embstore::engine
