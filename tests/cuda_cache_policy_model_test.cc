// The GPU row cache's policies (cuda/cache_policy.h) against naive models:
// random acquires, releases, prefetches and erases on SlotCache and on the
// obvious implementation of LRU and LFU must agree on every hit, fill,
// eviction and counter. Plain C++, run in CI without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "cuda/cache_policy.h"

namespace embstore::cuda {
namespace {

// ---- Randomized comparison with naive models -------------------------------------

// The policies written the obvious way: per key its use count, the time its
// last pin was released, and its pins; the victim is the unpinned key with
// the smallest (stamp) for LRU and (freq, stamp) for LFU.
class NaiveCache {
 public:
  NaiveCache(CachePolicy policy, int64_t capacity) : policy_(policy), capacity_(capacity) {}

  struct Entry {
    int64_t freq = 0;
    int64_t stamp = 0;
    int pins = 0;
  };

  // Mirrors SlotCache::Acquire; returns false when it would refuse.
  bool Acquire(const std::vector<uint64_t>& keys, std::vector<uint64_t>* fills, int64_t* hits,
               int64_t* evictions) {
    int64_t misses = 0, evictable_hits = 0;
    for (uint64_t k : keys) {
      auto it = entries_.find(k);
      if (it == entries_.end()) {
        ++misses;
      } else if (it->second.pins == 0) {
        ++evictable_hits;
      }
    }
    const int64_t room = (capacity_ - Size()) + (Size() - Pinned()) - evictable_hits;
    if (misses > room) return false;
    std::vector<bool> was_present(keys.size());
    for (size_t i = 0; i < keys.size(); ++i) was_present[i] = entries_.count(keys[i]) > 0;
    *hits = 0;
    *evictions = 0;
    for (size_t i = 0; i < keys.size(); ++i) {
      if (!was_present[i]) continue;
      Entry& e = entries_[keys[i]];
      ++e.pins;
      if (policy_ == CachePolicy::kLfu) ++e.freq;
      ++*hits;
    }
    for (size_t i = 0; i < keys.size(); ++i) {
      if (was_present[i]) continue;
      auto it = entries_.find(keys[i]);
      if (it != entries_.end()) {  // repeat of an earlier miss
        ++it->second.pins;
        if (policy_ == CachePolicy::kLfu) ++it->second.freq;
        ++*hits;
        continue;
      }
      if (Size() == capacity_) {
        entries_.erase(Victim());
        ++*evictions;
      }
      Entry e;
      e.freq = policy_ == CachePolicy::kLfu ? 1 : 0;
      e.pins = 1;
      entries_[keys[i]] = e;
      fills->push_back(keys[i]);
    }
    return true;
  }

  void Prefetch(const std::vector<uint64_t>& keys, std::vector<uint64_t>* fills, int64_t* evictions,
                int64_t* dropped) {
    *evictions = 0;
    *dropped = 0;
    for (uint64_t k : keys) {
      if (entries_.count(k)) continue;
      if (Size() == capacity_) {
        if (Pinned() == Size()) {
          ++*dropped;
          continue;
        }
        entries_.erase(Victim());
        ++*evictions;
      }
      Entry e;
      e.pins = 1;
      entries_[k] = e;
      fills->push_back(k);
    }
  }

  void Release(uint64_t key) {
    auto it = entries_.find(key);
    if (it == entries_.end() || it->second.pins == 0) return;
    if (--it->second.pins == 0) it->second.stamp = ++clock_;
  }
  void Erase(uint64_t key) { entries_.erase(key); }

  std::vector<uint64_t> EvictionOrder() const {
    std::vector<std::pair<std::pair<int64_t, int64_t>, uint64_t>> v;
    for (const auto& [k, e] : entries_) {
      if (e.pins > 0) continue;
      v.push_back({{policy_ == CachePolicy::kLfu ? e.freq : 0, e.stamp}, k});
    }
    std::sort(v.begin(), v.end());
    std::vector<uint64_t> out;
    for (const auto& p : v) out.push_back(p.second);
    return out;
  }
  int64_t Size() const { return static_cast<int64_t>(entries_.size()); }
  int64_t Pinned() const {
    int64_t n = 0;
    for (const auto& [k, e] : entries_) n += e.pins > 0;
    return n;
  }
  const std::map<uint64_t, Entry>& entries() const { return entries_; }

 private:
  uint64_t Victim() const { return EvictionOrder().front(); }

  CachePolicy policy_;
  int64_t capacity_;
  int64_t clock_ = 0;
  std::map<uint64_t, Entry> entries_;
};

void CheckSame(const SlotCache& c, const NaiveCache& n, CachePolicy policy) {
  ASSERT_EQ(c.size(), n.Size());
  ASSERT_EQ(c.pinned(), n.Pinned());
  ASSERT_EQ(c.EvictionOrder(), n.EvictionOrder());
  std::set<int32_t> slots;
  for (const auto& [k, e] : n.entries()) {
    const std::optional<int32_t> s = c.Find(k);
    ASSERT_TRUE(s.has_value()) << k;
    ASSERT_EQ(*c.KeyAt(*s), k);
    ASSERT_EQ(c.Pins(*s), e.pins);
    if (policy == CachePolicy::kLfu) {
      ASSERT_EQ(c.Frequency(*s), e.freq) << k;
    }
    slots.insert(*s);
  }
  ASSERT_EQ(static_cast<int64_t>(slots.size()), n.Size());  // one slot per row
  ASSERT_EQ(c.free_slots(), c.capacity() - c.size());
}

void RandomizedAgainstNaive(CachePolicy policy, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const int64_t capacity = 1 + static_cast<int64_t>(rng() % 24);
  const uint64_t universe = static_cast<uint64_t>(capacity) * 3;
  SlotCache c(policy, capacity);
  NaiveCache n(policy, capacity);
  // Outstanding acquisitions: (slots, keys), released later in any order.
  std::vector<std::pair<std::vector<int32_t>, std::vector<uint64_t>>> held;
  int64_t exp_hits = 0, exp_misses = 0, exp_evictions = 0, exp_lookups = 0;
  for (int step = 0; step < 600; ++step) {
    const int op = static_cast<int>(rng() % 10);
    if (op < 5) {  // a batch
      const size_t size = static_cast<size_t>(rng() % (capacity + 3));
      std::vector<uint64_t> keys;
      // Skewed keys, so some rows are much more frequent than others.
      for (size_t i = 0; i < size; ++i) {
        const uint64_t a = rng() % universe, b = rng() % universe;
        keys.push_back(std::min(a, b));
      }
      if (rng() % 4 != 0) {  // mostly distinct, as the engine passes them
        std::sort(keys.begin(), keys.end());
        keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
        std::shuffle(keys.begin(), keys.end(), rng);
      }
      SlotCache::Acquired a;
      const Status st = c.Acquire(keys, &a);
      std::vector<uint64_t> nfills;
      int64_t nhits = 0, nevict = 0;
      const bool nok = n.Acquire(keys, &nfills, &nhits, &nevict);
      ASSERT_EQ(st.ok(), nok) << "step " << step << ": " << st.ToString();
      if (st.ok()) {
        std::vector<uint64_t> fills;
        for (const auto& f : a.fills) fills.push_back(f.key);
        ASSERT_EQ(fills, nfills) << "step " << step;
        ASSERT_EQ(a.hits, nhits);
        ASSERT_EQ(a.evictions, nevict);
        for (size_t i = 0; i < keys.size(); ++i) ASSERT_EQ(*c.KeyAt(a.slots[i]), keys[i]);
        held.push_back({a.slots, keys});
        exp_lookups += static_cast<int64_t>(keys.size());
        exp_hits += nhits;
        exp_misses += static_cast<int64_t>(nfills.size());
        exp_evictions += nevict;
      }
    } else if (op < 7) {  // a prefetch
      std::vector<uint64_t> keys;
      for (int i = 0, m = static_cast<int>(rng() % 6); i < m; ++i) keys.push_back(rng() % universe);
      std::sort(keys.begin(), keys.end());
      keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
      SlotCache::Acquired a;
      c.AcquireForPrefetch(keys, &a);
      std::vector<uint64_t> nfills;
      int64_t nevict = 0, ndropped = 0;
      n.Prefetch(keys, &nfills, &nevict, &ndropped);
      std::vector<uint64_t> fills;
      std::vector<int32_t> slots;
      for (const auto& f : a.fills) {
        fills.push_back(f.key);
        slots.push_back(f.slot);
      }
      ASSERT_EQ(fills, nfills) << "step " << step;
      ASSERT_EQ(a.evictions, nevict);
      exp_evictions += nevict;
      held.push_back({slots, fills});
    } else if (op < 9) {  // release one outstanding acquisition
      if (!held.empty()) {
        const size_t i = static_cast<size_t>(rng() % held.size());
        c.Release(held[i].first);
        for (uint64_t k : held[i].second) n.Release(k);
        held.erase(held.begin() + static_cast<std::ptrdiff_t>(i));
      }
    } else {  // erase an unpinned row
      const std::vector<uint64_t> order = n.EvictionOrder();
      if (!order.empty()) {
        const uint64_t k = order[rng() % order.size()];
        c.Erase(*c.Find(k));
        n.Erase(k);
      }
    }
    CheckSame(c, n, policy);
    if (::testing::Test::HasFatalFailure()) return;
  }
  EXPECT_EQ(c.counters().lookups, exp_lookups);
  EXPECT_EQ(c.counters().hits, exp_hits);
  EXPECT_EQ(c.counters().misses, exp_misses);
  EXPECT_EQ(c.counters().evictions, exp_evictions);
}

TEST(SlotCacheRandomized, LruMatchesNaiveModel) {
  for (uint64_t seed = 1; seed <= 40; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    RandomizedAgainstNaive(CachePolicy::kLru, seed);
    if (HasFatalFailure()) return;
  }
}

TEST(SlotCacheRandomized, LfuMatchesNaiveModel) {
  for (uint64_t seed = 1; seed <= 40; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    RandomizedAgainstNaive(CachePolicy::kLfu, seed);
    if (HasFatalFailure()) return;
  }
}

}  // namespace
}  // namespace embstore::cuda
