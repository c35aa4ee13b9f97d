// GpuEngine for CUDA builds. Host code only (compiled by the C++ compiler
// against the CUDA runtime); the kernels are in pooling_kernels.cu.
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
#include <cuda_runtime_api.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cuda/batch_prep.h"
#include "cuda/cache_policy.h"
#include "cuda/cuda_check.h"
#include "cuda/gpu_engine.h"
#include "cuda/pool_math.h"
#include "cuda/pooling_kernels.h"
#include "engine/guarded.h"
#include "engine/plan.h"
#include "engine/threads.h"

namespace embstore::cuda {
namespace {

constexpr int64_t kDefaultStagingBytes = int64_t{32} << 20;

using engine::Guarded;  // no exception leaves the public API

size_t Grown(size_t want, size_t have) {
  const size_t kStep = size_t{1} << 20;
  const size_t target = std::max(want, have + have / 2);
  return (target + kStep - 1) / kStep * kStep;
}

// Device memory, freed on destruction. Grow() replaces the allocation, so
// the caller makes sure no queued work still uses it.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { Free(); }

  Status Grow(size_t bytes, bool exact = false) {
    if (bytes <= bytes_) return Status::OK();
    Free();
    const size_t want = exact ? bytes : Grown(bytes, bytes_);
    EMBSTORE_CUDA_CHECK(cudaMalloc(&ptr_, want));
    bytes_ = want;
    return Status::OK();
  }
  void Free() {
    if (ptr_ != nullptr) cudaFree(ptr_);  // only fails for a dead context
    ptr_ = nullptr;
    bytes_ = 0;
  }
  uint8_t* data() const { return static_cast<uint8_t*>(ptr_); }
  size_t size() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Pinned (page-locked) host memory, so that copies from it are true DMA and
// asynchronous.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer() { Free(); }

  Status Grow(size_t bytes) {
    if (bytes <= bytes_) return Status::OK();
    Free();
    const size_t want = Grown(bytes, bytes_);
    EMBSTORE_CUDA_CHECK(cudaHostAlloc(&ptr_, want, cudaHostAllocDefault));
    bytes_ = want;
    return Status::OK();
  }
  void Free() {
    if (ptr_ != nullptr) cudaFreeHost(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  uint8_t* data() const { return static_cast<uint8_t*>(ptr_); }
  size_t size() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Makes `device` current for the scope and restores the caller's device.
class DeviceScope {
 public:
  Status Enter(int device) {
    EMBSTORE_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) {
      EMBSTORE_CUDA_CHECK(cudaSetDevice(device));
      restore_ = true;
    }
    return Status::OK();
  }
  ~DeviceScope() {
    if (restore_) cudaSetDevice(previous_);
  }

 private:
  int previous_ = 0;
  bool restore_ = false;
};

// Double-buffered staging of misses: pinned host buffers and their device
// twins, each with an event recorded when the scatter that read it is done.
struct Staging {
  PinnedBuffer host[2];
  DeviceBuffer device[2];
  cudaEvent_t done[2] = {nullptr, nullptr};
  int next = 0;

  Status Init() {
    for (cudaEvent_t& e : done) {
      EMBSTORE_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    }
    return Status::OK();
  }
  void Destroy() {
    for (cudaEvent_t& e : done) {
      if (e != nullptr) cudaEventDestroy(e);
      e = nullptr;
    }
  }
  // Grows both buffers to `bytes`, first waiting for queued work on them.
  Status Reserve(size_t bytes) {
    if (bytes <= host[0].size() && bytes <= device[0].size() && bytes <= host[1].size() &&
        bytes <= device[1].size()) {
      return Status::OK();
    }
    for (cudaEvent_t e : done) EMBSTORE_CUDA_CHECK(cudaEventSynchronize(e));
    for (int i = 0; i < 2; ++i) {
      EMBSTORE_RETURN_IF_ERROR(host[i].Grow(bytes));
      EMBSTORE_RETURN_IF_ERROR(device[i].Grow(bytes));
    }
    return Status::OK();
  }
};

// Copies the rows of `fills` into their slots on `stream`, through `staging`
// (chunked, the gather of one chunk overlapping the copy of the previous).
struct SlotArena {
  uint8_t* rows = nullptr;
  float* qparams = nullptr;
  float* row_scale = nullptr;
};

Status FillSlots(const TableView& table, const SlotLayout& layout, const SlotArena& arena,
                 std::span<const int64_t> rows, std::span<const int32_t> slots,
                 int64_t staging_bytes, int max_threads, Staging* staging, cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(rows.size());
  if (n == 0) return Status::OK();
  const int64_t chunk = StagingRowsFor(staging_bytes, layout);
  EMBSTORE_RETURN_IF_ERROR(staging->Reserve(
      static_cast<size_t>(ComputeStagingLayout(std::min(chunk, n), layout).total)));
  for (int64_t first = 0; first < n; first += chunk) {
    const int64_t count = std::min(chunk, n - first);
    const int i = staging->next;
    staging->next ^= 1;
    // The copy and scatter that last used buffer i must be done.
    EMBSTORE_CUDA_CHECK(cudaEventSynchronize(staging->done[i]));
    const StagingLayout sl = ComputeStagingLayout(count, layout);
    uint8_t* host = staging->host[i].data();
    const auto chunk_rows = rows.subspan(static_cast<size_t>(first), static_cast<size_t>(count));
    const auto chunk_slots = slots.subspan(static_cast<size_t>(first), static_cast<size_t>(count));
    if (max_threads > 1) {
      tbb::task_arena limited(engine::CapThreads(max_threads));
      limited.execute([&] { GatherRows(table, layout, chunk_rows, chunk_slots, sl, host, true); });
    } else {
      GatherRows(table, layout, chunk_rows, chunk_slots, sl, host, max_threads != 1);
    }
    uint8_t* dev = staging->device[i].data();
    EMBSTORE_CUDA_CHECK(
        cudaMemcpyAsync(dev, host, static_cast<size_t>(sl.total), cudaMemcpyHostToDevice, stream));
    ScatterArgs sa;
    sa.staged_rows = dev + sl.rows_at;
    sa.staged_qparams =
        sl.qparams_at >= 0 ? reinterpret_cast<const float*>(dev + sl.qparams_at) : nullptr;
    sa.slots = reinterpret_cast<const int32_t*>(dev + sl.slots_at);
    sa.count = count;
    sa.row_bytes = layout.row_bytes;
    sa.rows = arena.rows;
    sa.qparams = layout.quantized ? arena.qparams : nullptr;
    EMBSTORE_RETURN_IF_ERROR(LaunchScatter(sa, stream));
    EMBSTORE_CUDA_CHECK(cudaEventRecord(staging->done[i], stream));
  }
  return Status::OK();
}

// The rows and slots of a list of fills.
void SplitFills(std::span<const SlotCache::Fill> fills, std::vector<int64_t>* rows,
                std::vector<int32_t>* slots) {
  rows->resize(fills.size());
  slots->resize(fills.size());
  for (size_t k = 0; k < fills.size(); ++k) {
    (*rows)[k] = CacheKeyRow(fills[k].key);
    (*slots)[k] = fills[k].slot;
  }
}

int64_t RowTransferBytes(const SlotLayout& layout) {
  return layout.row_bytes + (layout.quantized ? 8 : 0);
}

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

PoolKind KindOf(PoolingMode mode) {
  switch (mode) {
    case PoolingMode::kSum:
      return PoolKind::kSum;
    case PoolingMode::kMean:
      return PoolKind::kMean;
    case PoolingMode::kMax:
      return PoolKind::kMax;
  }
  return PoolKind::kMean;
}

}  // namespace

// ---- Impl ----------------------------------------------------------------------------

class GpuEngine::Impl {
 public:
  Impl(const GpuEngineOptions& options, DeviceInfo device)
      : options_(options), device_(std::move(device)) {
    if (options_.staging_bytes <= 0) options_.staging_bytes = kDefaultStagingBytes;
  }
  ~Impl();

  Status Init();
  Status Run(const TableView& table, const engine::BagPlan& plan, const QueryOptions& options,
             float* out, bool out_on_device);
  Status Prefetch(const TableView& table, const engine::BagPlan& plan);
  Status Sync();
  Status Forget(const TableView& table);
  Status Clear();
  CacheStats stats() const;
  void ResetStats();
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
  // gather and copy the worker thread runs.
  struct PrefetchJob {
    TableView table;
    SlotLayout layout;
    SlotArena arena;
    std::vector<int64_t> rows;   // to copy in ...
    std::vector<int32_t> slots;  // ... to these slots (pinned until finished)
    // Set by the worker under job_mu_.
    bool done = false;
    Status status;
  };

  // All REQUIRE mu_ held.
  Status EnsureLayout(const TableView& table);
  Result<uint32_t> TableIdFor(const TableView& table);
  Status FinishPrefetch(bool wait);
  Status TakeDeferredError();
  Status RunPass(const TableView& table, const SubBatch& pass, const SlotCache::Acquired& acquired,
                 const MetaLayout& meta, int64_t meta_at, const QueryOptions& options,
                 float* out_base, int max_threads);
  Status LaunchKernels(const MetaLayout& meta, const uint8_t* dmeta, const int32_t* norm_slots,
                       int64_t norm_count, const QueryOptions& options, float* out);
  Status EnterResident(const TableView& table, int max_threads);
  void LeaveResident();
  Status RunResident(const engine::BagPlan& plan, const QueryOptions& options, float* out,
                     bool out_on_device, size_t out_bytes);

  // Worker thread.
  void WorkerLoop();
  Status RunJob(PrefetchJob* job);

  GpuEngineOptions options_;
  DeviceInfo device_;

  mutable std::mutex mu_;  // guards everything below except the worker's own state
  cudaStream_t compute_ = nullptr;
  cudaStream_t copy_ = nullptr;  // prefetch copies
  cudaEvent_t prefetch_done_ = nullptr;
  SlotLayout layout_;
  std::unique_ptr<SlotCache> cache_;
  DeviceBuffer arena_rows_, arena_qparams_, arena_scale_;
  SlotArena arena_;
  std::vector<std::pair<TableIdentity, uint32_t>> tables_;
  uint32_t next_table_id_ = 0;
  std::vector<uint8_t> in_flight_;  // per slot: being filled by the pending prefetch
  bool resident_ = false;           // resident mode: resident_id_'s row r is in slot r
  bool resident_allowed_ = true;    // false once two tables shared this layout
  TableIdentity resident_id_{};
  std::unique_ptr<PrefetchJob> pending_;
  Status deferred_;  // a failed prefetch, to report on the next call
  Staging batch_staging_;
  PinnedBuffer meta_host_;
  DeviceBuffer meta_device_;
  DeviceBuffer out_device_;
  CacheStats counters_;  // engine fields, and those of replaced caches
  FlatIdMap dedup_map_;  // scratch for DedupBags

  // Worker: job hand-over. The worker owns prefetch_staging_.
  std::mutex job_mu_;
  std::condition_variable job_cv_;
  PrefetchJob* job_ = nullptr;  // submitted, not yet taken
  bool stop_ = false;
  std::thread worker_;
  Staging prefetch_staging_;
};

Status GpuEngine::Impl::Init() {
  DeviceScope scope;
  EMBSTORE_RETURN_IF_ERROR(scope.Enter(device_.ordinal));
  EMBSTORE_CUDA_CHECK(cudaStreamCreateWithFlags(&compute_, cudaStreamNonBlocking));
  EMBSTORE_CUDA_CHECK(cudaStreamCreateWithFlags(&copy_, cudaStreamNonBlocking));
  EMBSTORE_CUDA_CHECK(cudaEventCreateWithFlags(&prefetch_done_, cudaEventDisableTiming));
  EMBSTORE_RETURN_IF_ERROR(batch_staging_.Init());
  EMBSTORE_RETURN_IF_ERROR(prefetch_staging_.Init());
  worker_ = std::thread([this] { WorkerLoop(); });
  return Status::OK();
}

GpuEngine::Impl::~Impl() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    DeviceScope scope;
    (void)scope.Enter(device_.ordinal);
    (void)FinishPrefetch(/*wait=*/true);
    if (compute_ != nullptr) cudaStreamSynchronize(compute_);
  }
  if (worker_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(job_mu_);
      stop_ = true;
    }
    job_cv_.notify_all();
    worker_.join();
  }
  DeviceScope scope;
  (void)scope.Enter(device_.ordinal);
  batch_staging_.Destroy();
  prefetch_staging_.Destroy();
  if (prefetch_done_ != nullptr) cudaEventDestroy(prefetch_done_);
  if (copy_ != nullptr) cudaStreamDestroy(copy_);
  if (compute_ != nullptr) cudaStreamDestroy(compute_);
  // Device and pinned buffers free themselves.
}

Status GpuEngine::Impl::TakeDeferredError() {
  Status st = std::move(deferred_);
  deferred_ = Status::OK();
  return st;
}

Status GpuEngine::Impl::FinishPrefetch(bool wait) {
  if (pending_ == nullptr) return Status::OK();
  {
    std::unique_lock<std::mutex> lock(job_mu_);
    if (!pending_->done) {
      if (!wait) return Status::OK();
      job_cv_.wait(lock, [&] { return pending_->done; });
    }
  }
  std::unique_ptr<PrefetchJob> job = std::move(pending_);
  for (const int32_t s : job->slots) {
    if (s >= 0 && s < static_cast<int32_t>(in_flight_.size())) in_flight_[s] = 0;
  }
  Status st = job->status;
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
  const int lanes = LanesPerRow(layout_.vecs_per_row);
  const bool renorm = options.max_norm.has_value();
  if (renorm) {
    NormArgs na;
    na.rows = arena_.rows;
    na.row_bytes = layout_.row_bytes;
    na.qparams = arena_.qparams;
    na.slots = norm_slots;
    na.count = norm_count;
    na.dim = layout_.dim;
    na.vecs_per_row = layout_.vecs_per_row;
    na.lanes = lanes;
    na.norm_type = engine::TorchNormType(options.norm_type);
    na.kind = NormKindFor(na.norm_type);
    na.max_norm = *options.max_norm;
    na.row_scale = arena_.row_scale;
    EMBSTORE_RETURN_IF_ERROR(LaunchRowScales(layout_.dtype, na, compute_));
  }
  PoolArgs pa;
  pa.rows = arena_.rows;
  pa.row_bytes = layout_.row_bytes;
  pa.qparams = arena_.qparams;
  pa.row_scale = renorm ? arena_.row_scale : nullptr;
  pa.bag_offsets = reinterpret_cast<const int64_t*>(dmeta + meta.offsets_at);
  pa.entry_slot = reinterpret_cast<const int32_t*>(dmeta + meta.slots_at);
  pa.entry_weight =
      meta.weights_at >= 0 ? reinterpret_cast<const float*>(dmeta + meta.weights_at) : nullptr;
  pa.num_bags = meta.bags;
  pa.dim = layout_.dim;
  pa.vecs_per_row = layout_.vecs_per_row;
  pa.lanes = lanes;
  pa.out = out;
  pa.vector_store = layout_.dim % 4 == 0 && reinterpret_cast<uintptr_t>(pa.out) % 16 == 0;
  return LaunchPool(layout_.dtype, KindOf(options.mode), pa, compute_);
}

Status GpuEngine::Impl::RunPass(const TableView& table, const SubBatch& pass,
                                const SlotCache::Acquired& acquired, const MetaLayout& meta,
                                int64_t meta_at, const QueryOptions& options, float* out_base,
                                int max_threads) {
  std::vector<int64_t> rows;
  std::vector<int32_t> slots;
  SplitFills(acquired.fills, &rows, &slots);
  EMBSTORE_RETURN_IF_ERROR(FillSlots(table, layout_, arena_, rows, slots, options_.staging_bytes,
                                     max_threads, &batch_staging_, compute_));
  uint8_t* dmeta = meta_device_.data() + meta_at;
  EMBSTORE_CUDA_CHECK(cudaMemcpyAsync(dmeta, meta_host_.data() + meta_at,
                                      static_cast<size_t>(meta.total), cudaMemcpyHostToDevice,
                                      compute_));
  const int32_t* norm_slots =
      meta.uniques_at >= 0 ? reinterpret_cast<const int32_t*>(dmeta + meta.uniques_at) : nullptr;
  return LaunchKernels(meta, dmeta, norm_slots, meta.uniques, options,
                       out_base + pass.first_bag * layout_.dim);
}

// ---- Resident mode ---------------------------------------------------------------------
//
// When the cache has a slot for every row of the first table it serves, the
// whole table is copied in once (slot = row) and batches on it skip the
// per-id bookkeeping: no dedup, no lookups, the ids are the slots. Another
// table of the same layout ends the mode for good (until Clear() or a new
// layout): the cache starts over as a cache, so that alternating tables do
// not copy whole tables back and forth.

Status GpuEngine::Impl::EnterResident(const TableView& table, int max_threads) {
  constexpr int64_t kChunk = int64_t{1} << 20;
  std::vector<int64_t> rows;
  std::vector<int32_t> slots;
  for (int64_t first = 0; first < table.rows; first += kChunk) {
    const int64_t n = std::min(kChunk, table.rows - first);
    rows.resize(static_cast<size_t>(n));
    slots.resize(static_cast<size_t>(n));
    for (int64_t k = 0; k < n; ++k) {
      rows[k] = first + k;
      slots[k] = static_cast<int32_t>(first + k);
    }
    EMBSTORE_RETURN_IF_ERROR(FillSlots(table, layout_, arena_, rows, slots, options_.staging_bytes,
                                       max_threads, &batch_staging_, compute_));
  }
  EMBSTORE_CUDA_CHECK(cudaStreamSynchronize(compute_));
  resident_ = true;
  resident_id_ = IdentityOf(table);
  counters_.lookups += table.rows;
  counters_.misses += table.rows;
  counters_.bytes_copied += table.rows * RowTransferBytes(layout_);
  return Status::OK();
}

void GpuEngine::Impl::LeaveResident() {
  if (!resident_) return;
  resident_ = false;
  cache_->Clear();
  tables_.clear();
}

Status GpuEngine::Impl::RunResident(const engine::BagPlan& plan, const QueryOptions& options,
                                    float* out, bool out_on_device, size_t out_bytes) {
  const DirectPlan direct = PlanDirect(plan);
  const MetaLayout& meta = direct.layout;
  EMBSTORE_RETURN_IF_ERROR(meta_host_.Grow(static_cast<size_t>(meta.total)));
  EMBSTORE_RETURN_IF_ERROR(meta_device_.Grow(static_cast<size_t>(meta.total)));
  FillDirectMeta(plan, direct, meta_host_.data(), options.max_threads != 1);
  float* out_dev = out;
  if (!out_on_device) {
    EMBSTORE_RETURN_IF_ERROR(out_device_.Grow(out_bytes));
    out_dev = reinterpret_cast<float*>(out_device_.data());
  }
  EMBSTORE_CUDA_CHECK(cudaMemcpyAsync(meta_device_.data(), meta_host_.data(),
                                      static_cast<size_t>(meta.total), cudaMemcpyHostToDevice,
                                      compute_));
  const uint8_t* dmeta = meta_device_.data();
  // max_norm scales for every entry's row (a row used twice is computed
  // twice, to the same value).
  EMBSTORE_RETURN_IF_ERROR(LaunchKernels(meta, dmeta,
                                         reinterpret_cast<const int32_t*>(dmeta + meta.slots_at),
                                         meta.entries, options, out_dev));
  if (!out_on_device) {
    EMBSTORE_CUDA_CHECK(cudaMemcpyAsync(out, out_dev, out_bytes, cudaMemcpyDeviceToHost, compute_));
  }
  EMBSTORE_CUDA_CHECK(cudaStreamSynchronize(compute_));
  counters_.lookups += meta.entries;
  counters_.hits += meta.entries;
  ++counters_.sub_batches;
  return Status::OK();
}

Status GpuEngine::Impl::Run(const TableView& table, const engine::BagPlan& plan,
                            const QueryOptions& options, float* out, bool out_on_device) {
  std::lock_guard<std::mutex> lock(mu_);
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
        static_cast<int64_t>(acquired.fills.size()) * RowTransferBytes(layout_);
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

Status GpuEngine::Impl::Prefetch(const TableView& table, const engine::BagPlan& plan) {
  std::lock_guard<std::mutex> lock(mu_);
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
  counters_.bytes_copied += static_cast<int64_t>(job->slots.size()) * RowTransferBytes(layout_);
  // No batch work is queued (batches end synchronized), so the prefetch's
  // scatter cannot overtake a kernel still reading an evicted slot.
  pending_ = std::move(job);
  {
    std::lock_guard<std::mutex> jl(job_mu_);
    job_ = pending_.get();
  }
  job_cv_.notify_all();
  return Status::OK();
}

void GpuEngine::Impl::WorkerLoop() {
  bool device_set = cudaSetDevice(device_.ordinal) == cudaSuccess;
  for (;;) {
    PrefetchJob* job = nullptr;
    {
      std::unique_lock<std::mutex> lock(job_mu_);
      job_cv_.wait(lock, [&] { return stop_ || job_ != nullptr; });
      if (job_ == nullptr) return;  // stop_
      job = job_;
      job_ = nullptr;
    }
    Status st = device_set ? Guarded<Status>([&] { return RunJob(job); })
                           : Status::Internal("prefetch thread: cannot select the GPU");
    {
      std::lock_guard<std::mutex> lock(job_mu_);
      job->status = std::move(st);
      job->done = true;
    }
    job_cv_.notify_all();
  }
}

Status GpuEngine::Impl::RunJob(PrefetchJob* job) {
  EMBSTORE_RETURN_IF_ERROR(FillSlots(job->table, job->layout, job->arena, job->rows, job->slots,
                                     options_.staging_bytes, /*max_threads=*/0, &prefetch_staging_,
                                     copy_));
  EMBSTORE_CUDA_CHECK(cudaEventRecord(prefetch_done_, copy_));
  return Status::OK();
}

Status GpuEngine::Impl::Sync() {
  std::lock_guard<std::mutex> lock(mu_);
  DeviceScope scope;
  EMBSTORE_RETURN_IF_ERROR(scope.Enter(device_.ordinal));
  EMBSTORE_RETURN_IF_ERROR(TakeDeferredError());
  EMBSTORE_RETURN_IF_ERROR(FinishPrefetch(/*wait=*/true));
  EMBSTORE_CUDA_CHECK(cudaStreamSynchronize(compute_));
  return Status::OK();
}

Status GpuEngine::Impl::Forget(const TableView& table) {
  std::lock_guard<std::mutex> lock(mu_);
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
  std::lock_guard<std::mutex> lock(mu_);
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
  std::lock_guard<std::mutex> lock(mu_);
  CacheStats s = counters_;
  if (cache_ != nullptr) {
    AddCounters(&s, cache_->counters());
    s.capacity_rows = cache_->capacity();
    s.resident_rows = resident_ ? resident_id_.rows : cache_->size();
  }
  return s;
}

void GpuEngine::Impl::ResetStats() {
  std::lock_guard<std::mutex> lock(mu_);
  counters_ = CacheStats();
  if (cache_ != nullptr) cache_->ResetCounters();
}

// ---- GpuEngine ---------------------------------------------------------------------

GpuEngine::GpuEngine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GpuEngine::~GpuEngine() = default;

Result<std::unique_ptr<GpuEngine>> GpuEngine::Create(const GpuEngineOptions& options) {
  return Guarded<Result<std::unique_ptr<GpuEngine>>>([&]() -> Result<std::unique_ptr<GpuEngine>> {
    if (options.policy != CachePolicy::kLru && options.policy != CachePolicy::kLfu) {
      return Status::InvalidArgument("unknown cache policy (expected lru or lfu)");
    }
    if (options.staging_bytes < 0) {
      return Status::InvalidArgument("staging_bytes must be >= 0");
    }
    // Check the sizes now (against f32 rows of dim 1) so a typo fails early.
    EMBSTORE_RETURN_IF_ERROR(
        CacheCapacityRows(options.cache_rows, options.cache_bytes, MakeSlotLayout(DType::kF32, 1))
            .status());
    EMBSTORE_ASSIGN_OR_RETURN(const std::vector<DeviceInfo> devices, ListDevices());
    if (options.device < 0 || options.device >= static_cast<int>(devices.size())) {
      return Status::InvalidArgument("no CUDA device " + std::to_string(options.device) +
                                     " (this machine has " + std::to_string(devices.size()) + ")");
    }
    const DeviceInfo& info = devices[static_cast<size_t>(options.device)];
    if (info.compute_major < 9) {
      return Status::NotSupported("no GPU: cuda:" + std::to_string(info.ordinal) + " (" +
                                  info.name + ") is sm_" + std::to_string(info.compute_major) +
                                  std::to_string(info.compute_minor) +
                                  ", but this build has code for sm_90 and newer only");
    }
    auto impl = std::make_unique<Impl>(options, info);
    EMBSTORE_RETURN_IF_ERROR(impl->Init());
    return std::unique_ptr<GpuEngine>(new GpuEngine(std::move(impl)));
  });
}

Status GpuEngine::EmbeddingBag(const TableView& table, const BagRequest& request,
                               const QueryOptions& options, std::span<float> host_out) {
  return Guarded<Status>([&]() -> Status {
    EMBSTORE_ASSIGN_OR_RETURN(const engine::BagPlan plan,
                              engine::PlanBags(table, request, options));
    EMBSTORE_RETURN_IF_ERROR(engine::ValidatePoolInputs(table, plan, options, host_out.size()));
    return impl_->Run(table, plan, options, host_out.data(), /*out_on_device=*/false);
  });
}

Result<PooledOutput> GpuEngine::EmbeddingBag(const TableView& table, const BagRequest& request,
                                             const QueryOptions& options) {
  return Guarded<Result<PooledOutput>>([&]() -> Result<PooledOutput> {
    EMBSTORE_ASSIGN_OR_RETURN(const engine::BagPlan plan,
                              engine::PlanBags(table, request, options));
    PooledOutput result;
    result.shape = plan.OutputShape(table.dim);
    result.values.resize(static_cast<size_t>(plan.num_bags()) * static_cast<size_t>(table.dim));
    EMBSTORE_RETURN_IF_ERROR(
        engine::ValidatePoolInputs(table, plan, options, result.values.size()));
    EMBSTORE_RETURN_IF_ERROR(impl_->Run(table, plan, options, result.values.data(), false));
    return result;
  });
}

namespace {
Status CheckDeviceOut(const float* device_out, size_t count, int device) {
  if (count == 0) return Status::OK();
  if (device_out == nullptr) return Status::InvalidArgument("device_out is null");
  cudaPointerAttributes attr;
  EMBSTORE_CUDA_CHECK(cudaPointerGetAttributes(&attr, device_out));
  const bool on_device = attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
  if (!on_device || attr.device != device) {
    return Status::InvalidArgument("device_out is not device memory of cuda:" +
                                   std::to_string(device));
  }
  return Status::OK();
}
}  // namespace

Status GpuEngine::EmbeddingBagToDevice(const TableView& table, const BagRequest& request,
                                       const QueryOptions& options, float* device_out,
                                       size_t count) {
  return Guarded<Status>([&]() -> Status {
    EMBSTORE_ASSIGN_OR_RETURN(const engine::BagPlan plan,
                              engine::PlanBags(table, request, options));
    EMBSTORE_RETURN_IF_ERROR(engine::ValidatePoolInputs(table, plan, options, count));
    EMBSTORE_RETURN_IF_ERROR(CheckDeviceOut(device_out, count, impl_->device().ordinal));
    return impl_->Run(table, plan, options, device_out, /*out_on_device=*/true);
  });
}

Status GpuEngine::BatchedEmbeddingBag(const TableView& table, const BatchedBagRequest& request,
                                      const QueryOptions& options, std::span<float> host_out) {
  return Guarded<Status>([&]() -> Status {
    EMBSTORE_ASSIGN_OR_RETURN(const engine::BagPlan plan,
                              engine::PlanBatchedBags(table, request, options));
    EMBSTORE_RETURN_IF_ERROR(engine::ValidatePoolInputs(table, plan, options, host_out.size()));
    return impl_->Run(table, plan, options, host_out.data(), false);
  });
}

Result<PooledOutput> GpuEngine::BatchedEmbeddingBag(const TableView& table,
                                                    const BatchedBagRequest& request,
                                                    const QueryOptions& options) {
  return Guarded<Result<PooledOutput>>([&]() -> Result<PooledOutput> {
    EMBSTORE_ASSIGN_OR_RETURN(const engine::BagPlan plan,
                              engine::PlanBatchedBags(table, request, options));
    PooledOutput result;
    result.shape = plan.OutputShape(table.dim);
    result.values.resize(static_cast<size_t>(plan.num_bags()) * static_cast<size_t>(table.dim));
    EMBSTORE_RETURN_IF_ERROR(
        engine::ValidatePoolInputs(table, plan, options, result.values.size()));
    EMBSTORE_RETURN_IF_ERROR(impl_->Run(table, plan, options, result.values.data(), false));
    return result;
  });
}

Status GpuEngine::BatchedEmbeddingBagToDevice(const TableView& table,
                                              const BatchedBagRequest& request,
                                              const QueryOptions& options, float* device_out,
                                              size_t count) {
  return Guarded<Status>([&]() -> Status {
    EMBSTORE_ASSIGN_OR_RETURN(const engine::BagPlan plan,
                              engine::PlanBatchedBags(table, request, options));
    EMBSTORE_RETURN_IF_ERROR(engine::ValidatePoolInputs(table, plan, options, count));
    EMBSTORE_RETURN_IF_ERROR(CheckDeviceOut(device_out, count, impl_->device().ordinal));
    return impl_->Run(table, plan, options, device_out, true);
  });
}

Status GpuEngine::Prefetch(const TableView& table, IndexArray ids) {
  return Guarded<Status>([&]() -> Status {
    // Validated as one bag of a request, so the messages are the engine's.
    const int64_t zero = 0;
    BagRequest request;
    request.indices = ids;
    request.indices_shape = {ids.size};
    request.offsets = IndexArray(std::span<const int64_t>(&zero, 1));
    EMBSTORE_ASSIGN_OR_RETURN(const engine::BagPlan plan,
                              engine::PlanBags(table, request, QueryOptions()));
    return impl_->Prefetch(table, plan);
  });
}

Status GpuEngine::Sync() {
  return Guarded<Status>([&] { return impl_->Sync(); });
}
Status GpuEngine::Forget(const TableView& table) {
  return Guarded<Status>([&] { return impl_->Forget(table); });
}
Status GpuEngine::Clear() {
  return Guarded<Status>([&] { return impl_->Clear(); });
}
CacheStats GpuEngine::stats() const { return impl_->stats(); }
void GpuEngine::ResetStats() { impl_->ResetStats(); }
const DeviceInfo& GpuEngine::device() const { return impl_->device(); }

}  // namespace embstore::cuda
