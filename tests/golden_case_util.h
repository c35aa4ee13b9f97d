// Shared helpers for tests that read tests/golden/*.json cases.
#ifndef EMBSTORE_TESTS_GOLDEN_CASE_UTIL_H_
#define EMBSTORE_TESTS_GOLDEN_CASE_UTIL_H_

#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "embstore/query.h"

namespace embstore::testing {

// A number, or one of the strings "inf", "-inf", "nan" the generator writes
// for values JSON cannot hold.
inline double NumberOrInf(const nlohmann::json& v) {
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (s == "inf") return std::numeric_limits<double>::infinity();
    if (s == "-inf") return -std::numeric_limits<double>::infinity();
    return std::numeric_limits<double>::quiet_NaN();
  }
  return v.get<double>();
}

// c[name], or null when the case has no such field.
inline const nlohmann::json& Field(const nlohmann::json& c, const char* name) {
  static const nlohmann::json kNull;
  auto it = c.find(name);
  return it == c.end() ? kNull : *it;
}

// Ids or offsets as the case's dtype asks ("int32" or "int64").
struct TypedIds {
  std::vector<int64_t> i64;
  std::vector<int32_t> i32;
  bool is32 = false;
  TypedIds() = default;
  TypedIds(const nlohmann::json& values, const nlohmann::json& dtype) {
    is32 = dtype.is_string() && dtype.get<std::string>() == "int32";
    for (const nlohmann::json& v : values) i64.push_back(v.get<int64_t>());
    i32.assign(i64.begin(), i64.end());
  }
  IndexArray Array() const {
    return is32 ? IndexArray(std::span<const int32_t>(i32))
                : IndexArray(std::span<const int64_t>(i64));
  }
};

}  // namespace embstore::testing

#endif  // EMBSTORE_TESTS_GOLDEN_CASE_UTIL_H_
