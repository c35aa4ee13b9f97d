#include "storage/convert.h"

#include <tbb/parallel_for.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>

#include "codec/row_codec.h"

namespace embstore::storage {
Status EncodeRows(const float* src, int64_t count, int64_t dim, DType dtype, size_t stride,
                  uint8_t* dst, int64_t first_row) {
  std::atomic<int64_t> bad_row{-1};
  std::atomic<int> bad_problem{0};
  tbb::parallel_for(
      tbb::blocked_range<int64_t>(0, count, 256), [&](const tbb::blocked_range<int64_t>& r) {
        for (int64_t i = r.begin(); i != r.end(); ++i) {
          const codec::EncodeProblem p = codec::EncodeRow(src + i * dim, dim, dtype, stride,
                                                          dst + static_cast<size_t>(i) * stride);
          if (p != codec::EncodeProblem::kNone) {
            int64_t expected = -1;
            if (bad_row.compare_exchange_strong(expected, i))
              bad_problem.store(static_cast<int>(p));
          }
        }
      });
  if (bad_row.load() >= 0) {
    const std::string row = "row " + std::to_string(first_row + bad_row.load());
    if (bad_problem.load() == static_cast<int>(codec::EncodeProblem::kRangeOverflow)) {
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

}  // namespace embstore::storage
