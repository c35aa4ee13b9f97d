// embstore drop: remove a table and its retained versions.
#include <cstdio>

#include "tools/commands/commands.h"

namespace embstore::cli {
namespace {

class DropCommand : public Command {
 public:
  DropCommand()
      : Command("drop", "remove a table",
                "Remove a table and its retained versions, and reclaim their files.") {
    AddValue("db", "Store directory", Need::kRequired);
    AddValue("table", "Table name", Need::kRequired);
    AddWriterOptions();
  }

 private:
  int Run() override {
    const std::string table = Str("table");
    auto store = OpenStore(Str("db"), false);
    if (!store.ok()) return Fail(store.status());
    const Status st = (*store)->DropTable(table);
    if (!st.ok()) return Fail(st);
    std::printf("dropped %s\n", table.c_str());
    return kExitOk;
  }
};

}  // namespace

std::unique_ptr<Command> NewDropCommand() { return std::make_unique<DropCommand>(); }

}  // namespace embstore::cli
