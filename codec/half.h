// Scalar IEEE binary16 and bfloat16 <-> binary32 conversions: the one copy
// that storage, the reference kernels, the GPU host code and the tests use.
//
// Under nvcc the float-producing functions are __host__ __device__ too (the
// GPU's pool math decodes with them on the host side of its tests). The SIMD
// kernel files (engine/kernels_avx2.cc, kernels_avx512.cc) must NOT include
// this header: an inline function compiled there with -mavx2 could be the
// copy the linker keeps for everyone, and then run on a CPU without AVX2.
#ifndef EMBSTORE_CODEC_HALF_H_
#define EMBSTORE_CODEC_HALF_H_

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define EMBSTORE_CODEC_HD __host__ __device__ inline
#else
#define EMBSTORE_CODEC_HD inline
#endif

namespace embstore::codec {

EMBSTORE_CODEC_HD float BitsToFloat(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
EMBSTORE_CODEC_HD uint32_t FloatToBits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
}

// binary16 -> binary32, exact for every input (subnormals, inf, NaN; the NaN
// payload is kept in the high mantissa bits).
EMBSTORE_CODEC_HD float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1f) {  // inf or NaN
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {  // normal
    bits = sign | ((exponent + (127 - 15)) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {  // +-0
    bits = sign;
  } else {  // subnormal: renormalize
    uint32_t e = 127 - 15 + 1;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --e;
    }
    bits = sign | (e << 23) | ((mantissa & 0x3ffu) << 13);
  }
  return BitsToFloat(bits);
}

// binary32 -> binary16, round to nearest even; overflow gives inf; NaN stays
// a quiet NaN.
inline uint16_t FloatToHalf(float f) {
  const uint32_t x = FloatToBits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) {  // inf or NaN
    return static_cast<uint16_t>(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
  }
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520
  if (ax < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
    // In units of 2^-24 (an exact power-of-two scaling), rounded to nearest
    // even by the default rounding mode.
    const float scaled = BitsToFloat(ax) * 16777216.0f;
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(std::nearbyint(scaled)));
  }
  const uint32_t mantissa = ax & 0x7fffffu;
  const uint32_t exponent = (ax >> 23) - 112;
  uint32_t h = (exponent << 10) | (mantissa >> 13);
  const uint32_t rest = mantissa & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is right
  return static_cast<uint16_t>(sign | h);
}

// bfloat16 is the upper half of a binary32: exact.
EMBSTORE_CODEC_HD float BF16ToFloat(uint16_t b) {
  return BitsToFloat(static_cast<uint32_t>(b) << 16);
}

// binary32 -> bfloat16, round to nearest even; NaN stays a quiet NaN.
inline uint16_t FloatToBF16(float f) {
  uint32_t x = FloatToBits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

}  // namespace embstore::codec

#endif  // EMBSTORE_CODEC_HALF_H_
