// Test-only helpers of the GPU engine suites (tests/cuda_engine*_test.cc,
// tests/cuda_golden_test.cc): an engine or a skip, and comparisons with the
// CPU engine. Header-only; never linked into the library.
#ifndef EMBSTORE_CUDA_TESTING_GPU_ENGINE_TESTING_H_
#define EMBSTORE_CUDA_TESTING_GPU_ENGINE_TESTING_H_

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <utility>

#include "cuda/cache_policy.h"
#include "cuda/testing/random_bags.h"
#include "embstore/gpu_engine.h"
#include "embstore/query.h"
#include "embstore/status.h"

namespace embstore::cuda::cudatest {

// Declares `engine` made from `options`, or skips the test without a GPU
// (Create says NotSupported: no CUDA in the build, no driver or device, or
// a device older than sm_90). Any other failure fails the test.
#define EMBSTORE_GPU_OR_SKIP(engine, options)                                        \
  std::unique_ptr<::embstore::cuda::GpuEngine> engine;                               \
  {                                                                                  \
    auto created_ = ::embstore::cuda::GpuEngine::Create(options);                    \
    if (!created_.ok() && created_.status().code() == Status::Code::kNotSupported) { \
      GTEST_SKIP() << created_.status().message();                                   \
    }                                                                                \
    ASSERT_TRUE(created_.ok()) << created_.status().ToString();                      \
    engine = std::move(created_).value();                                            \
  }

// Engine options for a cache of `rows` rows.
inline GpuEngineOptions Rows(int64_t rows, CachePolicy policy = CachePolicy::kLru) {
  GpuEngineOptions o;
  o.cache_rows = rows;
  o.policy = policy;
  return o;
}

// The request on the GPU engine.
inline Result<PooledOutput> OnGpu(GpuEngine& gpu, const TableView& t, const RandomRequest& r) {
  return r.is_batched ? gpu.BatchedEmbeddingBag(t, r.batched, r.options)
                      : gpu.EmbeddingBag(t, r.bag, r.options);
}

// The GPU engine refused as the CPU engine did: same code, same message.
inline void ExpectSameStatus(const Status& gpu, const Status& cpu) {
  EXPECT_EQ(gpu.code(), cpu.code()) << "GPU: " << gpu.ToString() << "\nCPU: " << cpu.ToString();
  EXPECT_EQ(gpu.message(), cpu.message());
}

}  // namespace embstore::cuda::cudatest

#endif  // EMBSTORE_CUDA_TESTING_GPU_ENGINE_TESTING_H_
