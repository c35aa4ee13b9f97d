#include "engine/pool.h"

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/partitioner.h>
#include <tbb/task_arena.h>

#if defined(EMBSTORE_ENGINE_HAVE_X86_KERNELS)
#include <cpuid.h>
#endif

#include <algorithm>
#include <cmath>
#include <exception>
#include <new>
#include <string>

#include "engine/kernels.h"
#include "engine/page_prefetch.h"
#include "engine/threads.h"

namespace embstore::engine {
namespace {

// Requests smaller than this (entries x dim, roughly float multiply-adds) run
// on the calling thread: forking costs more than it saves.
constexpr int64_t kSerialWork = int64_t{1} << 15;
// Target work per parallel chunk, and chunks per thread (for stealing).
constexpr int64_t kMinChunkWork = int64_t{1} << 14;
constexpr int64_t kChunksPerThread = 8;

#if defined(EMBSTORE_ENGINE_HAVE_X86_KERNELS)
// F16C is CPUID leaf 1, ECX bit 29: asked of the CPU directly, since not
// every compiler's __builtin_cpu_supports knows "f16c" (clang 14 does not).
bool HasF16c() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & (1u << 29)) != 0;
}
bool DetectAvx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && HasF16c();
}
bool DetectAvx512() {
  __builtin_cpu_init();
  return DetectAvx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
#endif

PoolBagsFn KernelFor(Isa isa, DType dtype, PoolingMode mode, bool weighted, bool renorm) {
  switch (isa) {
#if defined(EMBSTORE_ENGINE_HAVE_X86_KERNELS)
    case Isa::kAvx512:
      return Avx512PoolBagsKernel(dtype, mode, weighted, renorm);
    case Isa::kAvx2:
      return Avx2PoolBagsKernel(dtype, mode, weighted, renorm);
#endif
    default:
      return GenericPoolBagsKernel(dtype, mode, weighted, renorm);
  }
}

NormKind NormKindOf(double p) {
  if (p == 2) return NormKind::kL2;
  if (p == 1) return NormKind::kL1;
  if (std::isinf(p)) return p > 0 ? NormKind::kInf : NormKind::kNegInf;
  if (p == 0) return NormKind::kZero;
  return NormKind::kGeneral;
}

// Runs fn(first_bag, last_bag) over all bags: inline for small requests or
// max_threads == 1, otherwise as TBB tasks over chunks of consecutive bags
// holding about equal numbers of index entries.
template <typename Fn>
void ForEachBagRange(const BagPlan& plan, int64_t dim, int requested_threads, const Fn& fn) {
  const int max_threads = CapThreads(requested_threads);
  const int64_t bags = plan.num_bags();
  if (bags == 0) return;
  const int64_t entries = plan.num_entries();
  const int64_t per_entry = std::max<int64_t>(dim, 1);
  const int64_t work = entries * per_entry + bags * 8;
  if (max_threads == 1 || bags == 1 || work < kSerialWork) {
    fn(0, bags);
    return;
  }
  const int64_t threads =
      max_threads > 0 ? max_threads : std::max(1, tbb::this_task_arena::max_concurrency());
  const int64_t chunks =
      std::clamp<int64_t>(work / kMinChunkWork, 1, std::min(bags, threads * kChunksPerThread));
  if (chunks <= 1) {
    fn(0, bags);
    return;
  }
  // prefix[b] = cost of bags [0, b); a bag costs its entries plus one, so
  // runs of empty bags are spread too.
  std::vector<int64_t> prefix(bags + 1);
  prefix[0] = 0;
  for (int64_t b = 0; b < bags; ++b) {
    prefix[b + 1] = prefix[b] + (plan.bag_end[b] - plan.bag_begin[b]) + 1;
  }
  const int64_t total = prefix[bags];
  std::vector<int64_t> bounds;
  bounds.reserve(chunks + 1);
  bounds.push_back(0);
  for (int64_t c = 1; c < chunks; ++c) {
    const int64_t target = total / chunks * c + (total % chunks) * c / chunks;
    const int64_t b = std::lower_bound(prefix.begin(), prefix.end(), target) - prefix.begin();
    if (b > bounds.back() && b < bags) bounds.push_back(b);
  }
  bounds.push_back(bags);
  const int64_t num_ranges = static_cast<int64_t>(bounds.size()) - 1;
  auto body = [&] {
    tbb::parallel_for(
        tbb::blocked_range<int64_t>(0, num_ranges, 1),
        [&](const tbb::blocked_range<int64_t>& r) {
          for (int64_t c = r.begin(); c != r.end(); ++c) fn(bounds[c], bounds[c + 1]);
        },
        tbb::simple_partitioner());
  };
  if (max_threads > 1) {
    tbb::task_arena arena(max_threads);
    arena.execute(body);
  } else {
    body();
  }
}

}  // namespace

const char* IsaName(Isa isa) {
  switch (isa) {
    case Isa::kGeneric:
      return "generic";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
  }
  return "unknown";
}

bool IsaSupported(Isa isa) {
  switch (isa) {
    case Isa::kGeneric:
      return true;
#if defined(EMBSTORE_ENGINE_HAVE_X86_KERNELS)
    case Isa::kAvx2: {
      static const bool supported = DetectAvx2();
      return supported;
    }
    case Isa::kAvx512: {
      static const bool supported = DetectAvx512();
      return supported;
    }
#endif
    default:
      return false;
  }
}

std::vector<Isa> SupportedIsas() {
  std::vector<Isa> isas;
  for (Isa isa : {Isa::kGeneric, Isa::kAvx2, Isa::kAvx512}) {
    if (IsaSupported(isa)) isas.push_back(isa);
  }
  return isas;
}

Isa BestIsa() {
  static const Isa best = SupportedIsas().back();
  return best;
}

Status PoolPlan(const TableView& table, const BagPlan& plan, const QueryOptions& options,
                std::span<float> out) {
  return PoolPlanWithIsa(BestIsa(), table, plan, options, out);
}

Status PoolPlanWithIsa(Isa isa, const TableView& table, const BagPlan& plan,
                       const QueryOptions& options, std::span<float> out) {
  EMBSTORE_RETURN_IF_ERROR(ValidatePoolInputs(table, plan, options, out.size()));
  if (!IsaSupported(isa)) {
    return Status::NotSupported(std::string("this CPU cannot run the ") + IsaName(isa) +
                                " kernels");
  }
  if (plan.num_bags() == 0 || table.dim == 0) return Status::OK();

  PoolParams params;
  params.data = table.data;
  params.rows = table.rows;
  params.dim = table.dim;
  params.row_stride = table.row_stride;
  params.payload_bytes = RowPayloadBytes(table.dtype, table.dim);
  params.indices = plan.indices.data;
  params.indices_are_64bit = plan.indices.type == IndexType::kInt64;
  params.num_positions = plan.indices.size;
  params.weights = plan.weights;
  params.bag_begin = plan.bag_begin.data();
  params.bag_end = plan.bag_end.data();
  params.padding_row = plan.padding_row;
  const bool renorm = options.max_norm.has_value();
  if (renorm) {
    params.max_norm = *options.max_norm;
    params.norm_type = TorchNormType(options.norm_type);
    params.norm_kind = NormKindOf(params.norm_type);
  }
  const PoolBagsFn fn = KernelFor(isa, table.dtype, options.mode, plan.weights != nullptr, renorm);
  if (fn == nullptr) return Status::Internal("no pooling kernel for this request");

  float* out_data = out.data();
  const int64_t* begin = plan.bag_begin.data();
  const int64_t* end = plan.bag_end.data();
  const int64_t padding = plan.padding_row;
  const IndexArray ids = plan.indices;
  // Cold tables: the pages of the next window of bags are asked for while
  // this one is pooled (page_prefetch.h).
  auto weight = [&](int64_t b) { return end[b] - begin[b]; };
  auto advise = [&](PageAdvisor& advisor, int64_t b) {
    for (int64_t i = begin[b]; i < end[b]; ++i) {
      const int64_t row = ids[i];
      if (row != padding) advisor.Row(row);
    }
  };
  auto pool = [&](int64_t first, int64_t last) { fn(params, first, last, out_data); };
  try {
    ForEachBagRange(plan, table.dim, options.max_threads, [&](int64_t first, int64_t last) {
      RunWindowed(table, options, first, last, end[last - 1] - begin[first], weight, advise, pool);
    });
  } catch (const std::bad_alloc&) {
    return Status::Internal("out of memory while pooling");
  } catch (const std::exception& e) {
    return Status::Internal(std::string("pooling failed: ") + e.what());
  } catch (...) {
    return Status::Internal("pooling failed");
  }
  return Status::OK();
}

}  // namespace embstore::engine
