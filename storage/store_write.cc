// The Store's write path: one write at a time per process (write_mu_), then
// the writer lock across processes; the new table file, the new catalog, and
// the deletion of files no entry names any more (docs/concurrency.md).
#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <set>
#include <string>
#include <vector>

#include "checkpoint/tensor_reader.h"
#include "storage/catalog.h"
#include "storage/convert.h"
#include "storage/guarded.h"
#include "storage/store_impl.h"
#include "storage/table_file.h"
#include "storage/writer_lock.h"
#include "util/io_util.h"

namespace embstore::storage {
namespace {

constexpr size_t kChunkBytes = 32u << 20;           // f32 staging per import chunk
constexpr size_t kMaxChunkBytes = size_t{1} << 30;  // the largest chunk a caller may ask for

int64_t NowUnix() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Status AlreadyExistsError(const CatalogTable& t) {
  return Status::AlreadyExists("table '" + t.name + "' exists (version " +
                               std::to_string(t.versions[0].version) +
                               "); pass --replace to publish a new version");
}

}  // namespace

Result<TableInfo> StoreImpl::ImportFile(const std::string& name, const std::string& path,
                                        const ImportOptions& options) {
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
    spec.dtype = options.dtype.value_or(storage::DefaultTableDType(reader->source_dtype()));
    spec.source = reader->source();
    spec.replace = options.replace;
    spec.progress = options.progress;
    storage::TensorReader* r = reader.get();
    return WriteTableGuarded(name, spec, [r](int64_t first, int64_t count, float* out) {
      return r->ReadRows(first, count, out);
    });
  });
}

Result<TableInfo> StoreImpl::WriteTable(const std::string& name, const TableSpec& spec,
                                        const RowFillFn& fill) {
  return Guarded<Result<TableInfo>>([&] { return WriteTableGuarded(name, spec, fill); });
}

Result<TableInfo> StoreImpl::WriteEncodedTable(const std::string& name, const TableSpec& spec,
                                               const EncodedRowFillFn& fill) {
  return Guarded<Result<TableInfo>>([&] { return WriteTableGuarded(name, spec, nullptr, fill); });
}

Status StoreImpl::DropTable(const std::string& name) {
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

Result<TableInfo> StoreImpl::Rollback(const std::string& name, std::optional<uint64_t> to_version) {
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
          return Status::InvalidArgument("version " + std::to_string(*to_version) + " of '" + name +
                                         "' is the current version");
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
      published.source = "rollback to v" + std::to_string(target.version) + " of " + target.source;
      PublishVersion(c, published);
      return Status::OK();
    }));
    return published;
  });
}

template <typename Change>
Status StoreImpl::Write(Change&& change) {
  MutexLock local(&write_mu_);  // this process's writers, one at a time
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

Result<Catalog> StoreImpl::ReadForWrite() {
  auto c = storage::ReadCatalog(dir_);
  if (c.ok() || c.status().code() != Status::Code::kNotFound) return c;
  if (!IsDir(dir_ + "/" + kLegacyCatalogDir)) return c.status();
  legacy_ = true;
  return storage::MigrateLegacyCatalog(dir_ + "/" + kLegacyCatalogDir);
}

void StoreImpl::CollectLeftovers(const Catalog& c) {
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

void StoreImpl::PublishVersion(Catalog* c, const TableInfo& info) {
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

Result<TableInfo> StoreImpl::WriteTableGuarded(const std::string& name, const TableSpec& spec,
                                               const RowFillFn& fill,
                                               const EncodedRowFillFn& encoded_fill) {
  EMBSTORE_RETURN_IF_ERROR(ValidateTableName(name));
  if (spec.rows < 0 || spec.dim <= 0) {
    return Status::InvalidArgument("a table needs at least 0 rows and dimension >= 1");
  }
  if (spec.dim > (int64_t{1} << 24)) return Status::InvalidArgument("dimension is too large");
  if (spec.chunk_rows < 0) return Status::InvalidArgument("chunk_rows must be >= 0");
  const size_t row_f32_bytes = sizeof(float) * static_cast<size_t>(spec.dim);
  int64_t chunk_rows =
      spec.chunk_rows > 0 ? spec.chunk_rows
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
    std::vector<float> f32(
        encoded_fill ? 0 : static_cast<size_t>(chunk_rows) * static_cast<size_t>(spec.dim));
    std::vector<uint8_t> encoded(static_cast<size_t>(chunk_rows) * stride);
    for (int64_t first = 0; first < spec.rows; first += chunk_rows) {
      const int64_t count = std::min(chunk_rows, spec.rows - first);
      if (encoded_fill) {
        EMBSTORE_RETURN_IF_ERROR(encoded_fill(first, count, encoded.data()));
      } else {
        EMBSTORE_RETURN_IF_ERROR(fill(first, count, f32.data()));
        EMBSTORE_RETURN_IF_ERROR(storage::EncodeRows(f32.data(), count, spec.dim, spec.dtype,
                                                     stride, encoded.data(), first));
      }
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

}  // namespace embstore::storage
