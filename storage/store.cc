// Store implementation: a catalog file shared by processes + immutable mmapped table files.
//
// The protocol (docs/concurrency.md):
// - Readers read DIR/CATALOG whole, without a lock, and look again for a newer
//   generation every refresh_interval. A file a stale catalog names may be
//   gone: the reader then reads the catalog again and retries.
// - One writer at a time holds DIR/LOCK (flock) for a whole write: it reads
//   the newest catalog, writes the new table file (temporary, fsync, rename),
//   publishes the new catalog (temporary, fsync, rename), then deletes the
//   files no entry names any more.
#include "embstore/store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <map>
#include <mutex>
#include <set>
#include <vector>

#include "checkpoint/tensor_reader.h"
#include "storage/catalog.h"
#include "storage/convert.h"
#include "storage/guarded.h"
#include "storage/table_file.h"
#include "storage/writer_lock.h"
#include "util/io_util.h"
#include "util/memory.h"

namespace embstore {

// ---- Snapshot mapping -----------------------------------------------------------------

// One mapped version of a table. The file may be deleted while mapped: Linux
// keeps the mapping valid until it is unmapped.
class TableSnapshot::Mapping {
 public:
  Mapping(TableInfo info, std::unique_ptr<storage::MappedTableFile> file)
      : info_(std::move(info)), file_(std::move(file)) {}
  const TableInfo& info() const { return info_; }
  TableView view() const {
    TableView v;
    v.data = file_->data();
    v.rows = info_.rows;
    v.dim = info_.dim;
    v.row_stride = static_cast<size_t>(info_.row_stride);
    v.dtype = info_.dtype;
    v.name = info_.name;
    return v;
  }

 private:
  TableInfo info_;
  std::unique_ptr<storage::MappedTableFile> file_;
};

TableSnapshot::TableSnapshot(std::shared_ptr<const Mapping> mapping)
    : mapping_(std::move(mapping)) {}
const TableInfo& TableSnapshot::info() const { return mapping_->info(); }
TableView TableSnapshot::view() const { return mapping_->view(); }

Store::~Store() = default;

Status ValidateTableName(const std::string& name) {
  if (name.empty() || name.size() > 128) {
    return Status::InvalidArgument("table name must be 1 to 128 characters long");
  }
  if (name[0] == '.')
    return Status::InvalidArgument("table name '" + name + "' must not start with '.'");
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '-' || c == '.';
    if (!ok) {
      return Status::InvalidArgument("table name '" + name +
                                     "' may hold only letters, digits, '_', '-' and '.'");
    }
  }
  return Status::OK();
}

namespace {

using storage::Catalog;
using storage::CatalogTable;
using storage::Guarded;

constexpr size_t kChunkBytes = 32u << 20;           // f32 staging per import chunk
constexpr size_t kMaxChunkBytes = size_t{1} << 30;  // the largest chunk a caller may ask for
// Where a format-1 store kept its RocksDB catalog. In a format-2 store
// created by this build it is a plain file: a format-1 build then fails to
// open the store (RocksDB cannot make a database there) instead of taking it
// for an empty store and deleting its table files as leftovers.
constexpr char kLegacyCatalogDir[] = "catalog";
constexpr char kLegacyGuardText[] =
    "This store's catalog is the file CATALOG (catalog format 2).\n"
    "This file keeps embstore builds that read only format 1 from using the store.\n";

bool IsDir(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

Status MakeDir(const std::string& p) {
  if (::mkdir(p.c_str(), 0755) != 0 && errno != EEXIST) {
    return ErrnoStatus("cannot create directory", p, errno);
  }
  return Status::OK();
}

int64_t NowUnix() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

int64_t SteadyNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

Status AlreadyExistsError(const CatalogTable& t) {
  return Status::AlreadyExists("table '" + t.name + "' exists (version " +
                               std::to_string(t.versions[0].version) +
                               "); pass --replace to publish a new version");
}

// The error for a table the catalog holds but this build cannot read.
Status UnreadableError(const CatalogTable& t) {
  return Status::Corruption(t.status.message() + "; the entry and its files are left as they are");
}

// Whether `name` is a file this store writes in tables/: a table file or a
// temporary one. Nothing else there is ever deleted.
bool IsOurTableFile(const std::string& name) {
  return name.size() > 4 && (name.compare(name.size() - 4, 4, ".emb") == 0 ||
                             name.find(".emb.tmp-") != std::string::npos);
}

class StoreImpl final : public Store {
 public:
  StoreImpl(std::string dir, StoreOptions options, Catalog catalog, bool legacy)
      : dir_(std::move(dir)),
        tables_dir_(dir_ + "/tables"),
        options_(options),
        legacy_(legacy),
        state_(std::make_shared<const Catalog>(std::move(catalog))) {
    options_.retain_versions = std::max(0, options_.retain_versions);
    const int64_t ms = std::clamp<int64_t>(options_.refresh_interval.count(), 0, 1000);
    refresh_ns_ = ms * 1000000;
    next_check_ns_.store(SteadyNs() + refresh_ns_);
  }

  // ---- Reads --------------------------------------------------------------------------

  Result<std::vector<TableInfo>> ListTables() override {
    return Guarded<Result<std::vector<TableInfo>>>([&]() -> Result<std::vector<TableInfo>> {
      MaybeRefresh();
      std::vector<TableInfo> out;
      for (const CatalogTable& t : Current()->tables)
        if (t.status.ok()) out.push_back(t.versions[0]);
      return out;
    });
  }

  Result<std::vector<TableEntry>> ListEntries() override {
    return Guarded<Result<std::vector<TableEntry>>>([&]() -> Result<std::vector<TableEntry>> {
      MaybeRefresh();
      std::vector<TableEntry> out;
      for (const CatalogTable& t : Current()->tables) out.push_back({t.name, t.status, t.versions});
      return out;
    });
  }

  Result<TableInfo> GetInfo(const std::string& name) override {
    return Guarded<Result<TableInfo>>([&]() -> Result<TableInfo> {
      EMBSTORE_RETURN_IF_ERROR(ValidateTableName(name));
      MaybeRefresh();
      auto state = Current();
      EMBSTORE_ASSIGN_OR_RETURN(const CatalogTable* t, FindReadable(*state, name));
      return t->versions[0];
    });
  }

  Result<TableSnapshot> GetSnapshot(const std::string& name) override {
    return Guarded<Result<TableSnapshot>>([&]() -> Result<TableSnapshot> {
      EMBSTORE_RETURN_IF_ERROR(ValidateTableName(name));
      MaybeRefresh();
      // A catalog that is behind may name a file a writer has since deleted:
      // then read the catalog again and follow it (a few rounds at most; a
      // file missing from the newest catalog is corruption).
      for (int attempt = 0;; ++attempt) {
        auto state = Current();
        EMBSTORE_ASSIGN_OR_RETURN(const CatalogTable* t, FindReadable(*state, name));
        const TableInfo& info = t->versions[0];
        {
          std::lock_guard<std::mutex> lock(open_mu_);
          auto it = open_.find(name);
          if (it != open_.end() && it->second->info().version == info.version &&
              it->second->info().file == info.file) {
            return TableSnapshot(it->second);
          }
        }
        auto mapping = Map(info);
        if (mapping.ok()) {
          std::lock_guard<std::mutex> lock(open_mu_);
          // Cached only while current: a catalog installed meanwhile has
          // swept the cache already (Install sets state_, then sweeps).
          const CatalogTable* now = Current()->Find(name);
          if (now != nullptr && now->status.ok() && now->versions[0].version == info.version) {
            open_[name] = *mapping;
          }
          return TableSnapshot(std::move(mapping).value());
        }
        // The file may have been deleted before or while it was opened: if
        // the catalog moved on, follow it.
        const uint64_t seen = state->generation;
        EMBSTORE_RETURN_IF_ERROR(RefreshNow());
        if (Current()->generation == seen || attempt >= 8) {
          if (mapping.status().code() != Status::Code::kNotFound) return mapping.status();
          return Status::Corruption("table '" + name + "': its file '" + info.file +
                                    "' is missing (" + mapping.status().message() + ")");
        }
      }
    });
  }

  Status Refresh() override {
    return Guarded<Status>([&] { return RefreshNow(); });
  }

  Status VerifyTable(const std::string& name) override {
    return Guarded<Status>([&]() -> Status {
      MaybeRefresh();
      auto state = Current();
      const CatalogTable* t = state->Find(name);
      if (t == nullptr) return Status::NotFound("unknown table '" + name + "'");
      if (!t->status.ok()) return UnreadableError(*t);
      for (size_t i = 0; i < t->versions.size(); ++i) {
        const TableInfo& info = t->versions[i];
        const std::string which =
            i == 0 ? "table '" + name + "'"
                   : "table '" + name + "' (retained version " + std::to_string(info.version) + ")";
        auto h = storage::VerifyTableFile(tables_dir_ + "/" + info.file);
        if (!h.ok()) {
          if (h.status().code() == Status::Code::kNotFound) {
            return Status::Corruption(which + ": its file '" + info.file + "' is missing");
          }
          return Status::Corruption(which + ": " + h.status().message());
        }
        if (!HeaderMatches(*h, info)) {
          return Status::Corruption(which + ": file header does not match the catalog");
        }
      }
      return Status::OK();
    });
  }

  // ---- Writes -------------------------------------------------------------------------

  Result<TableInfo> ImportFile(const std::string& name, const std::string& path,
                               const ImportOptions& options) override {
    return Guarded<Result<TableInfo>>([&]() -> Result<TableInfo> {
      EMBSTORE_RETURN_IF_ERROR(ValidateTableName(name));
      if (!options.replace) {
        // Fail before reading the checkpoint; the write checks again under the lock.
        EMBSTORE_RETURN_IF_ERROR(RefreshNow());
        auto state = Current();
        const CatalogTable* t = state->Find(name);
        if (t != nullptr && t->status.ok()) return AlreadyExistsError(*t);
      }
      EMBSTORE_ASSIGN_OR_RETURN(auto reader, storage::OpenTensor(path, options.tensor_key));
      TableSpec spec;
      spec.rows = reader->rows();
      spec.dim = reader->dim();
      switch (reader->source_dtype()) {
        case storage::SourceDType::kF16:
          spec.dtype = DType::kF16;
          break;
        case storage::SourceDType::kBF16:
          spec.dtype = DType::kBF16;
          break;
        default:
          spec.dtype = DType::kF32;
          break;
      }
      if (options.dtype) spec.dtype = *options.dtype;
      spec.source = reader->source();
      spec.replace = options.replace;
      spec.progress = options.progress;
      storage::TensorReader* r = reader.get();
      return WriteTableGuarded(name, spec, [r](int64_t first, int64_t count, float* out) {
        return r->ReadRows(first, count, out);
      });
    });
  }

  Result<TableInfo> WriteTable(const std::string& name, const TableSpec& spec,
                               const RowFillFn& fill) override {
    return Guarded<Result<TableInfo>>([&] { return WriteTableGuarded(name, spec, fill); });
  }

  Status DropTable(const std::string& name) override {
    return Guarded<Status>([&]() -> Status {
      EMBSTORE_RETURN_IF_ERROR(ValidateTableName(name));
      return Write([&](Catalog* c) -> Status {
        const CatalogTable* t = c->Find(name);
        if (t == nullptr) return Status::NotFound("unknown table '" + name + "'");
        if (!t->status.ok()) return UnreadableError(*t);
        c->last_version[name] = c->NextVersion(name) - 1;
        c->Erase(name);
        return Status::OK();
      });
    });
  }

  Result<TableInfo> Rollback(const std::string& name, std::optional<uint64_t> to_version) override {
    return Guarded<Result<TableInfo>>([&]() -> Result<TableInfo> {
      EMBSTORE_RETURN_IF_ERROR(ValidateTableName(name));
      TableInfo published;
      EMBSTORE_RETURN_IF_ERROR(Write([&](Catalog* c) -> Status {
        const CatalogTable* t = c->Find(name);
        if (t == nullptr) return Status::NotFound("unknown table '" + name + "'");
        if (!t->status.ok()) return UnreadableError(*t);
        if (t->versions.size() < 2) {
          return Status::NotFound("table '" + name + "' (version " +
                                  std::to_string(t->versions[0].version) +
                                  ") retains no earlier version to roll back to");
        }
        size_t pick = 1;
        if (to_version) {
          if (*to_version == t->versions[0].version) {
            return Status::InvalidArgument("version " + std::to_string(*to_version) + " of '" +
                                           name + "' is the current version");
          }
          pick = 0;
          for (size_t i = 1; i < t->versions.size(); ++i)
            if (t->versions[i].version == *to_version) pick = i;
          if (pick == 0) {
            std::string kept;
            for (size_t i = 1; i < t->versions.size(); ++i)
              kept += (i > 1 ? ", " : "") + std::to_string(t->versions[i].version);
            return Status::NotFound("table '" + name + "' retains no version " +
                                    std::to_string(*to_version) + " (retained: " + kept + ")");
          }
        }
        const TableInfo& target = t->versions[pick];
        // The new version shares the retained version's file: files are
        // immutable, and one is deleted only when no entry names it.
        published = target;
        published.version = c->NextVersion(name);
        if (published.version == 0)
          return Status::InvalidArgument("table '" + name + "' has used every version number");
        published.created_unix = NowUnix();
        published.source =
            "rollback to v" + std::to_string(target.version) + " of " + target.source;
        PublishVersion(c, published);
        return Status::OK();
      }));
      return published;
    });
  }

 private:
  // ---- Catalog state --------------------------------------------------------------------

  std::shared_ptr<const Catalog> Current() {
    std::lock_guard<std::mutex> lock(state_mu_);
    return state_;
  }

  // Looks for a newer catalog when refresh_interval has passed since the last
  // look. One thread looks; the others go on with the catalog they have.
  // A failed look keeps the catalog in hand (it is retried next interval).
  void MaybeRefresh() {
    const int64_t now = SteadyNs();
    if (now < next_check_ns_.load(std::memory_order_relaxed)) return;
    std::unique_lock<std::mutex> lock(refresh_mu_, std::try_to_lock);
    if (!lock.owns_lock()) return;
    next_check_ns_.store(now + refresh_ns_, std::memory_order_relaxed);
    (void)RefreshLocked(/*force=*/false);
  }

  Status RefreshNow() {
    std::lock_guard<std::mutex> lock(refresh_mu_);
    next_check_ns_.store(SteadyNs() + refresh_ns_, std::memory_order_relaxed);
    return RefreshLocked(/*force=*/true);
  }

  // REQUIRES: refresh_mu_ held.
  Status RefreshLocked(bool force) {
    const uint64_t have = Current()->generation;
    if (!force) {
      auto gen = storage::ReadCatalogGeneration(dir_);
      if (gen.ok() && *gen == have) return Status::OK();
      if (!gen.ok() && gen.status().code() == Status::Code::kNotFound && legacy_)
        return Status::OK();  // a format-1 store nobody has migrated yet
    }
    auto c = storage::ReadCatalog(dir_);
    if (!c.ok()) {
      if (c.status().code() == Status::Code::kNotFound && legacy_) return Status::OK();
      return c.status();
    }
    Install(std::move(c).value());
    return Status::OK();
  }

  // Makes `c` the catalog in hand, unless it is older than the one in hand,
  // and lets go of cached mappings of versions that are no longer current.
  void Install(Catalog c) {
    auto next = std::make_shared<const Catalog>(std::move(c));
    {
      std::lock_guard<std::mutex> lock(state_mu_);
      if (next->generation < state_->generation) return;
      state_ = next;
    }
    std::vector<std::shared_ptr<const TableSnapshot::Mapping>> released;  // unmapped unlocked
    std::lock_guard<std::mutex> lock(open_mu_);
    for (auto it = open_.begin(); it != open_.end();) {
      const CatalogTable* t = next->Find(it->first);
      const bool current =
          t != nullptr && t->status.ok() && t->versions[0].version == it->second->info().version;
      if (current) {
        ++it;
      } else {
        released.push_back(std::move(it->second));
        it = open_.erase(it);
      }
    }
  }

  static Result<const CatalogTable*> FindReadable(const Catalog& c, const std::string& name) {
    const CatalogTable* t = c.Find(name);
    if (t == nullptr) return Status::NotFound("unknown table '" + name + "'");
    if (!t->status.ok()) return UnreadableError(*t);
    return t;
  }

  static bool HeaderMatches(const storage::TableHeader& h, const TableInfo& info) {
    return h.rows == static_cast<uint64_t>(info.rows) && h.dim == static_cast<uint64_t>(info.dim) &&
           h.dtype == info.dtype && h.row_stride == info.row_stride &&
           h.data_checksum == info.checksum;
  }

  Result<std::shared_ptr<const TableSnapshot::Mapping>> Map(const TableInfo& info) {
    const std::string path = tables_dir_ + "/" + info.file;
    bool huge = options_.huge_pages == StoreOptions::HugePages::kOn;
    if (options_.huge_pages == StoreOptions::HugePages::kAuto) {
      huge = info.file_bytes <= UsableMemoryBytes() / 4;
    }
    EMBSTORE_ASSIGN_OR_RETURN(auto file,
                              storage::MappedTableFile::Open(path, options_.advise_random, huge));
    if (!HeaderMatches(file->header(), info)) {
      return Status::Corruption("table '" + info.name +
                                "': file header does not match the catalog");
    }
    return std::shared_ptr<const TableSnapshot::Mapping>(
        std::make_shared<TableSnapshot::Mapping>(info, std::move(file)));
  }

  // ---- The write path -------------------------------------------------------------------

  // Runs `change` on the newest catalog under the writer lock and publishes
  // the result; then deletes the table files no entry names any more.
  // `change` may write table files (it runs under the lock); on error nothing
  // is published.
  template <typename Change>
  Status Write(Change&& change) {
    std::lock_guard<std::mutex> local(write_mu_);  // this process's writers, one at a time
    EMBSTORE_ASSIGN_OR_RETURN(auto lock, storage::WriterLock::Acquire(dir_, options_.writer_wait));
    EMBSTORE_ASSIGN_OR_RETURN(Catalog c, ReadForWrite());
    EMBSTORE_RETURN_IF_ERROR(MakeDir(tables_dir_));
    CollectLeftovers(c);
    bool complete_before = true;
    const std::set<std::string> before = c.ReferencedFiles(&complete_before);
    EMBSTORE_RETURN_IF_ERROR(change(&c));
    ++c.generation;
    bool complete_after = true;
    const std::set<std::string> after = c.ReferencedFiles(&complete_after);
    bool published = false;
    const Status written = storage::WriteCatalog(dir_, c, &published);
    if (!published) {
      // The old catalog stands: a file this write made is no one's.
      for (const std::string& f : after)
        if (before.count(f) == 0) ::unlink((tables_dir_ + "/" + f).c_str());
      return written;
    }
    Install(c);
    legacy_ = false;
    if (!written.ok()) {
      // In place but perhaps not durable: delete nothing, say so.
      return written.WithContext("the new catalog is published but may not survive a crash");
    }
    bool unlinked = false;
    for (const std::string& f : before) {
      if (after.count(f) == 0 && IsOurTableFile(f)) {
        unlinked |= ::unlink((tables_dir_ + "/" + f).c_str()) == 0;
      }
    }
    if (unlinked) (void)FsyncDir(tables_dir_);
    return Status::OK();
  }

  // The newest catalog, read under the writer lock. A format-1 store's
  // catalog is read from RocksDB here, and written as CATALOG by this write.
  Result<Catalog> ReadForWrite() {
    auto c = storage::ReadCatalog(dir_);
    if (c.ok() || c.status().code() != Status::Code::kNotFound) return c;
    if (!IsDir(dir_ + "/" + kLegacyCatalogDir)) return c.status();
    legacy_ = true;
    return storage::MigrateLegacyCatalog(dir_ + "/" + kLegacyCatalogDir);
  }

  // Deletes what interrupted writes left in tables/: temporaries, and table
  // files no entry names (renamed but never published, or retired by a
  // writer that died before deleting them). Nothing but temporaries goes
  // while an unreadable entry's files are unknown. REQUIRES: the writer lock.
  void CollectLeftovers(const Catalog& c) {
    bool complete = true;
    const std::set<std::string> referenced = c.ReferencedFiles(&complete);
    DIR* d = ::opendir(tables_dir_.c_str());
    if (d == nullptr) return;
    std::vector<std::string> doomed;
    while (dirent* e = ::readdir(d)) {
      const std::string n = e->d_name;
      if (!IsOurTableFile(n) || referenced.count(n) != 0) continue;
      const bool temporary = n.find(".emb.tmp-") != std::string::npos;
      if (temporary || complete) doomed.push_back(n);
    }
    ::closedir(d);
    for (const std::string& n : doomed) ::unlink((tables_dir_ + "/" + n).c_str());
    // The directory of the catalog's own temporaries.
    if (DIR* top = ::opendir(dir_.c_str())) {
      const std::string prefix = std::string(storage::kCatalogFile) + ".tmp-";
      std::vector<std::string> stale;
      while (dirent* e = ::readdir(top)) {
        const std::string n = e->d_name;
        if (n.rfind(prefix, 0) == 0) stale.push_back(n);
      }
      ::closedir(top);
      for (const std::string& n : stale) ::unlink((dir_ + "/" + n).c_str());
    }
    if (!doomed.empty()) (void)FsyncDir(tables_dir_);
  }

  // Makes `info` the current version of its table in `c`, keeping the
  // versions it replaces up to retain_versions.
  void PublishVersion(Catalog* c, const TableInfo& info) {
    std::vector<TableInfo> versions = {info};
    if (const CatalogTable* old = c->Find(info.name)) {
      for (const TableInfo& v : old->versions) {
        if (versions.size() > static_cast<size_t>(options_.retain_versions)) break;
        versions.push_back(v);
      }
      CatalogTable t = storage::MakeEntry(std::move(versions));
      t.raw = old->raw;
      c->Put(std::move(t));
    } else {
      c->Put(storage::MakeEntry(std::move(versions)));
    }
    c->last_version[info.name] = std::max(c->last_version[info.name], info.version);
  }

  Result<TableInfo> WriteTableGuarded(const std::string& name, const TableSpec& spec,
                                      const RowFillFn& fill) {
    EMBSTORE_RETURN_IF_ERROR(ValidateTableName(name));
    if (spec.rows < 0 || spec.dim <= 0) {
      return Status::InvalidArgument("a table needs at least 0 rows and dimension >= 1");
    }
    if (spec.dim > (int64_t{1} << 24)) return Status::InvalidArgument("dimension is too large");
    if (spec.chunk_rows < 0) return Status::InvalidArgument("chunk_rows must be >= 0");
    const size_t row_f32_bytes = sizeof(float) * static_cast<size_t>(spec.dim);
    int64_t chunk_rows =
        spec.chunk_rows > 0
            ? spec.chunk_rows
            : std::max<int64_t>(1, static_cast<int64_t>(kChunkBytes / row_f32_bytes));
    chunk_rows = std::min(chunk_rows, std::max<int64_t>(spec.rows, 1));
    if (static_cast<uint64_t>(chunk_rows) > kMaxChunkBytes / row_f32_bytes) {
      return Status::InvalidArgument("chunk_rows = " + std::to_string(spec.chunk_rows) +
                                     " asks for more than 1 GiB of staging per chunk");
    }
    TableInfo info;
    EMBSTORE_RETURN_IF_ERROR(Write([&](Catalog* c) -> Status {
      const CatalogTable* existing = c->Find(name);
      if (existing != nullptr && !existing->status.ok()) return UnreadableError(*existing);
      if (existing != nullptr && !spec.replace) return AlreadyExistsError(*existing);
      if (spec.expected_version &&
          (existing == nullptr || existing->versions[0].version != *spec.expected_version)) {
        return Status::IOError(
            "table '" + name + "' changed while this write was prepared: it was version " +
            std::to_string(*spec.expected_version) + ", it is now " +
            (existing == nullptr ? std::string("dropped")
                                 : "version " + std::to_string(existing->versions[0].version)) +
            "; nothing was published");
      }
      uint64_t version = c->NextVersion(name);
      if (version == 0)
        return Status::InvalidArgument("table '" + name + "' has used every version number");
      // A file of that name can only be a leftover an unreadable entry may
      // name (others were collected): never write over it.
      while (::access((tables_dir_ + "/" + name + ".v" + std::to_string(version) + ".emb").c_str(),
                      F_OK) == 0) {
        ++version;
      }
      const std::string file = name + ".v" + std::to_string(version) + ".emb";
      const std::string final_path = tables_dir_ + "/" + file;
      const std::string tmp_path = final_path + ".tmp-" + std::to_string(::getpid());

      storage::TableFileWriter writer;
      EMBSTORE_RETURN_IF_ERROR(writer.Open(tmp_path, spec.dtype, spec.rows, spec.dim));
      const size_t stride = writer.row_stride();
      std::vector<float> f32(static_cast<size_t>(chunk_rows) * static_cast<size_t>(spec.dim));
      std::vector<uint8_t> encoded(static_cast<size_t>(chunk_rows) * stride);
      for (int64_t first = 0; first < spec.rows; first += chunk_rows) {
        const int64_t count = std::min(chunk_rows, spec.rows - first);
        EMBSTORE_RETURN_IF_ERROR(fill(first, count, f32.data()));
        EMBSTORE_RETURN_IF_ERROR(storage::EncodeRows(f32.data(), count, spec.dim, spec.dtype,
                                                     stride, encoded.data(), first));
        EMBSTORE_RETURN_IF_ERROR(
            writer.AppendRows({encoded.data(), static_cast<size_t>(count) * stride}, count));
        if (spec.progress) spec.progress(first + count, spec.rows);
      }
      if (spec.progress && spec.rows == 0) spec.progress(0, 0);
      // Renamed to its final name here; if the catalog write fails, the next
      // writer collects it (no entry names it).
      EMBSTORE_ASSIGN_OR_RETURN(storage::TableHeader h, writer.Finish(final_path, tables_dir_));

      info.name = name;
      info.version = version;
      info.rows = spec.rows;
      info.dim = spec.dim;
      info.dtype = spec.dtype;
      info.row_stride = h.row_stride;
      info.data_bytes = h.data_bytes;
      info.file_bytes = h.data_offset + h.data_bytes;
      info.checksum = h.data_checksum;
      info.source = spec.source;
      info.file = file;
      info.created_unix = NowUnix();
      PublishVersion(c, info);
      return Status::OK();
    }));
    return info;
  }

  const std::string dir_;
  const std::string tables_dir_;
  StoreOptions options_;
  int64_t refresh_ns_ = 0;
  // A format-1 store (RocksDB catalog) that had no CATALOG when opened.
  std::atomic<bool> legacy_;

  std::mutex write_mu_;    // one write of this process at a time (then the writer lock)
  std::mutex refresh_mu_;  // one catalog read at a time
  std::atomic<int64_t> next_check_ns_{0};
  std::mutex state_mu_;                   // guards state_
  std::shared_ptr<const Catalog> state_;  // the catalog in hand; never goes back a generation
  std::mutex open_mu_;                    // guards open_
  // The mapping of each table's current version, kept while it is current.
  std::map<std::string, std::shared_ptr<const TableSnapshot::Mapping>> open_;
};

// Table files without a catalog: the catalog was lost, or this is not a
// store. Corruption, never an empty store (whose next write would collect
// the files as leftovers).
Status RefuseOrphanTables(const std::string& dir) {
  DIR* d = ::opendir((dir + "/tables").c_str());
  if (d == nullptr) return Status::OK();
  std::string found;
  while (dirent* e = ::readdir(d)) {
    if (IsOurTableFile(e->d_name)) found = e->d_name;
  }
  ::closedir(d);
  if (found.empty()) return Status::OK();
  return Status::Corruption("'" + dir + "/tables' holds table files ('" + found +
                            "') but there is no catalog; refusing to treat it as an empty store");
}

// Creates an empty store in `dir` under the writer lock (another process
// may be creating it at the same moment).
Result<Catalog> CreateStore(const std::string& dir, const StoreOptions& options) {
  EMBSTORE_RETURN_IF_ERROR(MakeDir(dir));
  EMBSTORE_ASSIGN_OR_RETURN(auto lock, storage::WriterLock::Acquire(dir, options.writer_wait));
  auto existing = storage::ReadCatalog(dir);
  if (existing.ok() || existing.status().code() != Status::Code::kNotFound) return existing;
  EMBSTORE_RETURN_IF_ERROR(RefuseOrphanTables(dir));
  EMBSTORE_RETURN_IF_ERROR(MakeDir(dir + "/tables"));
  const std::string guard = dir + "/" + kLegacyCatalogDir;
  if (!IsDir(guard)) {
    ScopedFd fd(::open(guard.c_str(), O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644));
    if (fd.get() >= 0) {
      (void)WriteFull(fd.get(), kLegacyGuardText, sizeof(kLegacyGuardText) - 1, guard);
    }
  }
  Catalog c;
  c.generation = 1;
  bool published = false;
  EMBSTORE_RETURN_IF_ERROR(storage::WriteCatalog(dir, c, &published));
  return c;
}

Result<std::unique_ptr<Store>> OpenStore(const std::string& dir, const StoreOptions& options) {
  if (dir.empty()) return Status::InvalidArgument("store directory must not be empty");
  auto c = storage::ReadCatalog(dir);
  bool legacy = false;
  if (!c.ok() && c.status().code() == Status::Code::kNotFound) {
    if (IsDir(dir + "/" + kLegacyCatalogDir)) {
      legacy = true;
      c = storage::ReadLegacyCatalog(dir + "/" + kLegacyCatalogDir);
    } else if (Status orphans = RefuseOrphanTables(dir); !orphans.ok()) {
      c = orphans;
    } else if (!options.create_if_missing) {
      return Status::NotFound("no embstore store at '" + dir +
                              "' (open it with StoreOptions::create_if_missing to create one)");
    } else {
      c = CreateStore(dir, options);
    }
  }
  if (!c.ok()) {
    return c.status().WithContext("cannot open the store '" + dir + "'");
  }
  return std::unique_ptr<Store>(
      std::make_unique<StoreImpl>(dir, options, std::move(c).value(), legacy));
}

}  // namespace

Result<std::unique_ptr<Store>> Store::Open(const std::string& dir, const StoreOptions& options) {
  return Guarded<Result<std::unique_ptr<Store>>>([&] { return OpenStore(dir, options); });
}

}  // namespace embstore
