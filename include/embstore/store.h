// Store: a directory of memory-mapped embedding tables and their catalog.
//
//   auto store = embstore::Store::Open("/data/emb", {});
//   auto info = (*store)->ImportFile("items", "items.npy", {});
//   auto snap = (*store)->GetSnapshot("items");
//   embstore::EmbeddingBag(snap->view(), request, options);
//
// Layout and crash-safety: docs/table_format.md; processes: docs/concurrency.md.
//
// Processes: any number of processes may open one store and read it; one
// process at a time writes it (import, replace, drop, rollback), beside the
// readers. Readers take no lock and never wait for a writer; a writer never
// waits for readers. A version published by another process is seen within
// StoreOptions::refresh_interval, without reopening.
//
// Threads: a Store may be used from many threads at once. TableSnapshot is
// immutable and may be shared and read by any threads.
#ifndef EMBSTORE_STORE_H_
#define EMBSTORE_STORE_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "embstore/status.h"
#include "embstore/types.h"

namespace embstore {

struct StoreOptions {
  // Create the directory and an empty catalog when absent. Default true.
  bool create_if_missing = true;
  // Map table files read-only at open of a snapshot and advise the kernel
  // that access is random (MADV_RANDOM): right for lookups into tables much
  // larger than the page cache, a little slower for scans. Default true.
  bool advise_random = true;
  // Transparent huge pages for table mappings (MADV_HUGEPAGE). With it, a
  // cold fault reads the table in 2 MiB pieces into 2 MiB page-cache folios,
  // and a warm table is mapped 2 MiB at a time: opening and closing a
  // mapping costs a few hundred faults and unmaps instead of one per 4 KiB
  // (a one-shot `embstore query` over a 512 MB table: ~70 ms less), and
  // lookups miss the TLB less. Wrong for tables much larger than memory,
  // where each random row would read 2 MiB. kAuto (default): on for tables
  // of at most a quarter of the memory this process may use (physical
  // memory, or its cgroup's limit when lower), off above.
  enum class HugePages { kAuto, kOn, kOff };
  HugePages huge_pages = HugePages::kAuto;
  // How many earlier versions of each table a write keeps for Rollback(),
  // besides the current one. Default 1. A write trims the table it writes to
  // this many (the files of the versions it lets go are deleted then).
  int retain_versions = 1;
  // How long a write waits for another process's write to end before it
  // fails with "another process (pid N) is writing to DIR". Default 5 s.
  std::chrono::milliseconds writer_wait{5000};
  // How often the store looks for a catalog published by another process
  // (a read of the catalog's first bytes, done on the way into GetSnapshot,
  // GetInfo, ListTables and ListEntries). Default 100 ms; at most 1 s is
  // honoured. Refresh() looks at once.
  std::chrono::milliseconds refresh_interval{100};
};

// What the catalog knows of one table version.
struct TableInfo {
  std::string name;
  uint64_t version = 0;  // 1 for the first import of a name, then +1 per replace
  int64_t rows = 0;
  int64_t dim = 0;
  DType dtype = DType::kF32;
  uint64_t row_stride = 0;   // bytes
  uint64_t data_bytes = 0;   // rows * row_stride
  uint64_t file_bytes = 0;   // header + data
  uint64_t checksum = 0;     // xxh64 of the data region
  std::string source;        // where the data came from (path and tensor key)
  std::string file;          // file name inside the store's tables/ folder
  int64_t created_unix = 0;  // seconds since the epoch
};

// One table as the catalog holds it: its current version and the earlier
// versions retained for rollback, or, for an entry this build cannot read
// (written by a newer build, or damaged), why not.
struct TableEntry {
  std::string name;
  Status status;                    // OK, or why the entry cannot be read
  std::vector<TableInfo> versions;  // status OK: [0] is current, then retained, newest first
};

// Progress of a long operation: done and total in rows.
using ProgressFn = std::function<void(int64_t done, int64_t total)>;

// Fills rows [first, first + count) as float32, row-major, count * dim values.
// Called with increasing `first`, one chunk at a time (bounded memory).
using RowFillFn = std::function<Status(int64_t first, int64_t count, float* out)>;
// Fills rows [first, first + count) already encoded in the table's dtype:
// count rows of RowStrideBytes(dtype, dim) bytes each, as a table file holds
// them (padding included). For copying rows between stores byte for byte.
using EncodedRowFillFn = std::function<Status(int64_t first, int64_t count, uint8_t* out)>;

struct ImportOptions {
  // Which tensor of a multi-tensor checkpoint to import; may be empty for a
  // single-array file (.npy).
  std::string tensor_key;
  // Storage dtype; default keeps f32/f16/bf16 as they are and turns f64 into f32.
  std::optional<DType> dtype;
  // Replace an existing table of the same name with a new version. Default:
  // refuse (AlreadyExists).
  bool replace = false;
  // Called as rows are written; may be empty.
  ProgressFn progress;
};

// The description of a table to write through Store::WriteTable.
struct TableSpec {
  int64_t rows = 0;
  int64_t dim = 0;
  DType dtype = DType::kF32;
  std::string source;  // recorded in the catalog
  bool replace = false;
  ProgressFn progress;
  // Rows per fill call; 0 picks about 32 MiB of float32 per chunk. Larger
  // values are capped at the table's rows; a chunk must fit in 1 GiB.
  int64_t chunk_rows = 0;
  // Publish only if the table's current version is still this one when the
  // write takes the writer lock (a new version derived from a snapshot, such
  // as a renorm, must not silently replace a version published meanwhile by
  // another process). Otherwise IOError naming both versions, and nothing is
  // written.
  std::optional<uint64_t> expected_version = std::nullopt;
};

// An immutable, shared view of one version of a table. Copies are cheap and
// share the mapping, which stays valid after the version is replaced or
// dropped and its file deleted (Linux keeps a mapped file until it is unmapped).
class TableSnapshot {
 public:
  class Mapping;  // private
  TableSnapshot() = default;
  explicit TableSnapshot(std::shared_ptr<const Mapping> mapping);

  const TableInfo& info() const;
  TableView view() const;
  bool valid() const { return mapping_ != nullptr; }

 private:
  std::shared_ptr<const Mapping> mapping_;
};

class Store {
 public:
  // Opens (or, with create_if_missing, creates) the store in `dir`. Opening
  // to read writes nothing. Writes collect the leftovers of interrupted
  // writes: temporary files and table files no catalog entry names.
  static Result<std::unique_ptr<Store>> Open(const std::string& dir, const StoreOptions& options);

  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;
  virtual ~Store();

  // The current version of every table this build can read. Entries it
  // cannot read are not silently lost: ListEntries() shows them.
  virtual Result<std::vector<TableInfo>> ListTables() = 0;
  // Every catalog entry, readable or not, with its retained versions.
  virtual Result<std::vector<TableEntry>> ListEntries() = 0;
  virtual Result<TableInfo> GetInfo(const std::string& name) = 0;
  // The current version of `name`, mapped. A snapshot keeps reading its
  // version however the table changes later.
  virtual Result<TableSnapshot> GetSnapshot(const std::string& name) = 0;
  // Reads the catalog now, catching up with writes of other processes.
  virtual Status Refresh() = 0;

  // Imports one tensor of a checkpoint file (.npy; other formats as supported)
  // as table `name`, streaming with bounded memory. Publishes atomically:
  // after a crash at any point the store holds the old version or the new one.
  virtual Result<TableInfo> ImportFile(const std::string& name, const std::string& path,
                                       const ImportOptions& options) = 0;

  // Writes a table from a generator of float32 rows, converting to spec.dtype,
  // with the same atomic publication as ImportFile.
  virtual Result<TableInfo> WriteTable(const std::string& name, const TableSpec& spec,
                                       const RowFillFn& fill) = 0;

  // The same from rows already encoded in spec.dtype (see EncodedRowFillFn),
  // written as given: a copy of another table's rows is byte-identical (its
  // checksum too). The rows' contents are not checked; spec.chunk_rows
  // counts encoded rows.
  virtual Result<TableInfo> WriteEncodedTable(const std::string& name, const TableSpec& spec,
                                              const EncodedRowFillFn& fill) = 0;

  // Removes the table and its retained versions from the catalog and
  // deletes their files (snapshots held anywhere keep their mappings).
  virtual Status DropTable(const std::string& name) = 0;

  // Publishes a retained version of `name` again, atomically, as a new
  // version number: `to_version`, or by default the newest retained one.
  virtual Result<TableInfo> Rollback(const std::string& name,
                                     std::optional<uint64_t> to_version) = 0;

  // Recomputes the data checksums of a table's files (current and retained
  // versions) and checks their headers against the catalog. OK, or
  // Corruption naming what is wrong; an entry this build cannot read is
  // Corruption too.
  virtual Status VerifyTable(const std::string& name) = 0;

 protected:
  Store() = default;
};

// Table names: 1..128 characters of [A-Za-z0-9_.-], not starting with '.'.
Status ValidateTableName(const std::string& name);

}  // namespace embstore

#endif  // EMBSTORE_STORE_H_
