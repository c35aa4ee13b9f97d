// Engine: one pooling interface for the CPU and for CUDA GPUs.
//
// An engine is chosen at run time and takes the same requests (query.h)
// wherever it runs, with the same validation, messages and results:
//
//   embstore::EngineOptions options;
//   options.device = gpu ? embstore::Device::kCuda : embstore::Device::kCpu;
//   options.gpu.cache_rows = 1 << 20;              // used by kCuda only
//   auto engine = embstore::Engine::Create(options);
//   if (!engine.ok()) { /* NotSupported "no GPU: ..." where there is none */ }
//   (*engine)->Prefetch(view, next_batch_ids);     // returns at once
//   (*engine)->EmbeddingBag(view, request, query_options, out);
//   embstore::CacheStats s = (*engine)->stats();
//
// The CPU engine pools where the rows lie (the table's memory mapping) with
// the kernels of query.h; its Prefetch asks the kernel to read the rows'
// pages ahead (madvise WILLNEED), and it has no cache (Forget and Clear do
// nothing; stats count batches and prefetches). The CUDA engine
// (gpu_engine.h) pools on a GPU through a device row cache.
//
// Thread-safety: an Engine may be used from many threads at once. The CPU
// engine runs calls concurrently (nothing is shared but counters); the CUDA
// engine serializes them on its device (see gpu_engine.h). The TableView
// memory must stay valid until the call using it returns (for a CUDA
// Prefetch, until the next call on the engine returns, or Sync()).
#ifndef EMBSTORE_ENGINE_H_
#define EMBSTORE_ENGINE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "embstore/query.h"
#include "embstore/status.h"
#include "embstore/types.h"

namespace embstore {

// Where an engine pools.
enum class Device : int { kCpu = 0, kCuda = 1 };
const char* DeviceName(Device device);                     // "cpu", "cuda"
std::optional<Device> ParseDevice(std::string_view name);  // "cpu" | "cuda"

// Which row a full GPU row cache evicts.
enum class CachePolicy : int {
  // Least recently used: the row whose last use ended longest ago. Cheap, and
  // adapts at once when the hot set moves.
  kLru = 0,
  // Least frequently used (ties: least recently used among them): keeps rows
  // that were used often even through a burst of one-off rows (scans). Counts
  // never decay, so a formerly hot row can linger after the hot set moves.
  kLfu = 1,
};
const char* CachePolicyName(CachePolicy policy);  // "lru", "lfu"
std::optional<CachePolicy> ParseCachePolicy(std::string_view name);

// Counters of an engine since creation (or ResetStats). For the CUDA engine,
// batch lookups are counted once per distinct row per batch (after dedup);
// prefetches are counted apart so that the hit rate shows what batches saw.
// The CPU engine has no cache: it counts batches and prefetch_requests, and
// the cache counters stay 0.
struct CacheStats {
  int64_t batches = 0;            // pooling calls
  int64_t sub_batches = 0;        // passes: > batches when a batch outgrew the cache
  int64_t lookups = 0;            // distinct rows looked up by batches
  int64_t hits = 0;               // ... found in the cache
  int64_t misses = 0;             // ... copied in from the table
  int64_t evictions = 0;          // rows dropped to make room (batches and prefetches)
  int64_t prefetch_requests = 0;  // Prefetch calls
  int64_t prefetch_lookups = 0;   // distinct rows a prefetch asked for
  int64_t prefetched_rows = 0;    // ... copied in
  int64_t prefetch_dropped = 0;   // ... skipped: no free or evictable slot
  int64_t bytes_copied = 0;       // host->device bytes of rows (batches + prefetch)
  int64_t capacity_rows = 0;      // slots in the cache
  int64_t resident_rows = 0;      // slots holding a row

  // hits / lookups; 0 when nothing was looked up.
  double hit_rate() const {
    return lookups == 0 ? 0.0 : static_cast<double>(hits) / static_cast<double>(lookups);
  }
};

// One line of key=value pairs, e.g. for `embstore query --stats`:
// "batches=1 sub_batches=1 lookups=3 hits=0 misses=3 hit_rate=0.000
//  evictions=0 prefetch_requests=0 prefetched_rows=0 prefetch_dropped=0
//  bytes_copied=192 capacity_rows=1000 resident_rows=3" (one line).
std::string CacheStatsToString(const CacheStats& stats);

// The CUDA engine's options (ignored by the CPU engine).
struct GpuEngineOptions {
  // CUDA device ordinal (as `embstore gpu-info` lists them). Default 0.
  int device = 0;

  // Cache capacity in rows (slots). Give this or cache_bytes, not both; both
  // 0 means 1 GiB of device memory. More rows: a higher hit rate, more
  // device memory. A cache at least as large as the table(s) turns every
  // repeated row into a hit (the "resident" case).
  int64_t cache_rows = 0;

  // Cache capacity in bytes of device memory; the engine fits as many slots
  // as the budget allows for the table's layout (slot = row padded to 16
  // bytes, plus 8 bytes of int8 scale/bias, plus a 4-byte max_norm scale).
  int64_t cache_bytes = 0;

  // Which row a full cache evicts. Default LRU: cheapest, adapts at once to
  // a moving hot set. LFU keeps frequently used rows through scans of
  // one-off ids, but its counts never decay.
  CachePolicy policy = CachePolicy::kLru;

  // Bytes of each of the pinned host staging buffers (and their device twins)
  // that misses travel through; there are two for batches and two for
  // prefetches, so copies overlap gathering. 0 means 32 MiB. Larger buffers
  // mean fewer, larger copies for batches with many misses, and more pinned
  // (unswappable) host memory.
  int64_t staging_bytes = 0;
};

struct EngineOptions {
  Device device = Device::kCpu;
  GpuEngineOptions gpu;  // for Device::kCuda
};

class Engine {
 public:
  // The engine `options.device` names. kCpu always succeeds. kCuda:
  // NotSupported ("no GPU: ...") when the build has no CUDA, no driver or
  // device is present, or the device is older than the build's target;
  // InvalidArgument for bad GPU options. Anything else: InvalidArgument.
  static Result<std::unique_ptr<Engine>> Create(const EngineOptions& options = {});

  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;
  // Waits for pending work and releases what the engine holds.
  virtual ~Engine();

  virtual Device device() const = 0;

  // As embstore::EmbeddingBag (query.h), result in host memory.
  // REQUIRES: host_out.size() == bags * table.dim (CountBags gives bags). On
  // error nothing useful is in host_out.
  virtual Status EmbeddingBag(const TableView& table, const BagRequest& request,
                              const QueryOptions& options, std::span<float> host_out) = 0;
  virtual Result<PooledOutput> EmbeddingBag(const TableView& table, const BagRequest& request,
                                            const QueryOptions& options) = 0;

  // As embstore::BatchedEmbeddingBag (batched bags with inclusive ends).
  // REQUIRES: host_out.size() == batch * bags_per_sample * table.dim.
  virtual Status BatchedEmbeddingBag(const TableView& table, const BatchedBagRequest& request,
                                     const QueryOptions& options, std::span<float> host_out) = 0;
  virtual Result<PooledOutput> BatchedEmbeddingBag(const TableView& table,
                                                   const BatchedBagRequest& request,
                                                   const QueryOptions& options) = 0;

  // The same with the result written to device memory the caller owns, for
  // serving systems that continue on the GPU: `count` floats on the engine's
  // device, count == bags * table.dim. Returns when device_out is written
  // (the engine's stream is synchronized), so the caller may use it on any
  // stream. The CPU engine has no device: NotSupported.
  virtual Status EmbeddingBagToDevice(const TableView& table, const BagRequest& request,
                                      const QueryOptions& options, float* device_out,
                                      size_t count) = 0;
  virtual Status BatchedEmbeddingBagToDevice(const TableView& table,
                                             const BatchedBagRequest& request,
                                             const QueryOptions& options, float* device_out,
                                             size_t count) = 0;

  // Readies rows `ids` of `table` for a coming batch and returns at once.
  // Ids are validated like a request's (same messages). Best effort: the
  // CUDA engine copies the rows into its cache in the background; the CPU
  // engine asks the kernel to read the rows' pages (of a memory-mapped
  // table) ahead.
  virtual Status Prefetch(const TableView& table, IndexArray ids) = 0;
  // Waits for a pending prefetch; returns its error, if any.
  virtual Status Sync() = 0;

  // Drops every cached row of `table` (e.g. before its memory is unmapped
  // and another table could be mapped at the same address), or of all tables.
  virtual Status Forget(const TableView& table) = 0;
  virtual Status Clear() = 0;

  // Counters since creation (or ResetStats), and the cache's size now.
  virtual CacheStats stats() const = 0;
  virtual void ResetStats() = 0;

 protected:
  Engine() = default;
};

}  // namespace embstore

#endif  // EMBSTORE_ENGINE_H_
