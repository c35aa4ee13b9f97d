// embstore query: pool bags of embeddings (embedding_bag), on the CPU or on a
// GPU through a row cache.
#include "embstore/query.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "checkpoint/npy.h"
#include "embstore/engine.h"
#include "engine/plan.h"
#include "serve/client.h"
#include "serve/cluster.h"
#include "tools/bag_args.h"
#include "tools/commands/commands.h"

namespace embstore::cli {
namespace {

// Pooled results go out in batches of bags through one reused buffer of
// about this many bytes: a large request touches no more fresh memory than
// that (first touches of fresh pages are a fifth of a 5M-lookup query's
// time otherwise: docs/cold.md), and each batch is written (or printed) as
// soon as it is pooled.
constexpr size_t kBatchBytes = size_t{8} << 20;

// Where a query's time goes, for --stats: wall time per phase, in ns.
struct PhaseTimes {
  enum Phase { kInputs, kOpen, kValidate, kCopy, kPool, kWrite, kCommit, kCount };
  int64_t ns[kCount] = {};
  std::chrono::steady_clock::time_point mark = std::chrono::steady_clock::now();
  // Charges the time since the last call to `phase`.
  void Lap(Phase phase) {
    const auto now = std::chrono::steady_clock::now();
    ns[phase] += std::chrono::duration_cast<std::chrono::nanoseconds>(now - mark).count();
    mark = now;
  }
  std::string ToString() const {
    static const char* const kNames[kCount] = {"inputs", "open",  "validate", "copy",
                                               "pool",   "write", "commit"};
    std::string s = "time:";
    char buf[48];
    for (int i = 0; i < kCount; ++i) {
      std::snprintf(buf, sizeof buf, " %s=%.3fms", kNames[i], static_cast<double>(ns[i]) / 1e6);
      s += buf;
    }
    return s;
  }
};

// Where pooled rows go: the --out .npy (streamed: a temporary file renamed
// into place at the end) or stdout, one bag per line.
class Sink {
 public:
  Status Open(const std::string& out_path, const std::vector<int64_t>& shape) {
    if (out_path.empty()) return Status::OK();
    to_file_ = true;
    EMBSTORE_RETURN_IF_ERROR(writer_.Open(out_path, "<f4", shape));
    SetOutputToRemove(writer_.tmp_path());
    return Status::OK();
  }
  // rows x dim floats, row-major.
  Status Put(std::span<const float> values, int64_t dim) {
    if (to_file_) {
      return writer_.Append({reinterpret_cast<const uint8_t*>(values.data()),  // NOLINT
                             values.size() * sizeof(float)});
    }
    const int64_t rows = dim == 0 ? 0 : static_cast<int64_t>(values.size()) / dim;
    std::string line;
    char buf[32];
    for (int64_t b = 0; b < rows; ++b) {
      line.clear();
      for (int64_t j = 0; j < dim; ++j) {
        std::snprintf(buf, sizeof buf, "%.8g",
                      static_cast<double>(values[static_cast<size_t>(b * dim + j)]));
        if (j) line += ' ';
        line += buf;
      }
      line += '\n';
      if (std::fputs(line.c_str(), stdout) == EOF) return Status::OK();  // main() reports it
    }
    return Status::OK();
  }
  Status Commit() {
    if (!to_file_) return Status::OK();
    const Status st = writer_.Commit();
    SetOutputToRemove("");
    return st;
  }

 private:
  bool to_file_ = false;
  storage::NpyWriter writer_;
};

// How many of `count` items of `item_floats` floats each go in one batch.
// Items of no floats (dim 0, or no bags per sample) go in one batch.
int64_t BatchItems(int64_t count, int64_t item_floats) {
  if (item_floats <= 0) return std::max<int64_t>(1, count);
  const int64_t per = std::max<int64_t>(
      1, static_cast<int64_t>(kBatchBytes / sizeof(float)) / std::max<int64_t>(item_floats, 1));
  return std::max<int64_t>(1, std::min(count, per));
}

class QueryCommand : public Command {
 public:
  QueryCommand()
      : Command("query", "pool bags of embeddings (embedding_bag)",
                "Pool bags of embeddings (torch.nn.functional.embedding_bag semantics).\n"
                "SPEC is an inline list (1,2,3) or @file.npy (1-D or 2-D; int32/int64 ids, "
                "float32 weights).") {
    AddValue("db", "Store directory (or --server)");
    AddValue("table", "Table name", Need::kRequired);
    AddValue("indices", "Row ids: SPEC (2-D [B,N] = B bags of N)", Need::kRequired);
    AddValue("offsets", "Start of each bag in 1-D indices: SPEC");
    AddValue("weights", "Per-sample weights, same shape as indices: SPEC");
    AddValue("bag-ends", "Batched bags: inclusive end offsets [B,K] over [B,N] indices: SPEC");
    AddValueWithDefault("mode", "sum | mean | max (default mean, as torch)", "mean");
    AddValue("padding-idx", "Skip entries equal to this id (negative counts from the end)");
    AddValue("max-norm", "Use rows with norm > X scaled to norm X (the store is not modified)");
    AddValueWithDefault("norm-type", "p of the p-norm for --max-norm (default 2; inf allowed)",
                        "2");
    AddFlag("include-last-offset", "offsets has B+1 entries; the last ends bag B-1");
    AddInt("threads", "Worker threads (0 = all cores)", "0");
    AddValueWithDefault("device", "cpu | cuda (pool on the GPU through a row cache)", "cpu");
    AddInt64("cache-rows", "GPU row cache capacity in rows (default: 1 GiB of device memory)");
    AddInt64("cache-mb", "GPU row cache capacity in MiB");
    AddValueWithDefault("cache-policy", "GPU cache eviction: lru | lfu", "lru");
    AddValueWithDefault("prefetch",
                        "auto | on | off: read the pages of a cold table's rows ahead, "
                        "concurrently (auto: when the table is found cold)",
                        "auto");
    AddInt("prefetch-depth", "Rows read ahead per thread with --prefetch (1..65536)", "64");
    AddFlag("stats",
            "Print the page prefetcher's (and the GPU cache's) statistics, and the time "
            "of each phase, to stderr");
    AddValue("out", "Write the [B, dim] float32 result to this .npy instead of printing");
    AddValue("server",
             "HOST:PORT of an `embstore serve` to query instead of --db (same flags, same "
             "output)");
    AddValue("cluster",
             "etcd endpoints (http://HOST:PORT,...) of an embstore cluster to query instead of "
             "--db: the table's shards on `embstore serve --cluster` nodes (same flags, same "
             "output)");
    AddValue("cluster-prefix",
             "With --cluster: the cluster's etcd key prefix (default /embstore/)");
    AddInt64("attempt-ms",
             "With --cluster: how long one shard's node may take before its next replica is "
             "tried (default 1000)");
    AddInt64("version", "With --server: pool this version of the table (default: the current)");
    AddInt64("deadline-ms", "With --server or --cluster: give up after this many milliseconds");
    AddValue("tls-ca", "With --server: verify the server's TLS certificate with this PEM CA");
    AddValue("tls-cert", "With --server and --tls-ca: this PEM client certificate (mutual TLS)");
    AddValue("tls-key", "With --server and --tls-ca: the client certificate's PEM key");
  }

 private:
  int Run() override {
    if (Has("server") && Has("cluster")) return Usage("--server and --cluster exclude each other");
    if (Has("server")) return RunRemote();
    if (Has("cluster")) return RunCluster();
    for (const char* remote : {"cluster-prefix", "attempt-ms"}) {
      if (Has(remote)) return Usage(std::string("--") + remote + " applies to --cluster only");
    }
    for (const char* remote : {"version", "deadline-ms", "tls-ca", "tls-cert", "tls-key"}) {
      if (Has(remote)) return Usage(std::string("--") + remote + " applies to --server only");
    }
    if (!Has("db")) return Usage("--db is required (or --server HOST:PORT)");
    const std::string db = Str("db");
    times_ = PhaseTimes();
    // Large .npy inputs are mapped, not copied into fresh memory.
    EnableMappedInputs();
    if (const int rc = ReadOptions(); rc != kExitOk) return rc;
    auto indices = ParseIntSpec(Str("indices"), "--indices");
    if (!indices.ok()) return Fail(indices.status());
    auto weights = FloatSpec("weights");
    if (!weights.ok()) return Fail(weights.status());
    times_.Lap(PhaseTimes::kInputs);

    // Open the store only after the inputs parse: a typo costs nothing.
    if (const Status st = CheckOutOption(db); !st.ok()) return Fail(st);
    auto store = OpenStore(db, false);
    if (!store.ok()) return Fail(store.status());
    auto snap = (*store)->GetSnapshot(Str("table"));
    if (!snap.ok()) return Fail(snap.status());
    const TableView view = snap->view();
    times_.Lap(PhaseTimes::kOpen);

    // The request's layout is validated first, then it is pooled in batches
    // of bags into the output as they come, each batch's ids validated by the
    // engine. A bad id anywhere is refused with its position in the whole
    // request (Counted) and nothing is written: the --out file appears only
    // once complete, and printed output starts only after the whole request
    // (ids included) was validated.
    const int rc = Has("bag-ends") ? PoolBatched(view, *indices, *weights)
                                   : PoolBags(view, *indices, *weights);
    if (rc != kExitOk) return rc;
    if (IsSet("stats")) {
      const PrefetchStats ps = GetPrefetchStats();
      std::fprintf(stderr,
                   "page prefetch: cold_chunks=%lld rows_checked=%lld rows_missing=%lld "
                   "hit_rate=%.3f pages_read=%lld\n",
                   static_cast<long long>(ps.cold_chunks), static_cast<long long>(ps.rows_checked),
                   static_cast<long long>(ps.rows_missing), ps.hit_rate(),
                   static_cast<long long>(ps.pages_read));
      std::fprintf(stderr, "%s\n", times_.ToString().c_str());
      if (engine_->device() == Device::kCuda) {
        std::fprintf(stderr, "gpu cache: %s\n", CacheStatsToString(engine_->stats()).c_str());
      }
    }
    return kExitOk;
  }

  // --server: the same request, pooled by `embstore serve`, written the same
  // way.
  int RunRemote() {
    for (const char* local :
         {"db", "device", "cache-rows", "cache-mb", "cache-policy", "prefetch", "prefetch-depth"}) {
      if (Has(local)) {
        return Usage(std::string("--") + local +
                     " does not apply with --server (the server has its own store and engine)");
      }
    }
    if (const int rc = ReadPoolFlags(); rc != kExitOk) return rc;
    serve::ClientOptions co;
    co.target = Str("server");
    if (const int rc = ReadRemoteFlags(&co); rc != kExitOk) return rc;
    uint64_t version = 0;
    if (Has("version")) {
      if (Int64("version") < 1) return Usage("--version must be >= 1");
      version = static_cast<uint64_t>(Int64("version"));
    }
    auto client = serve::Client::Connect(co);
    if (!client.ok()) return Fail(client.status());
    uint64_t served = 0;
    const int rc = PoolRemote(
        [&](const BagRequest& req) {
          return (*client)->EmbeddingBag(Str("table"), req, qo_, version);
        },
        [&](const BatchedBagRequest& req) {
          return (*client)->BatchedEmbeddingBag(Str("table"), req, qo_, version);
        },
        &served);
    if (rc != kExitOk) return rc;
    if (IsSet("stats")) {
      std::fprintf(stderr, "served by %s: table %s version %llu\n", co.target.c_str(),
                   Str("table").c_str(), static_cast<unsigned long long>(served));
    }
    return kExitOk;
  }

  // --tls-ca/--tls-cert/--tls-key and --deadline-ms, for --server and
  // --cluster alike.
  template <class Options>
  int ReadRemoteFlags(Options* co) {
    if (Has("tls-ca")) co->tls_ca = Str("tls-ca");
    if (Has("tls-cert")) co->tls_cert = Str("tls-cert");
    if (Has("tls-key")) co->tls_key = Str("tls-key");
    if (Has("deadline-ms")) {
      if (Int64("deadline-ms") < 1) return Usage("--deadline-ms must be >= 1");
      co->deadline = std::chrono::milliseconds(Int64("deadline-ms"));
    }
    return kExitOk;
  }

  // The request of --indices and --offsets (or --bag-ends) and --weights,
  // pooled remotely by `bag` (or `batched`) and written as a local result;
  // *version is the version that served it.
  template <class Bag, class Batched>
  int PoolRemote(const Bag& bag, const Batched& batched, uint64_t* version) {
    auto indices = ParseIntSpec(Str("indices"), "--indices");
    if (!indices.ok()) return Fail(indices.status());
    auto weights = FloatSpec("weights");
    if (!weights.ok()) return Fail(weights.status());
    Result<serve::RemoteResult> result = Status::Internal("no request");
    std::optional<IntArray> held;  // the --offsets or --bag-ends the request points into
    if (Has("bag-ends")) {
      BatchedBagRequest req;
      if (const int rc = ReadBatched(*indices, *weights, &held, &req); rc != kExitOk) return rc;
      result = batched(req);
    } else {
      BagRequest req;
      if (const int rc = ReadBags(*indices, *weights, &held, &req); rc != kExitOk) return rc;
      result = bag(req);
    }
    if (!result.ok()) return Fail(result.status());
    *version = result->version;
    return WriteResult(result->output);
  }

  // A remote result, printed or written to --out as a local one is.
  int WriteResult(const PooledOutput& out) {
    Sink sink;
    if (const Status st = sink.Open(Has("out") ? Str("out") : "", out.shape); !st.ok())
      return Fail(st);
    if (const Status st = sink.Put(out.values, out.shape.back()); !st.ok()) return Fail(st);
    if (const Status st = sink.Commit(); !st.ok()) return Fail(st);
    return kExitOk;
  }

  // --cluster: the same request, split by shard over the cluster's nodes
  // and merged here (serve/cluster.h), written the same way.
  int RunCluster() {
    for (const char* local : {"db", "device", "cache-rows", "cache-mb", "cache-policy", "prefetch",
                              "prefetch-depth", "version"}) {
      if (Has(local)) return Usage(std::string("--") + local + " does not apply with --cluster");
    }
    if (const int rc = ReadPoolFlags(); rc != kExitOk) return rc;
    serve::ClusterClientOptions co;
    co.endpoints = Str("cluster");
    if (Has("cluster-prefix")) co.keys.prefix = Str("cluster-prefix");
    if (const int rc = ReadRemoteFlags(&co); rc != kExitOk) return rc;
    if (Has("attempt-ms")) {
      if (Int64("attempt-ms") < 1) return Usage("--attempt-ms must be >= 1");
      co.attempt_timeout = std::chrono::milliseconds(Int64("attempt-ms"));
    }
    auto client = serve::ClusterClient::Open(co);
    if (!client.ok()) return Fail(client.status());
    uint64_t served = 0;
    const int rc = PoolRemote(
        [&](const BagRequest& req) { return (*client)->EmbeddingBag(Str("table"), req, qo_); },
        [&](const BatchedBagRequest& req) {
          return (*client)->BatchedEmbeddingBag(Str("table"), req, qo_);
        },
        &served);
    if (rc != kExitOk) return rc;
    if (IsSet("stats")) {
      const serve::ClusterStats cs = (*client)->stats();
      std::fprintf(stderr, "cluster: table %s version %llu, %lld sub-requests, %lld retries\n",
                   Str("table").c_str(), static_cast<unsigned long long>(served),
                   static_cast<long long>(cs.sub_requests), static_cast<long long>(cs.retries));
    }
    return kExitOk;
  }

  // The pooling options (mode, padding, max_norm, norm_type,
  // include_last_offset, threads) into qo_; kExitOk or the exit code of the
  // error printed.
  int ReadPoolFlags() {
    auto mode = ParsePoolingMode(Str("mode"));
    if (!mode) return Usage("--mode must be sum, mean or max (got '" + Str("mode") + "')");
    qo_.mode = *mode;
    if (Has("padding-idx")) {
      auto p = Integer("padding-idx");
      if (!p.ok()) return Fail(p.status());
      qo_.padding_idx = *p;
    }
    if (Has("max-norm")) {
      auto m = Number("max-norm");
      if (!m.ok()) return Fail(m.status());
      qo_.max_norm = *m;
    }
    auto p = Number("norm-type");
    if (!p.ok()) return Fail(p.status());
    qo_.norm_type = *p;
    qo_.include_last_offset = IsSet("include-last-offset");
    qo_.max_threads = Int("threads");
    if (qo_.max_threads < 0) return Usage("--threads must be >= 0");
    return kExitOk;
  }

  // Reads the pooling and device options into qo_ and creates engine_ for
  // --device; kExitOk or the exit code of the error printed.
  int ReadOptions() {
    if (const int rc = ReadPoolFlags(); rc != kExitOk) return rc;
    const std::optional<QueryOptions::Prefetch> prefetch = ParsePrefetch(Str("prefetch"));
    if (!prefetch)
      return Usage("--prefetch must be auto, on or off (got '" + Str("prefetch") + "')");
    qo_.prefetch = *prefetch;
    qo_.prefetch_depth = Int("prefetch-depth");
    if (qo_.prefetch_depth < 1 || qo_.prefetch_depth > 65536) {
      return Usage("--prefetch-depth must be between 1 and 65536");
    }
    EngineOptions engine_options;
    const std::optional<Device> device = ParseDevice(Str("device"));
    if (!device) return Usage("--device must be cpu or cuda");
    engine_options.device = *device;
    if (*device != Device::kCuda && (Has("cache-rows") || Has("cache-mb"))) {
      return Usage("--cache-rows and --cache-mb need --device cuda");
    }
    if (Has("cache-rows") && Has("cache-mb"))
      return Usage("give --cache-rows or --cache-mb, not both");
    GpuEngineOptions& gpu_options = engine_options.gpu;
    if (Has("cache-rows")) {
      gpu_options.cache_rows = Int64("cache-rows");
      if (gpu_options.cache_rows <= 0) return Usage("--cache-rows must be >= 1");
    }
    if (Has("cache-mb")) {
      const int64_t mb = Int64("cache-mb");
      if (mb <= 0 || mb > (int64_t{1} << 30))
        return Usage("--cache-mb must be between 1 and 1073741824 (1 PiB)");
      gpu_options.cache_bytes = mb << 20;
    }
    auto policy = ParseCachePolicy(Str("cache-policy"));
    if (!policy) return Usage("--cache-policy must be lru or lfu");
    gpu_options.policy = *policy;
    auto engine = Engine::Create(engine_options);
    if (!engine.ok()) return Fail(engine.status());
    engine_ = std::move(engine).value();
    return kExitOk;
  }

  // --bag-ends over --indices [B, N] and --weights, into *req; the parsed
  // ends are kept in *ends. kExitOk or the exit code of the error printed.
  int ReadBatched(const IntArray& indices, const std::optional<FloatArray>& weights,
                  std::optional<IntArray>* ends, BatchedBagRequest* req) const {
    if (Has("offsets")) return Usage("--bag-ends and --offsets cannot be combined");
    if (qo_.include_last_offset) return Usage("--include-last-offset does not apply to --bag-ends");
    auto parsed = ParseIntSpec(Str("bag-ends"), "--bag-ends");
    if (!parsed.ok()) return Fail(parsed.status());
    *ends = std::move(parsed).value();
    auto batched = BatchedBags(indices, **ends);
    if (!batched.ok()) return Fail(batched.status());
    *req = *batched;
    if (weights) {
      if (const Status ws = CheckWeightsShape(*weights, indices.shape); !ws.ok()) return Fail(ws);
      req->weights = weights->values();
    }
    return kExitOk;
  }

  // --indices (1-D with --offsets, or 2-D [B, N]) and --weights, into *req;
  // the parsed offsets are kept in *offsets.
  int ReadBags(const IntArray& indices, const std::optional<FloatArray>& weights,
               std::optional<IntArray>* offsets, BagRequest* req) const {
    req->indices = indices.view();
    req->indices_shape = indices.shape;
    auto parsed = IntSpec("offsets");
    if (!parsed.ok()) return Fail(parsed.status());
    *offsets = std::move(parsed).value();
    if (*offsets) {
      if ((*offsets)->shape.size() != 1)
        return Fail(Status::InvalidArgument("--offsets must be 1-D"));
      req->offsets = (*offsets)->view();
    }
    if (weights) {
      if (const Status ws = CheckWeightsShape(*weights, indices.shape); !ws.ok()) return Fail(ws);
      req->weights = weights->values();
    }
    return kExitOk;
  }

  // --bag-ends: batched bags [B, K] over indices [B, N], in batches of samples.
  int PoolBatched(const TableView& view, const IntArray& indices,
                  const std::optional<FloatArray>& weights) {
    std::optional<IntArray> ends;
    BatchedBagRequest batched;
    if (const int rc = ReadBatched(indices, weights, &ends, &batched); rc != kExitOk) return rc;
    const BatchedBagRequest* req = &batched;
    times_.Lap(PhaseTimes::kInputs);
    Result<int64_t> bags = Counted(view, *req);
    if (!bags.ok()) return Fail(bags.status());
    times_.Lap(PhaseTimes::kValidate);
    const int64_t batch = req->batch, n = req->items, k = req->bags_per_sample;
    Sink sink;
    if (const Status st = sink.Open(Has("out") ? Str("out") : "", {batch, k, view.dim}); !st.ok())
      return Fail(st);
    const int64_t step = BatchItems(batch, k * view.dim);
    auto buffer = PageBuffer::Allocate(static_cast<size_t>(step * k * view.dim) * sizeof(float));
    if (!buffer.ok()) return Fail(buffer.status());
    times_.Lap(PhaseTimes::kWrite);  // opening the output
    std::vector<uint8_t> ids_copy, ends_copy;
    for (int64_t s0 = 0; s0 < batch; s0 += step) {
      const int64_t s1 = std::min(batch, s0 + step);
      BatchedBagRequest part = *req;
      auto part_ids = CopySlice(req->indices, s0 * n, (s1 - s0) * n, &ids_copy);
      auto part_ends = CopySlice(req->ends, s0 * k, (s1 - s0) * k, &ends_copy);
      if (!part_ids.ok()) return Fail(part_ids.status());
      if (!part_ends.ok()) return Fail(part_ends.status());
      part.indices = *part_ids;
      part.ends = *part_ends;
      if (req->weights) part.weights = req->weights->subspan(s0 * n, (s1 - s0) * n);
      part.batch = s1 - s0;
      times_.Lap(PhaseTimes::kCopy);
      const std::span<float> dest = Floats(&*buffer, (s1 - s0) * k * view.dim);
      if (const Status st = engine_->BatchedEmbeddingBag(view, part, qo_, dest); !st.ok())
        return Fail(WholeRequestError(view, *req, st));
      times_.Lap(PhaseTimes::kPool);
      if (const Status st = sink.Put(dest, view.dim); !st.ok()) return Fail(st);
      times_.Lap(PhaseTimes::kWrite);
    }
    if (const Status st = sink.Commit(); !st.ok()) return Fail(st);
    times_.Lap(PhaseTimes::kCommit);
    return kExitOk;
  }

  // 1-D indices with --offsets, or 2-D indices [B, N] (B bags of N), in
  // batches of bags.
  int PoolBags(const TableView& view, const IntArray& indices,
               const std::optional<FloatArray>& weights) {
    std::optional<IntArray> offsets;
    BagRequest req;
    if (const int rc = ReadBags(indices, weights, &offsets, &req); rc != kExitOk) return rc;
    times_.Lap(PhaseTimes::kInputs);
    Result<int64_t> counted = Counted(view, req);
    if (!counted.ok()) return Fail(counted.status());
    times_.Lap(PhaseTimes::kValidate);
    const int64_t bags = *counted;
    Sink sink;
    if (const Status st = sink.Open(Has("out") ? Str("out") : "", {bags, view.dim}); !st.ok())
      return Fail(st);
    const int64_t step = BatchItems(bags, view.dim);
    auto buffer = PageBuffer::Allocate(static_cast<size_t>(step * view.dim) * sizeof(float));
    if (!buffer.ok()) return Fail(buffer.status());
    times_.Lap(PhaseTimes::kWrite);  // opening the output
    const bool two_d = req.indices_shape.size() == 2;
    const int64_t row = two_d ? req.indices_shape[1] : 0;
    // The request is valid (CountBags): offsets start at 0, do not decrease
    // and stay within the indices, so each batch is a request of its own.
    // Each batch's ids are copied out of the input first and validated again
    // by the engine: a mapped input rewritten by another process meanwhile
    // cannot feed the kernels an id nobody checked.
    std::vector<int64_t> local;
    std::vector<uint8_t> ids_copy;
    for (int64_t b0 = 0; b0 < bags; b0 += step) {
      const int64_t b1 = std::min(bags, b0 + step);
      BagRequest part;
      QueryOptions qo = qo_;
      qo.include_last_offset = false;
      int64_t first = 0, last = 0;
      if (two_d) {  // rows b0..b1 (with include_last_offset the last row is not a bag)
        first = b0 * row;
        last = b1 * row;
        part.indices_shape = {b1 - b0, row};
      } else {
        const IndexArray& off = *req.offsets;
        first = off[b0];
        last = b1 < bags ? off[b1] : (qo_.include_last_offset ? off[bags] : req.indices.size);
        local.resize(static_cast<size_t>(b1 - b0));
        for (int64_t b = b0; b < b1; ++b) local[static_cast<size_t>(b - b0)] = off[b] - first;
        part.offsets = IndexArray(std::span<const int64_t>(local));
      }
      if (first < 0 || last < first || last > req.indices.size) {
        return Fail(Status::IOError("--offsets changed while the query read them"));
      }
      auto part_ids = CopySlice(req.indices, first, last - first, &ids_copy);
      if (!part_ids.ok()) return Fail(part_ids.status());
      part.indices = *part_ids;
      if (req.weights) part.weights = req.weights->subspan(first, last - first);
      times_.Lap(PhaseTimes::kCopy);
      const std::span<float> dest = Floats(&*buffer, (b1 - b0) * view.dim);
      if (const Status st = engine_->EmbeddingBag(view, part, qo, dest); !st.ok())
        return Fail(WholeRequestError(view, req, st));
      times_.Lap(PhaseTimes::kPool);
      if (const Status st = sink.Put(dest, view.dim); !st.ok()) return Fail(st);
      times_.Lap(PhaseTimes::kWrite);
    }
    if (const Status st = sink.Commit(); !st.ok()) return Fail(st);
    times_.Lap(PhaseTimes::kCommit);
    return kExitOk;
  }

  // The number of bags of `req`. Printed output validates the whole request
  // first (nothing is printed for a bad one); output to a file validates the
  // layout only, and the engine each batch's ids as it pools them (one pass
  // over the ids, not two).
  template <typename Request>
  Result<int64_t> Counted(const TableView& view, const Request& req) const {
    if (!Has("out")) return CountBags(view, req, qo_);
    Result<engine::BagPlan> plan = [&] {
      if constexpr (std::is_same_v<Request, BagRequest>) {
        return engine::PlanBagLayout(view, req, qo_);
      } else {
        return engine::PlanBatchedBagLayout(view, req, qo_);
      }
    }();
    if (!plan.ok()) return plan.status();
    return plan->num_bags();
  }
  // A batch failed with `batch_error`: the whole request's error (the
  // position of a bad id in the request, not in its batch), or the batch's
  // where the whole request now passes (an input changed under the query).
  template <typename Request>
  Status WholeRequestError(const TableView& view, const Request& req,
                           const Status& batch_error) const {
    Result<int64_t> whole = CountBags(view, req, qo_);
    return whole.ok() ? batch_error : whole.status();
  }

  // Items [first, first + count) of `a`, copied into *buf (reused).
  static Result<IndexArray> CopySlice(const IndexArray& a, int64_t first, int64_t count,
                                      std::vector<uint8_t>* buf) {
    if (first < 0 || count < 0 || first > a.size - count) {
      return Status::Internal("a batch outside its input");
    }
    const size_t elem = a.type == IndexType::kInt64 ? sizeof(int64_t) : sizeof(int32_t);
    const size_t bytes = static_cast<size_t>(count) * elem;
    if (buf->size() < bytes) buf->resize(bytes);
    if (bytes > 0) {
      std::memcpy(buf->data(),
                  static_cast<const uint8_t*>(a.data) + static_cast<size_t>(first) * elem, bytes);
    }
    IndexArray s = a;
    s.data = buf->data();
    s.size = count;
    return s;
  }
  static std::span<float> Floats(PageBuffer* buffer, int64_t count) {
    return {reinterpret_cast<float*>(buffer->data()), static_cast<size_t>(count)};  // NOLINT
  }

  QueryOptions qo_;
  PhaseTimes times_;                // --stats
  std::unique_ptr<Engine> engine_;  // --device: the CPU or the CUDA engine, one interface
};

}  // namespace

std::unique_ptr<Command> NewQueryCommand() { return std::make_unique<QueryCommand>(); }

}  // namespace embstore::cli
