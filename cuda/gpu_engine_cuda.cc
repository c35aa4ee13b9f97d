// GpuEngine for CUDA builds: the public methods, which validate a request
// with the CPU engine's planner (so the messages are the same) and hand the
// plan to GpuEngine::Impl (gpu_engine_impl.h). Host code only; the kernels
// are in pooling_kernels.cu.
#include <cuda_runtime_api.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cuda/cuda_check.h"
#include "cuda/gpu_engine_impl.h"
#include "embstore/gpu_engine.h"
#include "engine/guarded.h"
#include "engine/plan.h"

namespace embstore::cuda {
namespace {

using engine::Guarded;  // no exception leaves the public API

Status CheckDeviceOut(const float* device_out, size_t count, int device) {
  if (count == 0) return Status::OK();
  if (device_out == nullptr) return Status::InvalidArgument("device_out is null");
  cudaPointerAttributes attr;
  EMBSTORE_CUDA_CHECK(cudaPointerGetAttributes(&attr, device_out));
  const bool on_device = attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
  if (!on_device || attr.device != device) {
    return Status::InvalidArgument("device_out is not device memory of cuda:" +
                                   std::to_string(device));
  }
  return Status::OK();
}

// The CPU engine's planner for either kind of request, so that the GPU
// engine validates (and words its errors) exactly as the CPU engine does.
Result<engine::BagPlan> PlanFor(const TableView& table, const BagRequest& request,
                                const QueryOptions& options) {
  return engine::PlanBags(table, request, options);
}
Result<engine::BagPlan> PlanFor(const TableView& table, const BatchedBagRequest& request,
                                const QueryOptions& options) {
  return engine::PlanBatchedBags(table, request, options);
}

// Plans and validates `request`, then pools it into the `count` floats at
// `out` (device memory of the engine's device when out_on_device). A template
// over the engine's Impl, whose name is private to GpuEngine.
template <class Impl, class Request>
Status Pool(Impl& impl, const TableView& table, const Request& request, const QueryOptions& options,
            float* out, size_t count, bool out_on_device) {
  return Guarded<Status>([&]() -> Status {
    EMBSTORE_ASSIGN_OR_RETURN(const engine::BagPlan plan, PlanFor(table, request, options));
    EMBSTORE_RETURN_IF_ERROR(engine::ValidatePoolInputs(table, plan, options, count));
    if (out_on_device) {
      EMBSTORE_RETURN_IF_ERROR(CheckDeviceOut(out, count, impl.device().ordinal));
    }
    return impl.Run(table, plan, options, out, out_on_device);
  });
}

// The same into a new host result of the plan's output shape.
template <class Impl, class Request>
Result<PooledOutput> PoolToNew(Impl& impl, const TableView& table, const Request& request,
                               const QueryOptions& options) {
  return Guarded<Result<PooledOutput>>([&]() -> Result<PooledOutput> {
    EMBSTORE_ASSIGN_OR_RETURN(const engine::BagPlan plan, PlanFor(table, request, options));
    PooledOutput result;
    result.shape = plan.OutputShape(table.dim);
    result.values.resize(static_cast<size_t>(plan.num_bags()) * static_cast<size_t>(table.dim));
    EMBSTORE_RETURN_IF_ERROR(
        engine::ValidatePoolInputs(table, plan, options, result.values.size()));
    EMBSTORE_RETURN_IF_ERROR(impl.Run(table, plan, options, result.values.data(), false));
    return result;
  });
}

}  // namespace

GpuEngine::GpuEngine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GpuEngine::~GpuEngine() = default;

Result<std::unique_ptr<GpuEngine>> GpuEngine::Create(const GpuEngineOptions& options) {
  return Guarded<Result<std::unique_ptr<GpuEngine>>>([&]() -> Result<std::unique_ptr<GpuEngine>> {
    if (options.policy != CachePolicy::kLru && options.policy != CachePolicy::kLfu) {
      return Status::InvalidArgument("unknown cache policy (expected lru or lfu)");
    }
    if (options.staging_bytes < 0) {
      return Status::InvalidArgument("staging_bytes must be >= 0");
    }
    // Check the sizes now (against f32 rows of dim 1) so a typo fails early.
    EMBSTORE_RETURN_IF_ERROR(
        CacheCapacityRows(options.cache_rows, options.cache_bytes, MakeSlotLayout(DType::kF32, 1))
            .status());
    EMBSTORE_ASSIGN_OR_RETURN(const std::vector<DeviceInfo> devices, ListDevices());
    if (options.device < 0 || options.device >= static_cast<int>(devices.size())) {
      return Status::InvalidArgument("no CUDA device " + std::to_string(options.device) +
                                     " (this machine has " + std::to_string(devices.size()) + ")");
    }
    const DeviceInfo& info = devices[static_cast<size_t>(options.device)];
    if (info.compute_major < 9) {
      return Status::NotSupported("no GPU: cuda:" + std::to_string(info.ordinal) + " (" +
                                  info.name + ") is sm_" + std::to_string(info.compute_major) +
                                  std::to_string(info.compute_minor) +
                                  ", but this build has code for sm_90 and newer only");
    }
    auto impl = std::make_unique<Impl>(options, info);
    EMBSTORE_RETURN_IF_ERROR(impl->Init());
    return std::unique_ptr<GpuEngine>(new GpuEngine(std::move(impl)));
  });
}

Status GpuEngine::EmbeddingBag(const TableView& table, const BagRequest& request,
                               const QueryOptions& options, std::span<float> host_out) {
  return Pool(*impl_, table, request, options, host_out.data(), host_out.size(), false);
}
Result<PooledOutput> GpuEngine::EmbeddingBag(const TableView& table, const BagRequest& request,
                                             const QueryOptions& options) {
  return PoolToNew(*impl_, table, request, options);
}
Status GpuEngine::EmbeddingBagToDevice(const TableView& table, const BagRequest& request,
                                       const QueryOptions& options, float* device_out,
                                       size_t count) {
  return Pool(*impl_, table, request, options, device_out, count, /*out_on_device=*/true);
}

Status GpuEngine::BatchedEmbeddingBag(const TableView& table, const BatchedBagRequest& request,
                                      const QueryOptions& options, std::span<float> host_out) {
  return Pool(*impl_, table, request, options, host_out.data(), host_out.size(), false);
}
Result<PooledOutput> GpuEngine::BatchedEmbeddingBag(const TableView& table,
                                                    const BatchedBagRequest& request,
                                                    const QueryOptions& options) {
  return PoolToNew(*impl_, table, request, options);
}
Status GpuEngine::BatchedEmbeddingBagToDevice(const TableView& table,
                                              const BatchedBagRequest& request,
                                              const QueryOptions& options, float* device_out,
                                              size_t count) {
  return Pool(*impl_, table, request, options, device_out, count, /*out_on_device=*/true);
}

Status GpuEngine::Prefetch(const TableView& table, IndexArray ids) {
  return Guarded<Status>([&]() -> Status {
    EMBSTORE_ASSIGN_OR_RETURN(const engine::BagPlan plan, engine::PlanIds(table, ids));
    return impl_->Prefetch(table, plan);
  });
}

Status GpuEngine::Sync() {
  return Guarded<Status>([&] { return impl_->Sync(); });
}
Status GpuEngine::Forget(const TableView& table) {
  return Guarded<Status>([&] { return impl_->Forget(table); });
}
Status GpuEngine::Clear() {
  return Guarded<Status>([&] { return impl_->Clear(); });
}
CacheStats GpuEngine::stats() const { return impl_->stats(); }
void GpuEngine::ResetStats() { impl_->ResetStats(); }
const DeviceInfo& GpuEngine::device_info() const { return impl_->device(); }

}  // namespace embstore::cuda
