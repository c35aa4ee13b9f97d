// The server's counters and their Prometheus text exposition (format 0.0.4:
// https://prometheus.io/docs/instrumenting/exposition_formats/). No
// Prometheus client library is in Debian 12; the format is small, so it is
// written here and tests parse it back.
//
// Thread-safety: Record, SetTableVersion and Render may be called from any
// threads at once.
#ifndef EMBSTORE_SERVE_METRICS_H_
#define EMBSTORE_SERVE_METRICS_H_

#include <grpcpp/support/status.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "embstore/engine.h"
#include "util/mutex.h"

namespace embstore::serve {

enum class Method {
  kEmbeddingBag,
  kBatchedEmbeddingBag,
  kFmScore,
  kListTables,
  kTableInfo,
  // Cluster nodes (serve --cluster).
  kPoolPartial,
  kPutShardRows,
  kCommitShard,
  kListShards,
  kGetShardRows,
};
inline constexpr int kMethods = 10;
const char* MethodName(Method method);

// Latency histogram bucket bounds, seconds (then +Inf).
inline constexpr std::array<double, 18> kLatencyBuckets = {
    0.00005, 0.0001, 0.0002, 0.0003, 0.0005, 0.001, 0.002, 0.005, 0.01,
    0.02,    0.05,   0.1,    0.25,   0.5,    1.0,   2.5,   5.0,   10.0};

class Metrics {
 public:
  Metrics();
  // One finished request: its method, code and time, and the lookups (ids
  // pooled) and bytes of table rows it read.
  void Record(Method method, grpc::StatusCode code, std::chrono::nanoseconds elapsed,
              int64_t lookups, int64_t row_bytes);
  void SetTableVersion(const std::string& table, uint64_t version);

  // Everything, in the text format. `inflight`: requests being handled now;
  // `cache`: the GPU engine's counters (absent on the CPU).
  std::string Render(int64_t inflight, const std::optional<CacheStats>& cache) const;

 private:
  static constexpr int kCodes = 17;  // grpc::StatusCode 0..16
  struct PerMethod {
    std::array<std::atomic<uint64_t>, kCodes> requests{};
    std::array<std::atomic<uint64_t>, kLatencyBuckets.size() + 1> buckets{};  // not cumulative
    std::atomic<uint64_t> count{0};
    std::atomic<uint64_t> sum_ns{0};
  };
  std::array<PerMethod, kMethods> methods_;
  std::atomic<uint64_t> lookups_{0};
  std::atomic<uint64_t> row_bytes_{0};
  const std::chrono::steady_clock::time_point start_;
  mutable Mutex mu_;
  std::map<std::string, uint64_t> versions_ GUARDED_BY(mu_);
};

// A label value escaped for the text format (backslash, quote, newline).
std::string EscapeLabelValue(const std::string& value);

}  // namespace embstore::serve

#endif  // EMBSTORE_SERVE_METRICS_H_
