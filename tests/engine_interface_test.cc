// The Engine interface (embstore/engine.h): one API for the CPU and CUDA
// engines, chosen at run time. Every engine this machine has (the CPU one
// always; CUDA where a GPU is present) takes the same requests and gives the
// CPU engine's free functions' results and messages.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cuda/testing/random_bags.h"
#include "embstore/engine.h"
#include "embstore/gpu_engine.h"
#include "embstore/query.h"
#include "embstore/store.h"
#include "engine_test_util.h"
#include "test_util.h"

namespace embstore {
namespace {

using cuda::cudatest::Layout;
using cuda::cudatest::MakeRequest;
using cuda::cudatest::RandomRequest;

// Every engine this machine can create: the CPU engine, and the CUDA engine
// where a GPU is present.
std::vector<std::unique_ptr<Engine>> AvailableEngines() {
  std::vector<std::unique_ptr<Engine>> engines;
  auto cpu = Engine::Create();
  EXPECT_TRUE(cpu.ok()) << cpu.status().ToString();
  if (cpu.ok()) engines.push_back(std::move(cpu).value());
  EngineOptions gpu;
  gpu.device = Device::kCuda;
  gpu.gpu.cache_rows = 64;
  if (auto g = Engine::Create(gpu); g.ok()) engines.push_back(std::move(g).value());
  return engines;
}

// CPU (SIMD, FMAs) and GPU (reference rounding) agree to 1e-5 (docs/gpu.md).
bool Close(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return std::fabs(double{a} - b) <= 1e-5 * std::max(1.0, std::fabs(double{b}));
}

// The engine's two result forms for one request.
Result<PooledOutput> Pool(Engine& engine, const TableView& view, const RandomRequest& r) {
  return r.is_batched ? engine.BatchedEmbeddingBag(view, r.batched, r.options)
                      : engine.EmbeddingBag(view, r.bag, r.options);
}
Status PoolInto(Engine& engine, const TableView& view, const RandomRequest& r,
                std::span<float> out) {
  return r.is_batched ? engine.BatchedEmbeddingBag(view, r.batched, r.options, out)
                      : engine.EmbeddingBag(view, r.bag, r.options, out);
}

TEST(EngineInterface, CreateChoosesTheDeviceAtRunTime) {
  auto cpu = Engine::Create();
  ASSERT_TRUE(cpu.ok()) << cpu.status().ToString();
  EXPECT_EQ((*cpu)->device(), Device::kCpu);

  EngineOptions o;
  o.device = Device::kCuda;
  auto gpu = Engine::Create(o);
  if (gpu.ok()) {
    EXPECT_EQ((*gpu)->device(), Device::kCuda);
    EXPECT_NE(dynamic_cast<cuda::GpuEngine*>(gpu->get()), nullptr);
  } else {
    // No CUDA in the build, or no device: the same API says so.
    EXPECT_EQ(gpu.status().code(), Status::Code::kNotSupported);
    EXPECT_EQ(gpu.status().message().rfind("no GPU: ", 0), 0u) << gpu.status().message();
  }

  o.device = static_cast<Device>(7);
  auto bad = Engine::Create(o);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), Status::Code::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("unknown device 7"), std::string::npos);
}

TEST(EngineInterface, DeviceAndPolicyNames) {
  EXPECT_STREQ(DeviceName(Device::kCpu), "cpu");
  EXPECT_STREQ(DeviceName(Device::kCuda), "cuda");
  EXPECT_EQ(ParseDevice("cpu"), Device::kCpu);
  EXPECT_EQ(ParseDevice("cuda"), Device::kCuda);
  EXPECT_FALSE(ParseDevice("gpu").has_value());
  EXPECT_EQ(ParseCachePolicy("lfu"), CachePolicy::kLfu);
  EXPECT_STREQ(CachePolicyName(CachePolicy::kLru), "lru");
  EXPECT_FALSE(ParseCachePolicy("fifo").has_value());
}

// Every layout, mode, dtype and option, through each engine's two result
// forms, equals the free functions of query.h (bit for bit on the CPU; the
// GPU agrees to rounding).
TEST(EngineInterface, EveryEngineGivesTheFreeFunctionsResults) {
  auto engines = AvailableEngines();
  ASSERT_GE(engines.size(), 1u);
  std::mt19937_64 rng(16);
  int cases = 0;
  for (auto& engine : engines) {
    engine->ResetStats();
    int64_t calls = 0;
    for (DType dtype : kAllDTypes) {
      const testing::TestTable table = testing::RandomTable(40, 13, dtype, rng);
      const TableView view = table.view();
      for (Layout layout : cuda::cudatest::kLayouts) {
        for (PoolingMode mode : cuda::cudatest::kModes) {
          for (int rep = 0; rep < 3; ++rep) {
            const auto r = MakeRequest(rng, view.rows, layout, mode, rep == 1, rep == 2,
                                       rep == 2 ? std::optional<double>(2.0) : std::nullopt, 6);
            auto want = cuda::cudatest::CpuEngine(view, *r);
            ASSERT_TRUE(want.ok()) << want.status().ToString();
            auto got = Pool(*engine, view, *r);
            ASSERT_TRUE(got.ok()) << got.status().ToString();
            std::vector<float> into(want->values.size(), -1.0f);
            ASSERT_TRUE(PoolInto(*engine, view, *r, into).ok());
            calls += 2;
            ASSERT_EQ(got->shape, want->shape);
            for (size_t i = 0; i < want->values.size(); ++i) {
              const bool exact = engine->device() == Device::kCpu;
              if (exact) {
                ASSERT_TRUE(cuda::cudatest::SameFloat(got->values[i], want->values[i])) << i;
                ASSERT_TRUE(cuda::cudatest::SameFloat(into[i], want->values[i])) << i;
              } else {  // the GPU rounds like the reference, the CPU's SIMD with FMAs
                ASSERT_TRUE(Close(got->values[i], want->values[i])) << i;
                ASSERT_TRUE(Close(into[i], want->values[i])) << i;
              }
            }
            ++cases;
          }
        }
      }
    }
    EXPECT_EQ(engine->stats().batches, calls) << DeviceName(engine->device());
  }
  // 4 dtypes x 4 layouts x 3 modes x 3 per engine.
  EXPECT_EQ(cases, 144 * static_cast<int>(engines.size()));
}

TEST(EngineInterface, ErrorsAreTheFreeFunctionsErrors) {
  auto engines = AvailableEngines();
  ASSERT_GE(engines.size(), 1u);
  std::mt19937_64 rng(3);
  const testing::TestTable table = testing::RandomTable(10, 4, DType::kF32, rng);
  const TableView view = table.view();
  const std::vector<int64_t> ids = {1, 10, 2};
  const std::vector<int64_t> offsets = {0};
  BagRequest req;
  req.indices = std::span<const int64_t>(ids);
  req.offsets = IndexArray(std::span<const int64_t>(offsets));
  const Result<PooledOutput> want = EmbeddingBag(view, req, QueryOptions());
  ASSERT_FALSE(want.ok());
  for (auto& engine : engines) {
    const Result<PooledOutput> got = engine->EmbeddingBag(view, req, QueryOptions());
    ASSERT_FALSE(got.ok());
    EXPECT_EQ(got.status().ToString(), want.status().ToString());
    // A prefetch of the same ids is refused with the same words.
    const Status pre = engine->Prefetch(view, std::span<const int64_t>(ids));
    EXPECT_EQ(pre.code(), Status::Code::kInvalidArgument);
    EXPECT_EQ(pre.message(), want.status().message());
  }
}

TEST(EngineInterface, CpuEngineHasNoDeviceOutput) {
  auto engine = Engine::Create();
  ASSERT_TRUE(engine.ok());
  std::mt19937_64 rng(5);
  const testing::TestTable table = testing::RandomTable(10, 4, DType::kF16, rng);
  const std::vector<int64_t> ids = {1, 2};
  const std::vector<int64_t> offsets = {0};
  BagRequest req;
  req.indices = std::span<const int64_t>(ids);
  req.offsets = IndexArray(std::span<const int64_t>(offsets));
  float dummy[4];
  const Status st = (*engine)->EmbeddingBagToDevice(table.view(), req, QueryOptions(), dummy, 4);
  EXPECT_EQ(st.code(), Status::Code::kNotSupported);
  EXPECT_NE(st.message().find("Device::kCuda"), std::string::npos) << st.message();
  BatchedBagRequest batched;
  EXPECT_EQ((*engine)
                ->BatchedEmbeddingBagToDevice(table.view(), batched, QueryOptions(), dummy, 4)
                .code(),
            Status::Code::kNotSupported);
  // No cache: forgetting and clearing succeed and change nothing.
  EXPECT_TRUE((*engine)->Forget(table.view()).ok());
  EXPECT_TRUE((*engine)->Clear().ok());
  EXPECT_TRUE((*engine)->Sync().ok());
  EXPECT_EQ((*engine)->stats().capacity_rows, 0);
}

// Many threads on one CPU engine: each gets its own results; the counters
// add up.
TEST(EngineInterface, CpuEngineFromManyThreads) {
  auto engine = Engine::Create();
  ASSERT_TRUE(engine.ok());
  std::mt19937_64 rng(9);
  const testing::TestTable table = testing::RandomTable(200, 16, DType::kBF16, rng);
  const TableView view = table.view();
  constexpr int kThreads = 4, kCalls = 50;
  std::vector<int> wrong(kThreads, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 local(100 + t);
      for (int i = 0; i < kCalls; ++i) {
        const auto r = MakeRequest(local, view.rows, Layout::kOffsets, PoolingMode::kSum, true,
                                   false, std::nullopt, 8);
        auto want = cuda::cudatest::CpuEngine(view, *r);
        auto got = Pool(**engine, view, *r);
        if (!want.ok() || !got.ok() || got->values != want->values) ++wrong[t];
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(wrong[t], 0) << "thread " << t;
  EXPECT_EQ((*engine)->stats().batches, kThreads * kCalls);
}

// The CPU engine's Prefetch on a store's memory-mapped table: validated,
// counted, and the rows' pages are read into the page cache ahead of use.
TEST(EngineInterface, CpuPrefetchReadsMappedPagesAhead) {
  testing::TempDir dir;
  const int64_t rows = 4096, dim = 64;  // 1 MiB of f32
  const std::vector<float> values = testing::RandomFloats(rows * dim, 4);
  testing::WriteF32Npy(dir / "t.npy", {rows, dim}, values);
  auto store = Store::Open(dir / "db", {});
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  auto info = (*store)->ImportFile("t", dir / "t.npy", {});
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  auto snap = (*store)->GetSnapshot("t");
  ASSERT_TRUE(snap.ok());
  const TableView view = snap->view();
  auto engine = Engine::Create();
  ASSERT_TRUE(engine.ok());

  const std::vector<int64_t> ids = {0, 2047, rows - 1};
  const std::vector<int64_t> offsets = {0};
  BagRequest req;
  req.indices = std::span<const int64_t>(ids);
  req.offsets = IndexArray(std::span<const int64_t>(offsets));
  // Drop the table file's pages from the page cache (none is mapped into
  // this process yet: no query has touched them), then prefetch.
  const std::string file = dir.path() + "/db/tables/" + info->file;
  const int fd = ::open(file.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0) << file;
  ASSERT_EQ(::fdatasync(fd), 0);
  ASSERT_EQ(::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
  ::close(fd);
  const long page = ::sysconf(_SC_PAGESIZE);
  auto resident = [&](int64_t row) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(view.Row(row)) & ~uintptr_t(page - 1);
    unsigned char vec = 0;
    EXPECT_EQ(::mincore(reinterpret_cast<void*>(a), 1, &vec), 0);
    return (vec & 1) != 0;
  };
  struct statfs fs;
  ASSERT_EQ(::statfs(dir.path().c_str(), &fs), 0);
  constexpr long kTmpfsMagic = 0x01021994;
  if (fs.f_type != kTmpfsMagic) {
    // A disk file system drops clean pages (tmpfs cannot: there they stay).
    EXPECT_FALSE(resident(2047)) << "the page cache kept the dropped page";
  }
  ASSERT_TRUE((*engine)->Prefetch(view, std::span<const int64_t>(ids)).ok());
  EXPECT_EQ((*engine)->stats().prefetch_requests, 1);
  bool all = false;
  for (int i = 0; i < 200 && !all; ++i) {  // readahead is asynchronous: at most 2 s
    all = resident(0) && resident(2047) && resident(rows - 1);
    if (!all) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(all) << "the prefetched rows' pages are not in the page cache";

  // The prefetch changed nothing the engine reads.
  auto after = (*engine)->EmbeddingBag(view, req, QueryOptions());
  ASSERT_TRUE(after.ok());
  auto want = EmbeddingBag(view, req, QueryOptions());
  ASSERT_TRUE(want.ok());
  EXPECT_EQ(after->values, want->values);
  for (int64_t j = 0; j < dim; ++j) {
    const float sum = values[j] + values[2047 * dim + j] + values[(rows - 1) * dim + j];
    EXPECT_NEAR(after->values[j], sum / 3.0f, 1e-5f);
  }
  // An empty prefetch is fine too.
  EXPECT_TRUE((*engine)->Prefetch(view, std::span<const int64_t>()).ok());
}

}  // namespace
}  // namespace embstore
