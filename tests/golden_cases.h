// The torch goldens (tests/golden/embedding_bag.json and its tables, made by
// tests/golden/gen_goldens.py), loaded once for every suite that checks them:
// the engine (engine_golden_test), the GPU engine (cuda_golden_test) and the
// CLI (cli_query_test).
//
//   auto goldens = LoadGoldenFile();   // tests/golden of this source tree
//   ASSERT_TRUE(goldens.ok()) << goldens.status().ToString();
//   for (const GoldenCase& c : goldens->cases) {
//     auto got = EmbeddingBag(goldens->View(c.table), c.Bag(), c.options);
//     EXPECT_TRUE(c.MatchesTorch(got->values));
//   }
//
// The file's case lists are fixed (kTorchGoldenCases, kExtensionGoldenCases):
// every suite asserts it ran exactly that many, so that a test cannot pass
// having checked nothing.
#ifndef EMBSTORE_TESTS_GOLDEN_CASES_H_
#define EMBSTORE_TESTS_GOLDEN_CASES_H_

#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "embstore/query.h"
#include "embstore/status.h"
#include "embstore/types.h"
#include "golden_case_util.h"

namespace embstore::testing {

// The number of entries of "cases" (made by torch) and "extension_cases"
// (weighted max/mean and batched bags, beyond torch's API) in
// embedding_bag.json.
inline constexpr int kTorchGoldenCases = 240;
inline constexpr int kExtensionGoldenCases = 70;

// A golden table: a float32 [rows, dim] .npy file.
struct GoldenTable {
  std::string name;
  std::string file;  // path of the .npy
  int64_t rows = 0, dim = 0;
  std::vector<float> values;  // row-major

  // A view of `values`, valid while this table lives (and is not moved).
  TableView View() const;
};

// One case: a request, its options and torch's result.
struct GoldenCase {
  std::string name;
  std::string table;
  std::string source;    // "torch", or what made an extension case
  std::string kind;      // "" for torch cases, else "weighted_max", "weighted_mean", "batched"
  QueryOptions options;  // mode, padding_idx, max_norm, norm_type, include_last_offset

  TypedIds indices;  // with the index dtype the case was made with
  std::vector<int64_t> indices_shape;
  // Bags by offsets (BagRequest) unless `batched`.
  std::optional<TypedIds> offsets;  // none: 2-D indices
  // Batched bags (BatchedBagRequest): ends of shape [batch, bags_per_sample].
  bool batched = false;
  TypedIds ends;
  std::vector<int64_t> ends_shape;
  // Per-sample weights ("per_sample_weights", or "weights" when batched).
  std::optional<std::vector<float>> weights;

  std::vector<int64_t> expected_shape;
  std::vector<float> expected;  // null in the file: NaN

  // The request, pointing into this case. REQUIRES: !batched (Bag) or
  // batched (Batched).
  BagRequest Bag() const;
  BatchedBagRequest Batched() const;

  // Whether `got` is torch's result: within Tolerance() of each expected
  // value (NaN where torch has NaN), and exactly, sign of zero included, for
  // unweighted max without max_norm (which only selects values). Names the
  // first few elements that differ.
  ::testing::AssertionResult MatchesTorch(std::span<const float> got) const;
  // Relative and absolute tolerance: 1e-5; 1e-4 for max_norm with a norm
  // type other than 1, 2 or +-inf (torch computes those with pow).
  double Tolerance() const;
};

struct GoldenFile {
  std::string dir;
  std::map<std::string, GoldenTable> tables;  // by name
  std::vector<GoldenCase> cases;              // torch's
  std::vector<GoldenCase> extension_cases;

  // The table named `table`. REQUIRES: tables holds it.
  TableView View(const std::string& table) const { return tables.at(table).View(); }
};

// The golden directory of the source tree this test was built from or,
// where that has none (a test binary carried to another machine and run from
// a checkout's root), ./tests/golden.
std::string GoldenDir();

// Loads embedding_bag.json and every table it names from `dir`. Errors
// (a missing or malformed file, a table whose shape differs from what the
// file declares, an unknown mode) say which file and case.
Result<GoldenFile> LoadGoldenFile(const std::string& dir = GoldenDir());

}  // namespace embstore::testing

#endif  // EMBSTORE_TESTS_GOLDEN_CASES_H_
