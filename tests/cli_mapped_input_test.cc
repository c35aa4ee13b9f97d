// `embstore query` maps large .npy inputs (storage::MapOrLoadNpy) and pools
// in batches streamed to --out. These tests check what that must not change:
// results the same as from a read input and a single batch (against the
// library), and an input truncated by another process while the query runs
// ends the process with a message and exit code 2, leaving no output file,
// instead of killing it with SIGBUS.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "checkpoint/npy.h"
#include "embstore/query.h"
#include "embstore/store.h"
#include "test_util.h"

namespace embstore {
namespace {

using testing::RunCli;
using testing::TempDir;

void WriteI64(const std::string& path, const std::vector<int64_t>& v) {
  ASSERT_TRUE(storage::WriteNpy(path, "<i8", {static_cast<int64_t>(v.size())},
                                {reinterpret_cast<const uint8_t*>(v.data()), v.size() * 8})
                  .ok());
}

// Imports a random rows x dim f32 table "t" into dir/db through the CLI;
// the store's path, or "" on failure.
std::string ImportRandom(const TempDir& dir, int64_t rows, int64_t dim, uint32_t seed) {
  testing::WriteF32Npy(dir / "t.npy", {rows, dim}, testing::RandomFloats(rows * dim, seed));
  const std::string db = dir / "db";
  const auto r = RunCli({"import", "--db", db, "--table", "t", "--from", dir / "t.npy"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return r.exit_code == 0 ? db : "";
}

// Whether process `pid` has `path` mapped.
bool Maps(pid_t pid, const std::string& path) {
  std::ifstream maps("/proc/" + std::to_string(pid) + "/maps");
  std::string line;
  while (std::getline(maps, line))
    if (line.find(path) != std::string::npos) return true;
  return false;
}

// 3 MiB of ids (mapped), many batches of output (~8 MiB each), weights:
// the CLI's output equals the library's single call on the same request.
TEST(CliMappedInput, BatchedAndMappedQueryEqualsTheLibrary) {
  TempDir dir;
  const int64_t rows = 5000, dim = 96;
  const std::string db = ImportRandom(dir, rows, dim, 9);
  ASSERT_FALSE(db.empty());
  std::mt19937_64 rng(4);
  const int64_t n = 400000;  // 3.2 MB of int64 ids: mapped
  std::vector<int64_t> ids(n), offsets;
  for (int64_t& id : ids) id = static_cast<int64_t>(rng() % rows);
  for (int64_t at = 0; at < n; at += static_cast<int64_t>(rng() % 9)) offsets.push_back(at);
  std::vector<float> w(n);
  for (float& x : w) x = static_cast<float>(rng() % 1000) / 500.0f - 1.0f;
  WriteI64(dir / "ids.npy", ids);
  WriteI64(dir / "off.npy", offsets);
  testing::WriteF32Npy(dir / "w.npy", {n}, w);
  const int64_t bags = static_cast<int64_t>(offsets.size());
  ASSERT_GT(bags * dim * 4, int64_t{3} * (8 << 20)) << "want several output batches";

  auto store = Store::Open(db, {});
  ASSERT_TRUE(store.ok());
  auto snap = (*store)->GetSnapshot("t");
  ASSERT_TRUE(snap.ok());
  for (const std::string mode : {"sum", "max"}) {
    for (const bool ilo : {false, true}) {
      BagRequest req;
      req.indices = std::span<const int64_t>(ids);
      std::vector<int64_t> offs = offsets;
      if (ilo) offs.push_back(n - 3);  // the last 3 ids are ignored
      req.offsets = IndexArray(std::span<const int64_t>(offs));
      req.weights = std::span<const float>(w);
      QueryOptions qo;
      qo.mode = *ParsePoolingMode(mode);
      qo.include_last_offset = ilo;
      auto want = EmbeddingBag(snap->view(), req, qo);
      ASSERT_TRUE(want.ok()) << want.status().ToString();
      WriteI64(dir / "offs.npy", offs);
      std::vector<std::string> args = {"query",
                                       "--db",
                                       db,
                                       "--table",
                                       "t",
                                       "--mode",
                                       mode,
                                       "--indices",
                                       "@" + (dir / "ids.npy"),
                                       "--offsets",
                                       "@" + (dir / "offs.npy"),
                                       "--weights",
                                       "@" + (dir / "w.npy"),
                                       "--out",
                                       dir / "out.npy"};
      if (ilo) args.push_back("--include-last-offset");
      auto r = RunCli(args);
      ASSERT_EQ(r.exit_code, 0) << r.err;
      std::vector<int64_t> shape;
      const std::vector<float> got = testing::ReadF32Npy(dir / "out.npy", &shape);
      EXPECT_EQ(shape, want->shape);
      EXPECT_EQ(got, want->values) << mode << " include_last_offset " << ilo;
    }
  }
}

// 2-D ids [B, N] with --include-last-offset, and batched bags (--bag-ends),
// over several output batches: equal to the library's single call.
TEST(CliMappedInput, TwoDimensionalAndBatchedBagsEqualTheLibrary) {
  TempDir dir;
  const int64_t rows = 3000, dim = 64;
  const std::string db = ImportRandom(dir, rows, dim, 5);
  ASSERT_FALSE(db.empty());
  auto store = Store::Open(db, {});
  ASSERT_TRUE(store.ok());
  auto snap = (*store)->GetSnapshot("t");
  ASSERT_TRUE(snap.ok());
  std::mt19937_64 rng(8);
  // [B, N] = [100000, 4]: 3.2 MB of ids (mapped), 99,999 bags: 25 MB of output.
  const int64_t b = 100000, n = 4;
  std::vector<int64_t> ids(b * n);
  for (int64_t& id : ids) id = static_cast<int64_t>(rng() % rows);
  ASSERT_TRUE(storage::WriteNpy(dir / "ids2.npy", "<i8", {b, n},
                                {reinterpret_cast<const uint8_t*>(ids.data()), ids.size() * 8})
                  .ok());
  BagRequest req;
  req.indices = std::span<const int64_t>(ids);
  req.indices_shape = {b, n};
  QueryOptions qo;
  qo.mode = PoolingMode::kMax;
  qo.include_last_offset = true;
  auto want = EmbeddingBag(snap->view(), req, qo);
  ASSERT_TRUE(want.ok()) << want.status().ToString();
  auto r = RunCli({"query", "--db", db, "--table", "t", "--mode", "max", "--indices",
                   "@" + (dir / "ids2.npy"), "--include-last-offset", "--out", dir / "o2.npy"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::vector<int64_t> shape;
  EXPECT_EQ(testing::ReadF32Npy(dir / "o2.npy", &shape), want->values);
  EXPECT_EQ(shape, want->shape);

  // Batched: [B, N] ids with [B, K] inclusive ends: 50000 samples x 3 bags.
  const int64_t k = 3;
  std::vector<int64_t> ends(b / 2 * k);
  for (int64_t s = 0; s < b / 2; ++s) {
    ends[s * k] = static_cast<int64_t>(rng() % 2) - 1;
    ends[s * k + 1] = ends[s * k] + static_cast<int64_t>(rng() % 3);
    ends[s * k + 2] = n - 1;
  }
  ASSERT_TRUE(storage::WriteNpy(dir / "ids3.npy", "<i8", {b / 2, n},
                                {reinterpret_cast<const uint8_t*>(ids.data()), ids.size() * 4})
                  .ok());
  ASSERT_TRUE(storage::WriteNpy(dir / "ends.npy", "<i8", {b / 2, k},
                                {reinterpret_cast<const uint8_t*>(ends.data()), ends.size() * 8})
                  .ok());
  BatchedBagRequest br;
  br.indices = std::span<const int64_t>(ids.data(), static_cast<size_t>(b / 2 * n));
  br.ends = IndexArray(std::span<const int64_t>(ends));
  br.batch = b / 2;
  br.items = n;
  br.bags_per_sample = k;
  QueryOptions sum;
  sum.mode = PoolingMode::kSum;
  auto want3 = BatchedEmbeddingBag(snap->view(), br, sum);
  ASSERT_TRUE(want3.ok()) << want3.status().ToString();
  r = RunCli({"query", "--db", db, "--table", "t", "--mode", "sum", "--indices",
              "@" + (dir / "ids3.npy"), "--bag-ends", "@" + (dir / "ends.npy"), "--out",
              dir / "o3.npy"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(testing::ReadF32Npy(dir / "o3.npy", &shape), want3->values);
  EXPECT_EQ(shape, want3->shape);
  ASSERT_GT(static_cast<int64_t>(want3->values.size()) * 4, int64_t{2} * (8 << 20));
}

// The ids file is truncated while the query reads it (mapped): exit code 2,
// the message, no output file and no temporary left; never a signal.
TEST(CliMappedInput, InputTruncatedMidQueryIsAnErrorNotACrash) {
  TempDir dir;
  // 4 KiB rows, bags of 200: an 8 MiB output batch is 2048 bags, 409,600 ids
  // and 1.6 GB of rows read; 2M ids make 5 batches, each copying its ids out
  // of the mapped file when it starts.
  const int64_t rows = 256, dim = 1024;
  const std::string db = ImportRandom(dir, rows, dim, 2);
  ASSERT_FALSE(db.empty());
  std::vector<int64_t> ids(2 << 20), offsets;
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int64_t>(i % rows);
  for (int64_t at = 0; at < static_cast<int64_t>(ids.size()); at += 200) offsets.push_back(at);
  const std::string ids_path = dir / "ids.npy";
  WriteI64(ids_path, ids);
  WriteI64(dir / "off.npy", offsets);
  const std::string out = dir / "out.npy";
  const std::string err_path = dir / "err.txt";
  const std::string ids_arg = "@" + ids_path, off_arg = "@" + (dir / "off.npy");
  const char* argv[] = {EMBSTORE_CLI, "query",         "--db",  db.c_str(),  "--table",
                        "t",          "--mode",        "sum",   "--indices", ids_arg.c_str(),
                        "--offsets",  off_arg.c_str(), "--out", out.c_str(), nullptr};
  const int err_fd = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(err_fd, 0);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::dup2(err_fd, 2);
    ::execv(argv[0], const_cast<char* const*>(argv));
    ::_exit(127);
  }
  ::close(err_fd);
  // Once the ids are mapped, truncate the file: a later batch (or the
  // validation) reads past its new end.
  bool mapped = false;
  for (int i = 0; i < 3000 && !mapped; ++i) {
    mapped = Maps(pid, ids_path);
    if (!mapped) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // the query takes ~250 ms
  ASSERT_EQ(::truncate(ids_path.c_str(), 128), 0);             // the header only
  int status = 0;
  bool exited = false;
  for (int i = 0; i < 1200 && !exited; ++i) {  // at most 120 s
    exited = ::waitpid(pid, &status, WNOHANG) == pid;
    if (!exited) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (!exited) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
  }
  std::string err;
  {
    std::ifstream f(err_path);
    std::getline(f, err, '\0');
  }
  ASSERT_TRUE(mapped) << "the CLI never mapped the ids file";
  ASSERT_TRUE(exited) << "the query did not end in 120 s";
  ASSERT_TRUE(WIFEXITED(status)) << "killed by signal " << WTERMSIG(status) << ": " << err;
  EXPECT_EQ(WEXITSTATUS(status), 2) << err;
  EXPECT_NE(err.find("was truncated under it"), std::string::npos) << err;
  EXPECT_FALSE(std::filesystem::exists(out));
  for (const auto& e : std::filesystem::directory_iterator(dir.path()))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
}

// A bad id in a late batch: with --out the ids are validated batch by batch
// (one pass), yet the message names the id's position in the whole request,
// the exit code is a usage error's, and no output file (or temporary) is
// left; printed output validates first and prints nothing. 1-D with
// offsets, 2-D and --bag-ends. --stats reports the time of each phase.
TEST(CliMappedInput, BadIdInALateBatchNamesItsPositionInTheRequest) {
  TempDir dir;
  const int64_t rows = 1000, dim = 128;
  const std::string db = ImportRandom(dir, rows, dim, 6);
  ASSERT_FALSE(db.empty());
  // 1-D: bags of 4, 400,000 ids: 100,000 bags = 51 MB of output, 7 batches.
  const int64_t n = 400000, bad = n - 5;
  std::vector<int64_t> ids(n), offsets;
  for (int64_t i = 0; i < n; ++i) ids[i] = i % rows;
  for (int64_t at = 0; at < n; at += 4) offsets.push_back(at);
  ids[bad] = rows + 7;
  WriteI64(dir / "ids.npy", ids);
  WriteI64(dir / "off.npy", offsets);
  ASSERT_TRUE(storage::WriteNpy(dir / "ids2.npy", "<i8", {n / 4, 4},
                                {reinterpret_cast<const uint8_t*>(ids.data()), ids.size() * 8})
                  .ok());
  std::vector<int64_t> ends(static_cast<size_t>(n / 4), 3);  // one bag of 4 per sample
  ASSERT_TRUE(storage::WriteNpy(dir / "ends.npy", "<i8", {n / 4, 1},
                                {reinterpret_cast<const uint8_t*>(ends.data()), ends.size() * 8})
                  .ok());
  const std::string range = " = " + std::to_string(rows + 7) + " is out of range for table 't'";
  const std::string out = dir / "out.npy";
  struct Case {
    std::vector<std::string> layout;
    std::string where;
  };
  const std::vector<Case> cases = {
      {{"--indices", "@" + (dir / "ids.npy"), "--offsets", "@" + (dir / "off.npy")},
       "indices[" + std::to_string(bad) + "]"},
      {{"--indices", "@" + (dir / "ids2.npy")}, "indices[" + std::to_string(bad) + "]"},
      {{"--indices", "@" + (dir / "ids2.npy"), "--bag-ends", "@" + (dir / "ends.npy")},
       "indices[" + std::to_string(bad) + "]"},
  };
  int checked = 0;
  for (const Case& c : cases) {
    for (const bool to_file : {true, false}) {
      std::vector<std::string> args = {"query", "--db", db, "--table", "t", "--stats"};
      args.insert(args.end(), c.layout.begin(), c.layout.end());
      if (to_file) args.insert(args.end(), {"--out", out});
      const auto r = RunCli(args);
      EXPECT_EQ(r.exit_code, 1) << r.err;
      EXPECT_NE(r.err.find(c.where), std::string::npos) << r.err;
      EXPECT_NE(r.err.find(range), std::string::npos) << r.err;
      EXPECT_TRUE(r.out.empty()) << r.out.substr(0, 200);
      EXPECT_FALSE(std::filesystem::exists(out));
      for (const auto& e : std::filesystem::directory_iterator(dir.path()))
        EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
      ++checked;
    }
  }
  EXPECT_EQ(checked, 6);
  // Fixed, the same query succeeds and --stats names every phase.
  ids[bad] = 3;
  WriteI64(dir / "ids.npy", ids);
  const auto r =
      RunCli({"query", "--db", db, "--table", "t", "--stats", "--indices", "@" + (dir / "ids.npy"),
              "--offsets", "@" + (dir / "off.npy"), "--out", out});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* phase :
       {"time: inputs=", " open=", " validate=", " copy=", " pool=", " write=", " commit="})
    EXPECT_NE(r.err.find(phase), std::string::npos) << phase << " in " << r.err;
  std::vector<int64_t> shape;
  EXPECT_EQ(testing::ReadF32Npy(out, &shape).size(), static_cast<size_t>(n / 4 * dim));
}

}  // namespace
}  // namespace embstore
