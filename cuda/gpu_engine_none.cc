// GpuEngine for builds without CUDA: Create always says "no GPU", so callers
// (the CLI, serving code) link and run the same way on every machine. The
// other members are unreachable (no engine can be created) but defined.
#include "embstore/gpu_engine.h"

namespace embstore::cuda {
namespace {
Status NoGpu() {
  return Status::NotSupported(
      "no GPU: built without CUDA (EMBSTORE_CUDA=OFF or no nvcc at configure time)");
}
}  // namespace

class GpuEngine::Impl {
 public:
  DeviceInfo device;
};

GpuEngine::GpuEngine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GpuEngine::~GpuEngine() = default;

Result<std::unique_ptr<GpuEngine>> GpuEngine::Create(const GpuEngineOptions&) { return NoGpu(); }

Status GpuEngine::EmbeddingBag(const TableView&, const BagRequest&, const QueryOptions&,
                               std::span<float>) {
  return NoGpu();
}
Result<PooledOutput> GpuEngine::EmbeddingBag(const TableView&, const BagRequest&,
                                             const QueryOptions&) {
  return NoGpu();
}
Status GpuEngine::EmbeddingBagToDevice(const TableView&, const BagRequest&, const QueryOptions&,
                                       float*, size_t) {
  return NoGpu();
}
Status GpuEngine::BatchedEmbeddingBag(const TableView&, const BatchedBagRequest&,
                                      const QueryOptions&, std::span<float>) {
  return NoGpu();
}
Result<PooledOutput> GpuEngine::BatchedEmbeddingBag(const TableView&, const BatchedBagRequest&,
                                                    const QueryOptions&) {
  return NoGpu();
}
Status GpuEngine::BatchedEmbeddingBagToDevice(const TableView&, const BatchedBagRequest&,
                                              const QueryOptions&, float*, size_t) {
  return NoGpu();
}
Status GpuEngine::Prefetch(const TableView&, IndexArray) { return NoGpu(); }
Status GpuEngine::Sync() { return NoGpu(); }
Status GpuEngine::Forget(const TableView&) { return NoGpu(); }
Status GpuEngine::Clear() { return NoGpu(); }
CacheStats GpuEngine::stats() const { return CacheStats(); }
void GpuEngine::ResetStats() {}
const DeviceInfo& GpuEngine::device_info() const { return impl_->device; }

}  // namespace embstore::cuda
