// The GPU row cache's bookkeeping (cuda/cache_policy.h): plain C++, run in CI
// without a GPU. LRU/LFU eviction order, pinning, dedup, prefetch, capacity
// in rows vs bytes and counters. cuda_cache_policy_model_test compares both
// policies with naive models on random operations.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <set>
#include <unordered_map>
#include <vector>

#include "cuda/cache_policy.h"
#include "cuda/slot_layout.h"

namespace embstore::cuda {
namespace {

std::vector<uint64_t> K(std::initializer_list<uint64_t> keys) { return keys; }

// Acquires `keys`, expects success, returns the slots.
std::vector<int32_t> Take(SlotCache& c, const std::vector<uint64_t>& keys,
                          SlotCache::Acquired* out = nullptr) {
  SlotCache::Acquired a;
  const Status st = c.Acquire(keys, &a);
  EXPECT_TRUE(st.ok()) << st.ToString();
  if (out != nullptr) *out = a;
  return a.slots;
}

// Acquire then release at once: one "use" of each key.
void Use(SlotCache& c, const std::vector<uint64_t>& keys) { c.Release(Take(c, keys)); }

TEST(CachePolicyNames, ParseAndName) {
  EXPECT_EQ(ParseCachePolicy("lru"), CachePolicy::kLru);
  EXPECT_EQ(ParseCachePolicy("lfu"), CachePolicy::kLfu);
  EXPECT_FALSE(ParseCachePolicy("LRU").has_value());
  EXPECT_FALSE(ParseCachePolicy("fifo").has_value());
  EXPECT_STREQ(CachePolicyName(CachePolicy::kLru), "lru");
  EXPECT_STREQ(CachePolicyName(CachePolicy::kLfu), "lfu");
}

TEST(CacheKeys, PackAndUnpack) {
  const uint64_t k = CacheKey(7, 123456789012);
  EXPECT_EQ(CacheKeyTable(k), 7u);
  EXPECT_EQ(CacheKeyRow(k), 123456789012);
  const uint64_t last = CacheKey(kMaxCacheTables - 1, kMaxCacheKeyRows - 1);
  EXPECT_NE(last, ~uint64_t{0});  // never the hash map's empty marker
  EXPECT_EQ(CacheKeyRow(last), kMaxCacheKeyRows - 1);
}

TEST(SlotLayoutTest, PaddingAndLanes) {
  const SlotLayout f32 = MakeSlotLayout(DType::kF32, 37);
  EXPECT_EQ(f32.vec_elems, 4);
  EXPECT_EQ(f32.vecs_per_row, 10);
  EXPECT_EQ(f32.row_bytes, 160);
  EXPECT_EQ(f32.slot_bytes(), 164);
  const SlotLayout f16 = MakeSlotLayout(DType::kF16, 8);
  EXPECT_EQ(f16.vec_elems, 8);
  EXPECT_EQ(f16.row_bytes, 16);
  EXPECT_EQ(f16.slot_bytes(), 20);
  const SlotLayout i8 = MakeSlotLayout(DType::kInt8Rowwise, 37);
  EXPECT_TRUE(i8.quantized);
  EXPECT_EQ(i8.vecs_per_row, 3);
  EXPECT_EQ(i8.row_bytes, 48);
  EXPECT_EQ(i8.slot_bytes(), 60);
  EXPECT_EQ(i8.element_bytes(), 37);
  const SlotLayout bf1 = MakeSlotLayout(DType::kBF16, 1);
  EXPECT_EQ(bf1.row_bytes, 16);
  EXPECT_EQ(LanesPerRow(0), 1);
  EXPECT_EQ(LanesPerRow(1), 1);
  EXPECT_EQ(LanesPerRow(3), 4);
  EXPECT_EQ(LanesPerRow(10), 16);
  EXPECT_EQ(LanesPerRow(32), 32);
  EXPECT_EQ(LanesPerRow(1000), 32);
}

TEST(CacheCapacity, RowsVersusBytes) {
  const SlotLayout l = MakeSlotLayout(DType::kF32, 37);  // 164 bytes a slot
  EXPECT_EQ(*CacheCapacityRows(10, 0, l), 10);
  EXPECT_EQ(*CacheCapacityRows(0, 164 * 100, l), 100);
  EXPECT_EQ(*CacheCapacityRows(0, 164 * 100 + 163, l), 100);  // whole slots only
  EXPECT_EQ(*CacheCapacityRows(0, 0, l), kDefaultCacheBytes / 164);
  // The same byte budget holds more int8 rows than f32 rows.
  const SlotLayout q = MakeSlotLayout(DType::kInt8Rowwise, 37);  // 60 bytes
  EXPECT_EQ(*CacheCapacityRows(0, 6000, q), 100);
  // A byte budget is clamped to the slot limit; a row count is checked.
  EXPECT_EQ(*CacheCapacityRows(0, int64_t{1} << 62, MakeSlotLayout(DType::kF16, 1)), kMaxCacheRows);
  auto too_many = CacheCapacityRows(kMaxCacheRows + 1, 0, l);
  ASSERT_FALSE(too_many.ok());
  EXPECT_EQ(too_many.status().code(), Status::Code::kInvalidArgument);

  auto both = CacheCapacityRows(10, 1000, l);
  ASSERT_FALSE(both.ok());
  EXPECT_NE(both.status().message().find("not both"), std::string::npos);
  auto tiny = CacheCapacityRows(0, 163, l);
  ASSERT_FALSE(tiny.ok());
  EXPECT_NE(tiny.status().message().find("holds no row"), std::string::npos)
      << tiny.status().message();
  EXPECT_FALSE(CacheCapacityRows(-1, 0, l).ok());
  EXPECT_FALSE(CacheCapacityRows(0, -5, l).ok());
}

TEST(FlatIdMapTest, MatchesUnorderedMap) {
  std::mt19937_64 rng(1);
  FlatIdMap m;
  std::unordered_map<uint64_t, int32_t> ref;
  for (int step = 0; step < 20000; ++step) {
    const uint64_t key = rng() % 3000;  // many collisions and re-insertions
    const int op = static_cast<int>(rng() % 3);
    if (op < 2) {
      const int32_t v = static_cast<int32_t>(rng() % 1000);
      auto [p, inserted] = m.Insert(key, v);
      auto [it, ref_inserted] = ref.emplace(key, v);
      ASSERT_EQ(inserted, ref_inserted);
      ASSERT_EQ(*p, it->second);
    } else {
      ASSERT_EQ(m.Erase(key), ref.erase(key) == 1);
    }
    ASSERT_EQ(m.size(), ref.size());
    if (step % 997 == 0) {
      for (uint64_t k = 0; k < 3000; ++k) {
        const int32_t* p = m.Find(k);
        auto it = ref.find(k);
        ASSERT_EQ(p != nullptr, it != ref.end()) << k;
        if (p) {
          ASSERT_EQ(*p, it->second);
        }
      }
    }
  }
  m.Clear();
  EXPECT_EQ(m.size(), 0u);
  EXPECT_EQ(m.Find(5), nullptr);
}

TEST(SlotCacheLru, EvictsLeastRecentlyUsed) {
  SlotCache c(CachePolicy::kLru, 3);
  Use(c, K({1}));
  Use(c, K({2}));
  Use(c, K({3}));
  EXPECT_EQ(c.EvictionOrder(), K({1, 2, 3}));
  Use(c, K({1}));  // 1 becomes the most recent
  EXPECT_EQ(c.EvictionOrder(), K({2, 3, 1}));
  SlotCache::Acquired a;
  c.Release(Take(c, K({4}), &a));
  ASSERT_EQ(a.fills.size(), 1u);
  EXPECT_EQ(a.evictions, 1);
  EXPECT_FALSE(c.Find(2).has_value());  // the least recent went
  EXPECT_EQ(c.EvictionOrder(), K({3, 1, 4}));
  EXPECT_EQ(c.size(), 3);
}

TEST(SlotCacheLfu, EvictsLeastFrequentlyThenLeastRecently) {
  SlotCache c(CachePolicy::kLfu, 3);
  Use(c, K({1}));
  Use(c, K({1}));
  Use(c, K({1}));  // freq 3
  Use(c, K({2}));
  Use(c, K({2}));  // freq 2
  Use(c, K({3}));  // freq 1
  EXPECT_EQ(c.Frequency(*c.Find(1)), 3);
  EXPECT_EQ(c.Frequency(*c.Find(2)), 2);
  EXPECT_EQ(c.EvictionOrder(), K({3, 2, 1}));
  Use(c, K({4}));  // evicts 3 (freq 1)
  EXPECT_FALSE(c.Find(3).has_value());
  Use(c, K({5}));  // 4 and 5 have freq 1: 4 is older, goes first
  EXPECT_FALSE(c.Find(4).has_value());
  EXPECT_TRUE(c.Find(5).has_value());
  EXPECT_EQ(c.EvictionOrder(), K({5, 2, 1}));
  // A scan of one-off rows never displaces the frequent ones.
  for (uint64_t k = 100; k < 200; ++k) Use(c, {k});
  EXPECT_TRUE(c.Find(1).has_value());
  EXPECT_TRUE(c.Find(2).has_value());
}

TEST(SlotCacheLru, ScanDisplacesEverything) {  // the contrast with LFU above
  SlotCache c(CachePolicy::kLru, 3);
  for (int i = 0; i < 5; ++i) Use(c, K({1, 2}));
  for (uint64_t k = 100; k < 110; ++k) Use(c, {k});
  EXPECT_FALSE(c.Find(1).has_value());
  EXPECT_FALSE(c.Find(2).has_value());
}

TEST(SlotCachePinning, BatchNeverEvictsItsOwnRows) {
  for (CachePolicy policy : {CachePolicy::kLru, CachePolicy::kLfu}) {
    SCOPED_TRACE(CachePolicyName(policy));
    SlotCache c(policy, 3);
    Use(c, K({1}));
    Use(c, K({2}));
    Use(c, K({3}));  // 1 is the first victim in both policies
    // The batch hits 1 and misses 4 and 5: the misses must evict 2 and 3.
    SlotCache::Acquired a;
    const std::vector<int32_t> slots = Take(c, K({4, 1, 5}), &a);
    EXPECT_EQ(a.hits, 1);
    EXPECT_EQ(a.misses, 2);
    EXPECT_EQ(a.evictions, 2);
    EXPECT_TRUE(c.Find(1).has_value());
    EXPECT_FALSE(c.Find(2).has_value());
    EXPECT_FALSE(c.Find(3).has_value());
    EXPECT_EQ(slots[1], *c.Find(1));
    std::set<int32_t> distinct(slots.begin(), slots.end());
    EXPECT_EQ(distinct.size(), 3u);
    EXPECT_EQ(c.pinned(), 3);
    EXPECT_TRUE(c.EvictionOrder().empty());  // all pinned
    // While pinned, nothing can be evicted.
    SlotCache::Acquired b;
    const Status st = c.Acquire(K({9}), &b);
    EXPECT_EQ(st.code(), Status::Code::kInvalidArgument);
    EXPECT_NE(st.message().find("0 of its 3 slots"), std::string::npos) << st.message();
    c.Release(slots);
    EXPECT_EQ(c.pinned(), 0);
    Use(c, K({9}));
  }
}

TEST(SlotCachePinning, TooLargeBatchChangesNothing) {
  SlotCache c(CachePolicy::kLru, 4);
  Use(c, K({1, 2}));
  const CacheStats before = c.counters();
  SlotCache::Acquired a;
  // Hits 1 and 2 are pinned first, leaving 2 slots for 3 misses.
  const Status st = c.Acquire(K({1, 2, 3, 4, 5}), &a);
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(c.size(), 2);
  EXPECT_EQ(c.pinned(), 0);
  EXPECT_EQ(c.EvictionOrder(), K({1, 2}));
  EXPECT_EQ(c.counters().lookups, before.lookups);
  // Exactly the capacity fits.
  Use(c, K({1, 2, 3, 4}));
  EXPECT_EQ(c.size(), 4);
}

TEST(SlotCacheDedup, RepeatedKeyIsOneRowPinnedTwice) {
  SlotCache c(CachePolicy::kLfu, 4);
  SlotCache::Acquired a;
  const std::vector<int32_t> slots = Take(c, K({7, 8, 7}), &a);
  EXPECT_EQ(slots[0], slots[2]);
  EXPECT_EQ(a.fills.size(), 2u);
  EXPECT_EQ(a.misses, 2);
  EXPECT_EQ(a.hits, 1);
  EXPECT_EQ(c.Pins(slots[0]), 2);
  EXPECT_EQ(c.Frequency(slots[0]), 2);
  c.Release(slots);
  EXPECT_EQ(c.pinned(), 0);
  EXPECT_EQ(c.Pins(slots[0]), 0);
}

TEST(SlotCacheFills, MissesComeBackAsSlotsToFill) {
  SlotCache c(CachePolicy::kLru, 8);
  SlotCache::Acquired a;
  const std::vector<int32_t> slots = Take(c, K({10, 11, 12}), &a);
  ASSERT_EQ(a.fills.size(), 3u);
  EXPECT_EQ(a.fills[0].key, 10u);
  EXPECT_EQ(a.fills[0].slot, slots[0]);
  EXPECT_EQ(a.fills[2].slot, slots[2]);
  EXPECT_EQ(slots, std::vector<int32_t>({0, 1, 2}));  // free slots in order
  for (int i = 0; i < 3; ++i) EXPECT_EQ(*c.KeyAt(slots[i]), 10u + i);
  c.Release(slots);
  SlotCache::Acquired b;
  c.Release(Take(c, K({12, 13}), &b));
  ASSERT_EQ(b.fills.size(), 1u);
  EXPECT_EQ(b.fills[0].key, 13u);
  EXPECT_EQ(b.hits, 1);
}

TEST(SlotCachePrefetch, BestEffortAndNeutralFrequencies) {
  SlotCache c(CachePolicy::kLfu, 3);
  Use(c, K({1}));
  Use(c, K({1}));  // freq 2
  SlotCache::Acquired p;
  c.AcquireForPrefetch(K({1, 2}), &p);
  // 1 is cached: left alone (not pinned, not counted as a use).
  EXPECT_EQ(p.slots[0], -1);
  EXPECT_EQ(p.hits, 1);
  EXPECT_EQ(c.Frequency(*c.Find(1)), 2);
  EXPECT_EQ(c.Pins(*c.Find(1)), 0);
  // 2 is inserted pinned, with frequency 0.
  ASSERT_GE(p.slots[1], 0);
  EXPECT_EQ(c.Pins(p.slots[1]), 1);
  EXPECT_EQ(c.Frequency(p.slots[1]), 0);
  // While 2 is in flight: 3 takes the free slot, 4 evicts 1 (the only
  // unpinned row) and 5 finds no slot and is dropped.
  SlotCache::Acquired q;
  c.AcquireForPrefetch(K({3, 4, 5}), &q);
  EXPECT_GE(q.slots[0], 0);
  EXPECT_GE(q.slots[1], 0);
  EXPECT_EQ(q.slots[2], -1);
  EXPECT_EQ(q.fills.size(), 2u);
  EXPECT_EQ(q.evictions, 1);
  EXPECT_FALSE(c.Find(1).has_value());
  EXPECT_EQ(c.counters().prefetch_lookups, 5);
  EXPECT_EQ(c.counters().prefetched_rows, 3);
  EXPECT_EQ(c.counters().prefetch_dropped, 1);
  EXPECT_EQ(c.counters().evictions, 1);
  EXPECT_EQ(c.counters().lookups, 2);  // batches only
  c.Release(p.slots);
  c.Release(q.slots);
  EXPECT_EQ(c.pinned(), 0);
  // The batch that uses a prefetched row hits it and brings it to 1.
  SlotCache::Acquired a;
  c.Release(Take(c, K({2}), &a));
  EXPECT_EQ(a.hits, 1);
  EXPECT_EQ(c.Frequency(*c.Find(2)), 1);
}

TEST(SlotCachePrefetch, LruPrefetchedRowsAreMostRecent) {
  SlotCache c(CachePolicy::kLru, 4);
  Use(c, K({1, 2}));
  SlotCache::Acquired p;
  c.AcquireForPrefetch(K({3, 4}), &p);
  c.Release(p.slots);
  EXPECT_EQ(c.EvictionOrder(), K({1, 2, 3, 4}));
}

TEST(SlotCacheCounters, CountHitsMissesEvictions) {
  SlotCache c(CachePolicy::kLru, 2);
  Use(c, K({1, 2}));  // 2 misses
  Use(c, K({1, 2}));  // 2 hits
  Use(c, K({3}));     // 1 miss, 1 eviction
  const CacheStats& s = c.counters();
  EXPECT_EQ(s.lookups, 5);
  EXPECT_EQ(s.hits, 2);
  EXPECT_EQ(s.misses, 3);
  EXPECT_EQ(s.evictions, 1);
  EXPECT_DOUBLE_EQ(s.hit_rate(), 0.4);
  EXPECT_EQ(CacheStatsToString(s),
            "batches=0 sub_batches=0 lookups=5 hits=2 misses=3 hit_rate=0.400 evictions=1 "
            "prefetch_requests=0 prefetched_rows=0 prefetch_dropped=0 bytes_copied=0 "
            "capacity_rows=0 resident_rows=0");
  c.ResetCounters();
  EXPECT_EQ(c.counters().lookups, 0);
  EXPECT_EQ(c.counters().hit_rate(), 0.0);
}

TEST(SlotCacheErase, EraseEraseIfAndClear) {
  for (CachePolicy policy : {CachePolicy::kLru, CachePolicy::kLfu}) {
    SCOPED_TRACE(CachePolicyName(policy));
    SlotCache c(policy, 6);
    Use(c, {CacheKey(1, 0), CacheKey(1, 1), CacheKey(2, 0), CacheKey(2, 1)});
    EXPECT_EQ(c.EraseIf([](uint64_t k) { return CacheKeyTable(k) == 1; }), 2);
    EXPECT_EQ(c.size(), 2);
    EXPECT_FALSE(c.Find(CacheKey(1, 0)).has_value());
    // Erase works on pinned rows too (a failed fill), and frees the slot.
    SlotCache::Acquired a;
    const std::vector<int32_t> slots = Take(c, {CacheKey(3, 5)}, &a);
    c.Erase(slots[0]);
    EXPECT_EQ(c.pinned(), 0);
    EXPECT_FALSE(c.Find(CacheKey(3, 5)).has_value());
    c.Release(slots);  // releasing an erased slot is a no-op
    EXPECT_EQ(c.free_slots(), 4);
    c.Clear();
    EXPECT_EQ(c.size(), 0);
    EXPECT_EQ(c.free_slots(), 6);
    Use(c, K({1, 2, 3, 4, 5, 6}));
    EXPECT_EQ(c.size(), 6);
  }
}

TEST(SlotCacheEdge, ZeroCapacity) {
  SlotCache c(CachePolicy::kLfu, 0);
  SlotCache::Acquired a;
  EXPECT_TRUE(c.Acquire({}, &a).ok());
  EXPECT_FALSE(c.Acquire(K({1}), &a).ok());
  c.AcquireForPrefetch(K({1}), &a);
  EXPECT_EQ(a.slots[0], -1);
}

}  // namespace
}  // namespace embstore::cuda
