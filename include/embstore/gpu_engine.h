// GpuEngine: the Engine (engine.h) of a CUDA GPU, pooling through a device
// row cache. Engine::Create({.device = Device::kCuda, .gpu = {...}}) makes
// one; this header adds what only the GPU engine has (device_info()) and
// documents how it works. Like faiss's GpuIndexFlat beside IndexFlat, it
// takes the requests and options the CPU engine takes and gives the same
// results: the same validation (the CPU engine's bag plan, so error messages
// are identical), the same semantics (SEMANTICS.md: modes, weights, padding,
// non-mutating max_norm, weighted max/mean, batched bags with inclusive ends)
// for every stored dtype.
//
//   auto gpu = embstore::cuda::GpuEngine::Create({.cache_rows = 1 << 20});
//   if (!gpu.ok()) { /* NotSupported "no GPU: ..." on a machine without one */ }
//   (*gpu)->Prefetch(view, next_batch_ids);          // returns at once
//   (*gpu)->EmbeddingBag(view, request, options, out);  // meanwhile
//   CacheStats s = (*gpu)->stats();
//
// How a batch runs: validate and plan (engine/plan.h); deduplicate the ids;
// look each distinct row up in the cache (cache_policy.h), pinning the rows
// of the batch; gather the misses from the table (usually an mmapped file)
// into pinned staging buffers in parallel (TBB) and copy them asynchronously
// to the device, where a kernel places them in their slots; compute the
// max_norm scales of the batch's rows if asked; pool every bag with one group
// of threads per bag over the slots; copy the result out. A batch whose
// distinct rows do not fit in the cache runs in several passes of whole bags
// (stats().sub_batches); only a single bag with more distinct rows than the
// cache has slots is refused (InvalidArgument).
//
// The cache is keyed by (table identity, row). A table's identity is its
// view's data address, rows, dim, dtype and row stride. One engine caches
// rows of one slot layout (dtype and dim) at a time: tables of the same
// layout share the cache; a table of another layout flushes it. Serving
// several tables of different shapes: one engine per table (and a cache
// budget per engine).
//
// Thread-safety: a GpuEngine may be used from many threads. Calls are
// serialized by an internal mutex (one batch at a time on the device);
// Prefetch returns once its rows are reserved, and its copy proceeds in the
// background, overlapping the batches that follow. The TableView memory must
// stay valid until the call using it returns and, for Prefetch, until the
// next call on the engine returns (or Sync()).
//
// Without CUDA (EMBSTORE_CUDA=OFF or no nvcc) this header is the same, and
// Create returns NotSupported("no GPU: built without CUDA ...").
#ifndef EMBSTORE_GPU_ENGINE_H_
#define EMBSTORE_GPU_ENGINE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "embstore/engine.h"
#include "embstore/gpu_device.h"
#include "embstore/query.h"
#include "embstore/status.h"
#include "embstore/types.h"

namespace embstore::cuda {

class GpuEngine final : public Engine {
 public:
  // Opens `options.device`. NotSupported ("no GPU: ...") when the build has
  // no CUDA, no driver or device is present, or the device is older than
  // sm_90 (this build's target); InvalidArgument for bad options. Device
  // memory for the cache is taken on the first query (its size depends on
  // the table's layout). Engine::Create with Device::kCuda calls this.
  static Result<std::unique_ptr<GpuEngine>> Create(const GpuEngineOptions& options);

  // Waits for pending work and releases the device memory.
  ~GpuEngine() override;

  Device device() const override { return Device::kCuda; }

  // As embstore::EmbeddingBag, computed on the GPU, result in host memory.
  // REQUIRES: host_out.size() == bags * table.dim. On error nothing useful
  // is in host_out. Returns when host_out is written.
  // QueryOptions::max_threads limits the threads gathering misses (1: the
  // calling thread only).
  Status EmbeddingBag(const TableView& table, const BagRequest& request,
                      const QueryOptions& options, std::span<float> host_out) override;
  Result<PooledOutput> EmbeddingBag(const TableView& table, const BagRequest& request,
                                    const QueryOptions& options) override;

  // The same with the result written to device memory the caller owns (on
  // this engine's device), for serving systems that continue on the GPU.
  // REQUIRES: device_out holds `count` floats and count == bags * table.dim.
  // Returns when device_out is written (the engine's stream is synchronized),
  // so the caller may use it on any stream.
  Status EmbeddingBagToDevice(const TableView& table, const BagRequest& request,
                              const QueryOptions& options, float* device_out,
                              size_t count) override;

  // As embstore::BatchedEmbeddingBag (batched bags with inclusive ends).
  Status BatchedEmbeddingBag(const TableView& table, const BatchedBagRequest& request,
                             const QueryOptions& options, std::span<float> host_out) override;
  Result<PooledOutput> BatchedEmbeddingBag(const TableView& table, const BatchedBagRequest& request,
                                           const QueryOptions& options) override;
  Status BatchedEmbeddingBagToDevice(const TableView& table, const BatchedBagRequest& request,
                                     const QueryOptions& options, float* device_out,
                                     size_t count) override;

  // Warms the cache with rows `ids` of `table` for a coming batch, and
  // returns as soon as the rows are reserved: the gather and the copy run in
  // the background and overlap the next calls. Best effort: rows already
  // cached are left alone, and rows that find no free or evictable slot are
  // skipped (stats().prefetch_dropped). Ids are validated like a request's
  // (same messages). A failure of the background copy is reported by the
  // next call (and its rows are dropped from the cache). At most one
  // prefetch is in flight; a second waits for the first.
  Status Prefetch(const TableView& table, IndexArray ids) override;

  // Waits for a pending prefetch; returns its error, if any.
  Status Sync() override;

  // Drops every cached row of `table` (e.g. before its memory is unmapped
  // and another table could be mapped at the same address), or of all tables.
  Status Forget(const TableView& table) override;
  Status Clear() override;

  // Counters since creation (or ResetStats), and the cache's size now.
  CacheStats stats() const override;
  void ResetStats() override;

  // The device this engine runs on.
  const DeviceInfo& device_info() const;

 private:
  class Impl;
  explicit GpuEngine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace embstore::cuda

#endif  // EMBSTORE_GPU_ENGINE_H_
