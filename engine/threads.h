// Worker-thread counts. QueryOptions::max_threads is an upper bound ("at most
// n"), so a request for more threads than this process can run is served
// with as many as it can: an arena of millions of slots would only exhaust
// memory.
#ifndef EMBSTORE_ENGINE_THREADS_H_
#define EMBSTORE_ENGINE_THREADS_H_

#include <tbb/info.h>

#include <algorithm>

namespace embstore::engine {

// 0 (TBB's default) and 1 (the calling thread) stay as they are; larger
// values are capped at the number of cores TBB may use.
inline int CapThreads(int max_threads) {
  if (max_threads <= 1) return max_threads;
  return std::min(max_threads, std::max(1, tbb::info::default_concurrency()));
}

}  // namespace embstore::engine

#endif  // EMBSTORE_ENGINE_THREADS_H_
