// Engine::Create: the engine EngineOptions::device names, the CPU engine
// (engine/engine.cc) or the CUDA engine (gpu_engine.h; without CUDA its
// Create says "no GPU: ..."). Here because the cuda module sees both.
#include <memory>
#include <string>
#include <utility>

#include "embstore/engine.h"
#include "embstore/gpu_engine.h"
#include "engine/cpu_engine.h"

namespace embstore {

Result<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& options) {
  switch (options.device) {
    case Device::kCpu:
      return engine::NewCpuEngine();
    case Device::kCuda: {
      EMBSTORE_ASSIGN_OR_RETURN(std::unique_ptr<cuda::GpuEngine> gpu,
                                cuda::GpuEngine::Create(options.gpu));
      return std::unique_ptr<Engine>(std::move(gpu));
    }
  }
  return Status::InvalidArgument("unknown device " +
                                 std::to_string(static_cast<int>(options.device)) +
                                 " (expected Device::kCpu or Device::kCuda)");
}

}  // namespace embstore
