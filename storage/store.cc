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
#include <cerrno>
#include <chrono>
#include <vector>

#include "storage/catalog.h"
#include "storage/guarded.h"
#include "storage/store_impl.h"
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

namespace storage {
namespace {

constexpr char kLegacyGuardText[] =
    "This store's catalog is the file CATALOG (catalog format 2).\n"
    "This file keeps embstore builds that read only format 1 from using the store.\n";

int64_t SteadyNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

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

StoreImpl::StoreImpl(std::string dir, StoreOptions options, Catalog catalog, bool legacy)
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

Result<std::vector<TableInfo>> StoreImpl::ListTables() {
  return Guarded<Result<std::vector<TableInfo>>>([&]() -> Result<std::vector<TableInfo>> {
    MaybeRefresh();
    std::vector<TableInfo> out;
    for (const CatalogTable& t : Current()->tables)
      if (t.status.ok()) out.push_back(t.versions[0]);
    return out;
  });
}

Result<std::vector<TableEntry>> StoreImpl::ListEntries() {
  return Guarded<Result<std::vector<TableEntry>>>([&]() -> Result<std::vector<TableEntry>> {
    MaybeRefresh();
    std::vector<TableEntry> out;
    for (const CatalogTable& t : Current()->tables) out.push_back({t.name, t.status, t.versions});
    return out;
  });
}

Result<TableInfo> StoreImpl::GetInfo(const std::string& name) {
  return Guarded<Result<TableInfo>>([&]() -> Result<TableInfo> {
    EMBSTORE_RETURN_IF_ERROR(ValidateTableName(name));
    MaybeRefresh();
    auto state = Current();
    EMBSTORE_ASSIGN_OR_RETURN(const CatalogTable* t, FindReadable(*state, name));
    return t->versions[0];
  });
}

Result<TableSnapshot> StoreImpl::GetSnapshot(const std::string& name) {
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
        MutexLock lock(&open_mu_);
        auto it = open_.find(name);
        if (it != open_.end() && it->second->info().version == info.version &&
            it->second->info().file == info.file) {
          return TableSnapshot(it->second);
        }
      }
      auto mapping = Map(info);
      if (mapping.ok()) {
        MutexLock lock(&open_mu_);
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

Status StoreImpl::Refresh() {
  return Guarded<Status>([&] { return RefreshNow(); });
}

Status StoreImpl::VerifyTable(const std::string& name) {
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

std::shared_ptr<const Catalog> StoreImpl::Current() {
  MutexLock lock(&state_mu_);
  return state_;
}

void StoreImpl::MaybeRefresh() {
  const int64_t now = SteadyNs();
  if (now < next_check_ns_.load(std::memory_order_relaxed)) return;
  if (!refresh_mu_.TryLock()) return;
  next_check_ns_.store(now + refresh_ns_, std::memory_order_relaxed);
  // Released on every way out: an exception (bad_alloc reading the catalog)
  // is caught by the API's barrier above, and a mutex left locked would then
  // block every later refresh for good.
  try {
    (void)RefreshLocked(/*force=*/false);
  } catch (...) {
    refresh_mu_.Unlock();
    throw;
  }
  refresh_mu_.Unlock();
}

Status StoreImpl::RefreshNow() {
  MutexLock lock(&refresh_mu_);
  next_check_ns_.store(SteadyNs() + refresh_ns_, std::memory_order_relaxed);
  return RefreshLocked(/*force=*/true);
}

Status StoreImpl::RefreshLocked(bool force) {
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

void StoreImpl::Install(Catalog c) {
  auto next = std::make_shared<const Catalog>(std::move(c));
  {
    MutexLock lock(&state_mu_);
    if (next->generation < state_->generation) return;
    state_ = next;
  }
  std::vector<std::shared_ptr<const TableSnapshot::Mapping>> released;  // unmapped unlocked
  MutexLock lock(&open_mu_);
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

Result<const CatalogTable*> StoreImpl::FindReadable(const Catalog& c, const std::string& name) {
  const CatalogTable* t = c.Find(name);
  if (t == nullptr) return Status::NotFound("unknown table '" + name + "'");
  if (!t->status.ok()) return UnreadableError(*t);
  return t;
}

bool StoreImpl::HeaderMatches(const storage::TableHeader& h, const TableInfo& info) {
  return h.rows == static_cast<uint64_t>(info.rows) && h.dim == static_cast<uint64_t>(info.dim) &&
         h.dtype == info.dtype && h.row_stride == info.row_stride &&
         h.data_checksum == info.checksum;
}

Result<std::shared_ptr<const TableSnapshot::Mapping>> StoreImpl::Map(const TableInfo& info) {
  const std::string path = tables_dir_ + "/" + info.file;
  bool huge = options_.huge_pages == StoreOptions::HugePages::kOn;
  if (options_.huge_pages == StoreOptions::HugePages::kAuto) {
    huge = info.file_bytes <= UsableMemoryBytes() / 4;
  }
  EMBSTORE_ASSIGN_OR_RETURN(auto file,
                            storage::MappedTableFile::Open(path, options_.advise_random, huge));
  if (!HeaderMatches(file->header(), info)) {
    return Status::Corruption("table '" + info.name + "': file header does not match the catalog");
  }
  return std::shared_ptr<const TableSnapshot::Mapping>(
      std::make_shared<TableSnapshot::Mapping>(info, std::move(file)));
}

namespace {

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
}  // namespace storage

Result<std::unique_ptr<Store>> Store::Open(const std::string& dir, const StoreOptions& options) {
  return storage::Guarded<Result<std::unique_ptr<Store>>>(
      [&] { return storage::OpenStore(dir, options); });
}

}  // namespace embstore
