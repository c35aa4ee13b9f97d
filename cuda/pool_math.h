// Internal: the arithmetic of the GPU kernels, written once for host and
// device.
//
// Every function here is __host__ __device__ under nvcc and plain inline C++
// under a host compiler. The kernels in pooling_kernels.cuh call them per
// thread; the CPU unit tests (tests/cuda_pool_math_test.cc) call the very same
// functions in loops over bags and lanes and compare with the engine's scalar
// reference (engine/kernels_ref.h). Only the thread indexing, the warp
// shuffles of the norm reduction and the memory transfers are left to the
// GPU tests.
//
// Numerics mirror PoolPlanRef exactly, element by element: dequantize
// (int8: code * scale + bias, two roundings), times the row's max_norm scale,
// times the weight, then accumulate in entry order in f32 (sum/mean: from
// 0.0f; max: the first entry, then strict >). Multiplies and adds are the
// _rn intrinsics on the device so nvcc cannot contract them into FMAs; on the
// host the engine is built without FMA contraction (ISO C++ mode).
#ifndef EMBSTORE_CUDA_POOL_MATH_H_
#define EMBSTORE_CUDA_POOL_MATH_H_

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "codec/half.h"
#include "cuda/slot_layout.h"
#include "embstore/types.h"

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#define EMBSTORE_HD __host__ __device__ __forceinline__
#else
#define EMBSTORE_HD inline
#endif
#if defined(__CUDA_ARCH__)  // the device pass only; host compilers warn on it
#define EMBSTORE_UNROLL _Pragma("unroll")
#else
#define EMBSTORE_UNROLL
#endif

namespace embstore::cuda {

enum class PoolKind : int { kSum = 0, kMean = 1, kMax = 2 };

// How the max_norm norm of a row is computed (see engine RowNormRef).
enum class NormKind : int {
  kL2 = 0,       // sqrt(sum x^2), in double
  kL1 = 1,       // sum |x|, in double
  kInf = 2,      // max |x| (NaN if any x is NaN)
  kNegInf = 3,   // min |x| (torch's p = -inf), NaN if any x is NaN
  kZero = 4,     // number of non-zero x
  kGeneral = 5,  // (sum |x|^p)^(1/p), in double
};

// Host only: the kind for a validated norm_type.
inline NormKind NormKindFor(double p) {
  if (p == 2) return NormKind::kL2;
  if (p == 1) return NormKind::kL1;
  if (p == 0) return NormKind::kZero;
  if (std::isinf(p)) return p > 0 ? NormKind::kInf : NormKind::kNegInf;
  return NormKind::kGeneral;
}

// The pooling kernel's inputs: the cache slots and one pass's CSR of bags.
struct PoolArgs {
  const uint8_t* rows = nullptr;         // slot s at rows + s * row_bytes
  int64_t row_bytes = 0;                 // SlotLayout::row_bytes
  const float* qparams = nullptr;        // int8: scale, bias of slot s at [2s], [2s + 1]
  const float* row_scale = nullptr;      // max_norm scale of slot s; null: no max_norm
  const int64_t* bag_offsets = nullptr;  // num_bags + 1
  const int32_t* entry_slot = nullptr;   // per entry
  const float* entry_weight = nullptr;   // per entry; null: all 1
  int64_t num_bags = 0;
  int64_t dim = 0;
  int64_t vecs_per_row = 0;
  int lanes = 1;              // threads per bag (LanesPerRow)
  float* out = nullptr;       // bag b at out + b * dim
  bool vector_store = false;  // out rows 16-byte aligned and dim % 4 == 0
};

// The max_norm kernel's inputs: one scale per distinct slot of a pass.
struct NormArgs {
  const uint8_t* rows = nullptr;
  int64_t row_bytes = 0;
  const float* qparams = nullptr;
  const int32_t* slots = nullptr;  // the pass's distinct slots
  int64_t count = 0;
  int64_t dim = 0;
  int64_t vecs_per_row = 0;
  int lanes = 1;
  NormKind kind = NormKind::kL2;
  double norm_type = 2;
  double max_norm = 0;
  float* row_scale = nullptr;  // written at each slot
};

// The scatter kernel's inputs: staged rows (batch_prep.h StagingLayout) to
// their slots.
struct ScatterArgs {
  const uint8_t* staged_rows = nullptr;
  const float* staged_qparams = nullptr;  // int8 only
  const int32_t* slots = nullptr;
  int64_t count = 0;
  int64_t row_bytes = 0;
  uint8_t* rows = nullptr;
  float* qparams = nullptr;  // int8 only
};

// ---- Scalar helpers -----------------------------------------------------------

EMBSTORE_HD float MulF(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
EMBSTORE_HD float AddF(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
EMBSTORE_HD float DivF(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
EMBSTORE_HD double MulD(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
EMBSTORE_HD double AddD(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
EMBSTORE_HD float BitsToFloat(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  return codec::BitsToFloat(u);
#endif
}
EMBSTORE_HD bool IsNan(float x) { return x != x; }

// Exact IEEE binary16 -> binary32 (the host side is the row codec's).
EMBSTORE_HD float HalfBitsToFloat(uint32_t h) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(static_cast<unsigned short>(h)));
#else
  return codec::HalfToFloat(static_cast<uint16_t>(h));
#endif
}

// 16 bytes of a slot row, as four little-endian words.
struct Vec16 {
  uint32_t w[4];
};

EMBSTORE_HD Vec16 Load16(const uint8_t* p) {
  Vec16 v;
#if defined(__CUDA_ARCH__)
  const uint4 u = __ldg(reinterpret_cast<const uint4*>(p));
  v.w[0] = u.x;
  v.w[1] = u.y;
  v.w[2] = u.z;
  v.w[3] = u.w;
#else
  std::memcpy(v.w, p, sizeof(v.w));
#endif
  return v;
}

// ---- Per-dtype decoding of a 16-byte vector -----------------------------------

template <DType kD>
struct Elems;
template <>
struct Elems<DType::kF32> {
  static constexpr int kN = 4;
};
template <>
struct Elems<DType::kF16> {
  static constexpr int kN = 8;
};
template <>
struct Elems<DType::kBF16> {
  static constexpr int kN = 8;
};
template <>
struct Elems<DType::kInt8Rowwise> {
  static constexpr int kN = 16;
};

// Dequantizes element j of a vector. scale/bias: int8 only.
template <DType kD>
EMBSTORE_HD float Element(const Vec16& v, int j, float scale, float bias) {
  if constexpr (kD == DType::kF32) {
    return BitsToFloat(v.w[j]);
  } else if constexpr (kD == DType::kF16) {
    return HalfBitsToFloat((v.w[j >> 1] >> (16 * (j & 1))) & 0xffffu);
  } else if constexpr (kD == DType::kBF16) {
    return BitsToFloat(((v.w[j >> 1] >> (16 * (j & 1))) & 0xffffu) << 16);
  } else {
    const float code = static_cast<float>((v.w[j >> 2] >> (8 * (j & 3))) & 0xffu);
    return AddF(MulF(code, scale), bias);
  }
}

// The values entry `e` contributes at vector `vec` of its slot: dequantized,
// times the row's max_norm scale, times the entry's weight (reference order).
template <DType kD>
EMBSTORE_HD void EntryValues(const PoolArgs& a, int64_t e, int32_t slot, const Vec16& raw,
                             float (&x)[Elems<kD>::kN]) {
  constexpr int kN = Elems<kD>::kN;
  float scale = 1.0f, bias = 0.0f;
  if constexpr (kD == DType::kInt8Rowwise) {
    scale = a.qparams[2 * static_cast<int64_t>(slot)];
    bias = a.qparams[2 * static_cast<int64_t>(slot) + 1];
  }
  const float renorm = a.row_scale != nullptr ? a.row_scale[slot] : 1.0f;
  const bool weighted = a.entry_weight != nullptr;
  const float w = weighted ? a.entry_weight[e] : 1.0f;
  EMBSTORE_UNROLL
  for (int j = 0; j < kN; ++j) {
    float v = Element<kD>(raw, j, scale, bias);
    if (a.row_scale != nullptr) v = MulF(v, renorm);
    if (weighted) v = MulF(w, v);
    x[j] = v;
  }
}

template <PoolKind kKind, int kN>
EMBSTORE_HD void Combine(float (&acc)[kN], const float (&x)[kN]) {
  EMBSTORE_UNROLL
  for (int j = 0; j < kN; ++j) {
    if constexpr (kKind == PoolKind::kMax) {
      acc[j] = x[j] > acc[j] ? x[j] : acc[j];  // ties and NaN keep the earlier value
    } else {
      acc[j] = AddF(acc[j], x[j]);
    }
  }
}

template <int kN>
EMBSTORE_HD void StoreOut(float* out_row, int64_t d0, const float (&acc)[kN], int64_t dim,
                          bool vector_store) {
#if defined(__CUDA_ARCH__)
  if (vector_store && d0 + kN <= dim) {
    EMBSTORE_UNROLL
    for (int j = 0; j < kN; j += 4) {
      *reinterpret_cast<float4*>(out_row + d0 + j) =
          make_float4(acc[j], acc[j + 1], acc[j + 2], acc[j + 3]);
    }
    return;
  }
#else
  (void)vector_store;
#endif
  EMBSTORE_UNROLL
  for (int j = 0; j < kN; ++j) {
    if (d0 + j < dim) out_row[d0 + j] = acc[j];
  }
}

// ---- Pooling: one lane of one bag ---------------------------------------------

// Lane `lane` of the group pooling bag `bag` writes the vectors lane,
// lane + lanes, ... of the bag's output row. Every output element is written
// (empty bags: zeros).
template <DType kD, PoolKind kKind>
EMBSTORE_HD void PoolBagLane(const PoolArgs& a, int64_t bag, int lane) {
  constexpr int kN = Elems<kD>::kN;
  constexpr int kUnroll = 4;  // independent row loads in flight per lane
  const int64_t begin = a.bag_offsets[bag];
  const int64_t end = a.bag_offsets[bag + 1];
  float* out_row = a.out + bag * a.dim;
  for (int64_t vec = lane; vec < a.vecs_per_row; vec += a.lanes) {
    const int64_t byte_off = vec * kVectorBytes;
    float acc[kN];
    EMBSTORE_UNROLL
    for (int j = 0; j < kN; ++j) acc[j] = 0.0f;
    int64_t e = begin;
    if constexpr (kKind == PoolKind::kMax) {
      if (e < end) {  // the first entry initializes
        const int32_t slot = a.entry_slot[e];
        const Vec16 raw = Load16(a.rows + static_cast<int64_t>(slot) * a.row_bytes + byte_off);
        EntryValues<kD>(a, e, slot, raw, acc);
        ++e;
      }
    }
    for (; e + kUnroll <= end; e += kUnroll) {
      int32_t slot[kUnroll];
      Vec16 raw[kUnroll];
      EMBSTORE_UNROLL
      for (int k = 0; k < kUnroll; ++k) slot[k] = a.entry_slot[e + k];
      EMBSTORE_UNROLL
      for (int k = 0; k < kUnroll; ++k) {
        raw[k] = Load16(a.rows + static_cast<int64_t>(slot[k]) * a.row_bytes + byte_off);
      }
      EMBSTORE_UNROLL
      for (int k = 0; k < kUnroll; ++k) {
        float x[kN];
        EntryValues<kD>(a, e + k, slot[k], raw[k], x);
        Combine<kKind, kN>(acc, x);
      }
    }
    for (; e < end; ++e) {
      const int32_t slot = a.entry_slot[e];
      const Vec16 raw = Load16(a.rows + static_cast<int64_t>(slot) * a.row_bytes + byte_off);
      float x[kN];
      EntryValues<kD>(a, e, slot, raw, x);
      Combine<kKind, kN>(acc, x);
    }
    if constexpr (kKind == PoolKind::kMean) {
      if (end > begin) {
        const float count = static_cast<float>(end - begin);
        EMBSTORE_UNROLL
        for (int j = 0; j < kN; ++j) acc[j] = DivF(acc[j], count);
      }
    }
    StoreOut<kN>(out_row, vec * kN, acc, a.dim, a.vector_store);
  }
}

// ---- max_norm: per-lane partial norms, their combination, the scale -------------

struct NormPartial {
  double sum = 0;  // L2, L1, zero, general
  float m = 0;     // inf: max |x|; -inf: min |x| (starts at +inf)
  bool nan = false;
};

EMBSTORE_HD NormPartial NormIdentity(NormKind kind) {
  NormPartial p;
  if (kind == NormKind::kNegInf) p.m = BitsToFloat(0x7f800000u);
  return p;
}

EMBSTORE_HD void NormAccumulate(NormPartial* p, NormKind kind, double norm_type, float x) {
  const float ax = x < 0 ? -x : x;
  switch (kind) {
    case NormKind::kL2:
      p->sum = AddD(p->sum, MulD(static_cast<double>(x), static_cast<double>(x)));
      break;
    case NormKind::kL1:
      p->sum = AddD(p->sum, static_cast<double>(ax));
      break;
    case NormKind::kInf:
      if (IsNan(x)) p->nan = true;
      if (ax > p->m) p->m = ax;
      break;
    case NormKind::kNegInf:
      if (IsNan(x)) p->nan = true;
      if (ax < p->m) p->m = ax;
      break;
    case NormKind::kZero:
      if (x != 0.0f) p->sum = AddD(p->sum, 1.0);
      break;
    case NormKind::kGeneral:
      // |x|^p rounded to float, as torch (engine/plan.h, TorchNormType).
      p->sum = AddD(
          p->sum, static_cast<double>(static_cast<float>(pow(static_cast<double>(ax), norm_type))));
      break;
  }
}

EMBSTORE_HD void NormMerge(NormPartial* p, NormKind kind, const NormPartial& q) {
  p->sum = AddD(p->sum, q.sum);
  p->nan = p->nan || q.nan;
  if (kind == NormKind::kNegInf) {
    if (q.m < p->m) p->m = q.m;
  } else if (q.m > p->m) {
    p->m = q.m;
  }
}

// The multiplier max_norm applies to a row with these merged partials:
// max_norm / (norm + 1e-7) when norm > max_norm (strict), else 1. The norm is
// rounded to float first, as the reference (and torch) has it.
EMBSTORE_HD float NormScale(const NormPartial& p, NormKind kind, double norm_type,
                            double max_norm) {
  double norm = 0;
  switch (kind) {
    case NormKind::kL2:
      norm = sqrt(p.sum);
      break;
    case NormKind::kL1:
    case NormKind::kZero:
      norm = p.sum;
      break;
    case NormKind::kInf:
    case NormKind::kNegInf:
      norm = p.nan ? static_cast<double>(BitsToFloat(0x7fc00000u)) : p.m;
      break;
    case NormKind::kGeneral:
      // A sum past the float range is inf in torch's float arithmetic.
      norm = p.sum > 3.4028234663852886e38 ? static_cast<double>(BitsToFloat(0x7f800000u))
                                           : pow(p.sum, 1.0 / norm_type);
      break;
  }
  const double rounded = static_cast<double>(static_cast<float>(norm));
  if (rounded > max_norm) return static_cast<float>(max_norm / (rounded + 1e-7));
  return 1.0f;
}

// Lane `lane`'s partial norm of distinct slot number `i` of the pass.
template <DType kD>
EMBSTORE_HD NormPartial NormLane(const NormArgs& a, int64_t i, int lane) {
  constexpr int kN = Elems<kD>::kN;
  NormPartial p = NormIdentity(a.kind);
  const int32_t slot = a.slots[i];
  float scale = 1.0f, bias = 0.0f;
  if constexpr (kD == DType::kInt8Rowwise) {
    scale = a.qparams[2 * static_cast<int64_t>(slot)];
    bias = a.qparams[2 * static_cast<int64_t>(slot) + 1];
  }
  const uint8_t* row = a.rows + static_cast<int64_t>(slot) * a.row_bytes;
  for (int64_t vec = lane; vec < a.vecs_per_row; vec += a.lanes) {
    const Vec16 raw = Load16(row + vec * kVectorBytes);
    EMBSTORE_UNROLL
    for (int j = 0; j < kN; ++j) {
      // Padding elements are not part of the row (int8 padding would
      // dequantize to `bias`, not 0).
      if (vec * kN + j < a.dim)
        NormAccumulate(&p, a.kind, a.norm_type, Element<kD>(raw, j, scale, bias));
    }
  }
  return p;
}

// ---- Scatter: one 16-byte unit of one staged row ---------------------------------

// Unit u of staged row i (u < row_bytes / 16) goes to its slot; unit 0 also
// carries the int8 scale and bias.
EMBSTORE_HD void ScatterUnit(const ScatterArgs& a, int64_t i, int64_t u) {
  const int32_t slot = a.slots[i];
  const uint8_t* src = a.staged_rows + i * a.row_bytes + u * kVectorBytes;
  uint8_t* dst = a.rows + static_cast<int64_t>(slot) * a.row_bytes + u * kVectorBytes;
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
#else
  std::memcpy(dst, src, kVectorBytes);
#endif
  if (u == 0 && a.qparams != nullptr) {
    a.qparams[2 * static_cast<int64_t>(slot)] = a.staged_qparams[2 * i];
    a.qparams[2 * static_cast<int64_t>(slot) + 1] = a.staged_qparams[2 * i + 1];
  }
}

}  // namespace embstore::cuda

#endif  // EMBSTORE_CUDA_POOL_MATH_H_
