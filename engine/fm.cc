// FM / FFM scoring on top of the engine's batched-bag pooling.
#include "embstore/fm.h"

#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <string>
#include <vector>

#include "engine/guarded.h"
#include "engine/plan.h"
#include "engine/pool.h"
#include "engine/threads.h"

namespace embstore {
namespace {

Status Invalid(const std::string& msg) { return Status::InvalidArgument(msg); }

Status FmScoreUnguarded(FmModel model, const TableView& vectors, const TableView& biases,
                        const FmRequest& request, const QueryOptions& options,
                        std::span<float> out) {
  const BatchedBagRequest& bags = request.bags;
  const int64_t B = bags.batch, K = bags.bags_per_sample, D = vectors.dim;
  if (options.mode != PoolingMode::kSum) {
    return Invalid("FM scoring pools bags with a weighted sum; mode must be sum");
  }
  if (biases.dim != 1) {
    return Invalid("the biases table '" + std::string(biases.name) + "' must have dim 1 (has " +
                   std::to_string(biases.dim) + ")");
  }
  if (biases.rows != vectors.rows) {
    return Invalid("the vectors table '" + std::string(vectors.name) + "' has " +
                   std::to_string(vectors.rows) + " rows but the biases table '" +
                   std::string(biases.name) + "' has " + std::to_string(biases.rows));
  }
  int64_t BK = 0;
  if (__builtin_mul_overflow(B, K, &BK)) {
    return Invalid("FM: batch x bags_per_sample (" + std::to_string(B) + " x " + std::to_string(K) +
                   ") overflows");
  }
  if (static_cast<int64_t>(out.size()) != B) {
    return Invalid("output holds " + std::to_string(out.size()) + " scores; the request has " +
                   std::to_string(B) + " samples");
  }
  int64_t F = 1, k = D;
  if (model == FmModel::kFfm) {
    F = request.num_fields > 0 ? request.num_fields : K;
    if (F <= 0) return Invalid("FFM needs at least one field");
    if (D % F != 0) {
      return Invalid("FFM: the vectors dim " + std::to_string(D) + " of table '" +
                     std::string(vectors.name) + "' is not divisible by the number of fields " +
                     std::to_string(F));
    }
    k = D / F;
    if (request.fields) {
      if (request.fields->size != BK) {
        return Invalid("fields has " + std::to_string(request.fields->size) +
                       " entries; expected B x K = " + std::to_string(B) + " x " +
                       std::to_string(K) + " (one field per bag)");
      }
      for (int64_t i = 0; i < request.fields->size; ++i) {
        const int64_t f = (*request.fields)[i];
        if (f < 0 || f >= F) {
          return Invalid("fields[" + std::to_string(i / K) + ", " + std::to_string(i % K) +
                         "] = " + std::to_string(f) + " is out of range for " + std::to_string(F) +
                         " fields");
        }
      }
    } else if (K > F) {
      return Invalid("without fields, bag m is in field m, so K (" + std::to_string(K) +
                     ") must not exceed the number of fields (" + std::to_string(F) + ")");
    }
  } else if (request.fields) {
    return Invalid("fields apply only to the ffm model");
  }

  // One validated plan (indices, weights, ends) pools both tables with the
  // engine's batched-bag pooling.
  EMBSTORE_ASSIGN_OR_RETURN(engine::BagPlan plan, engine::PlanBatchedBags(vectors, bags, options));
  int64_t pooled_values = 0;
  if (__builtin_mul_overflow(BK, D, &pooled_values)) {
    return Invalid("FM: " + std::to_string(BK) + " bags of dim " + std::to_string(D) +
                   " are more values than any buffer can hold");
  }
  // Pooled vectors and biases, beside the plan's bookkeeping: all of it must
  // fit before any of it is allocated.
  int64_t per_bag = 0;
  if (__builtin_mul_overflow(std::max<int64_t>(D, 1), int64_t{sizeof(float)}, &per_bag) ||
      __builtin_add_overflow(per_bag, int64_t{sizeof(float) + 2 * sizeof(int64_t)}, &per_bag)) {
    per_bag = -1;  // not addressable
  }
  EMBSTORE_RETURN_IF_ERROR(
      engine::CheckFitsInMemory(BK, per_bag, "FM bags of dim " + std::to_string(D)));
  std::vector<float> v(static_cast<size_t>(pooled_values));
  std::vector<float> beta(static_cast<size_t>(BK));
  EMBSTORE_RETURN_IF_ERROR(engine::PoolPlan(vectors, plan, options, v));
  EMBSTORE_RETURN_IF_ERROR(engine::PoolPlan(biases, plan, options, beta));

  auto field = [&](int64_t b, int64_t m) {
    return request.fields ? (*request.fields)[b * K + m] : m;
  };
  auto score = [&](int64_t b) {
    const float* vb = v.data() + b * K * D;
    double y = request.bias;
    for (int64_t m = 0; m < K; ++m) y += beta[static_cast<size_t>(b * K + m)];
    if (model == FmModel::kFm) {
      double inter = 0;
      for (int64_t d = 0; d < D; ++d) {
        double s = 0, sq = 0;
        for (int64_t m = 0; m < K; ++m) {
          const double x = vb[m * D + d];
          s += x;
          sq += x * x;
        }
        inter += s * s - sq;
      }
      y += 0.5 * inter;
    } else {
      for (int64_t m = 0; m < K; ++m) {
        const int64_t fm = field(b, m);
        for (int64_t m2 = m + 1; m2 < K; ++m2) {
          const int64_t fm2 = field(b, m2);
          const float* a = vb + m * D + fm2 * k;  // V_m[f_m']
          const float* c = vb + m2 * D + fm * k;  // V_m'[f_m]
          double dot = 0;
          for (int64_t j = 0; j < k; ++j) dot += static_cast<double>(a[j]) * c[j];
          y += dot;
        }
      }
    }
    out[static_cast<size_t>(b)] = static_cast<float>(y);
  };
  const int threads = engine::CapThreads(options.max_threads);
  if (threads == 1 || B < 64) {
    for (int64_t b = 0; b < B; ++b) score(b);
    return Status::OK();
  }
  auto body = [&] {
    tbb::parallel_for(tbb::blocked_range<int64_t>(0, B, 16),
                      [&](const tbb::blocked_range<int64_t>& r) {
                        for (int64_t b = r.begin(); b != r.end(); ++b) score(b);
                      });
  };
  if (threads > 1) {
    tbb::task_arena arena(threads);
    arena.execute(body);
  } else {
    body();
  }
  return Status::OK();
}

}  // namespace

Status FmScore(FmModel model, const TableView& vectors, const TableView& biases,
               const FmRequest& request, const QueryOptions& options, std::span<float> out) {
  return engine::Guarded<Status>(
      [&] { return FmScoreUnguarded(model, vectors, biases, request, options, out); });
}

Result<std::vector<float>> FmScore(FmModel model, const TableView& vectors, const TableView& biases,
                                   const FmRequest& request, const QueryOptions& options) {
  return engine::Guarded<Result<std::vector<float>>>([&]() -> Result<std::vector<float>> {
    const int64_t batch = request.bags.batch;
    if (batch < 0) return Invalid("batch must be >= 0 (got " + std::to_string(batch) + ")");
    EMBSTORE_RETURN_IF_ERROR(engine::CheckFitsInMemory(batch, int64_t{sizeof(float)}, "samples"));
    std::vector<float> scores(static_cast<size_t>(batch));
    EMBSTORE_RETURN_IF_ERROR(FmScoreUnguarded(model, vectors, biases, request, options, scores));
    return scores;
  });
}

}  // namespace embstore
