// embstore import: tensors of a checkpoint as tables.
#include <cinttypes>
#include <cstdio>
#include <map>
#include <utility>

#include "checkpoint/tensor_reader.h"
#include "embstore/checkpoint.h"
#include "tools/commands/commands.h"

namespace embstore::cli {
namespace {

class ImportCommand : public Command {
 public:
  ImportCommand()
      : Command("import", "import a tensor from a checkpoint as a table",
                "Import a tensor from a checkpoint (.npy, .npz, .safetensors, .pt) as a table.\n"
                "Several tables from one file: --tensor KEY=TABLE, repeated (then --table is not "
                "used).") {
    AddValue("db", "Store directory (created if needed)", Need::kRequired);
    AddValue("table", "Table name");
    AddValue("from", "Checkpoint file", Need::kRequired);
    AddRepeatable("tensor", "Tensor key inside the checkpoint, or KEY=TABLE (repeatable)");
    AddValue("dtype",
             "Storage dtype: f32, f16, bf16, int8 (default: keep f32/f16/bf16, f64 -> f32)");
    AddFlag("replace", "Publish a new version of an existing table");
    AddWriterOptions();
  }

 private:
  // (tensor key, table) pairs, one per table to import.
  using Jobs = std::vector<std::pair<std::string, std::string>>;

  int Run() override {
    const std::string from = Str("from");
    ImportOptions io;
    io.replace = IsSet("replace");
    if (Has("dtype")) {
      auto dt = ParseDType(Str("dtype"));
      if (!dt) return Usage("--dtype must be one of f32, f16, bf16, int8");
      io.dtype = *dt;
    }
    Jobs jobs;
    if (const int rc = ReadJobs(&jobs); rc != kExitOk) return rc;
    auto store = OpenStore(Str("db"), true);
    if (!store.ok()) return Fail(store.status());
    if (jobs.size() > 1) {
      // Several tables: check every tensor (key, dtype, shape, file size) and
      // every name first, so a bad --tensor fails the command before any
      // table is published. (Each table is then published atomically, one by
      // one.)
      for (const auto& [key, name] : jobs) {
        auto reader = storage::OpenTensor(from, key);
        if (!reader.ok()) return Fail(reader.status());
        if (!io.replace) {
          auto existing = (*store)->GetInfo(name);
          if (existing.ok()) {
            return Fail(Status::AlreadyExists("table '" + name + "' exists (version " +
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
      if (!info.ok()) return Fail(info.status());
      std::printf("imported %s: %" PRId64 " x %" PRId64 " %s, version %" PRIu64 ", %s\n",
                  name.c_str(), info->rows, info->dim, DTypeName(info->dtype), info->version,
                  HumanBytes(info->file_bytes).c_str());
    }
    return kExitOk;
  }

  // The tables to import from --tensor and --table, their names checked;
  // kExitOk, or the exit code of the error printed.
  int ReadJobs(Jobs* jobs) const {
    std::vector<std::string> tensors;
    if (Has("tensor")) tensors = Strings("tensor");
    const std::string table = Has("table") ? Str("table") : "";
    for (const std::string& t : tensors) {
      const size_t eq = t.rfind('=');
      // A quoted key ("a=b", as `inspect` prints keys with odd characters) is
      // one key, even when it holds '='.
      if (eq != std::string::npos && !(t.size() >= 2 && t.front() == '"' && t.back() == '"')) {
        auto key = ParseKeyArgument(t.substr(0, eq));
        if (!key.ok()) return Fail(key.status());
        jobs->emplace_back(*key, t.substr(eq + 1));
      } else {
        if (table.empty())
          return Usage("--tensor " + t + " needs --table (or use --tensor KEY=TABLE)");
        auto key = ParseKeyArgument(t);
        if (!key.ok()) return Fail(key.status());
        jobs->emplace_back(*key, table);
      }
    }
    if (jobs->empty()) {
      if (table.empty()) return Usage("--table is required");
      jobs->emplace_back("", table);
    }
    if (jobs->size() > 1) {
      std::map<std::string, int> seen;
      for (const auto& j : *jobs) {
        if (++seen[j.second] > 1) return Usage("table '" + j.second + "' is named twice");
      }
    }
    for (const auto& j : *jobs) {
      const Status st = ValidateTableName(j.second);
      if (!st.ok()) return Fail(st);
    }
    return kExitOk;
  }
};

}  // namespace

std::unique_ptr<Command> NewImportCommand() { return std::make_unique<ImportCommand>(); }

}  // namespace embstore::cli
