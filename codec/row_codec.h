// The row codec: how one stored row of each dtype is encoded from float32 and
// decoded back. Storage writes rows with it, the reference kernels and every
// tool read rows with it, and the tests build their tables with it, so a
// stored byte means the same thing everywhere. Sizes come from the dtype
// table (include/embstore/dtype.h); scalar fp16/bf16 from codec/half.h.
//
// Decoding is exactly what the fast kernels compute per element: f16/bf16
// exactly, int8 as float(code) * scale then + bias (two roundings, no FMA:
// this library is built with -ffp-contract=off).
#ifndef EMBSTORE_CODEC_ROW_CODEC_H_
#define EMBSTORE_CODEC_ROW_CODEC_H_

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "embstore/dtype.h"

namespace embstore::codec {

// Why a row cannot be encoded. Only int8 refuses rows.
enum class EncodeProblem {
  kNone,
  kNonFinite,      // int8: a NaN or inf cannot be quantized
  kRangeOverflow,  // int8: max - min beyond float32, dequantized values would overflow
};

// Encodes `dim` floats into `stride` bytes of `dtype` at dst (the payload,
// then zero padding). REQUIRES: stride >= RowPayloadBytes(dtype, dim).
// int8 rows are quantized with scale = (max - min) / 255 (1 when max == min)
// and bias = min, codes rounded to nearest even.
EncodeProblem EncodeRow(const float* src, int64_t dim, DType dtype, size_t stride, uint8_t* dst);

// Decodes one stored row of `dim` elements to float32. An unknown dtype
// decodes to nothing (callers validate dtypes first).
void DecodeRow(const uint8_t* row, int64_t dim, DType dtype, float* out);

// A float stored at an arbitrary (possibly unaligned) address.
inline float LoadF32(const uint8_t* p) {
  float f;
  std::memcpy(&f, p, sizeof(f));
  return f;
}

}  // namespace embstore::codec

#endif  // EMBSTORE_CODEC_ROW_CODEC_H_
