// Pooling kernels swept around the headline configuration (1M rows, dim 128,
// 40 ids per bag, f32, uniform ids, all threads), one axis at a time: dim
// {32, 64, 128, 256}, ids per bag {1, 10, 40, 100}, dtype {f32, f16, bf16,
// int8}, ids uniform or Zipf(1.05), modes sum / mean / max / weighted sum /
// sum + max_norm. Tables are generated in memory (64-byte aligned rows); each
// iteration pools 256K lookups. Counters: "lookups" (rows pooled per second)
// and "read" (bytes of stored row data pooled per second, decimal).
//
//   build/release/benchmarks/pooling_sweep_bench --benchmark_min_time=0.5
//   ... --benchmark_filter='dim:128/pool:40'      # the headline point only
//
// The side-by-side comparison with torch is benchmarks/side_by_side.py.
#include <benchmark/benchmark.h>
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <span>
#include <tuple>
#include <vector>

#include "embstore/query.h"

namespace embstore {
namespace {

constexpr int64_t kRows = 1 << 20;
constexpr int64_t kLookups = 1 << 18;
constexpr int kBatches = 8;  // rotated between iterations

uint64_t SplitMix(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

struct FreeDeleter {
  void operator()(uint8_t* p) const { std::free(p); }
};

// kRows x dim, values uniform in [-1, 1), stored as `dtype`.
struct Table {
  std::unique_ptr<uint8_t, FreeDeleter> bytes;
  TableView view;
};

const Table& GetTable(int64_t dim, DType dtype) {
  static auto* tables = new std::map<std::pair<int64_t, DType>, std::unique_ptr<Table>>();
  auto& slot = (*tables)[{dim, dtype}];
  if (slot) return *slot;
  slot = std::make_unique<Table>();
  const size_t stride = RowStrideBytes(dtype, dim);
  slot->bytes.reset(static_cast<uint8_t*>(std::aligned_alloc(64, stride * kRows)));
  uint8_t* base = slot->bytes.get();
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, kRows), [&](const auto& r) {
    uint64_t state = static_cast<uint64_t>(r.begin()) * 7919 + 17;
    for (int64_t row = r.begin(); row < r.end(); ++row) {
      uint8_t* p = base + row * stride;
      std::memset(p, 0, stride);
      for (int64_t d = 0; d < dim; ++d) {
        const float v = static_cast<float>(SplitMix(state) >> 40) / (1 << 23) - 1.0f;
        uint32_t bits;
        std::memcpy(&bits, &v, 4);
        switch (dtype) {
          case DType::kF32:
            std::memcpy(p + 4 * d, &v, 4);
            break;
          case DType::kF16: {  // |v| < 1: truncating conversion is enough here
            const uint32_t exp = (bits >> 23) & 0xff;
            uint16_t h = static_cast<uint16_t>((bits >> 16) & 0x8000);
            if (exp > 112) h |= static_cast<uint16_t>(((exp - 112) << 10) | ((bits >> 13) & 0x3ff));
            std::memcpy(p + 2 * d, &h, 2);
            break;
          }
          case DType::kBF16: {
            const uint16_t h = static_cast<uint16_t>(bits >> 16);
            std::memcpy(p + 2 * d, &h, 2);
            break;
          }
          case DType::kInt8Rowwise:
            p[d] = static_cast<uint8_t>((v + 1.0f) * 127.5f);
            break;
        }
      }
      if (dtype == DType::kInt8Rowwise) {
        const float scale = 2.0f / 255, bias = -1.0f;
        std::memcpy(p + dim, &scale, 4);
        std::memcpy(p + dim + 4, &bias, 4);
      }
    }
  });
  TableView& v = slot->view;
  v.data = base;
  v.rows = kRows;
  v.dim = dim;
  v.row_stride = stride;
  v.dtype = dtype;
  v.name = "sweep";
  return *slot;
}

struct Batch {
  std::vector<int64_t> ids, offsets;
  std::vector<float> weights;
};

// kBatches batches of kLookups ids, `pool` per bag; Zipf(1.05) ranks are
// scattered over the rows by a multiplicative hash.
const std::vector<Batch>& GetBatches(int64_t pool, bool zipf) {
  static auto* cache = new std::map<std::pair<int64_t, bool>, std::vector<Batch>>();
  auto& b = (*cache)[{pool, zipf}];
  if (!b.empty()) return b;
  std::vector<double> cdf;
  if (zipf) {
    cdf.resize(kRows);
    double s = 0;
    for (int64_t k = 0; k < kRows; ++k) cdf[k] = (s += std::pow(static_cast<double>(k + 1), -1.05));
    for (double& c : cdf) c /= s;
  }
  uint64_t state = 42 + pool;
  b.resize(kBatches);
  const int64_t bags = kLookups / pool;
  for (Batch& batch : b) {
    for (int64_t bag = 0; bag < bags; ++bag) {
      batch.offsets.push_back(bag * pool);
      for (int64_t j = 0; j < pool; ++j) {
        int64_t id;
        if (zipf) {
          const double u = static_cast<double>(SplitMix(state) >> 11) / 9007199254740992.0;
          const int64_t rank = std::lower_bound(cdf.begin(), cdf.end(), u) - cdf.begin();
          id = static_cast<int64_t>((static_cast<uint64_t>(rank) * 0x9e3779b1ull) % kRows);
        } else {
          id = static_cast<int64_t>(SplitMix(state) % kRows);
        }
        batch.ids.push_back(id);
        batch.weights.push_back(static_cast<float>(SplitMix(state) >> 40) / (1 << 24));
      }
    }
  }
  return b;
}

enum Variant { kSum, kMean, kMax, kWeightedSum, kSumMaxNorm };
const char* const kVariantNames[] = {"sum", "mean", "max", "weighted_sum", "sum_max_norm"};

// args: dim, pool, dtype, zipf, variant
void BM_Pool(benchmark::State& state) {
  const int64_t dim = state.range(0), pool = state.range(1);
  const DType dtype = static_cast<DType>(state.range(2));
  const bool zipf = state.range(3) != 0;
  const int variant = static_cast<int>(state.range(4));
  const Table& table = GetTable(dim, dtype);
  const auto& batches = GetBatches(pool, zipf);
  QueryOptions o;
  o.mode = variant == kMean  ? PoolingMode::kMean
           : variant == kMax ? PoolingMode::kMax
                             : PoolingMode::kSum;
  // Uniform [-1, 1) rows have L2 norm ~ sqrt(dim / 3): about half exceed this.
  if (variant == kSumMaxNorm) o.max_norm = std::sqrt(static_cast<double>(dim) / 3.0);
  std::vector<float> out(static_cast<size_t>(batches[0].offsets.size() * dim));
  int i = 0;
  for (auto _ : state) {
    const Batch& b = batches[i++ % kBatches];
    BagRequest r;
    r.indices = std::span<const int64_t>(b.ids);
    r.offsets = std::span<const int64_t>(b.offsets);
    if (variant == kWeightedSum) r.weights = std::span<const float>(b.weights);
    const Status s = EmbeddingBag(table.view, r, o, out);
    if (!s.ok()) state.SkipWithError(s.message().c_str());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const double lookups = static_cast<double>(batches[0].ids.size());
  state.counters["lookups"] = benchmark::Counter(
      lookups, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
  state.counters["read"] = benchmark::Counter(
      lookups * static_cast<double>(RowPayloadBytes(dtype, dim)),
      benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
  state.SetLabel(std::string(DTypeName(dtype)) + (zipf ? " zipf " : " uniform ") +
                 kVariantNames[variant]);
}

void SweepArgs(benchmark::internal::Benchmark* b) {
  const int f32 = static_cast<int>(DType::kF32);
  for (int v = kSum; v <= kSumMaxNorm; ++v) {
    for (int64_t dim : {32, 64, 128, 256}) b->Args({dim, 40, f32, 0, v});
    for (int64_t pool : {1, 10, 100}) b->Args({128, pool, f32, 0, v});
    b->Args({128, 40, f32, 1, v});
    for (DType d : {DType::kF16, DType::kBF16, DType::kInt8Rowwise}) {
      b->Args({128, 40, static_cast<int>(d), 0, v});
    }
  }
  b->ArgNames({"dim", "pool", "dtype", "zipf", "variant"});
}

BENCHMARK(BM_Pool)->Apply(SweepArgs)->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace embstore

BENCHMARK_MAIN();
