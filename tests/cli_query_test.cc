// `embstore query` end to end: every torch golden and extension golden through
// the CLI (inputs as .npy files, --out), plus the error paths.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <span>

#include "cluster_test_util.h"
#include "golden_cases.h"
#include "serve_test_util.h"
#include "test_util.h"

namespace embstore {
namespace {

using embstore::testing::CommandResult;
using embstore::testing::RunCli;
using embstore::testing::TempDir;
using ::testing::HasSubstr;

using embstore::testing::GoldenCase;
using embstore::testing::GoldenFile;
using embstore::testing::kExtensionGoldenCases;
using embstore::testing::kTorchGoldenCases;
using embstore::testing::TypedIds;

const std::string kGoldenDir = embstore::testing::GoldenDir();

// Writes ids as the .npy the CLI reads, with the index dtype of the case.
void WriteIds(const std::string& path, const TypedIds& ids, const std::vector<int64_t>& shape) {
  const Status st =
      ids.is32 ? storage::WriteNpy(
                     path, "<i4", shape,
                     {reinterpret_cast<const uint8_t*>(ids.i32.data()), ids.i32.size() * 4})
               : storage::WriteNpy(
                     path, "<i8", shape,
                     {reinterpret_cast<const uint8_t*>(ids.i64.data()), ids.i64.size() * 8});
  ASSERT_TRUE(st.ok()) << st.ToString();
}

void WriteFloats(const std::string& path, const std::vector<float>& v,
                 const std::vector<int64_t>& shape) {
  const Status st = storage::WriteNpy(path, "<f4", shape,
                                      {reinterpret_cast<const uint8_t*>(v.data()), v.size() * 4});
  ASSERT_TRUE(st.ok()) << st.ToString();
}

// A norm as the CLI reads it: shortest round-tripping decimal, or inf/-inf.
std::string NormText(double n) {
  if (std::isinf(n)) return n > 0 ? "inf" : "-inf";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", n);
  return buf;
}

class CliGoldenTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto loaded = embstore::testing::LoadGoldenFile(kGoldenDir);
    ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
    goldens_ = new GoldenFile(std::move(loaded).value());
    tmp_ = new TempDir();
    db_ = new std::string(*tmp_ / "db");
    for (const auto& [name, t] : goldens_->tables) {
      auto r = RunCli({"import", "--db", *db_, "--table", name, "--from", t.file});
      ASSERT_EQ(r.exit_code, 0) << r.err;
    }
  }
  static void TearDownTestSuite() {
    delete goldens_;
    delete db_;
    delete tmp_;
  }

  // Runs one case through the CLI against `db` (or, given `server`, through
  // `embstore query --server`) and compares with torch's result.
  // `remote_flag`: "--server" (then `server` is HOST:PORT) or "--cluster"
  // (then it is the etcd endpoint).
  void RunCase(const GoldenCase& c, const std::string& db, const std::string& server = "",
               const std::string& remote_flag = "--server") {
    SCOPED_TRACE(c.name);
    const std::string dir = *tmp_ / "case";
    std::filesystem::create_directories(dir);
    const QueryOptions& o = c.options;
    std::vector<std::string> args = {"query",
                                     server.empty() ? "--db" : remote_flag,
                                     server.empty() ? db : server,
                                     "--table",
                                     c.table,
                                     "--mode",
                                     PoolingModeName(o.mode)};
    WriteIds(dir + "/i.npy", c.indices, c.indices_shape);
    args.insert(args.end(), {"--indices", "@" + dir + "/i.npy"});
    if (c.batched) {
      WriteIds(dir + "/e.npy", c.ends, c.ends_shape);
      args.insert(args.end(), {"--bag-ends", "@" + dir + "/e.npy"});
    } else if (c.offsets) {
      WriteIds(dir + "/o.npy", *c.offsets, {static_cast<int64_t>(c.offsets->i64.size())});
      args.insert(args.end(), {"--offsets", "@" + dir + "/o.npy"});
    }
    if (c.weights) {
      WriteFloats(dir + "/w.npy", *c.weights, c.indices_shape);
      args.insert(args.end(), {"--weights", "@" + dir + "/w.npy"});
    }
    if (o.include_last_offset) args.push_back("--include-last-offset");
    if (o.padding_idx) {
      // As a separate word, negative values included.
      args.insert(args.end(), {"--padding-idx", std::to_string(*o.padding_idx)});
    }
    if (o.max_norm) {
      args.insert(args.end(),
                  {"--max-norm", NormText(*o.max_norm), "--norm-type", NormText(o.norm_type)});
    }
    const std::string out = dir + "/out.npy";
    std::filesystem::remove(out);
    args.insert(args.end(), {"--out", out});
    auto r = RunCli(args);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::vector<int64_t> shape;
    std::vector<float> got = embstore::testing::ReadF32Npy(out, &shape);
    ASSERT_EQ(shape, c.expected_shape);
    EXPECT_TRUE(c.MatchesTorch(got));
  }

  static GoldenFile* goldens_;
  static TempDir* tmp_;
  static std::string* db_;
};
GoldenFile* CliGoldenTest::goldens_ = nullptr;
TempDir* CliGoldenTest::tmp_ = nullptr;
std::string* CliGoldenTest::db_ = nullptr;

TEST_F(CliGoldenTest, TorchGoldens) {
  int n = 0;
  for (const GoldenCase& c : goldens_->cases) {
    RunCase(c, *db_);
    ++n;
  }
  EXPECT_EQ(n, kTorchGoldenCases);
}

TEST_F(CliGoldenTest, ExtensionGoldens) {
  int n = 0;
  for (const GoldenCase& c : goldens_->extension_cases) {
    RunCase(c, *db_);
    ++n;
  }
  EXPECT_EQ(n, kExtensionGoldenCases);
}

// The same goldens through `embstore serve` (gRPC over loopback) and
// `embstore query --server`: the same flags give torch's results.
TEST_F(CliGoldenTest, TorchAndExtensionGoldensThroughTheServer) {
  embstore::testing::ServeProcess server;
  ASSERT_TRUE(server.Start(*db_, {"--threads", "2"})) << server.err();
  int n = 0;
  for (const GoldenCase& c : goldens_->cases) {
    RunCase(c, *db_, server.address());
    ++n;
  }
  for (const GoldenCase& c : goldens_->extension_cases) {
    RunCase(c, *db_, server.address());
    ++n;
  }
  EXPECT_EQ(n, kTorchGoldenCases + kExtensionGoldenCases);
  // A bad request fails as the local one does: the same message and exit code.
  const std::vector<std::string> bad = {"--table", "t_d8", "--indices", "1,10", "--offsets", "0"};
  std::vector<std::string> local = {"query", "--db", *db_},
                           remote = {"query", "--server", server.address()};
  local.insert(local.end(), bad.begin(), bad.end());
  remote.insert(remote.end(), bad.begin(), bad.end());
  const auto l = RunCli(local), r = RunCli(remote);
  EXPECT_EQ(l.exit_code, 1);
  EXPECT_EQ(r.exit_code, l.exit_code);
  EXPECT_EQ(r.err, l.err);
  EXPECT_THAT(r.err, HasSubstr("out of range"));
  // Printed output too (not only --out).
  const std::vector<std::string> ok = {"--table",   "t_d8", "--indices", "1,2,9",
                                       "--offsets", "0,1",  "--mode",    "max"};
  local.resize(3);
  remote.resize(3);
  local.insert(local.end(), ok.begin(), ok.end());
  remote.insert(remote.end(), ok.begin(), ok.end());
  const auto lo = RunCli(local), ro = RunCli(remote);
  ASSERT_EQ(ro.exit_code, 0) << ro.err;
  EXPECT_EQ(ro.out, lo.out);
  EXPECT_FALSE(ro.out.empty());
  EXPECT_EQ(WEXITSTATUS(server.Stop()), 0) << server.err();
}

// The same goldens over a cluster on loopback: etcd and 3 `embstore serve
// --cluster` nodes, every golden table published in (up to) 3 row shards with
// 2 replicas, each case through `embstore query --cluster` (split by shard,
// pooled at the nodes, merged by the client), within torch's tolerance;
// the batched cases (--bag-ends) included.
TEST_F(CliGoldenTest, TorchAndExtensionGoldensThroughTheCluster) {
  embstore::testing::EtcdProcess etcd;
  ASSERT_TRUE(etcd.Start(*tmp_ / "etcd")) << "etcd did not start (is etcd-server installed?)";
  std::vector<std::unique_ptr<embstore::testing::ServeProcess>> nodes;
  for (int i = 0; i < 3; ++i) {
    nodes.push_back(std::make_unique<embstore::testing::ServeProcess>());
    ASSERT_TRUE(nodes.back()->Start(
        *tmp_ / ("node" + std::to_string(i)),
        {"--cluster", etcd.endpoint(), "--node", "g" + std::to_string(i), "--threads", "2"}))
        << nodes.back()->err();
  }
  for (const auto& [name, t] : goldens_->tables) {
    const int shards = static_cast<int>(std::min<int64_t>(3, std::max<int64_t>(1, t.rows)));
    auto r = RunCli({"publish", "--cluster", etcd.endpoint(), "--table", name, "--from", t.file,
                     "--shards", std::to_string(shards), "--replicas", "2"});
    ASSERT_EQ(r.exit_code, 0) << name << ": " << r.err;
  }
  int n = 0, batched = 0;
  for (const auto* cases : {&goldens_->cases, &goldens_->extension_cases}) {
    for (const GoldenCase& c : *cases) {
      RunCase(c, *db_, etcd.endpoint(), "--cluster");
      ++n;
      batched += c.batched;
    }
  }
  EXPECT_EQ(n, kTorchGoldenCases + kExtensionGoldenCases);
  EXPECT_EQ(batched, 20);
  for (auto& node : nodes) EXPECT_EQ(WEXITSTATUS(node->Stop()), 0) << node->err();
}

TEST_F(CliGoldenTest, InlineBatchedBagsPrintOneBagPerLine) {
  // seed003: the worked example of the WeightedEmbeddingBag seed, one sample inline.
  auto r = RunCli({"query", "--db", *db_, "--table", "seed003", "--mode", "sum", "--indices",
                   "1,2,3,5", "--weights", "2,-2,0.3,0.6", "--bag-ends", "1,2,3"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // [2 v1 - 2 v2, 0.3 v3, 0.6 v5] printed one bag per line.
  std::istringstream lines(r.out);
  std::vector<std::vector<float>> rows;
  for (std::string line; std::getline(lines, line);) {
    std::istringstream ls(line);
    rows.emplace_back();
    for (float x; ls >> x;) rows.back().push_back(x);
  }
  ASSERT_EQ(rows.size(), 3u);
  const std::vector<std::vector<float>> want = {{0.9096f, -0.9380f, 0.5059f, -2.1014f},
                                                {0.2433f, -0.0717f, 0.2183f, -0.0541f},
                                                {0.1722f, -2.0247f, 0.8788f, -0.2933f}};
  for (int b = 0; b < 3; ++b) {
    ASSERT_EQ(rows[b].size(), 4u);
    for (int j = 0; j < 4; ++j) EXPECT_NEAR(rows[b][j], want[b][j], 1e-3) << b << "," << j;
  }
}

// --padding-idx=-1 and --padding-idx -1 are the same (the last row, 9).
TEST_F(CliGoldenTest, NegativeValueMayFollowItsFlagAsOneOrTwoWords) {
  auto a = RunCli({"query", "--db", *db_, "--table", "t_d8", "--indices", "9,1,9", "--offsets", "0",
                   "--mode", "sum", "--padding-idx=-1"});
  auto b = RunCli({"query", "--db", *db_, "--table", "t_d8", "--indices", "9,1,9", "--offsets", "0",
                   "--mode", "sum", "--padding-idx", "-1"});
  auto c = RunCli({"query", "--db", *db_, "--table", "t_d8", "--indices", "1", "--offsets", "0",
                   "--mode", "sum"});
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_EQ(a.out, c.out);
}

TEST_F(CliGoldenTest, DefaultModeIsMean) {
  auto m1 =
      RunCli({"query", "--db", *db_, "--table", "t_d8", "--indices", "1,2", "--offsets", "0"});
  auto m2 = RunCli({"query", "--db", *db_, "--table", "t_d8", "--indices", "1,2", "--offsets", "0",
                    "--mode", "mean"});
  EXPECT_EQ(m1.out, m2.out);
}

// `embstore renorm` writes the weight torch reaches after touching every row:
// querying the renormalized version WITHOUT max_norm reproduces torch's
// max_norm goldens, and the original version is left as it was.
TEST_F(CliGoldenTest, RenormMatchesTorchMaxNormGoldens) {
  int n = 0;
  for (const GoldenCase& c : goldens_->cases) {
    if (!c.options.max_norm || c.source != "torch" || n >= 24) continue;
    SCOPED_TRACE(c.name);
    TempDir work;
    const std::string db = work / "db";
    ASSERT_EQ(RunCli({"import", "--db", db, "--table", c.table, "--from",
                      goldens_->tables.at(c.table).file})
                  .exit_code,
              0);
    auto r = RunCli({"renorm", "--db", db, "--table", c.table, "--max-norm",
                     NormText(*c.options.max_norm), "--norm-type", NormText(c.options.norm_type)});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_THAT(r.out, HasSubstr("version 2")) << r.out;
    GoldenCase plain = c;
    plain.options.max_norm.reset();
    RunCase(plain, db);
    ++n;
  }
  // The first 24 torch max_norm cases (the file has more).
  EXPECT_EQ(n, 24);
}

TEST_F(CliGoldenTest, RenormRefusesABadMaxNormAndAnUnknownTable) {
  auto r = RunCli({"renorm", "--db", *db_, "--table", "t_d8", "--max-norm", "0"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("max_norm must be a finite number > 0")) << r.err;
  r = RunCli({"renorm", "--db", *db_, "--table", "nope", "--max-norm", "1"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("unknown table")) << r.err;
}

// --device cuda: equals the CPU output on a GPU machine; a clear "no GPU" error
// (exit 1, no output file) elsewhere.
TEST_F(CliGoldenTest, DeviceCudaMatchesCpuOrSaysNoGpu) {
  const std::string out = *tmp_ / "gpu_out.npy";
  std::vector<std::string> args = {"query",     "--db",         *db_,        "--table", "t_d37",
                                   "--indices", "1,2,3,4,5,22", "--offsets", "0,2,2",   "--mode",
                                   "max",       "--max-norm",   "1.5"};
  auto cpu = RunCli(args);
  ASSERT_EQ(cpu.exit_code, 0) << cpu.err;
  args.insert(args.end(), {"--device", "cuda", "--cache-rows", "4", "--stats", "--out", out});
  auto gpu = RunCli(args);
  if (RunCli({"gpu-info"}).exit_code != 0) {
    EXPECT_EQ(gpu.exit_code, 1);
    EXPECT_THAT(gpu.err, HasSubstr("no GPU")) << gpu.err;
    EXPECT_FALSE(std::filesystem::exists(out));
    return;
  }
  ASSERT_EQ(gpu.exit_code, 0) << gpu.err;
  EXPECT_THAT(gpu.err, HasSubstr("hits")) << gpu.err;
  args.resize(args.size() - 7);
  args.insert(args.end(), {"--out", *tmp_ / "cpu_out.npy"});
  ASSERT_EQ(RunCli(args).exit_code, 0);
  auto a = embstore::testing::ReadF32Npy(out);
  auto b = embstore::testing::ReadF32Npy(*tmp_ / "cpu_out.npy");
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-5f * (1 + std::abs(b[i])));
}

// Inputs of several MiB (read into huge-page buffers and used in place, int32
// and int64 ids, float32 weights) give the same bags as a plain double loop.
TEST_F(CliGoldenTest, MultiMegabyteNpyInputs) {
  int64_t rows = 0, dim = 0;
  std::vector<int64_t> tshape;
  const std::vector<float> table =
      embstore::testing::ReadF32Npy(kGoldenDir + "/tables/t_d64.npy", &tshape);
  rows = tshape[0];
  dim = tshape[1];
  const int64_t n = 600000, per_bag = 40, bags = n / per_bag;
  std::vector<int64_t> ids(n), offsets(bags);
  std::vector<int32_t> ids32(n);
  std::vector<float> weights(n);
  for (int64_t i = 0; i < n; ++i) {
    ids[i] = (i * 7919 + i / 3) % rows;
    ids32[i] = static_cast<int32_t>(ids[i]);
    weights[i] = static_cast<float>((i % 13) - 6) / 8.0f;
  }
  for (int64_t b = 0; b < bags; ++b) offsets[b] = b * per_bag;
  const std::string dir = *tmp_ / "big";
  std::filesystem::create_directories(dir);
  auto bytes = [](const auto& v) {
    return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(v.data()),
                                    v.size() * sizeof(v[0]));
  };
  ASSERT_TRUE(storage::WriteNpy(dir + "/i64.npy", "<i8", {n}, bytes(ids)).ok());
  ASSERT_TRUE(storage::WriteNpy(dir + "/i32.npy", "<i4", {n}, bytes(ids32)).ok());
  ASSERT_TRUE(storage::WriteNpy(dir + "/o.npy", "<i8", {bags}, bytes(offsets)).ok());
  ASSERT_TRUE(storage::WriteNpy(dir + "/w.npy", "<f4", {n}, bytes(weights)).ok());
  std::vector<double> expected(static_cast<size_t>(bags * dim), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < dim; ++j) {
      expected[(i / per_bag) * dim + j] += double{weights[i]} * table[ids[i] * dim + j];
    }
  }
  for (const char* file : {"i64.npy", "i32.npy"}) {
    SCOPED_TRACE(file);
    const std::string out = dir + "/out.npy";
    auto r = RunCli({"query", "--db", *db_, "--table", "t_d64", "--mode", "sum", "--indices",
                     "@" + dir + "/" + file, "--offsets", "@" + dir + "/o.npy", "--weights",
                     "@" + dir + "/w.npy", "--out", out});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::vector<int64_t> shape;
    const std::vector<float> got = embstore::testing::ReadF32Npy(out, &shape);
    ASSERT_EQ(shape, (std::vector<int64_t>{bags, dim}));
    ASSERT_EQ(got.size(), expected.size());
    for (size_t k = 0; k < got.size(); ++k) {
      ASSERT_NEAR(got[k], expected[k], 1e-4 * (1.0 + std::abs(expected[k]))) << "element " << k;
    }
  }
}

struct ErrorCase {
  std::vector<std::string> args;  // after --db/--table
  std::string expect;
};

TEST_F(CliGoldenTest, ErrorsAreClearAndWriteNothing) {
  const std::string out = *tmp_ / "err_out.npy";
  std::vector<int32_t> fi = {0, 1};
  std::vector<float> ff = {0.5f, 1.5f};
  ASSERT_TRUE(storage::WriteNpy(*tmp_ / "float_idx.npy", "<f4", {2},
                                {reinterpret_cast<uint8_t*>(ff.data()), 8})
                  .ok());
  std::vector<int64_t> four = {1, 2, 3, 4};
  ASSERT_TRUE(storage::WriteNpy(*tmp_ / "two_by_two.npy", "<i8", {2, 2},
                                {reinterpret_cast<uint8_t*>(four.data()), 32})
                  .ok());
  // A 128-byte file asking for 2^62 bags of 0 ids.
  ASSERT_TRUE(storage::WriteNpy(*tmp_ / "zero_columns.npy", "<i8", {int64_t{1} << 62, 0}, {}).ok());
  const std::vector<ErrorCase> cases = {
      {{"--indices", "1,2,1000", "--offsets", "0"},
       "indices[2] = 1000 is out of range for table 't_d8' (10 rows)"},
      {{"--indices", "1,-2", "--offsets", "0"}, "indices[1] = -2"},
      {{"--indices", "1,2", "--offsets", "1"}, "offsets[0]"},
      {{"--indices", "1,2,3", "--offsets", "0,2,1"}, "offsets"},
      {{"--indices", "1,2,3", "--offsets", "0,5"}, "offsets"},
      {{"--indices", "1,2,3", "--offsets", "0", "--weights", "1,2"}, "weights"},
      {{"--indices", "@" + (*tmp_ / "float_idx.npy"), "--offsets", "0"}, "int32 or int64"},
      {{"--indices", "1.5,2", "--offsets", "0"}, "not an integer"},
      {{"--indices", "1,2", "--offsets", "0", "--mode", "median"}, "--mode"},
      {{"--indices", "1,2", "--offsets", "0", "--padding-idx", "10"}, "padding_idx"},
      {{"--indices", "1,2", "--offsets", "0", "--padding-idx", "-11"}, "padding_idx"},
      {{"--indices", "1,2", "--offsets", "0", "--max-norm", "0"}, "max_norm"},
      {{"--indices", "1,2", "--offsets", "0", "--max-norm", "-1"}, "max_norm"},
      {{"--indices", "1,2", "--offsets", "0", "--max-norm", "abc"}, "not a number"},
      {{"--indices", "1,2,3", "--bag-ends", "0,5"}, "ends"},
      {{"--indices", "1,2,3", "--bag-ends", "1,0"}, "ends"},
      {{"--indices", "1,2", "--offsets", "0", "--padding-idx", "+-1"}, "'+-1' is not an integer"},
      {{"--indices", "1,2", "--offsets", "0", "--weights", "1e39,1"},
       "'1e39' is outside the float32 range"},
      {{"--indices", "1,2", "--offsets", "0", "--max-norm", "1e999"}, "'1e999' is out of range"},
      {{"--indices", "@" + (*tmp_ / "two_by_two.npy"), "--weights", "1,1,1,1"},
       "--weights has shape [4] but --indices has shape [2, 2]"},
      {{"--indices", "1,2", "--indices", "3", "--offsets", "0"},
       "--indices is given more than once"},
      {{"--indices", "@" + (*tmp_ / "zero_columns.npy")},
       "4611686018427387904 bags of dim 8 need more memory than can be addressed"},
  };
  for (const ErrorCase& e : cases) {
    std::vector<std::string> args = {"query", "--db", *db_, "--table", "t_d8"};
    args.insert(args.end(), e.args.begin(), e.args.end());
    args.insert(args.end(), {"--out", out});
    auto r = RunCli(args);
    EXPECT_EQ(r.exit_code, 1) << e.expect << "\n" << r.err;
    EXPECT_THAT(r.err, HasSubstr(e.expect)) << "want '" << e.expect << "' in: " << r.err;
    EXPECT_FALSE(std::filesystem::exists(out)) << e.expect;
  }
  auto r = RunCli(
      {"query", "--db", *db_, "--table", "nope", "--indices", "1", "--offsets", "0", "--out", out});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("unknown table 'nope'")) << r.err;
  EXPECT_FALSE(std::filesystem::exists(out));
  // 2-D indices with offsets.
  std::vector<int64_t> two = {1, 2, 3, 4};
  ASSERT_TRUE(storage::WriteNpy(*tmp_ / "two.npy", "<i8", {2, 2},
                                {reinterpret_cast<uint8_t*>(two.data()), 32})
                  .ok());
  r = RunCli({"query", "--db", *db_, "--table", "t_d8", "--indices", "@" + (*tmp_ / "two.npy"),
              "--offsets", "0", "--out", out});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("if input is 2D, offsets has to be None")) << r.err;
  EXPECT_FALSE(std::filesystem::exists(out));
}

// `query --db DB --table t_d8 --mode sum` with `extra`.
CommandResult SumQuery(const std::string& db, const std::vector<std::string>& extra) {
  std::vector<std::string> args = {"query", "--db", db, "--table", "t_d8", "--mode", "sum"};
  args.insert(args.end(), extra.begin(), extra.end());
  return RunCli(args);
}

TEST_F(CliGoldenTest, BooleanFlagsTakeEqualsFalse) {
  auto run = [&](const std::vector<std::string>& extra) { return SumQuery(*db_, extra); };
  auto plain = run({"--indices", "1,2,3", "--offsets", "0,1"});
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  auto off = run({"--indices", "1,2,3", "--offsets", "0,1", "--include-last-offset=false"});
  ASSERT_EQ(off.exit_code, 0) << off.err;
  EXPECT_EQ(off.out, plain.out);
  auto on = run({"--indices", "1,2,3", "--offsets", "0,1", "--include-last-offset=true"});
  ASSERT_EQ(on.exit_code, 0) << on.err;
  EXPECT_NE(on.out, plain.out);  // one bag instead of two
  EXPECT_EQ(std::count(on.out.begin(), on.out.end(), '\n'), 1);
}

// A thread count past the cores is capped (it crashed inside TBB).
TEST_F(CliGoldenTest, ThreadCountPastTheCoresIsCapped) {
  auto run = [&](const std::vector<std::string>& extra) { return SumQuery(*db_, extra); };
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < 40000; ++i) ids.push_back((i * 7) % 10);
  ASSERT_TRUE(storage::WriteNpy(*tmp_ / "many.npy", "<i8", {2000, 20},
                                {reinterpret_cast<uint8_t*>(ids.data()), ids.size() * 8})
                  .ok());
  auto one = run({"--indices", "@" + (*tmp_ / "many.npy"), "--threads", "1"});
  ASSERT_EQ(one.exit_code, 0) << one.err;
  auto lots = run({"--indices", "@" + (*tmp_ / "many.npy"), "--threads", "10000000"});
  ASSERT_EQ(lots.exit_code, 0) << lots.err;
  EXPECT_EQ(lots.out, one.out);
}

TEST_F(CliGoldenTest, SubnormalWeightIsANumber) {
  auto run = [&](const std::vector<std::string>& extra) { return SumQuery(*db_, extra); };
  auto tiny = run({"--indices", "1,2", "--offsets", "0", "--weights", "1e-310,1"});
  ASSERT_EQ(tiny.exit_code, 0) << tiny.err;  // 1e-310 rounds to 0 in float32: row 2 alone
  auto row2 = run({"--indices", "2", "--offsets", "0"});
  EXPECT_EQ(tiny.out, row2.out);
}

// K = 0 batched bags over a huge batch return at once.
TEST_F(CliGoldenTest, ZeroBagsPerSampleOverAHugeBatchReturnAtOnce) {
  auto run = [&](const std::vector<std::string>& extra) { return SumQuery(*db_, extra); };
  ASSERT_TRUE(storage::WriteNpy(*tmp_ / "huge_batch.npy", "<i8", {int64_t{1} << 62, 0}, {}).ok());
  const std::string out = *tmp_ / "k0.npy";
  auto k0 = run({"--indices", "@" + (*tmp_ / "huge_batch.npy"), "--bag-ends",
                 "@" + (*tmp_ / "huge_batch.npy"), "--out", out});
  ASSERT_EQ(k0.exit_code, 0) << k0.err;
  std::vector<int64_t> shape;
  EXPECT_TRUE(embstore::testing::ReadF32Npy(out, &shape).empty());
  EXPECT_EQ(shape, (std::vector<int64_t>{int64_t{1} << 62, 0, 8}));
}

// --out follows a symbolic link (the file it leads to is replaced, the link
// stays), writes straight through a character device, and refuses a
// directory or a dangling link without leaving anything behind.
TEST_F(CliGoldenTest, OutFollowsLinksAndDevices) {
  const std::string dir = *tmp_ / "outs";
  std::filesystem::create_directories(dir);
  const std::vector<std::string> q = {"query", "--db",      *db_,  "--table",   "t_d8", "--mode",
                                      "sum",   "--indices", "1,2", "--offsets", "0",    "--out"};
  auto with_out = [&](const std::string& path) {
    std::vector<std::string> args = q;
    args.push_back(path);
    return RunCli(args);
  };
  { std::ofstream(dir + "/target.npy") << "old"; }
  std::filesystem::create_symlink("target.npy", dir + "/link.npy");
  auto r = with_out(dir + "/link.npy");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(std::filesystem::is_symlink(dir + "/link.npy"));
  std::vector<int64_t> shape;
  EXPECT_EQ(embstore::testing::ReadF32Npy(dir + "/target.npy", &shape).size(), 8u);
  EXPECT_EQ(shape, (std::vector<int64_t>{1, 8}));

  r = with_out("/dev/null");
  EXPECT_EQ(r.exit_code, 0) << r.err;

  std::filesystem::create_symlink("missing.npy", dir + "/dangling.npy");
  r = with_out(dir + "/dangling.npy");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("is a symbolic link to a missing file")) << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir + "/missing.npy"));

  std::filesystem::create_directories(dir + "/sub");
  r = with_out(dir + "/sub");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("is a directory")) << r.err;
  size_t entries = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    (void)e;
    ++entries;
  }
  EXPECT_EQ(entries, 4u);  // target, link, dangling, sub: no temporary left
}

}  // namespace
}  // namespace embstore
