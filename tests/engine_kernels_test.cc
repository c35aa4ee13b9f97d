// Fast kernels (every ISA this CPU runs, and the public entry points) against
// the scalar reference twin, on random requests over dtype x mode x max_norm
// x layout, and inside each case dims x weighted x padding x index type x
// row alignment.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "embstore/query.h"
#include "engine/kernels_ref.h"
#include "engine/plan.h"
#include "engine/pool.h"
#include "engine_test_util.h"

namespace embstore {
namespace {

using engine::BagPlan;
using engine::Isa;
using testing::TestTable;

enum class Layout { kOffsets, kOffsetsIncludeLast, k2D, kBatched };
const char* LayoutName(Layout l) {
  switch (l) {
    case Layout::kOffsets:
      return "offsets";
    case Layout::kOffsetsIncludeLast:
      return "offsets_last";
    case Layout::k2D:
      return "twod";
    case Layout::kBatched:
      return "batched";
  }
  return "?";
}

// norm_type for max_norm; NaN means no max_norm.
const double kNoRenorm = std::numeric_limits<double>::quiet_NaN();
const double kInf = std::numeric_limits<double>::infinity();
std::string NormLabel(double p) {
  if (std::isnan(p)) return "nomaxnorm";
  if (std::isinf(p)) return "maxnorm_pinf";
  return "maxnorm_p" + std::to_string(static_cast<int>(p));
}

// One random request in any layout, owning its arrays.
struct RandomRequest {
  std::vector<int64_t> ids64;
  std::vector<int32_t> ids32;
  std::vector<int64_t> offsets64;
  std::vector<int32_t> offsets32;
  std::vector<float> weights;
  std::vector<int64_t> shape;
  bool use32 = false;
  // batched
  int64_t batch = 0, items = 0, k = 0;

  IndexArray Ids() const {
    return use32 ? IndexArray(std::span<const int32_t>(ids32))
                 : IndexArray(std::span<const int64_t>(ids64));
  }
  IndexArray Offsets() const {
    // Mixed types on purpose: offsets use the other width.
    return use32 ? IndexArray(std::span<const int64_t>(offsets64))
                 : IndexArray(std::span<const int32_t>(offsets32));
  }
};

void FillIds(RandomRequest& r, int64_t n, int64_t rows, std::mt19937_64& rng) {
  std::uniform_int_distribution<int64_t> id(0, rows - 1);
  r.ids64.resize(n);
  for (int64_t& v : r.ids64) v = id(rng);
  r.ids32.assign(r.ids64.begin(), r.ids64.end());
}

// Random bag sizes: mostly small, some empty, one long (crosses the kernels'
// 64-entry staging groups).
std::vector<int64_t> RandomBagSizes(int64_t bags, std::mt19937_64& rng) {
  std::uniform_int_distribution<int64_t> size(0, 9);
  std::vector<int64_t> sizes(bags);
  for (int64_t& s : sizes) s = size(rng);
  if (bags > 2) sizes[bags / 2] = 150;
  if (bags > 3) sizes[1] = 0;
  return sizes;
}

struct Case {
  BagPlan plan;
  RandomRequest req;
};

class KernelParityTest
    : public ::testing::TestWithParam<std::tuple<DType, PoolingMode, double, Layout>> {};

TEST_P(KernelParityTest, FastMatchesReference) {
  const auto [dtype, mode, norm_type, layout] = GetParam();
  const std::vector<int64_t> dims = {1, 3, 8, 16, 32, 37, 64, 128, 129, 256};
  const std::vector<Isa> isas = engine::SupportedIsas();
  std::mt19937_64 rng(std::hash<std::string>()(testing::DTypeLabel(dtype)) ^
                      (static_cast<uint64_t>(mode) << 8) ^ static_cast<uint64_t>(layout) << 16);
  int variant = 0;
  for (int64_t dim : dims) {
    for (bool weighted : {false, true}) {
      for (int padding_kind = 0; padding_kind < 3; ++padding_kind) {  // none, +, -
        ++variant;
        const int64_t rows = 40;
        const bool aligned = variant % 2 == 0;
        const TestTable table = testing::RandomTable(rows, dim, dtype, rng, aligned);
        QueryOptions options;
        options.mode = mode;
        if (padding_kind == 1) options.padding_idx = 3;
        if (padding_kind == 2) options.padding_idx = -2;  // row 38
        if (!std::isnan(norm_type)) {
          options.norm_type = norm_type;
          // About half of the rows exceed it, for every p.
          std::vector<double> norms;
          for (int64_t r = 0; r < rows; ++r) {
            norms.push_back(RowNorm(std::span<const float>(table.Row(r), dim), norm_type));
          }
          std::nth_element(norms.begin(), norms.begin() + rows / 2, norms.end());
          options.max_norm = norms[rows / 2] > 0 ? norms[rows / 2] : 1.0;
        }
        RandomRequest req;
        req.use32 = variant % 3 == 0;
        std::uniform_real_distribution<float> w(-2.0f, 2.0f);
        Result<BagPlan> plan = Status::Internal("unset");
        BagRequest bag_request;
        BatchedBagRequest batched;
        const int64_t bags = 13;
        if (layout == Layout::kOffsets || layout == Layout::kOffsetsIncludeLast) {
          const std::vector<int64_t> sizes = RandomBagSizes(bags, rng);
          int64_t n = 0;
          for (int64_t b = 0; b < bags; ++b) {
            req.offsets64.push_back(n);
            n += sizes[b];
          }
          if (layout == Layout::kOffsetsIncludeLast) {
            req.offsets64.push_back(n);
            options.include_last_offset = true;
            n += 5;  // ignored trailing entries
          }
          req.offsets32.assign(req.offsets64.begin(), req.offsets64.end());
          FillIds(req, n, rows, rng);
          req.shape = {n};
          bag_request.offsets = req.Offsets();
        } else if (layout == Layout::k2D) {
          const int64_t cols = 1 + variant % 7;
          FillIds(req, bags * cols, rows, rng);
          req.shape = {bags, cols};
        } else {
          req.batch = 4;
          req.items = 1 + variant % 9;
          req.k = 3;
          FillIds(req, req.batch * req.items, rows, rng);
          std::uniform_int_distribution<int64_t> end(-1, req.items - 1);
          for (int64_t b = 0; b < req.batch; ++b) {
            std::vector<int64_t> ends(req.k);
            for (int64_t& e : ends) e = end(rng);
            std::sort(ends.begin(), ends.end());
            req.offsets64.insert(req.offsets64.end(), ends.begin(), ends.end());
          }
          req.offsets32.assign(req.offsets64.begin(), req.offsets64.end());
        }
        if (weighted) {
          req.weights.resize(req.ids64.size());
          for (float& v : req.weights) v = w(rng);
        }
        if (layout == Layout::kBatched) {
          batched.indices = req.Ids();
          batched.ends = req.Offsets();
          batched.batch = req.batch;
          batched.items = req.items;
          batched.bags_per_sample = req.k;
          if (weighted) batched.weights = std::span<const float>(req.weights);
          plan = engine::PlanBatchedBags(table.view(), batched, options);
        } else {
          bag_request.indices = req.Ids();
          bag_request.indices_shape = req.shape;
          if (weighted) bag_request.weights = std::span<const float>(req.weights);
          plan = engine::PlanBags(table.view(), bag_request, options);
        }
        SCOPED_TRACE("dim=" + std::to_string(dim) + " weighted=" + std::to_string(weighted) +
                     " padding=" + std::to_string(padding_kind) +
                     " aligned=" + std::to_string(aligned) + " int32=" + std::to_string(req.use32));
        ASSERT_TRUE(plan.ok()) << plan.status().message();
        const size_t out_size = static_cast<size_t>(plan->num_bags() * dim);
        std::vector<float> expected(out_size, -7.0f);
        ASSERT_TRUE(engine::PoolPlanRef(table.view(), *plan, options, expected).ok());
        // f32/f16/bf16 rows are exact floats: 1e-5. Int8 rows: the fast path
        // folds scale, bias, weight and renorm scale into one multiply-add per
        // element, and over a 150-entry bag the bias terms cancel; both paths
        // are then ~1.5e-5 from the exact (double) result, in different ways.
        const double tol = dtype == DType::kInt8Rowwise ? 5e-5 : 1e-5;
        auto check = [&](const std::vector<float>& got, const std::string& who) {
          for (size_t i = 0; i < out_size; ++i) {
            ASSERT_TRUE(testing::Close(got[i], expected[i], tol))
                << who << ": element " << i << " (bag " << i / dim << ", d " << i % dim << "): got "
                << got[i] << ", reference " << expected[i];
          }
        };
        for (Isa isa : isas) {
          std::vector<float> got(out_size, 12345.0f);
          ASSERT_TRUE(engine::PoolPlanWithIsa(isa, table.view(), *plan, options, got).ok());
          check(got, engine::IsaName(isa));
        }
        // The public API (best ISA, TBB) gives the same, into a new buffer too.
        std::vector<float> got(out_size, 12345.0f);
        Result<PooledOutput> fresh = Status::Internal("unset");
        if (layout == Layout::kBatched) {
          ASSERT_TRUE(BatchedEmbeddingBag(table.view(), batched, options, got).ok());
          fresh = BatchedEmbeddingBag(table.view(), batched, options);
        } else {
          ASSERT_TRUE(EmbeddingBag(table.view(), bag_request, options, got).ok());
          fresh = EmbeddingBag(table.view(), bag_request, options);
        }
        check(got, "public");
        ASSERT_TRUE(fresh.ok());
        check(fresh->values, "public-new");
        EXPECT_EQ(fresh->shape.back(), dim);
      }
    }
  }
}

std::string ParamName(
    const ::testing::TestParamInfo<std::tuple<DType, PoolingMode, double, Layout>>& info) {
  const auto [dtype, mode, p, layout] = info.param;
  return std::string(testing::DTypeLabel(dtype)) + "_" + PoolingModeName(mode) + "_" +
         NormLabel(p) + "_" + LayoutName(layout);
}

INSTANTIATE_TEST_SUITE_P(
    AllCombinations, KernelParityTest,
    ::testing::Combine(::testing::Values(DType::kF32, DType::kF16, DType::kBF16,
                                         DType::kInt8Rowwise),
                       ::testing::Values(PoolingMode::kSum, PoolingMode::kMean, PoolingMode::kMax),
                       ::testing::Values(kNoRenorm, 1.0, 2.0, 3.0, kInf),
                       ::testing::Values(Layout::kOffsets, Layout::kOffsetsIncludeLast, Layout::k2D,
                                         Layout::kBatched)),
    ParamName);

// p = 0 (torch: number of non-zeros), fractional p and p = -inf (min |x|),
// less exhaustively.
TEST(KernelParity, UnusualNormTypes) {
  std::mt19937_64 rng(5);
  for (double p : {0.0, 0.5, 1.5, -std::numeric_limits<double>::infinity()}) {
    for (DType dtype : {DType::kF32, DType::kInt8Rowwise}) {
      for (int64_t dim : {5, 16, 33}) {
        std::vector<float> values(30 * dim);
        std::uniform_real_distribution<float> u(-1, 1);
        for (size_t i = 0; i < values.size(); ++i) values[i] = (i % 3 == 0) ? 0.0f : u(rng);
        const TestTable table(values, 30, dim, dtype);
        std::vector<int64_t> ids(60), offsets = {0, 7, 20, 20, 41};
        std::uniform_int_distribution<int64_t> id(0, 29);
        for (auto& v : ids) v = id(rng);
        QueryOptions options;
        options.mode = PoolingMode::kSum;
        options.norm_type = p;
        options.max_norm = p == 0 ? 3.0 : 1.0;
        BagRequest request;
        request.indices = std::span<const int64_t>(ids);
        request.offsets = std::span<const int64_t>(offsets);
        auto want = engine::EmbeddingBagRef(table.view(), request, options);
        ASSERT_TRUE(want.ok());
        auto plan = engine::PlanBags(table.view(), request, options);
        ASSERT_TRUE(plan.ok());
        for (Isa isa : engine::SupportedIsas()) {
          std::vector<float> got(want->values.size());
          ASSERT_TRUE(engine::PoolPlanWithIsa(isa, table.view(), *plan, options, got).ok());
          for (size_t i = 0; i < got.size(); ++i) {
            ASSERT_TRUE(testing::Close(got[i], want->values[i], 1e-5))
                << "p=" << p << " " << testing::DTypeLabel(dtype) << " dim=" << dim << " "
                << engine::IsaName(isa) << " i=" << i << ": got " << got[i] << ", reference "
                << want->values[i];
          }
        }
      }
    }
  }
}

// Many bags (the TBB path): every thread count gives bit-identical results,
// equal to the reference within rounding.
TEST(KernelParity, ThreadCountsAgree) {
  std::mt19937_64 rng(11);
  const TestTable table = testing::RandomTable(5000, 64, DType::kF32, rng);
  std::vector<int64_t> ids, offsets;
  std::uniform_int_distribution<int64_t> id(0, 4999), size(0, 60);
  for (int b = 0; b < 3000; ++b) {
    offsets.push_back(static_cast<int64_t>(ids.size()));
    const int64_t n = b % 500 == 0 ? 2000 : size(rng);  // a few heavy bags
    for (int64_t j = 0; j < n; ++j) ids.push_back(id(rng));
  }
  std::vector<float> weights(ids.size());
  std::uniform_real_distribution<float> w(0, 1);
  for (float& v : weights) v = w(rng);
  for (PoolingMode mode : {PoolingMode::kSum, PoolingMode::kMean, PoolingMode::kMax}) {
    BagRequest request;
    request.indices = std::span<const int64_t>(ids);
    request.offsets = std::span<const int64_t>(offsets);
    request.weights = std::span<const float>(weights);
    QueryOptions options;
    options.mode = mode;
    options.max_norm = 2.0;
    auto want = engine::EmbeddingBagRef(table.view(), request, options);
    ASSERT_TRUE(want.ok());
    std::vector<float> first;
    for (int threads : {1, 0, 2, 3, 16}) {
      options.max_threads = threads;
      auto got = EmbeddingBag(table.view(), request, options);
      ASSERT_TRUE(got.ok()) << got.status().message();
      if (first.empty()) first = got->values;
      EXPECT_EQ(got->values, first) << "max_threads=" << threads;
      for (size_t i = 0; i < first.size(); ++i) {
        ASSERT_TRUE(testing::Close(got->values[i], want->values[i], 1e-4)) << i;
      }
    }
  }
}

TEST(KernelParity, IsaDetection) {
  const std::vector<Isa> isas = engine::SupportedIsas();
  ASSERT_FALSE(isas.empty());
  EXPECT_EQ(isas.front(), Isa::kGeneric);
  EXPECT_EQ(engine::BestIsa(), isas.back());
  for (Isa isa : isas) std::printf("supported ISA: %s\n", engine::IsaName(isa));
#if defined(__x86_64__)
  __builtin_cpu_init();
  EXPECT_EQ(engine::IsaSupported(Isa::kAvx2), __builtin_cpu_supports("avx2") &&
                                                  __builtin_cpu_supports("fma") &&
                                                  __builtin_cpu_supports("f16c"));
  if (!__builtin_cpu_supports("avx512f")) {
    EXPECT_FALSE(engine::IsaSupported(Isa::kAvx512));
  }
#endif
  // An unsupported ISA is refused, not run.
  if (!engine::IsaSupported(Isa::kAvx512)) {
    const TestTable table({1, 2}, 1, 2, DType::kF32);
    engine::BagPlan plan;
    std::vector<float> out;
    EXPECT_EQ(engine::PoolPlanWithIsa(Isa::kAvx512, table.view(), plan, {}, out).code(),
              Status::Code::kNotSupported);
  }
}

}  // namespace
}  // namespace embstore
