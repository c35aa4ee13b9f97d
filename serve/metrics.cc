#include "serve/metrics.h"

#include <algorithm>
#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>

#include "serve/convert.h"

namespace embstore::serve {
namespace {

void Line(std::string* out, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
void Line(std::string* out, const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  const int n = std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (n > 0) out->append(buf, static_cast<size_t>(std::min<int>(n, sizeof buf - 1)));
  out->push_back('\n');
}

void Header(std::string* out, const char* name, const char* type, const char* help) {
  Line(out, "# HELP %s %s", name, help);
  Line(out, "# TYPE %s %s", name, type);
}

// A float the way Prometheus reads it: the shortest of %.15g..%.17g that
// reads back as the same double.
std::string Number(double v) {
  char buf[64];
  for (int digits = 15; digits <= 17; ++digits) {
    std::snprintf(buf, sizeof buf, "%.*g", digits, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

}  // namespace

const char* MethodName(Method method) {
  switch (method) {
    case Method::kEmbeddingBag:
      return "EmbeddingBag";
    case Method::kBatchedEmbeddingBag:
      return "BatchedEmbeddingBag";
    case Method::kFmScore:
      return "FmScore";
    case Method::kListTables:
      return "ListTables";
    case Method::kTableInfo:
      return "TableInfo";
    case Method::kPoolPartial:
      return "PoolPartial";
    case Method::kPutShardRows:
      return "PutShardRows";
    case Method::kCommitShard:
      return "CommitShard";
    case Method::kListShards:
      return "ListShards";
    case Method::kGetShardRows:
      return "GetShardRows";
  }
  return "unknown";
}

std::string EscapeLabelValue(const std::string& value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

Metrics::Metrics() : start_(std::chrono::steady_clock::now()) {}

void Metrics::Record(Method method, grpc::StatusCode code, std::chrono::nanoseconds elapsed,
                     int64_t lookups, int64_t row_bytes) {
  PerMethod& m = methods_[static_cast<size_t>(method)];
  const int c = static_cast<int>(code);
  m.requests[static_cast<size_t>(c >= 0 && c < kCodes ? c : 2)].fetch_add(
      1, std::memory_order_relaxed);
  const double seconds = std::chrono::duration<double>(elapsed).count();
  size_t bucket = 0;
  while (bucket < kLatencyBuckets.size() && seconds > kLatencyBuckets[bucket]) ++bucket;
  m.buckets[bucket].fetch_add(1, std::memory_order_relaxed);
  m.sum_ns.fetch_add(static_cast<uint64_t>(std::max<int64_t>(0, elapsed.count())),
                     std::memory_order_relaxed);
  m.count.fetch_add(1, std::memory_order_relaxed);
  if (lookups > 0) lookups_.fetch_add(static_cast<uint64_t>(lookups), std::memory_order_relaxed);
  if (row_bytes > 0) {
    row_bytes_.fetch_add(static_cast<uint64_t>(row_bytes), std::memory_order_relaxed);
  }
}

void Metrics::SetTableVersion(const std::string& table, uint64_t version) {
  MutexLock lock(&mu_);
  versions_[table] = version;
}

std::string Metrics::Render(int64_t inflight, const std::optional<CacheStats>& cache) const {
  std::string out;
  out.reserve(8192);
  Header(&out, "embstore_requests_total", "counter",
         "Requests handled, by method and gRPC status code.");
  for (int mi = 0; mi < kMethods; ++mi) {
    const char* name = MethodName(static_cast<Method>(mi));
    for (int c = 0; c < kCodes; ++c) {
      const uint64_t n = methods_[static_cast<size_t>(mi)].requests[static_cast<size_t>(c)].load(
          std::memory_order_relaxed);
      // OK always (the series exist from the start), other codes once seen.
      if (n == 0 && c != 0) continue;
      Line(&out, "embstore_requests_total{method=\"%s\",code=\"%s\"} %" PRIu64, name,
           GrpcCodeName(static_cast<grpc::StatusCode>(c)), n);
    }
  }
  Header(&out, "embstore_request_duration_seconds", "histogram",
         "Time from a request's arrival in its handler to its reply, by method.");
  for (int mi = 0; mi < kMethods; ++mi) {
    const PerMethod& m = methods_[static_cast<size_t>(mi)];
    const char* name = MethodName(static_cast<Method>(mi));
    // Read the buckets first; count is their sum (so the +Inf bucket and
    // _count agree even while requests finish during the render).
    uint64_t cumulative = 0;
    for (size_t b = 0; b <= kLatencyBuckets.size(); ++b) {
      cumulative += m.buckets[b].load(std::memory_order_relaxed);
      const std::string le = b < kLatencyBuckets.size() ? Number(kLatencyBuckets[b]) : "+Inf";
      Line(&out, "embstore_request_duration_seconds_bucket{method=\"%s\",le=\"%s\"} %" PRIu64, name,
           le.c_str(), cumulative);
    }
    const double sum = static_cast<double>(m.sum_ns.load(std::memory_order_relaxed)) / 1e9;
    Line(&out, "embstore_request_duration_seconds_sum{method=\"%s\"} %s", name,
         Number(sum).c_str());
    Line(&out, "embstore_request_duration_seconds_count{method=\"%s\"} %" PRIu64, name, cumulative);
  }
  Header(&out, "embstore_lookups_total", "counter",
         "Ids pooled (every position of every bag a successful request pooled).");
  Line(&out, "embstore_lookups_total %" PRIu64, lookups_.load(std::memory_order_relaxed));
  Header(&out, "embstore_pooled_bytes_total", "counter",
         "Bytes of table rows read by successful requests (lookups x row bytes).");
  Line(&out, "embstore_pooled_bytes_total %" PRIu64, row_bytes_.load(std::memory_order_relaxed));
  Header(&out, "embstore_inflight_requests", "gauge", "Requests being handled now.");
  Line(&out, "embstore_inflight_requests %" PRId64, inflight);
  Header(&out, "embstore_table_version", "gauge",
         "The current version of each table, as the server last saw it.");
  {
    MutexLock lock(&mu_);
    for (const auto& [table, version] : versions_) {
      out += "embstore_table_version{table=\"" + EscapeLabelValue(table) + "\"} " +
             std::to_string(version) + "\n";
    }
  }
  if (cache) {
    Header(&out, "embstore_gpu_cache_hits_total", "counter",
           "Distinct rows of GPU batches found in the device row cache.");
    Line(&out, "embstore_gpu_cache_hits_total %" PRId64, cache->hits);
    Header(&out, "embstore_gpu_cache_misses_total", "counter",
           "Distinct rows of GPU batches copied into the device row cache.");
    Line(&out, "embstore_gpu_cache_misses_total %" PRId64, cache->misses);
    Header(&out, "embstore_gpu_cache_resident_rows", "gauge", "Rows held in the device cache.");
    Line(&out, "embstore_gpu_cache_resident_rows %" PRId64, cache->resident_rows);
  }
  Header(&out, "embstore_uptime_seconds", "gauge", "Seconds since the server started.");
  Line(&out, "embstore_uptime_seconds %s",
       Number(std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count())
           .c_str());
  return out;
}

}  // namespace embstore::serve
