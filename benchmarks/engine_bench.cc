// Query engine throughput: lookups/s and GB/s of pooled row data for sum,
// mean, max, weighted sum and sum with max_norm on a 1M x 128 f32 table
// (generated in memory, 64-byte aligned rows), 40 uniform ids per bag,
// batches of 2048 bags; the same on one thread, the scalar reference twin,
// f16/int8 tables, and the machine's memory read bandwidth for scale. Prints
// fast/reference ratios at the end.
//
//   build/.../engine_bench --benchmark_min_time=1
#include <benchmark/benchmark.h>
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/parallel_reduce.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "embstore/query.h"
#include "engine/kernels_ref.h"
#include "engine/plan.h"

namespace embstore {
namespace {

constexpr int64_t kRows = 1 << 20;
constexpr int64_t kDim = 128;
constexpr int64_t kBagsPerBatch = 2048;
constexpr int64_t kIdsPerBag = 40;
constexpr int kBatches = 16;  // rotated, so repeated iterations do not hit cache

struct FreeDeleter {
  void operator()(uint8_t* p) const { std::free(p); }
};

uint64_t SplitMix(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// A table of kRows x kDim in `dtype`, values uniform in [-1, 1).
class BenchTable {
 public:
  explicit BenchTable(DType dtype) : dtype_(dtype) {
    const size_t payload = RowPayloadBytes(dtype, kDim);
    stride_ = (payload + 63) / 64 * 64;
    bytes_.reset(static_cast<uint8_t*>(std::aligned_alloc(64, stride_ * kRows)));
    tbb::parallel_for(tbb::blocked_range<int64_t>(0, kRows), [&](const auto& r) {
      uint64_t state = static_cast<uint64_t>(r.begin()) * 7919 + 17;
      for (int64_t row = r.begin(); row < r.end(); ++row) {
        uint8_t* p = bytes_.get() + row * stride_;
        std::memset(p, 0, stride_);
        for (int64_t d = 0; d < kDim; ++d) {
          const float v = static_cast<float>(SplitMix(state) >> 40) / (1 << 23) - 1.0f;
          switch (dtype_) {
            case DType::kF32:
              std::memcpy(p + 4 * d, &v, 4);
              break;
            case DType::kF16: {  // values in [-1, 1): plain truncation is fine here
              uint32_t bits;
              std::memcpy(&bits, &v, 4);
              const uint32_t exp = (bits >> 23) & 0xff;
              uint16_t h = static_cast<uint16_t>((bits >> 16) & 0x8000);
              if (exp > 112)
                h |= static_cast<uint16_t>(((exp - 112) << 10) | ((bits >> 13) & 0x3ff));
              std::memcpy(p + 2 * d, &h, 2);
              break;
            }
            case DType::kBF16: {
              uint32_t bits;
              std::memcpy(&bits, &v, 4);
              const uint16_t h = static_cast<uint16_t>(bits >> 16);
              std::memcpy(p + 2 * d, &h, 2);
              break;
            }
            case DType::kInt8Rowwise:
              p[d] = static_cast<uint8_t>(SplitMix(state) >> 56);
              break;
          }
        }
        if (dtype_ == DType::kInt8Rowwise) {
          const float scale = 2.0f / 255, bias = -1.0f;
          std::memcpy(p + kDim, &scale, 4);
          std::memcpy(p + kDim + 4, &bias, 4);
        }
      }
    });
  }
  TableView view() const {
    TableView v;
    v.data = bytes_.get();
    v.rows = kRows;
    v.dim = kDim;
    v.row_stride = stride_;
    v.dtype = dtype_;
    v.name = "bench";
    return v;
  }
  size_t payload() const { return RowPayloadBytes(dtype_, kDim); }

 private:
  DType dtype_;
  size_t stride_ = 0;
  std::unique_ptr<uint8_t, FreeDeleter> bytes_;
};

const BenchTable& Table(DType dtype) {
  static std::map<DType, std::unique_ptr<BenchTable>>* tables =
      new std::map<DType, std::unique_ptr<BenchTable>>();
  auto& slot = (*tables)[dtype];
  if (!slot) slot = std::make_unique<BenchTable>(dtype);
  return *slot;
}

struct Batch {
  std::vector<int64_t> ids, offsets;
  std::vector<float> weights;
};

const std::vector<Batch>& Batches() {
  static const std::vector<Batch>* batches = [] {
    auto* b = new std::vector<Batch>(kBatches);
    uint64_t state = 42;
    for (Batch& batch : *b) {
      for (int64_t bag = 0; bag < kBagsPerBatch; ++bag) {
        batch.offsets.push_back(bag * kIdsPerBag);
        for (int64_t j = 0; j < kIdsPerBag; ++j) {
          batch.ids.push_back(static_cast<int64_t>(SplitMix(state) % kRows));
          batch.weights.push_back(static_cast<float>(SplitMix(state) >> 40) / (1 << 24));
        }
      }
    }
    return b;
  }();
  return *batches;
}

enum Variant { kSum, kMean, kMax, kWeightedSum, kSumMaxNorm };
const char* VariantName(int v) {
  static const char* names[] = {"sum", "mean", "max", "weighted_sum", "sum_max_norm"};
  return names[v];
}

QueryOptions OptionsFor(int variant, int threads) {
  QueryOptions o;
  o.max_threads = threads;
  o.mode = variant == kMean  ? PoolingMode::kMean
           : variant == kMax ? PoolingMode::kMax
                             : PoolingMode::kSum;
  if (variant == kSumMaxNorm) o.max_norm = 4.0;  // random rows have L2 norm ~6.5
  return o;
}

// Columns: "lookups" (rows pooled per second, e.g. 37.9M/s) and "read"
// (row payload bytes pooled per second, decimal units: 19.4G/s = 19.4 GB/s).
void SetCounters(benchmark::State& state, size_t row_bytes) {
  const double lookups = static_cast<double>(kBagsPerBatch * kIdsPerBag);
  state.counters["lookups"] = benchmark::Counter(
      lookups, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
  state.counters["read"] = benchmark::Counter(lookups * static_cast<double>(row_bytes),
                                              benchmark::Counter::kIsIterationInvariantRate,
                                              benchmark::Counter::kIs1000);
}

// args: variant, threads (0 = all), dtype
void BM_EmbeddingBag(benchmark::State& state) {
  const int variant = static_cast<int>(state.range(0));
  const DType dtype = static_cast<DType>(state.range(2));
  const BenchTable& table = Table(dtype);
  const QueryOptions options = OptionsFor(variant, static_cast<int>(state.range(1)));
  std::vector<float> out(kBagsPerBatch * kDim);
  int i = 0;
  for (auto _ : state) {
    const Batch& b = Batches()[i++ % kBatches];
    BagRequest r;
    r.indices = std::span<const int64_t>(b.ids);
    r.offsets = std::span<const int64_t>(b.offsets);
    if (variant == kWeightedSum) r.weights = std::span<const float>(b.weights);
    const Status s = EmbeddingBag(table.view(), r, options, out);
    if (!s.ok()) state.SkipWithError(s.message().c_str());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  SetCounters(state, table.payload());
  state.SetLabel(std::string(VariantName(variant)) + " " +
                 (state.range(1) == 0 ? "all-threads" : "1-thread"));
}

// The scalar reference twin (one thread), for the fast/reference ratio.
void BM_EmbeddingBagRef(benchmark::State& state) {
  const int variant = static_cast<int>(state.range(0));
  const BenchTable& table = Table(DType::kF32);
  const QueryOptions options = OptionsFor(variant, 1);
  std::vector<float> out(kBagsPerBatch * kDim);
  int i = 0;
  for (auto _ : state) {
    const Batch& b = Batches()[i++ % kBatches];
    BagRequest r;
    r.indices = std::span<const int64_t>(b.ids);
    r.offsets = std::span<const int64_t>(b.offsets);
    if (variant == kWeightedSum) r.weights = std::span<const float>(b.weights);
    const Status s = engine::EmbeddingBagRef(table.view(), r, options, out);
    if (!s.ok()) state.SkipWithError(s.message().c_str());
    benchmark::DoNotOptimize(out.data());
  }
  SetCounters(state, table.payload());
  state.SetLabel(std::string(VariantName(variant)) + " reference");
}

// The machine's sequential read bandwidth over the same table, all threads.
void BM_MemoryReadBandwidth(benchmark::State& state) {
  const BenchTable& table = Table(DType::kF32);
  const TableView v = table.view();
  const size_t words = v.row_stride * kRows / sizeof(uint64_t);
  const uint64_t* data = reinterpret_cast<const uint64_t*>(v.data);
  for (auto _ : state) {
    const uint64_t x = tbb::parallel_reduce(
        tbb::blocked_range<size_t>(0, words, 1 << 16), uint64_t{0},
        [&](const tbb::blocked_range<size_t>& r, uint64_t acc) {
          uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
          size_t i = r.begin();
          for (; i + 4 <= r.end(); i += 4) {
            a0 ^= data[i];
            a1 ^= data[i + 1];
            a2 ^= data[i + 2];
            a3 ^= data[i + 3];
          }
          for (; i < r.end(); ++i) a0 ^= data[i];
          return acc ^ a0 ^ a1 ^ a2 ^ a3;
        },
        [](uint64_t a, uint64_t b) { return a ^ b; });
    benchmark::DoNotOptimize(x);
  }
  state.counters["read"] = benchmark::Counter(static_cast<double>(words * 8),
                                              benchmark::Counter::kIsIterationInvariantRate,
                                              benchmark::Counter::kIs1000);
}

void FastArgs(benchmark::internal::Benchmark* b) {
  for (int v = kSum; v <= kSumMaxNorm; ++v) {
    for (int threads : {0, 1}) b->Args({v, threads, static_cast<int>(DType::kF32)});
  }
  for (DType d : {DType::kF16, DType::kBF16, DType::kInt8Rowwise}) {
    b->Args({kSum, 0, static_cast<int>(d)});
  }
  b->ArgNames({"variant", "threads", "dtype"});
}

BENCHMARK(BM_EmbeddingBag)->Apply(FastArgs)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_EmbeddingBagRef)
    ->DenseRange(kSum, kSumMaxNorm)
    ->ArgName("variant")
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_MemoryReadBandwidth)->UseRealTime()->Unit(benchmark::kMillisecond);

// Prints lookups/s of the fast kernels (one thread and all threads) over the
// reference, per variant, after the usual console output.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  // Colors only on a terminal (the library's own reporter does the same).
  RatioReporter() : ConsoleReporter(isatty(fileno(stdout)) ? OO_ColorTabular : OO_Tabular) {}
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& run : runs) {
      // With --benchmark_repetitions, the medians stand for the runs.
      if (run.run_type == Run::RT_Aggregate && run.aggregate_name != "median") continue;
      const std::string name = run.run_name.str();
      auto it = run.counters.find("lookups");
      if (it != run.counters.end()) rates_[name] = it->second.value;
      auto read = run.counters.find("read");
      if (read != run.counters.end()) reads_[name] = read->second.value;
    }
  }
  void Finalize() override {
    ConsoleReporter::Finalize();
    std::printf("\nfast / reference (lookups per second, f32 table):\n");
    for (int v = kSum; v <= kSumMaxNorm; ++v) {
      const std::string ref = "BM_EmbeddingBagRef/variant:" + std::to_string(v) + "/real_time";
      if (!rates_.count(ref)) continue;
      for (int threads : {1, 0}) {
        const std::string fast =
            "BM_EmbeddingBag/variant:" + std::to_string(v) + "/threads:" + std::to_string(threads) +
            "/dtype:" + std::to_string(static_cast<int>(DType::kF32)) + "/real_time";
        if (!rates_.count(fast)) continue;
        std::printf("  %-13s %-11s %6.2fx\n", VariantName(v),
                    threads == 1 ? "1 thread" : "all threads", rates_[fast] / rates_[ref]);
      }
    }
    const std::string memory = "BM_MemoryReadBandwidth/real_time";
    if (reads_.count(memory) && reads_[memory] > 0) {
      std::printf("\nrow bytes pooled / sequential memory read bandwidth (all threads):\n");
      for (const auto& [name, read] : reads_) {
        if (name.find("/threads:0/") == std::string::npos) continue;
        std::printf("  %-55s %5.0f%%\n", name.c_str(), 100.0 * read / reads_[memory]);
      }
    }
  }

 private:
  std::map<std::string, double> rates_;
  std::map<std::string, double> reads_;
};

}  // namespace
}  // namespace embstore

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  embstore::RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
