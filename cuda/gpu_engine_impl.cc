// GpuEngine::Impl: creation, the cache's layout and tables, batches, Forget,
// Clear and stats (gpu_engine_impl.h). Host code only (compiled by the C++
// compiler against the CUDA runtime); the kernels are in pooling_kernels.cu.
#include "cuda/gpu_engine_impl.h"

#include <cuda_runtime_api.h>

#include <cstring>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cuda/cuda_check.h"
#include "cuda/pooling_kernels.h"

namespace embstore::cuda {
namespace {

void AddCounters(CacheStats* into, const CacheStats& c) {
  into->batches += c.batches;
  into->sub_batches += c.sub_batches;
  into->lookups += c.lookups;
  into->hits += c.hits;
  into->misses += c.misses;
  into->evictions += c.evictions;
  into->prefetch_requests += c.prefetch_requests;
  into->prefetch_lookups += c.prefetch_lookups;
  into->prefetched_rows += c.prefetched_rows;
  into->prefetch_dropped += c.prefetch_dropped;
  into->bytes_copied += c.bytes_copied;
}

}  // namespace

Status GpuEngine::Impl::Init() {
  DeviceScope scope;
  EMBSTORE_RETURN_IF_ERROR(scope.Enter(device_.ordinal));
  EMBSTORE_CUDA_CHECK(cudaStreamCreateWithFlags(&compute_, cudaStreamNonBlocking));
  EMBSTORE_CUDA_CHECK(cudaStreamCreateWithFlags(&copy_, cudaStreamNonBlocking));
  EMBSTORE_CUDA_CHECK(cudaEventCreateWithFlags(&prefetch_done_, cudaEventDisableTiming));
  {
    MutexLock lock(&mu_);
    EMBSTORE_RETURN_IF_ERROR(batch_staging_.Init());
  }
  EMBSTORE_RETURN_IF_ERROR(prefetch_staging_.Init());
  worker_ = std::thread([this] { WorkerLoop(); });
  return Status::OK();
}

GpuEngine::Impl::~Impl() {
  {
    MutexLock lock(&mu_);
    DeviceScope scope;
    (void)scope.Enter(device_.ordinal);
    (void)FinishPrefetch(/*wait=*/true);
    if (compute_ != nullptr) cudaStreamSynchronize(compute_);
  }
  StopWorker();
  DeviceScope scope;
  (void)scope.Enter(device_.ordinal);
  batch_staging_.Destroy();
  prefetch_staging_.Destroy();
  if (prefetch_done_ != nullptr) cudaEventDestroy(prefetch_done_);
  if (copy_ != nullptr) cudaStreamDestroy(copy_);
  if (compute_ != nullptr) cudaStreamDestroy(compute_);
  // Device and pinned buffers free themselves.
}

Status GpuEngine::Impl::EnsureLayout(const TableView& table) {
  const SlotLayout want = MakeSlotLayout(table.dtype, table.dim);
  if (cache_ != nullptr && want == layout_) return Status::OK();
  EMBSTORE_RETURN_IF_ERROR(FinishPrefetch(/*wait=*/true));
  EMBSTORE_ASSIGN_OR_RETURN(const int64_t capacity,
                            CacheCapacityRows(options_.cache_rows, options_.cache_bytes, want));
  EMBSTORE_CUDA_CHECK(cudaStreamSynchronize(compute_));
  EMBSTORE_CUDA_CHECK(cudaStreamSynchronize(copy_));
  if (cache_ != nullptr) AddCounters(&counters_, cache_->counters());
  cache_.reset();
  tables_.clear();
  resident_ = false;
  resident_allowed_ = true;
  arena_rows_.Free();
  arena_qparams_.Free();
  arena_scale_.Free();
  arena_ = SlotArena();
  const size_t n = static_cast<size_t>(capacity);
  Status st = arena_rows_.Grow(n * static_cast<size_t>(want.row_bytes), /*exact=*/true);
  if (st.ok() && want.quantized) st = arena_qparams_.Grow(n * 2 * sizeof(float), true);
  if (st.ok()) st = arena_scale_.Grow(n * sizeof(float), true);
  if (!st.ok()) {
    arena_rows_.Free();
    arena_qparams_.Free();
    arena_scale_.Free();
    return st.WithContext("cannot allocate the GPU row cache (" + std::to_string(capacity) +
                          " rows of " + std::to_string(want.slot_bytes()) + " bytes on cuda:" +
                          std::to_string(device_.ordinal) + "; give a smaller cache)");
  }
  arena_.rows = arena_rows_.data();
  arena_.qparams = want.quantized ? reinterpret_cast<float*>(arena_qparams_.data()) : nullptr;
  arena_.row_scale = reinterpret_cast<float*>(arena_scale_.data());
  cache_ = std::make_unique<SlotCache>(options_.policy, capacity);
  in_flight_.assign(n, 0);
  layout_ = want;
  return Status::OK();
}

Result<uint32_t> GpuEngine::Impl::TableIdFor(const TableView& table) {
  if (table.rows > kMaxCacheKeyRows) {
    return Status::NotSupported("the GPU engine handles tables of fewer than 2^40 rows (table '" +
                                std::string(table.name) + "' has " + std::to_string(table.rows) +
                                ")");
  }
  const TableIdentity id = IdentityOf(table);
  for (const auto& [known, tid] : tables_) {
    if (known == id) return tid;
  }
  if (next_table_id_ >= kMaxCacheTables) {
    // Out of ids (after millions of distinct views): start afresh.
    EMBSTORE_RETURN_IF_ERROR(FinishPrefetch(/*wait=*/true));
    cache_->Clear();
    tables_.clear();
    next_table_id_ = 0;
  }
  tables_.emplace_back(id, next_table_id_);
  return next_table_id_++;
}

Status GpuEngine::Impl::LaunchKernels(const MetaLayout& meta, const uint8_t* dmeta,
                                      const int32_t* norm_slots, int64_t norm_count,
                                      const QueryOptions& options, float* out) {
  const PassKernels k =
      MakePassKernels(layout_, arena_, meta, dmeta, norm_slots, norm_count, options, out);
  if (k.renorm) EMBSTORE_RETURN_IF_ERROR(LaunchRowScales(layout_.dtype, k.norm, compute_));
  return LaunchPool(layout_.dtype, k.kind, k.pool, compute_);
}

Status GpuEngine::Impl::RunPass(const TableView& table, const SubBatch& pass,
                                const SlotCache::Acquired& acquired, const MetaLayout& meta,
                                int64_t meta_at, const QueryOptions& options, float* out_base,
                                int max_threads) {
  std::vector<int64_t> rows;
  std::vector<int32_t> slots;
  SplitFills(acquired.fills, &rows, &slots);
  EMBSTORE_RETURN_IF_ERROR(FillSlots(table, layout_, arena_, rows, slots, options_.staging_bytes,
                                     max_threads, &batch_staging_, compute_, options));
  uint8_t* dmeta = meta_device_.data() + meta_at;
  EMBSTORE_CUDA_CHECK(cudaMemcpyAsync(dmeta, meta_host_.data() + meta_at,
                                      static_cast<size_t>(meta.total), cudaMemcpyHostToDevice,
                                      compute_));
  const int32_t* norm_slots =
      meta.uniques_at >= 0 ? reinterpret_cast<const int32_t*>(dmeta + meta.uniques_at) : nullptr;
  return LaunchKernels(meta, dmeta, norm_slots, meta.uniques, options,
                       out_base + pass.first_bag * layout_.dim);
}
Status GpuEngine::Impl::Run(const TableView& table, const engine::BagPlan& plan,
                            const QueryOptions& options, float* out, bool out_on_device) {
  MutexLock lock(&mu_);
  DeviceScope scope;
  EMBSTORE_RETURN_IF_ERROR(scope.Enter(device_.ordinal));
  EMBSTORE_RETURN_IF_ERROR(TakeDeferredError());
  const int64_t bags = plan.num_bags();
  const int64_t dim = table.dim;
  const size_t out_bytes = static_cast<size_t>(bags) * static_cast<size_t>(dim) * sizeof(float);
  ++counters_.batches;
  if (out_bytes == 0) return Status::OK();

  auto zeros = [&]() -> Status {  // every bag empty or all padding
    if (out_on_device) {
      EMBSTORE_CUDA_CHECK(cudaMemsetAsync(out, 0, out_bytes, compute_));
      EMBSTORE_CUDA_CHECK(cudaStreamSynchronize(compute_));
    } else {
      std::memset(out, 0, out_bytes);
    }
    return Status::OK();
  };
  if (plan.num_entries() == 0) return zeros();
  EMBSTORE_RETURN_IF_ERROR(EnsureLayout(table));
  const bool same_resident = resident_ && resident_id_ == IdentityOf(table);
  if (resident_ && !same_resident) {  // a second table: the cache becomes a cache
    LeaveResident();
    resident_allowed_ = false;
  }
  if (!resident_ && resident_allowed_ && pending_ == nullptr && cache_->size() == 0 &&
      table.rows > 0 && cache_->capacity() >= table.rows) {
    EMBSTORE_RETURN_IF_ERROR(EnterResident(table, options.max_threads));
  }
  if (resident_) return RunResident(plan, options, out, out_on_device, out_bytes);

  EMBSTORE_ASSIGN_OR_RETURN(const DedupedBatch batch, DedupBags(plan, &dedup_map_));
  if (batch.num_entries() == 0) return zeros();
  EMBSTORE_ASSIGN_OR_RETURN(const uint32_t table_id, TableIdFor(table));

  // Rows pinned by an in-flight prefetch are not available to this batch;
  // if the batch needs them, finish the prefetch first.
  int64_t room = cache_->capacity() - cache_->pinned();
  if (batch.num_unique() > room && pending_ != nullptr) {
    EMBSTORE_RETURN_IF_ERROR(FinishPrefetch(/*wait=*/true));
    room = cache_->capacity() - cache_->pinned();
  }
  EMBSTORE_ASSIGN_OR_RETURN(const std::vector<SubBatch> passes, SplitBatch(batch, room));

  // Metadata of all passes, side by side; the output buffer.
  const bool renorm = options.max_norm.has_value();
  std::vector<MetaLayout> metas;
  std::vector<int64_t> meta_at;
  int64_t meta_total = 0;
  for (const SubBatch& pass : passes) {
    metas.push_back(ComputeMetaLayout(batch, pass, renorm));
    meta_at.push_back(meta_total);
    meta_total += metas.back().total;
  }
  // compute_ is idle here (every call ends synchronized), so buffers may move.
  EMBSTORE_RETURN_IF_ERROR(meta_host_.Grow(static_cast<size_t>(meta_total)));
  EMBSTORE_RETURN_IF_ERROR(meta_device_.Grow(static_cast<size_t>(meta_total)));
  float* out_dev = out;
  if (!out_on_device) {
    EMBSTORE_RETURN_IF_ERROR(out_device_.Grow(out_bytes));
    out_dev = reinterpret_cast<float*>(out_device_.data());
  }

  const int max_threads = options.max_threads;
  std::vector<int32_t> slot_of_unique(static_cast<size_t>(batch.num_unique()), -1);
  std::vector<uint64_t> keys;
  SlotCache::Acquired acquired;
  for (size_t p = 0; p < passes.size(); ++p) {
    const SubBatch& pass = passes[p];
    keys.resize(pass.uniques.size());
    for (size_t i = 0; i < keys.size(); ++i) {
      keys[i] = CacheKey(table_id, batch.unique_rows[pass.uniques[i]]);
    }
    EMBSTORE_RETURN_IF_ERROR(cache_->Acquire(keys, &acquired));
    bool uses_in_flight = false;
    for (size_t i = 0; i < keys.size(); ++i) {
      const int32_t s = acquired.slots[i];
      slot_of_unique[pass.uniques[i]] = s;
      uses_in_flight = uses_in_flight || in_flight_[s] != 0;
    }
    Status st;
    if (uses_in_flight) st = FinishPrefetch(/*wait=*/true);
    if (st.ok()) {
      FillMeta(batch, pass, slot_of_unique, metas[p], meta_host_.data() + meta_at[p]);
      st = RunPass(table, pass, acquired, metas[p], meta_at[p], options, out_dev, max_threads);
    }
    if (!st.ok()) {
      // The fills may not have landed: forget those rows.
      for (const SlotCache::Fill& f : acquired.fills) cache_->Erase(f.slot);
      cache_->Release(acquired.slots);
      (void)cudaStreamSynchronize(compute_);
      return st;
    }
    // Later passes may evict these rows: their refills are queued on
    // compute_ after this pass's kernels.
    cache_->Release(acquired.slots);
    counters_.bytes_copied +=
        static_cast<int64_t>(acquired.fills.size()) * layout_.transfer_bytes();
    ++counters_.sub_batches;
  }
  if (!out_on_device) {
    EMBSTORE_CUDA_CHECK(cudaMemcpyAsync(out, out_dev, out_bytes, cudaMemcpyDeviceToHost, compute_));
  }
  EMBSTORE_CUDA_CHECK(cudaStreamSynchronize(compute_));
  // A prefetch that is done by now gives its rows back to the cache; its
  // failure, if any, is reported by the next call.
  Status st = FinishPrefetch(/*wait=*/false);
  if (!st.ok()) deferred_ = std::move(st);
  return Status::OK();
}

Status GpuEngine::Impl::Forget(const TableView& table) {
  MutexLock lock(&mu_);
  DeviceScope scope;
  EMBSTORE_RETURN_IF_ERROR(scope.Enter(device_.ordinal));
  Status st = FinishPrefetch(/*wait=*/true);
  const TableIdentity id = IdentityOf(table);
  if (resident_ && resident_id_ == id) LeaveResident();
  for (size_t i = 0; i < tables_.size(); ++i) {
    if (!(tables_[i].first == id)) continue;
    const uint32_t tid = tables_[i].second;
    cache_->EraseIf([tid](uint64_t key) { return CacheKeyTable(key) == tid; });
    tables_.erase(tables_.begin() + static_cast<std::ptrdiff_t>(i));
    break;
  }
  return st;
}

Status GpuEngine::Impl::Clear() {
  MutexLock lock(&mu_);
  DeviceScope scope;
  EMBSTORE_RETURN_IF_ERROR(scope.Enter(device_.ordinal));
  Status st = FinishPrefetch(/*wait=*/true);
  resident_ = false;
  resident_allowed_ = true;
  if (cache_ != nullptr) cache_->Clear();
  tables_.clear();
  return st;
}

CacheStats GpuEngine::Impl::stats() const {
  MutexLock lock(&mu_);
  CacheStats s = counters_;
  if (cache_ != nullptr) {
    AddCounters(&s, cache_->counters());
    s.capacity_rows = cache_->capacity();
    s.resident_rows = resident_ ? resident_id_.rows : cache_->size();
  }
  return s;
}

void GpuEngine::Impl::ResetStats() {
  MutexLock lock(&mu_);
  counters_ = CacheStats();
  if (cache_ != nullptr) cache_->ResetCounters();
}

}  // namespace embstore::cuda
