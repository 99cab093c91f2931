// The interface between SparseAttention and its GPU path (src/cuda/pipeline.cu; a build without
// CUDA provides a factory that throws).
#pragma once
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "spaattn/method.hpp"

namespace spaattn::detail {

class DevicePipeline {
 public:
  virtual ~DevicePipeline() = default;
  // Runs one validated call whose plan is decided; commits the (layer, entry) state only when
  // every launch was enqueued.
  virtual CallStats forward(const CallInfo& call, const AttentionArgs& args, TensorView out,
                            const StepPlan& plan, void* stream) = 0;
  virtual void reset() = 0;
  virtual size_t state_count() const = 0;
  // The state of (layer, entry), nullptr when there is none.
  virtual const StateSummary* summary(int layer, int entry) const = 0;
  // Method::calibrated: the calibration of (layer, entry), read back after every queued call
  // (blocks the host); nullopt before its first reference step.
  virtual std::optional<Calibration> calibration(int layer, int entry) const = 0;
};

// perm: the token permutation of config.order (empty: raster); neighbours: block_neighbours of
// the order (empty: none).
std::unique_ptr<DevicePipeline> make_device_pipeline(
    const Config& config, const DeviceMemory& memory, std::span<const int32_t> perm,
    const std::vector<std::vector<int32_t>>& neighbours);

// What the pipeline made with these arguments allocates for calls shaped like `args`.
WorkspaceSize device_workspace_size(const Config& config, const AttentionArgs& args,
                                    size_t perm_entries,
                                    const std::vector<std::vector<int32_t>>& neighbours);

}  // namespace spaattn::detail
