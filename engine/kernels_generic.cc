// Generic pooling kernels: portable C++ with GCC/Clang vector extensions
// (4 floats), compiled for the baseline ISA. The fallback on CPUs without
// AVX2 and on non-x86 machines; also a test subject of its own.
#include <cstdint>
#include <cstring>

#include "codec/half.h"
#include "engine/kernels.h"

namespace embstore::engine {
namespace {

typedef float V4 __attribute__((vector_size(16)));
typedef int32_t I4 __attribute__((vector_size(16)));

struct GenericTraits {
  using V = V4;
  static constexpr int kW = 4;

  static V Zero() { return V{0.0f, 0.0f, 0.0f, 0.0f}; }
  static V Set1(float x) { return V{x, x, x, x}; }
  static V LoadF32(const void* p) {
    V v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static V LoadF16(const void* p) {
    uint16_t h[4];
    std::memcpy(h, p, sizeof(h));
    return V{codec::HalfToFloat(h[0]), codec::HalfToFloat(h[1]), codec::HalfToFloat(h[2]),
             codec::HalfToFloat(h[3])};
  }
  static V LoadBF16(const void* p) {
    uint16_t h[4];
    std::memcpy(h, p, sizeof(h));
    return V{codec::BF16ToFloat(h[0]), codec::BF16ToFloat(h[1]), codec::BF16ToFloat(h[2]),
             codec::BF16ToFloat(h[3])};
  }
  static V LoadU8(const void* p) {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    return V{static_cast<float>(b[0]), static_cast<float>(b[1]), static_cast<float>(b[2]),
             static_cast<float>(b[3])};
  }
  static void StoreF32(void* p, V v) { std::memcpy(p, &v, sizeof(v)); }
  static V Add(V a, V b) { return a + b; }
  static V Mul(V a, V b) { return a * b; }
  static V Div(V a, V b) { return a / b; }
  // Not fused: the engine is built with -ffp-contract=off.
  static V Fma(V a, V b, V c) { return a * b + c; }
  static float FmaS(float a, float b, float c) { return a * b + c; }
  static V MaxGt(V x, V acc) { return x > acc ? x : acc; }
  static V Abs(V x) {
    I4 bits;
    std::memcpy(&bits, &x, sizeof(bits));
    bits &= I4{0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff};
    V r;
    std::memcpy(&r, &bits, sizeof(r));
    return r;
  }
  static bool AnyNan(V x) { return x[0] != x[0] || x[1] != x[1] || x[2] != x[2] || x[3] != x[3]; }
  static V NonzeroOnes(V x) {
    return V{x[0] != 0.0f ? 1.0f : 0.0f, x[1] != 0.0f ? 1.0f : 0.0f, x[2] != 0.0f ? 1.0f : 0.0f,
             x[3] != 0.0f ? 1.0f : 0.0f};
  }
  static float HSum(V x) { return (x[0] + x[1]) + (x[2] + x[3]); }
  static float HMax(V x) {
    float m = x[0];
    for (int i = 1; i < 4; ++i) m = x[i] > m ? x[i] : m;
    return m;
  }

  struct DAcc {
    double v[4];
  };
  static DAcc DZero() { return DAcc{{0, 0, 0, 0}}; }
  static void AddToDouble(DAcc& a, V x) {
    for (int i = 0; i < 4; ++i) a.v[i] += static_cast<double>(x[i]);
  }
  static double DSum(const DAcc& a) { return (a.v[0] + a.v[1]) + (a.v[2] + a.v[3]); }

  static float HalfToFloat(uint16_t h) { return codec::HalfToFloat(h); }
  static void Prefetch(const void* p) { EMBSTORE_PREFETCH_T0(p); }
};

}  // namespace
}  // namespace embstore::engine

#include "engine/kernels_impl.h"

namespace embstore::engine {

PoolBagsFn GenericPoolBagsKernel(DType dtype, PoolingMode mode, bool weighted, bool renorm) {
  return kernel_impl::SelectKernel<GenericTraits>(dtype, mode, weighted, renorm);
}

}  // namespace embstore::engine
