// Element types and the read-only view of a table's rows that the engine pools.
#ifndef EMBSTORE_TYPES_H_
#define EMBSTORE_TYPES_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace embstore {

// Storage dtype of a table's rows. PERSISTED in table file headers and the
// catalog: never renumber, only append.
enum class DType : uint32_t {
  kF32 = 1,
  kF16 = 2,          // IEEE binary16
  kBF16 = 3,         // bfloat16 (upper half of an f32)
  kInt8Rowwise = 4,  // per row: `dim` uint8 codes, then f32 scale, then f32 bias;
                     // value = code * scale + bias
};

inline constexpr size_t kRowAlignment = 64;

// "f32", "f16", "bf16", "int8".
inline const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "f32";
    case DType::kF16:
      return "f16";
    case DType::kBF16:
      return "bf16";
    case DType::kInt8Rowwise:
      return "int8";
  }
  return "unknown";
}
inline std::optional<DType> ParseDType(std::string_view name) {
  if (name == "f32" || name == "float32") return DType::kF32;
  if (name == "f16" || name == "float16") return DType::kF16;
  if (name == "bf16" || name == "bfloat16") return DType::kBF16;
  if (name == "int8" || name == "int8-rowwise") return DType::kInt8Rowwise;
  return std::nullopt;
}
inline bool IsKnownDType(uint32_t v) { return v >= 1 && v <= 4; }
// Bytes a row of `dim` elements occupies before alignment padding.
inline size_t RowPayloadBytes(DType dtype, int64_t dim) {
  const size_t d = static_cast<size_t>(dim);
  switch (dtype) {
    case DType::kF32:
      return 4 * d;
    case DType::kF16:
    case DType::kBF16:
      return 2 * d;
    case DType::kInt8Rowwise:
      return d + 8;  // codes, f32 scale, f32 bias
  }
  return 0;
}
// Row stride in a table file: payload rounded up to kRowAlignment.
inline size_t RowStrideBytes(DType dtype, int64_t dim) {
  const size_t p = RowPayloadBytes(dtype, dim);
  return (p + kRowAlignment - 1) / kRowAlignment * kRowAlignment;
}

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
