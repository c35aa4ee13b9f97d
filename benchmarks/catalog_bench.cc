// What a reader pays to follow other processes' writes, and the catalog
// designs that were weighed (docs/concurrency.md, benchmarks/RESULTS.md):
//
//   BM_GetSnapshotCached        GetSnapshot of a mapped current version, no catalog look due
//   BM_GetSnapshotLookEveryCall refresh_interval = 0: the catalog header is read on every call
//   BM_ReadCatalog/N            reading and decoding a whole catalog of N tables (a change seen)
//   BM_Publish                  one WriteTable of a 1-row table: the writer lock, the table
//                               file and the catalog with their fsyncs
//   BM_RocksSecondaryCatchUp/N  the RocksDB alternative: TryCatchUpWithPrimary of a secondary
//                               instance over a catalog of N keys, with nothing new
//   BM_RocksReadOnlyScan/N      the other RocksDB alternative: a read-only open and full scan
//
//   build/release/benchmarks/catalog_bench --benchmark_repetitions=5
//       --benchmark_report_aggregates_only=true  (one line)
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>

#include "embstore/store.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"
#include "storage/catalog.h"

namespace {

using embstore::Status;
using embstore::Store;
using embstore::StoreOptions;
using embstore::TableSpec;

std::string TempPath(const std::string& tag) {
  return (std::filesystem::temp_directory_path() /
          ("embstore-catalog-bench-" + tag + "-" + std::to_string(::getpid())))
      .string();
}

embstore::RowFillFn Zeros(int64_t dim) {
  return [dim](int64_t, int64_t count, float* out) {
    std::fill(out, out + count * dim, 0.0f);
    return Status::OK();
  };
}

// A store of `tables` one-row tables (the catalog grows with the tables).
std::unique_ptr<Store> MakeStore(const std::string& dir, int tables, StoreOptions o = {}) {
  std::filesystem::remove_all(dir);
  auto store = Store::Open(dir, o);
  if (!store.ok()) std::abort();
  if (tables > 0) {
    // Build the catalog directly: one WriteTable (and its fsyncs) per table
    // would take minutes at 10^4 tables.
    TableSpec spec{1, 4, embstore::DType::kF32, "bench", false, {}};
    if (!(*store)->WriteTable("t0", spec, Zeros(4)).ok()) std::abort();
    auto c = embstore::storage::ReadCatalog(dir);
    if (!c.ok()) std::abort();
    const embstore::storage::CatalogTable first = c->tables[0];
    for (int i = 1; i < tables; ++i) {
      embstore::storage::CatalogTable t = first;
      t.name = std::string("t").append(std::to_string(i));
      t.versions[0].name = t.name;
      t.raw.clear();
      c->Put(std::move(t));
    }
    ++c->generation;
    bool published = false;
    if (!embstore::storage::WriteCatalog(dir, *c, &published).ok()) std::abort();
    if (!(*store)->Refresh().ok()) std::abort();
  }
  return std::move(store).value();
}

void BM_GetSnapshotCached(benchmark::State& state) {
  const std::string dir = TempPath("cached");
  auto store = MakeStore(dir, 1);
  for (auto _ : state) {
    auto snap = store->GetSnapshot("t0");
    benchmark::DoNotOptimize(snap);
  }
  std::filesystem::remove_all(dir);
}
BENCHMARK(BM_GetSnapshotCached);

void BM_GetSnapshotLookEveryCall(benchmark::State& state) {
  const std::string dir = TempPath("look");
  StoreOptions o;
  o.refresh_interval = std::chrono::milliseconds(0);
  auto store = MakeStore(dir, 1, o);
  for (auto _ : state) {
    auto snap = store->GetSnapshot("t0");
    benchmark::DoNotOptimize(snap);
  }
  std::filesystem::remove_all(dir);
}
BENCHMARK(BM_GetSnapshotLookEveryCall);

void BM_ReadCatalog(benchmark::State& state) {
  const std::string dir = TempPath("read");
  auto store = MakeStore(dir, static_cast<int>(state.range(0)));
  for (auto _ : state) {
    auto c = embstore::storage::ReadCatalog(dir);
    if (!c.ok()) state.SkipWithError("read failed");
    benchmark::DoNotOptimize(c);
  }
  state.counters["bytes"] =
      static_cast<double>(std::filesystem::file_size(dir + "/" + embstore::storage::kCatalogFile));
  std::filesystem::remove_all(dir);
}
BENCHMARK(BM_ReadCatalog)->Arg(10)->Arg(1000)->Arg(10000)->Unit(benchmark::kMicrosecond);

void BM_Publish(benchmark::State& state) {
  const std::string dir = TempPath("publish");
  auto store = MakeStore(dir, 1);
  TableSpec spec{1, 4, embstore::DType::kF32, "bench", true, {}};
  for (auto _ : state) {
    if (!store->WriteTable("t0", spec, Zeros(4)).ok()) state.SkipWithError("write failed");
  }
  std::filesystem::remove_all(dir);
}
BENCHMARK(BM_Publish)->Unit(benchmark::kMillisecond);

// A RocksDB catalog of `keys` records of the format-1 size (~300 bytes).
std::string MakeRocks(const std::string& dir, int keys) {
  std::filesystem::remove_all(dir);
  rocksdb::Options o;
  o.create_if_missing = true;
  rocksdb::DB* raw = nullptr;
  if (!rocksdb::DB::Open(o, dir, &raw).ok()) std::abort();
  std::unique_ptr<rocksdb::DB> db(raw);
  const std::string value(300, 'x');
  for (int i = 0; i < keys; ++i) {
    if (!db->Put(rocksdb::WriteOptions(), "table/t" + std::to_string(i), value).ok()) std::abort();
  }
  return dir;
}

void BM_RocksSecondaryCatchUp(benchmark::State& state) {
  const std::string dir = MakeRocks(TempPath("rocks2"), static_cast<int>(state.range(0)));
  rocksdb::Options o;
  o.max_open_files = -1;
  rocksdb::DB* raw = nullptr;
  if (!rocksdb::DB::OpenAsSecondary(o, dir, dir + "-secondary", &raw).ok()) std::abort();
  std::unique_ptr<rocksdb::DB> db(raw);
  for (auto _ : state) {
    if (!db->TryCatchUpWithPrimary().ok()) state.SkipWithError("catch-up failed");
  }
  db.reset();
  std::filesystem::remove_all(dir);
  std::filesystem::remove_all(dir + "-secondary");
}
BENCHMARK(BM_RocksSecondaryCatchUp)->Arg(10)->Arg(1000)->Unit(benchmark::kMicrosecond);

void BM_RocksReadOnlyScan(benchmark::State& state) {
  const std::string dir = MakeRocks(TempPath("rocksro"), static_cast<int>(state.range(0)));
  for (auto _ : state) {
    rocksdb::DB* raw = nullptr;
    if (!rocksdb::DB::OpenForReadOnly(rocksdb::Options(), dir, &raw).ok()) std::abort();
    std::unique_ptr<rocksdb::DB> db(raw);
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions()));
    size_t n = 0;
    for (it->SeekToFirst(); it->Valid(); it->Next()) n += it->value().size();
    benchmark::DoNotOptimize(n);
  }
  std::filesystem::remove_all(dir);
}
BENCHMARK(BM_RocksReadOnlyScan)->Arg(10)->Arg(1000)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
