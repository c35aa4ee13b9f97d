// Test helpers for the engine suites: in-memory tables of every dtype and
// small conversions. Header-only; tests only.
#ifndef EMBSTORE_TESTS_ENGINE_TEST_UTIL_H_
#define EMBSTORE_TESTS_ENGINE_TEST_UTIL_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "embstore/query.h"
#include "embstore/types.h"
#include "engine/dtype_convert.h"
#include "engine/plan.h"

namespace embstore::test {

// binary32 -> binary16, round to nearest even (overflow -> inf).
inline uint16_t FloatToHalf(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof(x));
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) return sign | (abs > 0x7f800000u ? 0x7e00u : 0x7c00u);
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: inf
  if (abs < 0x38800000u) {                        // below the smallest normal half
    const float a = std::fabs(f);
    // Subnormal halves are multiples of 2^-24; nearbyint rounds to even.
    return sign | static_cast<uint16_t>(std::nearbyint(a * 16777216.0f));
  }
  const uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);
  return sign | static_cast<uint16_t>((rounded - 0x38000000u) >> 13);
}

// binary32 -> bfloat16, round to nearest even.
inline uint16_t FloatToBf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof(x));
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

// A table held in memory in the engine's storage format. values() holds the
// dequantized rows: exactly what a kernel is meant to see.
class TestTable {
 public:
  TestTable() = default;
  // Stores `values` (rows x dim, row-major) as `dtype`. aligned_stride: rows
  // 64-byte aligned with a padded stride (as table files are); otherwise a
  // tight stride, leaving rows unaligned.
  TestTable(const std::vector<float>& values, int64_t rows, int64_t dim, DType dtype,
            bool aligned_stride = true, std::string name = "items")
      : name_(std::move(name)), rows_(rows), dim_(dim), dtype_(dtype) {
    const size_t payload = engine::EngineRowPayloadBytes(dtype, dim);
    stride_ = aligned_stride ? (payload + 63) / 64 * 64 : payload;
    if (stride_ == 0) stride_ = aligned_stride ? 64 : 1;
    bytes_.assign(stride_ * static_cast<size_t>(rows) + 128, 0xAB);
    const uintptr_t base = reinterpret_cast<uintptr_t>(bytes_.data());
    // Aligned tables start on 64 bytes; others deliberately 4 bytes past.
    offset_ = ((base + 63) & ~uintptr_t{63}) - base + (aligned_stride ? 0 : 4);
    values_.resize(static_cast<size_t>(rows * dim));
    for (int64_t r = 0; r < rows; ++r) {
      uint8_t* row = bytes_.data() + offset_ + r * stride_;
      const float* src = values.data() + r * dim;
      float* deq = values_.data() + r * dim;
      switch (dtype) {
        case DType::kF32:
          if (dim > 0) {
            std::memcpy(row, src, 4 * dim);
            std::memcpy(deq, src, 4 * dim);
          }
          break;
        case DType::kF16:
          for (int64_t d = 0; d < dim; ++d) {
            const uint16_t h = FloatToHalf(src[d]);
            std::memcpy(row + 2 * d, &h, 2);
            deq[d] = engine::HalfToFloat(h);
          }
          break;
        case DType::kBF16:
          for (int64_t d = 0; d < dim; ++d) {
            const uint16_t h = FloatToBf16(src[d]);
            std::memcpy(row + 2 * d, &h, 2);
            deq[d] = engine::BFloat16ToFloat(h);
          }
          break;
        case DType::kInt8Rowwise: {
          float lo = 0, hi = 0;
          if (dim > 0) {
            lo = *std::min_element(src, src + dim);
            hi = *std::max_element(src, src + dim);
          }
          const float scale = hi > lo ? (hi - lo) / 255.0f : 1.0f;
          const float bias = lo;
          for (int64_t d = 0; d < dim; ++d) {
            const float q = std::nearbyint((src[d] - bias) / scale);
            row[d] = static_cast<uint8_t>(std::clamp(q, 0.0f, 255.0f));
            const float scaled = static_cast<float>(row[d]) * scale;
            deq[d] = scaled + bias;
          }
          std::memcpy(row + dim, &scale, 4);
          std::memcpy(row + dim + 4, &bias, 4);
          break;
        }
      }
    }
  }

  TableView view() const {
    TableView v;
    v.data = bytes_.data() + offset_;
    v.rows = rows_;
    v.dim = dim_;
    v.row_stride = stride_;
    v.dtype = dtype_;
    v.name = name_;
    return v;
  }
  const std::vector<float>& values() const { return values_; }
  const float* Row(int64_t r) const { return values_.data() + r * dim_; }
  // The bytes of the rows, to check nothing was modified.
  std::vector<uint8_t> Bytes() const {
    return std::vector<uint8_t>(bytes_.begin() + offset_,
                                bytes_.begin() + offset_ + stride_ * rows_);
  }
  int64_t rows() const { return rows_; }
  int64_t dim() const { return dim_; }

 private:
  std::string name_;
  int64_t rows_ = 0, dim_ = 0;
  DType dtype_ = DType::kF32;
  size_t stride_ = 0, offset_ = 0;
  std::vector<uint8_t> bytes_;
  std::vector<float> values_;
};

inline TestTable RandomTable(int64_t rows, int64_t dim, DType dtype, std::mt19937_64& rng,
                             bool aligned_stride = true) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> values(static_cast<size_t>(rows * dim));
  for (float& v : values) v = u(rng);
  return TestTable(values, rows, dim, dtype, aligned_stride);
}

inline const char* DTypeLabel(DType dtype) { return DTypeName(dtype); }

// |a - b| <= tol * max(1, |b|); NaNs must match NaNs.
inline bool Close(float a, float b, double tol) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return std::fabs(static_cast<double>(a) - b) <= tol * std::max(1.0, std::fabs(double{b}));
}

}  // namespace embstore::test

#endif  // EMBSTORE_TESTS_ENGINE_TEST_UTIL_H_
