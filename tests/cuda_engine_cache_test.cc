// GpuEngine on a real GPU, its cache: stats (hits, misses, evictions, bytes,
// passes), prefetch (warming, the overlapped serving loop, its validation),
// resident mode and several tables sharing or re-laying out the cache,
// concurrent callers, and a large skewed batch through a small cache.
//
// Where there is no GPU (or the build has no CUDA), every test is skipped
// with the reason (GTEST_SKIP), never failed.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <thread>
#include <vector>

#include "cuda/testing/gpu_engine_testing.h"
#include "cuda/testing/random_bags.h"
#include "embstore/gpu_engine.h"
#include "embstore/query.h"
#include "engine/kernels_ref.h"
#include "engine_test_util.h"

namespace embstore::cuda {
namespace {

using namespace embstore::cuda::cudatest;  // NOLINT(google-build-using-namespace)
using testing::TestTable;

// ---- Stats and prefetch ------------------------------------------------------------------

TEST(GpuStats, HitsMissesEvictionsBytes) {
  EMBSTORE_GPU_OR_SKIP(gpu, Rows(1000));
  std::mt19937_64 rng(9);
  // More rows than the cache: the cache works as a cache (no resident mode).
  const TestTable table = testing::RandomTable(2000, 16, DType::kF32, rng);
  const std::vector<int64_t> ids = {1, 2, 3, 2, 1};
  const std::vector<int64_t> offsets = {0, 2};
  BagRequest r = Bags(ids, offsets);
  ASSERT_TRUE(gpu->EmbeddingBag(table.view(), r, QueryOptions()).ok());
  CacheStats s = gpu->stats();
  EXPECT_EQ(s.batches, 1);
  EXPECT_EQ(s.lookups, 3);  // distinct rows
  EXPECT_EQ(s.misses, 3);
  EXPECT_EQ(s.hits, 0);
  EXPECT_EQ(s.bytes_copied, 3 * 64);  // 16 f32 a row
  EXPECT_EQ(s.capacity_rows, 1000);
  EXPECT_EQ(s.resident_rows, 3);
  ASSERT_TRUE(gpu->EmbeddingBag(table.view(), r, QueryOptions()).ok());
  s = gpu->stats();
  EXPECT_EQ(s.hits, 3);
  EXPECT_EQ(s.misses, 3);
  EXPECT_DOUBLE_EQ(s.hit_rate(), 0.5);
  EXPECT_EQ(s.bytes_copied, 3 * 64);
  gpu->ResetStats();
  s = gpu->stats();
  EXPECT_EQ(s.lookups, 0);
  EXPECT_EQ(s.resident_rows, 3);

  // A small cache: evictions, and a batch larger than the cache in passes.
  EMBSTORE_GPU_OR_SKIP(small, Rows(4));
  std::vector<int64_t> many;
  std::vector<int64_t> offs;
  for (int64_t i = 0; i < 20; ++i) {
    if (i % 2 == 0) offs.push_back(i);
    many.push_back(i);
  }
  BagRequest big = Bags(many, offs);
  auto got = small->EmbeddingBag(table.view(), big, QueryOptions());
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  auto ref = engine::EmbeddingBagRef(table.view(), big, QueryOptions());
  ASSERT_TRUE(ref.ok());
  for (size_t i = 0; i < ref->values.size(); ++i)
    ASSERT_TRUE(SameFloat(got->values[i], ref->values[i]));
  s = small->stats();
  EXPECT_EQ(s.batches, 1);
  EXPECT_EQ(s.sub_batches, 5);  // 10 bags of 2 distinct rows, 4 slots
  EXPECT_EQ(s.misses, 20);
  EXPECT_EQ(s.evictions, 16);
}

TEST(GpuPrefetch, WarmsTheCacheForTheNextBatch) {
  EMBSTORE_GPU_OR_SKIP(gpu, Rows(100));
  std::mt19937_64 rng(10);
  const TestTable table = testing::RandomTable(500, 24, DType::kInt8Rowwise, rng);
  const TableView view = table.view();
  const std::vector<int32_t> next = {5, 6, 7, 5};
  ASSERT_TRUE(gpu->Prefetch(view, std::span<const int32_t>(next)).ok());
  const std::vector<int64_t> ids = {5, 6, 7};
  const std::vector<int64_t> offsets = {0, 1};
  BagRequest r = Bags(ids, offsets);
  QueryOptions o;
  o.mode = PoolingMode::kMax;
  auto got = gpu->EmbeddingBag(view, r, o);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  auto ref = engine::EmbeddingBagRef(view, r, o);
  for (size_t i = 0; i < ref->values.size(); ++i)
    ASSERT_TRUE(SameFloat(got->values[i], ref->values[i]));
  ASSERT_TRUE(gpu->Sync().ok());
  const CacheStats s = gpu->stats();
  EXPECT_EQ(s.prefetch_requests, 1);
  EXPECT_EQ(s.prefetch_lookups, 3);
  EXPECT_EQ(s.prefetched_rows, 3);
  EXPECT_EQ(s.hits, 3);
  EXPECT_EQ(s.misses, 0);

  // Invalid ids: the engine's message for the same ids as one bag.
  const std::vector<int64_t> bad = {1, 500};
  const Status st = gpu->Prefetch(view, std::span<const int64_t>(bad));
  const std::vector<int64_t> zero = {0};
  BagRequest as_bag = Bags(bad, zero);
  ExpectSameStatus(st, EmbeddingBag(view, as_bag, QueryOptions()).status());
}

TEST(GpuPrefetch, OverlappedServingLoop) {
  // The intended pattern: prefetch batch i + 1, then pool batch i.
  EMBSTORE_GPU_OR_SKIP(gpu, Rows(600));
  std::mt19937_64 rng(11);
  const TestTable table = testing::RandomTable(2000, 64, DType::kF16, rng);
  const TableView view = table.view();
  std::vector<std::unique_ptr<RandomRequest>> batches;
  for (int i = 0; i < 40; ++i) {
    batches.push_back(MakeRequest(rng, 2000, Layout::kOffsets, PoolingMode::kMean, i % 2, false,
                                  std::nullopt, 30));
  }
  for (size_t i = 0; i < batches.size(); ++i) {
    if (i + 1 < batches.size()) {
      ASSERT_TRUE(gpu->Prefetch(view, batches[i + 1]->bag.indices).ok());
    }
    auto got = OnGpu(*gpu, view, *batches[i]);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    auto ref = Reference(view, *batches[i]);
    for (size_t k = 0; k < ref->values.size(); ++k) {
      ASSERT_TRUE(SameFloat(got->values[k], ref->values[k])) << "batch " << i << " element " << k;
    }
  }
  ASSERT_TRUE(gpu->Sync().ok());
  const CacheStats s = gpu->stats();
  std::printf("prefetched %lld rows, dropped %lld; batch hit rate %.3f\n",
              static_cast<long long>(s.prefetched_rows), static_cast<long long>(s.prefetch_dropped),
              s.hit_rate());
  EXPECT_GT(s.prefetched_rows, 0);
  EXPECT_GT(s.hit_rate(), 0.3);
}

// ---- Tables, threads ---------------------------------------------------------------------

TEST(GpuTables, ResidentModeSharedLayoutRelayoutAndForget) {
  EMBSTORE_GPU_OR_SKIP(gpu, Rows(64));
  std::mt19937_64 rng(12);
  const TestTable a = testing::RandomTable(30, 8, DType::kF32, rng);
  const TestTable b = testing::RandomTable(30, 8, DType::kF32, rng);  // same layout, other rows
  const TestTable c = testing::RandomTable(30, 8, DType::kF16, rng);  // other layout
  const std::vector<int64_t> ids = {0, 1, 2, 3};
  const std::vector<int64_t> offsets = {0, 2};
  BagRequest r = Bags(ids, offsets);
  auto check = [&](const TestTable& t) {
    auto got = gpu->EmbeddingBag(t.view(), r, QueryOptions());
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    auto ref = engine::EmbeddingBagRef(t.view(), r, QueryOptions());
    for (size_t i = 0; i < ref->values.size(); ++i) {
      ASSERT_TRUE(SameFloat(got->values[i], ref->values[i])) << i;
    }
  };
  // The cache has a slot for every row of a: a is copied in whole (resident
  // mode) and every lookup is a hit.
  check(a);
  CacheStats s = gpu->stats();
  EXPECT_EQ(s.resident_rows, 30);
  EXPECT_EQ(s.misses, 30);
  EXPECT_EQ(s.hits, 4);
  ASSERT_TRUE(gpu->Prefetch(a.view(), std::span<const int64_t>(ids)).ok());  // nothing to do
  check(a);
  // A second table of the layout: the cache becomes a shared cache.
  check(b);
  EXPECT_EQ(gpu->stats().resident_rows, 4);
  check(a);
  EXPECT_EQ(gpu->stats().resident_rows, 8);
  for (int round = 0; round < 3; ++round) {
    for (const TestTable* t : {&a, &b, &b, &a}) check(*t);
  }
  ASSERT_TRUE(gpu->Forget(a.view()).ok());
  EXPECT_EQ(gpu->stats().resident_rows, 4);
  // Another layout: the cache is laid out anew (and c fits whole).
  check(c);
  EXPECT_EQ(gpu->stats().resident_rows, 30);
  check(a);
  ASSERT_TRUE(gpu->Clear().ok());
  EXPECT_EQ(gpu->stats().resident_rows, 0);
  check(b);  // after Clear, resident again
  EXPECT_EQ(gpu->stats().resident_rows, 30);
}

TEST(GpuThreads, ConcurrentCallersGetTheirOwnResults) {
  EMBSTORE_GPU_OR_SKIP(gpu, Rows(200));
  std::mt19937_64 rng(13);
  const TestTable table = testing::RandomTable(500, 33, DType::kF32, rng);
  const TableView view = table.view();
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 local(100 + t);
      for (int i = 0; i < 40; ++i) {
        const auto req = MakeRequest(local, 500, static_cast<Layout>(i % 4),
                                     static_cast<PoolingMode>(i % 3), i % 2, i % 3 == 0,
                                     i % 5 == 0 ? std::optional<double>(2.0) : std::nullopt, 16);
        if (t == 0 && !req->is_batched) (void)gpu->Prefetch(view, req->bag.indices);
        auto got = OnGpu(*gpu, view, *req);
        auto ref = Reference(view, *req);
        if (!got.ok() || !ref.ok() || got->values.size() != ref->values.size()) {
          ++failures;
          continue;
        }
        for (size_t k = 0; k < got->values.size(); ++k) {
          if (!NearFloat(got->values[k], ref->values[k])) {
            ++failures;
            break;
          }
        }
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST(GpuScale, LargeBatchSkewedIdsSmallCache) {
  EMBSTORE_GPU_OR_SKIP(gpu, Rows(10000));
  std::mt19937_64 rng(14);
  const int64_t rows = 50000, dim = 96;
  const TestTable table = testing::RandomTable(rows, dim, DType::kF16, rng);
  const TableView view = table.view();
  std::vector<int64_t> ids, offsets;
  std::vector<float> weights;
  for (int64_t b = 0; b < 4096; ++b) {
    offsets.push_back(static_cast<int64_t>(ids.size()));
    for (int j = 0; j < 20; ++j) {
      const int64_t x = static_cast<int64_t>(rng() % rows);
      ids.push_back((x * x / rows) % rows);  // skewed toward low ids
      weights.push_back(static_cast<float>(rng() % 100) / 50.0f - 1.0f);
    }
  }
  BagRequest r = Bags(ids, offsets);
  r.weights = std::span<const float>(weights);
  QueryOptions o;
  o.mode = PoolingMode::kSum;
  for (int rep = 0; rep < 3; ++rep) {
    auto got = gpu->EmbeddingBag(view, r, o);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    auto ref = engine::EmbeddingBagRef(view, r, o);
    ASSERT_TRUE(ref.ok());
    for (size_t i = 0; i < ref->values.size(); ++i) {
      ASSERT_TRUE(SameFloat(got->values[i], ref->values[i])) << i;
    }
  }
  const CacheStats s = gpu->stats();
  std::printf("3 x 4096 bags: %lld passes, hit rate %.3f, %.1f MB copied\n",
              static_cast<long long>(s.sub_batches), s.hit_rate(), s.bytes_copied / 1e6);
  EXPECT_GT(s.sub_batches, s.batches);
}

}  // namespace
}  // namespace embstore::cuda
