// GpuEngine on a real GPU: results equal the CPU engine's (and its scalar
// reference, bit for bit where no max_norm is involved) for every dtype x
// mode x weights x padding x max_norm x layout, with caches large and small
// (evictions, batches split into passes), identical error messages, device
// output, stats, prefetch, several tables, threads, and the torch goldens.
//
// Where there is no GPU (or the build has no CUDA), every test that needs
// one is skipped with the reason (GTEST_SKIP), never failed; GpuProbe checks
// that "no GPU" is reported as NotSupported.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#if defined(EMBSTORE_HAVE_CUDA)
#include <cuda_runtime_api.h>
#endif

#include "checkpoint/npy.h"
#include "cuda/device_probe.h"
#include "cuda/gpu_engine.h"
#include "cuda/testing/random_bags.h"
#include "embstore/query.h"
#include "engine_test_util.h"
#include "golden_case_util.h"

namespace embstore::cuda {
namespace {

using namespace embstore::cuda::cudatest;  // NOLINT(google-build-using-namespace)
using test::TestTable;

// Declares `engine` made from `options`, or skips the test without a GPU.
#define EMBSTORE_GPU_OR_SKIP(engine, options)                                        \
  std::unique_ptr<GpuEngine> engine;                                                 \
  {                                                                                  \
    auto created_ = GpuEngine::Create(options);                                      \
    if (!created_.ok() && created_.status().code() == Status::Code::kNotSupported) { \
      GTEST_SKIP() << created_.status().message();                                   \
    }                                                                                \
    ASSERT_TRUE(created_.ok()) << created_.status().ToString();                      \
    engine = std::move(created_).value();                                            \
  }

GpuEngineOptions Rows(int64_t rows, CachePolicy policy = CachePolicy::kLru) {
  GpuEngineOptions o;
  o.cache_rows = rows;
  o.policy = policy;
  return o;
}

Result<PooledOutput> OnGpu(GpuEngine& gpu, const TableView& t, const RandomRequest& r) {
  return r.is_batched ? gpu.BatchedEmbeddingBag(t, r.batched, r.options)
                      : gpu.EmbeddingBag(t, r.bag, r.options);
}

void ExpectSameStatus(const Status& gpu, const Status& cpu) {
  EXPECT_EQ(gpu.code(), cpu.code()) << "GPU: " << gpu.ToString() << "\nCPU: " << cpu.ToString();
  EXPECT_EQ(gpu.message(), cpu.message());
}

// ---- No GPU ----------------------------------------------------------------------------

TEST(GpuProbe, NoGpuIsReportedAsNotSupported) {
  auto devices = ListDevices();
  auto created = GpuEngine::Create(GpuEngineOptions());
  if (!devices.ok()) {
    EXPECT_EQ(devices.status().code(), Status::Code::kNotSupported);
    EXPECT_EQ(devices.status().message().rfind("no GPU", 0), 0u) << devices.status().message();
    ASSERT_FALSE(created.ok());
    EXPECT_EQ(created.status().code(), Status::Code::kNotSupported);
    EXPECT_EQ(created.status().message().rfind("no GPU", 0), 0u) << created.status().message();
    std::printf("no GPU here: %s\n", created.status().message().c_str());
    return;
  }
  ASSERT_FALSE(devices->empty());
  const DeviceInfo& d = devices->front();
  std::printf("cuda:0 %s sm_%d%d %.1f GiB\n", d.name.c_str(), d.compute_major, d.compute_minor,
              static_cast<double>(d.total_memory_bytes) / (1 << 30));
  if (d.compute_major >= 9) {
    ASSERT_TRUE(created.ok()) << created.status().ToString();
    EXPECT_EQ((*created)->device().ordinal, 0);
    EXPECT_EQ((*created)->device().name, d.name);
  } else {
    EXPECT_EQ(created.status().code(), Status::Code::kNotSupported);
  }
}

TEST(GpuProbe, BadOptionsAreRefused) {
  GpuEngineOptions both;
  both.cache_rows = 10;
  both.cache_bytes = 10;
  GpuEngineOptions negative;
  negative.cache_rows = -1;
  for (const GpuEngineOptions& o : {both, negative}) {
    auto r = GpuEngine::Create(o);
    ASSERT_FALSE(r.ok());
    // Options are checked before the device (when CUDA is built in).
    EXPECT_EQ(r.status().code(),
              BuiltWithCuda() ? Status::Code::kInvalidArgument : Status::Code::kNotSupported)
        << r.status().ToString();
  }
  GpuEngineOptions far;
  far.device = 1000;
  auto r = GpuEngine::Create(far);
  ASSERT_FALSE(r.ok());
  if (ListDevices().ok()) {
    EXPECT_EQ(r.status().code(), Status::Code::kInvalidArgument) << r.status().ToString();
  } else {
    EXPECT_EQ(r.status().code(), Status::Code::kNotSupported);
  }
}

// ---- Parity with the CPU engine -------------------------------------------------------

struct Config {
  int64_t cache_rows;
  CachePolicy policy;
};
void PrintTo(const Config& c, std::ostream* os) {
  *os << CachePolicyName(c.policy) << " cache of " << c.cache_rows << " rows";
}

class GpuParity : public ::testing::TestWithParam<Config> {};

const DType kDTypes[] = {DType::kF32, DType::kF16, DType::kBF16, DType::kInt8Rowwise};
const PoolingMode kModes[] = {PoolingMode::kSum, PoolingMode::kMean, PoolingMode::kMax};
const Layout kLayouts[] = {Layout::kOffsets, Layout::kLastOffset, Layout::k2D, Layout::kBatched};
const std::optional<double> kNorms[] = {std::nullopt,
                                        2.0,
                                        1.0,
                                        std::numeric_limits<double>::infinity(),
                                        -std::numeric_limits<double>::infinity(),
                                        3.0,
                                        0.5};

TEST_P(GpuParity, EveryDtypeModeOptionAndLayout) {
  const Config cfg = GetParam();
  EMBSTORE_GPU_OR_SKIP(gpu, Rows(cfg.cache_rows, cfg.policy));
  std::mt19937_64 rng(static_cast<uint64_t>(cfg.cache_rows) * 7 + static_cast<int>(cfg.policy));
  int64_t cases = 0;
  // One engine throughout: each new dtype/dim re-lays the cache out.
  for (int64_t dim : {1, 7, 37, 64, 130, 300}) {
    for (DType dtype : kDTypes) {
      const TestTable table = test::RandomTable(48, dim, dtype, rng, /*aligned_stride=*/rng() % 2);
      const TableView view = table.view();
      for (PoolingMode mode : kModes) {
        for (bool weighted : {false, true}) {
          for (bool padding : {false, true}) {
            for (const std::optional<double>& norm : kNorms) {
              for (Layout layout : kLayouts) {
                SCOPED_TRACE(std::string(test::DTypeLabel(dtype)) + " dim " + std::to_string(dim) +
                             " " + PoolingModeName(mode) + (weighted ? " weighted" : "") +
                             (padding ? " padding" : "") + " max_norm p=" +
                             (norm ? std::to_string(*norm) : "none") + " " + LayoutName(layout));
                const auto req = MakeRequest(rng, 48, layout, mode, weighted, padding, norm, 8);
                auto ref = Reference(view, *req);
                ASSERT_TRUE(ref.ok()) << ref.status().ToString();
                auto got = OnGpu(*gpu, view, *req);
                ASSERT_TRUE(got.ok()) << got.status().ToString();
                ASSERT_EQ(got->shape, ref->shape);
                ASSERT_EQ(got->values.size(), ref->values.size());
                auto cpu = CpuEngine(view, *req);
                ASSERT_TRUE(cpu.ok());
                for (size_t i = 0; i < got->values.size(); ++i) {
                  const float g = got->values[i];
                  const bool same =
                      norm ? NearFloat(g, ref->values[i]) : SameFloat(g, ref->values[i]);
                  ASSERT_TRUE(same)
                      << "element " << i << ": GPU " << g << ", reference " << ref->values[i];
                  ASSERT_TRUE(test::Close(g, cpu->values[i], 1e-5))
                      << "element " << i << ": GPU " << g << ", CPU " << cpu->values[i];
                }
                ++cases;
              }
            }
          }
        }
      }
    }
  }
  const CacheStats s = gpu->stats();
  std::printf("%lld cases; %lld lookups, hit rate %.3f, %lld evictions, %lld passes\n",
              static_cast<long long>(cases), static_cast<long long>(s.lookups), s.hit_rate(),
              static_cast<long long>(s.evictions), static_cast<long long>(s.sub_batches));
  if (cfg.cache_rows < 48) {
    EXPECT_GT(s.evictions, 0);
    EXPECT_GT(s.sub_batches, s.batches / 2);
  }
}

INSTANTIATE_TEST_SUITE_P(Caches, GpuParity,
                         ::testing::Values(Config{4096, CachePolicy::kLru},
                                           Config{8, CachePolicy::kLru},
                                           Config{11, CachePolicy::kLfu}),
                         [](const ::testing::TestParamInfo<Config>& info) {
                           return std::string(CachePolicyName(info.param.policy)) + "_" +
                                  std::to_string(info.param.cache_rows);
                         });

// ---- Errors ----------------------------------------------------------------------------

TEST(GpuErrors, SameStatusAndMessageAsCpu) {
  EMBSTORE_GPU_OR_SKIP(gpu, Rows(64));
  std::mt19937_64 rng(3);
  const TestTable table = test::RandomTable(10, 4, DType::kF32, rng);
  const TableView view = table.view();
  const std::vector<int64_t> ids = {1, 2, 10, 3};
  const std::vector<int64_t> neg = {1, -1};
  const std::vector<int64_t> ok_ids = {1, 2, 3, 4};
  const std::vector<int64_t> off_bad0 = {1, 2};
  const std::vector<int64_t> off_dec = {0, 3, 2};
  const std::vector<int64_t> off_past = {0, 9};
  const std::vector<int64_t> off_ok = {0, 2};
  const std::vector<float> w3 = {1, 2, 3};
  struct Case {
    std::vector<int64_t> ids, offsets;
    std::vector<int64_t> shape;
    bool weights3 = false;
    QueryOptions options;
  };
  std::vector<Case> cases;
  cases.push_back({ids, off_ok, {}, false, {}});
  cases.push_back({neg, {0}, {}, false, {}});
  cases.push_back({ok_ids, off_bad0, {}, false, {}});
  cases.push_back({ok_ids, off_dec, {}, false, {}});
  cases.push_back({ok_ids, off_past, {}, false, {}});
  cases.push_back({ok_ids, off_ok, {}, true, {}});
  cases.push_back({ok_ids, off_ok, {2, 2}, false, {}});  // 2-D with offsets
  cases.push_back({ok_ids, {}, {}, false, {}});          // 1-D without offsets
  Case pad;
  pad.ids = ok_ids;
  pad.offsets = off_ok;
  pad.options.padding_idx = 10;
  cases.push_back(pad);
  Case mn = pad;
  mn.options = QueryOptions();
  mn.options.max_norm = 0.0;
  cases.push_back(mn);
  Case nt = mn;
  nt.options.max_norm = 1.0;
  nt.options.norm_type = -2.0;
  cases.push_back(nt);
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE("case " + std::to_string(i));
    const Case& c = cases[i];
    BagRequest r;
    r.indices = std::span<const int64_t>(c.ids);
    r.indices_shape = c.shape;
    if (!c.offsets.empty()) r.offsets = std::span<const int64_t>(c.offsets);
    if (c.weights3) r.weights = std::span<const float>(w3);
    auto cpu = EmbeddingBag(view, r, c.options);
    auto g = gpu->EmbeddingBag(view, r, c.options);
    if (cpu.ok()) {  // (should the engine come to accept one of these)
      EXPECT_TRUE(g.ok()) << g.status().ToString();
      continue;
    }
    ASSERT_FALSE(g.ok());
    ExpectSameStatus(g.status(), cpu.status());
  }
  // Wrong output size.
  BagRequest r;
  r.indices = std::span<const int64_t>(ok_ids);
  r.offsets = std::span<const int64_t>(off_ok);
  std::vector<float> small(3);
  ExpectSameStatus(gpu->EmbeddingBag(view, r, QueryOptions(), small),
                   EmbeddingBag(view, r, QueryOptions(), small));
  // Batched: ends out of range; include_last_offset.
  const std::vector<int64_t> bids = {1, 2, 3, 4};
  const std::vector<int64_t> ends = {0, 5};
  BatchedBagRequest b;
  b.indices = std::span<const int64_t>(bids);
  b.ends = std::span<const int64_t>(ends);
  b.batch = 1;
  b.items = 4;
  b.bags_per_sample = 2;
  ExpectSameStatus(gpu->BatchedEmbeddingBag(view, b, QueryOptions()).status(),
                   BatchedEmbeddingBag(view, b, QueryOptions()).status());
  QueryOptions last;
  last.include_last_offset = true;
  ExpectSameStatus(gpu->BatchedEmbeddingBag(view, b, last).status(),
                   BatchedEmbeddingBag(view, b, last).status());
  // Nothing went wrong for the engine: a valid query still works.
  auto fine = gpu->EmbeddingBag(view, r, QueryOptions());
  EXPECT_TRUE(fine.ok()) << fine.status().ToString();
}

TEST(GpuErrors, BagLargerThanCache) {
  EMBSTORE_GPU_OR_SKIP(gpu, Rows(5));
  std::mt19937_64 rng(4);
  const TestTable table = test::RandomTable(40, 4, DType::kF32, rng);
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < 10; ++i) ids.push_back(i);
  const std::vector<int64_t> offsets = {0, 3, 4};
  BagRequest r;
  r.indices = std::span<const int64_t>(ids);
  r.offsets = std::span<const int64_t>(offsets);
  auto g = gpu->EmbeddingBag(table.view(), r, QueryOptions());
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), Status::Code::kInvalidArgument);
  EXPECT_NE(g.status().message().find("bag 2 uses 6 distinct rows"), std::string::npos)
      << g.status().message();
}

// ---- Device output ---------------------------------------------------------------------

TEST(GpuOutput, ToDeviceMemory) {
#if !defined(EMBSTORE_HAVE_CUDA)
  GTEST_SKIP() << "built without CUDA";
#else
  EMBSTORE_GPU_OR_SKIP(gpu, Rows(256));
  std::mt19937_64 rng(8);
  const TestTable table = test::RandomTable(100, 37, DType::kBF16, rng);
  const TableView view = table.view();
  for (Layout layout : {Layout::kOffsets, Layout::kBatched}) {
    const auto req = MakeRequest(rng, 100, layout, PoolingMode::kSum, true, false, 2.0, 8);
    auto ref = Reference(view, *req);
    ASSERT_TRUE(ref.ok());
    const size_t count = ref->values.size();
    float* d = nullptr;
    ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&d), std::max<size_t>(count, 1) * sizeof(float)),
              cudaSuccess);
    ASSERT_EQ(cudaMemset(d, 0xFF, std::max<size_t>(count, 1) * sizeof(float)), cudaSuccess);
    const Status st =
        req->is_batched
            ? gpu->BatchedEmbeddingBagToDevice(view, req->batched, req->options, d, count)
            : gpu->EmbeddingBagToDevice(view, req->bag, req->options, d, count);
    ASSERT_TRUE(st.ok()) << st.ToString();
    std::vector<float> got(count);
    ASSERT_EQ(cudaMemcpy(got.data(), d, count * sizeof(float), cudaMemcpyDeviceToHost),
              cudaSuccess);
    for (size_t i = 0; i < count; ++i) ASSERT_TRUE(NearFloat(got[i], ref->values[i])) << i;
    if (!req->is_batched && count > 0) {
      // Wrong count: the CPU engine's message for a wrong buffer size.
      std::vector<float> host(count + 1);
      ExpectSameStatus(gpu->EmbeddingBagToDevice(view, req->bag, req->options, d, count + 1),
                       EmbeddingBag(view, req->bag, req->options, host));
      // Host memory is not device memory.
      const Status h = gpu->EmbeddingBagToDevice(view, req->bag, req->options, host.data(), count);
      EXPECT_EQ(h.code(), Status::Code::kInvalidArgument) << h.ToString();
    }
    cudaFree(d);
  }
#endif
}

// ---- Stats and prefetch ------------------------------------------------------------------

TEST(GpuStats, HitsMissesEvictionsBytes) {
  EMBSTORE_GPU_OR_SKIP(gpu, Rows(1000));
  std::mt19937_64 rng(9);
  // More rows than the cache: the cache works as a cache (no resident mode).
  const TestTable table = test::RandomTable(2000, 16, DType::kF32, rng);
  const std::vector<int64_t> ids = {1, 2, 3, 2, 1};
  const std::vector<int64_t> offsets = {0, 2};
  BagRequest r;
  r.indices = std::span<const int64_t>(ids);
  r.offsets = std::span<const int64_t>(offsets);
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
  BagRequest big;
  big.indices = std::span<const int64_t>(many);
  big.offsets = std::span<const int64_t>(offs);
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
  const TestTable table = test::RandomTable(500, 24, DType::kInt8Rowwise, rng);
  const TableView view = table.view();
  const std::vector<int32_t> next = {5, 6, 7, 5};
  ASSERT_TRUE(gpu->Prefetch(view, std::span<const int32_t>(next)).ok());
  const std::vector<int64_t> ids = {5, 6, 7};
  const std::vector<int64_t> offsets = {0, 1};
  BagRequest r;
  r.indices = std::span<const int64_t>(ids);
  r.offsets = std::span<const int64_t>(offsets);
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
  BagRequest as_bag;
  as_bag.indices = std::span<const int64_t>(bad);
  as_bag.offsets = std::span<const int64_t>(zero);
  ExpectSameStatus(st, EmbeddingBag(view, as_bag, QueryOptions()).status());
}

TEST(GpuPrefetch, OverlappedServingLoop) {
  // The intended pattern: prefetch batch i + 1, then pool batch i.
  EMBSTORE_GPU_OR_SKIP(gpu, Rows(600));
  std::mt19937_64 rng(11);
  const TestTable table = test::RandomTable(2000, 64, DType::kF16, rng);
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
  const TestTable a = test::RandomTable(30, 8, DType::kF32, rng);
  const TestTable b = test::RandomTable(30, 8, DType::kF32, rng);  // same layout, other rows
  const TestTable c = test::RandomTable(30, 8, DType::kF16, rng);  // other layout
  const std::vector<int64_t> ids = {0, 1, 2, 3};
  const std::vector<int64_t> offsets = {0, 2};
  BagRequest r;
  r.indices = std::span<const int64_t>(ids);
  r.offsets = std::span<const int64_t>(offsets);
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
  const TestTable table = test::RandomTable(500, 33, DType::kF32, rng);
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
  const TestTable table = test::RandomTable(rows, dim, DType::kF16, rng);
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
  BagRequest r;
  r.indices = std::span<const int64_t>(ids);
  r.offsets = std::span<const int64_t>(offsets);
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

// ---- Torch goldens -----------------------------------------------------------------------

using embstore::testing::Field;
using embstore::testing::NumberOrInf;
using embstore::testing::TypedIds;
using nlohmann::json;

TEST(GpuGolden, TorchAndExtensionCases) {
  EMBSTORE_GPU_OR_SKIP(gpu, Rows(64, CachePolicy::kLfu));
  // The source tree this was built from, or (a binary carried to a GPU
  // machine and run from a checkout's root) ./tests/golden.
  std::string dir = std::string(EMBSTORE_SOURCE_DIR) + "/tests/golden";
  if (!std::ifstream(dir + "/embedding_bag.json").good()) dir = "tests/golden";
  std::ifstream in(dir + "/embedding_bag.json");
  ASSERT_TRUE(in.good()) << "missing " << dir << "/embedding_bag.json";
  const json doc = json::parse(in);
  std::map<std::string, std::vector<float>> tables;
  std::map<std::string, TableView> views;
  std::map<std::string, std::string> names;
  for (const auto& [name, info] : doc.at("tables").items()) {
    auto npy = storage::LoadNpy(dir + "/" + info.at("file").get<std::string>());
    ASSERT_TRUE(npy.ok()) << npy.status().ToString();
    ASSERT_EQ(npy->header.descr, "<f4");
    ASSERT_EQ(npy->header.shape.size(), 2u);
    std::vector<float>& v = tables[name];
    v.resize(npy->data.size() / 4);
    std::memcpy(v.data(), npy->data.data(), npy->data.size());
    names[name] = name;
  }
  for (const auto& [name, v] : tables) {
    TableView t;
    t.data = reinterpret_cast<const uint8_t*>(v.data());
    t.rows = doc["tables"][name]["rows"].get<int64_t>();
    t.dim = doc["tables"][name]["dim"].get<int64_t>();
    t.row_stride = static_cast<size_t>(t.dim) * 4;
    t.dtype = DType::kF32;
    t.name = names[name];
    views[name] = t;
  }
  int checked = 0, errors_matched = 0;
  for (const char* list : {"cases", "extension_cases"}) {
    if (!doc.contains(list)) continue;
    for (const json& c : doc[list]) {
      const std::string name = c.at("name").get<std::string>();
      SCOPED_TRACE(name);
      const TableView view = views.at(c.at("table").get<std::string>());
      QueryOptions o;
      o.mode = *ParsePoolingMode(c.at("mode").get<std::string>());
      if (!Field(c, "padding_idx").is_null()) o.padding_idx = c["padding_idx"].get<int64_t>();
      if (!Field(c, "max_norm").is_null()) o.max_norm = c["max_norm"].get<double>();
      if (!Field(c, "norm_type").is_null()) o.norm_type = NumberOrInf(c["norm_type"]);
      if (Field(c, "include_last_offset").is_boolean()) {
        o.include_last_offset = c["include_last_offset"].get<bool>();
      }
      const TypedIds ids(c.at("indices"), Field(c, "index_dtype"));
      std::vector<int64_t> shape;
      if (Field(c, "indices_shape").is_array())
        shape = c["indices_shape"].get<std::vector<int64_t>>();
      std::vector<float> weights;
      Result<PooledOutput> got = Status::Internal("not run"), cpu = Status::Internal("not run");
      if (Field(c, "kind").is_string() && c["kind"].get<std::string>() == "batched") {
        const TypedIds ends(c.at("ends"), Field(c, "ends_dtype"));
        const auto ends_shape = c.at("ends_shape").get<std::vector<int64_t>>();
        BatchedBagRequest r;
        r.indices = ids.Array();
        r.ends = ends.Array();
        r.batch = shape.at(0);
        r.items = shape.at(1);
        r.bags_per_sample = ends_shape.at(1);
        if (!Field(c, "weights").is_null()) {
          for (const json& w : c["weights"]) weights.push_back(static_cast<float>(w.get<double>()));
          r.weights = std::span<const float>(weights);
        }
        got = gpu->BatchedEmbeddingBag(view, r, o);
        cpu = BatchedEmbeddingBag(view, r, o);
      } else {
        BagRequest r;
        r.indices = ids.Array();
        r.indices_shape = shape;
        TypedIds offsets;
        if (!Field(c, "offsets").is_null()) {
          offsets = TypedIds(c["offsets"], Field(c, "offsets_dtype"));
          r.offsets = offsets.Array();
        }
        if (!Field(c, "per_sample_weights").is_null()) {
          for (const json& w : c["per_sample_weights"]) {
            weights.push_back(static_cast<float>(w.get<double>()));
          }
          r.weights = std::span<const float>(weights);
        }
        got = gpu->EmbeddingBag(view, r, o);
        cpu = EmbeddingBag(view, r, o);
      }
      if (!cpu.ok()) {  // whatever the CPU engine refuses, the GPU refuses alike
        ASSERT_FALSE(got.ok());
        ExpectSameStatus(got.status(), cpu.status());
        ++errors_matched;
        continue;
      }
      ASSERT_TRUE(got.ok()) << got.status().ToString();
      EXPECT_EQ(got->shape, c.at("expected_shape").get<std::vector<int64_t>>());
      std::vector<float> expected;
      for (const json& v : c.at("expected")) expected.push_back(static_cast<float>(NumberOrInf(v)));
      ASSERT_EQ(got->values.size(), expected.size());
      double tol = 1e-5;
      if (o.max_norm && o.norm_type != 1 && o.norm_type != 2 && !std::isinf(o.norm_type))
        tol = 1e-4;
      for (size_t i = 0; i < expected.size(); ++i) {
        const double e = expected[i], g = got->values[i];
        ASSERT_TRUE(std::fabs(g - e) <= tol + tol * std::fabs(e))
            << "element " << i << ": GPU " << g << ", torch " << e;
        ASSERT_TRUE(SameFloat(got->values[i], cpu->values[i]) ||
                    test::Close(got->values[i], cpu->values[i], 1e-5));
      }
      ++checked;
    }
  }
  std::printf("%d golden cases checked on the GPU (%d refused as on the CPU)\n", checked,
              errors_matched);
  EXPECT_GT(checked, 200);
}

}  // namespace
}  // namespace embstore::cuda
