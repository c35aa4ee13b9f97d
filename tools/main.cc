// embstore: the command-line tool. See README.md "CLI reference". Each
// command is a class in tools/commands/; this file dispatches to them.
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <exception>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "embstore/version.h"
#include "tools/cli_util.h"
#include "tools/commands/commands.h"

namespace embstore::cli {
namespace {

// The commands in the order `embstore --help` lists them.
std::vector<std::unique_ptr<Command>> AllCommands() {
  std::vector<std::unique_ptr<Command>> all;
  for (auto make : {NewInitCommand, NewImportCommand, NewListCommand, NewInfoCommand,
                    NewExportCommand, NewDropCommand, NewVerifyCommand, NewInspectCommand,
                    NewQueryCommand, NewRenormCommand, NewRollbackCommand, NewScoreCommand,
                    NewServeCommand, NewPublishCommand, NewClusterCommand, NewGpuInfoCommand}) {
    all.push_back(make());
  }
  return all;
}

void PrintMainHelp(const std::vector<std::unique_ptr<Command>>& commands) {
  std::printf(
      "embstore: memory-mapped embedding tables and embedding-bag queries\n\n"
      "usage: embstore COMMAND [options]   (embstore COMMAND --help for its "
      "options)\n\ncommands:\n");
  for (const auto& c : commands)
    std::printf("  %-10s %s\n", c->name().c_str(), c->summary().c_str());
  std::printf("\nexit codes: 0 ok, 1 bad usage or bad input, 2 I/O error or corruption\n");
}

// Runs `command`; output that could not be written (a full disk, /dev/full,
// a closed pipe) is an error, not a success with a cut result.
int RunCommand(Command& command, int argc, char** argv) {
  int rc = kExitIO;
  try {
    rc = command.Main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "embstore %s: internal error: %s\n", command.name().c_str(), e.what());
    return kExitIO;
  }
  std::cout.flush();
  errno = 0;
  if (std::fflush(stdout) != 0 || std::ferror(stdout) || !std::cout) {
    std::fprintf(stderr, "embstore %s: error: cannot write the output: %s\n",
                 command.name().c_str(), errno != 0 ? std::strerror(errno) : "write error");
    return kExitIO;
  }
  return rc;
}

}  // namespace
}  // namespace embstore::cli

int main(int argc, char** argv) {
  using namespace embstore::cli;
  const std::vector<std::unique_ptr<Command>> commands = AllCommands();
  if (argc < 2) {
    PrintMainHelp(commands);
    return kExitUsage;
  }
  const std::string cmd = argv[1];
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    PrintMainHelp(commands);
    return kExitOk;
  }
  if (cmd == "--version") {
    std::printf("embstore %s\n", embstore::Version().string);
    return kExitOk;
  }
  // A file-size limit (ulimit -f) makes writes fail with EFBIG, reported
  // with the file's name, instead of killing the process mid-write.
  std::signal(SIGXFSZ, SIG_IGN);
  for (const auto& c : commands) {
    if (cmd == c->name()) return RunCommand(*c, argc - 1, argv + 1);
  }
  std::fprintf(stderr, "embstore: unknown command '%s' (see `embstore --help`)\n", cmd.c_str());
  return kExitUsage;
}
