// Element types of stored rows, and the one table that every layer (storage,
// engine, GPU, tools, tests) sizes, names and parses them from.
//
// Adding a dtype: append an enumerator and a kDTypes entry here, teach
// codec/row_codec.cc to encode and decode it, and give the kernels a path.
// Nothing else names the set of dtypes.
#ifndef EMBSTORE_DTYPE_H_
#define EMBSTORE_DTYPE_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <optional>
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

// Rows of a table file start on this many bytes.
inline constexpr size_t kRowAlignment = 64;

// What a dtype's rows look like: `dim` elements of element_bytes each, then
// row_trailer_bytes of per-row parameters (int8: scale and bias).
struct DTypeInfo {
  DType dtype;
  const char* name;       // short name, printed and accepted: "f32"
  const char* long_name;  // also accepted: "float32"
  size_t element_bytes;
  size_t row_trailer_bytes;
};

inline constexpr DTypeInfo kDTypes[] = {
    {DType::kF32, "f32", "float32", 4, 0},
    {DType::kF16, "f16", "float16", 2, 0},
    {DType::kBF16, "bf16", "bfloat16", 2, 0},
    {DType::kInt8Rowwise, "int8", "int8-rowwise", 1, 2 * sizeof(float)},
};

// Every dtype, in table order: what "for every dtype" loops iterate.
inline constexpr auto kAllDTypes = [] {
  std::array<DType, std::size(kDTypes)> all{};
  for (size_t i = 0; i < all.size(); ++i) all[i] = kDTypes[i].dtype;
  return all;
}();

// The entry of `dtype`, or nullptr for a value no entry has (a corrupt or
// newer file's code cast to DType).
constexpr const DTypeInfo* FindDType(DType dtype) {
  for (const DTypeInfo& d : kDTypes) {
    if (d.dtype == dtype) return &d;
  }
  return nullptr;
}

// Whether `code` (as persisted) names a dtype this build knows.
constexpr bool IsKnownDType(uint32_t code) {
  return FindDType(static_cast<DType>(code)) != nullptr;
}

// "f32", "f16", "bf16", "int8"; "unknown" for a value with no entry.
constexpr const char* DTypeName(DType dtype) {
  const DTypeInfo* d = FindDType(dtype);
  return d ? d->name : "unknown";
}

// A dtype by its short or long name.
constexpr std::optional<DType> ParseDType(std::string_view name) {
  for (const DTypeInfo& d : kDTypes) {
    if (name == d.name || name == d.long_name) return d.dtype;
  }
  return std::nullopt;
}

// Bytes a row of `dim` elements occupies before alignment padding; 0 for an
// unknown dtype or a negative dim.
constexpr size_t RowPayloadBytes(DType dtype, int64_t dim) {
  const DTypeInfo* d = FindDType(dtype);
  if (d == nullptr || dim < 0) return 0;
  return d->element_bytes * static_cast<size_t>(dim) + d->row_trailer_bytes;
}

// Row stride in a table file: payload rounded up to kRowAlignment.
constexpr size_t RowStrideBytes(DType dtype, int64_t dim) {
  const size_t p = RowPayloadBytes(dtype, dim);
  return (p + kRowAlignment - 1) / kRowAlignment * kRowAlignment;
}

}  // namespace embstore

#endif  // EMBSTORE_DTYPE_H_
