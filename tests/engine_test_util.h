// Test helpers for the engine suites: in-memory tables of every dtype and
// small conversions. Header-only; tests only.
#ifndef EMBSTORE_TESTS_ENGINE_TEST_UTIL_H_
#define EMBSTORE_TESTS_ENGINE_TEST_UTIL_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "codec/half.h"
#include "codec/row_codec.h"
#include "embstore/query.h"
#include "embstore/types.h"
#include "engine/plan.h"

namespace embstore::testing {

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
    const size_t payload = RowPayloadBytes(dtype, dim);
    stride_ = aligned_stride ? (payload + 63) / 64 * 64 : payload;
    if (stride_ == 0) stride_ = aligned_stride ? 64 : 1;
    bytes_.assign(stride_ * static_cast<size_t>(rows) + 128, 0xAB);
    const uintptr_t base = reinterpret_cast<uintptr_t>(bytes_.data());
    // Aligned tables start on 64 bytes; others deliberately 4 bytes past.
    offset_ = ((base + 63) & ~uintptr_t{63}) - base + (aligned_stride ? 0 : 4);
    values_.resize(static_cast<size_t>(rows * dim));
    for (int64_t r = 0; r < rows; ++r) {
      uint8_t* row = bytes_.data() + offset_ + r * stride_;
      // The stored row is what storage would write (its padding is left as
      // 0xAB, which no kernel may read); values() is its decoding.
      const codec::EncodeProblem problem =
          codec::EncodeRow(values.data() + r * dim, dim, dtype, payload, row);
      if (problem != codec::EncodeProblem::kNone) {
        std::fprintf(stderr, "TestTable: row %lld cannot be stored as %s\n",
                     static_cast<long long>(r), DTypeName(dtype));
        std::abort();
      }
      codec::DecodeRow(row, dim, dtype, values_.data() + r * dim);
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

}  // namespace embstore::testing

#endif  // EMBSTORE_TESTS_ENGINE_TEST_UTIL_H_
