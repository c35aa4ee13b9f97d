// Internal: portable scalar conversions of stored elements to float32.
//
// Used by the reference kernels and the generic (non-x86-specific) kernels.
// The per-ISA kernel files (kernels_avx2.cc, kernels_avx512.cc) must NOT
// include this header: an inline function compiled there with -mavx2 could be
// the copy the linker keeps for everyone, and then run on a CPU without AVX2.
#ifndef EMBSTORE_ENGINE_DTYPE_CONVERT_H_
#define EMBSTORE_ENGINE_DTYPE_CONVERT_H_

#include <cstdint>
#include <cstring>

namespace embstore::engine {

// IEEE binary16 -> binary32, exact for every input (subnormals, inf, NaN;
// the NaN payload is kept in the high mantissa bits).
inline float HalfToFloat(uint16_t h) {
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
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// bfloat16 is the upper half of a binary32: the conversion is exact.
inline float BFloat16ToFloat(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// Reads a float stored at an arbitrary (possibly unaligned) address.
inline float LoadUnalignedFloat(const uint8_t* p) {
  float f;
  std::memcpy(&f, p, sizeof(f));
  return f;
}

}  // namespace embstore::engine

#endif  // EMBSTORE_ENGINE_DTYPE_CONVERT_H_
