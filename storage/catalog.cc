// The catalog file: encoding, validation, atomic publication; format-1 (RocksDB) reading.
#include "storage/catalog.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cinttypes>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <utility>

#include "rocksdb/db.h"
#include "rocksdb/env.h"
#include "rocksdb/options.h"
#include "storage/table_file.h"
#include "util/io_util.h"

namespace embstore::storage {

namespace {

using nlohmann::json;

constexpr char kMagic[] = "embstore-catalog ";

// Compact JSON; invalid UTF-8 (a source path of odd bytes) is replaced, not thrown.
std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// File names a catalog may hold: a plain name inside tables/, never a path.
bool IsPlainFileName(const std::string& f) {
  if (f.empty() || f.size() > 255 || f[0] == '.') return false;
  for (char c : f) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '-' || c == '.';
    if (!ok) return false;
  }
  return true;
}

json InfoToJson(const TableInfo& t, const std::string& raw) {
  json j = json::object();
  if (!raw.empty()) {
    // Keep fields a newer build added; ours are written over them.
    json prior = json::parse(raw, nullptr, /*allow_exceptions=*/false);
    if (prior.is_object()) j = std::move(prior);
  }
  j["name"] = t.name;
  j["version"] = t.version;
  j["rows"] = t.rows;
  j["dim"] = t.dim;
  j["dtype"] = DTypeName(t.dtype);
  j["row_stride"] = t.row_stride;
  j["data_bytes"] = t.data_bytes;
  j["file_bytes"] = t.file_bytes;
  j["checksum"] = t.checksum;
  j["source"] = t.source;
  j["file"] = t.file;
  j["created_unix"] = t.created_unix;
  return j;
}

template <typename T>
T Field(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end()) throw std::runtime_error(std::string("no field '") + key + "'");
  if constexpr (std::is_same_v<T, std::string>) {
    if (!it->is_string()) throw std::runtime_error(std::string("'") + key + "' is not a string");
  } else if constexpr (std::is_unsigned_v<T>) {
    if (!it->is_number_unsigned())
      throw std::runtime_error(std::string("'") + key + "' is not a non-negative integer");
  } else {
    if (!it->is_number_integer())
      throw std::runtime_error(std::string("'") + key + "' is not an integer");
  }
  return it->get<T>();
}

// One version record. Throws std::runtime_error naming what is wrong.
TableInfo InfoFromJson(const json& j) {
  if (!j.is_object()) throw std::runtime_error("a version record is not an object");
  TableInfo t;
  t.name = Field<std::string>(j, "name");
  t.version = Field<uint64_t>(j, "version");
  t.rows = Field<int64_t>(j, "rows");
  t.dim = Field<int64_t>(j, "dim");
  const std::string dtype = Field<std::string>(j, "dtype");
  auto dt = ParseDType(dtype);
  if (!dt) throw std::runtime_error("unknown dtype '" + dtype + "' (written by a newer build?)");
  t.dtype = *dt;
  t.row_stride = Field<uint64_t>(j, "row_stride");
  t.data_bytes = Field<uint64_t>(j, "data_bytes");
  t.file_bytes = Field<uint64_t>(j, "file_bytes");
  t.checksum = Field<uint64_t>(j, "checksum");
  t.source = Field<std::string>(j, "source");
  t.file = Field<std::string>(j, "file");
  t.created_unix = Field<int64_t>(j, "created_unix");
  if (t.rows < 0 || t.dim < 1) throw std::runtime_error("rows/dim out of range");
  if (!IsPlainFileName(t.file)) throw std::runtime_error("file name '" + t.file + "' is not plain");
  if (t.version == 0) throw std::runtime_error("version 0");
  return t;
}

// Files named by an entry this build cannot fully read: complete only when
// the entry has the shape {"versions": [{"file": "..."}, ...]}.
void SalvageFiles(const json& j, CatalogTable* t) {
  t->files.clear();
  t->files_known = false;
  if (!j.is_object()) return;
  auto v = j.find("versions");
  if (v == j.end() || !v->is_array()) return;
  for (const json& e : *v) {
    if (!e.is_object()) return;
    auto f = e.find("file");
    if (f == e.end() || !f->is_string()) return;
    t->files.push_back(f->get<std::string>());
  }
  t->files_known = true;
}

// Decodes one table object; never throws.
CatalogTable DecodeTable(const json& j, size_t index) {
  CatalogTable t;
  t.raw = Dump(j);
  auto n = j.is_object() ? j.find("name") : j.end();
  t.name = (j.is_object() && n != j.end() && n->is_string())
               ? n->get<std::string>()
               : "(catalog entry " + std::to_string(index) + ")";
  try {
    if (!j.is_object()) throw std::runtime_error("the entry is not an object");
    if (ValidateTableName(t.name).ok() == false) throw std::runtime_error("bad table name");
    const json& vs = j.at("versions");
    if (!vs.is_array() || vs.empty()) throw std::runtime_error("'versions' is not a list");
    for (const json& v : vs) {
      TableInfo info = InfoFromJson(v);
      if (info.name != t.name) throw std::runtime_error("a version names another table");
      t.versions.push_back(std::move(info));
      t.files.push_back(t.versions.back().file);
    }
    t.files_known = true;
  } catch (const std::exception& e) {
    t.versions.clear();
    SalvageFiles(j, &t);
    t.status = Status::Corruption("this build cannot read the catalog entry of '" + t.name +
                                  "': " + e.what());
  }
  return t;
}

std::string Hex16(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016" PRIx64, v);
  return buf;
}

// Parses "embstore-catalog F generation G" (the first line, without '\n').
Status ParseHeader(std::string_view line, const std::string& path, uint64_t* generation) {
  const std::string_view magic(kMagic);
  if (line.substr(0, magic.size()) != magic) {
    return Status::Corruption("'" + path + "' is not an embstore catalog");
  }
  line.remove_prefix(magic.size());
  uint64_t format = 0;
  auto r = std::from_chars(line.data(), line.data() + line.size(), format);
  if (r.ec != std::errc()) return Status::Corruption("'" + path + "' has a malformed header");
  if (format != static_cast<uint64_t>(kCatalogFormat)) {
    return Status::NotSupported(
        "the catalog '" + path + "' has format " + std::to_string(format) +
        "; this build reads format " + std::to_string(kCatalogFormat) +
        (format > kCatalogFormat ? " (it was written by a newer embstore)" : ""));
  }
  std::string_view rest(r.ptr, static_cast<size_t>(line.data() + line.size() - r.ptr));
  const std::string_view gen_word = " generation ";
  if (rest.substr(0, gen_word.size()) != gen_word)
    return Status::Corruption("'" + path + "' has a malformed header");
  rest.remove_prefix(gen_word.size());
  r = std::from_chars(rest.data(), rest.data() + rest.size(), *generation);
  if (r.ec != std::errc() || r.ptr != rest.data() + rest.size())
    return Status::Corruption("'" + path + "' has a malformed header");
  return Status::OK();
}

}  // namespace

const CatalogTable* Catalog::Find(const std::string& name) const {
  auto it =
      std::lower_bound(tables.begin(), tables.end(), name,
                       [](const CatalogTable& a, const std::string& n) { return a.name < n; });
  return it != tables.end() && it->name == name ? &*it : nullptr;
}

CatalogTable* Catalog::Find(const std::string& name) {
  return const_cast<CatalogTable*>(std::as_const(*this).Find(name));
}

std::set<std::string> Catalog::ReferencedFiles(bool* complete) const {
  std::set<std::string> out;
  *complete = true;
  for (const CatalogTable& t : tables) {
    out.insert(t.files.begin(), t.files.end());
    if (!t.files_known) *complete = false;
  }
  return out;
}

uint64_t Catalog::NextVersion(const std::string& name) const {
  uint64_t last = 0;
  auto it = last_version.find(name);
  if (it != last_version.end()) last = it->second;
  if (const CatalogTable* t = Find(name)) {
    for (const TableInfo& v : t->versions) last = std::max(last, v.version);
  }
  return last + 1;  // 0 when every number has been used
}

void Catalog::Put(CatalogTable t) {
  if (CatalogTable* existing = Find(t.name)) {
    *existing = std::move(t);
    return;
  }
  auto pos =
      std::lower_bound(tables.begin(), tables.end(), t.name,
                       [](const CatalogTable& a, const std::string& n) { return a.name < n; });
  tables.insert(pos, std::move(t));
}

void Catalog::Erase(const std::string& name) {
  tables.erase(std::remove_if(tables.begin(), tables.end(),
                              [&](const CatalogTable& t) { return t.name == name; }),
               tables.end());
}

CatalogTable MakeEntry(std::vector<TableInfo> versions) {
  CatalogTable t;
  t.name = versions.empty() ? "" : versions[0].name;
  for (const TableInfo& v : versions) t.files.push_back(v.file);
  t.versions = std::move(versions);
  return t;
}

std::string SealCatalog(uint64_t generation, std::string_view body, int format) {
  std::string out =
      kMagic + std::to_string(format) + " generation " + std::to_string(generation) + "\n";
  out.append(body);
  out += '\n';
  out += "xxh64 " + Hex16(Checksum64(out.data(), out.size())) + "\n";
  return out;
}

std::string EncodeCatalog(const Catalog& catalog) {
  json tables = json::array();
  for (const CatalogTable& t : catalog.tables) {
    if (!t.status.ok()) {
      tables.push_back(json::parse(t.raw, nullptr, /*allow_exceptions=*/false));
      continue;
    }
    // Per-version raw text of a readable entry, to keep unknown fields.
    json prior = json::parse(t.raw.empty() ? "{}" : t.raw, nullptr, false);
    json entry = prior.is_object() ? prior : json::object();
    std::map<uint64_t, std::string> raw_versions;
    if (auto pv = entry.find("versions"); pv != entry.end() && pv->is_array()) {
      for (const json& v : *pv) {
        if (v.is_object() && v.contains("version") && v["version"].is_number_unsigned())
          raw_versions[v["version"].get<uint64_t>()] = Dump(v);
      }
    }
    json versions = json::array();
    for (const TableInfo& v : t.versions) {
      auto rv = raw_versions.find(v.version);
      versions.push_back(InfoToJson(v, rv == raw_versions.end() ? std::string() : rv->second));
    }
    entry["name"] = t.name;
    entry["versions"] = std::move(versions);
    tables.push_back(std::move(entry));
  }
  json last = json::object();
  for (const auto& [name, v] : catalog.last_version) last[name] = v;
  json body = {{"tables", std::move(tables)}, {"last_version", std::move(last)}};
  return SealCatalog(catalog.generation, Dump(body));
}

Result<Catalog> DecodeCatalog(std::string_view bytes, const std::string& path) {
  const size_t nl1 = bytes.find('\n');
  if (nl1 == std::string_view::npos)
    return Status::Corruption("'" + path + "' is not an embstore catalog");
  Catalog c;
  EMBSTORE_RETURN_IF_ERROR(ParseHeader(bytes.substr(0, nl1), path, &c.generation));
  // The last line is "xxh64 HEX\n" over everything before it.
  if (bytes.size() < nl1 + 2 || bytes.back() != '\n')
    return Status::Corruption("'" + path + "' is truncated");
  const size_t last_start = bytes.rfind('\n', bytes.size() - 2);
  if (last_start == std::string_view::npos || last_start < nl1)
    return Status::Corruption("'" + path + "' is truncated");
  const std::string_view trailer = bytes.substr(last_start + 1, bytes.size() - last_start - 2);
  const std::string want = "xxh64 " + Hex16(Checksum64(bytes.data(), last_start + 1));
  if (trailer != want) {
    return Status::Corruption("'" + path + "' fails its checksum (the catalog is damaged)");
  }
  const std::string_view body = bytes.substr(nl1 + 1, last_start - nl1 - 1);
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("tables") || !j["tables"].is_array() ||
      !j.contains("last_version") || !j["last_version"].is_object()) {
    return Status::Corruption("'" + path + "' has a malformed body");
  }
  for (const auto& [name, v] : j["last_version"].items()) {
    if (!v.is_number_unsigned()) return Status::Corruption("'" + path + "' has a malformed body");
    c.last_version[name] = v.get<uint64_t>();
  }
  size_t index = 0;
  std::set<std::string> names;
  for (const json& t : j["tables"]) {
    CatalogTable entry = DecodeTable(t, index++);
    if (!names.insert(entry.name).second) {
      entry.status = Status::Corruption("the catalog holds table '" + entry.name + "' twice");
      entry.name += " (duplicate " + std::to_string(index) + ")";
    }
    c.tables.push_back(std::move(entry));
  }
  std::stable_sort(c.tables.begin(), c.tables.end(),
                   [](const CatalogTable& a, const CatalogTable& b) { return a.name < b.name; });
  return c;
}

Result<Catalog> ReadCatalog(const std::string& dir) {
  const std::string path = dir + "/" + kCatalogFile;
  EMBSTORE_ASSIGN_OR_RETURN(int fd, OpenForRead(path));
  ScopedFd closer(fd);
  EMBSTORE_ASSIGN_OR_RETURN(uint64_t size, FileSize(fd, path));
  if (size > kMaxCatalogBytes) return Status::Corruption("'" + path + "' is implausibly large");
  std::string bytes(static_cast<size_t>(size), '\0');
  EMBSTORE_RETURN_IF_ERROR(PReadFull(fd, bytes.data(), size, 0, path));
  return DecodeCatalog(bytes, path);
}

Result<uint64_t> ReadCatalogGeneration(const std::string& dir) {
  const std::string path = dir + "/" + kCatalogFile;
  EMBSTORE_ASSIGN_OR_RETURN(int fd, OpenForRead(path));
  ScopedFd closer(fd);
  char buf[128];
  ssize_t n;
  do {
    n = ::pread(fd, buf, sizeof buf, 0);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return ErrnoStatus("cannot read", path, errno);
  const std::string_view head(buf, static_cast<size_t>(n));
  const size_t nl = head.find('\n');
  if (nl == std::string_view::npos) return Status::Corruption("'" + path + "' is truncated");
  uint64_t generation = 0;
  EMBSTORE_RETURN_IF_ERROR(ParseHeader(head.substr(0, nl), path, &generation));
  return generation;
}

Status WriteCatalog(const std::string& dir, const Catalog& catalog, bool* published) {
  *published = false;
  const std::string bytes = EncodeCatalog(catalog);
  const std::string final_path = dir + "/" + kCatalogFile;
  std::string tmp;
  EMBSTORE_ASSIGN_OR_RETURN(const int fd, CreateTempBeside(final_path, &tmp));
  Status st = WriteFull(fd, bytes.data(), bytes.size(), tmp);
  if (st.ok() && ::fsync(fd) != 0) st = ErrnoStatus("cannot fsync", tmp, errno);
  if (::close(fd) != 0 && st.ok()) st = ErrnoStatus("cannot close", tmp, errno);
  if (st.ok() && ::rename(tmp.c_str(), final_path.c_str()) != 0)
    st = ErrnoStatus("cannot rename into place", final_path, errno);
  if (!st.ok()) {
    ::unlink(tmp.c_str());
    return st;
  }
  *published = true;
  return FsyncDir(dir);
}

// ---- Format 1: the RocksDB catalog ---------------------------------------------------
//
// Keys: meta/format = "1"; table/NAME = one version record (JSON, as above);
// vseq/NAME = the last version number handed out, in decimal.

namespace {

constexpr char kLegacyFormatKey[] = "meta/format";

// RocksDB's info log would be a write (and a LOG file) in the store.
class SilentLogger final : public rocksdb::Logger {
 public:
  using rocksdb::Logger::Logv;
  void Logv(const char*, va_list) override {}
};

rocksdb::Options LegacyOptions() {
  rocksdb::Options o;
  o.create_if_missing = false;
  o.info_log = std::make_shared<SilentLogger>();
  o.max_open_files = 16;
  return o;
}

Status FromRocks(const rocksdb::Status& s, const std::string& what) {
  if (s.ok()) return Status::OK();
  if (s.IsNotFound()) return Status::NotFound(what + ": " + s.ToString());
  if (s.IsCorruption()) return Status::Corruption(what + ": " + s.ToString());
  return Status::IOError(what + ": " + s.ToString());
}

}  // namespace

namespace {

// Reads every entry of an open format-1 catalog. `fmt` is its meta/format.
Result<Catalog> ReadLegacyEntries(rocksdb::DB* db, const std::string& rocksdb_dir) {
  Catalog c;
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions()));
  size_t index = 0;
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    const std::string key = it->key().ToString();
    const std::string value = it->value().ToString();
    if (key.rfind("table/", 0) == 0) {
      // Seen as a one-version entry of the format-2 shape.
      json record = json::parse(value, nullptr, /*allow_exceptions=*/false);
      json entry = {{"name", key.substr(6)},
                    {"versions", json::array({record.is_discarded() ? json(value) : record})}};
      c.tables.push_back(DecodeTable(entry, index++));
    } else if (key.rfind("vseq/", 0) == 0) {
      uint64_t v = 0;
      auto r = std::from_chars(value.data(), value.data() + value.size(), v);
      if (r.ec != std::errc() || r.ptr != value.data() + value.size()) {
        return Status::Corruption("catalog key '" + key + "' holds '" + value +
                                  "', not a version number");
      }
      c.last_version[key.substr(5)] = v;
    }
  }
  EMBSTORE_RETURN_IF_ERROR(FromRocks(it->status(), "catalog scan of '" + rocksdb_dir + "'"));
  std::stable_sort(c.tables.begin(), c.tables.end(),
                   [](const CatalogTable& a, const CatalogTable& b) { return a.name < b.name; });
  return c;
}

// meta/format of an open format-1 catalog: "1", or "2" once a writer of this
// build has begun to migrate it (its entries are still all there).
Status CheckLegacyFormat(rocksdb::DB* db, const std::string& rocksdb_dir) {
  std::string fmt;
  rocksdb::Status s = db->Get(rocksdb::ReadOptions(), kLegacyFormatKey, &fmt);
  if (!s.ok() && !s.IsNotFound()) return FromRocks(s, "catalog read");
  if (s.ok() && fmt != "1" && fmt != std::to_string(kCatalogFormat)) {
    return Status::NotSupported("the catalog '" + rocksdb_dir + "' has format " + fmt +
                                "; this build reads formats 1 and " +
                                std::to_string(kCatalogFormat));
  }
  return Status::OK();
}

}  // namespace

Result<Catalog> ReadLegacyCatalog(const std::string& rocksdb_dir) {
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::OpenForReadOnly(LegacyOptions(), rocksdb_dir, &raw);
  EMBSTORE_RETURN_IF_ERROR(FromRocks(s, "cannot read the format-1 catalog '" + rocksdb_dir + "'"));
  std::unique_ptr<rocksdb::DB> db(raw);
  EMBSTORE_RETURN_IF_ERROR(CheckLegacyFormat(db.get(), rocksdb_dir));
  return ReadLegacyEntries(db.get(), rocksdb_dir);
}

Result<Catalog> MigrateLegacyCatalog(const std::string& rocksdb_dir) {
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(LegacyOptions(), rocksdb_dir, &raw);
  if (!s.ok()) {
    if (s.IsIOError() && s.ToString().find("lock") != std::string::npos) {
      return Status::IOError("the format-1 catalog '" + rocksdb_dir +
                             "' is in use by a process of an older embstore build (" +
                             s.ToString() + ")");
    }
    return FromRocks(s, "cannot open the format-1 catalog '" + rocksdb_dir + "'");
  }
  std::unique_ptr<rocksdb::DB> db(raw);
  EMBSTORE_RETURN_IF_ERROR(CheckLegacyFormat(db.get(), rocksdb_dir));
  // Marked first: from here on, builds that read only format 1 refuse the
  // store, so none of them can take files of the new catalog for leftovers.
  rocksdb::WriteOptions wo;
  wo.sync = true;
  EMBSTORE_RETURN_IF_ERROR(
      FromRocks(db->Put(wo, kLegacyFormatKey, std::to_string(kCatalogFormat)), "catalog write"));
  return ReadLegacyEntries(db.get(), rocksdb_dir);
}

}  // namespace embstore::storage
