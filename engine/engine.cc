// The Engine interface's shared parts (names, stats formatting) and the CPU
// engine: the free functions of query.h behind the Engine interface, with
// batch counters and a page-cache prefetch. Engine::Create, which also knows
// the CUDA engine, is in cuda/engine_create.cc.
#include "embstore/engine.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "engine/cpu_engine.h"
#include "engine/guarded.h"
#include "engine/plan.h"

namespace embstore {

const char* DeviceName(Device device) {
  switch (device) {
    case Device::kCpu:
      return "cpu";
    case Device::kCuda:
      return "cuda";
  }
  return "unknown";
}

std::optional<Device> ParseDevice(std::string_view name) {
  if (name == "cpu") return Device::kCpu;
  if (name == "cuda") return Device::kCuda;
  return std::nullopt;
}

const char* CachePolicyName(CachePolicy policy) {
  switch (policy) {
    case CachePolicy::kLru:
      return "lru";
    case CachePolicy::kLfu:
      return "lfu";
  }
  return "unknown";
}

std::optional<CachePolicy> ParseCachePolicy(std::string_view name) {
  if (name == "lru") return CachePolicy::kLru;
  if (name == "lfu") return CachePolicy::kLfu;
  return std::nullopt;
}

std::string CacheStatsToString(const CacheStats& s) {
  char rate[32];
  std::snprintf(rate, sizeof(rate), "%.3f", s.hit_rate());
  auto kv = [](const char* k, int64_t v) { return std::string(k) + "=" + std::to_string(v); };
  return kv("batches", s.batches) + " " + kv("sub_batches", s.sub_batches) + " " +
         kv("lookups", s.lookups) + " " + kv("hits", s.hits) + " " + kv("misses", s.misses) +
         " hit_rate=" + rate + " " + kv("evictions", s.evictions) + " " +
         kv("prefetch_requests", s.prefetch_requests) + " " +
         kv("prefetched_rows", s.prefetched_rows) + " " +
         kv("prefetch_dropped", s.prefetch_dropped) + " " + kv("bytes_copied", s.bytes_copied) +
         " " + kv("capacity_rows", s.capacity_rows) + " " + kv("resident_rows", s.resident_rows);
}

Engine::~Engine() = default;

namespace engine {
namespace {

Status NoDevice() {
  return Status::NotSupported(
      "the CPU engine has no device memory to write: create the engine with Device::kCuda for "
      "EmbeddingBagToDevice");
}

// The pages holding rows `ids` of `table`, as merged [begin, end) runs of
// page-aligned addresses.
std::vector<std::pair<uintptr_t, uintptr_t>> RowPages(const TableView& table, IndexArray ids) {
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t base = reinterpret_cast<uintptr_t>(table.data);
  const uintptr_t row_bytes = table.row_stride;  // the payload and any int8 trailer
  std::vector<std::pair<uintptr_t, uintptr_t>> runs;
  runs.reserve(static_cast<size_t>(ids.size));
  for (int64_t i = 0; i < ids.size; ++i) {
    const uintptr_t begin = base + static_cast<uintptr_t>(ids[i]) * table.row_stride;
    runs.emplace_back(begin & ~(page - 1), (begin + row_bytes + page - 1) & ~(page - 1));
  }
  std::sort(runs.begin(), runs.end());
  size_t n = 0;
  for (const auto& r : runs) {
    if (n > 0 && r.first <= runs[n - 1].second) {
      runs[n - 1].second = std::max(runs[n - 1].second, r.second);
    } else {
      runs[n++] = r;
    }
  }
  runs.resize(n);
  return runs;
}

class CpuEngine final : public Engine {
 public:
  Device device() const override { return Device::kCpu; }

  Status EmbeddingBag(const TableView& table, const BagRequest& request,
                      const QueryOptions& options, std::span<float> host_out) override {
    Count();
    return embstore::EmbeddingBag(table, request, options, host_out);
  }
  Result<PooledOutput> EmbeddingBag(const TableView& table, const BagRequest& request,
                                    const QueryOptions& options) override {
    Count();
    return embstore::EmbeddingBag(table, request, options);
  }
  Status BatchedEmbeddingBag(const TableView& table, const BatchedBagRequest& request,
                             const QueryOptions& options, std::span<float> host_out) override {
    Count();
    return embstore::BatchedEmbeddingBag(table, request, options, host_out);
  }
  Result<PooledOutput> BatchedEmbeddingBag(const TableView& table, const BatchedBagRequest& request,
                                           const QueryOptions& options) override {
    Count();
    return embstore::BatchedEmbeddingBag(table, request, options);
  }
  Status EmbeddingBagToDevice(const TableView&, const BagRequest&, const QueryOptions&, float*,
                              size_t) override {
    return NoDevice();
  }
  Status BatchedEmbeddingBagToDevice(const TableView&, const BatchedBagRequest&,
                                     const QueryOptions&, float*, size_t) override {
    return NoDevice();
  }

  // Validates the ids as the CUDA engine does, then advises the kernel that
  // their pages will be needed (MADV_WILLNEED starts reading those of a
  // file mapping that are not in the page cache, and returns). Advice is
  // best effort: a range the kernel refuses (memory that is not a mapping
  // it can read ahead) is not an error.
  Status Prefetch(const TableView& table, IndexArray ids) override {
    return Guarded<Status>([&]() -> Status {
      EMBSTORE_RETURN_IF_ERROR(PlanIds(table, ids).status());
      prefetch_requests_.fetch_add(1, std::memory_order_relaxed);
      if (ids.size == 0 || table.data == nullptr) return Status::OK();
      for (const auto& [begin, end] : RowPages(table, ids)) {
        (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_WILLNEED);
      }
      return Status::OK();
    });
  }
  Status Sync() override { return Status::OK(); }
  Status Forget(const TableView&) override { return Status::OK(); }
  Status Clear() override { return Status::OK(); }

  CacheStats stats() const override {
    CacheStats s;
    s.batches = batches_.load(std::memory_order_relaxed);
    s.sub_batches = s.batches;
    s.prefetch_requests = prefetch_requests_.load(std::memory_order_relaxed);
    return s;
  }
  void ResetStats() override {
    batches_.store(0, std::memory_order_relaxed);
    prefetch_requests_.store(0, std::memory_order_relaxed);
  }

 private:
  void Count() { batches_.fetch_add(1, std::memory_order_relaxed); }

  std::atomic<int64_t> batches_{0};
  std::atomic<int64_t> prefetch_requests_{0};
};

}  // namespace

std::unique_ptr<Engine> NewCpuEngine() { return std::make_unique<CpuEngine>(); }

}  // namespace engine

}  // namespace embstore
