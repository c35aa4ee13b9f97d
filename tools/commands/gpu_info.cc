// embstore gpu-info: the CUDA devices this build can use.
#include <cstdio>

#include "embstore/gpu_device.h"
#include "tools/commands/commands.h"

namespace embstore::cli {
namespace {

class GpuInfoCommand : public Command {
 public:
  GpuInfoCommand()
      : Command("gpu-info", "report CUDA devices", "Report the CUDA devices this build can use.") {}

 private:
  int Run() override {
    auto devs = cuda::ListDevices();
    if (!devs.ok()) {
      std::printf("%s\n", devs.status().message().c_str());
      return kExitUsage;
    }
    for (const auto& d : *devs) {
      std::printf("cuda:%d\t%s\tsm_%d%d\t%s\n", d.ordinal, d.name.c_str(), d.compute_major,
                  d.compute_minor, HumanBytes(d.total_memory_bytes).c_str());
    }
    return kExitOk;
  }
};

}  // namespace

std::unique_ptr<Command> NewGpuInfoCommand() { return std::make_unique<GpuInfoCommand>(); }

}  // namespace embstore::cli
