// The commands of the embstore CLI, one per file in this directory.
#ifndef EMBSTORE_TOOLS_COMMANDS_COMMANDS_H_
#define EMBSTORE_TOOLS_COMMANDS_COMMANDS_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "embstore/status.h"
#include "tools/command.h"

namespace embstore::cli {

std::unique_ptr<Command> NewInitCommand();
std::unique_ptr<Command> NewImportCommand();
std::unique_ptr<Command> NewListCommand();
std::unique_ptr<Command> NewInfoCommand();
std::unique_ptr<Command> NewExportCommand();
std::unique_ptr<Command> NewDropCommand();
std::unique_ptr<Command> NewVerifyCommand();
std::unique_ptr<Command> NewInspectCommand();
std::unique_ptr<Command> NewQueryCommand();
std::unique_ptr<Command> NewRenormCommand();
std::unique_ptr<Command> NewRollbackCommand();
std::unique_ptr<Command> NewScoreCommand();
std::unique_ptr<Command> NewGpuInfoCommand();
std::unique_ptr<Command> NewServeCommand();
std::unique_ptr<Command> NewPublishCommand();
std::unique_ptr<Command> NewClusterCommand();

// `embstore rollback --cluster` (tools/commands/cluster.cc).
Result<uint64_t> RollbackInCluster(const std::string& endpoints, const std::string& prefix,
                                   const std::string& table, std::optional<uint64_t> to);

}  // namespace embstore::cli

#endif  // EMBSTORE_TOOLS_COMMANDS_COMMANDS_H_
