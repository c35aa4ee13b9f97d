// embstore init: create an empty store.
#include <cstdio>

#include "tools/commands/commands.h"

namespace embstore::cli {
namespace {

class InitCommand : public Command {
 public:
  InitCommand() : Command("init", "create an empty store", "Create an empty store in DIR.") {
    AddValue("db", "Store directory", Need::kRequired);
    AddWriterOptions();
  }

 private:
  int Run() override {
    const std::string db = Str("db");
    auto store = OpenStore(db, true);
    if (!store.ok()) return Fail(store.status());
    std::printf("initialized store at %s\n", db.c_str());
    return kExitOk;
  }
};

}  // namespace

std::unique_ptr<Command> NewInitCommand() { return std::make_unique<InitCommand>(); }

}  // namespace embstore::cli
