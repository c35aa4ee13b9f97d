// The host-side preparation of a GPU batch (cuda/batch_prep.h) piece by
// piece: passes of whole bags, dedup (serial and partitioned), and the staging
// layout of gathered rows. Plain C++; runs everywhere.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "cuda/batch_prep.h"
#include "cuda/cache_policy.h"
#include "cuda/slot_layout.h"
#include "cuda/testing/emulated_gpu.h"
#include "cuda/testing/random_bags.h"
#include "embstore/query.h"
#include "engine/plan.h"
#include "engine_test_util.h"

namespace embstore::cuda {
namespace {

using testing::TestTable;
using namespace embstore::cuda::cudatest;  // NOLINT(google-build-using-namespace)

TEST(PipelineSplit, BagLargerThanCacheIsRefused) {
  std::mt19937_64 rng(6);
  const TestTable table = testing::RandomTable(40, 4, DType::kF32, rng);
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < 10; ++i) ids.push_back(i);
  const std::vector<int64_t> offsets = {0, 3, 4};  // bag 1 has 6 distinct rows
  BagRequest r = Bags(ids, offsets);
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
  const TestTable table = testing::RandomTable(10, 3, DType::kF32, rng);
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
  const TestTable table = testing::RandomTable(5000, 2, DType::kF32, rng);
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
  BagRequest r = Bags(ids, offsets);
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
  const TestTable table = testing::RandomTable(6, 5, DType::kInt8Rowwise, rng, /*aligned=*/false);
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

// The gather of misses with the page prefetcher on (windows of 3 rows, in
// parallel and serially) lays out the same bytes as without it, and the
// prefetcher looked every row up.
TEST(PipelineStaging, GatherWithThePagePrefetcherIsTheSame) {
  std::mt19937_64 rng(3);
  const TestTable table = testing::RandomTable(5000, 40, DType::kF16, rng, /*aligned=*/true);
  const SlotLayout l = MakeSlotLayout(DType::kF16, 40);
  std::vector<int64_t> rows(4000);  // 320 KB of slots: the parallel path
  std::vector<int32_t> slots(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    rows[i] = static_cast<int64_t>(rng() % 5000);
    slots[i] = static_cast<int32_t>(i);
  }
  const StagingLayout sl = ComputeStagingLayout(static_cast<int64_t>(rows.size()), l);
  QueryOptions off;
  off.prefetch = QueryOptions::Prefetch::kOff;
  std::vector<uint8_t> want(static_cast<size_t>(sl.total), 0xEE);
  GatherRows(table.view(), l, rows, slots, sl, want.data(), false, off);
  for (const bool parallel : {false, true}) {
    QueryOptions on;
    on.prefetch = QueryOptions::Prefetch::kOn;
    on.prefetch_depth = 3;
    const PrefetchStats before = GetPrefetchStats();
    std::vector<uint8_t> got(static_cast<size_t>(sl.total), 0xEE);
    GatherRows(table.view(), l, rows, slots, sl, got.data(), parallel, on);
    EXPECT_EQ(got, want) << "parallel " << parallel;
    // Every distinct page looked up at least once (rows sharing a page the
    // chunk met just before are not looked up again).
    const int64_t checked = GetPrefetchStats().rows_checked - before.rows_checked;
    EXPECT_GE(checked, 5000 * 80 / 4096);
    EXPECT_LE(checked, 4000);
  }
}

}  // namespace
}  // namespace embstore::cuda
