// GPU embedding-bag throughput (Google Benchmark). Needs a CUDA GPU of sm_90
// or newer; elsewhere it prints why ("no GPU: ...") and exits 0.
//
//   gpu_bench [--rows=N] [--dim=D] [--dtype=f32|f16|bf16|int8] [--bags=B]
//             [--pooling=P] [--batches=K] [--data_dir=DIR] [--benchmark_...]
//
// Scenarios (see docs/gpu.md):
//   gpu/resident        the cache holds the whole table (resident mode),
//                       uniform ids: the device path at its best.
//   gpu/zipf_cache10/*  the table is 10x the cache (cache_rows = rows / 10),
//                       ids Zipf(1.05) over randomly permuted rows; LRU and
//                       LFU, with and without Prefetch of the next batch.
//   cpu/resident        the CPU engine on the same batches, for reference.
// Every iteration pools one batch of B bags x P ids (mode sum, f32 output
// left in device memory, as torch's would be), rotating over K batches.
//
// Counters: lookups_per_s; GB_per_s = ids x stored row bytes / s (the bytes
// a pooling must read); hbm_fraction = GB_per_s over the device-to-device
// copy bandwidth (read + write) measured in the same run; hit_rate and
// h2d_GB_per_s (rows copied host->device) from GpuEngine::stats().
//
// --data_dir=DIR reads the data benchmarks/gpu_vs_torch.py writes, so that
// torch and embstore pool the very same bytes: DIR/table.npy (float32
// [rows, dim]), DIR/ids_uniform.npy and DIR/ids_zipf.npy (int64
// [K, B, P]).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#if defined(EMBSTORE_HAVE_CUDA)
#include <cuda_runtime_api.h>
#endif

#include "checkpoint/npy.h"
#include "embstore/gpu_device.h"
#include "embstore/gpu_engine.h"
#include "embstore/query.h"
#include "embstore/types.h"
#include "storage/convert.h"

namespace embstore {
namespace {

struct Flags {
  int64_t rows = 4'000'000;
  int64_t dim = 128;
  DType dtype = DType::kF32;
  int64_t bags = 16384;
  int64_t pooling = 32;
  int64_t batches = 8;
  std::string data_dir;
};
Flags g_flags;
double g_copy_bandwidth = 0;  // bytes/s, read + write

// A table in host memory in the engine's layout (rows 64-byte aligned).
struct HostTable {
  std::unique_ptr<uint8_t, decltype(&std::free)> bytes{nullptr, &std::free};
  TableView view;
};

// A batch of `bags` bags of `pooling` ids each (1-D indices with offsets).
struct Batch {
  std::vector<int64_t> ids;
  std::vector<int64_t> offsets;
  BagRequest request() const {
    BagRequest r;
    r.indices = std::span<const int64_t>(ids);
    r.offsets = std::span<const int64_t>(offsets);
    return r;
  }
};

struct Data {
  HostTable table;
  std::vector<Batch> uniform;
  std::vector<Batch> zipf;
};

bool Fail(const std::string& what) {
  std::fprintf(stderr, "gpu_bench: %s\n", what.c_str());
  return false;
}

bool MakeTable(const float* values, int64_t rows, int64_t dim, HostTable* t) {
  const size_t stride = RowStrideBytes(g_flags.dtype, dim);
  t->bytes.reset(static_cast<uint8_t*>(std::aligned_alloc(64, stride * static_cast<size_t>(rows))));
  if (!t->bytes) return Fail("out of host memory for the table");
  t->view.data = t->bytes.get();
  t->view.rows = rows;
  t->view.dim = dim;
  t->view.row_stride = stride;
  t->view.dtype = g_flags.dtype;
  t->view.name = "bench";
  if (values != nullptr) {
    const Status st =
        storage::EncodeRows(values, rows, dim, g_flags.dtype, stride, t->bytes.get(), 0);
    if (!st.ok()) return Fail(st.ToString());
  }
  return true;
}

// Synthetic rows, generated in chunks (bounded extra memory).
bool SyntheticTable(HostTable* t) {
  if (!MakeTable(nullptr, g_flags.rows, g_flags.dim, t)) return false;
  const int64_t chunk = 1 << 16;
  std::vector<float> buf(static_cast<size_t>(chunk * g_flags.dim));
  std::mt19937_64 rng(1);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (int64_t first = 0; first < g_flags.rows; first += chunk) {
    const int64_t n = std::min(chunk, g_flags.rows - first);
    for (int64_t i = 0; i < n * g_flags.dim; ++i) buf[i] = u(rng);
    const Status st =
        storage::EncodeRows(buf.data(), n, g_flags.dim, g_flags.dtype, t->view.row_stride,
                            t->bytes.get() + first * t->view.row_stride, first);
    if (!st.ok()) return Fail(st.ToString());
  }
  return true;
}

std::vector<Batch> SyntheticBatches(bool zipf) {
  std::mt19937_64 rng(zipf ? 3 : 2);
  const int64_t rows = g_flags.rows;
  std::vector<double> cdf;
  std::vector<int64_t> perm;
  if (zipf) {  // P(rank k) ~ k^-1.05, ranks mapped to random rows
    cdf.resize(static_cast<size_t>(rows));
    double s = 0;
    for (int64_t k = 0; k < rows; ++k) cdf[k] = (s += std::pow(static_cast<double>(k + 1), -1.05));
    perm.resize(static_cast<size_t>(rows));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
  }
  std::uniform_real_distribution<double> u01(0.0, 1.0);
  std::vector<Batch> out(static_cast<size_t>(g_flags.batches));
  for (Batch& b : out) {
    b.ids.resize(static_cast<size_t>(g_flags.bags * g_flags.pooling));
    for (int64_t& id : b.ids) {
      if (zipf) {
        const double x = u01(rng) * cdf.back();
        id = perm[std::lower_bound(cdf.begin(), cdf.end(), x) - cdf.begin()];
      } else {
        id = static_cast<int64_t>(rng() % static_cast<uint64_t>(rows));
      }
    }
    for (int64_t i = 0; i < g_flags.bags; ++i) b.offsets.push_back(i * g_flags.pooling);
  }
  return out;
}

bool LoadBatches(const std::string& path, std::vector<Batch>* out) {
  auto a = storage::LoadNpy(path, uint64_t{1} << 36);
  if (!a.ok()) return Fail(path + ": " + a.status().ToString());
  if (a->header.descr != "<i8" || a->header.shape.size() != 3) {
    return Fail(path + ": expected int64 [K, B, P]");
  }
  const int64_t k = a->header.shape[0], bags = a->header.shape[1], p = a->header.shape[2];
  g_flags.bags = bags;
  g_flags.pooling = p;
  g_flags.batches = k;
  const auto* ids = reinterpret_cast<const int64_t*>(a->data.data());
  out->resize(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) {
    (*out)[i].ids.assign(ids + i * bags * p, ids + (i + 1) * bags * p);
    for (int64_t b = 0; b < bags; ++b) (*out)[i].offsets.push_back(b * p);
  }
  return true;
}

[[maybe_unused]] bool LoadData(Data* d) {
  if (g_flags.data_dir.empty()) {
    if (!SyntheticTable(&d->table)) return false;
    d->uniform = SyntheticBatches(false);
    d->zipf = SyntheticBatches(true);
    return true;
  }
  auto t = storage::LoadNpy(g_flags.data_dir + "/table.npy", uint64_t{1} << 40);
  if (!t.ok()) return Fail(t.status().ToString());
  if (t->header.descr != "<f4" || t->header.shape.size() != 2) {
    return Fail("table.npy: expected float32 [rows, dim]");
  }
  g_flags.rows = t->header.shape[0];
  g_flags.dim = t->header.shape[1];
  if (!MakeTable(reinterpret_cast<const float*>(t->data.data()), g_flags.rows, g_flags.dim,
                 &d->table)) {
    return false;
  }
  return LoadBatches(g_flags.data_dir + "/ids_uniform.npy", &d->uniform) &&
         LoadBatches(g_flags.data_dir + "/ids_zipf.npy", &d->zipf);
}

Data* g_data = nullptr;

void SetThroughput(benchmark::State& state, int64_t batches, double seconds,
                   const CacheStats* stats) {
  const double lookups = static_cast<double>(batches * g_flags.bags * g_flags.pooling);
  const double bytes = lookups * static_cast<double>(RowPayloadBytes(g_flags.dtype, g_flags.dim));
  state.counters["lookups_per_s"] = lookups / seconds;
  state.counters["GB_per_s"] = bytes / seconds / 1e9;
  if (g_copy_bandwidth > 0) state.counters["hbm_fraction"] = bytes / seconds / g_copy_bandwidth;
  if (stats != nullptr) {
    state.counters["hit_rate"] = stats->hit_rate();
    state.counters["h2d_GB_per_s"] = static_cast<double>(stats->bytes_copied) / seconds / 1e9;
    state.counters["passes_per_batch"] = static_cast<double>(stats->sub_batches) /
                                         static_cast<double>(std::max<int64_t>(1, stats->batches));
  }
}

#if defined(EMBSTORE_HAVE_CUDA)
// Device memory for the pooled output.
struct DeviceOut {
  float* ptr = nullptr;
  size_t count = 0;
  explicit DeviceOut(size_t n) : count(n) {
    if (cudaMalloc(reinterpret_cast<void**>(&ptr), n * sizeof(float)) != cudaSuccess) ptr = nullptr;
  }
  ~DeviceOut() {
    if (ptr != nullptr) cudaFree(ptr);
  }
};

void RunGpu(benchmark::State& state, int64_t cache_rows, CachePolicy policy,
            const std::vector<Batch>& batches, bool prefetch) {
  GpuEngineOptions o;
  o.cache_rows = cache_rows;
  o.policy = policy;
  auto gpu = cuda::GpuEngine::Create(o);
  if (!gpu.ok()) {
    state.SkipWithError(gpu.status().ToString().c_str());
    return;
  }
  const TableView& view = g_data->table.view;
  DeviceOut out(static_cast<size_t>(g_flags.bags * g_flags.dim));
  if (out.ptr == nullptr) {
    state.SkipWithError("cudaMalloc of the output failed");
    return;
  }
  QueryOptions q;
  q.mode = PoolingMode::kSum;
  std::vector<BagRequest> requests;
  for (const Batch& b : batches) requests.push_back(b.request());
  const size_t k = requests.size();
  auto pool = [&](size_t i) -> bool {
    if (prefetch) {
      const Status p = (*gpu)->Prefetch(view, requests[(i + 1) % k].indices);
      if (!p.ok()) {
        state.SkipWithError(p.ToString().c_str());
        return false;
      }
    }
    const Status st = (*gpu)->EmbeddingBagToDevice(view, requests[i % k], q, out.ptr, out.count);
    if (!st.ok()) {
      state.SkipWithError(st.ToString().c_str());
      return false;
    }
    return true;
  };
  // Warm up: the resident load, or a cache in its steady state.
  for (size_t i = 0; i < std::max<size_t>(3 * k, 24); ++i) {
    if (!pool(i)) return;
  }
  (*gpu)->ResetStats();
  int64_t n = 0;
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    if (!pool(static_cast<size_t>(n++))) return;
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const CacheStats stats = (*gpu)->stats();
  SetThroughput(state, n, seconds, &stats);
}
#endif

[[maybe_unused]] void RunCpu(benchmark::State& state, const std::vector<Batch>& batches) {
  QueryOptions q;
  q.mode = PoolingMode::kSum;
  std::vector<float> out(static_cast<size_t>(g_flags.bags * g_flags.dim));
  int64_t n = 0;
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    const Status st =
        EmbeddingBag(g_data->table.view, batches[n++ % batches.size()].request(), q, out);
    if (!st.ok()) {
      state.SkipWithError(st.ToString().c_str());
      return;
    }
    benchmark::DoNotOptimize(out.data());
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  SetThroughput(state, n, seconds, nullptr);
}

// Removes our flags from argv (the rest go to Google Benchmark).
bool ParseFlags(int* argc, char** argv) {
  int kept = 1;
  for (int i = 1; i < *argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* name, std::string* v) {
      const std::string prefix = std::string("--") + name + "=";
      if (a.rfind(prefix, 0) != 0) return false;
      *v = a.substr(prefix.size());
      return true;
    };
    std::string v;
    if (value("rows", &v)) {
      g_flags.rows = std::stoll(v);
    } else if (value("dim", &v)) {
      g_flags.dim = std::stoll(v);
    } else if (value("bags", &v)) {
      g_flags.bags = std::stoll(v);
    } else if (value("pooling", &v)) {
      g_flags.pooling = std::stoll(v);
    } else if (value("batches", &v)) {
      g_flags.batches = std::stoll(v);
    } else if (value("data_dir", &v)) {
      g_flags.data_dir = v;
    } else if (value("dtype", &v)) {
      const auto d = ParseDType(v);
      if (!d) return Fail("unknown --dtype " + v);
      g_flags.dtype = *d;
    } else {
      argv[kept++] = argv[i];
    }
  }
  *argc = kept;
  if (g_flags.rows < 10 || g_flags.dim < 1 || g_flags.bags < 1 || g_flags.pooling < 1 ||
      g_flags.batches < 1) {
    return Fail("--rows >= 10, --dim, --bags, --pooling and --batches >= 1, please");
  }
  return true;
}

}  // namespace
}  // namespace embstore

int main(int argc, char** argv) {
  using namespace embstore;  // NOLINT(google-build-using-namespace)
  if (!ParseFlags(&argc, argv)) return 2;
  benchmark::Initialize(&argc, argv);
  auto devices = cuda::ListDevices();
  if (!devices.ok()) {
    std::printf("gpu_bench: %s; nothing to measure.\n", devices.status().message().c_str());
    return 0;
  }
#if defined(EMBSTORE_HAVE_CUDA)
  if (auto bw = cuda::MeasureCopyBandwidth(0); bw.ok()) g_copy_bandwidth = *bw;
  Data data;
  if (!LoadData(&data)) return 1;
  g_data = &data;
  std::printf("device: %s; copy bandwidth %.0f GB/s (read + write)\n",
              devices->front().name.c_str(), g_copy_bandwidth / 1e9);
  std::printf("table: %lld x %lld %s (%.2f GB); batches of %lld bags x %lld ids\n",
              static_cast<long long>(g_flags.rows), static_cast<long long>(g_flags.dim),
              DTypeName(g_flags.dtype),
              static_cast<double>(data.table.view.row_stride * g_flags.rows) / 1e9,
              static_cast<long long>(g_flags.bags), static_cast<long long>(g_flags.pooling));
  const int64_t rows = g_flags.rows;
  auto reg = [](const std::string& name, auto fn) {
    benchmark::RegisterBenchmark(name.c_str(), fn)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond)
        ->MinTime(1.0);
  };
  reg("gpu/resident",
      [rows](benchmark::State& s) { RunGpu(s, rows, CachePolicy::kLru, g_data->uniform, false); });
  reg("gpu/resident_zipf",
      [rows](benchmark::State& s) { RunGpu(s, rows, CachePolicy::kLru, g_data->zipf, false); });
  for (const auto policy : {CachePolicy::kLru, CachePolicy::kLfu}) {
    for (const bool prefetch : {false, true}) {
      const std::string name = std::string("gpu/zipf_cache10/") + CachePolicyName(policy) +
                               (prefetch ? "/prefetch" : "");
      reg(name, [rows, policy, prefetch](benchmark::State& s) {
        RunGpu(s, std::max<int64_t>(1, rows / 10), policy, g_data->zipf, prefetch);
      });
    }
  }
  reg("cpu/resident", [](benchmark::State& s) { RunCpu(s, g_data->uniform); });
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
#endif
  return 0;
}
