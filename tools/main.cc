// embstore: the command-line tool. See README.md "CLI reference".
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <cxxopts.hpp>
#include <functional>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "checkpoint/checkpoint_internal.h"
#include "checkpoint/npy.h"
#include "checkpoint/tensor_reader.h"
#include "cuda/cache_policy.h"
#include "cuda/device_probe.h"
#include "cuda/gpu_engine.h"
#include "embstore/checkpoint.h"
#include "embstore/fm.h"
#include "embstore/query.h"
#include "embstore/store.h"
#include "storage/convert.h"
#include "storage/table_file.h"
#include "tools/cli_util.h"
#include "util/memory.h"

namespace embstore::cli {
namespace {

struct Command {
  const char* name;
  const char* summary;
  std::function<int(int, char**)> run;
};

// Prints "embstore <cmd>: <message>" and returns the exit code for `st`.
int Fail(const std::string& cmd, const Status& st) {
  std::fprintf(stderr, "embstore %s: error: %s\n", cmd.c_str(), st.message().c_str());
  return ExitCodeFor(st);
}
int UsageError(const std::string& cmd, const std::string& msg) {
  std::fprintf(stderr, "embstore %s: error: %s (see `embstore %s --help`)\n", cmd.c_str(),
               msg.c_str(), cmd.c_str());
  return kExitUsage;
}

// Parses argv with cxxopts; on --help prints help and sets *exit_code = 0.
// Returns nullopt when the command should stop with *exit_code.
std::optional<cxxopts::ParseResult> Parse(cxxopts::Options& opts, const std::string& cmd, int argc,
                                          char** argv, int* exit_code) {
  opts.add_options()("h,help", "Show this help");
  std::vector<std::string> args(argv, argv + argc);
  args = JoinNegativeValues(args);
  std::vector<char*> ptrs;
  for (std::string& a : args) ptrs.push_back(a.data());
  try {
    auto result = opts.parse(static_cast<int>(ptrs.size()), ptrs.data());
    if (result.count("help")) {
      std::cout << opts.help() << std::endl;
      *exit_code = kExitOk;
      return std::nullopt;
    }
    if (!result.unmatched().empty()) {
      *exit_code = UsageError(cmd, "unexpected argument '" + result.unmatched()[0] + "'");
      return std::nullopt;
    }
    // An option given twice would silently keep its last value; only --tensor
    // is meant to repeat.
    std::map<std::string, int> seen;
    for (const cxxopts::KeyValue& kv : result.arguments()) {
      if (kv.key() != "tensor" && ++seen[kv.key()] == 2) {
        *exit_code = UsageError(cmd, "--" + kv.key() + " is given more than once");
        return std::nullopt;
      }
    }
    return result;
  } catch (const cxxopts::exceptions::exception& e) {
    *exit_code = UsageError(cmd, e.what());
    return std::nullopt;
  }
}

// A boolean flag: --name or --name=true sets it, --name=false leaves it off.
bool Flag(const cxxopts::ParseResult& r, const char* name) {
  return r.count(name) > 0 && r[name].as<bool>();
}

// Requires the string option `name`; returns false (and sets exit) if absent.
bool Require(const cxxopts::ParseResult& r, const std::string& cmd, const char* name,
             std::string* out, int* exit_code) {
  if (!r.count(name)) {
    *exit_code = UsageError(cmd, std::string("--") + name + " is required");
    return false;
  }
  *out = r[name].as<std::string>();
  return true;
}

Result<std::unique_ptr<Store>> OpenStore(const std::string& db, bool create,
                                         const StoreOptions& base = StoreOptions()) {
  StoreOptions o = base;
  o.create_if_missing = create;
  auto store = Store::Open(db, o);
  if (!store.ok() && store.status().code() == Status::Code::kNotFound &&
      store.status().message().rfind("no embstore store", 0) == 0) {
    // The library's message speaks of the library; this is the CLI's advice.
    return Status::NotFound("no embstore store at '" + db +
                            "' (create one with `embstore init --db " + db +
                            "` or by importing a table)");
  }
  return store;
}

// The options of every command that writes a store: how long to wait for
// another process's write, and how many earlier versions to keep.
void AddWriterOptions(cxxopts::Options& opts) {
  opts.add_options()("lock-wait", "Seconds to wait for another process's write to end (default 5)",
                     cxxopts::value<std::string>())(
      "keep-versions", "Earlier versions of each table to keep for rollback (default 1)",
      cxxopts::value<std::string>());
}

// Reads --lock-wait and --keep-versions into `o`; false (and *exit_code) on
// a bad value.
bool WriterOptions(const cxxopts::ParseResult& r, const std::string& cmd, StoreOptions* o,
                   int* exit_code) {
  if (r.count("lock-wait")) {
    auto secs = ParseNumber(r["lock-wait"].as<std::string>(), "--lock-wait");
    if (!secs.ok() || !(*secs >= 0) || *secs > 86400) {
      *exit_code = UsageError(cmd, "--lock-wait must be a number of seconds from 0 to 86400");
      return false;
    }
    o->writer_wait = std::chrono::milliseconds(static_cast<int64_t>(*secs * 1000 + 0.5));
  }
  if (r.count("keep-versions")) {
    auto n = ParseInteger(r["keep-versions"].as<std::string>(), "--keep-versions");
    if (!n.ok() || *n < 0 || *n > 1000000) {
      *exit_code = UsageError(cmd, "--keep-versions must be an integer from 0 to 1000000");
      return false;
    }
    o->retain_versions = static_cast<int>(*n);
  }
  return true;
}

// ---- init ----------------------------------------------------------------------------
int CmdInit(int argc, char** argv) {
  cxxopts::Options opts("embstore init", "Create an empty store in DIR.");
  opts.add_options()("db", "Store directory", cxxopts::value<std::string>());
  AddWriterOptions(opts);
  int ec = 0;
  auto r = Parse(opts, "init", argc, argv, &ec);
  if (!r) return ec;
  std::string db;
  if (!Require(*r, "init", "db", &db, &ec)) return ec;
  StoreOptions so;
  if (!WriterOptions(*r, "init", &so, &ec)) return ec;
  auto store = OpenStore(db, true, so);
  if (!store.ok()) return Fail("init", store.status());
  std::printf("initialized store at %s\n", db.c_str());
  return kExitOk;
}

// Refuses a request whose result cannot fit in memory, before anything is
// allocated: a few bytes of input (2-D indices with 0 columns, a [B, 0]
// batch) can ask for any number of bags, and memory the kernel overcommits
// would end in the OOM killer rather than in an error. `bytes_per_bag`
// covers the output and the plan's bookkeeping.
Status CheckResultFits(int64_t bags, int64_t bytes_per_bag, const std::string& what) {
  int64_t total = 0;
  const bool addressable = bags >= 0 && !__builtin_mul_overflow(bags, bytes_per_bag, &total);
  const uint64_t limit = UsableMemoryBytes();
  if (addressable && static_cast<uint64_t>(total) <= limit) return Status::OK();
  return Status::InvalidArgument("this request asks for " + std::to_string(bags) + " " + what +
                                 ", which would need " +
                                 (addressable ? HumanBytes(static_cast<uint64_t>(total))
                                              : std::string("more bytes than can be addressed")) +
                                 "; this process may use " + HumanBytes(limit));
}

// per_sample_weights must have the shape of the indices (torch's rule).
Status CheckWeightsShape(const FloatArray& weights, const std::vector<int64_t>& indices_shape) {
  if (weights.shape == indices_shape) return Status::OK();
  return Status::InvalidArgument(
      "--weights has shape " + storage::ckpt::ShapeString(weights.shape) +
      " but --indices has shape " + storage::ckpt::ShapeString(indices_shape) +
      " (per-sample weights must have the shape of the indices)");
}

// ---- import ----------------------------------------------------------------------------
int CmdImport(int argc, char** argv) {
  cxxopts::Options opts(
      "embstore import",
      "Import a tensor from a checkpoint (.npy, .npz, .safetensors, .pt) as a table.\n"
      "Several tables from one file: --tensor KEY=TABLE, repeated (then --table is not used).");
  opts.add_options()("db", "Store directory (created if needed)", cxxopts::value<std::string>())(
      "table", "Table name", cxxopts::value<std::string>())("from", "Checkpoint file",
                                                            cxxopts::value<std::string>())(
      "tensor", "Tensor key inside the checkpoint, or KEY=TABLE (repeatable)",
      cxxopts::value<std::vector<std::string>>())(
      "dtype", "Storage dtype: f32, f16, bf16, int8 (default: keep f32/f16/bf16, f64 -> f32)",
      cxxopts::value<std::string>())("replace", "Publish a new version of an existing table");
  AddWriterOptions(opts);
  int ec = 0;
  auto r = Parse(opts, "import", argc, argv, &ec);
  if (!r) return ec;
  std::string db, from;
  if (!Require(*r, "import", "db", &db, &ec) || !Require(*r, "import", "from", &from, &ec))
    return ec;
  StoreOptions so;
  if (!WriterOptions(*r, "import", &so, &ec)) return ec;
  ImportOptions io;
  io.replace = Flag(*r, "replace");
  if (r->count("dtype")) {
    auto dt = ParseDType((*r)["dtype"].as<std::string>());
    if (!dt) return UsageError("import", "--dtype must be one of f32, f16, bf16, int8");
    io.dtype = *dt;
  }
  // (key, table) pairs to import.
  std::vector<std::pair<std::string, std::string>> jobs;
  std::vector<std::string> tensors;
  if (r->count("tensor")) tensors = (*r)["tensor"].as<std::vector<std::string>>();
  const std::string table = r->count("table") ? (*r)["table"].as<std::string>() : "";
  for (const std::string& t : tensors) {
    size_t eq = t.rfind('=');
    // A quoted key ("a=b", as `inspect` prints keys with odd characters) is
    // one key, even when it holds '='.
    if (eq != std::string::npos && !(t.size() >= 2 && t.front() == '"' && t.back() == '"')) {
      auto key = ParseKeyArgument(t.substr(0, eq));
      if (!key.ok()) return Fail("import", key.status());
      jobs.emplace_back(*key, t.substr(eq + 1));
    } else {
      if (table.empty())
        return UsageError("import", "--tensor " + t + " needs --table (or use --tensor KEY=TABLE)");
      auto key = ParseKeyArgument(t);
      if (!key.ok()) return Fail("import", key.status());
      jobs.emplace_back(*key, table);
    }
  }
  if (jobs.empty()) {
    if (table.empty()) return UsageError("import", "--table is required");
    jobs.emplace_back("", table);
  }
  if (jobs.size() > 1) {
    std::map<std::string, int> seen;
    for (const auto& j : jobs) {
      if (++seen[j.second] > 1)
        return UsageError("import", "table '" + j.second + "' is named twice");
    }
  }
  for (const auto& j : jobs) {
    Status st = ValidateTableName(j.second);
    if (!st.ok()) return Fail("import", st);
  }
  auto store = OpenStore(db, true, so);
  if (!store.ok()) return Fail("import", store.status());
  if (jobs.size() > 1) {
    // Several tables: check every tensor (key, dtype, shape, file size) and
    // every name first, so a bad --tensor fails the command before any table
    // is published. (Each table is then published atomically, one by one.)
    for (const auto& [key, name] : jobs) {
      auto reader = storage::OpenTensor(from, key);
      if (!reader.ok()) return Fail("import", reader.status());
      if (!io.replace) {
        auto existing = (*store)->GetInfo(name);
        if (existing.ok()) {
          return Fail("import",
                      Status::AlreadyExists("table '" + name + "' exists (version " +
                                            std::to_string(existing->version) +
                                            "); pass --replace to publish a new version"));
        }
      }
    }
  }
  for (const auto& [key, name] : jobs) {
    ProgressBar bar("importing " + name);
    ImportOptions o = io;
    o.tensor_key = key;
    o.progress = [&bar](int64_t done, int64_t total) { bar.Update(done, total); };
    auto info = (*store)->ImportFile(name, from, o);
    if (!info.ok()) return Fail("import", info.status());
    std::printf("imported %s: %" PRId64 " x %" PRId64 " %s, version %" PRIu64 ", %s\n",
                name.c_str(), info->rows, info->dim, DTypeName(info->dtype), info->version,
                HumanBytes(info->file_bytes).c_str());
  }
  return kExitOk;
}

// ---- list / info ------------------------------------------------------------------------
int CmdList(int argc, char** argv) {
  cxxopts::Options opts(
      "embstore list",
      "List tables: name rows dim dtype version bytes. An entry this build cannot read is\n"
      "listed as: name UNREADABLE why.");
  opts.add_options()("db", "Store directory", cxxopts::value<std::string>())(
      "versions", "Also list retained versions (a last column says current or retained)");
  int ec = 0;
  auto r = Parse(opts, "list", argc, argv, &ec);
  if (!r) return ec;
  std::string db;
  if (!Require(*r, "list", "db", &db, &ec)) return ec;
  const bool versions = Flag(*r, "versions");
  auto store = OpenStore(db, false);
  if (!store.ok()) return Fail("list", store.status());
  auto entries = (*store)->ListEntries();
  if (!entries.ok()) return Fail("list", entries.status());
  for (const TableEntry& e : *entries) {
    if (!e.status.ok()) {
      std::printf("%s\tUNREADABLE\t%s\n", e.name.c_str(), e.status.message().c_str());
      continue;
    }
    for (size_t i = 0; i < (versions ? e.versions.size() : 1); ++i) {
      const TableInfo& t = e.versions[i];
      std::printf("%s\t%" PRId64 "\t%" PRId64 "\t%s\tv%" PRIu64 "\t%" PRIu64 "%s\n", t.name.c_str(),
                  t.rows, t.dim, DTypeName(t.dtype), t.version, t.file_bytes,
                  versions ? (i == 0 ? "\tcurrent" : "\tretained") : "");
    }
  }
  return kExitOk;
}

int CmdInfo(int argc, char** argv) {
  cxxopts::Options opts("embstore info", "Show a table's metadata.");
  opts.add_options()("db", "Store directory", cxxopts::value<std::string>())(
      "table", "Table name", cxxopts::value<std::string>());
  int ec = 0;
  auto r = Parse(opts, "info", argc, argv, &ec);
  if (!r) return ec;
  std::string db, table;
  if (!Require(*r, "info", "db", &db, &ec) || !Require(*r, "info", "table", &table, &ec)) return ec;
  auto store = OpenStore(db, false);
  if (!store.ok()) return Fail("info", store.status());
  auto entries = (*store)->ListEntries();
  if (!entries.ok()) return Fail("info", entries.status());
  auto t = (*store)->GetInfo(table);
  if (!t.ok()) return Fail("info", t.status());
  std::printf("name:          %s\n", t->name.c_str());
  std::printf("rows:          %" PRId64 "\n", t->rows);
  std::printf("dim:           %" PRId64 "\n", t->dim);
  std::printf("dtype:         %s\n", DTypeName(t->dtype));
  std::printf("bytes_per_row: %zu (stored stride %" PRIu64 ")\n", RowPayloadBytes(t->dtype, t->dim),
              t->row_stride);
  std::printf("version:       %" PRIu64 "\n", t->version);
  std::printf("bytes:         %" PRIu64 " (%s)\n", t->file_bytes,
              HumanBytes(t->file_bytes).c_str());
  std::printf("checksum:      xxh64:%016" PRIx64 "\n", t->checksum);
  std::printf("source:        %s\n", t->source.c_str());
  std::printf("file:          %s\n", t->file.c_str());
  for (const TableEntry& e : *entries) {
    if (e.name != table) continue;
    if (e.versions.size() < 2) std::printf("retained:      none\n");
    for (size_t i = 1; i < e.versions.size(); ++i) {
      const TableInfo& v = e.versions[i];
      std::printf("retained:      v%" PRIu64 " %" PRId64 " x %" PRId64 " %s, xxh64:%016" PRIx64
                  ", %s, %s\n",
                  v.version, v.rows, v.dim, DTypeName(v.dtype), v.checksum, v.file.c_str(),
                  v.source.c_str());
    }
  }
  return kExitOk;
}

// ---- export ------------------------------------------------------------------------------
int CmdExport(int argc, char** argv) {
  cxxopts::Options opts(
      "embstore export",
      "Write a table to a .npy file: f32 as <f4, f16 as <f2, bf16 and int8 dequantized to <f4.");
  opts.add_options()("db", "Store directory", cxxopts::value<std::string>())(
      "table", "Table name", cxxopts::value<std::string>())("out", "Output .npy path",
                                                            cxxopts::value<std::string>());
  int ec = 0;
  auto r = Parse(opts, "export", argc, argv, &ec);
  if (!r) return ec;
  std::string db, table, out;
  if (!Require(*r, "export", "db", &db, &ec) || !Require(*r, "export", "table", &table, &ec) ||
      !Require(*r, "export", "out", &out, &ec)) {
    return ec;
  }
  if (Status st = CheckOutputOutsideStore(db, out); !st.ok()) return Fail("export", st);
  auto store = OpenStore(db, false);
  if (!store.ok()) return Fail("export", store.status());
  auto snap = (*store)->GetSnapshot(table);
  if (!snap.ok()) return Fail("export", snap.status());
  const TableView v = snap->view();
  const bool raw_f16 = v.dtype == DType::kF16;
  const size_t out_item = raw_f16 ? 2 : 4;
  std::vector<int64_t> shape = {v.rows, v.dim};
  storage::NpyWriter w;
  Status st = w.Open(out, raw_f16 ? "<f2" : "<f4", shape);
  if (!st.ok()) return Fail("export", st);
  const int64_t chunk = std::max<int64_t>(1, (int64_t{8} << 20) / (v.dim * 4));
  std::vector<uint8_t> buf;
  ProgressBar bar("exporting " + table);
  for (int64_t first = 0; first < v.rows; first += chunk) {
    const int64_t n = std::min(chunk, v.rows - first);
    buf.resize(static_cast<size_t>(n * v.dim) * out_item);
    for (int64_t i = 0; i < n; ++i) {
      uint8_t* dst = buf.data() + static_cast<size_t>(i * v.dim) * out_item;
      if (raw_f16 || v.dtype == DType::kF32) {
        std::memcpy(dst, v.Row(first + i), static_cast<size_t>(v.dim) * out_item);
      } else {
        storage::DecodeRow(v.Row(first + i), v.dim, v.dtype, reinterpret_cast<float*>(dst));
      }
    }
    st = w.Append(buf);
    if (!st.ok()) return Fail("export", st);
    bar.Update(first + n, v.rows);
  }
  st = w.Commit();
  if (!st.ok()) return Fail("export", st);
  std::printf("exported %s (%" PRId64 " x %" PRId64 ", %s) to %s\n", table.c_str(), v.rows, v.dim,
              raw_f16 ? "<f2" : "<f4", out.c_str());
  return kExitOk;
}

// ---- drop / verify ------------------------------------------------------------------------
int CmdDrop(int argc, char** argv) {
  cxxopts::Options opts("embstore drop",
                        "Remove a table and its retained versions, and reclaim their files.");
  opts.add_options()("db", "Store directory", cxxopts::value<std::string>())(
      "table", "Table name", cxxopts::value<std::string>());
  AddWriterOptions(opts);
  int ec = 0;
  auto r = Parse(opts, "drop", argc, argv, &ec);
  if (!r) return ec;
  std::string db, table;
  if (!Require(*r, "drop", "db", &db, &ec) || !Require(*r, "drop", "table", &table, &ec)) return ec;
  StoreOptions so;
  if (!WriterOptions(*r, "drop", &so, &ec)) return ec;
  auto store = OpenStore(db, false, so);
  if (!store.ok()) return Fail("drop", store.status());
  Status st = (*store)->DropTable(table);
  if (!st.ok()) return Fail("drop", st);
  std::printf("dropped %s\n", table.c_str());
  return kExitOk;
}

int CmdVerify(int argc, char** argv) {
  cxxopts::Options opts("embstore verify",
                        "Recompute checksums; exit 2 naming each corrupt table.");
  opts.add_options()("db", "Store directory", cxxopts::value<std::string>())(
      "table", "Only this table", cxxopts::value<std::string>());
  int ec = 0;
  auto r = Parse(opts, "verify", argc, argv, &ec);
  if (!r) return ec;
  std::string db;
  if (!Require(*r, "verify", "db", &db, &ec)) return ec;
  auto store = OpenStore(db, false);
  if (!store.ok()) return Fail("verify", store.status());
  std::vector<std::string> names;
  auto entries = (*store)->ListEntries();
  if (!entries.ok()) return Fail("verify", entries.status());
  if (r->count("table")) {
    names.push_back((*r)["table"].as<std::string>());
    const Status valid = ValidateTableName(names[0]);
    if (!valid.ok()) return Fail("verify", valid);
    bool known = false;
    for (const TableEntry& e : *entries) known |= e.name == names[0];
    if (!known) return Fail("verify", Status::NotFound("unknown table '" + names[0] + "'"));
  } else {
    for (const TableEntry& e : *entries) names.push_back(e.name);
  }
  int bad = 0;
  for (const std::string& n : names) {
    Status st = (*store)->VerifyTable(n);
    if (st.ok()) {
      std::printf("ok\t%s\n", n.c_str());
    } else {
      ++bad;
      std::printf("CORRUPT\t%s\t%s\n", n.c_str(), st.message().c_str());
      std::fprintf(stderr, "embstore verify: table '%s' is corrupt: %s\n", n.c_str(),
                   st.message().c_str());
    }
  }
  return bad ? kExitIO : kExitOk;
}

// ---- inspect ------------------------------------------------------------------------------
int CmdInspect(int argc, char** argv) {
  cxxopts::Options opts("embstore inspect", "List the tensors of a checkpoint: key, dtype, shape.");
  opts.add_options()("file", "Checkpoint file", cxxopts::value<std::string>());
  opts.parse_positional({"file"});
  opts.positional_help("FILE");
  int ec = 0;
  auto r = Parse(opts, "inspect", argc, argv, &ec);
  if (!r) return ec;
  if (!r->count("file"))
    return UsageError("inspect", "a checkpoint FILE is required (embstore inspect FILE)");
  const std::string file = (*r)["file"].as<std::string>();
  auto entries = InspectCheckpoint(file);
  if (!entries.ok()) return Fail("inspect", entries.status());
  for (const TensorEntry& e : *entries) {
    std::string shape = "[";
    for (size_t i = 0; i < e.shape.size(); ++i)
      shape += (i ? ", " : "") + std::to_string(e.shape[i]);
    shape += "]";
    // A lone .npy array has no key; any other key is shown unambiguously.
    const bool lone_array = e.key.empty() && entries->size() == 1;
    std::printf("%s\t%s\t%s\n", lone_array ? "(array)" : DisplayKey(e.key).c_str(), e.dtype.c_str(),
                shape.c_str());
  }
  return kExitOk;
}

// ---- query ---------------------------------------------------------------------------------
// The pooled result of `query`: the engine's own output (GPU, batched) or,
// for the CPU with offsets / 2-D indices, a PageBuffer the engine pooled into
// directly (no zeroing pass, huge pages: see PageBuffer).
struct QueryOutput {
  std::vector<int64_t> shape;
  PooledOutput owned;
  PageBuffer buffer;
  std::span<const float> values() const {
    if (buffer.empty()) return owned.values;
    return {reinterpret_cast<const float*>(buffer.data()), buffer.size() / sizeof(float)};
  }
};

void PrintRows(const QueryOutput& out) {
  const std::span<const float> values = out.values();
  const int64_t dim = out.shape.back();
  const int64_t rows = dim == 0 ? 0 : static_cast<int64_t>(values.size()) / dim;
  std::string line;
  char buf[32];
  for (int64_t b = 0; b < rows; ++b) {
    line.clear();
    for (int64_t j = 0; j < dim; ++j) {
      std::snprintf(buf, sizeof buf, "%.8g",
                    static_cast<double>(values[static_cast<size_t>(b * dim + j)]));
      if (j) line += ' ';
      line += buf;
    }
    line += '\n';
    if (std::fputs(line.c_str(), stdout) == EOF) return;  // main() reports the error
  }
}

int CmdQuery(int argc, char** argv) {
  cxxopts::Options opts("embstore query",
                        "Pool bags of embeddings (torch.nn.functional.embedding_bag semantics).\n"
                        "SPEC is an inline list (1,2,3) or @file.npy (1-D or 2-D; int32/int64 ids, "
                        "float32 weights).");
  opts.add_options()("db", "Store directory", cxxopts::value<std::string>())(
      "table", "Table name", cxxopts::value<std::string>())(
      "indices", "Row ids: SPEC (2-D [B,N] = B bags of N)", cxxopts::value<std::string>())(
      "offsets", "Start of each bag in 1-D indices: SPEC", cxxopts::value<std::string>())(
      "weights", "Per-sample weights, same shape as indices: SPEC", cxxopts::value<std::string>())(
      "bag-ends", "Batched bags: inclusive end offsets [B,K] over [B,N] indices: SPEC",
      cxxopts::value<std::string>())("mode", "sum | mean | max (default mean, as torch)",
                                     cxxopts::value<std::string>()->default_value("mean"))(
      "padding-idx", "Skip entries equal to this id (negative counts from the end)",
      cxxopts::value<std::string>())(
      "max-norm", "Use rows with norm > X scaled to norm X (the store is not modified)",
      cxxopts::value<std::string>())("norm-type",
                                     "p of the p-norm for --max-norm (default 2; inf allowed)",
                                     cxxopts::value<std::string>()->default_value("2"))(
      "include-last-offset", "offsets has B+1 entries; the last ends bag B-1")(
      "threads", "Worker threads (0 = all cores)", cxxopts::value<int>()->default_value("0"))(
      "device", "cpu | cuda (pool on the GPU through a row cache)",
      cxxopts::value<std::string>()->default_value("cpu"))(
      "cache-rows", "GPU row cache capacity in rows (default: 1 GiB of device memory)",
      cxxopts::value<int64_t>())("cache-mb", "GPU row cache capacity in MiB",
                                 cxxopts::value<int64_t>())(
      "cache-policy", "GPU cache eviction: lru | lfu",
      cxxopts::value<std::string>()->default_value("lru"))("stats",
                                                           "Print GPU cache statistics to stderr")(
      "out", "Write the [B, dim] float32 result to this .npy instead of printing",
      cxxopts::value<std::string>());
  int ec = 0;
  auto r = Parse(opts, "query", argc, argv, &ec);
  if (!r) return ec;
  const std::string cmd = "query";
  std::string db, table, indices_spec;
  if (!Require(*r, cmd, "db", &db, &ec) || !Require(*r, cmd, "table", &table, &ec) ||
      !Require(*r, cmd, "indices", &indices_spec, &ec)) {
    return ec;
  }
  QueryOptions qo;
  auto mode = ParsePoolingMode((*r)["mode"].as<std::string>());
  if (!mode)
    return UsageError(
        cmd, "--mode must be sum, mean or max (got '" + (*r)["mode"].as<std::string>() + "')");
  qo.mode = *mode;
  if (r->count("padding-idx")) {
    auto p = ParseInteger((*r)["padding-idx"].as<std::string>(), "--padding-idx");
    if (!p.ok()) return Fail(cmd, p.status());
    qo.padding_idx = *p;
  }
  if (r->count("max-norm")) {
    auto m = ParseNumber((*r)["max-norm"].as<std::string>(), "--max-norm");
    if (!m.ok()) return Fail(cmd, m.status());
    qo.max_norm = *m;
  }
  {
    auto p = ParseNumber((*r)["norm-type"].as<std::string>(), "--norm-type");
    if (!p.ok()) return Fail(cmd, p.status());
    qo.norm_type = *p;
  }
  qo.include_last_offset = Flag(*r, "include-last-offset");
  qo.max_threads = (*r)["threads"].as<int>();
  if (qo.max_threads < 0) return UsageError(cmd, "--threads must be >= 0");
  const std::string device = (*r)["device"].as<std::string>();
  if (device != "cpu" && device != "cuda") return UsageError(cmd, "--device must be cpu or cuda");
  const bool on_gpu = device == "cuda";
  cuda::GpuEngineOptions gpu_options;
  const bool stats = Flag(*r, "stats");
  if (!on_gpu && (r->count("cache-rows") || r->count("cache-mb") || stats)) {
    return UsageError(cmd, "--cache-rows, --cache-mb and --stats need --device cuda");
  }
  if (r->count("cache-rows") && r->count("cache-mb"))
    return UsageError(cmd, "give --cache-rows or --cache-mb, not both");
  if (r->count("cache-rows")) {
    gpu_options.cache_rows = (*r)["cache-rows"].as<int64_t>();
    if (gpu_options.cache_rows <= 0) return UsageError(cmd, "--cache-rows must be >= 1");
  }
  if (r->count("cache-mb")) {
    const int64_t mb = (*r)["cache-mb"].as<int64_t>();
    if (mb <= 0 || mb > (int64_t{1} << 30))
      return UsageError(cmd, "--cache-mb must be between 1 and 1073741824 (1 PiB)");
    gpu_options.cache_bytes = mb << 20;
  }
  {
    auto policy = cuda::ParseCachePolicy((*r)["cache-policy"].as<std::string>());
    if (!policy) return UsageError(cmd, "--cache-policy must be lru or lfu");
    gpu_options.policy = *policy;
  }
  std::unique_ptr<cuda::GpuEngine> gpu;
  if (on_gpu) {
    auto g = cuda::GpuEngine::Create(gpu_options);
    if (!g.ok()) return Fail(cmd, g.status());
    gpu = std::move(g).value();
  }

  auto indices = ParseIntSpec(indices_spec, "--indices");
  if (!indices.ok()) return Fail(cmd, indices.status());
  std::optional<FloatArray> weights;
  if (r->count("weights")) {
    auto w = ParseFloatSpec((*r)["weights"].as<std::string>(), "--weights");
    if (!w.ok()) return Fail(cmd, w.status());
    weights = std::move(w).value();
  }

  // Open the store only after the inputs parse: a typo costs nothing.
  if (r->count("out")) {
    const Status st = CheckOutputOutsideStore(db, (*r)["out"].as<std::string>());
    if (!st.ok()) return Fail(cmd, st);
  }
  auto store = OpenStore(db, false);
  if (!store.ok()) return Fail(cmd, store.status());
  auto snap = (*store)->GetSnapshot(table);
  if (!snap.ok()) return Fail(cmd, snap.status());
  const TableView view = snap->view();

  QueryOutput out;
  if (r->count("bag-ends")) {
    if (r->count("offsets")) return UsageError(cmd, "--bag-ends and --offsets cannot be combined");
    if (qo.include_last_offset)
      return UsageError(cmd, "--include-last-offset does not apply to --bag-ends");
    auto ends = ParseIntSpec((*r)["bag-ends"].as<std::string>(), "--bag-ends");
    if (!ends.ok()) return Fail(cmd, ends.status());
    // Inline lists are one sample: [1, N] indices and [1, K] ends.
    const auto& is = indices->shape;
    const auto& es = ends->shape;
    BatchedBagRequest req;
    req.batch = is.size() == 2 ? is[0] : 1;
    req.items = is.size() == 2 ? is[1] : is[0];
    const int64_t ends_batch = es.size() == 2 ? es[0] : 1;
    req.bags_per_sample = es.size() == 2 ? es[1] : es[0];
    if (ends_batch != req.batch) {
      return Fail(
          cmd, Status::InvalidArgument("--bag-ends has " + std::to_string(ends_batch) +
                                       " samples but --indices has " + std::to_string(req.batch)));
    }
    req.indices = indices->view();
    req.ends = ends->view();
    if (weights) {
      const Status ws = CheckWeightsShape(*weights, indices->shape);
      if (!ws.ok()) return Fail(cmd, ws);
      req.weights = weights->values();
    }
    int64_t bag_count = 0;
    if (__builtin_mul_overflow(req.batch, req.bags_per_sample, &bag_count)) bag_count = -1;
    const Status fits = CheckResultFits(bag_count, view.dim * 4 + 32, "bags");
    if (!fits.ok()) return Fail(cmd, fits);
    Result<PooledOutput> pooled =
        gpu ? gpu->BatchedEmbeddingBag(view, req, qo) : BatchedEmbeddingBag(view, req, qo);
    if (!pooled.ok()) return Fail(cmd, pooled.status());
    out.owned = std::move(pooled).value();
    out.shape = out.owned.shape;
  } else {
    BagRequest req;
    req.indices = indices->view();
    req.indices_shape = indices->shape;
    std::optional<IntArray> offsets;
    if (r->count("offsets")) {
      auto o = ParseIntSpec((*r)["offsets"].as<std::string>(), "--offsets");
      if (!o.ok()) return Fail(cmd, o.status());
      if (o->shape.size() != 1) {
        return Fail(cmd, Status::InvalidArgument("--offsets must be 1-D"));
      }
      offsets = std::move(o).value();
      req.offsets = offsets->view();
    }
    if (weights) {
      const Status ws = CheckWeightsShape(*weights, indices->shape);
      if (!ws.ok()) return Fail(cmd, ws);
      req.weights = weights->values();
    }
    // The number of bags the plan will hold (1-D: one per offset; 2-D: one
    // per row), checked against memory before anything is planned.
    int64_t bag_count = indices->shape.size() == 2 ? indices->shape[0]
                        : offsets                  ? offsets->shape[0]
                                                   : 0;
    if (qo.include_last_offset && bag_count > 0) --bag_count;
    const Status fits = CheckResultFits(bag_count, view.dim * 4 + 32, "bags");
    if (!fits.ok()) return Fail(cmd, fits);
    if (gpu) {
      Result<PooledOutput> pooled = gpu->EmbeddingBag(view, req, qo);
      if (!pooled.ok()) return Fail(cmd, pooled.status());
      out.owned = std::move(pooled).value();
      out.shape = out.owned.shape;
    } else {
      // Validate first (CountBags), then pool straight into the output buffer.
      Result<int64_t> bags = CountBags(view, req, qo);
      if (!bags.ok()) return Fail(cmd, bags.status());
      const int64_t dim = view.dim;
      auto buffer = PageBuffer::Allocate(static_cast<size_t>(*bags) * static_cast<size_t>(dim) *
                                         sizeof(float));
      if (!buffer.ok()) return Fail(cmd, buffer.status());
      out.buffer = std::move(buffer).value();
      std::span<float> dest(reinterpret_cast<float*>(out.buffer.data()),  // NOLINT
                            out.buffer.size() / sizeof(float));
      const Status st = EmbeddingBag(view, req, qo, dest);
      if (!st.ok()) return Fail(cmd, st);
      out.shape = {*bags, dim};
    }
  }
  if (gpu && stats) {
    std::fprintf(stderr, "gpu cache: %s\n", cuda::CacheStatsToString(gpu->stats()).c_str());
  }
  if (r->count("out")) {
    const std::string path = (*r)["out"].as<std::string>();
    const std::span<const float> values = out.values();
    Status st = storage::WriteNpy(
        path, "<f4", out.shape,
        {reinterpret_cast<const uint8_t*>(values.data()), values.size() * sizeof(float)});
    if (!st.ok()) return Fail(cmd, st);
  } else {
    PrintRows(out);
  }
  return kExitOk;
}

// ---- renorm ---------------------------------------------------------------------------------
int CmdRenorm(int argc, char** argv) {
  cxxopts::Options opts(
      "embstore renorm",
      "Write a new version in which every row with norm > max_norm is scaled to max_norm\n"
      "(the weight torch reaches after every row has been looked up with max_norm).");
  opts.add_options()("db", "Store directory", cxxopts::value<std::string>())(
      "table", "Table name", cxxopts::value<std::string>())("max-norm", "X > 0",
                                                            cxxopts::value<std::string>())(
      "norm-type", "p of the p-norm (default 2; 0, inf and -inf as torch)",
      cxxopts::value<std::string>()->default_value("2"));
  AddWriterOptions(opts);
  int ec = 0;
  auto r = Parse(opts, "renorm", argc, argv, &ec);
  if (!r) return ec;
  const std::string cmd = "renorm";
  StoreOptions so;
  if (!WriterOptions(*r, cmd, &so, &ec)) return ec;
  std::string db, table, max_norm_text;
  if (!Require(*r, cmd, "db", &db, &ec) || !Require(*r, cmd, "table", &table, &ec) ||
      !Require(*r, cmd, "max-norm", &max_norm_text, &ec)) {
    return ec;
  }
  auto max_norm = ParseNumber(max_norm_text, "--max-norm");
  if (!max_norm.ok()) return Fail(cmd, max_norm.status());
  auto p = ParseNumber((*r)["norm-type"].as<std::string>(), "--norm-type");
  if (!p.ok()) return Fail(cmd, p.status());
  if (!(*max_norm > 0) || std::isinf(*max_norm)) {
    return Fail(cmd, Status::InvalidArgument("--max-norm must be a finite number > 0"));
  }
  if (std::isnan(*p) || (*p < 0 && !std::isinf(*p))) {
    return Fail(cmd,
                Status::InvalidArgument("--norm-type must be >= 0, inf or -inf (as torch's norm)"));
  }
  auto store = OpenStore(db, false, so);
  if (!store.ok()) return Fail(cmd, store.status());
  auto snap = (*store)->GetSnapshot(table);
  if (!snap.ok()) return Fail(cmd, snap.status());
  const TableView v = snap->view();
  const double mn = *max_norm, pt = *p;
  int64_t scaled = 0;
  ProgressBar bar("renorm " + table);
  TableSpec spec;
  spec.rows = v.rows;
  spec.dim = v.dim;
  spec.dtype = v.dtype;
  spec.replace = true;
  spec.source = "renorm of " + table + " v" + std::to_string(snap->info().version) +
                " (max_norm=" + max_norm_text +
                ", norm_type=" + (*r)["norm-type"].as<std::string>() + ") from " +
                snap->info().source;
  spec.progress = [&bar](int64_t d, int64_t t) { bar.Update(d, t); };
  // Renormalized from this snapshot's version: refused if another process
  // publishes a version first, rather than replacing it unseen.
  spec.expected_version = snap->info().version;
  auto info = (*store)->WriteTable(table, spec, [&](int64_t first, int64_t count, float* out) {
    for (int64_t i = 0; i < count; ++i) {
      float* row = out + i * v.dim;
      storage::DecodeRow(v.Row(first + i), v.dim, v.dtype, row);
      const double norm = RowNorm({row, static_cast<size_t>(v.dim)}, pt);
      if (norm > mn) {
        const float scale = static_cast<float>(mn / (norm + 1e-7));
        for (int64_t j = 0; j < v.dim; ++j) row[j] *= scale;
        ++scaled;
      }
    }
    return Status::OK();
  });
  if (!info.ok()) return Fail(cmd, info.status());
  std::printf("renormalized %s: %" PRId64 " of %" PRId64 " rows scaled, version %" PRIu64 "\n",
              table.c_str(), scaled, v.rows, info->version);
  return kExitOk;
}

// ---- score (FM / FFM) -------------------------------------------------------------------------
int CmdRollback(int argc, char** argv) {
  cxxopts::Options opts(
      "embstore rollback",
      "Publish a retained version of a table again, atomically, as a new version number\n"
      "(default: the newest retained version; see `embstore info` or `list --versions`).");
  opts.add_options()("db", "Store directory", cxxopts::value<std::string>())(
      "table", "Table name", cxxopts::value<std::string>())(
      "to-version", "The retained version to publish again", cxxopts::value<std::string>());
  AddWriterOptions(opts);
  int ec = 0;
  const std::string cmd = "rollback";
  auto r = Parse(opts, cmd, argc, argv, &ec);
  if (!r) return ec;
  std::string db, table;
  if (!Require(*r, cmd, "db", &db, &ec) || !Require(*r, cmd, "table", &table, &ec)) return ec;
  StoreOptions so;
  if (!WriterOptions(*r, cmd, &so, &ec)) return ec;
  std::optional<uint64_t> to;
  if (r->count("to-version")) {
    auto v = ParseInteger((*r)["to-version"].as<std::string>(), "--to-version");
    if (!v.ok() || *v < 1) return UsageError(cmd, "--to-version must be a version number >= 1");
    to = static_cast<uint64_t>(*v);
  }
  auto store = OpenStore(db, false, so);
  if (!store.ok()) return Fail(cmd, store.status());
  auto info = (*store)->Rollback(table, to);
  if (!info.ok()) return Fail(cmd, info.status());
  std::printf("rolled back %s: version %" PRIu64 " (%s)\n", table.c_str(), info->version,
              info->source.c_str());
  return kExitOk;
}

int CmdScore(int argc, char** argv) {
  cxxopts::Options opts(
      "embstore score",
      "Factorization-machine scores over batched bags: y[b] for each sample.\n"
      "Bags: --indices/--weights [B,N], --bag-ends [B,K] (inclusive end offsets).");
  opts.add_options()("db", "Store directory", cxxopts::value<std::string>())(
      "model", "fm | ffm", cxxopts::value<std::string>())(
      "vectors", "Vectors table [rows, D] (FFM: D = F * k)", cxxopts::value<std::string>())(
      "biases", "Biases table [rows, 1]", cxxopts::value<std::string>())(
      "bias", "Global bias (default 0)", cxxopts::value<std::string>())(
      "bias-from",
      "Read the global bias from a checkpoint scalar: FILE[:KEY] (KEY defaults to 'bias')",
      cxxopts::value<std::string>())(
      "fields", "FFM: field of each bag [B,K]: SPEC (default: bag m is field m)",
      cxxopts::value<std::string>())("num-fields", "FFM: number of fields F (default K)",
                                     cxxopts::value<int64_t>())("indices", "Row ids [B,N]: SPEC",
                                                                cxxopts::value<std::string>())(
      "weights", "Weights [B,N]: SPEC (default all 1)", cxxopts::value<std::string>())(
      "bag-ends", "Inclusive bag ends [B,K]: SPEC", cxxopts::value<std::string>())(
      "padding-idx", "Skip items equal to this id", cxxopts::value<std::string>())(
      "threads", "Worker threads (0 = all cores)", cxxopts::value<int>()->default_value("0"))(
      "out", "Write the [B] float32 scores to this .npy instead of printing",
      cxxopts::value<std::string>());
  int ec = 0;
  auto r = Parse(opts, "score", argc, argv, &ec);
  if (!r) return ec;
  const std::string cmd = "score";
  std::string db, model_name, vectors_name, biases_name, indices_spec, ends_spec;
  if (!Require(*r, cmd, "db", &db, &ec) || !Require(*r, cmd, "model", &model_name, &ec) ||
      !Require(*r, cmd, "vectors", &vectors_name, &ec) ||
      !Require(*r, cmd, "biases", &biases_name, &ec) ||
      !Require(*r, cmd, "indices", &indices_spec, &ec) ||
      !Require(*r, cmd, "bag-ends", &ends_spec, &ec)) {
    return ec;
  }
  FmModel model;
  if (model_name == "fm") {
    model = FmModel::kFm;
  } else if (model_name == "ffm") {
    model = FmModel::kFfm;
  } else {
    return UsageError(cmd, "--model must be fm or ffm (got '" + model_name + "')");
  }
  FmRequest req;
  if (r->count("bias") && r->count("bias-from"))
    return UsageError(cmd, "give --bias or --bias-from, not both");
  if (r->count("bias")) {
    auto b = ParseNumber((*r)["bias"].as<std::string>(), "--bias");
    if (!b.ok()) return Fail(cmd, b.status());
    req.bias = *b;
  }
  if (r->count("bias-from")) {
    std::string spec = (*r)["bias-from"].as<std::string>();
    std::string file = spec, key = "bias";
    const size_t colon = spec.rfind(':');
    if (colon != std::string::npos && colon > 0) {
      file = spec.substr(0, colon);
      key = spec.substr(colon + 1);
    }
    auto b = ReadCheckpointScalar(file, key);
    if (!b.ok()) return Fail(cmd, b.status());
    req.bias = *b;
  }
  QueryOptions qo;
  qo.mode = PoolingMode::kSum;
  qo.max_threads = (*r)["threads"].as<int>();
  if (r->count("padding-idx")) {
    auto p = ParseInteger((*r)["padding-idx"].as<std::string>(), "--padding-idx");
    if (!p.ok()) return Fail(cmd, p.status());
    qo.padding_idx = *p;
  }
  auto indices = ParseIntSpec(indices_spec, "--indices");
  if (!indices.ok()) return Fail(cmd, indices.status());
  auto ends = ParseIntSpec(ends_spec, "--bag-ends");
  if (!ends.ok()) return Fail(cmd, ends.status());
  std::optional<FloatArray> weights;
  if (r->count("weights")) {
    auto w = ParseFloatSpec((*r)["weights"].as<std::string>(), "--weights");
    if (!w.ok()) return Fail(cmd, w.status());
    weights = std::move(w).value();
  }
  std::optional<IntArray> fields;
  if (r->count("fields")) {
    if (model != FmModel::kFfm) return UsageError(cmd, "--fields applies only to --model ffm");
    auto f = ParseIntSpec((*r)["fields"].as<std::string>(), "--fields");
    if (!f.ok()) return Fail(cmd, f.status());
    fields = std::move(f).value();
  }
  if (r->count("num-fields")) {
    if (model != FmModel::kFfm) return UsageError(cmd, "--num-fields applies only to --model ffm");
    req.num_fields = (*r)["num-fields"].as<int64_t>();
    if (req.num_fields <= 0) return UsageError(cmd, "--num-fields must be >= 1");
  }
  const auto& is = indices->shape;
  const auto& es = ends->shape;
  BatchedBagRequest& bags = req.bags;
  bags.batch = is.size() == 2 ? is[0] : 1;
  bags.items = is.size() == 2 ? is[1] : is[0];
  const int64_t ends_batch = es.size() == 2 ? es[0] : 1;
  bags.bags_per_sample = es.size() == 2 ? es[1] : es[0];
  if (ends_batch != bags.batch) {
    return Fail(
        cmd, Status::InvalidArgument("--bag-ends has " + std::to_string(ends_batch) +
                                     " samples but --indices has " + std::to_string(bags.batch)));
  }
  if (fields) {
    const auto& fs = fields->shape;
    const int64_t fb = fs.size() == 2 ? fs[0] : 1, fk = fs.size() == 2 ? fs[1] : fs[0];
    if (fb != bags.batch || fk != bags.bags_per_sample) {
      return Fail(
          cmd, Status::InvalidArgument(
                   "--fields has shape [" + std::to_string(fb) + ", " + std::to_string(fk) +
                   "] but the bags are [B, K] = [" + std::to_string(bags.batch) + ", " +
                   std::to_string(bags.bags_per_sample) + "]: K must match (one field per bag)"));
    }
    req.fields = fields->view();
  }
  bags.indices = indices->view();
  bags.ends = ends->view();
  if (weights) {
    const Status ws = CheckWeightsShape(*weights, indices->shape);
    if (!ws.ok()) return Fail(cmd, ws);
    bags.weights = weights->values();
  }
  if (r->count("out")) {
    const Status st = CheckOutputOutsideStore(db, (*r)["out"].as<std::string>());
    if (!st.ok()) return Fail(cmd, st);
  }
  auto store = OpenStore(db, false);
  if (!store.ok()) return Fail(cmd, store.status());
  auto vs = (*store)->GetSnapshot(vectors_name);
  if (!vs.ok()) return Fail(cmd, vs.status());
  auto bs = (*store)->GetSnapshot(biases_name);
  if (!bs.ok()) return Fail(cmd, bs.status());
  {
    // Per sample: its score, and K pooled vectors + K pooled biases + the
    // plan's two int64 per bag.
    int64_t per_sample = 0;
    if (__builtin_mul_overflow(bags.bags_per_sample, vs->view().dim * 4 + 4 + 16, &per_sample) ||
        __builtin_add_overflow(per_sample, 4, &per_sample)) {
      per_sample = std::numeric_limits<int64_t>::max();
    }
    const Status fits = CheckResultFits(bags.batch, per_sample, "samples");
    if (!fits.ok()) return Fail(cmd, fits);
  }
  std::vector<float> scores(static_cast<size_t>(bags.batch));
  Status st = FmScore(model, vs->view(), bs->view(), req, qo, scores);
  if (!st.ok()) return Fail(cmd, st);
  if (r->count("out")) {
    st = storage::WriteNpy(
        (*r)["out"].as<std::string>(), "<f4", {bags.batch},
        {reinterpret_cast<const uint8_t*>(scores.data()), scores.size() * sizeof(float)});
    if (!st.ok()) return Fail(cmd, st);
  } else {
    for (float y : scores) std::printf("%.8g\n", static_cast<double>(y));
  }
  return kExitOk;
}

// ---- gpu-info ---------------------------------------------------------------------------------
int CmdGpuInfo(int argc, char** argv) {
  cxxopts::Options opts("embstore gpu-info", "Report the CUDA devices this build can use.");
  int ec = 0;
  auto r = Parse(opts, "gpu-info", argc, argv, &ec);
  if (!r) return ec;
  auto devs = cuda::ListDevices();
  if (!devs.ok()) {
    std::printf("%s\n", devs.status().message().c_str());
    return kExitUsage;
  }
  for (const auto& d : *devs) {
    std::printf("cuda:%d\t%s\tsm_%d%d\t%s\n", d.ordinal, d.name.c_str(), d.compute_major,
                d.compute_minor, HumanBytes(d.total_memory_bytes).c_str());
  }
  return kExitOk;
}

const std::vector<Command>& Commands() {
  static const std::vector<Command> kCommands = {
      {"init", "create an empty store", CmdInit},
      {"import", "import a tensor from a checkpoint as a table", CmdImport},
      {"list", "list the tables of a store", CmdList},
      {"info", "show a table's metadata", CmdInfo},
      {"export", "write a table to a .npy file", CmdExport},
      {"drop", "remove a table", CmdDrop},
      {"verify", "recompute checksums", CmdVerify},
      {"inspect", "list the tensors in a checkpoint file", CmdInspect},
      {"query", "pool bags of embeddings (embedding_bag)", CmdQuery},
      {"renorm", "write a max_norm-renormalized new version of a table", CmdRenorm},
      {"rollback", "publish a retained earlier version of a table again", CmdRollback},
      {"score", "factorization-machine (FM / FFM) scores over batched bags", CmdScore},
      {"gpu-info", "report CUDA devices", CmdGpuInfo},
  };
  return kCommands;
}

void PrintMainHelp() {
  std::printf(
      "embstore: memory-mapped embedding tables and embedding-bag queries\n\n"
      "usage: embstore COMMAND [options]   (embstore COMMAND --help for its "
      "options)\n\ncommands:\n");
  for (const Command& c : Commands()) std::printf("  %-10s %s\n", c.name, c.summary);
  std::printf("\nexit codes: 0 ok, 1 bad usage or bad input, 2 I/O error or corruption\n");
}

}  // namespace
}  // namespace embstore::cli

int main(int argc, char** argv) {
  using namespace embstore::cli;
  if (argc < 2) {
    PrintMainHelp();
    return kExitUsage;
  }
  const std::string cmd = argv[1];
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    PrintMainHelp();
    return kExitOk;
  }
  if (cmd == "--version") {
    std::printf("embstore %s\n", EMBSTORE_VERSION);
    return kExitOk;
  }
  // A file-size limit (ulimit -f) makes writes fail with EFBIG, reported
  // with the file's name, instead of killing the process mid-write.
  std::signal(SIGXFSZ, SIG_IGN);
  for (const Command& c : Commands()) {
    if (cmd == c.name) {
      int rc = kExitIO;
      try {
        rc = c.run(argc - 1, argv + 1);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "embstore %s: internal error: %s\n", cmd.c_str(), e.what());
        return kExitIO;
      }
      // Output that could not be written (a full disk, /dev/full, a closed
      // pipe) is an error, not a success with a cut result.
      std::cout.flush();
      errno = 0;
      if (std::fflush(stdout) != 0 || std::ferror(stdout) || !std::cout) {
        std::fprintf(stderr, "embstore %s: error: cannot write the output: %s\n", cmd.c_str(),
                     errno != 0 ? std::strerror(errno) : "write error");
        return kExitIO;
      }
      return rc;
    }
  }
  std::fprintf(stderr, "embstore: unknown command '%s' (see `embstore --help`)\n", cmd.c_str());
  return kExitUsage;
}
