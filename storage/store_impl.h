// Internal: the Store implementation. store.cc opens a store and serves
// reads over the catalog in hand, refreshed from DIR/CATALOG; store_write.cc
// is the write path (under the writer lock) and the reclamation of files no
// catalog entry names.
#ifndef EMBSTORE_STORAGE_STORE_IMPL_H_
#define EMBSTORE_STORAGE_STORE_IMPL_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "embstore/status.h"
#include "embstore/store.h"
#include "storage/catalog.h"
#include "storage/table_file.h"
#include "util/mutex.h"
#include "util/thread_annotations.h"

namespace embstore::storage {

// Where a format-1 store kept its RocksDB catalog. In a format-2 store
// created by this build it is a plain file: a format-1 build then fails to
// open the store (RocksDB cannot make a database there) instead of taking it
// for an empty store and deleting its table files as leftovers.
inline constexpr char kLegacyCatalogDir[] = "catalog";

// Whether `p` is a directory.
bool IsDir(const std::string& p);
// mkdir, where `p` does not exist yet.
Status MakeDir(const std::string& p);
// The error for a table the catalog holds but this build cannot read.
Status UnreadableError(const CatalogTable& t);
// Whether `name` is a file this store writes in tables/: a table file or a
// temporary one. Nothing else there is ever deleted.
bool IsOurTableFile(const std::string& name);

class StoreImpl final : public Store {
 public:
  StoreImpl(std::string dir, StoreOptions options, Catalog catalog, bool legacy);

  // ---- Reads --------------------------------------------------------------------------

  Result<std::vector<TableInfo>> ListTables() override;
  Result<std::vector<TableEntry>> ListEntries() override;
  Result<TableInfo> GetInfo(const std::string& name) override;
  Result<TableSnapshot> GetSnapshot(const std::string& name) override;
  Status Refresh() override;
  Status VerifyTable(const std::string& name) override;

  // ---- Writes -------------------------------------------------------------------------

  Result<TableInfo> ImportFile(const std::string& name, const std::string& path,
                               const ImportOptions& options) override;
  Result<TableInfo> WriteTable(const std::string& name, const TableSpec& spec,
                               const RowFillFn& fill) override;
  Result<TableInfo> WriteEncodedTable(const std::string& name, const TableSpec& spec,
                                      const EncodedRowFillFn& fill) override;
  Status DropTable(const std::string& name) override;
  Result<TableInfo> Rollback(const std::string& name, std::optional<uint64_t> to_version) override;

 private:
  // ---- Catalog state --------------------------------------------------------------------

  std::shared_ptr<const Catalog> Current() LOCKS_EXCLUDED(state_mu_);
  // Looks for a newer catalog when refresh_interval has passed since the last
  // look. One thread looks; the others go on with the catalog they have.
  // A failed look keeps the catalog in hand (it is retried next interval).
  void MaybeRefresh() LOCKS_EXCLUDED(refresh_mu_);
  Status RefreshNow() LOCKS_EXCLUDED(refresh_mu_);
  // REQUIRES: refresh_mu_ held.
  Status RefreshLocked(bool force) EXCLUSIVE_LOCKS_REQUIRED(refresh_mu_);
  // Makes `c` the catalog in hand, unless it is older than the one in hand,
  // and lets go of cached mappings of versions that are no longer current.
  void Install(Catalog c) LOCKS_EXCLUDED(state_mu_, open_mu_);
  static Result<const CatalogTable*> FindReadable(const Catalog& c, const std::string& name);
  static bool HeaderMatches(const storage::TableHeader& h, const TableInfo& info);
  Result<std::shared_ptr<const TableSnapshot::Mapping>> Map(const TableInfo& info);

  // ---- The write path -------------------------------------------------------------------

  // Runs `change` on the newest catalog under the writer lock and publishes
  // the result; then deletes the table files no entry names any more.
  // `change` may write table files (it runs under the lock); on error nothing
  // is published.
  template <typename Change>
  Status Write(Change&& change) LOCKS_EXCLUDED(write_mu_);
  // The newest catalog, read under the writer lock. A format-1 store's
  // catalog is read from RocksDB here, and written as CATALOG by this write.
  Result<Catalog> ReadForWrite() EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  // Deletes what interrupted writes left in tables/: temporaries, and table
  // files no entry names (renamed but never published, or retired by a
  // writer that died before deleting them). Nothing but temporaries goes
  // while an unreadable entry's files are unknown. REQUIRES: the writer lock.
  void CollectLeftovers(const Catalog& c) EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  // Makes `info` the current version of its table in `c`, keeping the
  // versions it replaces up to retain_versions.
  void PublishVersion(Catalog* c, const TableInfo& info);
  // Exactly one of fill and encoded_fill is set.
  Result<TableInfo> WriteTableGuarded(const std::string& name, const TableSpec& spec,
                                      const RowFillFn& fill,
                                      const EncodedRowFillFn& encoded_fill = nullptr);

  const std::string dir_;
  const std::string tables_dir_;
  StoreOptions options_;
  int64_t refresh_ns_ = 0;
  // A format-1 store (RocksDB catalog) that had no CATALOG when opened.
  std::atomic<bool> legacy_;

  // Lock order: write_mu_ or refresh_mu_ (never both), then open_mu_, then
  // state_mu_. Neither of the first two is held while waiting for the other.
  Mutex write_mu_ ACQUIRED_BEFORE(open_mu_, state_mu_);    // one write of this process at a time
                                                           // (then the writer lock)
  Mutex refresh_mu_ ACQUIRED_BEFORE(open_mu_, state_mu_);  // one catalog read at a time
  std::atomic<int64_t> next_check_ns_{0};
  Mutex open_mu_ ACQUIRED_BEFORE(state_mu_);
  // The mapping of each table's current version, kept while it is current.
  std::map<std::string, std::shared_ptr<const TableSnapshot::Mapping>> open_ GUARDED_BY(open_mu_);
  Mutex state_mu_;
  // The catalog in hand; never goes back a generation.
  std::shared_ptr<const Catalog> state_ GUARDED_BY(state_mu_);
};

}  // namespace embstore::storage

#endif  // EMBSTORE_STORAGE_STORE_IMPL_H_
