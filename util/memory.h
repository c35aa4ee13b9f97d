// Internal: how much memory this process may use, for the planner's memory
// preflight and the store's huge-page choice.
#ifndef EMBSTORE_UTIL_MEMORY_H_
#define EMBSTORE_UTIL_MEMORY_H_

#include <cstdint>

namespace embstore {

// The bytes of memory this process may fill: physical memory, or the limit
// of its memory cgroup (v2 memory.max, v1 memory.limit_in_bytes) when lower.
// Read from the system at most once a second (the files cost tens of
// microseconds, and every query plan asks): the value may be a second old.
// Thread-safe.
uint64_t UsableMemoryBytes();

}  // namespace embstore

#endif  // EMBSTORE_UTIL_MEMORY_H_
