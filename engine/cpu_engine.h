// The CPU engine behind the Engine interface (embstore/engine.h), made by
// Engine::Create (cuda/engine_create.cc) for Device::kCpu.
#ifndef EMBSTORE_ENGINE_CPU_ENGINE_H_
#define EMBSTORE_ENGINE_CPU_ENGINE_H_

#include <memory>

#include "embstore/engine.h"

namespace embstore::engine {

std::unique_ptr<Engine> NewCpuEngine();

}  // namespace embstore::engine

#endif  // EMBSTORE_ENGINE_CPU_ENGINE_H_
