// Internal: how one table row is laid out in a slot of the GPU row cache.
//
// Plain C++ (no CUDA): included by the host code, the device kernels and the
// CPU unit tests alike.
//
// A slot holds the row's stored elements (f32/f16/bf16 values or int8 codes,
// never dequantized: the kernels dequantize on load) zero-padded to a whole
// number of 16-byte vectors, so every kernel load is one aligned 16-byte
// access whatever `dim` is. Int8 rows keep their f32 scale and bias in a side
// array (two floats per slot), and every slot has one f32 max_norm scale.
//
// Thread-safety: values; no state.
#ifndef EMBSTORE_CUDA_SLOT_LAYOUT_H_
#define EMBSTORE_CUDA_SLOT_LAYOUT_H_

#include <cassert>
#include <cstdint>

#include "embstore/types.h"

namespace embstore::cuda {

inline constexpr int kVectorBytes = 16;

struct SlotLayout {
  DType dtype = DType::kF32;
  int64_t dim = 0;
  int elem_bytes = 4;        // stored bytes per element (int8: 1)
  int vec_elems = 4;         // elements per 16-byte vector: 4, 8 (f16/bf16) or 16 (int8)
  int64_t vecs_per_row = 0;  // ceil(dim / vec_elems)
  int64_t row_bytes = 0;     // vecs_per_row * 16: the elements, zero-padded
  bool quantized = false;    // int8 rowwise: scale and bias live in the side array

  // Device bytes one slot costs: the padded row, the int8 scale and bias, and
  // the max_norm scale.
  int64_t slot_bytes() const { return row_bytes + (quantized ? 8 : 0) + 4; }
  // Bytes copied to the device per row filled: the padded row and the int8
  // scale and bias (CacheStats::bytes_copied counts these).
  int64_t transfer_bytes() const { return row_bytes + (quantized ? 8 : 0); }
  // Bytes of the stored elements of one row (no scale/bias, no padding).
  int64_t element_bytes() const { return dim * elem_bytes; }

  bool operator==(const SlotLayout& o) const {
    return dtype == o.dtype && dim == o.dim;  // everything else follows from these
  }
  bool operator!=(const SlotLayout& o) const { return !(*this == o); }
};

// REQUIRES: dim >= 0 and a known dtype (an unknown one is laid out as f32;
// callers validate the table first).
inline SlotLayout MakeSlotLayout(DType dtype, int64_t dim) {
  SlotLayout l;
  l.dtype = dtype;
  l.dim = dim;
  const DTypeInfo* info = FindDType(dtype);
  assert(info != nullptr);
  l.elem_bytes = static_cast<int>(info != nullptr ? info->element_bytes : sizeof(float));
  l.vec_elems = kVectorBytes / l.elem_bytes;
  l.vecs_per_row = (dim + l.vec_elems - 1) / l.vec_elems;
  l.row_bytes = l.vecs_per_row * kVectorBytes;
  l.quantized = dtype == DType::kInt8Rowwise;
  return l;
}

// Threads that cooperate on one row or bag: the next power of two >=
// vecs_per_row, at most a warp (32), at least 1. A group never straddles a
// warp, so its lanes can reduce with shuffles of that width.
inline int LanesPerRow(int64_t vecs_per_row) {
  int lanes = 1;
  while (lanes < 32 && lanes < vecs_per_row) lanes *= 2;
  return lanes;
}

}  // namespace embstore::cuda

#endif  // EMBSTORE_CUDA_SLOT_LAYOUT_H_
