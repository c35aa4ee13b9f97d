// Internal: encoding float32 rows into a storage dtype, in parallel (one row at a time
// by the row codec, codec/row_codec.h).
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

}  // namespace embstore::storage

#endif  // EMBSTORE_STORAGE_CONVERT_H_
