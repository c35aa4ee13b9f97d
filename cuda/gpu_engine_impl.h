// Internal (CUDA builds only): GpuEngine::Impl, the state behind a GpuEngine.
//
// Its members are defined by concern:
//   gpu_engine_impl.cc      creation, the cache's layout and tables, batches
//                           (Run), Forget/Clear and stats
//   gpu_engine_resident.cc  resident mode (a whole table in the cache)
//   gpu_engine_prefetch.cc  Prefetch, Sync and the prefetch worker thread
// The public GpuEngine methods (gpu_engine_cuda.cc) validate requests and
// call these.
//
// Ordering rules that keep the slots consistent (see also cache_policy.h):
// - Batches and the bookkeeping of prefetches are serialized by mu_. Every
//   batch ends by synchronizing compute_, so between calls no batch work is
//   on the device.
// - A batch pins its rows for the whole call; evictions (by later passes of
//   the batch, on the same stream, or by a prefetch, after the batch) are
//   therefore ordered after every kernel that read the evicted slot.
// - A prefetch pins the slots it fills until it is finished: its host part
//   done and compute_ told to wait for its copy (FinishPrefetch). A batch
//   that hits one of those slots finishes the prefetch first.
//
// Locks: mu_ (the engine's state), then job_mu_ (the hand-over to the
// worker); never the other way round. The worker takes job_mu_ only.
#ifndef EMBSTORE_CUDA_GPU_ENGINE_IMPL_H_
#define EMBSTORE_CUDA_GPU_ENGINE_IMPL_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "cuda/batch_prep.h"
#include "cuda/cache_policy.h"
#include "cuda/cuda_buffer.h"
#include "cuda/kernel_args.h"
#include "cuda/slot_fill.h"
#include "cuda/slot_layout.h"
#include "embstore/gpu_engine.h"
#include "embstore/query.h"
#include "embstore/status.h"
#include "embstore/types.h"
#include "engine/plan.h"
#include "util/mutex.h"
#include "util/thread_annotations.h"

namespace embstore::cuda {

inline constexpr int64_t kDefaultStagingBytes = int64_t{32} << 20;

class GpuEngine::Impl {
 public:
  Impl(const GpuEngineOptions& options, DeviceInfo device)
      : options_(options), device_(std::move(device)) {
    if (options_.staging_bytes <= 0) options_.staging_bytes = kDefaultStagingBytes;
  }
  ~Impl();

  // Creates the streams and events and starts the worker. Once, before any
  // other call.
  Status Init() LOCKS_EXCLUDED(mu_);
  // Pools the bags of `plan` into `out` (device memory when out_on_device).
  Status Run(const TableView& table, const engine::BagPlan& plan, const QueryOptions& options,
             float* out, bool out_on_device) LOCKS_EXCLUDED(mu_);
  Status Prefetch(const TableView& table, const engine::BagPlan& plan) LOCKS_EXCLUDED(mu_);
  Status Sync() LOCKS_EXCLUDED(mu_);
  Status Forget(const TableView& table) LOCKS_EXCLUDED(mu_);
  Status Clear() LOCKS_EXCLUDED(mu_);
  CacheStats stats() const LOCKS_EXCLUDED(mu_);
  void ResetStats() LOCKS_EXCLUDED(mu_);
  const DeviceInfo& device() const { return device_; }

 private:
  struct TableIdentity {
    const uint8_t* data;
    int64_t rows;
    int64_t dim;
    size_t row_stride;
    DType dtype;
    bool operator==(const TableIdentity& o) const {
      return data == o.data && rows == o.rows && dim == o.dim && row_stride == o.row_stride &&
             dtype == o.dtype;
    }
  };
  static TableIdentity IdentityOf(const TableView& t) {
    return TableIdentity{t.data, t.rows, t.dim, t.row_stride, t.dtype};
  }

  // A prefetch whose rows are reserved (pinned, marked in flight) and whose
  // gather and copy the worker thread runs. Written before it is handed to
  // the worker and read-only after; its outcome is in job_done_/job_status_.
  struct PrefetchJob {
    TableView table;
    SlotLayout layout;
    SlotArena arena;
    std::vector<int64_t> rows;   // to copy in ...
    std::vector<int32_t> slots;  // ... to these slots (pinned until finished)
  };

  // Lays the cache out for `table`'s dtype and dim (a no-op when it is).
  Status EnsureLayout(const TableView& table) EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Result<uint32_t> TableIdFor(const TableView& table) EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Status RunPass(const TableView& table, const SubBatch& pass, const SlotCache::Acquired& acquired,
                 const MetaLayout& meta, int64_t meta_at, const QueryOptions& options,
                 float* out_base, int max_threads) EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Queues the kernels of one pass on compute_ (kernel_args.h).
  Status LaunchKernels(const MetaLayout& meta, const uint8_t* dmeta, const int32_t* norm_slots,
                       int64_t norm_count, const QueryOptions& options, float* out)
      EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Resident mode (gpu_engine_resident.cc).
  Status EnterResident(const TableView& table, int max_threads) EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void LeaveResident() EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Status RunResident(const engine::BagPlan& plan, const QueryOptions& options, float* out,
                     bool out_on_device, size_t out_bytes) EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Prefetch bookkeeping (gpu_engine_prefetch.cc). FinishPrefetch gives the
  // pending prefetch's rows back to the cache once the worker is done with
  // it, waiting for that when `wait`; returns the prefetch's error.
  Status FinishPrefetch(bool wait) EXCLUSIVE_LOCKS_REQUIRED(mu_) LOCKS_EXCLUDED(job_mu_);
  Status TakeDeferredError() EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Worker thread.
  void WorkerLoop() LOCKS_EXCLUDED(job_mu_);
  Status RunJob(const PrefetchJob& job);
  // Stops the worker and waits for it (the destructor).
  void StopWorker() LOCKS_EXCLUDED(job_mu_);

  GpuEngineOptions options_;  // set at construction, then read-only
  DeviceInfo device_;
  // Made by Init, then read-only (the handles; the streams' work is ordered
  // as the head of this file says).
  cudaStream_t compute_ = nullptr;
  cudaStream_t copy_ = nullptr;  // prefetch copies
  cudaEvent_t prefetch_done_ = nullptr;

  mutable Mutex mu_ ACQUIRED_BEFORE(job_mu_);
  SlotLayout layout_ GUARDED_BY(mu_);
  std::unique_ptr<SlotCache> cache_ GUARDED_BY(mu_);
  DeviceBuffer arena_rows_ GUARDED_BY(mu_);
  DeviceBuffer arena_qparams_ GUARDED_BY(mu_);
  DeviceBuffer arena_scale_ GUARDED_BY(mu_);
  SlotArena arena_ GUARDED_BY(mu_);
  std::vector<std::pair<TableIdentity, uint32_t>> tables_ GUARDED_BY(mu_);
  uint32_t next_table_id_ GUARDED_BY(mu_) = 0;
  // Per slot: being filled by the pending prefetch.
  std::vector<uint8_t> in_flight_ GUARDED_BY(mu_);
  bool resident_ GUARDED_BY(mu_) = false;  // resident mode: resident_id_'s row r is in slot r
  bool resident_allowed_ GUARDED_BY(mu_) = true;  // false once two tables shared this layout
  TableIdentity resident_id_ GUARDED_BY(mu_){};
  std::unique_ptr<PrefetchJob> pending_ GUARDED_BY(mu_);
  Status deferred_ GUARDED_BY(mu_);  // a failed prefetch, to report on the next call
  Staging batch_staging_ GUARDED_BY(mu_);
  PinnedBuffer meta_host_ GUARDED_BY(mu_);
  DeviceBuffer meta_device_ GUARDED_BY(mu_);
  DeviceBuffer out_device_ GUARDED_BY(mu_);
  CacheStats counters_ GUARDED_BY(mu_);  // engine fields, and those of replaced caches
  FlatIdMap dedup_map_ GUARDED_BY(mu_);  // scratch for DedupBags

  // Hand-over of the pending prefetch to the worker, and back.
  Mutex job_mu_;
  CondVar job_cv_{&job_mu_};
  PrefetchJob* job_ GUARDED_BY(job_mu_) = nullptr;  // submitted, not yet taken
  bool job_done_ GUARDED_BY(job_mu_) = false;       // the worker finished pending_
  Status job_status_ GUARDED_BY(job_mu_);           // ... with this outcome
  bool stop_ GUARDED_BY(job_mu_) = false;
  std::thread worker_;
  // The worker's own: staging for prefetch copies (made by Init).
  Staging prefetch_staging_;
};

}  // namespace embstore::cuda

#endif  // EMBSTORE_CUDA_GPU_ENGINE_IMPL_H_
