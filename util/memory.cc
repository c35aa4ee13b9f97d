#include "util/memory.h"

#include <unistd.h>

#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <string>

namespace embstore {
namespace {

// A cgroup memory limit from its file; 0 when absent or "max".
uint64_t ReadLimit(const std::string& path) {
  std::ifstream f(path);
  std::string v;
  if (!(f >> v) || v.empty() || v == "max" || !std::isdigit(static_cast<unsigned char>(v[0]))) {
    return 0;
  }
  return std::strtoull(v.c_str(), nullptr, 10);
}

uint64_t ReadUsableMemoryBytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page = ::sysconf(_SC_PAGESIZE);
  uint64_t bytes = pages > 0 && page > 0
                       ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page)
                       : std::numeric_limits<uint64_t>::max();
  // /proc/self/cgroup: "0::/path" (v2) or "N:...memory...:/path" (v1).
  std::ifstream cg("/proc/self/cgroup");
  std::string line;
  while (std::getline(cg, line)) {
    const size_t a = line.find(':');
    const size_t b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1);
    const std::string rel = line.substr(b + 1);
    uint64_t limit = 0;
    if (controllers.empty()) {
      limit = ReadLimit("/sys/fs/cgroup" + rel + "/memory.max");
    } else if (("," + controllers + ",").find(",memory,") != std::string::npos) {
      limit = ReadLimit("/sys/fs/cgroup/memory" + rel + "/memory.limit_in_bytes");
    }
    if (limit > 0 && limit < bytes) bytes = limit;
  }
  return bytes;
}

}  // namespace

uint64_t UsableMemoryBytes() {
  // Reading the cgroup files costs tens of microseconds, and every query's
  // plan asks (the memory preflight): the value is read at most once a second.
  using Clock = std::chrono::steady_clock;
  static std::atomic<uint64_t> cached{0};
  static std::atomic<Clock::rep> read_at{0};
  constexpr Clock::rep kRefresh =
      std::chrono::duration_cast<Clock::duration>(std::chrono::seconds(1)).count();
  const Clock::rep now = Clock::now().time_since_epoch().count();
  const uint64_t value = cached.load(std::memory_order_acquire);
  if (value != 0 && now - read_at.load(std::memory_order_relaxed) < kRefresh) return value;
  const uint64_t fresh = ReadUsableMemoryBytes();
  read_at.store(now, std::memory_order_relaxed);
  cached.store(fresh, std::memory_order_release);
  return fresh;
}

}  // namespace embstore
