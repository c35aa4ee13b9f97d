// Store: versions, snapshots, reclamation, crash safety, retained versions and
// rollback; the catalog's own cases and format-1 stores are in store_catalog_test.cc.
#include "embstore/store.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>
#include <set>
#include <thread>

#include "embstore/query.h"
#include "rocksdb/db.h"
#include "storage/catalog.h"
#include "storage/table_file.h"
#include "store_test_util.h"
#include "test_util.h"
#include "util/memory.h"

namespace embstore {
namespace {

using embstore::testing::TempDir;

// StoreOptions::huge_pages reaches the table mapping: kOn and kAuto (a
// small table) advise MADV_HUGEPAGE ("hg" in smaps), kOff does not.
TEST(StoreTest, HugePageAdviceFollowsTheOption) {
  if (!std::filesystem::exists("/sys/kernel/mm/transparent_hugepage/enabled")) {
    GTEST_SKIP() << "this kernel has no transparent huge pages";
  }
  TempDir tmp;
  {
    auto store = OpenOrDie(tmp / "db");
    TableSpec spec{4096, 256, DType::kF32, "gen", false, {}};  // 4 MiB
    ASSERT_TRUE(store->WriteTable("t", spec, Pattern(256, 0.5f)).ok());
  }
  using HP = StoreOptions::HugePages;
  for (HP mode : {HP::kOn, HP::kOff, HP::kAuto}) {
    StoreOptions so;
    so.huge_pages = mode;
    auto store = Store::Open(tmp / "db", so);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    auto snap = (*store)->GetSnapshot("t");
    ASSERT_TRUE(snap.ok());
    const std::string flags = VmFlagsOf(snap->view().data);
    ASSERT_FALSE(flags.empty()) << "mapping not found in /proc/self/smaps";
    EXPECT_EQ(flags.find(" hg ") != std::string::npos, mode != HP::kOff)
        << "mode " << static_cast<int>(mode) << ": " << flags;
    EXPECT_EQ(At(*snap, 4095, 255), 4095 * 1000 + 255 + 0.5f);
  }
  EXPECT_GT(UsableMemoryBytes(), uint64_t{64} << 20);
}

TEST(StoreTest, ImportNpyListInfoSnapshot) {
  TempDir tmp;
  auto values = embstore::testing::RandomFloats(20 * 6, 3);
  embstore::testing::WriteF32Npy(tmp / "w.npy", {20, 6}, values);
  auto store = OpenOrDie(tmp / "db");
  auto info = store->ImportFile("items", tmp / "w.npy", {});
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_EQ(info->version, 1u);
  EXPECT_EQ(info->rows, 20);
  EXPECT_EQ(info->dim, 6);
  EXPECT_EQ(info->dtype, DType::kF32);
  EXPECT_NE(info->source.find("w.npy"), std::string::npos);
  auto list = store->ListTables();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].name, "items");
  auto snap = store->GetSnapshot("items");
  ASSERT_TRUE(snap.ok());
  for (int r = 0; r < 20; ++r) {
    for (int j = 0; j < 6; ++j) EXPECT_EQ(At(*snap, r, j), values[r * 6 + j]);
  }
  EXPECT_TRUE(store->VerifyTable("items").ok());
  // Existing name without replace is refused.
  auto again = store->ImportFile("items", tmp / "w.npy", {});
  EXPECT_EQ(again.status().code(), Status::Code::kAlreadyExists);
  EXPECT_EQ(store->GetSnapshot("nope").status().code(), Status::Code::kNotFound);
  EXPECT_EQ(store->ImportFile("bad/name", tmp / "w.npy", {}).status().code(),
            Status::Code::kInvalidArgument);
}

// WriteEncodedTable copies another table's rows byte for byte (int8 rows,
// whose re-encoding from floats would not be), in chunks, checksum included.
TEST(StoreTest, WriteEncodedTableCopiesRowsByteForByte) {
  TempDir tmp;
  auto values = embstore::testing::RandomFloats(37 * 5, 8);
  embstore::testing::WriteF32Npy(tmp / "w.npy", {37, 5}, values);
  auto store = OpenOrDie(tmp / "db");
  ImportOptions io;
  io.dtype = DType::kInt8Rowwise;
  auto src = store->ImportFile("src", tmp / "w.npy", io);
  ASSERT_TRUE(src.ok()) << src.status().ToString();
  auto snap = store->GetSnapshot("src");
  ASSERT_TRUE(snap.ok());
  const TableView v = snap->view();
  TableSpec spec;
  spec.rows = v.rows;
  spec.dim = v.dim;
  spec.dtype = v.dtype;
  spec.chunk_rows = 4;  // several fill calls
  int calls = 0;
  auto copy =
      store->WriteEncodedTable("copy", spec, [&](int64_t first, int64_t count, uint8_t* out) {
        ++calls;
        std::memcpy(out, v.Row(first), static_cast<size_t>(count) * v.row_stride);
        return Status::OK();
      });
  ASSERT_TRUE(copy.ok()) << copy.status().ToString();
  EXPECT_EQ(calls, 10);
  EXPECT_EQ(copy->checksum, src->checksum);
  EXPECT_EQ(copy->dtype, DType::kInt8Rowwise);
  auto csnap = store->GetSnapshot("copy");
  ASSERT_TRUE(csnap.ok());
  EXPECT_EQ(std::memcmp(csnap->view().data, v.data, static_cast<size_t>(v.rows) * v.row_stride), 0);
  EXPECT_TRUE(store->VerifyTable("copy").ok());
  // A fill error publishes nothing.
  auto failed = store->WriteEncodedTable(
      "bad", spec, [](int64_t, int64_t, uint8_t*) { return Status::IOError("source gone"); });
  EXPECT_EQ(failed.status().code(), Status::Code::kIOError);
  EXPECT_EQ(store->GetSnapshot("bad").status().code(), Status::Code::kNotFound);
}

TEST(StoreTest, CatalogSurvivesReopen) {
  TempDir tmp;
  {
    auto store = OpenOrDie(tmp / "db");
    TableSpec spec{5, 3, DType::kF16, "gen", false, {}};
    ASSERT_TRUE(store->WriteTable("a", spec, Pattern(3, 0.5f)).ok());
    spec.dtype = DType::kF32;
    ASSERT_TRUE(store->WriteTable("b", spec, Pattern(3, 0)).ok());
  }
  auto store = OpenOrDie(tmp / "db");
  auto a = store->GetInfo("a");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->dtype, DType::kF16);
  EXPECT_EQ(a->source, "gen");
  EXPECT_EQ(store->ListTables()->size(), 2u);
  EXPECT_TRUE(store->VerifyTable("a").ok());
  EXPECT_TRUE(store->VerifyTable("b").ok());
}

TEST(StoreTest, OpenWithoutCreateFailsClearly) {
  TempDir tmp;
  StoreOptions o;
  o.create_if_missing = false;
  auto s = Store::Open(tmp / "none", o);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), Status::Code::kNotFound);
  EXPECT_NE(s.status().message().find("no embstore store"), std::string::npos);
}

// Without retained versions, a replaced version's file is deleted at once;
// a snapshot held of it reads on through its mapping.
TEST(StoreTest, SnapshotHeldAcrossReplaceReadsOldData) {
  TempDir tmp;
  auto store = OpenOrDie(tmp / "db", Retaining(0));
  TableSpec spec{100, 8, DType::kF32, "v1", false, {}};
  ASSERT_TRUE(store->WriteTable("t", spec, Pattern(8, 0)).ok());
  auto old_snap = store->GetSnapshot("t");
  ASSERT_TRUE(old_snap.ok());
  const std::string old_file = tmp / ("db/tables/" + old_snap->info().file);

  spec.replace = true;
  spec.source = "v2";
  auto v2 = store->WriteTable("t", spec, Pattern(8, 0.25f));
  ASSERT_TRUE(v2.ok()) << v2.status().ToString();
  EXPECT_EQ(v2->version, 2u);
  // The old snapshot still reads version 1, though its file is gone.
  EXPECT_EQ(old_snap->info().version, 1u);
  EXPECT_EQ(At(*old_snap, 7, 3), 7003.0f);
  EXPECT_FALSE(std::filesystem::exists(old_file));
  // New readers see version 2.
  auto new_snap = store->GetSnapshot("t");
  ASSERT_TRUE(new_snap.ok());
  EXPECT_EQ(new_snap->info().version, 2u);
  EXPECT_EQ(At(*new_snap, 7, 3), 7003.25f);
  *old_snap = TableSnapshot();
  EXPECT_EQ(CountFiles(tmp / "db/tables"), 1);
}

// By default one earlier version is kept; older ones are deleted by the
// write that lets them go.
TEST(StoreTest, ReplacesKeepTheRetainedVersionsOnly) {
  TempDir tmp;
  auto store = OpenOrDie(tmp / "db");
  TableSpec spec{10, 4, DType::kF32, "", true, {}};
  for (int i = 0; i < 3; ++i)
    ASSERT_TRUE(store->WriteTable("t", spec, Pattern(4, static_cast<float>(i))).ok());
  EXPECT_EQ(store->GetInfo("t")->version, 3u);
  EXPECT_EQ(FilesIn(tmp / "db/tables"), (std::set<std::string>{"t.v2.emb", "t.v3.emb"}));
  auto three = OpenOrDie(tmp / "db", Retaining(3));
  for (int i = 3; i < 8; ++i)
    ASSERT_TRUE(three->WriteTable("t", spec, Pattern(4, static_cast<float>(i))).ok());
  EXPECT_EQ(FilesIn(tmp / "db/tables"),
            (std::set<std::string>{"t.v5.emb", "t.v6.emb", "t.v7.emb", "t.v8.emb"}));
  EXPECT_EQ(CatalogFiles(*three), FilesIn(tmp / "db/tables"));
  EXPECT_TRUE(three->VerifyTable("t").ok());
}

TEST(StoreTest, DropReclaimsFileAndVersionsAreNotReused) {
  TempDir tmp;
  TableSpec spec = SmallSpec(/*replace=*/false);
  auto store = OpenWithT(tmp / "db", spec);
  ASSERT_NE(store, nullptr);
  auto snap = store->GetSnapshot("t");
  ASSERT_TRUE(store->DropTable("t").ok());
  EXPECT_EQ(store->GetInfo("t").status().code(), Status::Code::kNotFound);
  EXPECT_EQ(store->DropTable("t").code(), Status::Code::kNotFound);
  EXPECT_EQ(At(*snap, 2, 1), 2001.0f);          // still readable
  EXPECT_EQ(CountFiles(tmp / "db/tables"), 0);  // deleted at the drop
  ASSERT_TRUE(store->WriteTable("t", spec, Pattern(4, 1)).ok());
  EXPECT_EQ(store->GetInfo("t")->version, 2u);
  *snap = TableSnapshot();
  EXPECT_EQ(CountFiles(tmp / "db/tables"), 1);
  auto now = store->GetSnapshot("t");
  EXPECT_EQ(At(*now, 2, 1), 2002.0f);
}

// Opening to read writes nothing; the next write collects what interrupted
// writes left, and nothing else.
TEST(StoreTest, LeftoversAreCollectedByTheNextWrite) {
  TempDir tmp;
  TableSpec spec{10, 4, DType::kF32, "", false, {}};
  {
    auto store = OpenOrDie(tmp / "db");
    ASSERT_TRUE(store->WriteTable("t", spec, Pattern(4, 0)).ok());
  }
  embstore::testing::WriteBytes(tmp / "db/tables/t.v7.emb.tmp-999", "partial");
  embstore::testing::WriteBytes(tmp / "db/tables/t.v8.emb", "renamed but never published");
  embstore::testing::WriteBytes(tmp / "db/tables/notes.txt", "not ours");
  embstore::testing::WriteBytes(tmp / "db/CATALOG.tmp-999-abcd", "half a catalog");
  auto store = OpenOrDie(tmp / "db");
  EXPECT_EQ(CountFiles(tmp / "db/tables"), 4);
  EXPECT_TRUE(store->VerifyTable("t").ok());
  ASSERT_TRUE(store->WriteTable("u", spec, Pattern(4, 0)).ok());
  EXPECT_EQ(FilesIn(tmp / "db/tables"),
            (std::set<std::string>{"notes.txt", "t.v1.emb", "u.v1.emb"}));
  EXPECT_FALSE(std::filesystem::exists(tmp / "db/CATALOG.tmp-999-abcd"));
}

TEST(StoreTest, FailedFillLeavesOldVersionAndNoFiles) {
  TempDir tmp;
  TableSpec spec = SmallSpec(/*replace=*/true);
  auto store = OpenWithT(tmp / "db", spec);
  ASSERT_NE(store, nullptr);
  spec.chunk_rows = 2;
  auto r = store->WriteTable("t", spec, [](int64_t first, int64_t, float*) {
    return first >= 4 ? Status::Corruption("source broke") : Status::OK();
  });
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(store->GetInfo("t")->version, 1u);
  EXPECT_EQ(CountFiles(tmp / "db/tables"), 1);
  EXPECT_TRUE(store->VerifyTable("t").ok());
}

TEST(StoreTest, VerifyNamesCorruptTable) {
  TempDir tmp;
  TableSpec spec = SmallSpec(/*replace=*/false);
  auto store = OpenWithT(tmp / "db", spec);
  ASSERT_NE(store, nullptr);
  const std::string path = tmp / ("db/tables/" + store->GetInfo("t")->file);
  std::string bytes = embstore::testing::ReadBytes(path);
  bytes[bytes.size() - 100] ^= 1;
  embstore::testing::WriteBytes(path, bytes);
  Status st = store->VerifyTable("t");
  EXPECT_EQ(st.code(), Status::Code::kCorruption);
  EXPECT_NE(st.message().find("'t'"), std::string::npos);
  std::filesystem::remove(path);
  st = store->VerifyTable("t");
  EXPECT_EQ(st.code(), Status::Code::kCorruption);
  EXPECT_NE(st.message().find("missing"), std::string::npos);
}

TEST(StoreTest, ConcurrentReadersDuringReplace) {
  TempDir tmp;
  auto store = OpenOrDie(tmp / "db");
  TableSpec spec{64, 16, DType::kF32, "", true, {}};
  ASSERT_TRUE(store->WriteTable("t", spec, Pattern(16, 0)).ok());
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 4; ++t) {
    readers.emplace_back([&] {
      while (!stop.load()) {
        auto snap = store->GetSnapshot("t");
        if (!snap.ok()) {
          ++bad;
          continue;
        }
        // Each version v holds tag v-1 everywhere: one consistent version per snapshot.
        const float tag = At(*snap, 0, 0);
        for (int r = 0; r < 64; ++r) {
          if (At(*snap, r, 5) != static_cast<float>(r * 1000 + 5) + tag) ++bad;
        }
      }
    });
  }
  for (int v = 1; v < 20; ++v)
    ASSERT_TRUE(store->WriteTable("t", spec, Pattern(16, static_cast<float>(v))).ok());
  stop = true;
  for (auto& t : readers) t.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(CountFiles(tmp / "db/tables"), 2);  // current + one retained
}

// kill -9 of a replacing import at random moments: the store always serves a
// whole version (old or new), verifies clean, and keeps no leftovers.
TEST(StoreTest, SigkillDuringReplaceLeavesAWholeVersion) {
  TempDir tmp;
  const int64_t rows = 2048, dim = 64;
  {
    auto store = OpenOrDie(tmp / "db");
    TableSpec spec{rows, dim, DType::kF32, "v1", false, {}};
    ASSERT_TRUE(store->WriteTable("t", spec, Pattern(dim, 0)).ok());
  }
  std::mt19937 rng(42);
  int saw_old = 0, saw_new = 0;
  float current = 0.0f;
  for (int iter = 0; iter < 12; ++iter) {
    const float next = 0.5f * static_cast<float>(iter + 1);
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      auto s = Store::Open(tmp / "db", StoreOptions());
      if (!s.ok()) _exit(3);
      TableSpec spec{rows, dim, DType::kF32, "slow", true, {}};
      spec.chunk_rows = 16;
      auto fill = Pattern(dim, next);
      auto r = (*s)->WriteTable("t", spec, [&](int64_t f, int64_t c, float* o) {
        std::this_thread::sleep_for(std::chrono::microseconds(300));
        return fill(f, c, o);
      });
      _exit(r.ok() ? 0 : 4);
    }
    std::this_thread::sleep_for(
        std::chrono::milliseconds(std::uniform_int_distribution<int>(0, 60)(rng)));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    auto store = OpenOrDie(tmp / "db");
    ASSERT_TRUE(store);
    ASSERT_TRUE(store->VerifyTable("t").ok());
    auto snap = store->GetSnapshot("t");
    ASSERT_TRUE(snap.ok());
    const float tag = At(*snap, 0, 0);
    ASSERT_TRUE(tag == current || tag == next) << tag;
    (tag == current ? saw_old : saw_new)++;
    current = tag;
    for (int64_t r = 0; r < rows; r += 97)
      ASSERT_EQ(At(*snap, r, 3), static_cast<float>(r * 1000 + 3) + tag);
  }
  EXPECT_GT(saw_old, 0);  // some kills must land mid-import
  // The next write collects what the killed ones left: only retained files remain.
  auto store = OpenOrDie(tmp / "db");
  TableSpec spec{1, 1, DType::kF32, "", false, {}};
  ASSERT_TRUE(store->WriteTable("other", spec, Pattern(1, 0)).ok());
  EXPECT_EQ(FilesIn(tmp / "db/tables"), CatalogFiles(*store));
  EXPECT_LE(CountFiles(tmp / "db/tables"), 3);
}

// ---- No exception crosses the API -------------------------------------------------------

// A write derived from a snapshot (renorm) names the version it started
// from; a version published meanwhile makes it fail instead of being replaced.
TEST(StoreTest, ExpectedVersionRefusesAWriteOverANewerVersion) {
  TempDir tmp;
  TableSpec spec = SmallSpec(/*replace=*/true);
  auto store = OpenWithT(tmp / "db", spec);
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->WriteTable("t", spec, Pattern(4, 1)).ok());
  spec.expected_version = 1;
  auto r = store->WriteTable("t", spec, Pattern(4, 2));
  EXPECT_EQ(r.status().code(), Status::Code::kIOError);
  EXPECT_NE(r.status().message().find("it is now version 2"), std::string::npos)
      << r.status().message();
  EXPECT_EQ(store->GetInfo("t")->version, 2u);
  EXPECT_EQ(CountFiles(tmp / "db/tables"), 2);
  spec.expected_version = 2;
  ASSERT_TRUE(store->WriteTable("t", spec, Pattern(4, 2)).ok());
  EXPECT_EQ(store->GetInfo("t")->version, 3u);
}

TEST(StoreTest, HugeChunkRowsAndRowCountsAreStatuses) {
  TempDir tmp;
  auto store = OpenOrDie(tmp / "db");
  TableSpec spec{10, 4, DType::kF32, "", false, {}};
  spec.chunk_rows = std::numeric_limits<int64_t>::max();  // capped at the rows
  ASSERT_TRUE(store->WriteTable("t", spec, Pattern(4, 0)).ok());
  TableSpec wide{int64_t{1} << 40, 1 << 20, DType::kF32, "", false, {}};
  wide.chunk_rows = int64_t{1} << 40;
  auto r = store->WriteTable("w", wide, Pattern(1 << 20, 0));
  EXPECT_EQ(r.status().code(), Status::Code::kInvalidArgument);
  TableSpec tall{std::numeric_limits<int64_t>::max(), 1 << 20, DType::kF32, "", false, {}};
  r = store->WriteTable("w", tall, Pattern(1 << 20, 0));
  EXPECT_EQ(r.status().code(), Status::Code::kInvalidArgument) << r.status().ToString();
  spec.chunk_rows = -1;
  EXPECT_EQ(store->WriteTable("u", spec, Pattern(4, 0)).status().code(),
            Status::Code::kInvalidArgument);
  // A fill that throws is an Internal status, and the table is unchanged.
  spec.chunk_rows = 0;
  spec.replace = true;
  r = store->WriteTable("t", spec, [](int64_t, int64_t, float*) -> Status {
    throw std::runtime_error("the fill broke");
  });
  EXPECT_EQ(r.status().code(), Status::Code::kInternal);
  EXPECT_EQ(store->GetInfo("t")->version, 1u);
  EXPECT_EQ(CountFiles(tmp / "db/tables"), 1);
}

// ---- Retained versions and rollback -----------------------------------------------------

TEST(StoreTest, RollbackPublishesARetainedVersionAsANewVersion) {
  TempDir tmp;
  auto store = OpenOrDie(tmp / "db", Retaining(2));
  TableSpec spec{10, 4, DType::kF32, "src", true, {}};
  for (int i = 0; i < 3; ++i)
    ASSERT_TRUE(store->WriteTable("t", spec, Pattern(4, static_cast<float>(i))).ok());
  auto held = store->GetSnapshot("t");  // v3
  auto back = store->Rollback("t", std::nullopt);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->version, 4u);
  EXPECT_NE(back->source.find("rollback to v2"), std::string::npos);
  auto now = store->GetSnapshot("t");
  ASSERT_TRUE(now.ok());
  EXPECT_EQ(now->info().version, 4u);
  EXPECT_EQ(At(*now, 2, 1), 2001.0f + 1);   // v2's data
  EXPECT_EQ(At(*held, 2, 1), 2001.0f + 2);  // the held snapshot is v3, unchanged
  auto entries = store->ListEntries();
  std::vector<uint64_t> versions;
  for (const TableInfo& v : (*entries)[0].versions) versions.push_back(v.version);
  EXPECT_EQ(versions, (std::vector<uint64_t>{4, 3, 2}));
  // To a named version; the current one and unknown ones are refused.
  back = store->Rollback("t", 3);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(At(*store->GetSnapshot("t"), 2, 1), 2001.0f + 2);
  EXPECT_EQ(store->Rollback("t", 5).status().code(), Status::Code::kInvalidArgument);
  auto missing = store->Rollback("t", 1);
  EXPECT_EQ(missing.status().code(), Status::Code::kNotFound);
  EXPECT_NE(missing.status().message().find("retained: 4, 3"), std::string::npos)
      << missing.status().message();
  EXPECT_EQ(store->Rollback("nope", std::nullopt).status().code(), Status::Code::kNotFound);
  // Versions sharing one file keep it while any of them is retained.
  for (int i = 0; i < 3; ++i)
    ASSERT_TRUE(store->WriteTable("t", spec, Pattern(4, static_cast<float>(10 + i))).ok());
  EXPECT_EQ(FilesIn(tmp / "db/tables"), CatalogFiles(*store));
  EXPECT_TRUE(store->VerifyTable("t").ok());
  auto none = OpenOrDie(tmp / "db", Retaining(0));
  ASSERT_TRUE(none->WriteTable("t", spec, Pattern(4, 20)).ok());
  EXPECT_EQ(CountFiles(tmp / "db/tables"), 1);
  EXPECT_EQ(none->Rollback("t", std::nullopt).status().code(), Status::Code::kNotFound);
}

}  // namespace
}  // namespace embstore
