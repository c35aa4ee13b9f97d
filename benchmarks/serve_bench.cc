// Load generator for `embstore serve` (issue [serve], item 7), and the
// in-process baseline it is compared with. Driven by benchmarks/serve_bench.py;
// every command prints one JSON object per line on stdout.
//
//   serve_bench open --target HOST:PORT --table T --rate R[,R2,...]
//       [--duration 5] [--warmup 1] [--arrival poisson|uniform] [--channels 1]
//       [--bags 64] [--ids-per-bag 20] [--distinct 256] [--seed 1]
//       [--max-threads 1] [--deadline-ms 2000] [--drain-ms 3000] [--api callback|cq]
//       [--spin-us 0]
//     OPEN loop at a fixed rate: request i has a scheduled send time taken
//     from the schedule (Poisson: exponential inter-arrival times of mean 1/R;
//     uniform: exactly 1/R apart), fixed before the run starts. One sender
//     thread issues each request at its scheduled time (or at once when it is
//     behind) through gRPC's callback API (stub->async()->EmbeddingBag; with
//     --api cq: PrepareAsyncEmbeddingBag on a CompletionQueue one thread
//     polls; with --api poll: on a CompletionQueue the sender itself polls
//     without blocking between sends, so one thread that never sleeps does
//     both); the sender never waits for replies, so a slow server does not slow the
//     offered load. Latency is reply time minus the SCHEDULED send time, so
//     time a request spent waiting for a late sender counts (no coordinated
//     omission). Requests are `--distinct` EmbeddingBagRequest messages built
//     up front (bags x ids-per-bag uniform ids over the table's rows, 1-D
//     indices with offsets, sum mode, PoolOptions.max_threads = --max-threads)
//     and reused round robin. Per rate: --warmup seconds of schedule whose
//     requests are not counted, then --duration seconds that are; then the
//     generator waits for every reply (or its deadline). Prints, per rate:
//     offered and achieved rates, sent rate and sender lag, p50/p90/p99/p99.9/
//     max of the successful requests, errors by gRPC code, the generator's own
//     CPU time.
//       scheduled_rps: requests whose scheduled time falls in the measured
//       window / its length (the offered load as drawn; Poisson varies around
//       --rate); achieved_rps: OK replies received inside that window / its
//       length (what the server sustained); measured_ok_rps: measured
//       requests that succeeded / window length.
//
//   serve_bench inproc --db DIR --table T [--threads 1] [--duration 5]
//       [--warmup 1] [--bags 64] [--ids-per-bag 20] [--distinct 256]
//       [--seed 1] [--max-threads 1]
//     The in-process baseline: the same requests (same ids for the same
//     --seed/--distinct) pooled by embstore::EmbeddingBag on a Store's
//     snapshot, CLOSED loop, from --threads threads, each call after the
//     last. Prints calls/s over the measured window and the per-call latency.
//
//   serve_bench rtt --target HOST:PORT --table T [--calls 2000] [--bags 64]
//       [--ids-per-bag 20] [--seed 1] [--max-threads 1]
//     CLOSED loop, one call at a time, each sent when the last reply is in,
//     through a CompletionQueue this thread polls without blocking (it never
//     sleeps): the round trip of one EmbeddingBag call (the open loop's first
//     request) and of one TableInfo call (one field each way), p50/p90/p99.
//
//   serve_bench cluster --cluster http://HOST:PORT --table T [--duration 5]
//       [--warmup 1] [--bags 64] [--ids-per-bag 20] [--distinct 256] [--seed 1]
//     CLOSED loop, one call at a time, through serve::ClusterClient (the
//     request split by shard, pooled at the nodes, merged here): calls/s,
//     p50/p90/p99, sub-requests and retries per call, and the bytes each
//     call puts on the wire as embstore sends them (the PoolPartial requests
//     and replies, as protobuf encodes them) against what fetching the raw
//     rows instead would move (the ids, then every looked-up row).
//
//   serve_bench inproc-open --db DIR --table T --rate R[,R2,...]
//       [--duration 5] [--warmup 1] [--arrival poisson|uniform] [--bags 64]
//       [--ids-per-bag 20] [--distinct 256] [--seed 1] [--max-threads 1]
//     The ideal single-threaded server: the library in-process under the
//     open loop's schedule (the same draw as `open` for the same rate and
//     seed). One thread takes request i at max(now, its scheduled time)
//     (spinning until then: it never sleeps), pools it, and records its
//     completion minus its scheduled time. No network, no gRPC: what queueing
//     alone costs a server whose every request takes the library's time.
#include <grpc/support/time.h>
#include <grpcpp/grpcpp.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "benchmarks/bench_args.h"
#include "embstore/query.h"
#include "embstore/store.h"
#include "embstore/v1/embstore.grpc.pb.h"
#include "serve/cluster.h"

namespace {

using Clock = std::chrono::steady_clock;

using embstore::bench::Args;
using embstore::bench::Die;

std::vector<double> NumList(const std::string& s) {
  std::vector<double> out;
  size_t p = 0;
  while (p < s.size()) {
    size_t q = s.find(',', p);
    if (q == std::string::npos) q = s.size();
    out.push_back(std::stod(s.substr(p, q - p)));
    p = q + 1;
  }
  return out;
}

// Nearest-rank percentile of sorted values.
double Percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  const size_t i = std::min(
      sorted.size() - 1,
      static_cast<size_t>(std::ceil(q * static_cast<double>(sorted.size()))) - (q > 0 ? 1 : 0));
  return sorted[i];
}

uint64_t SplitMix(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// The ids of `distinct` requests, each bags x per_bag uniform over [0, rows):
// the same for both commands given the same seed.
std::vector<std::vector<int64_t>> MakeIds(int64_t distinct, int64_t bags, int64_t per_bag,
                                          int64_t rows, uint64_t seed) {
  uint64_t state = seed * 0x2545f4914f6cdd1dull + 12345;
  std::vector<std::vector<int64_t>> ids(static_cast<size_t>(distinct),
                                        std::vector<int64_t>(static_cast<size_t>(bags * per_bag)));
  for (auto& r : ids)
    for (auto& id : r) id = static_cast<int64_t>(SplitMix(state) % static_cast<uint64_t>(rows));
  return ids;
}

std::vector<int64_t> MakeOffsets(int64_t bags, int64_t per_bag) {
  std::vector<int64_t> offsets(static_cast<size_t>(bags));
  for (int64_t b = 0; b < bags; ++b) offsets[b] = b * per_bag;
  return offsets;
}

double CpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

const char* CodeName(int code) {
  static const char* const kNames[] = {"OK",
                                       "CANCELLED",
                                       "UNKNOWN",
                                       "INVALID_ARGUMENT",
                                       "DEADLINE_EXCEEDED",
                                       "NOT_FOUND",
                                       "ALREADY_EXISTS",
                                       "PERMISSION_DENIED",
                                       "RESOURCE_EXHAUSTED",
                                       "FAILED_PRECONDITION",
                                       "ABORTED",
                                       "OUT_OF_RANGE",
                                       "UNIMPLEMENTED",
                                       "INTERNAL",
                                       "UNAVAILABLE",
                                       "DATA_LOSS",
                                       "UNAUTHENTICATED"};
  return code >= 0 && code <= 16 ? kNames[code] : "?";
}

// ---------------------------------------------------------------- open loop

// Send times, in ns from the start, of n requests at `rate`: Poisson
// (exponential gaps of mean 1/rate) or uniform, fixed by seed and rate.
std::vector<int64_t> Schedule(int64_t n, double rate, const std::string& arrival, uint64_t seed) {
  std::vector<int64_t> sched(static_cast<size_t>(n));
  std::mt19937_64 rng(seed * 7919 + static_cast<uint64_t>(rate));
  std::exponential_distribution<double> exp_dist(rate);
  double t = 0;
  for (int64_t i = 0; i < n; ++i) {
    t += arrival == "poisson" ? exp_dist(rng) : 1.0 / rate;
    sched[i] = static_cast<int64_t>(t * 1e9);
  }
  return sched;
}

// One request in flight; freed by its callback.
struct Call {
  grpc::ClientContext ctx;
  embstore::v1::PooledReply reply;
  int64_t index = 0;
  // --api cq only.
  std::unique_ptr<grpc::ClientAsyncResponseReader<embstore::v1::PooledReply>> rpc;
  grpc::Status status;
};

struct Outcome {
  int64_t done_ns = -1;  // reply time since the run's start; -1: no reply yet
  int32_t code = -1;
  bool bad_reply = false;
};

int CmdOpen(const Args& args) {
  // Timer slack 1 ns: sleep_until wakes when asked, not up to 50 us later.
  prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
  const std::string target = args.Need("target");
  const std::string table = args.Need("table");
  const std::vector<double> rates = NumList(args.Need("rate"));
  const double duration = args.Num("duration", 5);
  const double warmup = args.Num("warmup", 1);
  const std::string arrival = args.Str("arrival", "poisson");
  if (arrival != "poisson" && arrival != "uniform") Die("--arrival must be poisson or uniform");
  const int channels = static_cast<int>(args.Int("channels", 1));
  const int64_t bags = args.Int("bags", 64);
  const int64_t per_bag = args.Int("ids-per-bag", 20);
  const int64_t distinct = std::max<int64_t>(1, args.Int("distinct", 256));
  const uint64_t seed = static_cast<uint64_t>(args.Int("seed", 1));
  const int max_threads = static_cast<int>(args.Int("max-threads", 1));
  const auto deadline = std::chrono::milliseconds(args.Int("deadline-ms", 2000));
  const auto drain = std::chrono::milliseconds(args.Int("drain-ms", 3000));
  // callback: stub->async()->EmbeddingBag, replies handled on gRPC's threads.
  // cq: PrepareAsyncEmbeddingBag on a CompletionQueue that one thread of
  // ours polls (Next), which records each reply.
  const std::string api = args.Str("api", "callback");
  // --spin-us S: the sender sleeps until S us before each send time and
  // spins from there (0: sleeps until the send time).
  const auto spin = std::chrono::microseconds(args.Int("spin-us", 0));
  if (api != "callback" && api != "cq" && api != "poll") Die("--api must be callback, cq or poll");

  // Channels: each its own TCP connection (a local subchannel pool, and an
  // argument that differs per channel).
  std::vector<std::unique_ptr<embstore::v1::Embstore::Stub>> stubs;
  for (int c = 0; c < channels; ++c) {
    grpc::ChannelArguments ca;
    ca.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    ca.SetInt("embstore.serve_bench.channel", c);
    ca.SetMaxReceiveMessageSize(256 << 20);
    auto ch = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), ca);
    if (!ch->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10)))
      Die("cannot connect to " + target);
    stubs.push_back(embstore::v1::Embstore::NewStub(ch));
  }
  // The table's shape, from the server.
  embstore::v1::TableMeta meta;
  {
    grpc::ClientContext ctx;
    embstore::v1::TableInfoRequest r;
    r.set_table(table);
    const grpc::Status st = stubs[0]->TableInfo(&ctx, r, &meta);
    if (!st.ok()) Die("TableInfo: " + st.error_message());
  }
  const auto ids = MakeIds(distinct, bags, per_bag, meta.rows(), seed);
  const auto offsets = MakeOffsets(bags, per_bag);
  std::vector<embstore::v1::EmbeddingBagRequest> requests(static_cast<size_t>(distinct));
  for (int64_t i = 0; i < distinct; ++i) {
    embstore::v1::EmbeddingBagRequest& r = requests[i];
    r.set_table(table);
    r.mutable_indices()->Add(ids[i].begin(), ids[i].end());
    r.mutable_offsets()->mutable_values()->Add(offsets.begin(), offsets.end());
    r.mutable_options()->set_mode(embstore::v1::POOLING_MODE_SUM);
    r.mutable_options()->set_max_threads(max_threads);
  }
  const size_t expect_bytes = static_cast<size_t>(bags * meta.dim()) * sizeof(float);

  // Warm the connections and the server (untimed): a few calls each.
  for (auto& stub : stubs) {
    for (int i = 0; i < 20; ++i) {
      grpc::ClientContext ctx;
      embstore::v1::PooledReply reply;
      const grpc::Status st = stub->EmbeddingBag(&ctx, requests[i % distinct], &reply);
      if (!st.ok()) Die("EmbeddingBag: " + st.error_message());
      if (reply.values().size() != expect_bytes) Die("reply of unexpected size");
    }
  }

  for (double rate : rates) {
    const int64_t n = static_cast<int64_t>(std::llround(rate * (warmup + duration)));
    const int64_t first_measured = static_cast<int64_t>(std::llround(rate * warmup));
    const std::vector<int64_t> sched = Schedule(n, rate, arrival, seed);
    const int64_t win_begin = static_cast<int64_t>(warmup * 1e9);
    const int64_t win_end = static_cast<int64_t>((warmup + duration) * 1e9);
    std::vector<Outcome> out(static_cast<size_t>(n));
    std::vector<int64_t> lag_ns;
    lag_ns.reserve(static_cast<size_t>(n - first_measured));
    std::atomic<int64_t> completed{0};
    std::mutex done_mu;
    std::condition_variable done_cv;

    const double cpu0 = CpuSeconds();
    const Clock::time_point start = Clock::now() + std::chrono::milliseconds(20);
    auto record = [&out, &completed, &done_mu, &done_cv, start, expect_bytes, n](
                      Call* call, const grpc::Status& st) {
      Outcome& o = out[static_cast<size_t>(call->index)];
      o.done_ns =
          std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count();
      o.code = static_cast<int32_t>(st.error_code());
      o.bad_reply = st.ok() && call->reply.values().size() != expect_bytes;
      delete call;
      if (completed.fetch_add(1, std::memory_order_acq_rel) + 1 == n) {
        std::lock_guard<std::mutex> lock(done_mu);
        done_cv.notify_all();
      }
    };
    grpc::CompletionQueue cq;
    std::thread poller;
    // poll: this thread both sends and collects the replies, polling the
    // queue without blocking until the next send time (it never sleeps, and
    // no second thread competes with it for its core).
    const bool poll = api == "poll";
    auto poll_until = [&cq, &record](Clock::time_point until) {
      void* tag = nullptr;
      bool ok = false;
      do {
        while (cq.AsyncNext(&tag, &ok, gpr_time_0(GPR_CLOCK_MONOTONIC)) ==
               grpc::CompletionQueue::GOT_EVENT) {
          Call* call = static_cast<Call*>(tag);
          record(call, call->status);
        }
      } while (Clock::now() < until);
    };
    if (api == "cq") {
      poller = std::thread([&cq, &record] {
        void* tag = nullptr;
        bool ok = false;
        while (cq.Next(&tag, &ok)) {
          Call* call = static_cast<Call*>(tag);
          record(call, call->status);
        }
      });
    }
    int64_t sent_in_window = 0;
    for (int64_t i = 0; i < n; ++i) {
      const Clock::time_point when = start + std::chrono::nanoseconds(sched[i]);
      if (poll) {
        poll_until(when);
      } else if (spin.count() > 0) {
        // Sleep to `spin` before the send time, then spin: a sleeping thread
        // of this VM wakes up to ms late (RESULTS.md).
        if (Clock::now() < when - spin) std::this_thread::sleep_until(when - spin);
        while (Clock::now() < when) {
        }
      } else if (Clock::now() < when) {
        std::this_thread::sleep_until(when);
      }
      const Clock::time_point now = Clock::now();
      const int64_t now_ns =
          std::chrono::duration_cast<std::chrono::nanoseconds>(now - start).count();
      if (i >= first_measured) {
        lag_ns.push_back(now_ns - sched[i]);
        if (now_ns < win_end) ++sent_in_window;
      }
      auto* call = new Call;
      call->index = i;
      call->ctx.set_deadline(std::chrono::system_clock::now() + deadline);
      embstore::v1::Embstore::Stub& stub = *stubs[static_cast<size_t>(i % channels)];
      const embstore::v1::EmbeddingBagRequest& req = requests[static_cast<size_t>(i % distinct)];
      if (api != "callback") {
        call->rpc = stub.PrepareAsyncEmbeddingBag(&call->ctx, req, &cq);
        call->rpc->StartCall();
        call->rpc->Finish(&call->reply, &call->status, call);
      } else {
        stub.async()->EmbeddingBag(&call->ctx, &req, &call->reply,
                                   [call, &record](grpc::Status st) { record(call, st); });
      }
    }
    const double send_end_s = std::chrono::duration<double>(Clock::now() - start).count();
    if (poll) {
      const Clock::time_point give_up = Clock::now() + deadline + drain;
      while (completed.load(std::memory_order_acquire) < n && Clock::now() < give_up)
        poll_until(Clock::now() + std::chrono::milliseconds(1));
    }
    {
      std::unique_lock<std::mutex> lock(done_mu);
      done_cv.wait_for(lock, deadline + drain,
                       [&] { return completed.load(std::memory_order_acquire) == n; });
    }
    const int64_t finished = completed.load(std::memory_order_acquire);
    const double cpu1 = CpuSeconds();
    if (finished == n && (poller.joinable() || poll)) {
      cq.Shutdown();
      if (poller.joinable()) {
        poller.join();
      } else {
        void* tag = nullptr;
        bool ok = false;
        while (cq.Next(&tag, &ok)) {
        }
      }
    }
    if (finished != n) {
      // Should not happen (every call has a deadline); the callbacks still
      // hold pointers into `out`, so stop here rather than free it.
      std::fprintf(stderr, "serve_bench: %lld calls without a reply after the deadline\n",
                   static_cast<long long>(n - finished));
      std::fflush(stdout);
      std::_Exit(3);
    }

    std::vector<double> lat;
    lat.reserve(static_cast<size_t>(n - first_measured));
    std::map<std::string, int64_t> errors;
    int64_t ok_in_window = 0, bad_replies = 0, ok_measured = 0, scheduled_in_window = 0;
    for (int64_t i = 0; i < n; ++i) {
      const Outcome& o = out[i];
      if (sched[i] >= win_begin && sched[i] < win_end) ++scheduled_in_window;
      if (o.code == 0 && o.done_ns >= win_begin && o.done_ns < win_end) ++ok_in_window;
      if (i < first_measured) continue;
      if (o.bad_reply) ++bad_replies;
      if (o.code == 0) {
        ++ok_measured;
        lat.push_back(static_cast<double>(o.done_ns - sched[i]) * 1e-3);
      } else {
        ++errors[CodeName(o.code)];
      }
    }
    std::sort(lat.begin(), lat.end());
    std::vector<double> lag(lag_ns.begin(), lag_ns.end());
    std::sort(lag.begin(), lag.end());
    std::string err_json = "{";
    for (const auto& [k, v] : errors) {
      if (err_json.size() > 1) err_json += ", ";
      err_json += "\"" + k + "\": " + std::to_string(v);
    }
    err_json += "}";
    const int64_t measured = n - first_measured;
    std::printf(
        "{\"cmd\": \"open\", \"api\": \"%s\", \"spin_us\": %lld, \"rate\": %.6g, \"arrival\": \"%s\", \"channels\": %d, "
        "\"duration_s\": %.6g, \"warmup_s\": %.6g, \"bags\": %lld, \"ids_per_bag\": %lld, "
        "\"distinct\": %lld, \"max_threads\": %d, \"measured\": %lld, \"ok\": %lld, "
        "\"scheduled_rps\": %.6g, \"achieved_rps\": %.6g, \"measured_ok_rps\": %.6g, \"sent_rps\": %.6g, "
        "\"send_end_s\": %.6g, \"lag_p50_us\": %.4g, \"lag_p99_us\": %.4g, "
        "\"p50_us\": %.4g, \"p90_us\": %.4g, \"p99_us\": %.4g, \"p999_us\": %.4g, "
        "\"max_us\": %.4g, \"mean_us\": %.4g, \"errors\": %s, \"bad_replies\": %lld, "
        "\"client_cpu_s\": %.4g, \"client_cpu_per_req_us\": %.4g}\n",
        api.c_str(), static_cast<long long>(spin.count()), rate, arrival.c_str(), channels, duration, warmup, static_cast<long long>(bags),
        static_cast<long long>(per_bag), static_cast<long long>(distinct), max_threads,
        static_cast<long long>(measured), static_cast<long long>(ok_measured),
        static_cast<double>(scheduled_in_window) / duration,
        static_cast<double>(ok_in_window) / duration, static_cast<double>(ok_measured) / duration,
        static_cast<double>(sent_in_window) / duration, send_end_s, Percentile(lag, 0.5) * 1e-3,
        Percentile(lag, 0.99) * 1e-3, Percentile(lat, 0.5), Percentile(lat, 0.9),
        Percentile(lat, 0.99), Percentile(lat, 0.999), lat.empty() ? 0.0 : lat.back(),
        lat.empty() ? 0.0 : [&] {
          double s = 0;
          for (double v : lat) s += v;
          return s / static_cast<double>(lat.size());
        }(),
        err_json.c_str(), static_cast<long long>(bad_replies), cpu1 - cpu0,
        (cpu1 - cpu0) / static_cast<double>(n) * 1e6);
    std::fflush(stdout);
  }
  return 0;
}

// ---------------------------------------------------------------- in-process

// What both in-process commands share: the table's snapshot, the requests
// (the same ids as `open` for the same seed) and their options.
struct Inproc {
  explicit Inproc(const Args& args) {
    embstore::StoreOptions so;
    so.create_if_missing = false;
    auto opened = embstore::Store::Open(args.Need("db"), so);
    if (!opened.ok()) Die(opened.status().message());
    store = std::move(opened).value();
    auto s = store->GetSnapshot(args.Need("table"));
    if (!s.ok()) Die(s.status().message());
    snap = *s;
    view = snap.view();
    duration = args.Num("duration", 5);
    warmup = args.Num("warmup", 1);
    bags = args.Int("bags", 64);
    per_bag = args.Int("ids-per-bag", 20);
    distinct = std::max<int64_t>(1, args.Int("distinct", 256));
    seed = static_cast<uint64_t>(args.Int("seed", 1));
    qo.mode = embstore::PoolingMode::kSum;
    qo.max_threads = static_cast<int>(args.Int("max-threads", 1));
    ids = MakeIds(distinct, bags, per_bag, view.rows, seed);
    offsets = MakeOffsets(bags, per_bag);
  }
  std::unique_ptr<embstore::Store> store;
  embstore::TableSnapshot snap;
  embstore::TableView view;
  double duration = 5, warmup = 1;
  int64_t bags = 64, per_bag = 20, distinct = 256;
  uint64_t seed = 1;
  embstore::QueryOptions qo;
  std::vector<std::vector<int64_t>> ids;
  std::vector<int64_t> offsets;
};

int CmdInproc(const Args& args) {
  const Inproc in(args);
  const embstore::TableView& view = in.view;
  const int threads = static_cast<int>(args.Int("threads", 1));
  const double duration = in.duration, warmup = in.warmup;
  const int64_t bags = in.bags, per_bag = in.per_bag, distinct = in.distinct;
  const embstore::QueryOptions& qo = in.qo;
  const auto& ids = in.ids;
  const auto& offsets = in.offsets;

  std::vector<std::vector<double>> lat(static_cast<size_t>(threads));
  std::vector<int64_t> calls(static_cast<size_t>(threads), 0);
  const Clock::time_point start = Clock::now();
  const Clock::time_point t_begin =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(warmup));
  const Clock::time_point t_end = t_begin + std::chrono::duration_cast<Clock::duration>(
                                                std::chrono::duration<double>(duration));
  const double cpu0 = CpuSeconds();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      std::vector<float> out(static_cast<size_t>(bags * view.dim));
      std::vector<double>& my = lat[static_cast<size_t>(t)];
      my.reserve(1 << 20);
      // Threads start at different requests of the same set.
      for (int64_t i = t * distinct / std::max(1, threads);; ++i) {
        embstore::BagRequest r;
        r.indices = std::span<const int64_t>(ids[static_cast<size_t>(i % distinct)]);
        r.offsets = std::span<const int64_t>(offsets);
        const Clock::time_point a = Clock::now();
        if (a >= t_end) break;
        const embstore::Status s = embstore::EmbeddingBag(view, r, qo, out);
        const Clock::time_point b = Clock::now();
        if (!s.ok()) Die(s.message());
        if (a >= t_begin && b < t_end) {
          my.push_back(std::chrono::duration<double, std::micro>(b - a).count());
          ++calls[static_cast<size_t>(t)];
        }
      }
    });
  }
  for (auto& th : pool) th.join();
  const double cpu1 = CpuSeconds();
  std::vector<double> all;
  int64_t total = 0;
  for (int t = 0; t < threads; ++t) {
    all.insert(all.end(), lat[t].begin(), lat[t].end());
    total += calls[t];
  }
  std::sort(all.begin(), all.end());
  std::printf(
      "{\"cmd\": \"inproc\", \"threads\": %d, \"duration_s\": %.6g, \"bags\": %lld, "
      "\"ids_per_bag\": %lld, \"distinct\": %lld, \"max_threads\": %d, \"calls\": %lld, "
      "\"throughput_rps\": %.6g, \"p50_us\": %.4g, \"p90_us\": %.4g, \"p99_us\": %.4g, "
      "\"p999_us\": %.4g, \"max_us\": %.4g, \"cpu_s\": %.4g}\n",
      threads, duration, static_cast<long long>(bags), static_cast<long long>(per_bag),
      static_cast<long long>(distinct), qo.max_threads, static_cast<long long>(total),
      static_cast<double>(total) / duration, Percentile(all, 0.5), Percentile(all, 0.9),
      Percentile(all, 0.99), Percentile(all, 0.999), all.empty() ? 0.0 : all.back(), cpu1 - cpu0);
  return 0;
}

int CmdRtt(const Args& args) {
  const std::string target = args.Need("target");
  const std::string table = args.Need("table");
  const int64_t calls = std::max<int64_t>(100, args.Int("calls", 2000));
  grpc::ChannelArguments ca;
  ca.SetMaxReceiveMessageSize(256 << 20);
  auto ch = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), ca);
  auto stub = embstore::v1::Embstore::NewStub(ch);
  embstore::v1::TableInfoRequest info_req;
  info_req.set_table(table);
  embstore::v1::TableMeta meta;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    const grpc::Status st = stub->TableInfo(&ctx, info_req, &meta);
    if (!st.ok()) Die("TableInfo: " + st.error_message());
  }
  const int64_t bags = args.Int("bags", 64);
  const int64_t per_bag = args.Int("ids-per-bag", 20);
  const auto ids =
      MakeIds(1, bags, per_bag, meta.rows(), static_cast<uint64_t>(args.Int("seed", 1)));
  const auto offsets = MakeOffsets(bags, per_bag);
  embstore::v1::EmbeddingBagRequest bag_req;
  bag_req.set_table(table);
  bag_req.mutable_indices()->Add(ids[0].begin(), ids[0].end());
  bag_req.mutable_offsets()->mutable_values()->Add(offsets.begin(), offsets.end());
  bag_req.mutable_options()->set_mode(embstore::v1::POOLING_MODE_SUM);
  bag_req.mutable_options()->set_max_threads(static_cast<int>(args.Int("max-threads", 1)));
  grpc::CompletionQueue cq;
  // One call, waited for by polling; its time in us.
  auto once = [&](bool bag) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::Status st;
    embstore::v1::PooledReply bag_reply;
    embstore::v1::TableMeta info_reply;
    const Clock::time_point a = Clock::now();
    if (bag) {
      auto rpc = stub->AsyncEmbeddingBag(&ctx, bag_req, &cq);
      rpc->Finish(&bag_reply, &st, &cq);
    } else {
      auto rpc = stub->AsyncTableInfo(&ctx, info_req, &cq);
      rpc->Finish(&info_reply, &st, &cq);
    }
    void* tag = nullptr;
    bool ok = false;
    while (cq.AsyncNext(&tag, &ok, gpr_time_0(GPR_CLOCK_MONOTONIC)) !=
           grpc::CompletionQueue::GOT_EVENT) {
    }
    const Clock::time_point b = Clock::now();
    if (!st.ok()) Die(st.error_message());
    return std::chrono::duration<double, std::micro>(b - a).count();
  };
  for (const bool bag : {true, false}) {
    for (int i = 0; i < 50; ++i) once(bag);  // warm-up
    std::vector<double> lat;
    for (int64_t i = 0; i < calls; ++i) lat.push_back(once(bag));
    std::sort(lat.begin(), lat.end());
    std::printf(
        "{\"cmd\": \"rtt\", \"rpc\": \"%s\", \"calls\": %lld, \"p50_us\": %.4g, "
        "\"p90_us\": %.4g, \"p99_us\": %.4g}\n",
        bag ? "EmbeddingBag" : "TableInfo", static_cast<long long>(calls), Percentile(lat, 0.5),
        Percentile(lat, 0.9), Percentile(lat, 0.99));
  }
  cq.Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (cq.Next(&tag, &ok)) {
  }
  return 0;
}

int CmdCluster(const Args& args) {
  embstore::serve::ClusterClientOptions co;
  co.endpoints = args.Need("cluster");
  const std::string table = args.Need("table");
  auto client = embstore::serve::ClusterClient::Open(co);
  if (!client.ok()) Die(client.status().message());
  auto route = (*client)->Route(table);
  if (!route.ok()) Die(route.status().message());
  const double duration = args.Num("duration", 5);
  const double warmup = args.Num("warmup", 1);
  const int64_t bags = args.Int("bags", 64);
  const int64_t per_bag = args.Int("ids-per-bag", 20);
  const int64_t distinct = std::max<int64_t>(1, args.Int("distinct", 256));
  const auto ids =
      MakeIds(distinct, bags, per_bag, route->rows, static_cast<uint64_t>(args.Int("seed", 1)));
  const auto offsets = MakeOffsets(bags, per_bag);
  embstore::QueryOptions qo;
  qo.mode = embstore::PoolingMode::kSum;
  qo.max_threads = 1;
  // Bytes on the wire per call, as embstore encodes them: per shard a
  // request carrying its ids (and the bag starts) and a reply of B x dim
  // floats and B counts. The alternative, raw rows: the ids out, every
  // looked-up row back.
  double partial_bytes = 0, raw_bytes = 0;
  for (int64_t i = 0; i < distinct; ++i) {
    std::vector<std::vector<int64_t>> per_shard(route->shards.size());
    for (int64_t id : ids[static_cast<size_t>(i)]) {
      for (size_t s = 0; s < route->shards.size(); ++s) {
        if (id >= route->shards[s].begin && id < route->shards[s].end) {
          per_shard[s].push_back(id - route->shards[s].begin);
          break;
        }
      }
    }
    for (const auto& sub : per_shard) {
      if (sub.empty()) continue;
      embstore::v1::PoolPartialRequest req;
      req.mutable_bag()->set_table(embstore::serve::ShardTableName(table, route->version, 0));
      req.mutable_bag()->mutable_indices()->Add(sub.begin(), sub.end());
      req.mutable_bag()->mutable_offsets()->mutable_values()->Add(offsets.begin(), offsets.end());
      embstore::v1::PartialReply rep;
      rep.add_shape(bags);
      rep.add_shape(route->dim);
      rep.mutable_values()->resize(static_cast<size_t>(bags * route->dim) * sizeof(float));
      for (int64_t b = 0; b < bags; ++b) rep.add_counts(per_bag);
      partial_bytes += static_cast<double>(req.ByteSizeLong() + rep.ByteSizeLong());
    }
    raw_bytes += static_cast<double>(ids[static_cast<size_t>(i)].size()) *
                 (8.0 + static_cast<double>(route->dim) * sizeof(float));
  }
  std::vector<double> lat;
  const Clock::time_point start = Clock::now();
  const auto t_begin =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(warmup));
  const auto t_end = t_begin + std::chrono::duration_cast<Clock::duration>(
                                   std::chrono::duration<double>(duration));
  const embstore::serve::ClusterStats s0 = (*client)->stats();
  int64_t calls = 0;
  for (int64_t i = 0;; ++i) {
    embstore::BagRequest r;
    r.indices = std::span<const int64_t>(ids[static_cast<size_t>(i % distinct)]);
    r.offsets = std::span<const int64_t>(offsets);
    const Clock::time_point a = Clock::now();
    if (a >= t_end) break;
    auto got = (*client)->EmbeddingBag(table, r, qo);
    const Clock::time_point b = Clock::now();
    if (!got.ok()) Die(got.status().message());
    if (a >= t_begin && b < t_end) {
      lat.push_back(std::chrono::duration<double, std::micro>(b - a).count());
      ++calls;
    }
  }
  const embstore::serve::ClusterStats s1 = (*client)->stats();
  std::sort(lat.begin(), lat.end());
  const double all_calls = static_cast<double>(std::max<int64_t>(1, s1.requests - s0.requests));
  std::printf(
      "{\"cmd\": \"cluster\", \"shards\": %zu, \"calls\": %lld, \"throughput_rps\": %.6g, "
      "\"p50_us\": %.4g, \"p90_us\": %.4g, \"p99_us\": %.4g, \"sub_requests_per_call\": %.4g, "
      "\"retries\": %lld, \"wire_bytes_partials\": %.6g, \"wire_bytes_raw_rows\": %.6g}\n",
      route->shards.size(), static_cast<long long>(calls), static_cast<double>(calls) / duration,
      Percentile(lat, 0.5), Percentile(lat, 0.9), Percentile(lat, 0.99),
      static_cast<double>(s1.sub_requests - s0.sub_requests) / all_calls,
      static_cast<long long>(s1.retries - s0.retries),
      partial_bytes / static_cast<double>(distinct), raw_bytes / static_cast<double>(distinct));
  return 0;
}

int CmdInprocOpen(const Args& args) {
  const Inproc in(args);
  const embstore::TableView& view = in.view;
  const std::vector<double> rates = NumList(args.Need("rate"));
  const double duration = in.duration, warmup = in.warmup;
  const std::string arrival = args.Str("arrival", "poisson");
  if (arrival != "poisson" && arrival != "uniform") Die("--arrival must be poisson or uniform");
  const int64_t bags = in.bags, distinct = in.distinct;
  const uint64_t seed = in.seed;
  const embstore::QueryOptions& qo = in.qo;
  const auto& ids = in.ids;
  const auto& offsets = in.offsets;
  std::vector<float> out(static_cast<size_t>(bags * view.dim));
  for (double rate : rates) {
    const int64_t n = static_cast<int64_t>(std::llround(rate * (warmup + duration)));
    const int64_t first_measured = static_cast<int64_t>(std::llround(rate * warmup));
    const std::vector<int64_t> sched = Schedule(n, rate, arrival, seed);
    std::vector<double> lat, service;
    lat.reserve(static_cast<size_t>(n));
    service.reserve(static_cast<size_t>(n));
    const Clock::time_point start = Clock::now() + std::chrono::milliseconds(20);
    const int64_t win_end = static_cast<int64_t>((warmup + duration) * 1e9);
    int64_t done_in_window = 0;
    for (int64_t i = 0; i < n; ++i) {
      const Clock::time_point when = start + std::chrono::nanoseconds(sched[i]);
      while (Clock::now() < when) {
      }
      embstore::BagRequest r;
      r.indices = std::span<const int64_t>(ids[static_cast<size_t>(i % distinct)]);
      r.offsets = std::span<const int64_t>(offsets);
      const Clock::time_point a = Clock::now();
      const embstore::Status st = embstore::EmbeddingBag(view, r, qo, out);
      const Clock::time_point b = Clock::now();
      if (!st.ok()) Die(st.message());
      if (i < first_measured) continue;
      const int64_t done_ns =
          std::chrono::duration_cast<std::chrono::nanoseconds>(b - start).count();
      if (done_ns < win_end) ++done_in_window;
      lat.push_back(static_cast<double>(done_ns - sched[i]) * 1e-3);
      service.push_back(std::chrono::duration<double, std::micro>(b - a).count());
    }
    std::sort(lat.begin(), lat.end());
    std::sort(service.begin(), service.end());
    const int64_t win_begin_ns = static_cast<int64_t>(warmup * 1e9);
    int64_t scheduled_in_window = 0;
    for (int64_t t : sched) scheduled_in_window += t >= win_begin_ns && t < win_end;
    std::printf(
        "{\"cmd\": \"inproc-open\", \"rate\": %.6g, \"arrival\": \"%s\", \"duration_s\": %.6g, "
        "\"measured\": %lld, \"scheduled_rps\": %.6g, \"achieved_rps\": %.6g, "
        "\"p50_us\": %.4g, \"p90_us\": %.4g, \"p99_us\": %.4g, \"p999_us\": %.4g, "
        "\"service_p50_us\": %.4g, \"service_p99_us\": %.4g}\n",
        rate, arrival.c_str(), duration, static_cast<long long>(n - first_measured),
        static_cast<double>(scheduled_in_window) / duration,
        static_cast<double>(done_in_window) / duration, Percentile(lat, 0.5), Percentile(lat, 0.9),
        Percentile(lat, 0.99), Percentile(lat, 0.999), Percentile(service, 0.5),
        Percentile(service, 0.99));
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  embstore::bench::ProgramName() = "serve_bench";
  if (argc < 2) {
    std::fprintf(
        stderr,
        "usage: serve_bench open|inproc|inproc-open|rtt|cluster ... (see the source's header)\n");
    return 2;
  }
  const std::string cmd = argv[1];
  const Args args(argc, argv);
  if (cmd == "open") return CmdOpen(args);
  if (cmd == "inproc") return CmdInproc(args);
  if (cmd == "inproc-open") return CmdInprocOpen(args);
  if (cmd == "rtt") return CmdRtt(args);
  if (cmd == "cluster") return CmdCluster(args);
  Die("unknown command " + cmd);
}
