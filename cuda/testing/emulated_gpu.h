// Test-only: the GPU engine's batch pipeline on the CPU, for the cuda/ test
// suites (tests/cuda_*_test.cc). Header-only; never linked into the library.
//
// EmulatedGpu::Run mirrors GpuEngine::Impl::Run (cuda/gpu_engine_impl.cc)
// step by step: the host preparation of cuda/batch_prep.h, the cache of
// cuda/cache_policy.h, the kernels' arguments as the engine builds them
// (cuda/kernel_args.h) and the very arithmetic the device kernels run
// (cuda/pool_math.h is host+device), driven by loops where the GPU has
// threads. Device memory is host arrays, poisoned as fresh device memory may
// be.
#ifndef EMBSTORE_CUDA_TESTING_EMULATED_GPU_H_
#define EMBSTORE_CUDA_TESTING_EMULATED_GPU_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "cuda/batch_prep.h"
#include "cuda/cache_policy.h"
#include "cuda/kernel_args.h"
#include "cuda/pool_math.h"
#include "cuda/slot_layout.h"
#include "embstore/query.h"
#include "embstore/status.h"
#include "embstore/types.h"
#include "engine/plan.h"

namespace embstore::cuda::cudatest {

// The device, as host arrays; the engine's orchestration, as plain calls.
class EmulatedGpu {
 public:
  EmulatedGpu(CachePolicy policy, int64_t cache_rows) : policy_(policy), cache_rows_(cache_rows) {}

  Status Run(const TableView& table, const engine::BagPlan& plan, const QueryOptions& options,
             float* out) {
    const int64_t bags = plan.num_bags(), dim = table.dim;
    if (bags * dim == 0) return Status::OK();
    if (plan.num_entries() == 0) {
      std::fill(out, out + bags * dim, 0.0f);
      return Status::OK();
    }
    EMBSTORE_RETURN_IF_ERROR(EnsureLayout(table));
    if (resident_ != nullptr && resident_ != table.data) {  // another table: leave for good
      resident_ = nullptr;
      resident_allowed_ = false;
      cache_->Clear();
      tables_.clear();
    }
    if (resident_ == nullptr && resident_allowed_ && cache_->size() == 0 &&
        cache_->capacity() >= table.rows) {
      std::vector<int64_t> rows(static_cast<size_t>(table.rows));
      std::vector<int32_t> slots(rows.size());
      for (int64_t r = 0; r < table.rows; ++r) rows[r] = slots[r] = static_cast<int32_t>(r);
      CopyIn(table, rows, slots);
      resident_ = table.data;
      fills_ += table.rows;
    }
    if (resident_ != nullptr) return RunResident(plan, options, out);

    EMBSTORE_ASSIGN_OR_RETURN(const DedupedBatch batch, DedupBags(plan));
    if (batch.num_entries() == 0) {
      std::fill(out, out + bags * dim, 0.0f);
      return Status::OK();
    }
    const uint32_t table_id = TableIdFor(table);
    EMBSTORE_ASSIGN_OR_RETURN(const std::vector<SubBatch> passes,
                              SplitBatch(batch, cache_->capacity() - cache_->pinned()));
    const bool renorm = options.max_norm.has_value();
    std::vector<int32_t> slot_of_unique(static_cast<size_t>(batch.num_unique()), -1);
    for (const SubBatch& pass : passes) {
      std::vector<uint64_t> keys;
      for (int32_t u : pass.uniques) keys.push_back(CacheKey(table_id, batch.unique_rows[u]));
      SlotCache::Acquired acquired;
      EMBSTORE_RETURN_IF_ERROR(cache_->Acquire(keys, &acquired));
      for (size_t i = 0; i < keys.size(); ++i) slot_of_unique[pass.uniques[i]] = acquired.slots[i];
      passes_++;
      fills_ += static_cast<int64_t>(acquired.fills.size());

      // FillSlots: gather into staging, "copy", scatter.
      std::vector<int64_t> rows;
      std::vector<int32_t> slots;
      for (const auto& f : acquired.fills) {
        rows.push_back(CacheKeyRow(f.key));
        slots.push_back(f.slot);
      }
      CopyIn(table, rows, slots);

      // Metadata as the device sees it.
      const MetaLayout ml = ComputeMetaLayout(batch, pass, renorm);
      std::vector<uint8_t> meta_buf(static_cast<size_t>(ml.total) + 16);
      uint8_t* meta = Align(meta_buf.data());
      FillMeta(batch, pass, slot_of_unique, ml, meta);
      const int32_t* norm_slots =
          renorm ? reinterpret_cast<const int32_t*>(meta + ml.uniques_at) : nullptr;
      Kernels(ml, meta, norm_slots, ml.uniques, options, out + pass.first_bag * dim);
      cache_->Release(acquired.slots);
    }
    return Status::OK();
  }

  bool resident() const { return resident_ != nullptr; }

  const SlotCache& cache() const { return *cache_; }

 private:
  // GatherRows into staging, then the scatter kernel's units.
  void CopyIn(const TableView& table, std::span<const int64_t> rows,
              std::span<const int32_t> slots) {
    if (rows.empty()) return;
    const StagingLayout sl = ComputeStagingLayout(static_cast<int64_t>(rows.size()), layout_);
    std::vector<uint8_t> staging(static_cast<size_t>(sl.total) + 16);
    uint8_t* st = Align(staging.data());
    GatherRows(table, layout_, rows, slots, sl, st, /*parallel=*/true);
    const ScatterArgs sa = MakeScatterArgs(layout_, arena(), sl, st);
    for (int64_t i = 0; i < sa.count; ++i) {
      for (int64_t u = 0; u < layout_.row_bytes / kVectorBytes; ++u) ScatterUnit(sa, i, u);
    }
  }

  // The row-scale kernel (over norm_slots) and the pooling kernel, on the
  // arguments the engine's LaunchKernels gives them (kernel_args.h).
  void Kernels(const MetaLayout& ml, const uint8_t* meta, const int32_t* norm_slots,
               int64_t norm_count, const QueryOptions& options, float* out) {
    const PassKernels k =
        MakePassKernels(layout_, arena(), ml, meta, norm_slots, norm_count, options, out);
    if (k.renorm) {
      const NormArgs& na = k.norm;
      for (int64_t i = 0; i < na.count; ++i) {
        NormPartial p = NormIdentity(na.kind);
        for (int lane = 0; lane < na.lanes; ++lane) {
          NormMerge(&p, na.kind, NormLane(layout_.dtype, na, i, lane));
        }
        na.row_scale[na.slots[i]] = NormScale(p, na.kind, na.norm_type, na.max_norm);
      }
    }
    for (int64_t b = 0; b < k.pool.num_bags; ++b) {
      for (int lane = 0; lane < k.pool.lanes; ++lane) Pool(layout_.dtype, k.kind, k.pool, b, lane);
    }
  }

  // The slots, as the engine's EnsureLayout points at them.
  SlotArena arena() {
    return SlotArena{rows_, layout_.quantized ? qparams_.data() : nullptr, row_scale_.data()};
  }

  Status RunResident(const engine::BagPlan& plan, const QueryOptions& options, float* out) {
    const DirectPlan direct = PlanDirect(plan);
    std::vector<uint8_t> meta_buf(static_cast<size_t>(direct.layout.total) + 16);
    uint8_t* meta = Align(meta_buf.data());
    FillDirectMeta(plan, direct, meta, /*parallel=*/true);
    ++passes_;
    Kernels(direct.layout, meta, reinterpret_cast<const int32_t*>(meta + direct.layout.slots_at),
            direct.layout.entries, options, out);
    return Status::OK();
  }

 public:
  int64_t passes() const { return passes_; }
  int64_t fills() const { return fills_; }

 private:
  static uint8_t* Align(uint8_t* p) {
    return reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(p) + 15) & ~uintptr_t{15});
  }

  static NormPartial NormLane(DType dtype, const NormArgs& a, int64_t i, int lane) {
    switch (dtype) {
      case DType::kF32:
        return cuda::NormLane<DType::kF32>(a, i, lane);
      case DType::kF16:
        return cuda::NormLane<DType::kF16>(a, i, lane);
      case DType::kBF16:
        return cuda::NormLane<DType::kBF16>(a, i, lane);
      case DType::kInt8Rowwise:
        return cuda::NormLane<DType::kInt8Rowwise>(a, i, lane);
    }
    return NormPartial();
  }

  template <DType kD>
  static void PoolD(PoolKind kind, const PoolArgs& a, int64_t b, int lane) {
    switch (kind) {
      case PoolKind::kSum:
        PoolBagLane<kD, PoolKind::kSum>(a, b, lane);
        break;
      case PoolKind::kMean:
        PoolBagLane<kD, PoolKind::kMean>(a, b, lane);
        break;
      case PoolKind::kMax:
        PoolBagLane<kD, PoolKind::kMax>(a, b, lane);
        break;
    }
  }
  static void Pool(DType dtype, PoolKind kind, const PoolArgs& a, int64_t b, int lane) {
    switch (dtype) {
      case DType::kF32:
        PoolD<DType::kF32>(kind, a, b, lane);
        break;
      case DType::kF16:
        PoolD<DType::kF16>(kind, a, b, lane);
        break;
      case DType::kBF16:
        PoolD<DType::kBF16>(kind, a, b, lane);
        break;
      case DType::kInt8Rowwise:
        PoolD<DType::kInt8Rowwise>(kind, a, b, lane);
        break;
    }
  }

  Status EnsureLayout(const TableView& table) {
    const SlotLayout want = MakeSlotLayout(table.dtype, table.dim);
    if (cache_ != nullptr && want == layout_) return Status::OK();
    EMBSTORE_ASSIGN_OR_RETURN(const int64_t capacity, CacheCapacityRows(cache_rows_, 0, want));
    layout_ = want;
    cache_ = std::make_unique<SlotCache>(policy_, capacity);
    // Fresh device memory holds garbage, not zeros.
    arena_.assign(static_cast<size_t>(capacity * want.row_bytes) + 16, 0xCD);
    rows_ = Align(arena_.data());
    qparams_.assign(static_cast<size_t>(2 * capacity), std::nanf(""));
    row_scale_.assign(static_cast<size_t>(capacity), std::nanf(""));
    tables_.clear();
    resident_ = nullptr;
    resident_allowed_ = true;
    return Status::OK();
  }

  uint32_t TableIdFor(const TableView& table) {
    for (size_t i = 0; i < tables_.size(); ++i) {
      if (tables_[i] == table.data) return static_cast<uint32_t>(i);
    }
    tables_.push_back(table.data);
    return static_cast<uint32_t>(tables_.size() - 1);
  }

  CachePolicy policy_;
  int64_t cache_rows_;
  SlotLayout layout_;
  std::unique_ptr<SlotCache> cache_;
  std::vector<uint8_t> arena_;
  uint8_t* rows_ = nullptr;
  std::vector<float> qparams_, row_scale_;
  std::vector<const uint8_t*> tables_;
  const uint8_t* resident_ = nullptr;  // resident mode: this table's row r is in slot r
  bool resident_allowed_ = true;
  int64_t passes_ = 0, fills_ = 0;
};

}  // namespace embstore::cuda::cudatest

#endif  // EMBSTORE_CUDA_TESTING_EMULATED_GPU_H_
