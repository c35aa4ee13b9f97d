// embstore renorm: a max_norm-renormalized new version of a table (the math
// is the library's RenormTable).
#include "embstore/renorm.h"

#include <cinttypes>
#include <cstdio>

#include "tools/commands/commands.h"

namespace embstore::cli {
namespace {

class RenormCommand : public Command {
 public:
  RenormCommand()
      : Command("renorm", "write a max_norm-renormalized new version of a table",
                "Write a new version in which every row with norm > max_norm is scaled to "
                "max_norm\n(the weight torch reaches after every row has been looked up with "
                "max_norm).") {
    AddValue("db", "Store directory", Need::kRequired);
    AddValue("table", "Table name", Need::kRequired);
    AddValue("max-norm", "X > 0", Need::kRequired);
    AddValueWithDefault("norm-type", "p of the p-norm (default 2; 0, inf and -inf as torch)", "2");
    AddWriterOptions();
  }

 private:
  int Run() override {
    const std::string table = Str("table");
    RenormOptions ro;
    auto max_norm = Number("max-norm");
    if (!max_norm.ok()) return Fail(max_norm.status());
    ro.max_norm = *max_norm;
    auto p = Number("norm-type");
    if (!p.ok()) return Fail(p.status());
    ro.norm_type = *p;
    // Checked before the store is opened: a bad argument costs nothing.
    if (const Status st = CheckRenormOptions(ro); !st.ok()) return Fail(st);
    auto store = OpenStore(Str("db"), false);
    if (!store.ok()) return Fail(store.status());
    ProgressBar bar("renorm " + table);
    ro.progress = [&bar](int64_t done, int64_t total) { bar.Update(done, total); };
    auto result = RenormTable(**store, table, ro);
    if (!result.ok()) return Fail(result.status());
    std::printf("renormalized %s: %" PRId64 " of %" PRId64 " rows scaled, version %" PRIu64 "\n",
                table.c_str(), result->rows_scaled, result->info.rows, result->info.version);
    return kExitOk;
  }
};

}  // namespace

std::unique_ptr<Command> NewRenormCommand() { return std::make_unique<RenormCommand>(); }

}  // namespace embstore::cli
