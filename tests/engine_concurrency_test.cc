// Many threads querying one table view at once (each call also using TBB
// inside) get exactly the single-threaded answer.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <random>
#include <span>
#include <thread>
#include <vector>

#include "embstore/query.h"
#include "engine_test_util.h"

namespace embstore {
namespace {

// inner_threads: max_threads of each call (0: TBB default; 1: no TBB, which
// is what a ThreadSanitizer run can check: libtbb is not instrumented).
void RunEightThreads(int inner_threads) {
  std::mt19937_64 rng(21);
  for (DType dtype : {DType::kF32, DType::kInt8Rowwise}) {
    const testing::TestTable table = testing::RandomTable(20000, 96, dtype, rng);
    const TableView view = table.view();
    // Four different requests, so threads do not all do the same thing.
    struct Work {
      std::vector<int64_t> ids, offsets;
      std::vector<float> weights;
      QueryOptions options;
      std::vector<float> expected;
    };
    std::vector<Work> work(4);
    std::uniform_int_distribution<int64_t> id(0, 19999), size(0, 80);
    std::uniform_real_distribution<float> w(-1, 1);
    for (size_t k = 0; k < work.size(); ++k) {
      Work& wk = work[k];
      for (int b = 0; b < 1500; ++b) {
        wk.offsets.push_back(static_cast<int64_t>(wk.ids.size()));
        const int64_t n = size(rng);
        for (int64_t j = 0; j < n; ++j) wk.ids.push_back(id(rng));
      }
      wk.weights.resize(wk.ids.size());
      for (float& v : wk.weights) v = w(rng);
      wk.options.mode = static_cast<PoolingMode>(k % 3);
      if (k == 3) wk.options.max_norm = 1.0;
      if (k == 1) wk.options.padding_idx = 7;
      wk.options.max_threads = 1;
      BagRequest r;
      r.indices = std::span<const int64_t>(wk.ids);
      r.offsets = std::span<const int64_t>(wk.offsets);
      if (k % 2 == 0) r.weights = std::span<const float>(wk.weights);
      auto got = EmbeddingBag(view, r, wk.options);
      ASSERT_TRUE(got.ok());
      wk.expected = got->values;
    }
    std::atomic<int> mismatches{0}, failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&, t] {
        for (int iter = 0; iter < 12; ++iter) {
          const size_t k = static_cast<size_t>(t + iter) % work.size();
          const Work& wk = work[k];
          BagRequest r;
          r.indices = std::span<const int64_t>(wk.ids);
          r.offsets = std::span<const int64_t>(wk.offsets);
          if (k % 2 == 0) r.weights = std::span<const float>(wk.weights);
          QueryOptions o = wk.options;
          if (inner_threads == 1) {
            o.max_threads = 1;
          } else {
            o.max_threads = iter % 3 == 0 ? 2 : 0;  // TBB inside, default or own arena
          }
          std::vector<float> out(wk.expected.size());
          if (!EmbeddingBag(view, r, o, out).ok()) {
            ++failures;
          } else if (out != wk.expected) {
            ++mismatches;
          }
        }
      });
    }
    for (std::thread& th : threads) th.join();
    EXPECT_EQ(failures.load(), 0);
    EXPECT_EQ(mismatches.load(), 0) << testing::DTypeLabel(dtype);
  }
}

TEST(Concurrency, EightThreadsShareOneView) { RunEightThreads(0); }

TEST(Concurrency, EightThreadsShareOneViewWithoutTbb) { RunEightThreads(1); }

}  // namespace
}  // namespace embstore
