// The commands of the embstore CLI, one per file in this directory.
#ifndef EMBSTORE_TOOLS_COMMANDS_COMMANDS_H_
#define EMBSTORE_TOOLS_COMMANDS_COMMANDS_H_

#include <memory>

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

}  // namespace embstore::cli

#endif  // EMBSTORE_TOOLS_COMMANDS_COMMANDS_H_
