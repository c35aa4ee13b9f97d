// Internal: the pooling kernels, written once over a vector-traits class and
// instantiated by each ISA file (kernels_generic.cc, kernels_avx2.cc,
// kernels_avx512.cc) with its own traits.
//
// REQUIRES: include only from those files, after defining the traits class
// in an unnamed namespace. Every template here is instantiated with that
// TU-local class, so each ISA gets its own internal-linkage copy and no
// AVX-512 instruction can leak into the generic path. For the same reason
// nothing here calls an inline function of another header (std::min,
// TableView::Row, IndexArray::operator[]...).
//
// The engine is compiled with -ffp-contract=off: a * b + c written in plain
// C++ rounds twice everywhere, as in the reference; T::Fma / T::FmaS are the
// only fused operations.
//
// The traits class T provides:
//   using V (a vector of T::kW floats), Zero, Set1, LoadF32/LoadF16/LoadBF16
//   /LoadU8 (unaligned, from a byte address), StoreF32, Add, Mul, Div,
//   Fma(a, b, c) = a * b + c, MaxGt(x, acc) = x > acc ? x : acc (lane-wise,
//   NaN in either keeps acc), Abs, AnyNan, NonzeroOnes, HSum, HMax, the
//   double accumulator DAcc with DZero/AddToDouble/DSum, and the scalars
//   FmaS, HalfToFloat, Prefetch.
//
// Algorithm per bag: entries are staged kGroup at a time (row pointer, flat
// position and a coefficient folding in weight and renorm scale), then
// accumulated over dim in blocks of up to kMaxBlockVecs vector registers,
// the output row serving as accumulator between blocks and stages; int8
// scale/bias are read from the row during accumulation. Rows
// kPrefetchDistance entries ahead in the flat index array are prefetched,
// across bag boundaries: by the first block's pass over a stage, or, with
// max_norm (whose staging reads every row for its norm), while staging.
#ifndef EMBSTORE_ENGINE_KERNELS_IMPL_H_
#define EMBSTORE_ENGINE_KERNELS_IMPL_H_

#include <cstdint>
#include <cstring>

#include "engine/kernels.h"

namespace embstore::engine::kernel_impl {

inline constexpr int kGroup = 64;
inline constexpr int kMaxBlockVecs = 8;

// ---- Row access per storage dtype -----------------------------------------

template <class T, DType kD>
struct RowOps;

template <class T>
struct RowOps<T, DType::kF32> {
  static constexpr int kElemBytes = 4;
  static constexpr bool kAffine = false;
  static typename T::V Load(const uint8_t* row, int64_t d) { return T::LoadF32(row + 4 * d); }
  static float Scalar(const uint8_t* row, int64_t d) {
    float f;
    std::memcpy(&f, row + 4 * d, sizeof(f));
    return f;
  }
};

template <class T>
struct RowOps<T, DType::kF16> {
  static constexpr int kElemBytes = 2;
  static constexpr bool kAffine = false;
  static typename T::V Load(const uint8_t* row, int64_t d) { return T::LoadF16(row + 2 * d); }
  static float Scalar(const uint8_t* row, int64_t d) {
    uint16_t h;
    std::memcpy(&h, row + 2 * d, sizeof(h));
    return T::HalfToFloat(h);
  }
};

template <class T>
struct RowOps<T, DType::kBF16> {
  static constexpr int kElemBytes = 2;
  static constexpr bool kAffine = false;
  static typename T::V Load(const uint8_t* row, int64_t d) { return T::LoadBF16(row + 2 * d); }
  static float Scalar(const uint8_t* row, int64_t d) {
    uint16_t h;
    std::memcpy(&h, row + 2 * d, sizeof(h));
    const uint32_t bits = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
  }
};

// Int8 rowwise: Load/Scalar return the raw codes as floats; the value is
// code * scale + bias, folded into the staged mul/add coefficients.
template <class T>
struct RowOps<T, DType::kInt8Rowwise> {
  static constexpr int kElemBytes = 1;
  static constexpr bool kAffine = true;
  static typename T::V Load(const uint8_t* row, int64_t d) { return T::LoadU8(row + d); }
  static float Scalar(const uint8_t* row, int64_t d) { return static_cast<float>(row[d]); }
};

// ---- Small helpers ----------------------------------------------------------

template <class T>
inline int64_t LoadIndex(const PoolParams& p, int64_t pos) {
  return p.indices_are_64bit ? static_cast<const int64_t*>(p.indices)[pos]
                             : static_cast<int64_t>(static_cast<const int32_t*>(p.indices)[pos]);
}

// The row referenced at flat position `pos`, or null for a position past the
// end or an id outside the table: prefetch targets lie ahead, possibly
// outside every bag, where ids were never validated.
template <class T>
inline const uint8_t* RowAtPosition(const PoolParams& p, int64_t pos) {
  if (pos >= p.num_positions) return nullptr;
  const int64_t id = LoadIndex<T>(p, pos);
  if (static_cast<uint64_t>(id) >= static_cast<uint64_t>(p.rows)) return nullptr;
  return p.data + static_cast<size_t>(id) * p.row_stride;
}

// Prefetches the whole row referenced at flat position `pos`, if any.
template <class T>
inline void PrefetchPosition(const PoolParams& p, int64_t pos) {
  const uint8_t* row = RowAtPosition<T>(p, pos);
  if (row == nullptr) return;
  for (size_t off = 0; off < p.payload_bytes; off += 64) T::Prefetch(row + off);
}

// Prefetches the part of the row at flat position `pos` that a block of kV
// vectors starting at element d0 reads (plus int8 scale/bias with the first
// block). A fixed, unrolled number of prefetches: a loop of run-time length
// inside the accumulation loop made GCC keep the accumulators on the stack.
template <class T, class R, int kV>
inline void PrefetchBlock(const PoolParams& p, int64_t pos, int64_t d0) {
  const uint8_t* row = RowAtPosition<T>(p, pos);
  if (row == nullptr) return;
  const uint8_t* block = row + d0 * R::kElemBytes;
  constexpr int kBytes = kV * T::kW * R::kElemBytes;
  for (int off = 0; off < kBytes; off += 64) T::Prefetch(block + off);
  if constexpr (kBytes % 64 != 0) T::Prefetch(block + kBytes - 1);
  if constexpr (R::kAffine) {
    if (d0 == 0) T::Prefetch(row + p.dim);
  }
}

// Dequantized element d of a row (scale/bias used only for int8 rows).
template <class T, class R>
inline float DequantScalar(const uint8_t* row, int64_t d, float scale, float bias) {
  const float x = R::Scalar(row, d);
  if constexpr (R::kAffine) {
    return x * scale + bias;  // same two roundings as the reference
  } else {
    return x;
  }
}

template <class T, class R>
inline typename T::V DequantVector(const uint8_t* row, int64_t d, typename T::V scale,
                                   typename T::V bias) {
  const typename T::V x = R::Load(row, d);
  if constexpr (R::kAffine) {
    return T::Add(T::Mul(x, scale), bias);
  } else {
    return x;
  }
}

// The max_norm norm of one dequantized row, rounded to float as torch's
// float32 norm is. Agrees with RowNormRef (all-double sums) to a float ulp or
// two: L1/L2 sum short float partial sums into double.
template <class T, class R>
double RowNormOf(const uint8_t* row, const PoolParams& p, float scale_s, float bias_s) {
  using V = typename T::V;
  constexpr int W = T::kW;
  const int64_t dim = p.dim;
  const V scale = T::Set1(scale_s), bias = T::Set1(bias_s);
  int64_t d = 0;
  double norm = 0;
  switch (p.norm_kind) {
    case NormKind::kL2:
    case NormKind::kL1: {
      // x^2 (or |x|) is summed in float by four independent chains of at
      // most kFlush terms, whose sum (at most 4 * kFlush terms per lane) is
      // then added into double: 1 FMA per vector instead of 2 conversions +
      // 2 double FMAs, with a relative error of a few float ulps. The result
      // is rounded to float below anyway.
      constexpr int kFlush = 4;
      const bool l2 = p.norm_kind == NormKind::kL2;
      typename T::DAcc total = T::DZero();
      while (d + 4 * W <= dim) {
        V a0 = T::Zero(), a1 = T::Zero(), a2 = T::Zero(), a3 = T::Zero();
        for (int i = 0; i < kFlush && d + 4 * W <= dim; ++i, d += 4 * W) {
          const V x0 = DequantVector<T, R>(row, d, scale, bias);
          const V x1 = DequantVector<T, R>(row, d + W, scale, bias);
          const V x2 = DequantVector<T, R>(row, d + 2 * W, scale, bias);
          const V x3 = DequantVector<T, R>(row, d + 3 * W, scale, bias);
          if (l2) {
            a0 = T::Fma(x0, x0, a0);
            a1 = T::Fma(x1, x1, a1);
            a2 = T::Fma(x2, x2, a2);
            a3 = T::Fma(x3, x3, a3);
          } else {
            a0 = T::Add(a0, T::Abs(x0));
            a1 = T::Add(a1, T::Abs(x1));
            a2 = T::Add(a2, T::Abs(x2));
            a3 = T::Add(a3, T::Abs(x3));
          }
        }
        T::AddToDouble(total, T::Add(T::Add(a0, a1), T::Add(a2, a3)));
      }
      for (; d + W <= dim; d += W) {
        const V x = DequantVector<T, R>(row, d, scale, bias);
        T::AddToDouble(total, l2 ? T::Mul(x, x) : T::Abs(x));
      }
      double s = T::DSum(total);
      for (; d < dim; ++d) {
        const double x = DequantScalar<T, R>(row, d, scale_s, bias_s);
        s += l2 ? x * x : __builtin_fabs(x);
      }
      if (!(s <= __DBL_MAX__)) {
        // A float square (or sum) overflowed, or the row holds inf/NaN:
        // redo it all in double, as the reference does.
        s = 0;
        for (int64_t e = 0; e < dim; ++e) {
          const double x = DequantScalar<T, R>(row, e, scale_s, bias_s);
          s += l2 ? x * x : __builtin_fabs(x);
        }
      }
      norm = l2 ? __builtin_sqrt(s) : s;
      break;
    }
    case NormKind::kInf: {
      V m = T::Zero();
      for (; d + W <= dim; d += W) {
        const V x = DequantVector<T, R>(row, d, scale, bias);
        if (T::AnyNan(x)) return __builtin_nan("");
        m = T::MaxGt(T::Abs(x), m);
      }
      float ms = T::HMax(m);
      for (; d < dim; ++d) {
        const float x = DequantScalar<T, R>(row, d, scale_s, bias_s);
        if (x != x) return __builtin_nan("");
        const float a = __builtin_fabsf(x);
        if (a > ms) ms = a;
      }
      norm = ms;
      break;
    }
    case NormKind::kZero: {
      V c = T::Zero();
      for (; d + W <= dim; d += W)
        c = T::Add(c, T::NonzeroOnes(DequantVector<T, R>(row, d, scale, bias)));
      double s = T::HSum(c);
      for (; d < dim; ++d) {
        if (DequantScalar<T, R>(row, d, scale_s, bias_s) != 0.0f) s += 1;
      }
      norm = s;
      break;
    }
    case NormKind::kNegInf: {  // rare: plain scalar loop
      float ms = __builtin_inff();
      for (; d < dim; ++d) {
        const float x = DequantScalar<T, R>(row, d, scale_s, bias_s);
        if (x != x) return __builtin_nan("");
        const float a = __builtin_fabsf(x);
        if (a < ms) ms = a;
      }
      norm = ms;
      break;
    }
    case NormKind::kGeneral: {
      // Each |x|^p rounded to float and a sum past the float range is inf,
      // as torch's float arithmetic has it (engine/plan.h, TorchNormType).
      double s = 0;
      for (; d < dim; ++d) {
        s += static_cast<double>(static_cast<float>(__builtin_pow(
            __builtin_fabs(static_cast<double>(DequantScalar<T, R>(row, d, scale_s, bias_s))),
            p.norm_type)));
      }
      norm = s > static_cast<double>(__FLT_MAX__) ? __builtin_inf()
                                                  : __builtin_pow(s, 1.0 / p.norm_type);
      break;
    }
  }
  return static_cast<double>(static_cast<float>(norm));
}

// Entries of one bag staged for accumulation. (A template only so that each
// ISA file gets its own copy of the implicit constructor.)
template <class T>
struct Stage {
  const uint8_t* rows[kGroup];
  float coef[kGroup];   // weight x renorm shrink (1 when neither)
  int64_t pos[kGroup];  // flat index positions (for prefetching)
  int n = 0;
  const PoolParams* params = nullptr;
  bool prefetch = true;        // the first block's pass prefetches (else staging does)
  int64_t qparams_offset = 0;  // int8 rows: byte offset of scale, bias
};

// The coefficients of entry e: its value at d is x(d) * mul + add. For int8
// rows scale and bias are read here, while the row is being accumulated,
// not when staging: a staging loop that touched every row would wait for
// each row in turn instead of letting the prefetches run ahead.
template <class T, class R>
inline void EntryCoefs(const Stage<T>& s, int e, float& mul, float& add) {
  if constexpr (R::kAffine) {
    float scale, bias;
    std::memcpy(&scale, s.rows[e] + s.qparams_offset, sizeof(scale));
    std::memcpy(&bias, s.rows[e] + s.qparams_offset + sizeof(float), sizeof(bias));
    mul = s.coef[e] * scale;
    add = s.coef[e] * bias;
  } else {
    mul = s.coef[e];
    add = 0.0f;
  }
}

// The value entry e contributes at vector position d.
template <class T, class R, bool kUnit>
inline typename T::V EntryVector(const Stage<T>& s, int e, int64_t d) {
  const typename T::V x = R::Load(s.rows[e], d);
  float mul, add;
  EntryCoefs<T, R>(s, e, mul, add);
  if constexpr (R::kAffine) {
    return T::Fma(x, T::Set1(mul), T::Set1(add));
  } else if constexpr (kUnit) {
    return x;
  } else {
    return T::Mul(x, T::Set1(mul));
  }
}

template <class T, class R, bool kUnit>
inline float EntryScalar(const Stage<T>& s, int e, int64_t d) {
  const float x = R::Scalar(s.rows[e], d);
  float mul, add;
  EntryCoefs<T, R>(s, e, mul, add);
  if constexpr (R::kAffine) {
    return T::FmaS(x, mul, add);
  } else if constexpr (kUnit) {
    return x;
  } else {
    return x * mul;
  }
}

// Accumulates the staged entries into out_row[d0, d0 + kV * W). `first`: the
// output row holds nothing of this bag yet.
// `prefetch`: also prefetch, for each entry, this block's part of the row
// kPrefetchDistance positions further on.
template <class T, class R, bool kMax, bool kUnit, int kV>
inline void AccumulateVectors(const Stage<T>& s, int64_t d0, float* out_row, bool first,
                              bool prefetch) {
  using V = typename T::V;
  constexpr int W = T::kW;
  V acc[kV];
  int e0 = 0;
  if (first) {
    if (kMax && prefetch) PrefetchBlock<T, R, kV>(*s.params, s.pos[0] + kPrefetchDistance, d0);
    if constexpr (kMax) {
      for (int k = 0; k < kV; ++k) acc[k] = EntryVector<T, R, kUnit>(s, 0, d0 + k * W);
      e0 = 1;
    } else {
      for (int k = 0; k < kV; ++k) acc[k] = T::Zero();
    }
  } else {
    for (int k = 0; k < kV; ++k) acc[k] = T::LoadF32(out_row + d0 + k * W);
  }
  for (int e = e0; e < s.n; ++e) {
    if (prefetch) PrefetchBlock<T, R, kV>(*s.params, s.pos[e] + kPrefetchDistance, d0);
    const uint8_t* row = s.rows[e];
    float mul_s, add_s;
    EntryCoefs<T, R>(s, e, mul_s, add_s);
    const V mul = T::Set1(mul_s);
    const V add = T::Set1(add_s);
    for (int k = 0; k < kV; ++k) {
      const V x = R::Load(row, d0 + k * W);
      if constexpr (kMax) {
        V v;
        if constexpr (R::kAffine) {
          v = T::Fma(x, mul, add);
        } else if constexpr (kUnit) {
          v = x;
        } else {
          v = T::Mul(x, mul);
        }
        acc[k] = T::MaxGt(v, acc[k]);
      } else {
        if constexpr (R::kAffine) {
          acc[k] = T::Fma(x, mul, T::Add(acc[k], add));
        } else if constexpr (kUnit) {
          acc[k] = T::Add(acc[k], x);
        } else {
          acc[k] = T::Fma(x, mul, acc[k]);
        }
      }
    }
  }
  for (int k = 0; k < kV; ++k) T::StoreF32(out_row + d0 + k * W, acc[k]);
}

// The same for the last dim % W elements, one at a time.
template <class T, class R, bool kMax, bool kUnit>
inline void AccumulateTail(const Stage<T>& s, int64_t d0, int64_t dim, float* out_row, bool first) {
  for (int64_t d = d0; d < dim; ++d) {
    float acc = 0.0f;
    int e0 = 0;
    if (first) {
      if constexpr (kMax) {
        acc = EntryScalar<T, R, kUnit>(s, 0, d);
        e0 = 1;
      }
    } else {
      acc = out_row[d];
    }
    for (int e = e0; e < s.n; ++e) {
      if constexpr (kMax) {
        const float v = EntryScalar<T, R, kUnit>(s, e, d);
        acc = v > acc ? v : acc;
      } else {
        const float x = R::Scalar(s.rows[e], d);
        float mul, add;
        EntryCoefs<T, R>(s, e, mul, add);
        if constexpr (R::kAffine) {
          acc = T::FmaS(x, mul, acc + add);
        } else if constexpr (kUnit) {
          acc = acc + x;
        } else {
          acc = T::FmaS(x, mul, acc);
        }
      }
    }
    out_row[d] = acc;
  }
}

template <class T, class R, bool kMax, bool kUnit>
inline void AccumulateStage(const Stage<T>& s, int64_t dim, float* out_row, bool first) {
  constexpr int W = T::kW;
  constexpr int64_t kBlock = static_cast<int64_t>(kMaxBlockVecs) * W;
  int64_t d0 = 0;
  for (; d0 + kBlock <= dim; d0 += kBlock) {
    AccumulateVectors<T, R, kMax, kUnit, kMaxBlockVecs>(s, d0, out_row, first, s.prefetch);
  }
  const int rem = static_cast<int>((dim - d0) / W);
  const bool prefetch = s.prefetch;
  if (prefetch && rem == 0 && d0 == 0) {  // dim < W: no vector block prefetches
    for (int e = 0; e < s.n; ++e) PrefetchPosition<T>(*s.params, s.pos[e] + kPrefetchDistance);
  }
  switch (rem) {
    case 1:
      AccumulateVectors<T, R, kMax, kUnit, 1>(s, d0, out_row, first, prefetch);
      break;
    case 2:
      AccumulateVectors<T, R, kMax, kUnit, 2>(s, d0, out_row, first, prefetch);
      break;
    case 3:
      AccumulateVectors<T, R, kMax, kUnit, 3>(s, d0, out_row, first, prefetch);
      break;
    case 4:
      AccumulateVectors<T, R, kMax, kUnit, 4>(s, d0, out_row, first, prefetch);
      break;
    case 5:
      AccumulateVectors<T, R, kMax, kUnit, 5>(s, d0, out_row, first, prefetch);
      break;
    case 6:
      AccumulateVectors<T, R, kMax, kUnit, 6>(s, d0, out_row, first, prefetch);
      break;
    case 7:
      AccumulateVectors<T, R, kMax, kUnit, 7>(s, d0, out_row, first, prefetch);
      break;
    default:
      break;
  }
  d0 += static_cast<int64_t>(rem) * W;
  if (d0 < dim) AccumulateTail<T, R, kMax, kUnit>(s, d0, dim, out_row, first);
}

template <class T>
inline void ZeroRow(float* out_row, int64_t dim) {
  constexpr int W = T::kW;
  int64_t d = 0;
  for (; d + W <= dim; d += W) T::StoreF32(out_row + d, T::Zero());
  for (; d < dim; ++d) out_row[d] = 0.0f;
}

template <class T>
inline void DivideRow(float* out_row, int64_t dim, float count) {
  constexpr int W = T::kW;
  const typename T::V c = T::Set1(count);
  int64_t d = 0;
  for (; d + W <= dim; d += W) T::StoreF32(out_row + d, T::Div(T::LoadF32(out_row + d), c));
  for (; d < dim; ++d) out_row[d] = out_row[d] / count;
}

// ---- The per-bag kernel -----------------------------------------------------

// The row-major kernel for rows of exactly kV vectors (dim = kV * W),
// without max_norm: each bag is pooled in kV registers in one pass over its
// entries, every row read front to back while the rows kPrefetchDistance
// entries ahead are prefetched. No staging, no output round trips. Same
// per-element operations in the same order as the staged kernel, so the
// results are identical to it.
template <class T, class R, PoolingMode kMode, bool kWeighted, int kV>
void PoolBagsInRegisters(const PoolParams& p, int64_t first_bag, int64_t last_bag, float* out) {
  using V = typename T::V;
  constexpr int W = T::kW;
  constexpr bool kMax = kMode == PoolingMode::kMax;
  {
    const int64_t start = p.bag_begin[first_bag];
    for (int64_t pos = start; pos < start + kPrefetchDistance; ++pos) {
      PrefetchBlock<T, R, kV>(p, pos, 0);
    }
  }
  for (int64_t b = first_bag; b < last_bag; ++b) {
    float* out_row = out + b * kV * W;
    V acc[kV];
    for (int k = 0; k < kV; ++k) acc[k] = T::Zero();
    int64_t count = 0;
    const int64_t begin = p.bag_begin[b], end = p.bag_end[b];
    for (int64_t pos = begin; pos < end; ++pos) {
      PrefetchBlock<T, R, kV>(p, pos + kPrefetchDistance, 0);
      const int64_t id = LoadIndex<T>(p, pos);
      if (id == p.padding_row) continue;
      const uint8_t* row = p.data + static_cast<size_t>(id) * p.row_stride;
      if constexpr (R::kAffine) {
        // int8: value = code * (c * scale) + c * bias, as the staged kernel
        // computes it (EntryCoefs, AccumulateVectors).
        float scale, bias;
        std::memcpy(&scale, row + p.dim, sizeof(scale));
        std::memcpy(&bias, row + p.dim + sizeof(float), sizeof(bias));
        const float c = kWeighted ? p.weights[pos] : 1.0f;
        const V mul = T::Set1(c * scale), add = T::Set1(c * bias);
        if constexpr (kMax) {
          if (count == 0) {
            for (int k = 0; k < kV; ++k) acc[k] = T::Fma(R::Load(row, k * W), mul, add);
          } else {
            for (int k = 0; k < kV; ++k) {
              acc[k] = T::MaxGt(T::Fma(R::Load(row, k * W), mul, add), acc[k]);
            }
          }
        } else {
          for (int k = 0; k < kV; ++k)
            acc[k] = T::Fma(R::Load(row, k * W), mul, T::Add(acc[k], add));
        }
      } else if constexpr (kMax) {
        const V c = T::Set1(kWeighted ? p.weights[pos] : 1.0f);
        if (count == 0) {
          for (int k = 0; k < kV; ++k) {
            acc[k] = kWeighted ? T::Mul(R::Load(row, k * W), c) : R::Load(row, k * W);
          }
        } else {
          for (int k = 0; k < kV; ++k) {
            acc[k] =
                T::MaxGt(kWeighted ? T::Mul(R::Load(row, k * W), c) : R::Load(row, k * W), acc[k]);
          }
        }
      } else if constexpr (kWeighted) {
        const V c = T::Set1(p.weights[pos]);
        for (int k = 0; k < kV; ++k) acc[k] = T::Fma(R::Load(row, k * W), c, acc[k]);
      } else {
        for (int k = 0; k < kV; ++k) acc[k] = T::Add(acc[k], R::Load(row, k * W));
      }
      ++count;
    }
    if constexpr (kMode == PoolingMode::kMean) {
      if (count > 0) {
        const V c = T::Set1(static_cast<float>(count));
        for (int k = 0; k < kV; ++k) acc[k] = T::Div(acc[k], c);
      }
    }
    // count == 0: acc is still zero, as torch's empty bags are.
    for (int k = 0; k < kV; ++k) T::StoreF32(out_row + k * W, acc[k]);
  }
}

template <class T, DType kD, PoolingMode kMode, bool kWeighted, bool kRenorm>
void PoolBags(const PoolParams& p, int64_t first_bag, int64_t last_bag, float* out) {
  using R = RowOps<T, kD>;
  constexpr bool kMax = kMode == PoolingMode::kMax;
  constexpr bool kMean = kMode == PoolingMode::kMean;
  // Unweighted, not renormalized, not int8: rows are added as they are.
  constexpr bool kUnit = !kWeighted && !kRenorm && !R::kAffine;
  const int64_t dim = p.dim;
  if (first_bag >= last_bag) return;
  if constexpr (!kRenorm) {
    constexpr int W = T::kW;
    // Up to 16 vector accumulators: for f32 they fit the registers exactly
    // (memory-operand adds); f16/bf16/int8 need conversion registers and
    // spill a few, yet measured 15-20 % faster than the staged kernel.
    if (dim == 16 * W) {
      return PoolBagsInRegisters<T, R, kMode, kWeighted, 16>(p, first_bag, last_bag, out);
    }
    switch (dim / W == 0 || dim % W != 0 ? 0 : dim / W) {
      case 8:
        return PoolBagsInRegisters<T, R, kMode, kWeighted, 8>(p, first_bag, last_bag, out);
      case 4:
        return PoolBagsInRegisters<T, R, kMode, kWeighted, 4>(p, first_bag, last_bag, out);
      case 2:
        return PoolBagsInRegisters<T, R, kMode, kWeighted, 2>(p, first_bag, last_bag, out);
      case 1:
        return PoolBagsInRegisters<T, R, kMode, kWeighted, 1>(p, first_bag, last_bag, out);
      default:
        break;
    }
  }

  {  // The first rows of this range were not prefetched by an earlier bag.
    const int64_t start = p.bag_begin[first_bag];
    for (int64_t pos = start; pos < start + kPrefetchDistance; ++pos) PrefetchPosition<T>(p, pos);
  }
  Stage<T> s;
  s.qparams_offset = dim;
  s.params = &p;
  s.prefetch = !kRenorm;  // int8: scale and bias follow the dim codes
  for (int64_t b = first_bag; b < last_bag; ++b) {
    float* out_row = out + b * dim;
    int64_t count = 0;
    const int64_t begin = p.bag_begin[b], end = p.bag_end[b];
    for (int64_t g = begin; g < end; g += kGroup) {
      const int64_t group_end = (end - g > kGroup) ? g + kGroup : end;
      s.n = 0;
      for (int64_t pos = g; pos < group_end; ++pos) {
        // Renorm reads each row while staging it (its norm), so the rows
        // ahead must be on their way by then.
        if constexpr (kRenorm) PrefetchPosition<T>(p, pos + kPrefetchDistance);
        const int64_t id = LoadIndex<T>(p, pos);
        if (id == p.padding_row) continue;
        const uint8_t* row = p.data + static_cast<size_t>(id) * p.row_stride;
        float c = 1.0f;
        if constexpr (kWeighted) c = p.weights[pos];
        if constexpr (kRenorm) {
          float scale = 1.0f, bias = 0.0f;
          if constexpr (R::kAffine) {
            std::memcpy(&scale, row + dim, sizeof(scale));
            std::memcpy(&bias, row + dim + sizeof(float), sizeof(bias));
          }
          // Branch-free: about half of the rows exceed max_norm in typical
          // use, and a mispredicted branch would flush the next rows' work.
          const double norm = RowNormOf<T, R>(row, p, scale, bias);
          const float shrink = static_cast<float>(p.max_norm / (norm + 1e-7));
          c = norm > p.max_norm ? c * shrink : c;
        }
        s.rows[s.n] = row;
        s.coef[s.n] = c;
        s.pos[s.n] = pos;
        ++s.n;
      }
      if (s.n == 0) continue;
      AccumulateStage<T, R, kMax, kUnit>(s, dim, out_row, count == 0);
      count += s.n;
    }
    if (count == 0) {
      ZeroRow<T>(out_row, dim);
    } else if constexpr (kMean) {
      DivideRow<T>(out_row, dim, static_cast<float>(count));
    }
  }
}

// ---- Kernel table -------------------------------------------------------------

template <class T, DType kD, PoolingMode kMode>
PoolBagsFn SelectFlags(bool weighted, bool renorm) {
  if (weighted) {
    return renorm ? &PoolBags<T, kD, kMode, true, true> : &PoolBags<T, kD, kMode, true, false>;
  }
  return renorm ? &PoolBags<T, kD, kMode, false, true> : &PoolBags<T, kD, kMode, false, false>;
}

template <class T, DType kD>
PoolBagsFn SelectMode(PoolingMode mode, bool weighted, bool renorm) {
  switch (mode) {
    case PoolingMode::kSum:
      return SelectFlags<T, kD, PoolingMode::kSum>(weighted, renorm);
    case PoolingMode::kMean:
      return SelectFlags<T, kD, PoolingMode::kMean>(weighted, renorm);
    case PoolingMode::kMax:
      return SelectFlags<T, kD, PoolingMode::kMax>(weighted, renorm);
  }
  return nullptr;
}

template <class T>
PoolBagsFn SelectKernel(DType dtype, PoolingMode mode, bool weighted, bool renorm) {
  switch (dtype) {
    case DType::kF32:
      return SelectMode<T, DType::kF32>(mode, weighted, renorm);
    case DType::kF16:
      return SelectMode<T, DType::kF16>(mode, weighted, renorm);
    case DType::kBF16:
      return SelectMode<T, DType::kBF16>(mode, weighted, renorm);
    case DType::kInt8Rowwise:
      return SelectMode<T, DType::kInt8Rowwise>(mode, weighted, renorm);
  }
  return nullptr;
}

}  // namespace embstore::engine::kernel_impl

#endif  // EMBSTORE_ENGINE_KERNELS_IMPL_H_
