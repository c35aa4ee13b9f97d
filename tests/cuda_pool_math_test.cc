// The GPU batch pipeline on the CPU (cuda/testing/emulated_gpu.h): plan
// (engine) -> DedupBags -> SplitBatch -> SlotCache::Acquire -> GatherRows ->
// ScatterUnit -> NormLane/NormScale -> PoolBagLane, on the kernel arguments
// the engine itself builds (cuda/kernel_args.h). Runs everywhere (no GPU
// needed) and compares with the engine's scalar reference
// (engine/kernels_ref.h): the kernels are meant to round exactly like it, so
// outputs must be identical bit for bit, except where max_norm's norm is
// summed in another order (then to ~1 ulp). The GPU tests (cuda_engine_test)
// check the real thing; cuda_batch_prep_test the preparation's parts.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "cuda/batch_prep.h"
#include "cuda/cache_policy.h"
#include "cuda/testing/emulated_gpu.h"
#include "cuda/testing/random_bags.h"
#include "embstore/query.h"
#include "engine/kernels_ref.h"
#include "engine/plan.h"
#include "engine_test_util.h"

namespace embstore::cuda {
namespace {

using testing::TestTable;
using namespace embstore::cuda::cudatest;  // NOLINT(google-build-using-namespace)

struct Totals {
  int64_t cases = 0, passes = 0, fills = 0, evictions = 0, resident = 0;
};

// Runs every dtype x mode x weighted x padding x max_norm x layout
// combination on one cache, which therefore sees hits, misses, evictions and
// (for small capacities) batches split into several passes.
// With `two_tables`, cases alternate between two tables of one layout, which
// share the cache (and keep a large cache out of resident mode).
void RunMatrix(int64_t dim, int64_t cache_rows, CachePolicy policy, uint64_t seed, Totals* totals,
               bool two_tables = false) {
  std::mt19937_64 rng(seed);
  const int64_t rows = 48;
  for (DType dtype : kAllDTypes) {
    const TestTable table =
        testing::RandomTable(rows, dim, dtype, rng, /*aligned_stride=*/rng() % 2);
    const TestTable other =
        testing::RandomTable(rows, dim, dtype, rng, /*aligned_stride=*/rng() % 2);
    EmulatedGpu gpu(policy, cache_rows);
    int64_t n = 0;
    for (PoolingMode mode : kModes) {
      for (bool weighted : {false, true}) {
        for (bool padding : {false, true}) {
          for (const std::optional<double>& norm : kNormTypes) {
            for (Layout layout : kLayouts) {
              SCOPED_TRACE(std::string(testing::DTypeLabel(dtype)) + " dim " + std::to_string(dim) +
                           " " + PoolingModeName(mode) + (weighted ? " weighted" : "") +
                           (padding ? " padding" : "") +
                           " max_norm p=" + (norm ? std::to_string(*norm) : "none") + " " +
                           LayoutName(layout) + " cache " + std::to_string(cache_rows));
              const TableView view = (two_tables && (n++ % 2)) ? other.view() : table.view();
              const auto req = MakeRequest(rng, rows, layout, mode, weighted, padding, norm, 8);
              auto ref = Reference(view, *req);
              ASSERT_TRUE(ref.ok()) << ref.status().ToString();
              auto plan = Plan(view, *req);
              ASSERT_TRUE(plan.ok());
              std::vector<float> got(ref->values.size(), std::nanf("1"));  // poisoned
              const Status st = gpu.Run(view, *plan, req->options, got.data());
              ASSERT_TRUE(st.ok()) << st.ToString();
              const bool exact = !norm.has_value();
              for (size_t i = 0; i < got.size(); ++i) {
                const bool ok =
                    exact ? SameFloat(got[i], ref->values[i]) : NearFloat(got[i], ref->values[i]);
                ASSERT_TRUE(ok) << "element " << i << ": emulated GPU " << got[i] << ", reference "
                                << ref->values[i];
              }
              // And the CPU engine's fast kernels agree to rounding.
              auto cpu = CpuEngine(view, *req);
              ASSERT_TRUE(cpu.ok());
              for (size_t i = 0; i < got.size(); ++i) {
                ASSERT_TRUE(testing::Close(got[i], cpu->values[i], 1e-5))
                    << "element " << i << ": " << got[i] << " vs CPU " << cpu->values[i];
              }
              ++totals->cases;
            }
          }
        }
      }
    }
    totals->resident += gpu.resident();
    totals->passes += gpu.passes();
    totals->fills += gpu.fills();
    totals->evictions += gpu.cache().counters().evictions;
  }
}

class PipelineTest : public ::testing::TestWithParam<int64_t> {};

TEST_P(PipelineTest, MatchesReferenceResident) {
  Totals t;
  RunMatrix(GetParam(), 1000, CachePolicy::kLru, 100 + GetParam(), &t);
  EXPECT_EQ(t.resident, static_cast<int>(kAllDTypes.size()));  // every dtype's engine went resident
  EXPECT_EQ(t.evictions, 0);
  std::printf("dim %lld: %lld cases, %lld passes, %lld rows copied\n",
              static_cast<long long>(GetParam()), static_cast<long long>(t.cases),
              static_cast<long long>(t.passes), static_cast<long long>(t.fills));
}

TEST_P(PipelineTest, MatchesReferenceLargeCacheTwoTables) {
  Totals t;
  RunMatrix(GetParam(), 1000, CachePolicy::kLfu, 400 + GetParam(), &t, /*two_tables=*/true);
  EXPECT_EQ(t.resident, 0);
  EXPECT_EQ(t.evictions, 0);
}

TEST_P(PipelineTest, MatchesReferenceSmallCacheLru) {
  Totals t;
  RunMatrix(GetParam(), 8, CachePolicy::kLru, 200 + GetParam(), &t);
  EXPECT_GT(t.evictions, 0);
  EXPECT_GT(t.passes, t.cases / 2);  // many batches needed several passes
}

TEST_P(PipelineTest, MatchesReferenceSmallCacheLfu) {
  Totals t;
  RunMatrix(GetParam(), 11, CachePolicy::kLfu, 300 + GetParam(), &t);
  EXPECT_GT(t.evictions, 0);
}

// Dims around the vector widths (4 f32, 8 f16/bf16, 16 int8 per 16 bytes),
// and past one warp of vectors (> 32 * 4 f32).
INSTANTIATE_TEST_SUITE_P(Dims, PipelineTest, ::testing::Values(1, 3, 8, 17, 37, 64, 130));

// ---- Targeted cases -----------------------------------------------------------------

TEST(PipelineSemantics, MaxTiesNanAndSignedZero) {
  // Max keeps the first of equal values (visible in the sign of zero) and a
  // NaN only when it comes first.
  const float nan = std::nanf("");
  const std::vector<float> values = {
      0.0f,  -1.0f, nan,  2.0f,  // row 0
      -0.0f, -1.0f, 1.0f, nan,   // row 1
      5.0f,  5.0f,  5.0f, 5.0f,  // row 2
  };
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    const TestTable table(values, 3, 4, dtype);
    const TableView view = table.view();
    const std::vector<int64_t> ids = {0, 1, 1, 0, 2, 0};
    const std::vector<int64_t> offsets = {0, 2, 4};
    BagRequest r = Bags(ids, offsets);
    for (PoolingMode mode : kModes) {
      QueryOptions o;
      o.mode = mode;
      auto ref = engine::EmbeddingBagRef(view, r, o);
      ASSERT_TRUE(ref.ok());
      auto plan = engine::PlanBags(view, r, o);
      ASSERT_TRUE(plan.ok());
      EmulatedGpu gpu(CachePolicy::kLru, 16);
      std::vector<float> got(ref->values.size(), 123.0f);
      ASSERT_TRUE(gpu.Run(view, *plan, o, got.data()).ok());
      for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_TRUE(SameFloat(got[i], ref->values[i]))
            << PoolingModeName(mode) << " element " << i << ": " << got[i] << " vs "
            << ref->values[i];
      }
    }
  }
}

TEST(PipelineSemantics, AllPaddingAndEmptyBagsAreZero) {
  std::mt19937_64 rng(5);
  const TestTable table = testing::RandomTable(10, 7, DType::kInt8Rowwise, rng);
  const std::vector<int64_t> ids = {3, 3, 3};
  const std::vector<int64_t> offsets = {0, 0, 3, 3};
  BagRequest r = Bags(ids, offsets);
  QueryOptions o;
  o.mode = PoolingMode::kMax;
  o.padding_idx = 3;
  auto plan = engine::PlanBags(table.view(), r, o);
  ASSERT_TRUE(plan.ok());
  EmulatedGpu gpu(CachePolicy::kLru, 4);
  std::vector<float> got(4 * 7, 9.0f);  // 4 bags: [0,0) [0,3) [3,3) [3,3)
  ASSERT_TRUE(gpu.Run(table.view(), *plan, o, got.data()).ok());
  for (float v : got) EXPECT_EQ(v, 0.0f);
}

}  // namespace
}  // namespace embstore::cuda
