// The torch goldens (tests/golden, golden_cases.h) on a real GPU: every torch
// and extension case gives torch's result, and equals the CPU engine's; what
// the CPU engine refuses, the GPU engine refuses with the same status.
//
// Skipped (GTEST_SKIP) where there is no GPU or the build has no CUDA; where
// there is one, it asserts that every case of the file ran.
#include <gtest/gtest.h>

#include <cstdio>
#include <vector>

#include "cuda/cache_policy.h"
#include "cuda/testing/gpu_engine_testing.h"
#include "cuda/testing/random_bags.h"
#include "embstore/gpu_engine.h"
#include "embstore/query.h"
#include "engine_test_util.h"
#include "golden_cases.h"

namespace embstore::cuda {
namespace {

using embstore::testing::GoldenCase;
using namespace embstore::cuda::cudatest;  // NOLINT(google-build-using-namespace)

TEST(GpuGolden, TorchAndExtensionCases) {
  EMBSTORE_GPU_OR_SKIP(gpu, Rows(64, CachePolicy::kLfu));
  const auto goldens = embstore::testing::LoadGoldenFile();
  ASSERT_TRUE(goldens.ok()) << goldens.status().ToString();
  int checked = 0, errors_matched = 0;
  for (const std::vector<GoldenCase>* list : {&goldens->cases, &goldens->extension_cases}) {
    for (const GoldenCase& c : *list) {
      SCOPED_TRACE(c.name);
      const TableView view = goldens->View(c.table);
      Result<PooledOutput> got = Status::Internal("not run"), cpu = Status::Internal("not run");
      if (c.batched) {
        got = gpu->BatchedEmbeddingBag(view, c.Batched(), c.options);
        cpu = BatchedEmbeddingBag(view, c.Batched(), c.options);
      } else {
        got = gpu->EmbeddingBag(view, c.Bag(), c.options);
        cpu = EmbeddingBag(view, c.Bag(), c.options);
      }
      if (!cpu.ok()) {  // whatever the CPU engine refuses, the GPU refuses alike
        ASSERT_FALSE(got.ok());
        ExpectSameStatus(got.status(), cpu.status());
        ++errors_matched;
        ++checked;
        continue;
      }
      ASSERT_TRUE(got.ok()) << got.status().ToString();
      EXPECT_EQ(got->shape, c.expected_shape);
      ASSERT_TRUE(c.MatchesTorch(got->values));
      for (size_t i = 0; i < got->values.size(); ++i) {
        ASSERT_TRUE(SameFloat(got->values[i], cpu->values[i]) ||
                    testing::Close(got->values[i], cpu->values[i], 1e-5))
            << "element " << i << ": GPU " << got->values[i] << ", CPU " << cpu->values[i];
      }
      ++checked;
    }
  }
  std::printf("%d golden cases checked on the GPU (%d refused as on the CPU)\n", checked,
              errors_matched);
  EXPECT_EQ(checked,
            embstore::testing::kTorchGoldenCases + embstore::testing::kExtensionGoldenCases);
  // Every golden case carries torch's result: neither engine may refuse one.
  EXPECT_EQ(errors_matched, 0);
}

}  // namespace
}  // namespace embstore::cuda
