// Store: a directory of memory-mapped embedding tables with a RocksDB catalog.
//
//   auto store = embstore::Store::Open("/data/emb", {});
//   auto info = (*store)->ImportFile("items", "items.npy", {});
//   auto snap = (*store)->GetSnapshot("items");
//   embstore::EmbeddingBag(snap->view(), request, options);
//
// Layout and crash-safety are documented in docs/table_format.md.
//
// Thread-safety: a Store may be used from many threads at once. A store
// directory is opened by one process at a time (RocksDB's lock enforces it).
// TableSnapshot is immutable and may be shared and read by any threads.
#ifndef EMBSTORE_STORE_H_
#define EMBSTORE_STORE_H_

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

// Progress of a long operation: done and total in rows.
using ProgressFn = std::function<void(int64_t done, int64_t total)>;

// Fills rows [first, first + count) as float32, row-major, count * dim values.
// Called with increasing `first`, one chunk at a time (bounded memory).
using RowFillFn = std::function<Status(int64_t first, int64_t count, float* out)>;

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
  // Rows per fill call; 0 picks about 32 MiB of float32 per chunk.
  int64_t chunk_rows = 0;
};

// An immutable, shared view of one version of a table. Copies are cheap and
// share the mapping; the file of a replaced or dropped version is unlinked when
// the last snapshot of it is destroyed.
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
  // Opens (or creates) the store in `dir`. Collects leftovers of interrupted
  // imports: temporary files and table files no catalog entry refers to.
  static Result<std::unique_ptr<Store>> Open(const std::string& dir, const StoreOptions& options);

  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;
  virtual ~Store();

  virtual std::vector<TableInfo> ListTables() = 0;
  virtual Result<TableInfo> GetInfo(const std::string& name) = 0;
  virtual Result<TableSnapshot> GetSnapshot(const std::string& name) = 0;

  // Imports one tensor of a checkpoint file (.npy; other formats as supported)
  // as table `name`, streaming with bounded memory. Publishes atomically:
  // after a crash at any point the store holds the old version or the new one.
  virtual Result<TableInfo> ImportFile(const std::string& name, const std::string& path,
                                       const ImportOptions& options) = 0;

  // Writes a table from a generator of float32 rows, converting to spec.dtype,
  // with the same atomic publication as ImportFile.
  virtual Result<TableInfo> WriteTable(const std::string& name, const TableSpec& spec,
                                       const RowFillFn& fill) = 0;

  // Removes the table from the catalog; its file is reclaimed once no
  // snapshot of it remains.
  virtual Status DropTable(const std::string& name) = 0;

  // Recomputes the data checksum of a table's file and checks its header
  // against the catalog. OK, or Corruption naming what is wrong.
  virtual Status VerifyTable(const std::string& name) = 0;

 protected:
  Store() = default;
};

// Table names: 1..128 characters of [A-Za-z0-9_.-], not starting with '.'.
Status ValidateTableName(const std::string& name);

}  // namespace embstore

#endif  // EMBSTORE_STORE_H_
