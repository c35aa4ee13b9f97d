#include "storage/convert.h"

#include <tbb/parallel_for.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>

#include "storage/half.h"

namespace embstore::storage {
namespace {

// Why a row cannot be encoded (int8 only).
enum class RowProblem { kNone, kNonFinite, kRangeOverflow };

RowProblem EncodeRow(const float* src, int64_t dim, DType dtype, size_t stride, uint8_t* dst) {
  std::memset(dst, 0, stride);
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, src, sizeof(float) * static_cast<size_t>(dim));
      return RowProblem::kNone;
    case DType::kF16:
      for (int64_t j = 0; j < dim; ++j) {
        uint16_t h = FloatToHalf(src[j]);
        std::memcpy(dst + 2 * j, &h, 2);
      }
      return RowProblem::kNone;
    case DType::kBF16:
      for (int64_t j = 0; j < dim; ++j) {
        uint16_t b = FloatToBF16(src[j]);
        std::memcpy(dst + 2 * j, &b, 2);
      }
      return RowProblem::kNone;
    case DType::kInt8Rowwise: {
      float lo = src[0], hi = src[0];
      for (int64_t j = 0; j < dim; ++j) {
        if (!std::isfinite(src[j])) return RowProblem::kNonFinite;
        lo = std::min(lo, src[j]);
        hi = std::max(hi, src[j]);
      }
      // The dequantized top, code 255 * scale + bias, must stay finite in
      // float32: a row spanning more than float32's range (from -3e38 to
      // 3e38) cannot be quantized row-wise.
      if (static_cast<double>(hi) - static_cast<double>(lo) >
          0.999 * static_cast<double>(std::numeric_limits<float>::max())) {
        return RowProblem::kRangeOverflow;
      }
      const float range = hi - lo;
      const float scale = range > 0 ? range / 255.0f : 1.0f;
      const float inv = 1.0f / scale;
      for (int64_t j = 0; j < dim; ++j) {
        const float q = std::nearbyint((src[j] - lo) * inv);
        dst[j] = static_cast<uint8_t>(std::clamp(q, 0.0f, 255.0f));
      }
      std::memcpy(dst + dim, &scale, 4);
      std::memcpy(dst + dim + 4, &lo, 4);
      return RowProblem::kNone;
    }
  }
  return RowProblem::kNone;
}

}  // namespace

Status EncodeRows(const float* src, int64_t count, int64_t dim, DType dtype, size_t stride,
                  uint8_t* dst, int64_t first_row) {
  std::atomic<int64_t> bad_row{-1};
  std::atomic<int> bad_problem{0};
  tbb::parallel_for(
      tbb::blocked_range<int64_t>(0, count, 256), [&](const tbb::blocked_range<int64_t>& r) {
        for (int64_t i = r.begin(); i != r.end(); ++i) {
          const RowProblem p =
              EncodeRow(src + i * dim, dim, dtype, stride, dst + static_cast<size_t>(i) * stride);
          if (p != RowProblem::kNone) {
            int64_t expected = -1;
            if (bad_row.compare_exchange_strong(expected, i))
              bad_problem.store(static_cast<int>(p));
          }
        }
      });
  if (bad_row.load() >= 0) {
    const std::string row = "row " + std::to_string(first_row + bad_row.load());
    if (bad_problem.load() == static_cast<int>(RowProblem::kRangeOverflow)) {
      return Status::InvalidArgument(
          row +
          " spans a range (max - min) beyond float32's largest value, which int8 "
          "row-wise quantization cannot represent (its dequantized values would overflow)");
    }
    return Status::InvalidArgument(row +
                                   " holds a non-finite value, which int8 row-wise quantization "
                                   "cannot represent");
  }
  return Status::OK();
}

void DecodeRow(const uint8_t* row, int64_t dim, DType dtype, float* out) {
  switch (dtype) {
    case DType::kF32:
      std::memcpy(out, row, sizeof(float) * static_cast<size_t>(dim));
      return;
    case DType::kF16:
      for (int64_t j = 0; j < dim; ++j) {
        uint16_t h;
        std::memcpy(&h, row + 2 * j, 2);
        out[j] = HalfToFloat(h);
      }
      return;
    case DType::kBF16:
      for (int64_t j = 0; j < dim; ++j) {
        uint16_t b;
        std::memcpy(&b, row + 2 * j, 2);
        out[j] = BF16ToFloat(b);
      }
      return;
    case DType::kInt8Rowwise: {
      float scale, bias;
      std::memcpy(&scale, row + dim, 4);
      std::memcpy(&bias, row + dim + 4, 4);
      for (int64_t j = 0; j < dim; ++j) out[j] = static_cast<float>(row[j]) * scale + bias;
      return;
    }
  }
}

}  // namespace embstore::storage
