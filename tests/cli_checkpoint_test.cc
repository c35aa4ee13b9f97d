// Checkpoint import through the CLI: every committed torch.save / safetensors /
// npz tensor imports and exports back equal to its source values, for every
// storage dtype; hostile files are refused and the store keeps working.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "codec/half.h"
#include "test_util.h"

namespace embstore {
namespace {

using embstore::testing::RunCli;
using embstore::testing::TempDir;
using nlohmann::json;
using ::testing::HasSubstr;
using ::testing::Not;

const std::string kDir = std::string(EMBSTORE_SOURCE_DIR) + "/tests/data/checkpoints";

json Manifest() {
  std::ifstream f(kDir + "/manifest.json");
  return json::parse(f);
}

// Reads an exported .npy (<f4, or <f2 widened to float).
std::vector<float> ReadExport(const std::string& path, std::vector<int64_t>* shape,
                              std::string* descr) {
  auto a = storage::LoadNpy(path);
  EXPECT_TRUE(a.ok()) << a.status().ToString();
  if (!a.ok()) return {};
  *shape = a->header.shape;
  *descr = a->header.descr;
  std::vector<float> v;
  if (a->header.descr == "<f2") {
    for (size_t i = 0; i < a->data.size() / 2; ++i) {
      uint16_t h;
      std::memcpy(&h, a->data.data() + 2 * i, 2);
      v.push_back(codec::HalfToFloat(h));
    }
  } else {
    v.resize(a->data.size() / 4);
    if (!v.empty()) std::memcpy(v.data(), a->data.data(), a->data.size());
  }
  return v;
}

bool SameValue(float a, float b) { return (std::isnan(a) && std::isnan(b)) || a == b; }

TEST(CliCheckpointTest, EveryTensorExportsBackEqual) {
  TempDir tmp;
  const std::string db = tmp / "db";
  json m = Manifest();
  int checked = 0;
  for (auto& [file, entry] : m.items()) {
    for (const auto& t : entry["tensors"]) {
      if (!t.contains("expected")) continue;
      SCOPED_TRACE(file + ":" + t["key"].get<std::string>());
      const std::string table = "t" + std::to_string(checked);
      std::vector<std::string> args = {"import", "--db",           db, "--table", table,
                                       "--from", kDir + "/" + file};
      if (!t["key"].get<std::string>().empty())
        args.insert(args.end(), {"--tensor", t["key"].get<std::string>()});
      auto r = RunCli(args);
      ASSERT_EQ(r.exit_code, 0) << r.err;
      // f64 becomes f32 by default; f16/bf16/f32 keep their dtype.
      const std::string dt = t["dtype"];
      const std::string stored = dt == "f64" ? "f32" : dt;
      EXPECT_THAT(r.out, HasSubstr(" " + stored + ", version 1")) << r.out;
      r = RunCli({"export", "--db", db, "--table", table, "--out", tmp / "e.npy"});
      ASSERT_EQ(r.exit_code, 0) << r.err;
      std::vector<int64_t> shape;
      std::string descr;
      auto got = ReadExport(tmp / "e.npy", &shape, &descr);
      EXPECT_EQ(descr, dt == "f16" ? "<f2" : "<f4");
      std::vector<int64_t> want_shape;
      auto want =
          embstore::testing::ReadF32Npy(kDir + "/" + t["expected"].get<std::string>(), &want_shape);
      ASSERT_EQ(got.size(), want.size());
      const int64_t rows = want_shape.empty() ? 1 : want_shape[0];
      ASSERT_EQ(shape[0], rows);
      for (size_t i = 0; i < got.size(); ++i)
        ASSERT_TRUE(SameValue(got[i], want[i])) << i << ": " << got[i] << " vs " << want[i];
      ++checked;
    }
  }
  EXPECT_GE(checked, 40);
}

TEST(CliCheckpointTest, RefusedTensorsSayWhy) {
  TempDir tmp;
  json m = Manifest();
  int checked = 0;
  for (auto& [file, entry] : m.items()) {
    for (const auto& t : entry["tensors"]) {
      if (!t.contains("refused")) continue;
      auto r = RunCli({"import", "--db", tmp / "db", "--table", "x", "--from", kDir + "/" + file,
                       "--tensor", t["key"].get<std::string>()});
      EXPECT_EQ(r.exit_code, 1) << file << ":" << t["key"];
      EXPECT_THAT(r.err, HasSubstr(t["refused"].get<std::string>())) << r.err;
      ++checked;
    }
  }
  EXPECT_GE(checked, 5);
  EXPECT_EQ(RunCli({"list", "--db", tmp / "db"}).out, "");
}

TEST(CliCheckpointTest, InspectListsKeysDtypesShapes) {
  auto r = RunCli({"inspect", kDir + "/training.pt"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("model.emb.weight\tf32\t[12, 6]")) << r.out;
  EXPECT_THAT(r.out, HasSubstr("optimizer.state.0.exp_avg\tf32\t[12, 6]")) << r.out;
  r = RunCli({"inspect", kDir + "/weights.safetensors"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("brain\tbf16")) << r.out;
  EXPECT_THAT(r.out, HasSubstr("ids\tint64")) << r.out;
  r = RunCli({"inspect", kDir + "/compressed.npz"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("big\tf32")) << r.out;
}

TEST(CliCheckpointTest, InspectOfAMissingFileIsAnError) {
  auto r = RunCli({"inspect", kDir + "/nope.pt"});
  EXPECT_EQ(r.exit_code, 1);
}

TEST(CliCheckpointTest, SeveralTablesFromOneCheckpoint) {
  TempDir tmp;
  auto r = RunCli({"import", "--db", tmp / "db", "--from", kDir + "/training.pt", "--tensor",
                   "model.emb.weight=emb", "--tensor", "optimizer.state.0.exp_avg=avg"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = RunCli({"list", "--db", tmp / "db"});
  EXPECT_THAT(r.out, HasSubstr("emb\t12\t6\tf32")) << r.out;
  EXPECT_THAT(r.out, HasSubstr("avg\t12\t6\tf32")) << r.out;
}

// Several tensors and no key: refused, listing the keys.
TEST(CliCheckpointTest, NoKeyForACheckpointOfSeveralTensorsListsTheKeys) {
  TempDir tmp;
  auto r = RunCli({"import", "--db", tmp / "db", "--table", "x", "--from", kDir + "/training.pt"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("model.emb.weight")) << r.err;
}

TEST(CliCheckpointTest, AnUnknownKeyPointsToInspect) {
  TempDir tmp;
  auto r = RunCli({"import", "--db", tmp / "db", "--table", "x", "--from", kDir + "/training.pt",
                   "--tensor", "model.emb"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("embstore inspect")) << r.err;
}

// Imports training.pt's model.emb.weight as `table` into the store `db`.
embstore::testing::CommandResult ImportEmbWeight(const std::string& db, const std::string& table,
                                                 const std::vector<std::string>& extra = {}) {
  std::vector<std::string> args = {
      "import",          "--db", db, "--table", table, "--from", kDir + "/training.pt", "--tensor",
      "model.emb.weight"};
  args.insert(args.end(), extra.begin(), extra.end());
  return RunCli(args);
}

// Several --tensor jobs: every tensor and name is checked before the first
// table is published, so one bad job leaves the store as it was.
TEST(CliCheckpointTest, SeveralTablesAreCheckedBeforeAnyIsPublished) {
  TempDir tmp;
  const std::string db = tmp / "db";
  auto r = RunCli({"import", "--db", db, "--from", kDir + "/training.pt", "--tensor",
                   "model.emb.weight=first", "--tensor", "no.such.key=second"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("no.such.key")) << r.err;
  r = ImportEmbWeight(db, "taken");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = RunCli({"import", "--db", db, "--from", kDir + "/training.pt", "--tensor",
              "model.emb.weight=first", "--tensor", "optimizer.state.0.exp_avg=taken"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("table 'taken' exists")) << r.err;
  r = RunCli({"list", "--db", db});
  EXPECT_THAT(r.out, Not(HasSubstr("first"))) << r.out;
  EXPECT_THAT(r.out, Not(HasSubstr("second"))) << r.out;
}

TEST(CliCheckpointTest, ReplaceEqualsFalseIsNotReplace) {
  TempDir tmp;
  const std::string db = tmp / "db";
  auto r = ImportEmbWeight(db, "taken");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = ImportEmbWeight(db, "taken", {"--replace=false"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("pass --replace")) << r.err;
}

// --dtype converts on import; export dequantizes; a query pools the stored
// dtype and equals pooling the exported (dequantized) rows.
TEST(CliCheckpointTest, StorageDtypesConvertExportAndQuery) {
  TempDir tmp;
  const std::string db = tmp / "db";
  const std::string src = kDir + "/training.pt";
  std::vector<int64_t> shape;
  auto want =
      embstore::testing::ReadF32Npy(kDir + "/expected/training.pt/model.emb.weight.npy", &shape);
  const int64_t dim = shape[1];
  for (const std::string dt : {"f32", "f16", "bf16", "int8"}) {
    SCOPED_TRACE(dt);
    auto r = RunCli({"import", "--db", db, "--table", dt, "--from", src, "--tensor",
                     "model.emb.weight", "--dtype", dt});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    r = RunCli({"info", "--db", db, "--table", dt});
    EXPECT_THAT(r.out, HasSubstr("dtype:         " + dt)) << r.out;
    const int bpr = dt == "f32" ? 4 * dim : dt == "int8" ? dim + 8 : 2 * dim;
    EXPECT_THAT(r.out, HasSubstr("bytes_per_row: " + std::to_string(bpr))) << r.out;
    r = RunCli({"export", "--db", db, "--table", dt, "--out", tmp / "e.npy"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::vector<int64_t> es;
    std::string descr;
    auto got = ReadExport(tmp / "e.npy", &es, &descr);
    ASSERT_EQ(got.size(), want.size());
    for (int64_t i = 0; i < shape[0]; ++i) {
      float lo = want[i * dim], hi = lo;
      for (int64_t j = 0; j < dim; ++j)
        lo = std::min(lo, want[i * dim + j]), hi = std::max(hi, want[i * dim + j]);
      for (int64_t j = 0; j < dim; ++j) {
        const float w = want[i * dim + j], g = got[i * dim + j];
        float tol = 0;
        if (dt == "f16") tol = std::abs(w) * 1e-3f + 1e-7f;
        if (dt == "bf16") tol = std::abs(w) * 4e-3f + 1e-30f;
        if (dt == "int8") tol = (hi - lo) / 255.0f * 0.5f + 1e-6f;
        ASSERT_NEAR(g, w, tol) << i << "," << j;
      }
    }
    // Pool rows 1, 3, 3, 7 (sum): equals the sum of the dequantized export.
    r = RunCli({"query", "--db", db, "--table", dt, "--indices", "1,3,3,7", "--offsets", "0",
                "--mode", "sum", "--out", tmp / "q.npy"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto q = embstore::testing::ReadF32Npy(tmp / "q.npy");
    ASSERT_EQ(static_cast<int64_t>(q.size()), dim);
    for (int64_t j = 0; j < dim; ++j) {
      const float ref = got[1 * dim + j] + got[3 * dim + j] + got[3 * dim + j] + got[7 * dim + j];
      EXPECT_NEAR(q[j], ref, 1e-5f * (1 + std::abs(ref)));
    }
  }
}

TEST(CliCheckpointTest, HostileAndBrokenFilesAreRefusedAndStoreStillWorks) {
  TempDir tmp;
  const std::string db = tmp / "db";
  std::filesystem::remove("/tmp/embstore_pwned");
  int n = 0;
  for (auto& e : std::filesystem::directory_iterator(kDir + "/bad")) {
    SCOPED_TRACE(e.path().filename().string());
    auto r = RunCli({"import", "--db", db, "--table", "x", "--from", e.path().string(), "--tensor",
                     "emb.weight"});
    EXPECT_NE(r.exit_code, 0);
    EXPECT_LT(r.exit_code, 3);
    EXPECT_THAT(r.err, HasSubstr("embstore import: error:")) << r.err;
    EXPECT_THAT(r.err, Not(HasSubstr("internal error"))) << r.err;
    auto i = RunCli({"inspect", e.path().string()});
    EXPECT_LT(i.exit_code, 3);  // no crash (128 + signal)
    ++n;
  }
  EXPECT_GE(n, 15);
  auto r = RunCli({"import", "--db", db, "--table", "x", "--from", kDir + "/bad/os_system.pt"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("os.system")) << r.err;
  EXPECT_EQ(RunCli({"list", "--db", db}).out, "");
  // The store still works.
  r = RunCli({"import", "--db", db, "--table", "ok", "--from", kDir + "/state_dict.pt", "--tensor",
              "emb.weight"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(RunCli({"verify", "--db", db}).exit_code, 0);
}

}  // namespace
}  // namespace embstore
