// embstore list: the tables of a store.
#include <cinttypes>
#include <cstdio>

#include "tools/commands/commands.h"

namespace embstore::cli {
namespace {

class ListCommand : public Command {
 public:
  ListCommand()
      : Command("list", "list the tables of a store",
                "List tables: name rows dim dtype version bytes. An entry this build cannot read "
                "is\nlisted as: name UNREADABLE why.") {
    AddValue("db", "Store directory", Need::kRequired);
    AddFlag("versions", "Also list retained versions (a last column says current or retained)");
  }

 private:
  int Run() override {
    const bool versions = IsSet("versions");
    auto store = OpenStore(Str("db"), false);
    if (!store.ok()) return Fail(store.status());
    auto entries = (*store)->ListEntries();
    if (!entries.ok()) return Fail(entries.status());
    for (const TableEntry& e : *entries) {
      if (!e.status.ok()) {
        std::printf("%s\tUNREADABLE\t%s\n", e.name.c_str(), e.status.message().c_str());
        continue;
      }
      for (size_t i = 0; i < (versions ? e.versions.size() : 1); ++i) {
        const TableInfo& t = e.versions[i];
        std::printf("%s\t%" PRId64 "\t%" PRId64 "\t%s\tv%" PRIu64 "\t%" PRIu64 "%s\n",
                    t.name.c_str(), t.rows, t.dim, DTypeName(t.dtype), t.version, t.file_bytes,
                    versions ? (i == 0 ? "\tcurrent" : "\tretained") : "");
      }
    }
    return kExitOk;
  }
};

}  // namespace

std::unique_ptr<Command> NewListCommand() { return std::make_unique<ListCommand>(); }

}  // namespace embstore::cli
