// Store: catalog, versions, snapshots, reclamation, crash safety.
#include "embstore/store.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <limits>
#include <random>
#include <set>
#include <thread>

#include "embstore/query.h"
#include "rocksdb/db.h"
#include "storage/catalog.h"
#include "storage/table_file.h"
#include "test_util.h"
#include "util/memory.h"

namespace embstore {
namespace {

using embstore::testing::TempDir;

std::unique_ptr<Store> OpenOrDie(const std::string& dir, StoreOptions options = StoreOptions()) {
  auto s = Store::Open(dir, options);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(s).value() : nullptr;
}

// A fill function producing row r, column j = r * 1000 + j + tag.
RowFillFn Pattern(int64_t dim, float tag) {
  return [dim, tag](int64_t first, int64_t count, float* out) {
    for (int64_t i = 0; i < count; ++i) {
      for (int64_t j = 0; j < dim; ++j)
        out[i * dim + j] = static_cast<float>((first + i) * 1000 + j) + tag;
    }
    return Status::OK();
  };
}

float At(const TableSnapshot& s, int64_t r, int64_t j) {
  return reinterpret_cast<const float*>(s.view().Row(r))[j];
}

int CountFiles(const std::string& dir) {
  int n = 0;
  for (auto& e : std::filesystem::directory_iterator(dir)) n += e.is_regular_file() ? 1 : 0;
  return n;
}

std::set<std::string> FilesIn(const std::string& dir) {
  std::set<std::string> out;
  for (auto& e : std::filesystem::directory_iterator(dir)) out.insert(e.path().filename());
  return out;
}

// The files the catalog names: current and retained versions of every entry.
std::set<std::string> CatalogFiles(Store& store) {
  std::set<std::string> out;
  auto entries = store.ListEntries();
  EXPECT_TRUE(entries.ok());
  if (!entries.ok()) return out;
  for (const TableEntry& e : *entries)
    for (const TableInfo& v : e.versions) out.insert(v.file);
  return out;
}

StoreOptions Retaining(int n) {
  StoreOptions o;
  o.retain_versions = n;
  return o;
}

// The VmFlags of the mapping that holds `p` ("" when not found).
std::string VmFlagsOf(const void* p) {
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
  auto store = OpenOrDie(tmp / "db");
  TableSpec spec{10, 4, DType::kF32, "", false, {}};
  ASSERT_TRUE(store->WriteTable("t", spec, Pattern(4, 0)).ok());
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
  auto store = OpenOrDie(tmp / "db");
  TableSpec spec{10, 4, DType::kF32, "", true, {}};
  ASSERT_TRUE(store->WriteTable("t", spec, Pattern(4, 0)).ok());
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
  auto store = OpenOrDie(tmp / "db");
  TableSpec spec{10, 4, DType::kF32, "", false, {}};
  ASSERT_TRUE(store->WriteTable("t", spec, Pattern(4, 0)).ok());
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

// ---- Catalog: entries this build cannot read, other formats, damage ---------------------

namespace catalog_cases {

std::string CatalogPath(const TempDir& tmp) { return tmp / "db/CATALOG"; }

// The JSON body of db/CATALOG (its second line).
std::string Body(const TempDir& tmp) {
  const std::string bytes = embstore::testing::ReadBytes(CatalogPath(tmp));
  const size_t a = bytes.find('\n');
  const size_t b = bytes.find('\n', a + 1);
  return bytes.substr(a + 1, b - a - 1);
}

// Rewrites db/CATALOG with `body`, sealed with a valid checksum (as another
// build would write it).
void WriteBody(const TempDir& tmp, const std::string& body, uint64_t generation = 1000,
               int format = storage::kCatalogFormat) {
  embstore::testing::WriteBytes(CatalogPath(tmp), storage::SealCatalog(generation, body, format));
}

void Replace(std::string* s, const std::string& from, const std::string& to) {
  const size_t at = s->find(from);
  ASSERT_NE(at, std::string::npos) << from << " not in " << *s;
  s->replace(at, from.size(), to);
}

}  // namespace catalog_cases

// An entry with a dtype this build does not know (a newer build's): listed
// as unreadable, refused by verify, its file never deleted, the entry kept
// verbatim through other writes; other tables stay queryable.
TEST(StoreCatalogTest, UnknownDtypeEntryKeepsItsFileAndFailsVerify) {
  using namespace catalog_cases;
  TempDir tmp;
  TableSpec spec{10, 4, DType::kF32, "", false, {}};
  {
    auto store = OpenOrDie(tmp / "db");
    ASSERT_TRUE(store->WriteTable("a", spec, Pattern(4, 0)).ok());
    ASSERT_TRUE(store->WriteTable("b", spec, Pattern(4, 1)).ok());
  }
  std::string body = Body(tmp);
  const size_t b_at = body.find("\"name\":\"b\"");
  ASSERT_NE(b_at, std::string::npos);
  std::string tail = body.substr(b_at);
  Replace(&tail, "\"dtype\":\"f32\"", "\"dtype\":\"f8e4m3\"");
  WriteBody(tmp, body.substr(0, b_at) + tail);

  auto store = OpenOrDie(tmp / "db");
  auto entries = store->ListEntries();
  ASSERT_TRUE(entries.ok());
  ASSERT_EQ(entries->size(), 2u);
  EXPECT_TRUE((*entries)[0].status.ok());
  EXPECT_EQ((*entries)[1].name, "b");
  EXPECT_FALSE((*entries)[1].status.ok());
  EXPECT_NE((*entries)[1].status.message().find("f8e4m3"), std::string::npos);
  ASSERT_EQ(store->ListTables()->size(), 1u);
  Status v = store->VerifyTable("b");
  EXPECT_EQ(v.code(), Status::Code::kCorruption);
  EXPECT_NE(v.message().find("'b'"), std::string::npos);
  EXPECT_EQ(store->GetSnapshot("b").status().code(), Status::Code::kCorruption);
  EXPECT_EQ(store->GetInfo("b").status().code(), Status::Code::kCorruption);
  auto a = store->GetSnapshot("a");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(At(*a, 3, 2), 3002.0f);
  // Writes that touch b are refused; others go on and keep b's file and entry.
  spec.replace = true;
  EXPECT_EQ(store->WriteTable("b", spec, Pattern(4, 2)).status().code(), Status::Code::kCorruption);
  EXPECT_EQ(store->DropTable("b").code(), Status::Code::kCorruption);
  EXPECT_EQ(store->Rollback("b", std::nullopt).status().code(), Status::Code::kCorruption);
  ASSERT_TRUE(store->WriteTable("a", spec, Pattern(4, 3)).ok());
  ASSERT_TRUE(store->WriteTable("c", spec, Pattern(4, 4)).ok());
  ASSERT_TRUE(store->DropTable("c").ok());
  EXPECT_TRUE(std::filesystem::exists(tmp / "db/tables/b.v1.emb"));
  EXPECT_NE(Body(tmp).find("f8e4m3"), std::string::npos);
  auto reopened = OpenOrDie(tmp / "db");
  EXPECT_FALSE((*reopened->ListEntries())[1].status.ok());
}

// An entry too damaged to say which files it names: no table file is taken
// for a leftover then (only temporaries are collected).
TEST(StoreCatalogTest, MalformedEntryStopsLeftoverCollection) {
  using namespace catalog_cases;
  TempDir tmp;
  TableSpec spec{10, 4, DType::kF32, "", false, {}};
  {
    auto store = OpenOrDie(tmp / "db");
    ASSERT_TRUE(store->WriteTable("a", spec, Pattern(4, 0)).ok());
  }
  std::string body = Body(tmp);
  Replace(&body, "\"tables\":[", "\"tables\":[\"what is this\",{\"name\":\"z\",\"versions\":7},");
  WriteBody(tmp, body);
  embstore::testing::WriteBytes(tmp / "db/tables/z.v1.emb", "maybe z's");
  embstore::testing::WriteBytes(tmp / "db/tables/a.v9.emb.tmp-1", "a temporary");
  auto store = OpenOrDie(tmp / "db");
  auto entries = store->ListEntries();
  ASSERT_TRUE(entries.ok());
  ASSERT_EQ(entries->size(), 3u);
  int unreadable = 0;
  for (const TableEntry& e : *entries) unreadable += e.status.ok() ? 0 : 1;
  EXPECT_EQ(unreadable, 2);
  ASSERT_TRUE(store->WriteTable("b", spec, Pattern(4, 1)).ok());
  EXPECT_TRUE(std::filesystem::exists(tmp / "db/tables/z.v1.emb"));
  EXPECT_FALSE(std::filesystem::exists(tmp / "db/tables/a.v9.emb.tmp-1"));
  EXPECT_EQ(store->VerifyTable("z").code(), Status::Code::kCorruption);
  EXPECT_TRUE(store->VerifyTable("a").ok());
}

TEST(StoreCatalogTest, NewerFormatIsRefusedNamingIt) {
  using namespace catalog_cases;
  TempDir tmp;
  { OpenOrDie(tmp / "db"); }
  WriteBody(tmp, Body(tmp), 5, 3);
  auto s = Store::Open(tmp / "db", StoreOptions());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), Status::Code::kNotSupported);
  EXPECT_NE(s.status().message().find("format 3"), std::string::npos) << s.status().message();
  EXPECT_NE(s.status().message().find("newer"), std::string::npos);
}

TEST(StoreCatalogTest, DamagedCatalogIsCorruptionNotAnEmptyStore) {
  using namespace catalog_cases;
  TempDir tmp;
  TableSpec spec{10, 4, DType::kF32, "", false, {}};
  {
    auto store = OpenOrDie(tmp / "db");
    ASSERT_TRUE(store->WriteTable("a", spec, Pattern(4, 0)).ok());
  }
  std::string bytes = embstore::testing::ReadBytes(CatalogPath(tmp));
  bytes[bytes.find("\"rows\":10") + 8] = '2';  // one digit, the checksum now fails
  embstore::testing::WriteBytes(CatalogPath(tmp), bytes);
  auto s = Store::Open(tmp / "db", StoreOptions());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), Status::Code::kCorruption);
  EXPECT_NE(s.status().message().find("checksum"), std::string::npos);
  EXPECT_TRUE(std::filesystem::exists(tmp / "db/tables/a.v1.emb"));
  embstore::testing::WriteBytes(CatalogPath(tmp), bytes.substr(0, bytes.size() / 2));
  EXPECT_EQ(Store::Open(tmp / "db", StoreOptions()).status().code(), Status::Code::kCorruption);
}

// ---- No exception crosses the API -------------------------------------------------------

// A write derived from a snapshot (renorm) names the version it started
// from; a version published meanwhile makes it fail instead of being replaced.
TEST(StoreTest, ExpectedVersionRefusesAWriteOverANewerVersion) {
  TempDir tmp;
  auto store = OpenOrDie(tmp / "db");
  TableSpec spec{10, 4, DType::kF32, "", true, {}};
  ASSERT_TRUE(store->WriteTable("t", spec, Pattern(4, 0)).ok());
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

// ---- Two Store objects on one directory (as two processes would be) ----------------------

TEST(StoreTest, AnotherStoreSeesPublishesWithoutReopening) {
  TempDir tmp;
  auto writer = OpenOrDie(tmp / "db");
  TableSpec spec{10, 4, DType::kF32, "", true, {}};
  ASSERT_TRUE(writer->WriteTable("t", spec, Pattern(4, 0)).ok());
  StoreOptions slow;
  slow.refresh_interval = std::chrono::milliseconds(1000);
  auto reader = OpenOrDie(tmp / "db", slow);
  auto v1 = reader->GetSnapshot("t");
  ASSERT_TRUE(v1.ok());
  ASSERT_TRUE(writer->WriteTable("t", spec, Pattern(4, 1)).ok());
  ASSERT_TRUE(writer->WriteTable("n", spec, Pattern(4, 5)).ok());
  // Refresh() catches up at once.
  ASSERT_TRUE(reader->Refresh().ok());
  EXPECT_EQ(reader->GetSnapshot("t")->info().version, 2u);
  EXPECT_EQ(reader->ListTables()->size(), 2u);
  EXPECT_EQ(At(*v1, 4, 0), 4000.0f);  // the held snapshot is unchanged
  // Without Refresh(), within the refresh interval (1 s here).
  ASSERT_TRUE(writer->DropTable("n").ok());
  ASSERT_TRUE(writer->WriteTable("t", spec, Pattern(4, 2)).ok());
  const auto start = std::chrono::steady_clock::now();
  while (reader->GetSnapshot("t")->info().version != 3 &&
         std::chrono::steady_clock::now() - start < std::chrono::seconds(5)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(reader->GetSnapshot("t")->info().version, 3u);
  EXPECT_EQ(reader->GetSnapshot("n").status().code(), Status::Code::kNotFound);
  EXPECT_EQ(reader->ListTables()->size(), 1u);
  EXPECT_EQ(At(*v1, 4, 0), 4000.0f);
}

// A stale catalog names a file a writer has since deleted: the reader reads
// the catalog again and follows it instead of failing.
TEST(StoreTest, StaleCatalogFollowsToTheCurrentFile) {
  TempDir tmp;
  auto writer = OpenOrDie(tmp / "db", Retaining(0));
  TableSpec spec{10, 4, DType::kF32, "", true, {}};
  ASSERT_TRUE(writer->WriteTable("t", spec, Pattern(4, 0)).ok());
  StoreOptions never;
  never.refresh_interval = std::chrono::milliseconds(1000);
  auto reader = OpenOrDie(tmp / "db", never);                      // holds generation with t.v1
  ASSERT_TRUE(writer->WriteTable("t", spec, Pattern(4, 1)).ok());  // deletes t.v1.emb
  EXPECT_FALSE(std::filesystem::exists(tmp / "db/tables/t.v1.emb"));
  auto snap = reader->GetSnapshot("t");
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  EXPECT_EQ(snap->info().version, 2u);
  EXPECT_EQ(At(*snap, 1, 1), 1002.0f);
  // A file missing from the newest catalog too is corruption, named.
  std::filesystem::remove(tmp / "db/tables/t.v2.emb");
  auto fresh = OpenOrDie(tmp / "db");
  auto gone = fresh->GetSnapshot("t");
  EXPECT_EQ(gone.status().code(), Status::Code::kCorruption);
  EXPECT_NE(gone.status().message().find("missing"), std::string::npos);
}

// A write waits for another writer up to writer_wait, then names it.
TEST(StoreTest, SecondWriterWaitsThenFailsNamingTheWriter) {
  TempDir tmp;
  auto first = OpenOrDie(tmp / "db");
  StoreOptions impatient;
  impatient.writer_wait = std::chrono::milliseconds(200);
  auto second = OpenOrDie(tmp / "db", impatient);
  std::atomic<bool> inside{false}, release{false};
  std::thread slow([&] {
    TableSpec spec{4, 4, DType::kF32, "", false, {}};
    spec.chunk_rows = 1;
    auto r = first->WriteTable("slow", spec, [&](int64_t f, int64_t c, float* o) {
      inside = true;
      for (int i = 0; i < 2000 && !release.load(); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      return Pattern(4, 0)(f, c, o);
    });
    EXPECT_TRUE(r.ok()) << r.status().ToString();
  });
  while (!inside.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  TableSpec spec{4, 4, DType::kF32, "", false, {}};
  auto r = second->WriteTable("other", spec, Pattern(4, 0));
  EXPECT_EQ(r.status().code(), Status::Code::kIOError);
  EXPECT_NE(r.status().message().find("another process (pid " + std::to_string(::getpid()) +
                                      ") is writing to"),
            std::string::npos)
      << r.status().message();
  // Reads go on while the write runs.
  EXPECT_TRUE(second->ListTables().ok());
  release = true;
  slow.join();
  EXPECT_TRUE(second->WriteTable("other", spec, Pattern(4, 0)).ok());
  ASSERT_TRUE(second->Refresh().ok());
  EXPECT_EQ(second->ListTables()->size(), 2u);
}

// ---- Format-1 stores (RocksDB catalog) ------------------------------------------------------

namespace legacy {

// A format-1 record (the JSON the first releases wrote under table/NAME).
std::string Record(const TableInfo& t, const std::string& dtype) {
  return "{\"name\":\"" + t.name + "\",\"version\":" + std::to_string(t.version) +
         ",\"rows\":" + std::to_string(t.rows) + ",\"dim\":" + std::to_string(t.dim) +
         ",\"dtype\":\"" + dtype + "\",\"row_stride\":" + std::to_string(t.row_stride) +
         ",\"data_bytes\":" + std::to_string(t.data_bytes) +
         ",\"file_bytes\":" + std::to_string(t.file_bytes) +
         ",\"checksum\":" + std::to_string(t.checksum) + ",\"source\":\"old\",\"file\":\"" +
         t.file + "\",\"created_unix\":1}";
}

// Turns the format-2 store in `db` into the format-1 store the first
// releases wrote: the same table files, a RocksDB catalog, no CATALOG.
void MakeFormat1(const std::string& db, const std::string& b_dtype, const std::string& vseq_a) {
  auto store = Store::Open(db, StoreOptions());
  ASSERT_TRUE(store.ok());
  auto tables = (*store)->ListTables();
  ASSERT_TRUE(tables.ok());
  store->reset();
  std::filesystem::remove(db + "/CATALOG");
  std::filesystem::remove(db + "/catalog");
  rocksdb::Options o;
  o.create_if_missing = true;
  rocksdb::DB* raw = nullptr;
  ASSERT_TRUE(rocksdb::DB::Open(o, db + "/catalog", &raw).ok());
  std::unique_ptr<rocksdb::DB> rdb(raw);
  rocksdb::WriteOptions wo;
  wo.sync = true;
  ASSERT_TRUE(rdb->Put(wo, "meta/format", "1").ok());
  for (const TableInfo& t : *tables) {
    const std::string dtype = t.name == "b" ? b_dtype : DTypeName(t.dtype);
    ASSERT_TRUE(rdb->Put(wo, "table/" + t.name, Record(t, dtype)).ok());
    ASSERT_TRUE(rdb->Put(wo, "vseq/" + t.name, t.name == "a" ? vseq_a : "1").ok());
  }
}

std::string LegacyFormat(const std::string& db) {
  rocksdb::DB* raw = nullptr;
  rocksdb::Options o;
  if (!rocksdb::DB::OpenForReadOnly(o, db + "/catalog", &raw).ok()) return "?";
  std::unique_ptr<rocksdb::DB> rdb(raw);
  std::string v;
  return rdb->Get(rocksdb::ReadOptions(), "meta/format", &v).ok() ? v : "?";
}

}  // namespace legacy

// A store the first releases wrote is read as it is (nothing written), and
// its first write moves the catalog to CATALOG and marks the RocksDB one
// format 2, so that those releases refuse the store from then on. An entry
// those releases' catalog holds but this build cannot read keeps its file.
TEST(StoreLegacyTest, Format1StoreIsReadThenMigratedByTheFirstWrite) {
  TempDir tmp;
  TableSpec spec{10, 4, DType::kF32, "", false, {}};
  {
    auto store = OpenOrDie(tmp / "db");
    ASSERT_TRUE(store->WriteTable("a", spec, Pattern(4, 0)).ok());
    ASSERT_TRUE(store->WriteTable("b", spec, Pattern(4, 1)).ok());
  }
  legacy::MakeFormat1(tmp / "db", "f8e4m3", "4");
  {
    // A writer that marked the catalog and died before CATALOG: still read.
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(rocksdb::Options(), tmp / "db/catalog", &raw).ok());
    rocksdb::WriteOptions wo;
    wo.sync = true;
    ASSERT_TRUE(raw->Put(wo, "meta/format", "2").ok());
    delete raw;
  }
  {
    auto store = OpenOrDie(tmp / "db");
    auto entries = store->ListEntries();
    ASSERT_TRUE(entries.ok());
    ASSERT_EQ(entries->size(), 2u);
    EXPECT_TRUE((*entries)[0].status.ok());
    EXPECT_FALSE((*entries)[1].status.ok());
    EXPECT_NE((*entries)[1].status.message().find("f8e4m3"), std::string::npos);
    EXPECT_EQ(At(*store->GetSnapshot("a"), 1, 2), 1002.0f);
    EXPECT_FALSE(std::filesystem::exists(tmp / "db/CATALOG"));  // reading wrote nothing
    spec.replace = true;
    auto v = store->WriteTable("a", spec, Pattern(4, 7));
    ASSERT_TRUE(v.ok()) << v.status().ToString();
    EXPECT_EQ(v->version, 5u);  // past the format-1 counter
  }
  EXPECT_TRUE(std::filesystem::exists(tmp / "db/CATALOG"));
  EXPECT_EQ(legacy::LegacyFormat(tmp / "db"), "2");
  EXPECT_TRUE(std::filesystem::exists(tmp / "db/tables/b.v1.emb"));
  auto store = OpenOrDie(tmp / "db");
  EXPECT_EQ(At(*store->GetSnapshot("a"), 1, 2), 1009.0f);
  EXPECT_EQ(store->GetInfo("a")->version, 5u);
  auto entries = store->ListEntries();
  EXPECT_FALSE((*entries)[1].status.ok());
  EXPECT_EQ(store->VerifyTable("b").code(), Status::Code::kCorruption);
  EXPECT_EQ((*entries)[0].versions.size(), 2u);  // v5 and the migrated v1
}

// A corrupt format-1 version counter is a named error, not an exception.
TEST(StoreLegacyTest, CorruptVersionCounterIsAStatus) {
  TempDir tmp;
  TableSpec spec{10, 4, DType::kF32, "", false, {}};
  {
    auto store = OpenOrDie(tmp / "db");
    ASSERT_TRUE(store->WriteTable("a", spec, Pattern(4, 0)).ok());
  }
  legacy::MakeFormat1(tmp / "db", "f32", "12x");
  auto s = Store::Open(tmp / "db", StoreOptions());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), Status::Code::kCorruption);
  EXPECT_NE(s.status().message().find("vseq/a"), std::string::npos) << s.status().message();
  EXPECT_TRUE(std::filesystem::exists(tmp / "db/tables/a.v1.emb"));
}

// A lost CATALOG beside table files is an error, never an empty store whose
// next write would delete the tables as leftovers.
TEST(StoreCatalogTest, TableFilesWithoutACatalogAreNotAnEmptyStore) {
  TempDir tmp;
  {
    auto store = OpenOrDie(tmp / "db");
    TableSpec spec{10, 4, DType::kF32, "", false, {}};
    ASSERT_TRUE(store->WriteTable("a", spec, Pattern(4, 0)).ok());
  }
  std::filesystem::remove(tmp / "db/CATALOG");
  auto s = Store::Open(tmp / "db", StoreOptions());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), Status::Code::kCorruption);
  EXPECT_NE(s.status().message().find("a.v1.emb"), std::string::npos) << s.status().message();
  StoreOptions read_only;
  read_only.create_if_missing = false;
  EXPECT_EQ(Store::Open(tmp / "db", read_only).status().code(), Status::Code::kCorruption);
  EXPECT_TRUE(std::filesystem::exists(tmp / "db/tables/a.v1.emb"));
}

}  // namespace
}  // namespace embstore
