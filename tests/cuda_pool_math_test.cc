// The GPU batch pipeline on the CPU: plan (engine) -> DedupBags -> SplitBatch
// -> SlotCache::Acquire -> GatherRows -> ScatterUnit -> NormLane/NormScale ->
// PoolBagLane, i.e. the host preparation of cuda/batch_prep.h and the very
// arithmetic the device kernels run (cuda/pool_math.h is host+device), driven
// by loops where the GPU has threads. Runs everywhere (no GPU needed) and
// compares with the engine's scalar reference (engine/kernels_ref.h): the
// kernels are meant to round exactly like it, so outputs must be identical
// bit for bit, except where max_norm's norm is summed in another order (then
// to ~1 ulp).
//
// EmulatedGpu::Run mirrors GpuEngine::Impl::Run (cuda/gpu_engine_cuda.cc)
// step by step; the GPU tests (cuda_engine_test) check the real thing.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "cuda/batch_prep.h"
#include "cuda/cache_policy.h"
#include "cuda/pool_math.h"
#include "cuda/slot_layout.h"
#include "cuda/testing/random_bags.h"
#include "embstore/query.h"
#include "engine/kernels_ref.h"
#include "engine/plan.h"
#include "engine_test_util.h"

namespace embstore::cuda {
namespace {

using test::TestTable;
using namespace embstore::cuda::cudatest;  // NOLINT(google-build-using-namespace)

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
    ScatterArgs sa;
    sa.staged_rows = st + sl.rows_at;
    sa.staged_qparams =
        sl.qparams_at >= 0 ? reinterpret_cast<const float*>(st + sl.qparams_at) : nullptr;
    sa.slots = reinterpret_cast<const int32_t*>(st + sl.slots_at);
    sa.count = sl.n;
    sa.row_bytes = layout_.row_bytes;
    sa.rows = rows_;
    sa.qparams = layout_.quantized ? qparams_.data() : nullptr;
    for (int64_t i = 0; i < sa.count; ++i) {
      for (int64_t u = 0; u < layout_.row_bytes / kVectorBytes; ++u) ScatterUnit(sa, i, u);
    }
  }

  // The row-scale kernel (over norm_slots) and the pooling kernel.
  void Kernels(const MetaLayout& ml, const uint8_t* meta, const int32_t* norm_slots,
               int64_t norm_count, const QueryOptions& options, float* out) {
    const int lanes = LanesPerRow(layout_.vecs_per_row);
    const bool renorm = options.max_norm.has_value();
    if (renorm) {
      NormArgs na;
      na.rows = rows_;
      na.row_bytes = layout_.row_bytes;
      na.qparams = layout_.quantized ? qparams_.data() : nullptr;
      na.slots = norm_slots;
      na.count = norm_count;
      na.dim = layout_.dim;
      na.vecs_per_row = layout_.vecs_per_row;
      na.lanes = lanes;
      na.kind = NormKindFor(options.norm_type);
      na.norm_type = options.norm_type;
      na.max_norm = *options.max_norm;
      na.row_scale = row_scale_.data();
      for (int64_t i = 0; i < na.count; ++i) {
        NormPartial p = NormIdentity(na.kind);
        for (int lane = 0; lane < lanes; ++lane) {
          NormMerge(&p, na.kind, NormLane(layout_.dtype, na, i, lane));
        }
        row_scale_[na.slots[i]] = NormScale(p, na.kind, na.norm_type, na.max_norm);
      }
    }
    PoolArgs pa;
    pa.rows = rows_;
    pa.row_bytes = layout_.row_bytes;
    pa.qparams = layout_.quantized ? qparams_.data() : nullptr;
    pa.row_scale = renorm ? row_scale_.data() : nullptr;
    pa.bag_offsets = reinterpret_cast<const int64_t*>(meta + ml.offsets_at);
    pa.entry_slot = reinterpret_cast<const int32_t*>(meta + ml.slots_at);
    pa.entry_weight =
        ml.weights_at >= 0 ? reinterpret_cast<const float*>(meta + ml.weights_at) : nullptr;
    pa.num_bags = ml.bags;
    pa.dim = layout_.dim;
    pa.vecs_per_row = layout_.vecs_per_row;
    pa.lanes = lanes;
    pa.out = out;
    for (int64_t b = 0; b < pa.num_bags; ++b) {
      for (int lane = 0; lane < lanes; ++lane) Pool(layout_.dtype, options.mode, pa, b, lane);
    }
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
  static void PoolD(PoolingMode mode, const PoolArgs& a, int64_t b, int lane) {
    switch (mode) {
      case PoolingMode::kSum:
        PoolBagLane<kD, PoolKind::kSum>(a, b, lane);
        break;
      case PoolingMode::kMean:
        PoolBagLane<kD, PoolKind::kMean>(a, b, lane);
        break;
      case PoolingMode::kMax:
        PoolBagLane<kD, PoolKind::kMax>(a, b, lane);
        break;
    }
  }
  static void Pool(DType dtype, PoolingMode mode, const PoolArgs& a, int64_t b, int lane) {
    switch (dtype) {
      case DType::kF32:
        PoolD<DType::kF32>(mode, a, b, lane);
        break;
      case DType::kF16:
        PoolD<DType::kF16>(mode, a, b, lane);
        break;
      case DType::kBF16:
        PoolD<DType::kBF16>(mode, a, b, lane);
        break;
      case DType::kInt8Rowwise:
        PoolD<DType::kInt8Rowwise>(mode, a, b, lane);
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

const DType kDTypes[] = {DType::kF32, DType::kF16, DType::kBF16, DType::kInt8Rowwise};
const PoolingMode kModes[] = {PoolingMode::kSum, PoolingMode::kMean, PoolingMode::kMax};
const Layout kLayouts[] = {Layout::kOffsets, Layout::kLastOffset, Layout::k2D, Layout::kBatched};
const std::optional<double> kNorms[] = {std::nullopt,
                                        2.0,
                                        1.0,
                                        std::numeric_limits<double>::infinity(),
                                        -std::numeric_limits<double>::infinity(),
                                        3.0,
                                        0.5,
                                        0.0};

struct Totals {
  int64_t cases = 0, passes = 0, fills = 0, evictions = 0, resident = 0;
};

// Runs every dtype x mode x weighted x padding x max_norm x layout
// combination on one cache, which therefore sees hits, misses, evictions and
// (for small capacities) batches split into several passes.
// With `two_tables`, cases alternate between two tables of one layout, which
// share the cache (and keep a large cache out of resident mode).
void RunMatrix(int64_t dim, int64_t cache_rows, CachePolicy policy, uint64_t seed, Totals* totals,
               bool two_tables = false) {
  std::mt19937_64 rng(seed);
  const int64_t rows = 48;
  for (DType dtype : kDTypes) {
    const TestTable table = test::RandomTable(rows, dim, dtype, rng, /*aligned_stride=*/rng() % 2);
    const TestTable other = test::RandomTable(rows, dim, dtype, rng, /*aligned_stride=*/rng() % 2);
    EmulatedGpu gpu(policy, cache_rows);
    int64_t n = 0;
    for (PoolingMode mode : kModes) {
      for (bool weighted : {false, true}) {
        for (bool padding : {false, true}) {
          for (const std::optional<double>& norm : kNorms) {
            for (Layout layout : kLayouts) {
              SCOPED_TRACE(std::string(test::DTypeLabel(dtype)) + " dim " + std::to_string(dim) +
                           " " + PoolingModeName(mode) + (weighted ? " weighted" : "") +
                           (padding ? " padding" : "") +
                           " max_norm p=" + (norm ? std::to_string(*norm) : "none") + " " +
                           LayoutName(layout) + " cache " + std::to_string(cache_rows));
              const TableView view = (two_tables && (n++ % 2)) ? other.view() : table.view();
              const auto req = MakeRequest(rng, rows, layout, mode, weighted, padding, norm, 8);
              auto ref = Reference(view, *req);
              ASSERT_TRUE(ref.ok()) << ref.status().ToString();
              auto plan = Plan(view, *req);
              ASSERT_TRUE(plan.ok());
              std::vector<float> got(ref->values.size(), std::nanf("1"));  // poisoned
              const Status st = gpu.Run(view, *plan, req->options, got.data());
              ASSERT_TRUE(st.ok()) << st.ToString();
              const bool exact = !norm.has_value();
              for (size_t i = 0; i < got.size(); ++i) {
                const bool ok =
                    exact ? SameFloat(got[i], ref->values[i]) : NearFloat(got[i], ref->values[i]);
                ASSERT_TRUE(ok) << "element " << i << ": emulated GPU " << got[i] << ", reference "
                                << ref->values[i];
              }
              // And the CPU engine's fast kernels agree to rounding.
              auto cpu = CpuEngine(view, *req);
              ASSERT_TRUE(cpu.ok());
              for (size_t i = 0; i < got.size(); ++i) {
                ASSERT_TRUE(test::Close(got[i], cpu->values[i], 1e-5))
                    << "element " << i << ": " << got[i] << " vs CPU " << cpu->values[i];
              }
              ++totals->cases;
            }
          }
        }
      }
    }
    totals->resident += gpu.resident();
    totals->passes += gpu.passes();
    totals->fills += gpu.fills();
    totals->evictions += gpu.cache().counters().evictions;
  }
}

class PipelineTest : public ::testing::TestWithParam<int64_t> {};

TEST_P(PipelineTest, MatchesReferenceResident) {
  Totals t;
  RunMatrix(GetParam(), 1000, CachePolicy::kLru, 100 + GetParam(), &t);
  EXPECT_EQ(t.resident, 4);  // every dtype's engine went resident
  EXPECT_EQ(t.evictions, 0);
  std::printf("dim %lld: %lld cases, %lld passes, %lld rows copied\n",
              static_cast<long long>(GetParam()), static_cast<long long>(t.cases),
              static_cast<long long>(t.passes), static_cast<long long>(t.fills));
}

TEST_P(PipelineTest, MatchesReferenceLargeCacheTwoTables) {
  Totals t;
  RunMatrix(GetParam(), 1000, CachePolicy::kLfu, 400 + GetParam(), &t, /*two_tables=*/true);
  EXPECT_EQ(t.resident, 0);
  EXPECT_EQ(t.evictions, 0);
}

TEST_P(PipelineTest, MatchesReferenceSmallCacheLru) {
  Totals t;
  RunMatrix(GetParam(), 8, CachePolicy::kLru, 200 + GetParam(), &t);
  EXPECT_GT(t.evictions, 0);
  EXPECT_GT(t.passes, t.cases / 2);  // many batches needed several passes
}

TEST_P(PipelineTest, MatchesReferenceSmallCacheLfu) {
  Totals t;
  RunMatrix(GetParam(), 11, CachePolicy::kLfu, 300 + GetParam(), &t);
  EXPECT_GT(t.evictions, 0);
}

// Dims around the vector widths (4 f32, 8 f16/bf16, 16 int8 per 16 bytes),
// and past one warp of vectors (> 32 * 4 f32).
INSTANTIATE_TEST_SUITE_P(Dims, PipelineTest, ::testing::Values(1, 3, 8, 17, 37, 64, 130));

// ---- Targeted cases -----------------------------------------------------------------

TEST(PipelineSemantics, MaxTiesNanAndSignedZero) {
  // Max keeps the first of equal values (visible in the sign of zero) and a
  // NaN only when it comes first.
  const float nan = std::nanf("");
  const std::vector<float> values = {
      0.0f,  -1.0f, nan,  2.0f,  // row 0
      -0.0f, -1.0f, 1.0f, nan,   // row 1
      5.0f,  5.0f,  5.0f, 5.0f,  // row 2
  };
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    const TestTable table(values, 3, 4, dtype);
    const TableView view = table.view();
    const std::vector<int64_t> ids = {0, 1, 1, 0, 2, 0};
    const std::vector<int64_t> offsets = {0, 2, 4};
    BagRequest r;
    r.indices = std::span<const int64_t>(ids);
    r.offsets = std::span<const int64_t>(offsets);
    for (PoolingMode mode : kModes) {
      QueryOptions o;
      o.mode = mode;
      auto ref = engine::EmbeddingBagRef(view, r, o);
      ASSERT_TRUE(ref.ok());
      auto plan = engine::PlanBags(view, r, o);
      ASSERT_TRUE(plan.ok());
      EmulatedGpu gpu(CachePolicy::kLru, 16);
      std::vector<float> got(ref->values.size(), 123.0f);
      ASSERT_TRUE(gpu.Run(view, *plan, o, got.data()).ok());
      for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_TRUE(SameFloat(got[i], ref->values[i]))
            << PoolingModeName(mode) << " element " << i << ": " << got[i] << " vs "
            << ref->values[i];
      }
    }
  }
}

TEST(PipelineSemantics, AllPaddingAndEmptyBagsAreZero) {
  std::mt19937_64 rng(5);
  const TestTable table = test::RandomTable(10, 7, DType::kInt8Rowwise, rng);
  const std::vector<int64_t> ids = {3, 3, 3};
  const std::vector<int64_t> offsets = {0, 0, 3, 3};
  BagRequest r;
  r.indices = std::span<const int64_t>(ids);
  r.offsets = std::span<const int64_t>(offsets);
  QueryOptions o;
  o.mode = PoolingMode::kMax;
  o.padding_idx = 3;
  auto plan = engine::PlanBags(table.view(), r, o);
  ASSERT_TRUE(plan.ok());
  EmulatedGpu gpu(CachePolicy::kLru, 4);
  std::vector<float> got(4 * 7, 9.0f);  // 4 bags: [0,0) [0,3) [3,3) [3,3)
  ASSERT_TRUE(gpu.Run(table.view(), *plan, o, got.data()).ok());
  for (float v : got) EXPECT_EQ(v, 0.0f);
}

TEST(PipelineSplit, BagLargerThanCacheIsRefused) {
  std::mt19937_64 rng(6);
  const TestTable table = test::RandomTable(40, 4, DType::kF32, rng);
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < 10; ++i) ids.push_back(i);
  const std::vector<int64_t> offsets = {0, 3, 4};  // bag 1 has 6 distinct rows
  BagRequest r;
  r.indices = std::span<const int64_t>(ids);
  r.offsets = std::span<const int64_t>(offsets);
  auto plan = engine::PlanBags(table.view(), r, QueryOptions());
  ASSERT_TRUE(plan.ok());
  EmulatedGpu gpu(CachePolicy::kLru, 5);
  std::vector<float> got(3 * 4);
  const Status st = gpu.Run(table.view(), *plan, QueryOptions(), got.data());
  EXPECT_EQ(st.code(), Status::Code::kInvalidArgument);
  EXPECT_NE(st.message().find("bag 2 uses 6 distinct rows"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("holds only 5 rows"), std::string::npos) << st.message();
}

TEST(PipelineSplit, PassesAreGreedyRunsOfWholeBags) {
  DedupedBatch b;
  // 5 bags over rows: {0,1}, {1,2}, {3}, {4,5,6}, {}: capacity 3.
  b.unique_rows = {10, 11, 12, 13, 14, 15, 16};
  b.bag_offsets = {0, 2, 4, 5, 8, 8};
  b.entry_unique = {0, 1, 1, 2, 3, 4, 5, 6};
  auto passes = SplitBatch(b, 3);
  ASSERT_TRUE(passes.ok());
  ASSERT_EQ(passes->size(), 3u);
  EXPECT_EQ((*passes)[0].first_bag, 0);
  EXPECT_EQ((*passes)[0].last_bag, 2);
  EXPECT_EQ((*passes)[0].uniques, std::vector<int32_t>({0, 1, 2}));
  EXPECT_EQ((*passes)[1].first_bag, 2);
  EXPECT_EQ((*passes)[1].last_bag, 3);
  EXPECT_EQ((*passes)[1].uniques, std::vector<int32_t>({3}));
  EXPECT_EQ((*passes)[2].first_bag, 3);
  EXPECT_EQ((*passes)[2].last_bag, 5);
  EXPECT_EQ((*passes)[2].uniques, std::vector<int32_t>({4, 5, 6}));
  // Everything fits: one pass with every row.
  auto one = SplitBatch(b, 7);
  ASSERT_TRUE(one.ok());
  ASSERT_EQ(one->size(), 1u);
  EXPECT_EQ((*one)[0].uniques.size(), 7u);
  EXPECT_EQ((*one)[0].last_bag, 5);
}

TEST(PipelineDedup, DropsPaddingAndNumbersRowsInFirstUseOrder) {
  const std::vector<int32_t> ids = {5, 2, 5, 7, 2, 9};
  const std::vector<int64_t> offsets = {0, 3, 3};
  const std::vector<float> w = {1, 2, 3, 4, 5, 6};
  std::mt19937_64 rng(1);
  const TestTable table = test::RandomTable(10, 3, DType::kF32, rng);
  BagRequest r;
  r.indices = std::span<const int32_t>(ids);
  r.offsets = std::span<const int64_t>(offsets);
  r.weights = std::span<const float>(w);
  QueryOptions o;
  o.padding_idx = 7;
  auto plan = engine::PlanBags(table.view(), r, o);
  ASSERT_TRUE(plan.ok());
  auto d = DedupBags(*plan);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->unique_rows, std::vector<int64_t>({5, 2, 9}));
  EXPECT_EQ(d->bag_offsets, std::vector<int64_t>({0, 3, 3, 5}));
  EXPECT_EQ(d->entry_unique, std::vector<int32_t>({0, 1, 0, 1, 2}));
  EXPECT_EQ(d->entry_weight, std::vector<float>({1, 2, 3, 5, 6}));
  EXPECT_TRUE(d->weighted);
}

// The partitioned (parallel) dedup numbers rows differently but must
// describe the same batch as the serial one.
TEST(PipelineDedup, PartitionedMatchesSerial) {
  std::mt19937_64 rng(21);
  const TestTable table = test::RandomTable(5000, 2, DType::kF32, rng);
  for (int round = 0; round < 6; ++round) {
    const bool padding = round % 2 == 1;
    const auto req =
        MakeRequest(rng, 5000, round < 4 ? Layout::kOffsets : Layout::kBatched, PoolingMode::kSum,
                    round % 3 == 0, padding, std::nullopt, round < 2 ? 3 : 40);
    auto plan = Plan(table.view(), *req);
    ASSERT_TRUE(plan.ok());
    auto serial = DedupBags(*plan);
    auto parts = DedupBagsPartitioned(*plan);
    ASSERT_TRUE(serial.ok() && parts.ok());
    EXPECT_EQ(parts->bag_offsets, serial->bag_offsets);
    EXPECT_EQ(parts->entry_weight, serial->entry_weight);
    EXPECT_EQ(parts->weighted, serial->weighted);
    ASSERT_EQ(parts->num_entries(), serial->num_entries());
    std::vector<int64_t> a = parts->unique_rows, b = serial->unique_rows;
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    EXPECT_EQ(a, b);
    EXPECT_EQ(std::adjacent_find(a.begin(), a.end()), a.end());  // distinct
    for (int64_t e = 0; e < serial->num_entries(); ++e) {
      ASSERT_EQ(parts->unique_rows[parts->entry_unique[e]],
                serial->unique_rows[serial->entry_unique[e]]);
    }
  }
  // A large batch (the size DedupBags hands to the partitioned path).
  std::vector<int64_t> ids(200000), offsets;
  for (size_t i = 0; i < ids.size(); ++i) {
    ids[i] = static_cast<int64_t>(rng() % 5000);
    if (i % 37 == 0) offsets.push_back(static_cast<int64_t>(i));
  }
  BagRequest r;
  r.indices = std::span<const int64_t>(ids);
  r.offsets = std::span<const int64_t>(offsets);
  auto plan = engine::PlanBags(table.view(), r, QueryOptions());
  ASSERT_TRUE(plan.ok());
  FlatIdMap scratch;
  auto serial = DedupBags(*plan, &scratch);
  auto parts = DedupBagsPartitioned(*plan);
  ASSERT_TRUE(serial.ok() && parts.ok());
  EXPECT_EQ(parts->num_unique(), serial->num_unique());
  for (int64_t e = 0; e < serial->num_entries(); ++e) {
    ASSERT_EQ(parts->unique_rows[parts->entry_unique[e]], ids[e]);
  }
}

TEST(PipelineStaging, GatherLaysRowsOutForSlots) {
  std::mt19937_64 rng(2);
  const TestTable table = test::RandomTable(6, 5, DType::kInt8Rowwise, rng, /*aligned=*/false);
  const SlotLayout l = MakeSlotLayout(DType::kInt8Rowwise, 5);
  const std::vector<int64_t> rows = {4, 1};
  const std::vector<int32_t> slots = {7, 3};
  const StagingLayout sl = ComputeStagingLayout(2, l);
  EXPECT_EQ(sl.rows_at, 0);
  EXPECT_EQ(sl.qparams_at, 32);
  EXPECT_EQ(sl.slots_at, 48);
  EXPECT_EQ(sl.total, 64);
  std::vector<uint8_t> buf(static_cast<size_t>(sl.total), 0xEE);
  GatherRows(table.view(), l, rows, slots, sl, buf.data(), false);
  const TableView v = table.view();
  EXPECT_EQ(std::memcmp(buf.data() + 16, v.Row(1), 5), 0);
  for (int i = 5; i < 16; ++i) EXPECT_EQ(buf[16 + i], 0) << i;  // zero padding
  float scale, bias;
  std::memcpy(&scale, v.Row(4) + 5, 4);
  std::memcpy(&bias, v.Row(4) + 9, 4);
  const float* q = reinterpret_cast<const float*>(buf.data() + sl.qparams_at);
  EXPECT_EQ(q[0], scale);
  EXPECT_EQ(q[1], bias);
  const int32_t* s = reinterpret_cast<const int32_t*>(buf.data() + sl.slots_at);
  EXPECT_EQ(s[0], 7);
  EXPECT_EQ(s[1], 3);
  EXPECT_GE(StagingRowsFor(1, l), 1);
  EXPECT_EQ(StagingRowsFor(1 << 20, l), ((1 << 20) - 32) / (16 + 8 + 4));
}

}  // namespace
}  // namespace embstore::cuda
