// GpuEngine::Impl: Prefetch, Sync and the prefetch worker thread
// (gpu_engine_impl.h).
//
// Prefetch reserves the rows under mu_ (pinned, marked in flight) and hands
// the job to the worker, which gathers and copies them on copy_ and records
// prefetch_done_. The next call that needs the rows, or that finds the job
// done, finishes it (FinishPrefetch): compute_ waits for prefetch_done_ and
// the slots go back to the cache. At most one prefetch is pending.
#include <cuda_runtime_api.h>

#include <memory>
#include <utility>
#include <vector>

#include "cuda/cuda_check.h"
#include "cuda/gpu_engine_impl.h"
#include "engine/guarded.h"

namespace embstore::cuda {

Status GpuEngine::Impl::TakeDeferredError() {
  Status st = std::move(deferred_);
  deferred_ = Status::OK();
  return st;
}

Status GpuEngine::Impl::FinishPrefetch(bool wait) {
  if (pending_ == nullptr) return Status::OK();
  Status st;
  {
    MutexLock lock(&job_mu_);
    if (!job_done_) {
      if (!wait) return Status::OK();
      while (!job_done_) job_cv_.Wait(&job_mu_);
    }
    st = std::move(job_status_);
    job_status_ = Status::OK();
  }
  std::unique_ptr<PrefetchJob> job = std::move(pending_);
  for (const int32_t s : job->slots) {
    if (s >= 0 && s < static_cast<int32_t>(in_flight_.size())) in_flight_[s] = 0;
  }
  if (st.ok()) {
    // Later work on compute_ (reads of these slots, or refills after an
    // eviction) runs after the prefetch's scatter.
    const cudaError_t err = cudaStreamWaitEvent(compute_, prefetch_done_, 0);
    if (err != cudaSuccess) st = CudaStatus(err, "cudaStreamWaitEvent", __FILE__, __LINE__);
  }
  if (st.ok()) {
    cache_->Release(job->slots);
  } else {
    // The rows never arrived: forget them.
    for (const int32_t s : job->slots) cache_->Erase(s);
    st = st.WithContext("background prefetch failed");
  }
  return st;
}

Status GpuEngine::Impl::Prefetch(const TableView& table, const engine::BagPlan& plan) {
  MutexLock lock(&mu_);
  DeviceScope scope;
  EMBSTORE_RETURN_IF_ERROR(scope.Enter(device_.ordinal));
  EMBSTORE_RETURN_IF_ERROR(TakeDeferredError());
  EMBSTORE_RETURN_IF_ERROR(FinishPrefetch(/*wait=*/true));  // one in flight at a time
  ++counters_.prefetch_requests;
  if (table.dim == 0 || plan.num_entries() == 0) return Status::OK();
  EMBSTORE_RETURN_IF_ERROR(EnsureLayout(table));
  if (resident_) {
    if (resident_id_ == IdentityOf(table)) return Status::OK();  // every row is there
    LeaveResident();
    resident_allowed_ = false;
  }
  EMBSTORE_ASSIGN_OR_RETURN(const DedupedBatch batch, DedupBags(plan, &dedup_map_));
  EMBSTORE_ASSIGN_OR_RETURN(const uint32_t table_id, TableIdFor(table));
  std::vector<uint64_t> keys(static_cast<size_t>(batch.num_unique()));
  for (size_t i = 0; i < keys.size(); ++i) keys[i] = CacheKey(table_id, batch.unique_rows[i]);
  auto job = std::make_unique<PrefetchJob>();
  SlotCache::Acquired acquired;
  cache_->AcquireForPrefetch(keys, &acquired);
  if (acquired.fills.empty()) return Status::OK();
  job->table = table;
  job->layout = layout_;
  job->arena = arena_;
  SplitFills(acquired.fills, &job->rows, &job->slots);
  for (const int32_t slot : job->slots) in_flight_[slot] = 1;
  counters_.bytes_copied += static_cast<int64_t>(job->slots.size()) * layout_.transfer_bytes();
  // No batch work is queued (batches end synchronized), so the prefetch's
  // scatter cannot overtake a kernel still reading an evicted slot.
  pending_ = std::move(job);
  {
    MutexLock jl(&job_mu_);
    job_ = pending_.get();
    job_done_ = false;
  }
  job_cv_.SignalAll();
  return Status::OK();
}

void GpuEngine::Impl::WorkerLoop() {
  const bool device_set = cudaSetDevice(device_.ordinal) == cudaSuccess;
  for (;;) {
    PrefetchJob* job = nullptr;
    {
      MutexLock lock(&job_mu_);
      while (!stop_ && job_ == nullptr) job_cv_.Wait(&job_mu_);
      if (job_ == nullptr) return;  // stop_
      job = job_;
      job_ = nullptr;
    }
    Status st = device_set ? engine::Guarded<Status>([&] { return RunJob(*job); })
                           : Status::Internal("prefetch thread: cannot select the GPU");
    {
      MutexLock lock(&job_mu_);
      job_status_ = std::move(st);
      job_done_ = true;
    }
    job_cv_.SignalAll();
  }
}

Status GpuEngine::Impl::RunJob(const PrefetchJob& job) {
  EMBSTORE_RETURN_IF_ERROR(FillSlots(job.table, job.layout, job.arena, job.rows, job.slots,
                                     options_.staging_bytes, /*max_threads=*/0, &prefetch_staging_,
                                     copy_));
  EMBSTORE_CUDA_CHECK(cudaEventRecord(prefetch_done_, copy_));
  return Status::OK();
}

void GpuEngine::Impl::StopWorker() {
  if (!worker_.joinable()) return;
  {
    MutexLock lock(&job_mu_);
    stop_ = true;
  }
  job_cv_.SignalAll();
  worker_.join();
}

Status GpuEngine::Impl::Sync() {
  MutexLock lock(&mu_);
  DeviceScope scope;
  EMBSTORE_RETURN_IF_ERROR(scope.Enter(device_.ordinal));
  EMBSTORE_RETURN_IF_ERROR(TakeDeferredError());
  EMBSTORE_RETURN_IF_ERROR(FinishPrefetch(/*wait=*/true));
  EMBSTORE_CUDA_CHECK(cudaStreamSynchronize(compute_));
  return Status::OK();
}

}  // namespace embstore::cuda
