// Internal: encoding float32 rows into a storage dtype and decoding them back.
#ifndef EMBSTORE_STORAGE_CONVERT_H_
#define EMBSTORE_STORAGE_CONVERT_H_

#include <cstdint>

#include "embstore/status.h"
#include "embstore/types.h"

namespace embstore::storage {

// Encodes `count` rows of `dim` floats into rows of `stride` bytes of `dtype`
// (padding zeroed), in parallel (TBB). int8 rows are quantized per row with
// scale = (max - min) / 255 and bias = min; a non-finite value cannot be
// quantized and gives InvalidArgument naming the row (first_row + i).
Status EncodeRows(const float* src, int64_t count, int64_t dim, DType dtype, size_t stride,
                  uint8_t* dst, int64_t first_row);

// Decodes one stored row to float32.
void DecodeRow(const uint8_t* row, int64_t dim, DType dtype, float* out);

}  // namespace embstore::storage

#endif  // EMBSTORE_STORAGE_CONVERT_H_
