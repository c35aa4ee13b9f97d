// The bookkeeping of the GPU row cache: which row lives in which device slot,
// which rows a batch has pinned, and which row to evict next (LRU or LFU).
//
// Plain C++ with no CUDA: the device side only ever sees slot numbers. This
// is what makes the policy testable on a CPU (tests/cuda_cache_policy_test.cc
// compares it with naive models of both policies).
//
// Keys are 64-bit: CacheKey(table id, row). A batch acquires the distinct keys
// it needs; each gets a slot, and every slot a batch holds is pinned until the
// batch releases it, so a batch never evicts its own rows. Misses come back as
// a list of (slot, key) to fill; the caller copies the rows in.
//
// Thread-safety: SlotCache is not thread-safe; its owner (GpuEngine) guards it
// with a mutex. FlatIdMap likewise.
#ifndef EMBSTORE_CUDA_CACHE_POLICY_H_
#define EMBSTORE_CUDA_CACHE_POLICY_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "cuda/slot_layout.h"
#include "embstore/engine.h"  // CachePolicy, CacheStats
#include "embstore/status.h"

namespace embstore::cuda {

// Largest row id a key can carry, and the number of table ids.
inline constexpr int kCacheKeyRowBits = 40;
inline constexpr int64_t kMaxCacheKeyRows = int64_t{1} << kCacheKeyRowBits;
inline constexpr uint32_t kMaxCacheTables = (1u << (64 - kCacheKeyRowBits)) - 1;
// REQUIRES: table_id < kMaxCacheTables, 0 <= row < kMaxCacheKeyRows.
inline uint64_t CacheKey(uint32_t table_id, int64_t row) {
  return (static_cast<uint64_t>(table_id) << kCacheKeyRowBits) | static_cast<uint64_t>(row);
}
inline uint32_t CacheKeyTable(uint64_t key) {
  return static_cast<uint32_t>(key >> kCacheKeyRowBits);
}
inline int64_t CacheKeyRow(uint64_t key) {
  return static_cast<int64_t>(key & (static_cast<uint64_t>(kMaxCacheKeyRows) - 1));
}

// Default capacity when neither rows nor bytes are given.
inline constexpr int64_t kDefaultCacheBytes = int64_t{1} << 30;
// Slots are int32 on the device.
inline constexpr int64_t kMaxCacheRows = (int64_t{1} << 31) - 2;

// The number of slots for a cache given in rows or in bytes of device memory
// (layout.slot_bytes() each). At most one of cache_rows / cache_bytes may be
// > 0; both 0 means kDefaultCacheBytes. InvalidArgument for negative values,
// both set, a byte budget below one slot, or more than kMaxCacheRows slots.
Result<int64_t> CacheCapacityRows(int64_t cache_rows, int64_t cache_bytes,
                                  const SlotLayout& layout);

// An open-addressing hash map from uint64 keys (any value but ~0) to int32,
// linear probing with backward-shift deletion. Faster than unordered_map for
// the engine's per-batch dedup and the cache index.
class FlatIdMap {
 public:
  explicit FlatIdMap(size_t expected = 0) { Reserve(expected); }

  // Makes room for `n` keys without rehashing.
  void Reserve(size_t n);
  // Removes every key (keeps the memory).
  void Clear();
  size_t size() const { return size_; }

  // The value of `key`, or null.
  const int32_t* Find(uint64_t key) const;
  int32_t* Find(uint64_t key) {
    return const_cast<int32_t*>(static_cast<const FlatIdMap*>(this)->Find(key));
  }
  // Inserts key -> value unless present; returns the stored value and whether
  // it was inserted. REQUIRES: key != ~0.
  std::pair<int32_t*, bool> Insert(uint64_t key, int32_t value);
  // Removes `key`; false when absent.
  bool Erase(uint64_t key);
  // Hints that `key` will be looked up soon (loads its bucket into cache).
  void Prefetch(uint64_t key) const {
    if (!slots_.empty()) __builtin_prefetch(&slots_[Home(key)]);
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  // Key and value side by side: one cache line per probe.
  struct Bucket {
    uint64_t key;
    int32_t value;
  };
  size_t Home(uint64_t key) const {
    uint64_t x = key;  // splitmix64's finalizer
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return static_cast<size_t>(x) & mask_;
  }
  void Rehash(size_t buckets);

  std::vector<Bucket> slots_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

class SlotCache {
 public:
  // REQUIRES: 0 <= capacity <= kMaxCacheRows.
  SlotCache(CachePolicy policy, int64_t capacity);

  SlotCache(const SlotCache&) = delete;
  SlotCache& operator=(const SlotCache&) = delete;

  CachePolicy policy() const { return policy_; }
  int64_t capacity() const { return capacity_; }
  int64_t size() const { return static_cast<int64_t>(map_.size()); }  // resident rows
  int64_t pinned() const { return pinned_; }                          // slots with pins
  int64_t free_slots() const { return static_cast<int64_t>(free_.size()); }
  int64_t evictable() const { return size() - pinned_; }

  struct Fill {
    int32_t slot;
    uint64_t key;
  };
  struct Acquired {
    std::vector<int32_t> slots;  // per requested key; -1: not cached (prefetch only)
    std::vector<Fill> fills;     // misses: slots the caller must fill with these keys
    int64_t hits = 0;
    int64_t misses = 0;
    int64_t evictions = 0;
  };

  // Batch use. Every key gets a slot, pinned until Release. A hit counts as a
  // use (LRU: becomes most recent at release; LFU: frequency + 1); a miss is
  // inserted with frequency 1, evicting an unpinned row when no slot is free.
  // Hits are resolved before any eviction, so a batch never evicts its own
  // rows. Keys should be distinct (a repeated key is a hit on its first
  // occurrence and is pinned twice). If the misses need more slots than are
  // free or evictable, returns InvalidArgument and changes nothing.
  Status Acquire(std::span<const uint64_t> keys, Acquired* out);

  // Prefetch use (best effort). Rows already cached are left exactly as they
  // are (not pinned, no use counted: the batch that uses them counts it).
  // Misses are inserted pinned, with frequency 0 (so the batch that uses them
  // brings them to 1, as if it had missed), while free or evictable slots
  // last; the others get slot -1 and are counted as dropped.
  void AcquireForPrefetch(std::span<const uint64_t> keys, Acquired* out);

  // Drops one pin of each slot (-1 entries are ignored). A slot whose last
  // pin goes becomes evictable, as the most recent of its frequency.
  void Release(std::span<const int32_t> slots);

  // Removes the row in `slot` whatever its pins (e.g. its fill failed); the
  // slot becomes free. No-op for an empty slot.
  void Erase(int32_t slot);
  // Removes every unpinned row whose key satisfies `pred`; returns how many.
  int64_t EraseIf(const std::function<bool(uint64_t key)>& pred);
  // Removes every row. REQUIRES: pinned() == 0.
  void Clear();

  // The slot of `key`, without counting a use.
  std::optional<int32_t> Find(uint64_t key) const;
  // The key in `slot`, if any.
  std::optional<uint64_t> KeyAt(int32_t slot) const;
  int32_t Pins(int32_t slot) const { return e_[slot].pins; }
  // LFU use count of the row in `slot` (LRU: 0).
  int64_t Frequency(int32_t slot) const;
  // The unpinned keys, next victim first (for tests and debugging; O(size)).
  std::vector<uint64_t> EvictionOrder() const;

  // lookups, hits, misses, evictions and the prefetch counters; the other
  // fields are the engine's.
  const CacheStats& counters() const { return counters_; }
  void ResetCounters() { counters_ = CacheStats(); }

 private:
  static constexpr int32_t kNone = -1;

  // The evictable rows of LRU (the whole cache) or of one LFU bucket, oldest
  // at head.
  struct List {
    int32_t head = kNone;
    int32_t tail = kNone;
  };
  // LFU: all rows used `freq` times. Buckets form a list in increasing freq.
  struct Bucket {
    int64_t freq = 0;
    int32_t prev = kNone;
    int32_t next = kNone;
    List evictable;
    int64_t n_evictable = 0;
    int64_t n_total = 0;  // evictable + pinned
  };

  // Everything about one slot, together (one cache line for most updates).
  struct Entry {
    uint64_t key = 0;
    int64_t freq = 0;  // LFU use count
    int32_t pins = 0;
    int32_t prev = kNone;  // links in its evictable list
    int32_t next = kNone;
    int32_t bucket = kNone;  // LFU bucket
    bool used = false;       // holds a row
  };

  void ListPushBack(List* list, int32_t slot);
  void ListRemove(List* list, int32_t slot);
  List* ListOf(int32_t slot);

  int32_t NewBucketAfter(int32_t prev, int64_t freq);  // prev == kNone: at the front
  void MaybeFreeBucket(int32_t b);
  int32_t BucketFor(int64_t freq);  // freq 0 or 1: found or made near the front

  // Pins a resident row; `use` counts a use (LFU promotion).
  void PinHit(int32_t slot, bool use);
  // Takes a free slot or evicts; kNone if neither is possible.
  int32_t TakeSlot(int64_t* evictions);
  int32_t EvictOne();
  void InsertPinned(int32_t slot, uint64_t key, int64_t freq);
  void RemoveEntry(int32_t slot);

  CachePolicy policy_;
  int64_t capacity_;
  FlatIdMap map_;                // key -> slot
  std::vector<Entry> e_;         // per slot
  std::vector<int32_t> free_;    // free slots (a stack)
  List lru_;                     // LRU
  std::vector<Bucket> buckets_;  // LFU bucket pool
  std::vector<int32_t> free_buckets_;
  int32_t first_bucket_ = kNone;  // LFU: lowest frequency
  int64_t pinned_ = 0;
  CacheStats counters_;
};

}  // namespace embstore::cuda

#endif  // EMBSTORE_CUDA_CACHE_POLICY_H_
