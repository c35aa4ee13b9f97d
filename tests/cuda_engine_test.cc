// GpuEngine on a real GPU: results equal the CPU engine's (and its scalar
// reference, bit for bit where no max_norm is involved) for every dtype x
// mode x weights x padding x max_norm x layout, with caches large and small
// (evictions, batches split into passes), identical error messages, and
// device output. cuda_engine_cache_test checks stats, prefetch, several
// tables and threads; cuda_golden_test the torch goldens.
//
// Where there is no GPU (or the build has no CUDA), every test that needs
// one is skipped with the reason (GTEST_SKIP), never failed; GpuProbe checks
// that "no GPU" is reported as NotSupported.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <ostream>
#include <random>
#include <span>
#include <string>
#include <vector>

#if defined(EMBSTORE_HAVE_CUDA)
#include <cuda_runtime_api.h>
#endif

#include "checkpoint/npy.h"
#include "cuda/testing/gpu_engine_testing.h"
#include "cuda/testing/random_bags.h"
#include "embstore/gpu_device.h"
#include "embstore/gpu_engine.h"
#include "embstore/query.h"
#include "engine_test_util.h"

namespace embstore::cuda {
namespace {

using namespace embstore::cuda::cudatest;  // NOLINT(google-build-using-namespace)
using testing::TestTable;

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
    EXPECT_EQ((*created)->device_info().ordinal, 0);
    EXPECT_EQ((*created)->device_info().name, d.name);
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

// Every norm type of kNormTypes but p = 0 (counted non-zeros), which the CPU
// emulation of the pipeline (cuda_pool_math_test) checks.
const std::span<const std::optional<double>> kGpuNormTypes = std::span(kNormTypes).first(7);

TEST_P(GpuParity, EveryDtypeModeOptionAndLayout) {
  const Config cfg = GetParam();
  EMBSTORE_GPU_OR_SKIP(gpu, Rows(cfg.cache_rows, cfg.policy));
  std::mt19937_64 rng(static_cast<uint64_t>(cfg.cache_rows) * 7 + static_cast<int>(cfg.policy));
  int64_t cases = 0;
  // One engine throughout: each new dtype/dim re-lays the cache out.
  for (int64_t dim : {1, 7, 37, 64, 130, 300}) {
    for (DType dtype : kAllDTypes) {
      const TestTable table =
          testing::RandomTable(48, dim, dtype, rng, /*aligned_stride=*/rng() % 2);
      const TableView view = table.view();
      for (PoolingMode mode : kModes) {
        for (bool weighted : {false, true}) {
          for (bool padding : {false, true}) {
            for (const std::optional<double>& norm : kGpuNormTypes) {
              for (Layout layout : kLayouts) {
                SCOPED_TRACE(std::string(testing::DTypeLabel(dtype)) + " dim " +
                             std::to_string(dim) + " " + PoolingModeName(mode) +
                             (weighted ? " weighted" : "") + (padding ? " padding" : "") +
                             " max_norm p=" + (norm ? std::to_string(*norm) : "none") + " " +
                             LayoutName(layout));
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
                  ASSERT_TRUE(testing::Close(g, cpu->values[i], 1e-5))
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
  const TestTable table = testing::RandomTable(10, 4, DType::kF32, rng);
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
  BagRequest r = Bags(ok_ids, off_ok);
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
  const TestTable table = testing::RandomTable(40, 4, DType::kF32, rng);
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < 10; ++i) ids.push_back(i);
  const std::vector<int64_t> offsets = {0, 3, 4};
  BagRequest r = Bags(ids, offsets);
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
  const TestTable table = testing::RandomTable(100, 37, DType::kBF16, rng);
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

}  // namespace
}  // namespace embstore::cuda
