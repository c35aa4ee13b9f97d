// The C++ half of benchmarks/side_by_side.py: one executable, three commands,
// each printing one JSON object on stdout (the script parses it).
//
//   side_by_side_bench pool --db DIR --table T --ids ids.npy --offsets off.npy
//       [--weights w.npy] [--mode sum|mean|max] [--max-norm X] [--threads N]
//       [--reps R] [--warmup W] [--advise random|normal|willneed]
//       [--page-prefetch] [--chunk BAGS] [--shift-per-rep S] [--hugepages]
//       [--prefetch auto|on|off] [--prefetch-depth N] [--split R]
//     Opens the store (the table stays mmapped, as a serving process would
//     hold it), loads the ids/offsets/weights .npy files, runs W untimed and R
//     timed EmbeddingBag calls over all bags and prints every time, the median,
//     lookups/s and GB/s of row payload read.
//     --advise: random = StoreOptions::advise_random (MADV_RANDOM, the
//     default of the library), normal = no advice, willneed = normal plus
//     madvise(MADV_WILLNEED) over the whole table once after opening.
//     --page-prefetch: before each chunk of --chunk bags, madvise(WILLNEED)
//     the pages its rows live on, so page faults of a cold table overlap
//     (what the engine's own prefetcher now does: --prefetch, QueryOptions).
//     --split R: the bags form R parts and rep i pools part i mod R (rounds
//     of fresh ids); per rep the prefetcher's hit rate is printed.
//
//   side_by_side_bench bandwidth [--mb 1024] [--reps 7] [--threads N]
//     The machine's memory read bandwidth: all threads sum a buffer of --mb
//     MiB (>= 4x the LLC), first-touched in parallel. Prints the median GB/s.
//
//   side_by_side_bench gather --db DIR --table T --ids ids.npy [--distance 16]
//       [--lines L] [--params-apart] [--touch] [--reps 5]
//     The random-row roofline: every id's row is read (one load per cache line,
//     the first L lines only with --lines) and prefetched --distance ids ahead,
//     with no arithmetic: the fastest any pooling kernel could read those rows.
//     --params-apart also reads 8 bytes per id from a separate rows x 8 array
//     (int8 scale/bias kept out of the row).
//
//   side_by_side_bench latency --db DIR --table T [--clients 2,4,8]
//       [--requests 2000] [--bags 64] [--ids-per-bag 20] [--threads 1]
//       [--distinct 64] [--prefetch auto|on|off] [--prefetch-depth N]
//     Serving latency: each of C client threads issues its own requests of
//     bags x ids-per-bag uniform ids with QueryOptions::max_threads = --threads
//     (default 1, the serving setting; 0 = the library's default, what the
//     Python API uses), all at once. Prints p50/p90/p99/p99.9 in microseconds
//     and the aggregate requests/s per client count.
//
// Not a Google Benchmark suite (the timings must be comparable run for run
// with torch's, and alternate with it), but built by the same glob.
#include <sys/mman.h>
#include <tbb/blocked_range.h>
#include <tbb/global_control.h>
#include <tbb/parallel_for.h>
#include <tbb/parallel_reduce.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "benchmarks/bench_args.h"
#include "checkpoint/npy.h"
#include "embstore/query.h"
#include "embstore/store.h"

namespace embstore {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

using embstore::bench::Args;
using embstore::bench::Die;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0 : (n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]));
}

double Percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  const size_t i = std::min(sorted.size() - 1, static_cast<size_t>(q * (sorted.size() - 1) + 0.5));
  return sorted[i];
}

std::string JsonList(const std::vector<double>& v) {
  std::string s = "[";
  char buf[32];
  for (size_t i = 0; i < v.size(); ++i) {
    std::snprintf(buf, sizeof buf, "%s%.6g", i ? ", " : "", v[i]);
    s += buf;
  }
  return s + "]";
}

std::vector<int64_t> LoadInt64(const std::string& path) {
  auto a = storage::LoadNpy(path);
  if (!a.ok()) Die(path + ": " + a.status().message());
  std::vector<int64_t> v;
  if (a->header.kind == 'i' && a->header.item_size == 8) {
    v.resize(a->data.size() / 8);
    std::memcpy(v.data(), a->data.data(), v.size() * 8);
  } else if (a->header.kind == 'i' && a->header.item_size == 4) {
    v.resize(a->data.size() / 4);
    for (size_t i = 0; i < v.size(); ++i) {
      int32_t x;
      std::memcpy(&x, a->data.data() + 4 * i, 4);
      v[i] = x;
    }
  } else {
    Die(path + ": expected int32 or int64 ids");
  }
  return v;
}

std::vector<float> LoadF32(const std::string& path) {
  auto a = storage::LoadNpy(path);
  if (!a.ok()) Die(path + ": " + a.status().message());
  if (a->header.kind != 'f' || a->header.item_size != 4) Die(path + ": expected float32");
  std::vector<float> v(a->data.size() / 4);
  std::memcpy(v.data(), a->data.data(), a->data.size());
  return v;
}

size_t PayloadBytes(const TableView& v) { return RowPayloadBytes(v.dtype, v.dim); }

// --prefetch auto|on|off and --prefetch-depth N (QueryOptions).
void SetPrefetch(const Args& args, QueryOptions* qo) {
  const auto p = ParsePrefetch(args.Str("prefetch", "auto"));
  if (!p) Die("bad --prefetch " + args.Str("prefetch", ""));
  qo->prefetch = *p;
  qo->prefetch_depth = static_cast<int>(args.Int("prefetch-depth", 64));
}

// Page-aligned madvise over [p, p + n).
void Advise(const uint8_t* p, size_t n, int advice) {
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t a = reinterpret_cast<uintptr_t>(p) & ~(page - 1);
  const uintptr_t e = reinterpret_cast<uintptr_t>(p) + n;
  ::madvise(reinterpret_cast<void*>(a), e - a, advice);
}

int CmdPool(const Args& args) {
  const std::string advise = args.Str("advise", "random");
  StoreOptions so;
  so.create_if_missing = false;
  so.advise_random = advise == "random";
  auto store = Store::Open(args.Need("db"), so);
  if (!store.ok()) Die(store.status().message());
  auto snap = (*store)->GetSnapshot(args.Need("table"));
  if (!snap.ok()) Die(snap.status().message());
  TableView view = snap->view();
  // --hugepages: pool from a private copy of the table in anonymous memory
  // backed by 2 MiB transparent huge pages (MADV_HUGEPAGE) instead of the
  // page-cache mapping (4 KiB pages): isolates what the TLB costs.
  std::unique_ptr<uint8_t, decltype(&std::free)> huge(nullptr, &std::free);
  if (args.Has("hugepages")) {
    const size_t bytes = view.row_stride * static_cast<size_t>(view.rows);
    const size_t k2m = size_t{2} << 20;
    huge.reset(static_cast<uint8_t*>(std::aligned_alloc(k2m, (bytes + k2m - 1) / k2m * k2m)));
    ::madvise(huge.get(), (bytes + k2m - 1) / k2m * k2m, MADV_HUGEPAGE);
    std::memcpy(huge.get(), view.data, bytes);
    view.data = huge.get();
  }
  if (advise == "willneed") Advise(view.data, view.row_stride * view.rows, MADV_WILLNEED);

  std::vector<int64_t> ids = LoadInt64(args.Need("ids"));
  std::vector<int64_t> offsets = LoadInt64(args.Need("offsets"));
  std::vector<float> weights;
  if (args.Has("weights")) weights = LoadF32(args.Str("weights"));

  QueryOptions qo;
  const std::string mode = args.Str("mode", "sum");
  auto m = ParsePoolingMode(mode);
  if (!m) Die("bad --mode " + mode);
  qo.mode = *m;
  if (args.Has("max-norm")) qo.max_norm = args.Num("max-norm", 1.0);
  qo.max_threads = static_cast<int>(args.Int("threads", 0));
  const int reps = static_cast<int>(args.Int("reps", 5));
  const int warmup = static_cast<int>(args.Int("warmup", 1));
  const bool page_prefetch = args.Has("page-prefetch");
  const int64_t chunk = args.Int("chunk", 4096);
  SetPrefetch(args, &qo);
  // --split R: the bags are R parts, and rep i (warm-ups first) pools part
  // i mod R: rounds of fresh ids drawn from one distribution.
  const int64_t split = std::max<int64_t>(1, args.Int("split", 1));

  const int64_t bags = static_cast<int64_t>(offsets.size());
  offsets.push_back(static_cast<int64_t>(ids.size()));  // include_last_offset form
  std::vector<float> out(static_cast<size_t>(bags * view.dim));
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));

  // One call over all bags, or (page prefetch) chunks of bags each preceded
  // by WILLNEED on its rows' pages.
  auto run_once = [&](int64_t part) {
    const int64_t first = bags * part / split, last = bags * (part + 1) / split;
    for (int64_t b0 = first; b0 < last; b0 += page_prefetch ? chunk : last - first) {
      const int64_t b1 = std::min(last, b0 + (page_prefetch ? chunk : last - first));
      const int64_t e0 = offsets[b0], e1 = offsets[b1];
      if (page_prefetch) {
        for (int64_t e = e0; e < e1; ++e) {
          const uint8_t* row = view.Row(ids[e]);
          Advise(row, PayloadBytes(view), MADV_WILLNEED);
        }
      }
      // Offsets rebased to the chunk.
      std::vector<int64_t> local;
      std::span<const int64_t> offs(offsets.data() + b0, b1 - b0 + 1);
      if (e0 != 0) {
        local.assign(offs.begin(), offs.end());
        for (auto& o : local) o -= e0;
        offs = local;
      }
      BagRequest r;
      r.indices = std::span<const int64_t>(ids.data() + e0, e1 - e0);
      r.offsets = offs;
      if (!weights.empty()) r.weights = std::span<const float>(weights.data() + e0, e1 - e0);
      QueryOptions o = qo;
      o.include_last_offset = true;
      const Status s = EmbeddingBag(
          view, r, o, std::span<float>(out.data() + b0 * view.dim, (b1 - b0) * view.dim));
      if (!s.ok()) Die(s.message());
    }
  };
  (void)page;
  // --shift-per-rep S: rep r pools ids (id + r * S) mod rows, so that every
  // rep touches fresh pages of a table bigger than the cache (same
  // distribution, no reuse between reps); the shift is not timed.
  const int64_t shift = args.Int("shift-per-rep", 0);
  int64_t part = 0;
  for (int i = 0; i < warmup; ++i) run_once(part++ % split);
  std::vector<double> times, hit_rates, part_lookups;
  for (int i = 0; i < reps; ++i) {
    if (shift != 0 && i > 0) {
      for (auto& id : ids) id = (id + shift) % view.rows;
    }
    const int64_t p = part++ % split;
    const PrefetchStats before = GetPrefetchStats();
    const auto t0 = Clock::now();
    run_once(p);
    times.push_back(Seconds(t0, Clock::now()));
    PrefetchStats d = GetPrefetchStats();
    d.rows_checked -= before.rows_checked;
    d.rows_missing -= before.rows_missing;
    hit_rates.push_back(d.rows_checked > 0 ? d.hit_rate() : -1.0);
    part_lookups.push_back(
        static_cast<double>(offsets[bags * (p + 1) / split] - offsets[bags * p / split]));
  }
  double checksum = 0;
  for (int64_t i = 0; i < bags * view.dim; i += 97) checksum += out[static_cast<size_t>(i)];
  const double med = Median(times);
  const double lookups = part_lookups.empty() ? 0.0 : part_lookups[0];
  std::printf(
      "{\"cmd\": \"pool\", \"table\": \"%s\", \"dtype\": \"%s\", \"rows\": %lld, \"dim\": %lld, "
      "\"mode\": \"%s\", \"weighted\": %s, \"max_norm\": %s, \"advise\": \"%s\", "
      "\"page_prefetch\": %s, \"hugepages\": %s, \"threads\": %d, \"bags\": %lld, \"lookups\": "
      "%.0f, "
      "\"row_bytes\": %zu, \"times_s\": %s, \"median_s\": %.6g, \"lookups_per_s\": %.6g, "
      "\"gbps\": %.6g, \"checksum\": %.6g, \"prefetch\": \"%s\", \"prefetch_depth\": %d, "
      "\"split\": %lld, \"rep_lookups\": %s, \"rep_hit_rates\": %s}\n",
      args.Need("table").c_str(), DTypeName(view.dtype), static_cast<long long>(view.rows),
      static_cast<long long>(view.dim), mode.c_str(), weights.empty() ? "false" : "true",
      qo.max_norm ? std::to_string(*qo.max_norm).c_str() : "null", advise.c_str(),
      page_prefetch ? "true" : "false", huge ? "true" : "false", qo.max_threads,
      static_cast<long long>(bags), lookups, PayloadBytes(view), JsonList(times).c_str(), med,
      lookups / med, lookups * static_cast<double>(PayloadBytes(view)) / med / 1e9, checksum,
      PrefetchName(qo.prefetch), qo.prefetch_depth, static_cast<long long>(split),
      JsonList(part_lookups).c_str(), JsonList(hit_rates).c_str());
  return 0;
}

int CmdBandwidth(const Args& args) {
  const size_t bytes = static_cast<size_t>(args.Int("mb", 1024)) << 20;
  const int reps = static_cast<int>(args.Int("reps", 7));
  const int threads = static_cast<int>(args.Int("threads", 0));
  std::optional<tbb::global_control> limit;
  if (threads > 0) limit.emplace(tbb::global_control::max_allowed_parallelism, threads);
  const size_t words = bytes / 8;
  std::unique_ptr<uint64_t[]> buf(new uint64_t[words]);
  tbb::parallel_for(tbb::blocked_range<size_t>(0, words, 1 << 16), [&](const auto& r) {
    for (size_t i = r.begin(); i < r.end(); ++i) buf[i] = i * 0x9e3779b97f4a7c15ull;
  });
  const uint64_t* data = buf.get();
  auto sweep = [&] {
    return tbb::parallel_reduce(
        tbb::blocked_range<size_t>(0, words, 1 << 17), uint64_t{0},
        [&](const tbb::blocked_range<size_t>& r, uint64_t acc) {
          uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
          size_t i = r.begin();
          for (; i + 8 <= r.end(); i += 8) {
            a0 += data[i];
            a1 += data[i + 1];
            a2 += data[i + 2];
            a3 += data[i + 3];
            a4 += data[i + 4];
            a5 += data[i + 5];
            a6 += data[i + 6];
            a7 += data[i + 7];
          }
          for (; i < r.end(); ++i) a0 += data[i];
          return acc + a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
        },
        [](uint64_t a, uint64_t b) { return a + b; });
  };
  uint64_t sink = sweep();  // warm-up
  std::vector<double> gbps;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    sink += sweep();
    gbps.push_back(static_cast<double>(bytes) / Seconds(t0, Clock::now()) / 1e9);
  }
  std::printf(
      "{\"cmd\": \"bandwidth\", \"buffer_mb\": %zu, \"gbps_all\": %s, \"median_gbps\": %.6g, "
      "\"max_gbps\": %.6g, \"sink\": %llu}\n",
      bytes >> 20, JsonList(gbps).c_str(), Median(gbps),
      *std::max_element(gbps.begin(), gbps.end()), static_cast<unsigned long long>(sink & 1));
  return 0;
}

// Random-row read roofline: all threads read whole rows at the given ids
// (the same ids file as `pool`) and fold them with integer xors -- pooling
// with no arithmetic and no per-bag bookkeeping -- prefetching the row
// --distance ids ahead (0 = none).
int CmdGather(const Args& args) {
  StoreOptions so;
  so.create_if_missing = false;
  so.advise_random = args.Str("advise", "random") == "random";
  auto store = Store::Open(args.Need("db"), so);
  if (!store.ok()) Die(store.status().message());
  auto snap = (*store)->GetSnapshot(args.Need("table"));
  if (!snap.ok()) Die(snap.status().message());
  const TableView view = snap->view();
  const std::vector<int64_t> ids = LoadInt64(args.Need("ids"));
  const int64_t distance = args.Int("distance", 16);
  const int reps = static_cast<int>(args.Int("reps", 5));
  // --lines L: touch only the first L cache lines of each row (default: the
  // whole payload), e.g. 2 of an int8 dim-128 row = its codes without the
  // scale/bias that follow them.
  const size_t all_lines = (PayloadBytes(view) + 63) / 64;
  const size_t lines = std::min<size_t>(
      all_lines, static_cast<size_t>(args.Int("lines", static_cast<int64_t>(all_lines))));
  const int64_t n = static_cast<int64_t>(ids.size());
  // --touch: a real one-byte load of the row ahead instead of a prefetch of
  // its first line (a load is never dropped on a TLB miss; see RESULTS.md).
  const bool touch = args.Has("touch");
  // --params-apart: also read 8 bytes per row from a separate rows x 8 array
  // (first-touched here), what a layout keeping int8 scale/bias out of the
  // row would read next to its code lines.
  std::vector<uint64_t> params;
  if (args.Has("params-apart")) params.assign(static_cast<size_t>(view.rows), 1);
  const uint64_t* pp = params.empty() ? nullptr : params.data();
  auto sweep = [&] {
    return tbb::parallel_reduce(
        tbb::blocked_range<int64_t>(0, n, 4096), uint64_t{0},
        [&](const tbb::blocked_range<int64_t>& r, uint64_t acc) {
          uint8_t sink_byte = 0;
          for (int64_t i = r.begin(); i < r.end(); ++i) {
            if (distance > 0 && i + distance < r.end()) {
              const uint8_t* pf = view.Row(ids[i + distance]);
              if (touch) sink_byte += *reinterpret_cast<const volatile uint8_t*>(pf);
              for (size_t l = touch ? 1 : 0; l < lines; ++l) __builtin_prefetch(pf + 64 * l);
              if (pp) __builtin_prefetch(pp + ids[i + distance]);
            }
            if (pp) acc += pp[ids[i]];
            const uint64_t* row = reinterpret_cast<const uint64_t*>(view.Row(ids[i]));
            for (size_t l = 0; l < lines; ++l) acc ^= row[8 * l] + row[8 * l + 7];
          }
          return acc + sink_byte;
        },
        [](uint64_t a, uint64_t b) { return a ^ b; });
  };
  uint64_t sink = sweep();
  std::vector<double> times;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    sink ^= sweep();
    times.push_back(Seconds(t0, Clock::now()));
  }
  const double med = Median(times);
  std::printf(
      "{\"cmd\": \"gather\", \"touch\": %d, \"distance\": %lld, \"row_bytes\": %zu, "
      "\"lines\": %zu, \"params_apart\": %d, \"lookups\": %lld, \"median_s\": %.6g, \"gbps\": "
      "%.6g, \"sink\": %llu}\n",
      touch ? 1 : 0, static_cast<long long>(distance), PayloadBytes(view), lines, pp ? 1 : 0,
      static_cast<long long>(n), med,
      static_cast<double>(n) * static_cast<double>(PayloadBytes(view)) / med / 1e9,
      static_cast<unsigned long long>(sink & 1));
  return 0;
}

uint64_t SplitMix(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

int CmdLatency(const Args& args) {
  StoreOptions so;
  so.create_if_missing = false;
  auto store = Store::Open(args.Need("db"), so);
  if (!store.ok()) Die(store.status().message());
  auto snap = (*store)->GetSnapshot(args.Need("table"));
  if (!snap.ok()) Die(snap.status().message());
  const TableView view = snap->view();
  const int64_t requests = args.Int("requests", 2000);
  const int64_t bags = args.Int("bags", 64);
  const int64_t per_bag = args.Int("ids-per-bag", 20);
  const std::string mode = args.Str("mode", "sum");
  std::vector<int> clients;
  {
    std::string s = args.Str("clients", "1,2,4,8");
    size_t p = 0;
    while (p < s.size()) {
      size_t q = s.find(',', p);
      if (q == std::string::npos) q = s.size();
      clients.push_back(std::stoi(s.substr(p, q - p)));
      p = q + 1;
    }
  }
  QueryOptions qo;
  qo.mode = *ParsePoolingMode(mode);
  qo.max_threads = static_cast<int>(args.Int("threads", 1));
  SetPrefetch(args, &qo);
  // --distinct N: requests per client drawn up front and cycled (64: a warm
  // set; as many as --requests: every request fresh, for cold tables).
  const int64_t distinct = std::max<int64_t>(1, args.Int("distinct", 64));
  std::vector<int64_t> offsets(bags);
  for (int64_t b = 0; b < bags; ++b) offsets[b] = b * per_bag;

  std::printf(
      "{\"cmd\": \"latency\", \"table\": \"%s\", \"bags\": %lld, \"ids_per_bag\": %lld, "
      "\"mode\": \"%s\", \"runs\": [",
      args.Need("table").c_str(), static_cast<long long>(bags), static_cast<long long>(per_bag),
      mode.c_str());
  bool first_run = true;
  for (int c : clients) {
    std::vector<std::vector<double>> lat(c);
    std::atomic<int> ready{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> threads;
    for (int t = 0; t < c; ++t) {
      threads.emplace_back([&, t] {
        uint64_t state = 1234 + 7919 * t + static_cast<uint64_t>(c) * 104729;
        // Requests prepared up front: only the library call is timed.
        const int64_t kDistinct = distinct;
        std::vector<std::vector<int64_t>> reqs(kDistinct, std::vector<int64_t>(bags * per_bag));
        for (auto& r : reqs)
          for (auto& id : r) id = static_cast<int64_t>(SplitMix(state) % view.rows);
        std::vector<float> out(bags * view.dim);
        lat[t].reserve(requests);
        ready.fetch_add(1);
        while (!go.load(std::memory_order_acquire)) {
        }
        for (int64_t i = 0; i < requests; ++i) {
          BagRequest r;
          r.indices = std::span<const int64_t>(reqs[i % kDistinct]);
          r.offsets = std::span<const int64_t>(offsets);
          const auto t0 = Clock::now();
          const Status s = EmbeddingBag(view, r, qo, out);
          const auto t1 = Clock::now();
          if (!s.ok()) Die(s.message());
          lat[t].push_back(Seconds(t0, t1) * 1e6);
        }
      });
    }
    while (ready.load() < c) {
    }
    const auto t0 = Clock::now();
    go.store(true, std::memory_order_release);
    for (auto& th : threads) th.join();
    const double wall = Seconds(t0, Clock::now());
    std::vector<double> all;
    for (auto& l : lat) all.insert(all.end(), l.begin(), l.end());
    std::sort(all.begin(), all.end());
    std::printf(
        "%s{\"clients\": %d, \"requests\": %zu, \"p50_us\": %.4g, \"p90_us\": %.4g, "
        "\"p99_us\": %.4g, \"p999_us\": %.4g, \"max_us\": %.4g, \"requests_per_s\": %.6g, "
        "\"lookups_per_s\": %.6g}",
        first_run ? "" : ", ", c, all.size(), Percentile(all, 0.5), Percentile(all, 0.9),
        Percentile(all, 0.99), Percentile(all, 0.999), all.back(),
        static_cast<double>(all.size()) / wall,
        static_cast<double>(all.size() * bags * per_bag) / wall);
    first_run = false;
  }
  std::printf("]}\n");
  return 0;
}

}  // namespace
}  // namespace embstore

int main(int argc, char** argv) {
  embstore::bench::ProgramName() = "side_by_side_bench";
  if (argc < 2) {
    std::fprintf(stderr, "usage: side_by_side_bench pool|bandwidth|latency --help in the source\n");
    return 2;
  }
  const std::string cmd = argv[1];
  const embstore::Args args(argc, argv);
  if (cmd == "pool") return embstore::CmdPool(args);
  if (cmd == "bandwidth") return embstore::CmdBandwidth(args);
  if (cmd == "gather") return embstore::CmdGather(args);
  if (cmd == "latency") return embstore::CmdLatency(args);
  std::fprintf(stderr, "unknown command %s\n", cmd.c_str());
  return 2;
}
