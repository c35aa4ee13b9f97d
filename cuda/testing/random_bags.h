// Test-only helpers shared by the cuda/ test suites (tests/cuda_*_test.cc):
// random embedding-bag requests of every layout and option, and ways to
// evaluate them. Header-only; never linked into the library.
#ifndef EMBSTORE_CUDA_TESTING_RANDOM_BAGS_H_
#define EMBSTORE_CUDA_TESTING_RANDOM_BAGS_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <vector>

#include "embstore/query.h"
#include "engine/kernels_ref.h"
#include "engine/plan.h"

namespace embstore::cuda::cudatest {

enum class Layout { kOffsets, kLastOffset, k2D, kBatched };
inline const char* LayoutName(Layout l) {
  switch (l) {
    case Layout::kOffsets:
      return "offsets";
    case Layout::kLastOffset:
      return "include_last_offset";
    case Layout::k2D:
      return "2d";
    case Layout::kBatched:
      return "batched";
  }
  return "?";
}

// What the parity suites sweep: every stored dtype (kAllDTypes), pooling mode and request
// layout, and no max_norm or max_norm with these norm types.
inline constexpr PoolingMode kModes[] = {PoolingMode::kSum, PoolingMode::kMean, PoolingMode::kMax};
inline constexpr Layout kLayouts[] = {Layout::kOffsets, Layout::kLastOffset, Layout::k2D,
                                      Layout::kBatched};
inline constexpr std::optional<double> kNormTypes[] = {std::nullopt,
                                                       2.0,
                                                       1.0,
                                                       std::numeric_limits<double>::infinity(),
                                                       -std::numeric_limits<double>::infinity(),
                                                       3.0,
                                                       0.5,
                                                       0.0};

// ids and offsets as one BagRequest (the vectors must outlive it).
inline BagRequest Bags(std::span<const int64_t> ids, std::span<const int64_t> offsets) {
  BagRequest r;
  r.indices = ids;
  r.offsets = offsets;
  return r;
}

// Owns the arrays a request points into.
struct RandomRequest {
  std::vector<int64_t> ids64, offs64, ends64;
  std::vector<int32_t> ids32, offs32, ends32;
  std::vector<float> weights;
  BagRequest bag;
  BatchedBagRequest batched;
  bool is_batched = false;
  QueryOptions options;

  IndexArray Ids(bool use32) const {
    return use32 ? IndexArray(std::span<const int32_t>(ids32))
                 : IndexArray(std::span<const int64_t>(ids64));
  }
};

inline void Fill32(const std::vector<int64_t>& from, std::vector<int32_t>* to) {
  to->assign(from.begin(), from.end());
}

// Bags of up to `max_bag` entries over `rows` rows.
inline std::unique_ptr<RandomRequest> MakeRequest(std::mt19937_64& rng, int64_t rows, Layout layout,
                                                  PoolingMode mode, bool weighted, bool padding,
                                                  std::optional<double> norm_type, int max_bag) {
  auto r = std::make_unique<RandomRequest>();
  auto uni = [&](int64_t lo, int64_t hi) {  // [lo, hi]
    return lo + static_cast<int64_t>(rng() % static_cast<uint64_t>(hi - lo + 1));
  };
  // Ids skewed to a few hot rows so that bags repeat rows (dedup) and cache
  // hits happen across calls.
  auto id = [&]() { return std::min(uni(0, rows - 1), uni(0, rows - 1)); };
  const bool use32 = rng() % 2 == 0;
  const bool offs32 = rng() % 2 == 0;
  r->options.mode = mode;
  if (padding) {
    const int64_t p = uni(0, std::min<int64_t>(rows - 1, 5));
    r->options.padding_idx = rng() % 2 ? p : p - rows;  // negative form too
  }
  if (norm_type.has_value()) {
    r->options.norm_type = *norm_type;
    // Around the middle of the rows' norms, so some rows exceed it.
    const double p = *norm_type;
    r->options.max_norm = p == 0 ? 3.0 : !std::isinf(p) ? 1.5 : p > 0 ? 0.6 : 0.05;
  }
  if (layout == Layout::kBatched) {
    r->is_batched = true;
    const int64_t batch = uni(0, 4), items = uni(1, max_bag), k = uni(1, 3);
    for (int64_t i = 0; i < batch * items; ++i) r->ids64.push_back(id());
    for (int64_t b = 0; b < batch; ++b) {
      int64_t e = -1;
      for (int64_t m = 0; m < k; ++m) {
        e = std::min(items - 1, e + uni(0, 3));
        r->ends64.push_back(e);
      }
    }
    Fill32(r->ids64, &r->ids32);
    Fill32(r->ends64, &r->ends32);
    r->batched.indices = r->Ids(use32);
    r->batched.ends = offs32 ? IndexArray(std::span<const int32_t>(r->ends32))
                             : IndexArray(std::span<const int64_t>(r->ends64));
    r->batched.batch = batch;
    r->batched.items = items;
    r->batched.bags_per_sample = k;
    if (weighted || rng() % 2) {
      for (int64_t i = 0; i < batch * items; ++i) {
        r->weights.push_back(static_cast<float>(uni(-200, 200)) / 100.0f);
      }
      r->batched.weights = std::span<const float>(r->weights);
    }
    return r;
  }
  const int64_t bags = uni(0, 7);
  if (layout == Layout::k2D) {
    const int64_t n = uni(1, max_bag);
    for (int64_t i = 0; i < bags * n; ++i) r->ids64.push_back(id());
    r->bag.indices_shape = {bags, n};
  } else {
    r->offs64.push_back(0);
    for (int64_t b = 0; b < bags; ++b) {
      const int64_t size = rng() % 5 == 0 ? 0 : uni(1, max_bag);  // some empty bags
      for (int64_t i = 0; i < size; ++i) r->ids64.push_back(id());
      if (b + 1 < bags || layout == Layout::kLastOffset) {
        r->offs64.push_back(static_cast<int64_t>(r->ids64.size()));
      }
    }
    if (bags == 0 && layout == Layout::kOffsets) r->offs64.clear();
    if (layout == Layout::kLastOffset) {
      r->options.include_last_offset = true;
      for (int64_t i = uni(0, 2); i > 0; --i) r->ids64.push_back(id());  // ignored trailing ids
    }
    r->bag.indices_shape = {static_cast<int64_t>(r->ids64.size())};
    Fill32(r->offs64, &r->offs32);
    r->bag.offsets = offs32 ? IndexArray(std::span<const int32_t>(r->offs32))
                            : IndexArray(std::span<const int64_t>(r->offs64));
  }
  Fill32(r->ids64, &r->ids32);
  r->bag.indices = r->Ids(use32);
  if (weighted) {
    for (size_t i = 0; i < r->ids64.size(); ++i) {
      r->weights.push_back(static_cast<float>(uni(-200, 200)) / 100.0f);
    }
    r->bag.weights = std::span<const float>(r->weights);
  }
  return r;
}

inline Result<engine::BagPlan> Plan(const TableView& t, const RandomRequest& r) {
  return r.is_batched ? engine::PlanBatchedBags(t, r.batched, r.options)
                      : engine::PlanBags(t, r.bag, r.options);
}

inline Result<PooledOutput> Reference(const TableView& t, const RandomRequest& r) {
  return r.is_batched ? engine::BatchedEmbeddingBagRef(t, r.batched, r.options)
                      : engine::EmbeddingBagRef(t, r.bag, r.options);
}

inline Result<PooledOutput> CpuEngine(const TableView& t, const RandomRequest& r) {
  return r.is_batched ? BatchedEmbeddingBag(t, r.batched, r.options)
                      : EmbeddingBag(t, r.bag, r.options);
}

inline bool SameFloat(float a, float b) {
  uint32_t x, y;
  std::memcpy(&x, &a, 4);
  std::memcpy(&y, &b, 4);
  return x == y || (std::isnan(a) && std::isnan(b));
}

// A few ulps of slack (max_norm's norm summed in another order).
inline bool NearFloat(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return std::fabs(double{a} - b) <= 4e-7 * std::max(1.0, std::fabs(double{b}));
}

}  // namespace embstore::cuda::cudatest

#endif  // EMBSTORE_CUDA_TESTING_RANDOM_BAGS_H_
