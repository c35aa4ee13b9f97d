#include "engine/page_prefetch.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>

#include "embstore/dtype.h"

namespace embstore::engine {
namespace {

// A table's state: 0 warm, 1 suspect, otherwise the steady-clock time (ns)
// until which it is cold. Tables share a slot when their addresses hash
// alike: the state is a hint, and a wrong hint costs a probe or a few timed
// chunks, never a wrong result.
constexpr int64_t kWarm = 0;
constexpr int64_t kSuspect = 1;
// How long a table stays cold after a chunk that found pages missing.
constexpr int64_t kColdForNs = 250'000'000;
// Fewer checked rows than this with none missing do not make a cold table
// warm (a few hot rows are not the table).
constexpr int64_t kWarmEvidenceRows = 64;

struct alignas(64) Slot {
  std::atomic<int64_t> state{kWarm};
};
constexpr int kSlotBits = 6;
Slot g_slots[1 << kSlotBits];

Slot& SlotFor(const TableView& table) {
  uint64_t k = reinterpret_cast<uintptr_t>(table.data) >> 12;
  k ^= static_cast<uint64_t>(table.rows) * 0x9E3779B97F4A7C15ull;
  k *= 0xBF58476D1CE4E5B9ull;
  return g_slots[k >> (64 - kSlotBits)];
}

struct Counters {
  std::atomic<int64_t> cold_chunks{0};
  std::atomic<int64_t> rows_checked{0};
  std::atomic<int64_t> rows_missing{0};
  std::atomic<int64_t> pages_read{0};
};
Counters g_counters;

size_t PageBytes() {
  static const size_t page = [] {
    const long p = sysconf(_SC_PAGESIZE);
    return p > 0 ? static_cast<size_t>(p) : size_t{4096};
  }();
  return page;
}

// A warm chunk reads a resident row in well under a microsecond plus a
// nanosecond per byte; a chunk that faults rows in from a disk spends tens
// of microseconds on each. Above this the table is worth a probe.
int64_t SlowPieceNs(int64_t rows, size_t payload) {
  return 50'000 + rows * (2'000 + static_cast<int64_t>(payload));
}

}  // namespace

ChunkMode BeginChunk(const TableView& table, const QueryOptions& options) {
  if (options.prefetch == QueryOptions::Prefetch::kOff || table.data == nullptr ||
      table.rows == 0) {
    return ChunkMode::kPlain;
  }
  if (options.prefetch == QueryOptions::Prefetch::kOn) return ChunkMode::kPrefetch;
  Slot& slot = SlotFor(table);
  const int64_t s = slot.state.load(std::memory_order_relaxed);
  if (s == kWarm) return ChunkMode::kTimed;
  if (s == kSuspect) return ChunkMode::kProbe;
  // Cold until s; past it, probe again.
  return NowNs() < s ? ChunkMode::kPrefetch : ChunkMode::kProbe;
}

bool EndTimedPiece(const TableView& table, int64_t rows, int64_t elapsed_ns) {
  if (elapsed_ns <= SlowPieceNs(rows, RowPayloadBytes(table.dtype, table.dim))) return false;
  int64_t expected = kWarm;
  SlotFor(table).state.compare_exchange_strong(expected, kSuspect, std::memory_order_relaxed);
  return true;
}

PageAdvisor::PageAdvisor(const TableView& table)
    : table_(table),
      page_mask_(~static_cast<uintptr_t>(PageBytes() - 1)),
      payload_(std::max<size_t>(RowPayloadBytes(table.dtype, table.dim), 1)) {}

void PageAdvisor::Row(int64_t row) {
  const uintptr_t at = reinterpret_cast<uintptr_t>(table_.Row(row));
  const uintptr_t begin = at & page_mask_;
  const uintptr_t end = (at + payload_ - 1) & page_mask_;  // the last page
  const size_t page = PageBytes();
  if (begin == end) {
    // One page: most rows. Seen this chunk already -> asked for or resident.
    uintptr_t& seen = recent_[(begin / page) % kRecent];
    if (seen == begin) return;
    seen = begin;
    // Looked up (mincore) while most pages are found resident, so that only
    // the missing ones are asked for; while most are missing, asked for at
    // once (a WILLNEED of a resident page does nothing) and only one row in
    // kSampleEvery looked up, to keep the hit rate known: on a cold table
    // the lookups cost more than they save.
    if (filter_ || ++unsampled_ >= kSampleEvery) {
      unsampled_ = 0;
      unsigned char resident = 0;
      if (mincore(reinterpret_cast<void*>(begin), page, &resident) != 0) return;
      const bool missing = (resident & 1) == 0;
      Sample(missing);
      if (!missing) return;
    }
    ++pages_read_;
    (void)madvise(reinterpret_cast<void*>(begin), page, MADV_WILLNEED);
    return;
  }
  // A row over several pages: look them up in batches, ask for runs of
  // missing ones.
  constexpr size_t kBatch = 64;
  unsigned char vec[kBatch];
  bool missing = false;
  for (uintptr_t p = begin; p <= end; p += kBatch * page) {
    const size_t n = std::min<size_t>(kBatch, (end - p) / page + 1);
    if (mincore(reinterpret_cast<void*>(p), n * page, vec) != 0) return;
    size_t i = 0;
    while (i < n) {
      if ((vec[i] & 1) != 0) {
        ++i;
        continue;
      }
      size_t j = i;
      while (j < n && (vec[j] & 1) == 0) ++j;
      (void)madvise(reinterpret_cast<void*>(p + i * page), (j - i) * page, MADV_WILLNEED);
      pages_read_ += static_cast<int64_t>(j - i);
      missing = true;
      i = j;
    }
  }
  Sample(missing);
}

void PageAdvisor::Sample(bool missing) {
  ++rows_checked_;
  rows_missing_ += missing ? 1 : 0;
  window_missing_ += missing ? 1 : 0;
  if (++window_checked_ == kFilterWindow) {
    filter_ = window_missing_ * 2 < window_checked_;
    window_checked_ = 0;
    window_missing_ = 0;
  }
}

void PageAdvisor::Finish() {
  g_counters.cold_chunks.fetch_add(1, std::memory_order_relaxed);
  g_counters.rows_checked.fetch_add(rows_checked_, std::memory_order_relaxed);
  g_counters.rows_missing.fetch_add(rows_missing_, std::memory_order_relaxed);
  g_counters.pages_read.fetch_add(pages_read_, std::memory_order_relaxed);
  Slot& slot = SlotFor(table_);
  if (rows_missing_ > 0) {
    slot.state.store(NowNs() + kColdForNs, std::memory_order_relaxed);
    return;
  }
  // Nothing missing: warm again on enough evidence, after a probe of a
  // suspect table, or once the cold spell has run out (else small requests
  // would probe it forever).
  const int64_t s = slot.state.load(std::memory_order_relaxed);
  if (rows_checked_ >= kWarmEvidenceRows || s == kSuspect || (s != kWarm && NowNs() >= s)) {
    slot.state.store(kWarm, std::memory_order_relaxed);
  }
}

}  // namespace embstore::engine

namespace embstore {

const char* PrefetchName(QueryOptions::Prefetch prefetch) {
  switch (prefetch) {
    case QueryOptions::Prefetch::kAuto:
      return "auto";
    case QueryOptions::Prefetch::kOn:
      return "on";
    case QueryOptions::Prefetch::kOff:
      return "off";
  }
  return "unknown";
}

std::optional<QueryOptions::Prefetch> ParsePrefetch(std::string_view name) {
  if (name == "auto") return QueryOptions::Prefetch::kAuto;
  if (name == "on") return QueryOptions::Prefetch::kOn;
  if (name == "off") return QueryOptions::Prefetch::kOff;
  return std::nullopt;
}

PrefetchStats GetPrefetchStats() {
  PrefetchStats s;
  s.cold_chunks = engine::g_counters.cold_chunks.load(std::memory_order_relaxed);
  s.rows_checked = engine::g_counters.rows_checked.load(std::memory_order_relaxed);
  s.rows_missing = engine::g_counters.rows_missing.load(std::memory_order_relaxed);
  s.pages_read = engine::g_counters.pages_read.load(std::memory_order_relaxed);
  return s;
}

}  // namespace embstore
