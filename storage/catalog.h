// Internal: the store's catalog file (see docs/concurrency.md and docs/table_format.md).
//
// A store's catalog is one small file, DIR/CATALOG, replaced whole and
// atomically by the one writer (temporary file, fsync, rename, fsync of the
// directory) and read whole, without any lock, by every reader:
//
//   embstore-catalog 2 generation 17\n      header: format, then a counter
//   {"tables":[...],"last_version":{...}}\n  body: JSON
//   xxh64 0123456789abcdef\n                 checksum of the two lines above
//
// A reader therefore sees one published catalog or the next, never a mix.
// The generation grows by one per publication, so a reader learns that the
// catalog changed from the header's first bytes.
#ifndef EMBSTORE_STORAGE_CATALOG_H_
#define EMBSTORE_STORAGE_CATALOG_H_

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "embstore/status.h"
#include "embstore/store.h"

namespace embstore::storage {

inline constexpr int kCatalogFormat = 2;
inline constexpr char kCatalogFile[] = "CATALOG";
// The largest catalog a reader accepts (a catalog of 10^5 tables is ~50 MiB).
inline constexpr uint64_t kMaxCatalogBytes = uint64_t{1} << 30;

// One table of the catalog: its current version and the retained ones.
struct CatalogTable {
  std::string name;
  // OK, or why this build cannot read the entry (an unknown dtype written by
  // a newer build, a malformed record). An unreadable entry is kept
  // verbatim and its files are never deleted.
  Status status;
  std::vector<TableInfo> versions;  // readable entries: [0] is current, then newest first
  // The files this entry names (readable or not), and whether that list is
  // complete: false for an entry too malformed to say (then no table file of
  // the store is treated as a leftover).
  std::vector<std::string> files;
  bool files_known = true;
  // The JSON text of the entry as read (an unreadable entry is written back
  // as it is; a readable one keeps fields this build does not know).
  std::string raw;
};

struct Catalog {
  uint64_t generation = 0;
  std::vector<CatalogTable> tables;  // sorted by name
  // The last version number handed out per name, kept after a drop, so that
  // a version (and its file name) is never handed out twice.
  std::map<std::string, uint64_t> last_version;

  const CatalogTable* Find(const std::string& name) const;
  CatalogTable* Find(const std::string& name);
  // Every file any entry names; `complete` is false when an entry's files are
  // unknown (then nothing but temporaries may be collected).
  std::set<std::string> ReferencedFiles(bool* complete) const;
  // The number to give the next version of `name`: past every number handed
  // out, current or retained; 0 when none is left.
  uint64_t NextVersion(const std::string& name) const;
  // Inserts or replaces the entry for `t.name`, keeping the order.
  void Put(CatalogTable t);
  void Erase(const std::string& name);
};

// A readable entry built from versions (current first).
CatalogTable MakeEntry(std::vector<TableInfo> versions);

// The catalog file's bytes, and back. `path` names the file in messages.
std::string EncodeCatalog(const Catalog& catalog);
Result<Catalog> DecodeCatalog(std::string_view bytes, const std::string& path);
// The header, body and checksum around a JSON body (tests build catalogs of
// other builds with it).
std::string SealCatalog(uint64_t generation, std::string_view body, int format = kCatalogFormat);

// Reads DIR/CATALOG whole; NotFound when there is none.
Result<Catalog> ReadCatalog(const std::string& dir);
// The generation in DIR/CATALOG's header (a few bytes read).
Result<uint64_t> ReadCatalogGeneration(const std::string& dir);
// Publishes `catalog` as DIR/CATALOG: a temporary file created exclusively,
// fsync, rename over CATALOG, fsync of DIR. REQUIRES: the writer lock.
// *published says whether the rename happened: an error after it (the sync
// of DIR) leaves the new catalog in place.
Status WriteCatalog(const std::string& dir, const Catalog& catalog, bool* published);

// The catalog of a format-1 store (a RocksDB database in DIR/catalog),
// read through a read-only open that takes no lock and writes nothing.
// Entries this build cannot decode come back unreadable, as above.
Result<Catalog> ReadLegacyCatalog(const std::string& rocksdb_dir);
// For a writer (under the writer lock) about to publish the first CATALOG of
// a format-1 store: opens the RocksDB catalog read-write (which fails while
// a process of an older build holds it), marks it migrated (meta/format =
// "2", synced: builds that read only format 1 refuse the store from then
// on), and reads it. A store marked but not yet given a CATALOG (a writer
// died in between) reads as before.
Result<Catalog> MigrateLegacyCatalog(const std::string& rocksdb_dir);

}  // namespace embstore::storage

#endif  // EMBSTORE_STORAGE_CATALOG_H_
