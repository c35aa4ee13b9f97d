// embstore query: pool bags of embeddings (embedding_bag), on the CPU or on a
// GPU through a row cache.
#include "embstore/query.h"

#include <cstdio>
#include <optional>
#include <span>

#include "checkpoint/npy.h"
#include "embstore/engine.h"
#include "tools/bag_args.h"
#include "tools/commands/commands.h"

namespace embstore::cli {
namespace {

// The pooled result: a PageBuffer the engine pooled into directly (no
// zeroing pass, huge pages: see PageBuffer).
struct QueryOutput {
  std::vector<int64_t> shape;
  PageBuffer buffer;
  std::span<const float> values() const {
    return {reinterpret_cast<const float*>(buffer.data()), buffer.size() / sizeof(float)};
  }
  // Allocates shape's elements; the span to pool into.
  Result<std::span<float>> Allocate(std::vector<int64_t> dims) {
    size_t count = 1;
    for (const int64_t d : dims) count *= static_cast<size_t>(d);
    EMBSTORE_ASSIGN_OR_RETURN(buffer, PageBuffer::Allocate(count * sizeof(float)));
    shape = std::move(dims);
    return std::span<float>(reinterpret_cast<float*>(buffer.data()), count);  // NOLINT
  }
};

void PrintRows(const QueryOutput& out) {
  const std::span<const float> values = out.values();
  const int64_t dim = out.shape.back();
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
    if (std::fputs(line.c_str(), stdout) == EOF) return;  // main() reports the error
  }
}

class QueryCommand : public Command {
 public:
  QueryCommand()
      : Command("query", "pool bags of embeddings (embedding_bag)",
                "Pool bags of embeddings (torch.nn.functional.embedding_bag semantics).\n"
                "SPEC is an inline list (1,2,3) or @file.npy (1-D or 2-D; int32/int64 ids, "
                "float32 weights).") {
    AddValue("db", "Store directory", Need::kRequired);
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
    AddFlag("stats", "Print the page prefetcher's (and the GPU cache's) statistics to stderr");
    AddValue("out", "Write the [B, dim] float32 result to this .npy instead of printing");
  }

 private:
  int Run() override {
    const std::string db = Str("db");
    if (const int rc = ReadOptions(); rc != kExitOk) return rc;
    auto indices = ParseIntSpec(Str("indices"), "--indices");
    if (!indices.ok()) return Fail(indices.status());
    auto weights = FloatSpec("weights");
    if (!weights.ok()) return Fail(weights.status());

    // Open the store only after the inputs parse: a typo costs nothing.
    if (const Status st = CheckOutOption(db); !st.ok()) return Fail(st);
    auto store = OpenStore(db, false);
    if (!store.ok()) return Fail(store.status());
    auto snap = (*store)->GetSnapshot(Str("table"));
    if (!snap.ok()) return Fail(snap.status());
    const TableView view = snap->view();

    // Too many bags for memory are refused by the engine (its plan checks
    // the bag count before anything is allocated).
    QueryOutput out;
    const int rc = Has("bag-ends") ? PoolBatched(view, *indices, *weights, &out)
                                   : PoolBags(view, *indices, *weights, &out);
    if (rc != kExitOk) return rc;
    if (IsSet("stats")) {
      const PrefetchStats ps = GetPrefetchStats();
      std::fprintf(stderr,
                   "page prefetch: cold_chunks=%lld rows_checked=%lld rows_missing=%lld "
                   "hit_rate=%.3f pages_read=%lld\n",
                   static_cast<long long>(ps.cold_chunks), static_cast<long long>(ps.rows_checked),
                   static_cast<long long>(ps.rows_missing), ps.hit_rate(),
                   static_cast<long long>(ps.pages_read));
      if (engine_->device() == Device::kCuda) {
        std::fprintf(stderr, "gpu cache: %s\n", CacheStatsToString(engine_->stats()).c_str());
      }
    }
    if (Has("out")) {
      const std::span<const float> values = out.values();
      const Status st = storage::WriteNpy(
          Str("out"), "<f4", out.shape,
          {reinterpret_cast<const uint8_t*>(values.data()), values.size() * sizeof(float)});
      if (!st.ok()) return Fail(st);
    } else {
      PrintRows(out);
    }
    return kExitOk;
  }

  // Reads the pooling and device options into qo_ and creates engine_ for
  // --device; kExitOk or the exit code of the error printed.
  int ReadOptions() {
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

  // --bag-ends: batched bags [B, K] over indices [B, N].
  int PoolBatched(const TableView& view, const IntArray& indices,
                  const std::optional<FloatArray>& weights, QueryOutput* out) {
    if (Has("offsets")) return Usage("--bag-ends and --offsets cannot be combined");
    if (qo_.include_last_offset) return Usage("--include-last-offset does not apply to --bag-ends");
    auto ends = ParseIntSpec(Str("bag-ends"), "--bag-ends");
    if (!ends.ok()) return Fail(ends.status());
    auto req = BatchedBags(indices, *ends);
    if (!req.ok()) return Fail(req.status());
    if (weights) {
      const Status ws = CheckWeightsShape(*weights, indices.shape);
      if (!ws.ok()) return Fail(ws);
      req->weights = weights->values();
    }
    // Validate first (CountBags), then pool straight into the output [B, K, dim].
    Result<int64_t> bags = CountBags(view, *req, qo_);
    if (!bags.ok()) return Fail(bags.status());
    auto dest = out->Allocate({req->batch, req->bags_per_sample, view.dim});
    if (!dest.ok()) return Fail(dest.status());
    const Status st = engine_->BatchedEmbeddingBag(view, *req, qo_, *dest);
    if (!st.ok()) return Fail(st);
    return kExitOk;
  }

  // 1-D indices with --offsets, or 2-D indices [B, N] (B bags of N).
  int PoolBags(const TableView& view, const IntArray& indices,
               const std::optional<FloatArray>& weights, QueryOutput* out) {
    BagRequest req;
    req.indices = indices.view();
    req.indices_shape = indices.shape;
    auto offsets = IntSpec("offsets");
    if (!offsets.ok()) return Fail(offsets.status());
    if (*offsets) {
      if ((*offsets)->shape.size() != 1)
        return Fail(Status::InvalidArgument("--offsets must be 1-D"));
      req.offsets = (*offsets)->view();
    }
    if (weights) {
      const Status ws = CheckWeightsShape(*weights, indices.shape);
      if (!ws.ok()) return Fail(ws);
      req.weights = weights->values();
    }
    // Validate first (CountBags), then pool straight into the output buffer.
    Result<int64_t> bags = CountBags(view, req, qo_);
    if (!bags.ok()) return Fail(bags.status());
    auto dest = out->Allocate({*bags, view.dim});
    if (!dest.ok()) return Fail(dest.status());
    const Status st = engine_->EmbeddingBag(view, req, qo_, *dest);
    if (!st.ok()) return Fail(st);
    return kExitOk;
  }

  QueryOptions qo_;
  std::unique_ptr<Engine> engine_;  // --device: the CPU or the CUDA engine, one interface
};

}  // namespace

std::unique_ptr<Command> NewQueryCommand() { return std::make_unique<QueryCommand>(); }

}  // namespace embstore::cli
