// embstore inspect: the tensors of a checkpoint file.
#include <cstdio>

#include "embstore/checkpoint.h"
#include "tools/commands/commands.h"

namespace embstore::cli {
namespace {

class InspectCommand : public Command {
 public:
  InspectCommand()
      : Command("inspect", "list the tensors in a checkpoint file",
                "List the tensors of a checkpoint: key, dtype, shape.") {
    AddPositional("file", "Checkpoint file", "FILE");
  }

 private:
  int Run() override {
    if (!Has("file")) return Usage("a checkpoint FILE is required (embstore inspect FILE)");
    auto entries = InspectCheckpoint(Str("file"));
    if (!entries.ok()) return Fail(entries.status());
    for (const TensorEntry& e : *entries) {
      std::string shape = "[";
      for (size_t i = 0; i < e.shape.size(); ++i)
        shape += (i ? ", " : "") + std::to_string(e.shape[i]);
      shape += "]";
      // A lone .npy array has no key; any other key is shown unambiguously.
      const bool lone_array = e.key.empty() && entries->size() == 1;
      std::printf("%s\t%s\t%s\n", lone_array ? "(array)" : DisplayKey(e.key).c_str(),
                  e.dtype.c_str(), shape.c_str());
    }
    return kExitOk;
  }
};

}  // namespace

std::unique_ptr<Command> NewInspectCommand() { return std::make_unique<InspectCommand>(); }

}  // namespace embstore::cli
