// AVX-512 (F, BW, VL, DQ) + FMA + F16C pooling kernels (16 floats per
// vector). Compiled with the AVX-512 flags of engine/CMakeLists.txt and
// called only when pool.cc has checked the CPU supports them.
//
// Nothing here may include codec/half.h or call an inline function
// shared with other files: see the note in kernels_impl.h.
// GCC 12 warns about _mm512_undefined_ps() inside _mm512_cvtph_ps (a
// deliberate self-initialization in its header); the warning is spurious.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "engine/kernels.h"

namespace embstore::engine {
namespace {

struct Avx512Traits {
  using V = __m512;
  static constexpr int kW = 16;

  static V Zero() { return _mm512_setzero_ps(); }
  static V Set1(float x) { return _mm512_set1_ps(x); }
  static V LoadF32(const void* p) { return _mm512_loadu_ps(p); }
  static V LoadF16(const void* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(static_cast<const __m256i*>(p)));
  }
  static V LoadBF16(const void* p) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(static_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
  static V LoadU8(const void* p) {
    return _mm512_cvtepi32_ps(
        _mm512_cvtepu8_epi32(_mm_loadu_si128(static_cast<const __m128i*>(p))));
  }
  static void StoreF32(void* p, V v) { _mm512_storeu_ps(p, v); }
  static V Add(V a, V b) { return _mm512_add_ps(a, b); }
  static V Mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V Div(V a, V b) { return _mm512_div_ps(a, b); }
  static V Fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static float FmaS(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
  // Spelled as compare + masked move so the "x > acc ? x : acc" contract
  // (NaN in either keeps acc; -0/+0 keep acc) does not rest on operand order.
  static V MaxGt(V x, V acc) {
    return _mm512_mask_mov_ps(acc, _mm512_cmp_ps_mask(x, acc, _CMP_GT_OQ), x);
  }
  static V Abs(V x) { return _mm512_abs_ps(x); }
  static bool AnyNan(V x) { return _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q) != 0; }
  static V NonzeroOnes(V x) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_NEQ_UQ),
                               _mm512_set1_ps(1.0f));
  }
  static float HSum(V x) { return _mm512_reduce_add_ps(x); }
  static float HMax(V x) { return _mm512_reduce_max_ps(x); }  // inputs: |x| without NaN

  struct DAcc {
    __m512d lo, hi;
  };
  static DAcc DZero() { return DAcc{_mm512_setzero_pd(), _mm512_setzero_pd()}; }
  static __m512d LowHalf(V x) { return _mm512_cvtps_pd(_mm512_castps512_ps256(x)); }
  static __m512d HighHalf(V x) {
    return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
  }
  static void AddToDouble(DAcc& a, V x) {
    a.lo = _mm512_add_pd(a.lo, LowHalf(x));
    a.hi = _mm512_add_pd(a.hi, HighHalf(x));
  }
  static double DSum(const DAcc& a) { return _mm512_reduce_add_pd(_mm512_add_pd(a.lo, a.hi)); }

  static float HalfToFloat(uint16_t h) { return _cvtsh_ss(h); }
  static void Prefetch(const void* p) { EMBSTORE_PREFETCH_T0(p); }
};

}  // namespace
}  // namespace embstore::engine

#include "engine/kernels_impl.h"

namespace embstore::engine {

PoolBagsFn Avx512PoolBagsKernel(DType dtype, PoolingMode mode, bool weighted, bool renorm) {
  return kernel_impl::SelectKernel<Avx512Traits>(dtype, mode, weighted, renorm);
}

}  // namespace embstore::engine
