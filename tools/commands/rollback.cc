// embstore rollback: publish a retained version of a table again.
#include <cinttypes>
#include <cstdio>

#include "tools/commands/commands.h"

namespace embstore::cli {
namespace {

class RollbackCommand : public Command {
 public:
  RollbackCommand()
      : Command("rollback", "publish a retained earlier version of a table again",
                "Publish a retained version of a table again, atomically, as a new version "
                "number\n(default: the newest retained version; see `embstore info` or `list "
                "--versions`).") {
    AddValue("db", "Store directory (or --cluster)");
    AddValue("table", "Table name", Need::kRequired);
    AddValue("to-version", "The retained version to publish again");
    AddValue("cluster",
             "etcd endpoints of a cluster (http://HOST:PORT,...): make its previous ready "
             "version (or --to-version) current again there, instead of --db");
    AddValue("cluster-prefix",
             "With --cluster: the cluster's etcd key prefix (default /embstore/)");
    AddWriterOptions();
  }

 private:
  int Run() override {
    const std::string table = Str("table");
    std::optional<uint64_t> to;
    if (Has("to-version")) {
      auto v = Integer("to-version");
      if (!v.ok() || *v < 1) return Usage("--to-version must be a version number >= 1");
      to = static_cast<uint64_t>(*v);
    }
    if (Has("cluster")) {
      if (Has("db")) return Usage("--db and --cluster exclude each other");
      auto v = RollbackInCluster(Str("cluster"), Has("cluster-prefix") ? Str("cluster-prefix") : "",
                                 table, to);
      if (!v.ok()) return Fail(v.status());
      std::printf("rolled back %s in the cluster: version %" PRIu64 " is current\n", table.c_str(),
                  *v);
      return kExitOk;
    }
    if (!Has("db")) return Usage("--db is required (or --cluster)");
    auto store = OpenStore(Str("db"), false);
    if (!store.ok()) return Fail(store.status());
    auto info = (*store)->Rollback(table, to);
    if (!info.ok()) return Fail(info.status());
    std::printf("rolled back %s: version %" PRIu64 " (%s)\n", table.c_str(), info->version,
                info->source.c_str());
    return kExitOk;
  }
};

}  // namespace

std::unique_ptr<Command> NewRollbackCommand() { return std::make_unique<RollbackCommand>(); }

}  // namespace embstore::cli
