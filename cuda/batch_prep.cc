#include "cuda/batch_prep.h"

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>

#include "cuda/cache_policy.h"
#include "engine/page_prefetch.h"

namespace embstore::cuda {
namespace {

constexpr int64_t Align16(int64_t n) { return (n + 15) / 16 * 16; }

template <typename Int>
void DedupPositions(const Int* ids, const engine::BagPlan& plan, FlatIdMap* map,
                    DedupedBatch* out) {
  const int64_t bags = plan.num_bags();
  // Hash-map probes miss the CPU caches; ask for the bucket of the id a few
  // positions ahead (any position of the array: a prefetch of a bucket of an
  // unvalidated id is harmless).
  constexpr int64_t kAhead = 16;
  const int64_t last = plan.indices.size - 1;
  int64_t e = 0;
  out->bag_offsets[0] = 0;
  for (int64_t b = 0; b < bags; ++b) {
    for (int64_t pos = plan.bag_begin[b]; pos < plan.bag_end[b]; ++pos) {
      map->Prefetch(static_cast<uint64_t>(ids[std::min(pos + kAhead, last)]));
      const int64_t row = static_cast<int64_t>(ids[pos]);
      if (row == plan.padding_row) continue;
      const auto [u, inserted] =
          map->Insert(static_cast<uint64_t>(row), static_cast<int32_t>(out->unique_rows.size()));
      if (inserted) out->unique_rows.push_back(row);
      out->entry_unique[e] = *u;
      if (plan.weights != nullptr) out->entry_weight[e] = plan.weights[pos];
      ++e;
    }
    out->bag_offsets[b + 1] = e;
  }
  out->entry_unique.resize(e);
  if (plan.weights != nullptr) out->entry_weight.resize(e);
}

uint64_t MixRow(uint64_t x) {  // splitmix64's finalizer
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

// Large batches: partition the entries by a hash of their row, deduplicate
// each partition on its own (in parallel, with a map small enough to stay in
// the CPU caches), then number the partitions' rows one after the other.
// Rows are numbered by partition, then by first use within it.
template <typename Int>
void DedupParallel(const Int* ids, const engine::BagPlan& plan, DedupedBatch* out) {
  constexpr int kPartBits = 6;
  constexpr int kParts = 1 << kPartBits;
  const int64_t bags = plan.num_bags();
  // 1. Entries per bag (padding dropped), then their rows and weights.
  out->bag_offsets.assign(static_cast<size_t>(bags) + 1, 0);
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, bags, 1024), [&](const auto& r) {
    for (int64_t b = r.begin(); b < r.end(); ++b) {
      int64_t n = 0;
      for (int64_t pos = plan.bag_begin[b]; pos < plan.bag_end[b]; ++pos) {
        n += static_cast<int64_t>(ids[pos]) != plan.padding_row;
      }
      out->bag_offsets[b + 1] = n;
    }
  });
  for (int64_t b = 0; b < bags; ++b) out->bag_offsets[b + 1] += out->bag_offsets[b];
  const int64_t entries = out->bag_offsets[bags];
  std::vector<int64_t> rows(static_cast<size_t>(entries));
  out->entry_unique.resize(static_cast<size_t>(entries));
  if (plan.weights != nullptr) out->entry_weight.resize(static_cast<size_t>(entries));
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, bags, 1024), [&](const auto& r) {
    for (int64_t b = r.begin(); b < r.end(); ++b) {
      int64_t e = out->bag_offsets[b];
      for (int64_t pos = plan.bag_begin[b]; pos < plan.bag_end[b]; ++pos) {
        const int64_t row = static_cast<int64_t>(ids[pos]);
        if (row == plan.padding_row) continue;
        rows[e] = row;
        if (plan.weights != nullptr) out->entry_weight[e] = plan.weights[pos];
        ++e;
      }
    }
  });
  // 2. Partition the entries (stable: chunk by chunk, in entry order).
  const int64_t chunks = std::min<int64_t>(256, std::max<int64_t>(1, entries / 4096));
  const int64_t per_chunk = (entries + chunks - 1) / chunks;
  auto part_of = [](int64_t row) {
    return static_cast<int>(MixRow(static_cast<uint64_t>(row)) >> (64 - kPartBits));
  };
  std::vector<int64_t> hist(static_cast<size_t>(chunks * kParts), 0);
  tbb::parallel_for(int64_t{0}, chunks, [&](int64_t c) {
    const int64_t first = c * per_chunk, last = std::min(entries, first + per_chunk);
    for (int64_t e = first; e < last; ++e) ++hist[c * kParts + part_of(rows[e])];
  });
  std::vector<int64_t> part_begin(kParts + 1, 0);
  {
    int64_t at = 0;
    for (int p = 0; p < kParts; ++p) {
      part_begin[p] = at;
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t n = hist[c * kParts + p];
        hist[c * kParts + p] = at;
        at += n;
      }
    }
    part_begin[kParts] = at;
  }
  // (row, entry) pairs in partition order, so that step 3 reads sequentially.
  struct Item {
    int64_t row;
    int32_t entry;
    int32_t local;  // the row's number within its partition (step 3)
  };
  std::vector<Item> items(static_cast<size_t>(entries));
  tbb::parallel_for(int64_t{0}, chunks, [&](int64_t c) {
    const int64_t first = c * per_chunk, last = std::min(entries, first + per_chunk);
    for (int64_t e = first; e < last; ++e) {
      items[hist[c * kParts + part_of(rows[e])]++] = Item{rows[e], static_cast<int32_t>(e), 0};
    }
  });
  // 3. Deduplicate each partition.
  std::vector<std::vector<int64_t>> part_rows(kParts);
  tbb::parallel_for(0, kParts, [&](int p) {
    FlatIdMap map(static_cast<size_t>(part_begin[p + 1] - part_begin[p]) / 4);
    std::vector<int64_t>& mine = part_rows[p];
    for (int64_t k = part_begin[p]; k < part_begin[p + 1]; ++k) {
      Item& it = items[k];
      const auto [u, inserted] =
          map.Insert(static_cast<uint64_t>(it.row), static_cast<int32_t>(mine.size()));
      if (inserted) mine.push_back(it.row);
      it.local = *u;
    }
  });
  // 4. Number the partitions' rows one after the other.
  std::vector<int32_t> base(kParts + 1, 0);
  for (int p = 0; p < kParts; ++p) {
    base[p + 1] = base[p] + static_cast<int32_t>(part_rows[p].size());
  }
  out->unique_rows.resize(static_cast<size_t>(base[kParts]));
  tbb::parallel_for(0, kParts, [&](int p) {
    std::copy(part_rows[p].begin(), part_rows[p].end(), out->unique_rows.begin() + base[p]);
    for (int64_t k = part_begin[p]; k < part_begin[p + 1]; ++k) {
      out->entry_unique[items[k].entry] = items[k].local + base[p];
    }
  });
}

}  // namespace

Result<DedupedBatch> DedupBags(const engine::BagPlan& plan, FlatIdMap* scratch) {
  DedupedBatch out;
  const int64_t bags = plan.num_bags();
  const int64_t positions = plan.num_entries();
  if (positions >= std::numeric_limits<int32_t>::max()) {
    return Status::InvalidArgument("a GPU batch holds at most " +
                                   std::to_string(std::numeric_limits<int32_t>::max() - 1) +
                                   " entries (got " + std::to_string(positions) + ")");
  }
  out.weighted = plan.weights != nullptr;
  // The partitioned dedup does ~2x the work of the serial one (measured on
  // one core), so it pays only with several cores.
  if (positions >= kParallelDedupEntries && tbb::this_task_arena::max_concurrency() >= 4) {
    return DedupBagsPartitioned(plan);
  }
  out.bag_offsets.assign(static_cast<size_t>(bags) + 1, 0);
  out.entry_unique.resize(static_cast<size_t>(positions));
  if (out.weighted) out.entry_weight.resize(static_cast<size_t>(positions));
  // Start small (batches usually repeat ids a lot); the map grows as needed,
  // and a small map stays in the CPU caches.
  FlatIdMap local;
  FlatIdMap* map = scratch != nullptr ? scratch : &local;
  map->Clear();
  map->Reserve(static_cast<size_t>(std::min<int64_t>(positions, int64_t{1} << 16)));
  if (plan.indices.type == IndexType::kInt64) {
    DedupPositions(static_cast<const int64_t*>(plan.indices.data), plan, map, &out);
  } else {
    DedupPositions(static_cast<const int32_t*>(plan.indices.data), plan, map, &out);
  }
  return out;
}

Result<DedupedBatch> DedupBagsPartitioned(const engine::BagPlan& plan) {
  if (plan.num_entries() >= std::numeric_limits<int32_t>::max()) {
    return Status::InvalidArgument("a GPU batch holds at most " +
                                   std::to_string(std::numeric_limits<int32_t>::max() - 1) +
                                   " entries (got " + std::to_string(plan.num_entries()) + ")");
  }
  DedupedBatch out;
  out.weighted = plan.weights != nullptr;
  if (plan.indices.type == IndexType::kInt64) {
    DedupParallel(static_cast<const int64_t*>(plan.indices.data), plan, &out);
  } else {
    DedupParallel(static_cast<const int32_t*>(plan.indices.data), plan, &out);
  }
  return out;
}

Result<std::vector<SubBatch>> SplitBatch(const DedupedBatch& batch, int64_t capacity) {
  std::vector<SubBatch> passes;
  const int64_t bags = batch.num_bags();
  const int64_t uniques = batch.num_unique();
  if (bags <= 0) return passes;
  if (uniques <= capacity) {
    SubBatch all;
    all.first_bag = 0;
    all.last_bag = bags;
    all.uniques.resize(static_cast<size_t>(uniques));
    for (int64_t u = 0; u < uniques; ++u) all.uniques[u] = static_cast<int32_t>(u);
    passes.push_back(std::move(all));
    return passes;
  }
  // Greedy over bags. pass_of[u]: the last pass that took row u; seen[u]: the
  // last (bag, count) marker, to count each row once per bag.
  std::vector<int64_t> pass_of(static_cast<size_t>(uniques), -1);
  std::vector<int64_t> seen(static_cast<size_t>(uniques), -1);
  int64_t pass = 0, start = 0, in_pass = 0, marker = 0;
  SubBatch current;
  auto distinct_new = [&](int64_t b, bool all_new) {
    ++marker;
    int64_t count = 0;
    for (int64_t e = batch.bag_offsets[b]; e < batch.bag_offsets[b + 1]; ++e) {
      const int32_t u = batch.entry_unique[e];
      if ((all_new || pass_of[u] != pass) && seen[u] != marker) {
        seen[u] = marker;
        ++count;
      }
    }
    return count;
  };
  for (int64_t b = 0; b < bags; ++b) {
    int64_t fresh = distinct_new(b, false);
    if (in_pass + fresh > capacity) {
      if (b > start) {
        current.first_bag = start;
        current.last_bag = b;
        passes.push_back(std::move(current));
        current = SubBatch();
        ++pass;
        start = b;
        in_pass = 0;
      }
      fresh = distinct_new(b, true);
      if (fresh > capacity) {
        return Status::InvalidArgument(
            "bag " + std::to_string(b) + " uses " + std::to_string(fresh) +
            " distinct rows but the GPU row cache holds only " + std::to_string(capacity) +
            " rows; give a larger cache (cache_rows / cache_bytes)");
      }
    }
    for (int64_t e = batch.bag_offsets[b]; e < batch.bag_offsets[b + 1]; ++e) {
      const int32_t u = batch.entry_unique[e];
      if (pass_of[u] != pass) {
        pass_of[u] = pass;
        current.uniques.push_back(u);
      }
    }
    in_pass += fresh;
  }
  current.first_bag = start;
  current.last_bag = bags;
  passes.push_back(std::move(current));
  return passes;
}

MetaLayout ComputeMetaLayout(const DedupedBatch& batch, const SubBatch& sub, bool with_uniques) {
  MetaLayout l;
  l.bags = sub.last_bag - sub.first_bag;
  l.entries = batch.bag_offsets[sub.last_bag] - batch.bag_offsets[sub.first_bag];
  l.uniques = with_uniques ? static_cast<int64_t>(sub.uniques.size()) : 0;
  int64_t at = 0;
  l.offsets_at = at;
  at += Align16((l.bags + 1) * static_cast<int64_t>(sizeof(int64_t)));
  l.slots_at = at;
  at += Align16(l.entries * static_cast<int64_t>(sizeof(int32_t)));
  if (batch.weighted) {
    l.weights_at = at;
    at += Align16(l.entries * static_cast<int64_t>(sizeof(float)));
  }
  if (with_uniques) {
    l.uniques_at = at;
    at += Align16(l.uniques * static_cast<int64_t>(sizeof(int32_t)));
  }
  l.total = at;
  return l;
}

void FillMeta(const DedupedBatch& batch, const SubBatch& sub,
              std::span<const int32_t> slot_of_unique, const MetaLayout& layout, uint8_t* meta) {
  const int64_t base = batch.bag_offsets[sub.first_bag];
  auto* offsets = reinterpret_cast<int64_t*>(meta + layout.offsets_at);
  for (int64_t b = 0; b <= layout.bags; ++b) {
    offsets[b] = batch.bag_offsets[sub.first_bag + b] - base;
  }
  auto* slots = reinterpret_cast<int32_t*>(meta + layout.slots_at);
  for (int64_t e = 0; e < layout.entries; ++e) {
    slots[e] = slot_of_unique[batch.entry_unique[base + e]];
  }
  if (layout.weights_at >= 0 && layout.entries > 0) {
    std::memcpy(meta + layout.weights_at, batch.entry_weight.data() + base,
                static_cast<size_t>(layout.entries) * sizeof(float));
  }
  if (layout.uniques_at >= 0) {
    auto* uniques = reinterpret_cast<int32_t*>(meta + layout.uniques_at);
    for (int64_t i = 0; i < layout.uniques; ++i) uniques[i] = slot_of_unique[sub.uniques[i]];
  }
}

DirectPlan PlanDirect(const engine::BagPlan& plan) {
  DirectPlan d;
  const int64_t bags = plan.num_bags();
  d.bag_offsets.assign(static_cast<size_t>(bags) + 1, 0);
  auto count = [&](int64_t b) -> int64_t {
    if (plan.padding_row < 0) return plan.bag_end[b] - plan.bag_begin[b];
    int64_t n = 0;
    for (int64_t pos = plan.bag_begin[b]; pos < plan.bag_end[b]; ++pos) {
      n += plan.indices[pos] != plan.padding_row;
    }
    return n;
  };
  for (int64_t b = 0; b < bags; ++b) d.bag_offsets[b + 1] = d.bag_offsets[b] + count(b);
  MetaLayout& l = d.layout;
  l.bags = bags;
  l.entries = d.bag_offsets[bags];
  int64_t at = 0;
  l.offsets_at = at;
  at += Align16((bags + 1) * static_cast<int64_t>(sizeof(int64_t)));
  l.slots_at = at;
  at += Align16(l.entries * static_cast<int64_t>(sizeof(int32_t)));
  if (plan.weights != nullptr) {
    l.weights_at = at;
    at += Align16(l.entries * static_cast<int64_t>(sizeof(float)));
  }
  l.total = at;
  return d;
}

namespace {
template <typename Int>
void FillDirectBags(const Int* ids, const engine::BagPlan& plan, const DirectPlan& d,
                    int32_t* slots, float* weights, int64_t first, int64_t last) {
  for (int64_t b = first; b < last; ++b) {
    int64_t e = d.bag_offsets[b];
    for (int64_t pos = plan.bag_begin[b]; pos < plan.bag_end[b]; ++pos) {
      const int64_t row = static_cast<int64_t>(ids[pos]);
      if (row == plan.padding_row) continue;
      slots[e] = static_cast<int32_t>(row);
      if (weights != nullptr) weights[e] = plan.weights[pos];
      ++e;
    }
  }
}
}  // namespace

void FillDirectMeta(const engine::BagPlan& plan, const DirectPlan& d, uint8_t* meta,
                    bool parallel) {
  const MetaLayout& l = d.layout;
  std::memcpy(meta + l.offsets_at, d.bag_offsets.data(), d.bag_offsets.size() * sizeof(int64_t));
  auto* slots = reinterpret_cast<int32_t*>(meta + l.slots_at);
  float* weights = l.weights_at >= 0 ? reinterpret_cast<float*>(meta + l.weights_at) : nullptr;
  auto fill = [&](int64_t first, int64_t last) {
    if (plan.indices.type == IndexType::kInt64) {
      FillDirectBags(static_cast<const int64_t*>(plan.indices.data), plan, d, slots, weights, first,
                     last);
    } else {
      FillDirectBags(static_cast<const int32_t*>(plan.indices.data), plan, d, slots, weights, first,
                     last);
    }
  };
  if (parallel && l.entries > (int64_t{1} << 16)) {
    tbb::parallel_for(tbb::blocked_range<int64_t>(0, l.bags, 256),
                      [&](const tbb::blocked_range<int64_t>& r) { fill(r.begin(), r.end()); });
  } else {
    fill(0, l.bags);
  }
}

StagingLayout ComputeStagingLayout(int64_t n, const SlotLayout& layout) {
  StagingLayout s;
  s.n = n;
  int64_t at = 0;
  s.rows_at = at;
  at += n * layout.row_bytes;  // row_bytes is a multiple of 16
  if (layout.quantized) {
    s.qparams_at = at;
    at += Align16(n * 2 * static_cast<int64_t>(sizeof(float)));
  }
  s.slots_at = at;
  at += Align16(n * static_cast<int64_t>(sizeof(int32_t)));
  s.total = at;
  return s;
}

int64_t StagingRowsFor(int64_t bytes, const SlotLayout& layout) {
  // Per row: the row, scale and bias, the slot; plus up to 32 bytes of
  // alignment padding for the two side arrays.
  const int64_t per_row = layout.row_bytes + (layout.quantized ? 8 : 0) + 4;
  return std::max<int64_t>(1, (bytes - 32) / per_row);
}

void GatherRows(const TableView& table, const SlotLayout& layout, std::span<const int64_t> rows,
                std::span<const int32_t> slots, const StagingLayout& staging_layout,
                uint8_t* staging, bool parallel, const QueryOptions& prefetch) {
  const int64_t n = static_cast<int64_t>(rows.size());
  const size_t elem_bytes = static_cast<size_t>(layout.element_bytes());
  const size_t pad = static_cast<size_t>(layout.row_bytes) - elem_bytes;
  uint8_t* dst_rows = staging + staging_layout.rows_at;
  float* qparams =
      layout.quantized ? reinterpret_cast<float*>(staging + staging_layout.qparams_at) : nullptr;
  auto copy = [&](int64_t first, int64_t last) {
    for (int64_t i = first; i < last; ++i) {
      const uint8_t* src = table.Row(rows[i]);
      uint8_t* dst = dst_rows + i * layout.row_bytes;
      std::memcpy(dst, src, elem_bytes);
      if (pad > 0) std::memset(dst + elem_bytes, 0, pad);
      if (qparams != nullptr) {
        std::memcpy(&qparams[2 * i], src + elem_bytes, sizeof(float));
        std::memcpy(&qparams[2 * i + 1], src + elem_bytes + sizeof(float), sizeof(float));
      }
    }
  };
  // A cold table's rows: their pages are asked for a window ahead.
  auto one = [](int64_t) { return int64_t{1}; };
  auto advise = [&](engine::PageAdvisor& advisor, int64_t i) { advisor.Row(rows[i]); };
  auto gather = [&](int64_t first, int64_t last) {
    engine::RunWindowed(table, prefetch, first, last, last - first, one, advise, copy);
  };
  // Below a few hundred KiB the threads cost more than they save.
  if (parallel && n * static_cast<int64_t>(layout.row_bytes) > (int64_t{256} << 10)) {
    tbb::parallel_for(tbb::blocked_range<int64_t>(0, n, 64),
                      [&](const tbb::blocked_range<int64_t>& r) { gather(r.begin(), r.end()); });
  } else {
    gather(0, n);
  }
  if (n > 0) {
    std::memcpy(staging + staging_layout.slots_at, slots.data(),
                static_cast<size_t>(n) * sizeof(int32_t));
  }
}

}  // namespace embstore::cuda
