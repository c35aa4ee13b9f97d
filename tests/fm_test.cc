// FM / FFM scoring: goldens (written with torch ops, tests/golden/gen_fm_goldens.py)
// through the library and through `embstore score`, plus shape errors.
#include "embstore/fm.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "embstore/store.h"
#include "test_util.h"

namespace embstore {
namespace {

using embstore::testing::RunCli;
using embstore::testing::TempDir;
using nlohmann::json;
using ::testing::HasSubstr;

const std::string kGoldenDir = std::string(EMBSTORE_SOURCE_DIR) + "/tests/golden";
// The cases in fm.json (made by tests/golden/gen_fm_goldens.py).
constexpr int kFmGoldenCases = 13;

class FmTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::ifstream f(kGoldenDir + "/fm.json");
    ASSERT_TRUE(f.good());
    goldens_ = new json(json::parse(f));
    tmp_ = new TempDir();
    auto s = Store::Open(*tmp_ / "db", StoreOptions());
    ASSERT_TRUE(s.ok());
    store_ = std::move(s).value().release();
    for (auto& [name, t] : (*goldens_)["tables"].items()) {
      auto info = store_->ImportFile(name, kGoldenDir + "/" + t["file"].get<std::string>(), {});
      ASSERT_TRUE(info.ok()) << info.status().ToString();
    }
  }
  static void TearDownTestSuite() {
    delete store_;
    delete goldens_;
    delete tmp_;
  }
  static json* goldens_;
  static TempDir* tmp_;
  static Store* store_;
};
json* FmTest::goldens_ = nullptr;
TempDir* FmTest::tmp_ = nullptr;
Store* FmTest::store_ = nullptr;

struct Owned {
  std::vector<int64_t> i64;
  std::vector<int32_t> i32;
  IndexArray Make(const json& v, const std::string& dtype) {
    if (dtype == "int32") {
      for (const auto& x : v) i32.push_back(x.get<int32_t>());
      return std::span<const int32_t>(i32);
    }
    for (const auto& x : v) i64.push_back(x.get<int64_t>());
    return std::span<const int64_t>(i64);
  }
};

TEST_F(FmTest, GoldensThroughLibrary) {
  int n = 0;
  for (const auto& c : (*goldens_)["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    Owned idx, ends, fields;
    std::vector<float> w;
    for (const auto& x : c["weights"]) w.push_back(x.get<float>());
    FmRequest req;
    req.bags.indices = idx.Make(c["indices"], c["index_dtype"]);
    req.bags.ends = ends.Make(c["ends"], c["ends_dtype"]);
    req.bags.weights = std::span<const float>(w);
    req.bags.batch = c["indices_shape"][0];
    req.bags.items = c["indices_shape"][1];
    req.bags.bags_per_sample = c["ends_shape"][1];
    req.bias = c["bias"].get<double>();
    const bool ffm = c["model"] == "ffm";
    if (ffm) {
      req.fields = fields.Make(c["fields"], "int64");
      req.num_fields = c["num_fields"];
    }
    auto vs = store_->GetSnapshot(c["vectors"]);
    auto bs = store_->GetSnapshot(c["biases"]);
    ASSERT_TRUE(vs.ok() && bs.ok());
    std::vector<float> out(static_cast<size_t>(req.bags.batch));
    QueryOptions qo;
    qo.mode = PoolingMode::kSum;
    Status st = FmScore(ffm ? FmModel::kFfm : FmModel::kFm, vs->view(), bs->view(), req, qo, out);
    ASSERT_TRUE(st.ok()) << st.ToString();
    // The allocating overload gives the same scores.
    auto fresh = FmScore(ffm ? FmModel::kFfm : FmModel::kFm, vs->view(), bs->view(), req, qo);
    ASSERT_TRUE(fresh.ok()) << fresh.status().ToString();
    EXPECT_EQ(*fresh, out);
    for (size_t b = 0; b < out.size(); ++b) {
      const float e = c["expected"][b].get<float>();
      EXPECT_NEAR(out[b], e, 1e-4 * (1 + std::abs(e))) << "sample " << b;
    }
    ++n;
  }
  EXPECT_EQ(n, kFmGoldenCases);
}

std::string WriteIntNpy(const std::string& path, const json& v, const json& shape) {
  std::vector<int64_t> x;
  for (const auto& e : v) x.push_back(e.get<int64_t>());
  EXPECT_TRUE(storage::WriteNpy(path, "<i8", shape.get<std::vector<int64_t>>(),
                                {reinterpret_cast<uint8_t*>(x.data()), x.size() * 8})
                  .ok());
  return "@" + path;
}

std::string WriteFloatNpy(const std::string& path, const json& v, const json& shape) {
  std::vector<float> x;
  for (const auto& e : v) x.push_back(e.get<float>());
  EXPECT_TRUE(storage::WriteNpy(path, "<f4", shape.get<std::vector<int64_t>>(),
                                {reinterpret_cast<uint8_t*>(x.data()), x.size() * 4})
                  .ok());
  return "@" + path;
}

TEST_F(FmTest, GoldensThroughCli) {
  // The CLI opens the store itself: hand it a copy made through the CLI.
  TempDir work;
  const std::string db = work / "db";
  for (auto& [name, t] : (*goldens_)["tables"].items()) {
    auto r = RunCli({"import", "--db", db, "--table", name, "--from",
                     kGoldenDir + "/" + t["file"].get<std::string>()});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  int n = 0;
  for (const auto& c : (*goldens_)["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    ++n;
    char bias[64];
    std::snprintf(bias, sizeof bias, "%.17g", c["bias"].get<double>());
    std::vector<std::string> args = {
        "score",
        "--db",
        db,
        "--model",
        c["model"],
        "--vectors",
        c["vectors"],
        "--biases",
        c["biases"],
        "--bias",
        bias,
        "--indices",
        WriteIntNpy(work / "i.npy", c["indices"], c["indices_shape"]),
        "--weights",
        WriteFloatNpy(work / "w.npy", c["weights"], c["indices_shape"]),
        "--bag-ends",
        WriteIntNpy(work / "e.npy", c["ends"], c["ends_shape"]),
        "--out",
        work / "y.npy"};
    if (c["model"] == "ffm") {
      args.insert(args.end(),
                  {"--fields", WriteIntNpy(work / "f.npy", c["fields"], c["fields_shape"]),
                   "--num-fields", std::to_string(c["num_fields"].get<int>())});
    }
    auto r = RunCli(args);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto y = embstore::testing::ReadF32Npy(work / "y.npy");
    ASSERT_EQ(y.size(), c["expected"].size());
    for (size_t b = 0; b < y.size(); ++b) {
      const float e = c["expected"][b].get<float>();
      EXPECT_NEAR(y[b], e, 1e-4 * (1 + std::abs(e)));
    }
  }
  EXPECT_EQ(n, kFmGoldenCases);
}

// A store at `db` with the FM tables v (3 fields of 4), b (biases) and v5
// (2 fields of 5).
void ImportFmTables(const std::string& db) {
  ASSERT_EQ(RunCli({"import", "--db", db, "--table", "v", "--from",
                    kGoldenDir + "/tables/fm_vectors_f3k4.npy"})
                .exit_code,
            0);
  ASSERT_EQ(
      RunCli({"import", "--db", db, "--table", "b", "--from", kGoldenDir + "/tables/fm_biases.npy"})
          .exit_code,
      0);
  ASSERT_EQ(RunCli({"import", "--db", db, "--table", "v5", "--from",
                    kGoldenDir + "/tables/fm_vectors_f2k5.npy"})
                .exit_code,
            0);
}

TEST_F(FmTest, BadShapesGetClearErrors) {
  TempDir work;
  const std::string db = work / "db";
  ASSERT_NO_FATAL_FAILURE(ImportFmTables(db));
  const std::vector<std::string> base = {"score",   "--db",      db,       "--indices",
                                         "1,2,3,4", "--weights", "1,1,1,1"};
  struct Case {
    std::vector<std::string> extra;
    std::string expect;
  } cases[] = {
      {{"--biases", "b", "--model", "ffm", "--vectors", "v", "--bag-ends", "0,1,3", "--fields",
        "0,1"},
       "K must match"},
      {{"--biases", "b", "--model", "ffm", "--vectors", "v", "--bag-ends", "0,1,9"}, "ends"},
      {{"--biases", "b", "--model", "fm", "--vectors", "v", "--bag-ends", "0,-2"}, "ends"},
      {{"--biases", "b", "--model", "ffm", "--vectors", "v5", "--bag-ends", "0,1,3"},
       "not divisible by the number of fields 3"},
      {{"--biases", "b", "--model", "ffm", "--vectors", "v", "--bag-ends", "0,1,3", "--fields",
        "0,1,3"},
       "out of range"},
      {{"--model", "fm", "--vectors", "b", "--bag-ends", "3", "--biases", "v"}, "must have dim 1"},
      {{"--model", "fm", "--vectors", "v", "--bag-ends", "3", "--biases", "v"}, "must have dim 1"},
      {{"--biases", "b", "--model", "xfm", "--vectors", "v", "--bag-ends", "3"}, "--model"},
      {{"--biases", "b", "--model", "fm", "--vectors", "nope", "--bag-ends", "3"},
       "unknown table 'nope'"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = base;
    args.insert(args.end(), c.extra.begin(), c.extra.end());
    args.insert(args.end(), {"--out", work / "y.npy"});
    auto r = RunCli(args);
    EXPECT_EQ(r.exit_code, 1) << c.expect;
    EXPECT_THAT(r.err, HasSubstr(c.expect)) << "want '" << c.expect << "' in: " << r.err;
    EXPECT_FALSE(std::filesystem::exists(work / "y.npy"));
  }
}

// A 128-byte file asking for 2^62 samples of 0 bags: refused before anything
// is allocated, with what it would need.
TEST_F(FmTest, AHugeBatchOfEmptySamplesIsRefusedBeforeAllocating) {
  TempDir work;
  const std::string db = work / "db";
  ASSERT_NO_FATAL_FAILURE(ImportFmTables(db));
  ASSERT_TRUE(storage::WriteNpy(work / "huge.npy", "<i8", {int64_t{1} << 62, 0}, {}).ok());
  auto r = RunCli({"score", "--db", db, "--model", "fm", "--vectors", "v", "--biases", "b",
                   "--indices", "@" + (work / "huge.npy"), "--bag-ends", "@" + (work / "huge.npy"),
                   "--threads", "10000000", "--out", work / "y.npy"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.err,
              HasSubstr("4611686018427387904 samples need more memory than can be addressed"))
      << r.err;
  EXPECT_FALSE(std::filesystem::exists(work / "y.npy"));
}

// The library refuses it too (FmScore's allocating overload), naming the
// size: [2^40, 0] is addressable but 4 TiB of scores.
TEST_F(FmTest, LibraryRefusesAHugeBatchWithTheSize) {
  const json& c = (*goldens_)["cases"][0];
  auto vs = store_->GetSnapshot(c["vectors"]);
  auto bs = store_->GetSnapshot(c["biases"]);
  ASSERT_TRUE(vs.ok() && bs.ok());
  FmRequest req;
  req.bags.indices = std::span<const int64_t>();
  req.bags.ends = std::span<const int64_t>();
  req.bags.batch = int64_t{1} << 40;
  req.bags.items = 0;
  req.bags.bags_per_sample = 0;
  QueryOptions qo;
  qo.mode = PoolingMode::kSum;
  auto r = FmScore(FmModel::kFm, vs->view(), bs->view(), req, qo);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Status::Code::kInvalidArgument);
  EXPECT_THAT(r.status().message(),
              HasSubstr("this request asks for 1099511627776 samples, which would need "
                        "4398046511104 bytes; this process may use"));
}

}  // namespace
}  // namespace embstore
