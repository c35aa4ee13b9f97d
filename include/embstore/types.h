// Element types and the read-only view of a table's rows that the engine pools.
#ifndef EMBSTORE_TYPES_H_
#define EMBSTORE_TYPES_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "embstore/dtype.h"

namespace embstore {

// A read-only view of `rows` x `dim` elements. Row r starts at
// data + r * row_stride and is kRowAlignment-aligned when the view comes from
// a table file. The view does not own the memory: keep the TableSnapshot (or
// whatever owns the bytes) alive while it is used.
struct TableView {
  const uint8_t* data = nullptr;
  int64_t rows = 0;
  int64_t dim = 0;
  size_t row_stride = 0;  // bytes between consecutive rows
  DType dtype = DType::kF32;
  std::string_view name;  // table name, for error messages only

  const uint8_t* Row(int64_t r) const { return data + static_cast<size_t>(r) * row_stride; }
};

}  // namespace embstore

#endif  // EMBSTORE_TYPES_H_
