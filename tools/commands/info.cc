// embstore info: a table's metadata and its retained versions.
#include <cinttypes>
#include <cstdio>

#include "tools/commands/commands.h"

namespace embstore::cli {
namespace {

class InfoCommand : public Command {
 public:
  InfoCommand() : Command("info", "show a table's metadata", "Show a table's metadata.") {
    AddValue("db", "Store directory", Need::kRequired);
    AddValue("table", "Table name", Need::kRequired);
  }

 private:
  int Run() override {
    const std::string table = Str("table");
    auto store = OpenStore(Str("db"), false);
    if (!store.ok()) return Fail(store.status());
    auto entries = (*store)->ListEntries();
    if (!entries.ok()) return Fail(entries.status());
    auto t = (*store)->GetInfo(table);
    if (!t.ok()) return Fail(t.status());
    std::printf("name:          %s\n", t->name.c_str());
    std::printf("rows:          %" PRId64 "\n", t->rows);
    std::printf("dim:           %" PRId64 "\n", t->dim);
    std::printf("dtype:         %s\n", DTypeName(t->dtype));
    std::printf("bytes_per_row: %zu (stored stride %" PRIu64 ")\n",
                RowPayloadBytes(t->dtype, t->dim), t->row_stride);
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
};

}  // namespace

std::unique_ptr<Command> NewInfoCommand() { return std::make_unique<InfoCommand>(); }

}  // namespace embstore::cli
