// Internal: reading the pages of a cold table's rows concurrently
// (QueryOptions::prefetch, prefetch_depth).
//
// A table larger than memory is read through its file mapping. A row whose
// page is missing costs a blocking read when the pooling kernel touches it,
// so each pooling thread keeps one read in flight. Before a window of rows is
// pooled, PageAdvisor asks mincore which of their pages are missing and
// madvise(MADV_WILLNEED)s those: the kernel starts their reads and returns,
// and the reads of a whole window are in flight at once while the previous
// window is pooled (RunWindowed). The page cache remains the only cache.
//
// kAuto decides per chunk from a small per-table state (a hint, keyed by the
// table's address): warm chunks are only timed; a slow piece makes the table
// suspect, a suspect table is probed with mincore, and a probe that finds
// missing pages makes it cold for a while (see query.h).
//
// Thread-safety: the state and counters are atomics; a PageAdvisor belongs to
// one thread (one chunk).
#ifndef EMBSTORE_ENGINE_PAGE_PREFETCH_H_
#define EMBSTORE_ENGINE_PAGE_PREFETCH_H_

#include <chrono>
#include <cstdint>

#include "embstore/query.h"
#include "embstore/types.h"

namespace embstore::engine {

// How one chunk runs.
enum class ChunkMode {
  kPlain,    // prefetch off, or nothing to prefetch: just run
  kTimed,    // kAuto on a warm table: run, timing it
  kProbe,    // kAuto on a suspect table: check the first window, then decide
  kPrefetch  // cold (or kOn): every window read ahead
};

ChunkMode BeginChunk(const TableView& table, const QueryOptions& options);

inline int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Looks up rows' pages and asks for the missing ones to be read. One per
// chunk (per thread); its counts go to the process's PrefetchStats and the
// table's state at Finish().
class PageAdvisor {
 public:
  explicit PageAdvisor(const TableView& table);
  PageAdvisor(const PageAdvisor&) = delete;
  PageAdvisor& operator=(const PageAdvisor&) = delete;

  // The pages of `row` (its payload bytes); those not in memory are asked
  // for. While most rows sampled lately were missing, every page is asked
  // for and one row in kSampleEvery is looked up (mincore costs more than it
  // saves on a cold table: ~15 % of the lookups/s measured); while most were
  // resident, every row is looked up and only missing pages are asked for.
  // REQUIRES: 0 <= row < table.rows.
  void Row(int64_t row);

  // Rows looked up with mincore, and those of them found missing.
  int64_t rows_checked() const { return rows_checked_; }
  int64_t rows_missing() const { return rows_missing_; }

  // Publishes the counts, and tells the table's state what the chunk found:
  // every checked page resident -> warm; any missing -> cold for a while.
  void Finish();

 private:
  const TableView& table_;
  uintptr_t page_mask_;
  size_t payload_;
  void Sample(bool missing);

  static constexpr int kSampleEvery = 8;
  static constexpr int kFilterWindow = 32;
  int64_t rows_checked_ = 0;
  int64_t rows_missing_ = 0;
  int64_t pages_read_ = 0;
  bool filter_ = true;  // look every row up (most resident lately)
  int unsampled_ = 0;
  int window_checked_ = 0;
  int window_missing_ = 0;
  // A small direct-mapped memory of pages already looked up by this chunk:
  // rows sharing a page (hot rows, neighbours) cost one mincore.
  static constexpr int kRecent = 64;
  uintptr_t recent_[kRecent] = {};
};

// Rows per timed piece of a warm chunk (two clock reads each): a cold table
// is found within a piece's reads, a warm one pays ~0.2 % for the clock.
inline constexpr int64_t kTimedPieceRows = 1024;
// Whether a piece of `rows` rows that took `elapsed_ns` was far slower than
// resident rows allow; if so, marks the table suspect.
bool EndTimedPiece(const TableView& table, int64_t rows, int64_t elapsed_ns);

// Runs run(first, last) over units [first, last) (bags of a plan, rows of a
// gather), as the chunk's mode says; `entries` is about the rows they hold
// (weight(u) rows each). A warm chunk runs in timed pieces of about
// kTimedPieceRows rows; after a slow one the rest of the chunk is probed and
// prefetched. A prefetching chunk runs in windows of about
// options.prefetch_depth rows (at least one unit each): the rows of window
// k + 1 (advise(advisor, u) for each of its units) are asked for before
// window k runs.
template <typename Weight, typename Advise, typename Run>
void RunWindowed(const TableView& table, const QueryOptions& options, int64_t first, int64_t last,
                 int64_t entries, const Weight& weight, const Advise& advise, const Run& run) {
  if (first >= last) return;
  ChunkMode mode = BeginChunk(table, options);
  if (mode == ChunkMode::kPlain) {
    run(first, last);
    return;
  }
  // The end of the window from u of about `rows` rows; *taken = its rows.
  auto window_end = [&](int64_t u, int64_t rows, int64_t* taken) {
    int64_t n = 0;
    do {
      n += weight(u);
      ++u;
    } while (u < last && n < rows);
    *taken = n;
    return u;
  };
  int64_t u = first;
  if (mode == ChunkMode::kTimed) {
    int64_t left = entries;
    while (u < last) {
      int64_t rows = 0;
      // The last piece takes the rest when it is small (a 64 x 20 request
      // is one piece).
      // A large chunk starts with a short piece, so that a cold table is
      // found after a few hundred reads.
      const int64_t piece =
          u == first && entries >= 8 * kTimedPieceRows ? kTimedPieceRows / 4 : kTimedPieceRows;
      const int64_t piece_end = left < 2 * piece ? last : window_end(u, piece, &rows);
      if (piece_end == last) rows = left;
      const int64_t t0 = NowNs();
      run(u, piece_end);
      const bool slow = EndTimedPiece(table, rows, NowNs() - t0);
      u = piece_end;
      left -= rows;
      if (slow) break;
    }
    if (u >= last) return;
    mode = ChunkMode::kProbe;
  }
  const int64_t depth = options.prefetch_depth;
  int64_t taken = 0;
  PageAdvisor advisor(table);
  int64_t w = u;
  int64_t w_end = window_end(u, depth, &taken);
  for (int64_t v = w; v < w_end; ++v) advise(advisor, v);
  if (mode == ChunkMode::kProbe && advisor.rows_checked() > 0 && advisor.rows_missing() == 0) {
    advisor.Finish();  // resident after all: the table is warm again
    run(w, last);
    return;
  }
  while (w < last) {
    const int64_t next = w_end;
    const int64_t next_end = next < last ? window_end(next, depth, &taken) : last;
    for (int64_t v = next; v < next_end; ++v) advise(advisor, v);
    run(w, w_end);
    w = next;
    w_end = next_end;
  }
  advisor.Finish();
}

}  // namespace embstore::engine

#endif  // EMBSTORE_ENGINE_PAGE_PREFETCH_H_
