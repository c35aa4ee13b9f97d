// End-to-end tests of the `embstore` CLI's store commands, error paths included.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <random>
#include <thread>

#include "storage/catalog.h"
#include "test_util.h"

namespace embstore {
namespace {

using embstore::testing::CommandResult;
using embstore::testing::RunCli;
using embstore::testing::TempDir;
using ::testing::HasSubstr;
using ::testing::Not;

class CliStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    values_ = embstore::testing::RandomFloats(50 * 7, 11);
    embstore::testing::WriteF32Npy(tmp_ / "w.npy", {50, 7}, values_);
    db_ = tmp_ / "db";
  }
  CommandResult Import(const std::string& table, const std::string& file,
                       std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"import", "--db", db_, "--table", table, "--from", file};
    args.insert(args.end(), extra.begin(), extra.end());
    return RunCli(args);
  }
  // The names of the regular files in the store's tables/ directory.
  std::vector<std::string> TableFiles() const {
    std::vector<std::string> names;
    for (auto& e : std::filesystem::directory_iterator(db_ + "/tables")) {
      if (e.is_regular_file()) names.push_back(e.path().filename());
    }
    return names;
  }
  TempDir tmp_;
  std::string db_;
  std::vector<float> values_;
};

TEST_F(CliStoreTest, InitCreatesAStoreAndImportPrintsTheTable) {
  auto r = RunCli({"init", "--db", db_});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = Import("items", tmp_ / "w.npy");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("imported items: 50 x 7 f32, version 1"));
}

TEST_F(CliStoreTest, ListPrintsNameRowsDimDtypeVersion) {
  ASSERT_EQ(Import("items", tmp_ / "w.npy").exit_code, 0);
  auto r = RunCli({"list", "--db", db_});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("items\t50\t7\tf32\tv1\t", 0), 0u) << r.out;
}

TEST_F(CliStoreTest, InfoPrintsEveryField) {
  ASSERT_EQ(Import("items", tmp_ / "w.npy").exit_code, 0);
  auto r = RunCli({"info", "--db", db_, "--table", "items"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* field :
       {"rows:          50", "dim:           7", "dtype:         f32", "version:       1",
        "bytes:", "checksum:      xxh64:", "source:", "w.npy", "bytes_per_row: 28"}) {
    EXPECT_THAT(r.out, HasSubstr(field)) << field << "\n" << r.out;
  }
}

// An f32 C-order import exports identical bytes of data.
TEST_F(CliStoreTest, ExportOfAnF32TableGivesTheImportedValues) {
  ASSERT_EQ(Import("items", tmp_ / "w.npy").exit_code, 0);
  auto r = RunCli({"export", "--db", db_, "--table", "items", "--out", tmp_ / "out.npy"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::vector<int64_t> shape;
  EXPECT_EQ(embstore::testing::ReadF32Npy(tmp_ / "out.npy", &shape), values_);
  EXPECT_EQ(shape, (std::vector<int64_t>{50, 7}));
}

TEST_F(CliStoreTest, VerifyPassesAnIntactStoreAndTable) {
  ASSERT_EQ(Import("items", tmp_ / "w.npy").exit_code, 0);
  auto r = RunCli({"verify", "--db", db_});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("ok\titems"));
  r = RunCli({"verify", "--db", db_, "--table", "items"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

TEST_F(CliStoreTest, DropRemovesTheTableAndItsFiles) {
  ASSERT_EQ(Import("items", tmp_ / "w.npy").exit_code, 0);
  auto r = RunCli({"drop", "--db", db_, "--table", "items"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = RunCli({"list", "--db", db_});
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(TableFiles().size(), 0u);
}

TEST_F(CliStoreTest, ImportRefusesAnExistingTableWithoutReplace) {
  ASSERT_EQ(Import("t", tmp_ / "w.npy").exit_code, 0);
  auto r = Import("t", tmp_ / "w.npy");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("exists"));
  EXPECT_THAT(r.err, HasSubstr("--replace"));
}

TEST_F(CliStoreTest, ImportReplaceStoresANewVersionInTheDtypeAsked) {
  ASSERT_EQ(Import("t", tmp_ / "w.npy").exit_code, 0);
  auto r = Import("t", tmp_ / "w.npy", {"--replace", "--dtype", "f16"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("f16, version 2"));
  r = RunCli({"info", "--db", db_, "--table", "t"});
  EXPECT_THAT(r.out, HasSubstr("bytes_per_row: 14"));
}

TEST_F(CliStoreTest, ExportOfAnF16TableWritesF2) {
  ASSERT_EQ(Import("t", tmp_ / "w.npy", {"--dtype", "f16"}).exit_code, 0);
  auto r = RunCli({"export", "--db", db_, "--table", "t", "--out", tmp_ / "h.npy"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(embstore::testing::ReadBytes(tmp_ / "h.npy").substr(0, 64), HasSubstr("'<f2'"));
}

TEST_F(CliStoreTest, HelpListsTheCommandsAndEachHasItsOwn) {
  auto r = RunCli({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  for (const char* cmd :
       {"init", "import", "list", "info", "export", "drop", "verify", "inspect", "query"}) {
    EXPECT_THAT(r.out, HasSubstr(cmd)) << cmd;
    auto h = RunCli({cmd, "--help"});
    EXPECT_EQ(h.exit_code, 0) << cmd;
    EXPECT_THAT(h.out, HasSubstr("Usage")) << cmd;
  }
}

TEST_F(CliStoreTest, NoCommandOrAnUnknownOneIsAUsageError) {
  auto r = RunCli({});
  EXPECT_EQ(r.exit_code, 1);
  r = RunCli({"frobnicate"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("unknown command 'frobnicate'"));
}

TEST_F(CliStoreTest, MissingOrUnknownOptionsAreUsageErrors) {
  auto r = RunCli({"import", "--db", db_, "--from", tmp_ / "w.npy"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("--table is required"));
  r = RunCli({"list", "--db", db_, "--bogus"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("bogus"));
}

TEST_F(CliStoreTest, ImportRefusesABadDtypeOrTableName) {
  auto r = Import("t", tmp_ / "w.npy", {"--dtype", "f12"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("--dtype"));
  r = Import("bad name!", tmp_ / "w.npy");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("table name"));
}

TEST_F(CliStoreTest, ReadingAMissingStoreFailsAndCreatesNothing) {
  auto r = RunCli({"list", "--db", tmp_ / "nostore"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("no embstore store"));
  EXPECT_FALSE(std::filesystem::exists(tmp_ / "nostore"));
}

TEST_F(CliStoreTest, AnUnknownTableIsRefusedByInfoDropAndExport) {
  ASSERT_EQ(RunCli({"init", "--db", db_}).exit_code, 0);
  auto r = RunCli({"info", "--db", db_, "--table", "ghost"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("unknown table 'ghost'"));
  r = RunCli({"drop", "--db", db_, "--table", "ghost"});
  EXPECT_EQ(r.exit_code, 1);
  r = RunCli({"export", "--db", db_, "--table", "ghost", "--out", tmp_ / "x.npy"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_FALSE(std::filesystem::exists(tmp_ / "x.npy"));
}

TEST_F(CliStoreTest, ImportOfAMissingFileNamesIt) {
  auto r = Import("t", tmp_ / "missing.npy");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("missing.npy"));
}

TEST_F(CliStoreTest, BadNpyFilesAreRefusedAndNothingIsImported) {
  const std::string good = embstore::testing::ReadBytes(tmp_ / "w.npy");
  struct Bad {
    std::string name, bytes, expect;
  };
  std::string absurd = good;
  absurd[8] = '\xff';
  absurd[9] = '\xff';
  std::string wrong_dtype = good;
  wrong_dtype.replace(wrong_dtype.find("<f4"), 3, "<i4");
  std::vector<Bad> cases = {
      {"truncated", good.substr(0, good.size() - 100), "truncated"},
      {"magic", "GARBAGE" + good.substr(7), "not a checkpoint embstore can read"},
      {"absurd", absurd, "header"},
      {"dtype", wrong_dtype, "int32"},
  };
  for (const Bad& b : cases) {
    embstore::testing::WriteBytes(tmp_ / "bad.npy", b.bytes);
    auto r = Import("t_" + b.name, tmp_ / "bad.npy");
    EXPECT_EQ(r.exit_code, 1) << b.name << ": " << r.err;
    EXPECT_THAT(r.err, HasSubstr(b.expect)) << b.name << ": " << r.err;
    EXPECT_THAT(r.err, Not(HasSubstr("internal error"))) << r.err;
  }
  auto r = RunCli({"list", "--db", db_});
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(TableFiles().size(), 0u);
}

TEST_F(CliStoreTest, VerifyReportsCorruptTableWithExitCode2) {
  ASSERT_EQ(Import("good", tmp_ / "w.npy").exit_code, 0);
  ASSERT_EQ(Import("bad", tmp_ / "w.npy").exit_code, 0);
  const std::string path = db_ + "/tables/bad.v1.emb";
  std::string bytes = embstore::testing::ReadBytes(path);
  bytes[5000] ^= 0x10;
  embstore::testing::WriteBytes(path, bytes);
  auto r = RunCli({"verify", "--db", db_});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.out, HasSubstr("CORRUPT\tbad")) << r.out;
  EXPECT_THAT(r.out, HasSubstr("ok\tgood")) << r.out;
  EXPECT_THAT(r.err, HasSubstr("'bad'")) << r.err;
}

// kill -9 of `import --replace` at random moments leaves the previous version
// served (or the new one, complete) and `verify` clean.
TEST_F(CliStoreTest, Kill9DuringImportReplace) {
  // A 24 MB source so the import takes a while.
  const int64_t rows = 24 * 1024, dim = 256;
  std::vector<float> big(static_cast<size_t>(rows * dim));
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<float>(i % 1000) * 0.5f;
  embstore::testing::WriteF32Npy(tmp_ / "big.npy", {rows, dim}, big);
  ASSERT_EQ(Import("t", tmp_ / "w.npy").exit_code, 0);
  std::mt19937 rng(7);
  int interrupted = 0;
  for (int iter = 0; iter < 8; ++iter) {
    pid_t pid = ::fork();
    if (pid == 0) {
      std::freopen("/dev/null", "w", stdout);
      std::string exe = EMBSTORE_CLI;
      std::string from = tmp_ / "big.npy";
      execl(exe.c_str(), exe.c_str(), "import", "--db", db_.c_str(), "--table", "t", "--from",
            from.c_str(), "--replace", static_cast<char*>(nullptr));
      _exit(127);
    }
    std::this_thread::sleep_for(
        std::chrono::milliseconds(std::uniform_int_distribution<int>(1, 120)(rng)));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (WIFSIGNALED(status)) ++interrupted;
    auto v = RunCli({"verify", "--db", db_});
    ASSERT_EQ(v.exit_code, 0) << v.out << v.err;
    auto info = RunCli({"info", "--db", db_, "--table", "t"});
    ASSERT_EQ(info.exit_code, 0);
    ASSERT_EQ(RunCli({"export", "--db", db_, "--table", "t", "--out", tmp_ / "e.npy"}).exit_code,
              0);
    std::vector<int64_t> shape;
    auto got = embstore::testing::ReadF32Npy(tmp_ / "e.npy", &shape);
    if (shape[0] == 50) {
      EXPECT_EQ(got, values_);  // the previous version, intact
    } else {
      EXPECT_EQ(got, big);  // the new version, complete
    }
    ASSERT_EQ(Import("t", tmp_ / "w.npy", {"--replace"}).exit_code, 0);
    // That import collected what the killed one left: the current version
    // and the one retained version, nothing else.
    const std::vector<std::string> files = TableFiles();
    for (const std::string& f : files) EXPECT_THAT(f, Not(HasSubstr(".tmp-")));
    EXPECT_EQ(files.size(), 2u);
  }
  EXPECT_GT(interrupted, 0);
}

// Retained versions: --keep-versions, `list --versions`, `info`, `rollback`.
class CliVersionsTest : public CliStoreTest {
 protected:
  // Table "t": version 1 from w.npy, version 2 (current) from w2.npy, its
  // values doubled.
  void SetUp() override {
    CliStoreTest::SetUp();
    twice_.resize(values_.size());
    for (size_t i = 0; i < twice_.size(); ++i) twice_[i] = values_[i] * 2;
    embstore::testing::WriteF32Npy(tmp_ / "w2.npy", {50, 7}, twice_);
    ASSERT_EQ(Import("t", tmp_ / "w.npy").exit_code, 0);
    ASSERT_EQ(Import("t", tmp_ / "w2.npy", {"--replace"}).exit_code, 0);
  }
  std::vector<float> Exported() {
    EXPECT_EQ(RunCli({"export", "--db", db_, "--table", "t", "--out", tmp_ / "e.npy"}).exit_code,
              0);
    return embstore::testing::ReadF32Npy(tmp_ / "e.npy");
  }
  std::vector<float> twice_;
};

TEST_F(CliVersionsTest, ListVersionsAndInfoShowTheRetainedVersion) {
  auto r = RunCli({"list", "--db", db_, "--versions"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("t\t50\t7\tf32\tv2\t"));
  EXPECT_THAT(r.out, HasSubstr("\tcurrent\n"));
  EXPECT_THAT(r.out, HasSubstr("t\t50\t7\tf32\tv1\t"));
  EXPECT_THAT(r.out, HasSubstr("\tretained\n"));
  r = RunCli({"info", "--db", db_, "--table", "t"});
  EXPECT_THAT(r.out, HasSubstr("retained:      v1 50 x 7 f32"));
}

TEST_F(CliVersionsTest, RollbackPublishesARetainedVersionAgain) {
  auto r = RunCli({"rollback", "--db", db_, "--table", "t"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("rolled back t: version 3"));
  EXPECT_EQ(Exported(), values_);
  r = RunCli({"rollback", "--db", db_, "--table", "t", "--to-version", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Exported(), twice_);
  EXPECT_EQ(RunCli({"verify", "--db", db_}).exit_code, 0);
}

TEST_F(CliVersionsTest, RollbackRefusesAVersionOrTableItDoesNotHave) {
  ASSERT_EQ(RunCli({"rollback", "--db", db_, "--table", "t"}).exit_code, 0);  // v3 = v1
  auto r = RunCli({"rollback", "--db", db_, "--table", "t", "--to-version", "1"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("retains no version 1"));
  r = RunCli({"rollback", "--db", db_, "--table", "t", "--to-version", "x"});
  EXPECT_EQ(r.exit_code, 1);
  r = RunCli({"rollback", "--db", db_, "--table", "nope"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("unknown table 'nope'"));
}

// --keep-versions 0: the next write keeps only the current version.
TEST_F(CliVersionsTest, KeepVersionsZeroLeavesNothingToRollBackTo) {
  ASSERT_EQ(Import("t", tmp_ / "w.npy", {"--replace", "--keep-versions", "0"}).exit_code, 0);
  EXPECT_EQ(TableFiles().size(), 1u);
  auto r = RunCli({"rollback", "--db", db_, "--table", "t"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("retains no earlier version"));
}

TEST_F(CliVersionsTest, BadWriterOptionsAreUsageErrors) {
  for (const char* bad : {"-1", "x", "1e9"}) {
    auto r = Import("t", tmp_ / "w.npy", {"--replace", "--keep-versions", bad});
    EXPECT_EQ(r.exit_code, 1) << bad;
    EXPECT_THAT(r.err, HasSubstr("--keep-versions"));
  }
  auto r = Import("t", tmp_ / "w.npy", {"--replace", "--lock-wait", "-2"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("--lock-wait"));
}

// A catalog entry this build cannot read (here: a dtype of a newer build)
// is listed, fails verify by name with exit 2, and keeps its file through
// other writes; the other tables stay queryable.
TEST_F(CliStoreTest, UnreadableCatalogEntryIsNamedAndKept) {
  ASSERT_EQ(Import("a", tmp_ / "w.npy").exit_code, 0);
  ASSERT_EQ(Import("b", tmp_ / "w.npy").exit_code, 0);
  std::string bytes = embstore::testing::ReadBytes(db_ + "/CATALOG");
  const size_t l1 = bytes.find('\n'), l2 = bytes.find('\n', l1 + 1);
  std::string body = bytes.substr(l1 + 1, l2 - l1 - 1);
  const size_t b_at = body.find("\"name\":\"b\"");
  const size_t dt = body.find("\"dtype\":\"f32\"", b_at);
  ASSERT_NE(dt, std::string::npos);
  body.replace(dt, 13, "\"dtype\":\"f8e4m3\"");
  embstore::testing::WriteBytes(db_ + "/CATALOG", storage::SealCatalog(99, body));

  auto r = RunCli({"list", "--db", db_});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("a\t50\t7\tf32\tv1")) << r.out;
  EXPECT_THAT(r.out, HasSubstr("b\tUNREADABLE\t")) << r.out;
  EXPECT_THAT(r.out, HasSubstr("f8e4m3")) << r.out;
  r = RunCli({"verify", "--db", db_});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.out, HasSubstr("ok\ta")) << r.out;
  EXPECT_THAT(r.out, HasSubstr("CORRUPT\tb\t")) << r.out;
  r = RunCli({"verify", "--db", db_, "--table", "b"});
  EXPECT_EQ(r.exit_code, 2);
  r = RunCli({"info", "--db", db_, "--table", "b"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("f8e4m3")) << r.err;
  r = RunCli({"query", "--db", db_, "--table", "a", "--indices", "1", "--offsets", "0"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  ASSERT_EQ(Import("c", tmp_ / "w.npy").exit_code, 0);
  ASSERT_EQ(RunCli({"drop", "--db", db_, "--table", "c"}).exit_code, 0);
  EXPECT_EQ(RunCli({"drop", "--db", db_, "--table", "b"}).exit_code, 2);
  EXPECT_TRUE(std::filesystem::exists(db_ + "/tables/b.v1.emb"));
  EXPECT_THAT(embstore::testing::ReadBytes(db_ + "/CATALOG"), HasSubstr("f8e4m3"));
}

// The version printed is the project's (CMake's `project(... VERSION ...)`).
TEST_F(CliStoreTest, VersionComesFromTheBuild) {
  auto r = RunCli({"--version"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.out, "embstore " EMBSTORE_PROJECT_VERSION "\n");
}

}  // namespace
}  // namespace embstore
