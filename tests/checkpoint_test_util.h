// Helpers shared by the checkpoint reader tests: the fixtures of
// tests/data/checkpoints and their manifest, bit-exact float comparison,
// whole and chunked reads, temporary files and peak memory.
#ifndef EMBSTORE_TESTS_CHECKPOINT_TEST_UTIL_H_
#define EMBSTORE_TESTS_CHECKPOINT_TEST_UTIL_H_

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "checkpoint/tensor_reader.h"
#include "embstore/status.h"

namespace embstore::storage {

namespace fs = std::filesystem;
using Code = Status::Code;

inline const std::string kDataDir = std::string(EMBSTORE_SOURCE_DIR) + "/tests/data/checkpoints";
inline std::string Data(const std::string& rel) { return kDataDir + "/" + rel; }

inline std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// The expected rows: a float32, C-order, 2-D .npy written by make_checkpoints.py.
struct Expected {
  int64_t rows = 0, dim = 0;
  std::vector<float> values;
};

inline Expected LoadExpected(const std::string& path) {
  const std::string bytes = ReadAll(path);
  EXPECT_GE(bytes.size(), 10u) << path;
  EXPECT_EQ(bytes.substr(0, 6), "\x93NUMPY") << path;
  const size_t header_len = static_cast<uint8_t>(bytes[8]) | (static_cast<uint8_t>(bytes[9]) << 8);
  const std::string header = bytes.substr(10, header_len);
  EXPECT_NE(header.find("'<f4'"), std::string::npos) << header;
  EXPECT_NE(header.find("'fortran_order': False"), std::string::npos) << header;
  Expected e;
  const size_t open = header.find('('), comma = header.find(',', open),
               close = header.find(')', open);
  e.rows = std::stoll(header.substr(open + 1, comma - open - 1));
  e.dim = std::stoll(header.substr(comma + 1, close - comma - 1));
  e.values.resize(static_cast<size_t>(e.rows * e.dim));
  EXPECT_EQ(bytes.size(), 10 + header_len + e.values.size() * 4) << path;
  if (!e.values.empty())
    std::memcpy(e.values.data(), bytes.data() + 10 + header_len, e.values.size() * 4);
  return e;
}

// Bit-exact, except that any NaN matches any NaN.
inline ::testing::AssertionResult SameFloats(const std::vector<float>& got,
                                             const std::vector<float>& want) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << "size " << got.size() << " vs " << want.size();
  }
  for (size_t i = 0; i < got.size(); ++i) {
    uint32_t a, b;
    std::memcpy(&a, &got[i], 4);
    std::memcpy(&b, &want[i], 4);
    if (a != b && !(std::isnan(got[i]) && std::isnan(want[i]))) {
      return ::testing::AssertionFailure()
             << "element " << i << ": " << got[i] << " vs " << want[i];
    }
  }
  return ::testing::AssertionSuccess();
}

inline std::vector<float> ReadWhole(TensorReader& r) {
  std::vector<float> out(static_cast<size_t>(r.rows() * r.dim()));
  Status s = r.ReadRows(0, r.rows(), out.data());
  EXPECT_TRUE(s.ok()) << s.ToString();
  return out;
}

// Reads in chunks of `chunk` rows, in order.
inline std::vector<float> ReadChunked(TensorReader& r, int64_t chunk) {
  std::vector<float> out(static_cast<size_t>(r.rows() * r.dim()));
  for (int64_t first = 0; first < r.rows(); first += chunk) {
    const int64_t n = std::min(chunk, r.rows() - first);
    Status s = r.ReadRows(first, n, out.data() + first * r.dim());
    EXPECT_TRUE(s.ok()) << s.ToString();
  }
  return out;
}

inline nlohmann::json Manifest() { return nlohmann::json::parse(ReadAll(Data("manifest.json"))); }

// Opens every importable tensor the manifest lists with expected rows and calls
// check(want, reader) under a trace naming the file and key. Returns how many
// tensors it checked, so that a caller can assert the manifest was not empty.
inline int ForEachImportableFixture(
    const std::function<void(const Expected& want, TensorReader& reader)>& check) {
  const nlohmann::json manifest = Manifest();
  int checked = 0;
  for (const auto& [file, info] : manifest.items()) {
    for (const auto& t : info["tensors"]) {
      if (!t.contains("expected")) continue;
      const std::string key = t["key"].get<std::string>();
      SCOPED_TRACE(file + ":" + key);
      const Expected want = LoadExpected(Data(t["expected"].get<std::string>()));
      auto reader = OpenTensor(Data(file), key);
      if (!reader.ok()) {
        ADD_FAILURE() << reader.status().ToString();
        continue;
      }
      EXPECT_NE((*reader)->source().find(file), std::string::npos) << (*reader)->source();
      check(want, **reader);
      ++checked;
    }
  }
  return checked;
}

// A temporary file, removed on destruction.
struct TempFile {
  TempFile() {
    char name[] = "/tmp/embstore_ckpt_test_XXXXXX";
    int fd = mkstemp(name);
    EXPECT_GE(fd, 0);
    close(fd);
    path = name;
  }
  ~TempFile() { fs::remove(path); }
  std::string path;
};

// Peak resident memory of this process so far.
inline long MaxRssKb() {
  struct rusage u;
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;
}

}  // namespace embstore::storage

#endif  // EMBSTORE_TESTS_CHECKPOINT_TEST_UTIL_H_
