// AVX2 + FMA + F16C pooling kernels (8 floats per vector). Compiled with
// -mavx2 -mfma -mf16c (engine/CMakeLists.txt) and called only when
// pool.cc has checked the CPU supports them.
//
// Nothing here may include codec/half.h or call an inline function
// shared with other files: see the note in kernels_impl.h.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "engine/kernels.h"

namespace embstore::engine {
namespace {

struct Avx2Traits {
  using V = __m256;
  static constexpr int kW = 8;

  static V Zero() { return _mm256_setzero_ps(); }
  static V Set1(float x) { return _mm256_set1_ps(x); }
  static V LoadF32(const void* p) { return _mm256_loadu_ps(static_cast<const float*>(p)); }
  static V LoadF16(const void* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(static_cast<const __m128i*>(p)));
  }
  static V LoadBF16(const void* p) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(static_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  static V LoadU8(const void* p) {
    return _mm256_cvtepi32_ps(
        _mm256_cvtepu8_epi32(_mm_loadl_epi64(static_cast<const __m128i*>(p))));
  }
  static void StoreF32(void* p, V v) { _mm256_storeu_ps(static_cast<float*>(p), v); }
  static V Add(V a, V b) { return _mm256_add_ps(a, b); }
  static V Mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V Div(V a, V b) { return _mm256_div_ps(a, b); }
  static V Fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static float FmaS(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
  // MAXPS returns its second operand unless the first is strictly greater:
  // exactly "x > acc ? x : acc", NaN in either keeping acc, -0/+0 keeping acc.
  static V MaxGt(V x, V acc) { return _mm256_max_ps(x, acc); }
  static V Abs(V x) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x); }
  static bool AnyNan(V x) { return _mm256_movemask_ps(_mm256_cmp_ps(x, x, _CMP_UNORD_Q)) != 0; }
  static V NonzeroOnes(V x) {
    return _mm256_and_ps(_mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_NEQ_UQ), _mm256_set1_ps(1.0f));
  }
  static float HSum(V x) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
  }
  // Inputs are absolute values without NaN.
  static float HMax(V x) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
  }

  struct DAcc {
    __m256d lo, hi;
  };
  static DAcc DZero() { return DAcc{_mm256_setzero_pd(), _mm256_setzero_pd()}; }
  static void AddToDouble(DAcc& a, V x) {
    a.lo = _mm256_add_pd(a.lo, _mm256_cvtps_pd(_mm256_castps256_ps128(x)));
    a.hi = _mm256_add_pd(a.hi, _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1)));
  }
  static double DSum(const DAcc& a) {
    const __m256d s = _mm256_add_pd(a.lo, a.hi);
    __m128d t = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
    t = _mm_add_sd(t, _mm_unpackhi_pd(t, t));
    return _mm_cvtsd_f64(t);
  }

  static float HalfToFloat(uint16_t h) { return _cvtsh_ss(h); }
  static void Prefetch(const void* p) { EMBSTORE_PREFETCH_T0(p); }
};

}  // namespace
}  // namespace embstore::engine

#include "engine/kernels_impl.h"

namespace embstore::engine {

PoolBagsFn Avx2PoolBagsKernel(DType dtype, PoolingMode mode, bool weighted, bool renorm) {
  return kernel_impl::SelectKernel<Avx2Traits>(dtype, mode, weighted, renorm);
}

}  // namespace embstore::engine
