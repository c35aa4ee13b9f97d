// embstore verify: recompute checksums, naming each corrupt table.
#include <cstdio>

#include "tools/commands/commands.h"

namespace embstore::cli {
namespace {

class VerifyCommand : public Command {
 public:
  VerifyCommand()
      : Command("verify", "recompute checksums",
                "Recompute checksums; exit 2 naming each corrupt table.") {
    AddValue("db", "Store directory", Need::kRequired);
    AddValue("table", "Only this table");
  }

 private:
  int Run() override {
    auto store = OpenStore(Str("db"), false);
    if (!store.ok()) return Fail(store.status());
    std::vector<std::string> names;
    auto entries = (*store)->ListEntries();
    if (!entries.ok()) return Fail(entries.status());
    if (Has("table")) {
      names.push_back(Str("table"));
      const Status valid = ValidateTableName(names[0]);
      if (!valid.ok()) return Fail(valid);
      bool known = false;
      for (const TableEntry& e : *entries) known |= e.name == names[0];
      if (!known) return Fail(Status::NotFound("unknown table '" + names[0] + "'"));
    } else {
      for (const TableEntry& e : *entries) names.push_back(e.name);
    }
    int bad = 0;
    for (const std::string& n : names) {
      const Status st = (*store)->VerifyTable(n);
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
};

}  // namespace

std::unique_ptr<Command> NewVerifyCommand() { return std::make_unique<VerifyCommand>(); }

}  // namespace embstore::cli
