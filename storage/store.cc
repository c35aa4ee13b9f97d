// Store implementation: RocksDB catalog + immutable mmapped table files.
#include "embstore/store.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <vector>

#include "rocksdb/db.h"
#include "rocksdb/options.h"
#include "rocksdb/write_batch.h"
#include "storage/convert.h"
#include "storage/io_util.h"
#include "storage/table_file.h"
#include "storage/tensor_reader.h"

namespace embstore {

// ---- Snapshot mapping -----------------------------------------------------------------

// One mapped version of a table. When `obsolete` is set (the version was
// replaced or dropped), the destructor unlinks the file: Linux keeps the
// mapping valid until then, so readers never see it vanish.
class TableSnapshot::Mapping {
 public:
  Mapping(TableInfo info, std::string path, std::unique_ptr<storage::MappedTableFile> file)
      : info_(std::move(info)), path_(std::move(path)), file_(std::move(file)) {}
  ~Mapping() {
    file_.reset();
    if (obsolete_.load()) ::unlink(path_.c_str());
  }
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
  void MarkObsolete() const { obsolete_.store(true); }

 private:
  TableInfo info_;
  std::string path_;
  std::unique_ptr<storage::MappedTableFile> file_;
  mutable std::atomic<bool> obsolete_{false};
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

constexpr char kTablePrefix[] = "table/";
constexpr char kVersionSeqPrefix[] = "vseq/";
constexpr char kFormatKey[] = "meta/format";
constexpr size_t kChunkBytes = 32u << 20;  // f32 staging per import chunk

std::string EncodeInfo(const TableInfo& t) {
  nlohmann::json j = {
      {"name", t.name},
      {"version", t.version},
      {"rows", t.rows},
      {"dim", t.dim},
      {"dtype", DTypeName(t.dtype)},
      {"row_stride", t.row_stride},
      {"data_bytes", t.data_bytes},
      {"file_bytes", t.file_bytes},
      {"checksum", t.checksum},
      {"source", t.source},
      {"file", t.file},
      {"created_unix", t.created_unix},
  };
  return j.dump();
}

Result<TableInfo> DecodeInfo(const std::string& s) {
  try {
    auto j = nlohmann::json::parse(s);
    TableInfo t;
    t.name = j.at("name").get<std::string>();
    t.version = j.at("version").get<uint64_t>();
    t.rows = j.at("rows").get<int64_t>();
    t.dim = j.at("dim").get<int64_t>();
    auto dt = ParseDType(j.at("dtype").get<std::string>());
    if (!dt) return Status::Corruption("catalog entry has unknown dtype");
    t.dtype = *dt;
    t.row_stride = j.at("row_stride").get<uint64_t>();
    t.data_bytes = j.at("data_bytes").get<uint64_t>();
    t.file_bytes = j.at("file_bytes").get<uint64_t>();
    t.checksum = j.at("checksum").get<uint64_t>();
    t.source = j.at("source").get<std::string>();
    t.file = j.at("file").get<std::string>();
    t.created_unix = j.at("created_unix").get<int64_t>();
    return t;
  } catch (const std::exception& e) {
    return Status::Corruption(std::string("catalog entry is malformed: ") + e.what());
  }
}

Status FromRocks(const rocksdb::Status& s, const std::string& what) {
  if (s.ok()) return Status::OK();
  if (s.IsNotFound()) return Status::NotFound(what + ": " + s.ToString());
  if (s.IsCorruption()) return Status::Corruption(what + ": " + s.ToString());
  return Status::IOError(what + ": " + s.ToString());
}

bool DirExists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

Status MakeDir(const std::string& p) {
  if (::mkdir(p.c_str(), 0755) != 0 && errno != EEXIST) {
    return storage::ErrnoStatus("cannot create directory", p, errno);
  }
  return Status::OK();
}

class StoreImpl final : public Store {
 public:
  StoreImpl(std::string dir, StoreOptions options, std::unique_ptr<rocksdb::DB> db)
      : dir_(std::move(dir)),
        tables_dir_(dir_ + "/tables"),
        options_(options),
        db_(std::move(db)) {}

  Status CollectLeftovers() {
    std::set<std::string> referenced;
    for (const TableInfo& t : ListTables()) referenced.insert(t.file);
    DIR* d = ::opendir(tables_dir_.c_str());
    if (d == nullptr) return storage::ErrnoStatus("cannot list", tables_dir_, errno);
    std::vector<std::string> doomed;
    while (dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n == "." || n == "..") continue;
      if (referenced.count(n) == 0) doomed.push_back(n);
    }
    ::closedir(d);
    for (const std::string& n : doomed) ::unlink((tables_dir_ + "/" + n).c_str());
    if (!doomed.empty()) return storage::FsyncDir(tables_dir_);
    return Status::OK();
  }

  std::vector<TableInfo> ListTables() override {
    std::vector<TableInfo> out;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
    for (it->Seek(kTablePrefix); it->Valid() && it->key().starts_with(kTablePrefix); it->Next()) {
      auto info = DecodeInfo(it->value().ToString());
      if (info.ok()) out.push_back(std::move(info).value());
    }
    return out;
  }

  Result<TableInfo> GetInfo(const std::string& name) override {
    EMBSTORE_RETURN_IF_ERROR(ValidateTableName(name));
    std::string value;
    rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), kTablePrefix + name, &value);
    if (s.IsNotFound()) return Status::NotFound("unknown table '" + name + "'");
    EMBSTORE_RETURN_IF_ERROR(FromRocks(s, "catalog read"));
    return DecodeInfo(value);
  }

  Result<TableSnapshot> GetSnapshot(const std::string& name) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = open_.find(name);
    if (it != open_.end()) return TableSnapshot(it->second);
    EMBSTORE_ASSIGN_OR_RETURN(TableInfo info, GetInfo(name));
    const std::string path = tables_dir_ + "/" + info.file;
    bool huge = options_.huge_pages == StoreOptions::HugePages::kOn;
    if (options_.huge_pages == StoreOptions::HugePages::kAuto) {
      huge = info.file_bytes <= storage::UsableMemoryBytes() / 4;
    }
    EMBSTORE_ASSIGN_OR_RETURN(auto file,
                              storage::MappedTableFile::Open(path, options_.advise_random, huge));
    const storage::TableHeader& h = file->header();
    if (h.rows != static_cast<uint64_t>(info.rows) || h.dim != static_cast<uint64_t>(info.dim) ||
        h.dtype != info.dtype || h.data_checksum != info.checksum) {
      return Status::Corruption("table '" + name + "': file header does not match the catalog");
    }
    auto mapping = std::make_shared<TableSnapshot::Mapping>(info, path, std::move(file));
    open_[name] = mapping;
    return TableSnapshot(mapping);
  }

  Result<TableInfo> ImportFile(const std::string& name, const std::string& path,
                               const ImportOptions& options) override {
    EMBSTORE_RETURN_IF_ERROR(ValidateTableName(name));
    if (!options.replace) {
      auto existing = GetInfo(name);
      if (existing.ok()) {
        return Status::AlreadyExists("table '" + name + "' exists (version " +
                                     std::to_string(existing->version) +
                                     "); pass --replace to publish a new version");
      }
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
    return WriteTable(name, spec, [r](int64_t first, int64_t count, float* out) {
      return r->ReadRows(first, count, out);
    });
  }

  Result<TableInfo> WriteTable(const std::string& name, const TableSpec& spec,
                               const RowFillFn& fill) override {
    EMBSTORE_RETURN_IF_ERROR(ValidateTableName(name));
    if (spec.rows < 0 || spec.dim <= 0) {
      return Status::InvalidArgument("a table needs at least 0 rows and dimension >= 1");
    }
    if (spec.dim > (int64_t{1} << 24)) return Status::InvalidArgument("dimension is too large");
    // Reserve a version number (never reused, even after a drop, so a file
    // name is never recycled while an old snapshot may still unlink it).
    uint64_t version = 0;
    {
      std::lock_guard<std::mutex> lock(publish_mu_);
      auto existing = GetInfo(name);
      if (existing.ok() && !spec.replace) {
        return Status::AlreadyExists("table '" + name + "' exists (version " +
                                     std::to_string(existing->version) +
                                     "); pass --replace to publish a new version");
      }
      std::string seq;
      rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), kVersionSeqPrefix + name, &seq);
      if (!s.ok() && !s.IsNotFound()) return FromRocks(s, "catalog read");
      version = (s.ok() ? std::stoull(seq) : 0) + 1;
      rocksdb::WriteOptions wo;
      wo.sync = true;
      EMBSTORE_RETURN_IF_ERROR(FromRocks(
          db_->Put(wo, kVersionSeqPrefix + name, std::to_string(version)), "catalog write"));
    }
    const std::string file = name + ".v" + std::to_string(version) + ".emb";
    const std::string final_path = tables_dir_ + "/" + file;
    const std::string tmp_path = final_path + ".tmp-" + std::to_string(::getpid());

    storage::TableFileWriter writer;
    EMBSTORE_RETURN_IF_ERROR(writer.Open(tmp_path, spec.dtype, spec.rows, spec.dim));
    const size_t stride = writer.row_stride();
    const int64_t chunk_rows =
        spec.chunk_rows > 0
            ? spec.chunk_rows
            : std::max<int64_t>(
                  1, static_cast<int64_t>(kChunkBytes /
                                          (sizeof(float) * static_cast<size_t>(spec.dim))));
    std::vector<float> f32(
        static_cast<size_t>(std::min(chunk_rows, std::max<int64_t>(spec.rows, 1)) * spec.dim));
    std::vector<uint8_t> encoded(
        static_cast<size_t>(std::min(chunk_rows, std::max<int64_t>(spec.rows, 1))) * stride);
    for (int64_t first = 0; first < spec.rows; first += chunk_rows) {
      const int64_t count = std::min(chunk_rows, spec.rows - first);
      EMBSTORE_RETURN_IF_ERROR(fill(first, count, f32.data()));
      EMBSTORE_RETURN_IF_ERROR(storage::EncodeRows(f32.data(), count, spec.dim, spec.dtype, stride,
                                                   encoded.data(), first));
      EMBSTORE_RETURN_IF_ERROR(
          writer.AppendRows({encoded.data(), static_cast<size_t>(count) * stride}, count));
      if (spec.progress) spec.progress(first + count, spec.rows);
    }
    if (spec.progress && spec.rows == 0) spec.progress(0, 0);
    EMBSTORE_ASSIGN_OR_RETURN(storage::TableHeader h, writer.Finish(final_path, tables_dir_));

    TableInfo info;
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
    info.created_unix = std::chrono::duration_cast<std::chrono::seconds>(
                            std::chrono::system_clock::now().time_since_epoch())
                            .count();

    std::lock_guard<std::mutex> lock(publish_mu_);
    auto old = GetInfo(name);
    if (old.ok() && !spec.replace) {
      ::unlink(final_path.c_str());
      return Status::AlreadyExists("table '" + name + "' was created while importing");
    }
    rocksdb::WriteBatch batch;
    batch.Put(kTablePrefix + name, EncodeInfo(info));
    rocksdb::WriteOptions wo;
    wo.sync = true;
    Status st = FromRocks(db_->Write(wo, &batch), "catalog write");
    if (!st.ok()) {
      ::unlink(final_path.c_str());
      return st;
    }
    if (old.ok()) Retire(name, old.value());
    return info;
  }

  Status DropTable(const std::string& name) override {
    std::lock_guard<std::mutex> lock(publish_mu_);
    EMBSTORE_ASSIGN_OR_RETURN(TableInfo info, GetInfo(name));
    rocksdb::WriteOptions wo;
    wo.sync = true;
    EMBSTORE_RETURN_IF_ERROR(FromRocks(db_->Delete(wo, kTablePrefix + name), "catalog write"));
    Retire(name, info);
    return Status::OK();
  }

  Status VerifyTable(const std::string& name) override {
    EMBSTORE_ASSIGN_OR_RETURN(TableInfo info, GetInfo(name));
    const std::string path = tables_dir_ + "/" + info.file;
    auto h = storage::VerifyTableFile(path);
    if (!h.ok()) {
      if (h.status().code() == Status::Code::kNotFound) {
        return Status::Corruption("table '" + name + "': its file '" + info.file + "' is missing");
      }
      return Status::Corruption("table '" + name + "': " + h.status().message());
    }
    if (h->rows != static_cast<uint64_t>(info.rows) || h->dim != static_cast<uint64_t>(info.dim) ||
        h->dtype != info.dtype || h->data_checksum != info.checksum) {
      return Status::Corruption("table '" + name + "': file header does not match the catalog");
    }
    return Status::OK();
  }

 private:
  // The version `info` of `name` is no longer in the catalog: unlink its file
  // now, or when the last snapshot of it goes. REQUIRES: publish_mu_ held.
  void Retire(const std::string& name, const TableInfo& info) {
    std::shared_ptr<TableSnapshot::Mapping> mapping;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = open_.find(name);
      if (it != open_.end() && it->second->info().version == info.version) {
        mapping = std::move(it->second);
        open_.erase(it);
      }
    }
    if (mapping) {
      mapping->MarkObsolete();  // unlinked by the last holder
    } else {
      ::unlink((tables_dir_ + "/" + info.file).c_str());
    }
  }

  const std::string dir_;
  const std::string tables_dir_;
  const StoreOptions options_;
  std::unique_ptr<rocksdb::DB> db_;
  std::mutex publish_mu_;  // serializes version reservation and catalog switches
  std::mutex mu_;          // guards open_
  std::map<std::string, std::shared_ptr<TableSnapshot::Mapping>> open_;  // GUARDED_BY(mu_)
};

}  // namespace

Result<std::unique_ptr<Store>> Store::Open(const std::string& dir, const StoreOptions& options) {
  if (dir.empty()) return Status::InvalidArgument("store directory must not be empty");
  const std::string catalog = dir + "/catalog";
  if (!DirExists(catalog)) {
    if (!options.create_if_missing) {
      return Status::NotFound("no embstore store at '" + dir +
                              "' (create one with `embstore init --db " + dir +
                              "` or by importing a table)");
    }
    EMBSTORE_RETURN_IF_ERROR(MakeDir(dir));
  }
  EMBSTORE_RETURN_IF_ERROR(MakeDir(dir + "/tables"));
  rocksdb::Options ro;
  ro.create_if_missing = options.create_if_missing;
  ro.max_open_files = 64;
  ro.keep_log_file_num = 2;
  ro.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(ro, catalog, &raw);
  if (!s.ok()) {
    if (s.IsIOError() && s.ToString().find("lock") != std::string::npos) {
      return Status::IOError("store '" + dir + "' is in use by another process (" + s.ToString() +
                             ")");
    }
    return FromRocks(s, "cannot open the catalog of store '" + dir + "'");
  }
  std::unique_ptr<rocksdb::DB> db(raw);
  std::string fmt;
  s = db->Get(rocksdb::ReadOptions(), kFormatKey, &fmt);
  if (s.IsNotFound()) {
    rocksdb::WriteOptions wo;
    wo.sync = true;
    EMBSTORE_RETURN_IF_ERROR(FromRocks(db->Put(wo, kFormatKey, "1"), "catalog write"));
  } else if (!s.ok()) {
    return FromRocks(s, "catalog read");
  } else if (fmt != "1") {
    return Status::NotSupported("store '" + dir + "' has catalog format " + fmt +
                                "; this build reads 1");
  }
  auto store = std::make_unique<StoreImpl>(dir, options, std::move(db));
  EMBSTORE_RETURN_IF_ERROR(store->CollectLeftovers());
  return std::unique_ptr<Store>(std::move(store));
}

}  // namespace embstore
