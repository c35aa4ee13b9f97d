// Embedding-bag queries over a table view: torch.nn.functional.embedding_bag
// semantics plus embstore's extensions (weighted max/mean, non-mutating
// max_norm, batched bags with inclusive end offsets). See docs/semantics.md.
//
// Thread-safety: every function here is reentrant. Any number of threads may
// query the same TableView (or TableSnapshot) at once; nothing on the query
// path takes a global lock. Parallelism inside one call uses TBB.
#ifndef EMBSTORE_QUERY_H_
#define EMBSTORE_QUERY_H_

#include <cmath>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "embstore/status.h"
#include "embstore/types.h"

namespace embstore {

enum class PoolingMode { kSum = 0, kMean = 1, kMax = 2 };
const char* PoolingModeName(PoolingMode mode);  // "sum", "mean", "max"
std::optional<PoolingMode> ParsePoolingMode(std::string_view name);

enum class IndexType { kInt32 = 0, kInt64 = 1 };

// A typed, non-owning array of ids or offsets (int32 or int64).
struct IndexArray {
  const void* data = nullptr;
  int64_t size = 0;
  IndexType type = IndexType::kInt64;

  IndexArray() = default;
  IndexArray(std::span<const int64_t> s)  // NOLINT(google-explicit-constructor)
      : data(s.data()), size(static_cast<int64_t>(s.size())), type(IndexType::kInt64) {}
  IndexArray(std::span<const int32_t> s)  // NOLINT(google-explicit-constructor)
      : data(s.data()), size(static_cast<int64_t>(s.size())), type(IndexType::kInt32) {}
  int64_t operator[](int64_t i) const {
    return type == IndexType::kInt64 ? static_cast<const int64_t*>(data)[i]
                                     : static_cast<const int32_t*>(data)[i];
  }
};

struct QueryOptions {
  // Reduction over a bag. Default: kMean, as torch.
  PoolingMode mode = PoolingMode::kMean;
  // Entries whose index equals padding_idx are skipped (they neither add nor
  // count). Must satisfy -rows <= p < rows; negative p means p + rows.
  std::optional<int64_t> padding_idx;
  // When set (> 0), a row whose norm_type-norm exceeds max_norm is used scaled
  // by max_norm / (norm + 1e-7), exactly as torch would after renormalizing
  // it. The table itself is never modified.
  std::optional<double> max_norm;
  // p of the p-norm for max_norm: any p > 0, +inf (max |x|), and as torch
  // p = 0 (number of non-zeros) and -inf (min |x|). Finite p < 0 and NaN are
  // refused. Default 2.
  double norm_type = 2.0;
  // 1-D layout: offsets has B + 1 entries and the last one marks the end of
  // bag B - 1. Indices after offsets[B] are ignored (all modes; not even
  // range-checked, as torch). 2-D input [B, N]: as torch, the rows act as
  // offsets [0, N, ..., (B-1) N], giving B - 1 bags; the last row is ignored.
  bool include_last_offset = false;
  // Worker threads for this call: 0 = TBB's default (all cores), 1 = run on
  // the calling thread only (lowest overhead for tiny requests), n = at most n
  // (capped at the cores this process may use).
  int max_threads = 0;

  // Tables larger than memory. A row whose page is not in memory costs a
  // blocking read when the kernel touches it: one read in flight per thread,
  // while an SSD wants dozens. With the prefetcher, before pooling each
  // window of prefetch_depth rows the engine looks up which pages of the
  // *next* window's rows are missing (mincore) and asks the kernel to read
  // them now (madvise MADV_WILLNEED), so their reads overlap each other and
  // the pooling. The same happens when the CUDA engine gathers its misses.
  // The rows still come from the page cache, which the kernel bounds (by the
  // cgroup's memory limit, where there is one); the prefetcher adds no cache
  // of its own and at most two windows of pages in flight per thread.
  //   kAuto (default): on for a table found cold. Pooling a table believed
  //     warm is timed in pieces of about 1024 rows (two clock reads each); a
  //     piece far slower than resident rows allow has mincore asked about the
  //     next window, and if pages are missing the table is treated as cold
  //     (prefetched) until a chunk finds every page it checks resident, or a
  //     quarter second passes without one that misses. docs/cold.md.
  //   kOn: every chunk (a table known to be cold; also for tests).
  //   kOff: never.
  // Results are the same in every mode: only when pages are read changes.
  enum class Prefetch { kAuto = 0, kOn = 1, kOff = 2 };
  Prefetch prefetch = Prefetch::kAuto;
  // Rows per prefetch window, per pooling thread: about the reads each thread
  // keeps in flight (so the device's queue depth is about threads x depth,
  // up to twice that). 1 <= depth <= 65536; default 64.
  int prefetch_depth = 64;
};

const char* PrefetchName(QueryOptions::Prefetch prefetch);  // "auto", "on", "off"
std::optional<QueryOptions::Prefetch> ParsePrefetch(std::string_view name);

// The page prefetcher's counters for this process, since it started: what
// the chunks pooled with it (QueryOptions::prefetch) found. While most rows
// are found in memory every row is looked up (mincore) and only missing
// pages are asked for; while most are missing every page is asked for and
// one row in 8 is looked up (the lookups would cost more than they save), so
// rows_checked is a sample and hit_rate() its estimate. A row whose page
// the same chunk met shortly before is not looked up again. Cheap to read;
// updated once per chunk.
struct PrefetchStats {
  int64_t cold_chunks = 0;   // chunks of calls that ran with the prefetcher
  int64_t rows_checked = 0;  // rows whose pages those chunks looked up
  int64_t rows_missing = 0;  // ... with a page not in memory
  int64_t pages_read = 0;    // pages asked for (MADV_WILLNEED)

  // Rows found in memory / rows checked; 0 when nothing was checked.
  double hit_rate() const {
    return rows_checked == 0
               ? 0.0
               : 1.0 - static_cast<double>(rows_missing) / static_cast<double>(rows_checked);
  }
};
PrefetchStats GetPrefetchStats();

// torch's layout: 1-D indices with offsets (bag b = [offsets[b], offsets[b+1])),
// or 2-D indices [B, N] (B bags of N each) with no offsets.
struct BagRequest {
  IndexArray indices;
  // Empty or {n}: 1-D. {B, N}: 2-D, and then `offsets` must be absent.
  std::vector<int64_t> indices_shape;
  std::optional<IndexArray> offsets;
  // Optional per-sample weights, same number of elements as indices.
  std::optional<std::span<const float>> weights;
};

// Extension: batched bags with inclusive end offsets. indices and weights are
// [B, N]; ends is [B, K]. Bag m of sample b holds items k with
// ends[b, m-1] < k <= ends[b, m] (ends[b, -1] = -1). Items after ends[b, K-1]
// are padding. Output is [B, K, dim].
struct BatchedBagRequest {
  IndexArray indices;                             // B * N ids, row-major
  std::optional<std::span<const float>> weights;  // B * N, or absent (all 1)
  IndexArray ends;                                // B * K, row-major
  int64_t batch = 0;                              // B
  int64_t items = 0;                              // N
  int64_t bags_per_sample = 0;                    // K
};

// The pooled result: shape {B, dim} or {B, K, dim}, row-major float32.
struct PooledOutput {
  std::vector<int64_t> shape;
  std::vector<float> values;
};

// Validates `request` against `table` and `options` and returns the number of
// bags it yields (the output is that many rows of table.dim floats).
Result<int64_t> CountBags(const TableView& table, const BagRequest& request,
                          const QueryOptions& options);
// The same for batched bags: batch * bags_per_sample once the request is valid.
Result<int64_t> CountBags(const TableView& table, const BatchedBagRequest& request,
                          const QueryOptions& options);

// Pools into the caller's buffer. REQUIRES: out.size() == bags * table.dim.
// On error nothing useful is in `out`.
Status EmbeddingBag(const TableView& table, const BagRequest& request, const QueryOptions& options,
                    std::span<float> out);
Result<PooledOutput> EmbeddingBag(const TableView& table, const BagRequest& request,
                                  const QueryOptions& options);

// REQUIRES: out.size() == batch * bags_per_sample * table.dim.
// options.include_last_offset must be false.
Status BatchedEmbeddingBag(const TableView& table, const BatchedBagRequest& request,
                           const QueryOptions& options, std::span<float> out);
Result<PooledOutput> BatchedEmbeddingBag(const TableView& table, const BatchedBagRequest& request,
                                         const QueryOptions& options);

// The p-norm used by max_norm, over a dequantized row (p = +inf: max |x|;
// see QueryOptions::norm_type). Computed in double, then rounded to float32
// as torch's norm of a float32 row is. NaN for a refused norm_type.
double RowNorm(std::span<const float> row, double norm_type);

}  // namespace embstore

#endif  // EMBSTORE_QUERY_H_
