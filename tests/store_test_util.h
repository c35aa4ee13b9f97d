// Helpers shared by the Store tests (store_test.cc, store_catalog_test.cc):
// opening, fill patterns, reading back, and the files of a store directory.
#ifndef EMBSTORE_TESTS_STORE_TEST_UTIL_H_
#define EMBSTORE_TESTS_STORE_TEST_UTIL_H_

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <memory>
#include <set>
#include <string>

#include "embstore/store.h"

namespace embstore {

inline std::unique_ptr<Store> OpenOrDie(const std::string& dir,
                                        StoreOptions options = StoreOptions()) {
  auto s = Store::Open(dir, options);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(s).value() : nullptr;
}

// A fill function producing row r, column j = r * 1000 + j + tag.
inline RowFillFn Pattern(int64_t dim, float tag) {
  return [dim, tag](int64_t first, int64_t count, float* out) {
    for (int64_t i = 0; i < count; ++i) {
      for (int64_t j = 0; j < dim; ++j)
        out[i * dim + j] = static_cast<float>((first + i) * 1000 + j) + tag;
    }
    return Status::OK();
  };
}

inline float At(const TableSnapshot& s, int64_t r, int64_t j) {
  return reinterpret_cast<const float*>(s.view().Row(r))[j];
}

inline int CountFiles(const std::string& dir) {
  int n = 0;
  for (auto& e : std::filesystem::directory_iterator(dir)) n += e.is_regular_file() ? 1 : 0;
  return n;
}

inline std::set<std::string> FilesIn(const std::string& dir) {
  std::set<std::string> out;
  for (auto& e : std::filesystem::directory_iterator(dir)) out.insert(e.path().filename());
  return out;
}

// The files the catalog names: current and retained versions of every entry.
inline std::set<std::string> CatalogFiles(Store& store) {
  std::set<std::string> out;
  auto entries = store.ListEntries();
  EXPECT_TRUE(entries.ok());
  if (!entries.ok()) return out;
  for (const TableEntry& e : *entries)
    for (const TableInfo& v : e.versions) out.insert(v.file);
  return out;
}

inline StoreOptions Retaining(int n) {
  StoreOptions o;
  o.retain_versions = n;
  return o;
}

// The VmFlags of the mapping that holds `p` ("" when not found).
inline std::string VmFlagsOf(const void* p) {
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool inside = false;
  const auto addr = reinterpret_cast<uintptr_t>(p);
  while (std::getline(smaps, line)) {
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 && line.find('-') < 17) {
      inside = lo <= addr && addr < hi;
    } else if (inside && line.rfind("VmFlags:", 0) == 0) {
      return line + " ";
    }
  }
  return "";
}

// The spec of a small table: 10 rows x 4 float32 columns; `replace` as given.
inline TableSpec SmallSpec(bool replace) { return TableSpec{10, 4, DType::kF32, "", replace, {}}; }

// A store opened at `dir` holding table "t" written by `spec` with
// Pattern(4, 0); nullptr (and a test failure) when either step fails.
inline std::unique_ptr<Store> OpenWithT(const std::string& dir, const TableSpec& spec) {
  auto store = OpenOrDie(dir);
  if (store == nullptr) return nullptr;
  const auto written = store->WriteTable("t", spec, Pattern(4, 0));
  EXPECT_TRUE(written.ok()) << written.status().ToString();
  return written.ok() ? std::move(store) : nullptr;
}

// Creates a store at `dir` holding SmallSpec tables `names` (the i-th filled
// with Pattern(4, i)) and closes it again, for tests that then edit its
// files. A failed step is a test failure.
inline void WriteClosedStore(const std::string& dir, std::initializer_list<const char*> names) {
  auto store = OpenOrDie(dir);
  ASSERT_NE(store, nullptr);
  float tag = 0;
  for (const char* name : names) {
    const auto written = store->WriteTable(name, SmallSpec(false), Pattern(4, tag++));
    ASSERT_TRUE(written.ok()) << name << ": " << written.status().ToString();
  }
}

}  // namespace embstore

#endif  // EMBSTORE_TESTS_STORE_TEST_UTIL_H_
