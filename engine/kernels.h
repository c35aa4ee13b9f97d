// Internal: the interface between the dispatcher (pool.cc) and the per-ISA
// pooling kernels (kernels_generic.cc, kernels_avx2.cc, kernels_avx512.cc).
//
// Everything crossing this boundary is plain data (no std:: containers, no
// inline helpers): each ISA file is compiled with its own -m flags, and an
// inline function instantiated there could be the copy the linker keeps for
// the whole program.
#ifndef EMBSTORE_ENGINE_KERNELS_H_
#define EMBSTORE_ENGINE_KERNELS_H_

#include <cstddef>
#include <cstdint>

#include "embstore/query.h"
#include "embstore/types.h"

namespace embstore::engine {

// How the max_norm row norm is computed.
enum class NormKind : int {
  kL1 = 0,       // sum |x|
  kL2 = 1,       // sqrt(sum x^2)
  kInf = 2,      // max |x| (NaN if any element is NaN)
  kZero = 3,     // number of non-zero elements (torch's p = 0)
  kGeneral = 4,  // (sum |x|^p)^(1/p)
  kNegInf = 5,   // min |x| (torch's p = -inf; NaN if any element is NaN)
};

// Everything a kernel needs, flattened out of TableView/BagPlan/QueryOptions.
struct PoolParams {
  // Table.
  const uint8_t* data = nullptr;
  int64_t rows = 0;
  int64_t dim = 0;
  size_t row_stride = 0;
  size_t payload_bytes = 0;  // bytes of one row actually read (for prefetch)
  // Request (validated: every id inside a bag is in [0, rows)).
  const void* indices = nullptr;
  bool indices_are_64bit = true;
  int64_t num_positions = 0;       // length of the flat index array
  const float* weights = nullptr;  // null: unweighted
  const int64_t* bag_begin = nullptr;
  const int64_t* bag_end = nullptr;
  int64_t padding_row = -1;
  // Renormalization (used only by the renorm kernels).
  double max_norm = 0;
  double norm_type = 2;
  NormKind norm_kind = NormKind::kL2;
};

// Pools bags [first_bag, last_bag) into out + bag * dim (every element of
// those output rows is written). Never fails: inputs are validated upstream.
using PoolBagsFn = void (*)(const PoolParams& params, int64_t first_bag, int64_t last_bag,
                            float* out);

// Kernel tables, one per ISA file. Return null only for impossible keys.
PoolBagsFn GenericPoolBagsKernel(DType dtype, PoolingMode mode, bool weighted, bool renorm);
#if defined(EMBSTORE_ENGINE_HAVE_X86_KERNELS)
PoolBagsFn Avx2PoolBagsKernel(DType dtype, PoolingMode mode, bool weighted, bool renorm);
PoolBagsFn Avx512PoolBagsKernel(DType dtype, PoolingMode mode, bool weighted, bool renorm);
#endif

// Entries further ahead in the flat index array whose rows are prefetched
// (every cache line of the row). A build-time knob for tuning on a new
// machine: on the 2-core EPYC VM this was written on, 0..64 measured within
// noise of each other, the out-of-order core already overlapping the misses
// of consecutive rows; prefetching matters more where page walks or longer
// latencies (bigger NUMA machines) stall it.
// Prefetches the cache line at p into L1. An asm volatile statement on x86:
// GCC 12 treats __builtin_prefetch / _mm_prefetch as free of side effects,
// so its IPA passes (modref, pure-const) found the kernels' prefetch helper
// "pure" and deleted every call to it: the kernels ran without a single
// prefetch instruction until this was written (engine_prefetch_emitted checks
// the built kernels still contain them).
#if defined(__x86_64__) || defined(__i386__)
#define EMBSTORE_PREFETCH_T0(p) asm volatile("prefetcht0 %0" : : "m"(*static_cast<const char*>(p)))
#else
#define EMBSTORE_PREFETCH_T0(p) __builtin_prefetch((p), 0, 3)
#endif

#ifndef EMBSTORE_PREFETCH_DISTANCE
#define EMBSTORE_PREFETCH_DISTANCE 16
#endif
inline constexpr int kPrefetchDistance = EMBSTORE_PREFETCH_DISTANCE;

}  // namespace embstore::engine

#endif  // EMBSTORE_ENGINE_KERNELS_H_
