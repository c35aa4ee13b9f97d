#include "codec/row_codec.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "codec/half.h"

namespace embstore::codec {
namespace {

void StoreU16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, sizeof(v)); }
uint16_t LoadU16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

EncodeProblem EncodeInt8Rowwise(const float* src, int64_t dim, uint8_t* dst) {
  float lo = dim > 0 ? src[0] : 0.0f, hi = lo;
  for (int64_t j = 0; j < dim; ++j) {
    if (!std::isfinite(src[j])) return EncodeProblem::kNonFinite;
    lo = std::min(lo, src[j]);
    hi = std::max(hi, src[j]);
  }
  // The dequantized top, code 255 * scale + bias, must stay finite in
  // float32: a row spanning more than float32's range (from -3e38 to 3e38)
  // cannot be quantized row-wise.
  if (static_cast<double>(hi) - static_cast<double>(lo) >
      0.999 * static_cast<double>(std::numeric_limits<float>::max())) {
    return EncodeProblem::kRangeOverflow;
  }
  const float range = hi - lo;
  const float scale = range > 0 ? range / 255.0f : 1.0f;
  const float inv = 1.0f / scale;
  for (int64_t j = 0; j < dim; ++j) {
    const float q = std::nearbyint((src[j] - lo) * inv);
    dst[j] = static_cast<uint8_t>(std::clamp(q, 0.0f, 255.0f));
  }
  std::memcpy(dst + dim, &scale, sizeof(scale));
  std::memcpy(dst + dim + sizeof(float), &lo, sizeof(lo));
  return EncodeProblem::kNone;
}

}  // namespace

EncodeProblem EncodeRow(const float* src, int64_t dim, DType dtype, size_t stride, uint8_t* dst) {
  std::memset(dst, 0, stride);
  switch (dtype) {
    case DType::kF32:
      if (dim > 0) std::memcpy(dst, src, sizeof(float) * static_cast<size_t>(dim));
      return EncodeProblem::kNone;
    case DType::kF16:
      for (int64_t j = 0; j < dim; ++j) StoreU16(dst + 2 * j, FloatToHalf(src[j]));
      return EncodeProblem::kNone;
    case DType::kBF16:
      for (int64_t j = 0; j < dim; ++j) StoreU16(dst + 2 * j, FloatToBF16(src[j]));
      return EncodeProblem::kNone;
    case DType::kInt8Rowwise:
      return EncodeInt8Rowwise(src, dim, dst);
  }
  return EncodeProblem::kNone;
}

void DecodeRow(const uint8_t* row, int64_t dim, DType dtype, float* out) {
  switch (dtype) {
    case DType::kF32:
      if (dim > 0) std::memcpy(out, row, sizeof(float) * static_cast<size_t>(dim));
      return;
    case DType::kF16:
      for (int64_t j = 0; j < dim; ++j) out[j] = HalfToFloat(LoadU16(row + 2 * j));
      return;
    case DType::kBF16:
      for (int64_t j = 0; j < dim; ++j) out[j] = BF16ToFloat(LoadU16(row + 2 * j));
      return;
    case DType::kInt8Rowwise: {
      const float scale = LoadF32(row + dim);
      const float bias = LoadF32(row + dim + sizeof(float));
      for (int64_t j = 0; j < dim; ++j) {
        const float scaled = static_cast<float>(row[j]) * scale;
        out[j] = scaled + bias;
      }
      return;
    }
  }
}

}  // namespace embstore::codec
