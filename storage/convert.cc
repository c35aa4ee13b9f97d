#include "storage/convert.h"

#include <tbb/parallel_for.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include "storage/half.h"

namespace embstore::storage {
namespace {

// Returns false when the row holds a non-finite value (int8 only).
bool EncodeRow(const float* src, int64_t dim, DType dtype, size_t stride, uint8_t* dst) {
  std::memset(dst, 0, stride);
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, src, sizeof(float) * static_cast<size_t>(dim));
      return true;
    case DType::kF16:
      for (int64_t j = 0; j < dim; ++j) {
        uint16_t h = FloatToHalf(src[j]);
        std::memcpy(dst + 2 * j, &h, 2);
      }
      return true;
    case DType::kBF16:
      for (int64_t j = 0; j < dim; ++j) {
        uint16_t b = FloatToBF16(src[j]);
        std::memcpy(dst + 2 * j, &b, 2);
      }
      return true;
    case DType::kInt8Rowwise: {
      float lo = src[0], hi = src[0];
      for (int64_t j = 0; j < dim; ++j) {
        if (!std::isfinite(src[j])) return false;
        lo = std::min(lo, src[j]);
        hi = std::max(hi, src[j]);
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
      return true;
    }
  }
  return true;
}

}  // namespace

Status EncodeRows(const float* src, int64_t count, int64_t dim, DType dtype, size_t stride,
                  uint8_t* dst, int64_t first_row) {
  std::atomic<int64_t> bad_row{-1};
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, count, 256),
                    [&](const tbb::blocked_range<int64_t>& r) {
                      for (int64_t i = r.begin(); i != r.end(); ++i) {
                        if (!EncodeRow(src + i * dim, dim, dtype, stride,
                                       dst + static_cast<size_t>(i) * stride)) {
                          int64_t expected = -1;
                          bad_row.compare_exchange_strong(expected, i);
                        }
                      }
                    });
  if (bad_row.load() >= 0) {
    return Status::InvalidArgument("row " + std::to_string(first_row + bad_row.load()) +
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
