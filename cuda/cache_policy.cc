#include "cuda/cache_policy.h"

#include <algorithm>
#include <cassert>
#include <cstdio>
#include <string>

namespace embstore::cuda {

Result<int64_t> CacheCapacityRows(int64_t cache_rows, int64_t cache_bytes,
                                  const SlotLayout& layout) {
  if (cache_rows < 0) {
    return Status::InvalidArgument("cache_rows must be >= 0 (got " + std::to_string(cache_rows) +
                                   ")");
  }
  if (cache_bytes < 0) {
    return Status::InvalidArgument("cache_bytes must be >= 0 (got " + std::to_string(cache_bytes) +
                                   ")");
  }
  if (cache_rows > 0 && cache_bytes > 0) {
    return Status::InvalidArgument(
        "give the GPU cache size in rows or in bytes, not both (cache_rows = " +
        std::to_string(cache_rows) + ", cache_bytes = " + std::to_string(cache_bytes) + ")");
  }
  int64_t rows = cache_rows;
  if (rows == 0) {
    const int64_t bytes = cache_bytes > 0 ? cache_bytes : kDefaultCacheBytes;
    rows = bytes / layout.slot_bytes();
    if (rows == 0) {
      return Status::InvalidArgument(
          "a GPU cache of " + std::to_string(bytes) + " bytes holds no row of " +
          DTypeName(layout.dtype) + " x " + std::to_string(layout.dim) + " (" +
          std::to_string(layout.slot_bytes()) + " bytes per cached row)");
    }
    // A byte budget is a ceiling: clamp rather than fail.
    rows = std::min(rows, kMaxCacheRows);
  }
  if (rows > kMaxCacheRows) {
    return Status::InvalidArgument("cache_rows must be at most " + std::to_string(kMaxCacheRows) +
                                   " (got " + std::to_string(rows) + ")");
  }
  return rows;
}

// ---- FlatIdMap -------------------------------------------------------------

void FlatIdMap::Reserve(size_t n) {
  size_t buckets = 16;
  while (buckets < 2 * n) buckets *= 2;
  if (buckets > slots_.size()) Rehash(buckets);
}

void FlatIdMap::Clear() {
  if (size_ == 0) return;
  for (Bucket& b : slots_) b.key = kEmpty;
  size_ = 0;
}

void FlatIdMap::Rehash(size_t buckets) {
  std::vector<Bucket> old(buckets, Bucket{kEmpty, 0});
  old.swap(slots_);
  mask_ = buckets - 1;
  for (const Bucket& b : old) {
    if (b.key == kEmpty) continue;
    size_t j = Home(b.key);
    while (slots_[j].key != kEmpty) j = (j + 1) & mask_;
    slots_[j] = b;
  }
}

const int32_t* FlatIdMap::Find(uint64_t key) const {
  if (size_ == 0) return nullptr;
  for (size_t i = Home(key);; i = (i + 1) & mask_) {
    if (slots_[i].key == key) return &slots_[i].value;
    if (slots_[i].key == kEmpty) return nullptr;
  }
}

std::pair<int32_t*, bool> FlatIdMap::Insert(uint64_t key, int32_t value) {
  assert(key != kEmpty);
  if ((size_ + 1) * 2 > slots_.size()) Rehash(std::max<size_t>(16, slots_.size() * 2));
  size_t i = Home(key);
  for (; slots_[i].key != kEmpty; i = (i + 1) & mask_) {
    if (slots_[i].key == key) return {&slots_[i].value, false};
  }
  slots_[i] = Bucket{key, value};
  ++size_;
  return {&slots_[i].value, true};
}

bool FlatIdMap::Erase(uint64_t key) {
  if (size_ == 0) return false;
  size_t i = Home(key);
  for (;; i = (i + 1) & mask_) {
    if (slots_[i].key == kEmpty) return false;
    if (slots_[i].key == key) break;
  }
  // Backward-shift deletion: pull later members of the probe run into the
  // hole when the hole lies between their home and where they are.
  size_t j = i;
  for (;;) {
    j = (j + 1) & mask_;
    if (slots_[j].key == kEmpty) break;
    const size_t home = Home(slots_[j].key);
    if (((j - home) & mask_) >= ((j - i) & mask_)) {
      slots_[i] = slots_[j];
      i = j;
    }
  }
  slots_[i].key = kEmpty;
  --size_;
  return true;
}

// ---- SlotCache -------------------------------------------------------------

SlotCache::SlotCache(CachePolicy policy, int64_t capacity)
    : policy_(policy), capacity_(std::clamp<int64_t>(capacity, 0, kMaxCacheRows)) {
  map_.Reserve(static_cast<size_t>(capacity_));
  Clear();
}

void SlotCache::Clear() {
  map_.Clear();
  e_.assign(static_cast<size_t>(capacity_), Entry());
  free_.clear();
  free_.reserve(static_cast<size_t>(capacity_));
  // A stack: slot 0 is handed out first.
  for (int64_t s = capacity_ - 1; s >= 0; --s) free_.push_back(static_cast<int32_t>(s));
  lru_ = List();
  buckets_.clear();
  free_buckets_.clear();
  first_bucket_ = kNone;
  pinned_ = 0;
}

// Evictable lists -------------------------------------------------------------

SlotCache::List* SlotCache::ListOf(int32_t slot) {
  return policy_ == CachePolicy::kLru ? &lru_ : &buckets_[e_[slot].bucket].evictable;
}

void SlotCache::ListPushBack(List* list, int32_t slot) {
  e_[slot].prev = list->tail;
  e_[slot].next = kNone;
  if (list->tail != kNone) {
    e_[list->tail].next = slot;
  } else {
    list->head = slot;
  }
  list->tail = slot;
}

void SlotCache::ListRemove(List* list, int32_t slot) {
  const int32_t p = e_[slot].prev, n = e_[slot].next;
  if (p != kNone) {
    e_[p].next = n;
  } else {
    list->head = n;
  }
  if (n != kNone) {
    e_[n].prev = p;
  } else {
    list->tail = p;
  }
  e_[slot].prev = e_[slot].next = kNone;
}

// LFU buckets -------------------------------------------------------------------

int32_t SlotCache::NewBucketAfter(int32_t prev, int64_t freq) {
  int32_t b;
  if (!free_buckets_.empty()) {
    b = free_buckets_.back();
    free_buckets_.pop_back();
    buckets_[b] = Bucket();
  } else {
    b = static_cast<int32_t>(buckets_.size());
    buckets_.emplace_back();
  }
  Bucket& nb = buckets_[b];
  nb.freq = freq;
  nb.prev = prev;
  nb.next = prev == kNone ? first_bucket_ : buckets_[prev].next;
  if (prev == kNone) {
    first_bucket_ = b;
  } else {
    buckets_[prev].next = b;
  }
  if (nb.next != kNone) buckets_[nb.next].prev = b;
  return b;
}

void SlotCache::MaybeFreeBucket(int32_t b) {
  Bucket& bk = buckets_[b];
  if (bk.n_total != 0) return;
  if (bk.prev != kNone) {
    buckets_[bk.prev].next = bk.next;
  } else {
    first_bucket_ = bk.next;
  }
  if (bk.next != kNone) buckets_[bk.next].prev = bk.prev;
  free_buckets_.push_back(b);
}

int32_t SlotCache::BucketFor(int64_t freq) {
  int32_t prev = kNone, cur = first_bucket_;
  while (cur != kNone && buckets_[cur].freq < freq) {
    prev = cur;
    cur = buckets_[cur].next;
  }
  if (cur != kNone && buckets_[cur].freq == freq) return cur;
  return NewBucketAfter(prev, freq);
}

// Entries -----------------------------------------------------------------------

void SlotCache::PinHit(int32_t slot, bool use) {
  if (e_[slot].pins == 0) {
    ListRemove(ListOf(slot), slot);
    if (policy_ == CachePolicy::kLfu) --buckets_[e_[slot].bucket].n_evictable;
    ++pinned_;
  }
  ++e_[slot].pins;
  if (use && policy_ == CachePolicy::kLfu) {
    // Promote to the bucket of freq + 1 (the next bucket, or a new one).
    const int32_t b = e_[slot].bucket;
    const int64_t f = e_[slot].freq + 1;
    int32_t nb = buckets_[b].next;
    if (nb == kNone || buckets_[nb].freq != f) nb = NewBucketAfter(b, f);
    --buckets_[b].n_total;
    ++buckets_[nb].n_total;
    e_[slot].bucket = nb;
    e_[slot].freq = f;
    MaybeFreeBucket(b);
  }
}

void SlotCache::InsertPinned(int32_t slot, uint64_t key, int64_t freq) {
  e_[slot].key = key;
  e_[slot].used = true;
  e_[slot].pins = 1;
  ++pinned_;
  map_.Insert(key, slot);
  if (policy_ == CachePolicy::kLfu) {
    const int32_t b = BucketFor(freq);
    ++buckets_[b].n_total;
    e_[slot].bucket = b;
    e_[slot].freq = freq;
  }
}

void SlotCache::RemoveEntry(int32_t slot) {
  map_.Erase(e_[slot].key);
  if (e_[slot].pins == 0) {
    ListRemove(ListOf(slot), slot);
    if (policy_ == CachePolicy::kLfu) --buckets_[e_[slot].bucket].n_evictable;
  } else {
    --pinned_;
  }
  if (policy_ == CachePolicy::kLfu) {
    const int32_t b = e_[slot].bucket;
    --buckets_[b].n_total;
    MaybeFreeBucket(b);
    e_[slot].bucket = kNone;
    e_[slot].freq = 0;
  }
  e_[slot].used = false;
  e_[slot].pins = 0;
}

int32_t SlotCache::EvictOne() {
  int32_t victim = kNone;
  if (policy_ == CachePolicy::kLru) {
    victim = lru_.head;
  } else {
    // The lowest bucket with an evictable row. Buckets holding only pinned
    // rows are skipped; there are at most as many as pinned rows.
    int32_t b = first_bucket_;
    while (b != kNone && buckets_[b].n_evictable == 0) b = buckets_[b].next;
    if (b != kNone) victim = buckets_[b].evictable.head;
  }
  if (victim != kNone) RemoveEntry(victim);
  return victim;
}

int32_t SlotCache::TakeSlot(int64_t* evictions) {
  if (!free_.empty()) {
    const int32_t s = free_.back();
    free_.pop_back();
    return s;
  }
  const int32_t s = EvictOne();
  if (s != kNone) ++*evictions;
  return s;
}

// Public ------------------------------------------------------------------------

Status SlotCache::Acquire(std::span<const uint64_t> keys, Acquired* out) {
  const size_t n = keys.size();
  out->slots.assign(n, kNone);
  out->fills.clear();
  out->hits = out->misses = out->evictions = 0;

  // Pass 1 (no change): can the misses be placed once the hits are pinned?
  // Probes miss the CPU caches: prefetch the buckets a few keys ahead.
  constexpr size_t kAhead = 16;
  int64_t misses = 0, evictable_hits = 0;
  for (size_t i = 0; i < n; ++i) {
    if (i + kAhead < n) map_.Prefetch(keys[i + kAhead]);
    const int32_t* s = map_.Find(keys[i]);
    if (s == nullptr) {
      ++misses;
    } else {
      out->slots[i] = *s;
      if (e_[*s].pins == 0) ++evictable_hits;
    }
  }
  const int64_t room = free_slots() + evictable() - evictable_hits;
  if (misses > room) {
    out->slots.assign(n, kNone);
    return Status::InvalidArgument(
        "the GPU row cache cannot hold this batch: it needs " + std::to_string(misses) +
        " more rows but only " + std::to_string(room) + " of its " + std::to_string(capacity_) +
        " slots are free or evictable (" + std::to_string(pinned_) + " pinned)");
  }

  // Pass 2: hits first (so that no miss can evict them), then misses.
  for (size_t i = 0; i < n; ++i) {
    if (i + kAhead < n && out->slots[i + kAhead] != kNone) {
      __builtin_prefetch(&e_[out->slots[i + kAhead]]);
    }
    if (out->slots[i] == kNone) continue;
    PinHit(out->slots[i], /*use=*/true);
    ++out->hits;
  }
  for (size_t i = 0; i < n; ++i) {
    if (out->slots[i] != kNone) continue;
    if (const int32_t* s = map_.Find(keys[i])) {  // a repeat of an earlier miss
      PinHit(*s, /*use=*/true);
      out->slots[i] = *s;
      ++out->hits;
      continue;
    }
    const int32_t slot = TakeSlot(&out->evictions);
    assert(slot != kNone);  // guaranteed by pass 1
    InsertPinned(slot, keys[i], 1);
    out->slots[i] = slot;
    out->fills.push_back(Fill{slot, keys[i]});
    ++out->misses;
  }
  counters_.lookups += static_cast<int64_t>(n);
  counters_.hits += out->hits;
  counters_.misses += out->misses;
  counters_.evictions += out->evictions;
  return Status::OK();
}

void SlotCache::AcquireForPrefetch(std::span<const uint64_t> keys, Acquired* out) {
  const size_t n = keys.size();
  out->slots.assign(n, kNone);
  out->fills.clear();
  out->hits = out->misses = out->evictions = 0;
  int64_t dropped = 0;
  for (size_t i = 0; i < n; ++i) {
    if (map_.Find(keys[i]) != nullptr) {
      ++out->hits;
      continue;
    }
    const int32_t slot = TakeSlot(&out->evictions);
    if (slot == kNone) {
      ++dropped;
      continue;
    }
    InsertPinned(slot, keys[i], 0);
    out->slots[i] = slot;
    out->fills.push_back(Fill{slot, keys[i]});
    ++out->misses;
  }
  counters_.prefetch_lookups += static_cast<int64_t>(n);
  counters_.prefetched_rows += out->misses;
  counters_.prefetch_dropped += dropped;
  counters_.evictions += out->evictions;
}

void SlotCache::Release(std::span<const int32_t> slots) {
  constexpr size_t kAhead = 16;
  for (size_t i = 0; i < slots.size(); ++i) {
    if (i + kAhead < slots.size() && slots[i + kAhead] >= 0 && slots[i + kAhead] < capacity_) {
      __builtin_prefetch(&e_[slots[i + kAhead]]);
    }
    const int32_t slot = slots[i];
    if (slot < 0 || slot >= capacity_ || !e_[slot].used || e_[slot].pins == 0) continue;
    if (--e_[slot].pins > 0) continue;
    --pinned_;
    ListPushBack(ListOf(slot), slot);
    if (policy_ == CachePolicy::kLfu) ++buckets_[e_[slot].bucket].n_evictable;
  }
}

void SlotCache::Erase(int32_t slot) {
  if (slot < 0 || slot >= capacity_ || !e_[slot].used) return;
  RemoveEntry(slot);
  free_.push_back(slot);
}

int64_t SlotCache::EraseIf(const std::function<bool(uint64_t key)>& pred) {
  int64_t erased = 0;
  for (int64_t s = 0; s < capacity_; ++s) {
    const int32_t slot = static_cast<int32_t>(s);
    if (e_[slot].used && e_[slot].pins == 0 && pred(e_[slot].key)) {
      Erase(slot);
      ++erased;
    }
  }
  return erased;
}

std::optional<int32_t> SlotCache::Find(uint64_t key) const {
  const int32_t* s = map_.Find(key);
  if (s == nullptr) return std::nullopt;
  return *s;
}

std::optional<uint64_t> SlotCache::KeyAt(int32_t slot) const {
  if (slot < 0 || slot >= capacity_ || !e_[slot].used) return std::nullopt;
  return e_[slot].key;
}

int64_t SlotCache::Frequency(int32_t slot) const {
  if (policy_ != CachePolicy::kLfu || slot < 0 || slot >= capacity_ || !e_[slot].used) return 0;
  return e_[slot].freq;
}

std::vector<uint64_t> SlotCache::EvictionOrder() const {
  std::vector<uint64_t> order;
  auto walk = [&](const List& list) {
    for (int32_t s = list.head; s != kNone; s = e_[s].next) order.push_back(e_[s].key);
  };
  if (policy_ == CachePolicy::kLru) {
    walk(lru_);
  } else {
    for (int32_t b = first_bucket_; b != kNone; b = buckets_[b].next) walk(buckets_[b].evictable);
  }
  return order;
}

}  // namespace embstore::cuda
