// Store catalog: entries this build cannot read, other formats, damage; two
// Store objects on one directory (as two processes would be); format-1 stores
// (RocksDB catalog) read, then migrated.
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
#include "embstore/store.h"
#include "rocksdb/db.h"
#include "storage/catalog.h"
#include "storage/table_file.h"
#include "store_test_util.h"
#include "test_util.h"
#include "util/memory.h"

namespace embstore {
namespace {

using embstore::testing::TempDir;

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
  ASSERT_NO_FATAL_FAILURE(WriteClosedStore(tmp / "db", {"a", "b"}));
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
  ASSERT_NO_FATAL_FAILURE(WriteClosedStore(tmp / "db", {"a"}));
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
  ASSERT_NO_FATAL_FAILURE(WriteClosedStore(tmp / "db", {"a"}));
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
  ASSERT_NO_FATAL_FAILURE(WriteClosedStore(tmp / "db", {"a", "b"}));
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
  ASSERT_NO_FATAL_FAILURE(WriteClosedStore(tmp / "db", {"a"}));
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
