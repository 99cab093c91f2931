// The GPU path of SparseAttention.
#include "core/device_pipeline.hpp"
#include "spaattn/error.hpp"

namespace spaattn::detail {

std::unique_ptr<DevicePipeline> make_device_pipeline(const Config&, const DeviceMemory&,
                                                     std::span<const int32_t>,
                                                     const std::vector<std::vector<int32_t>>&) {
  throw Error(Error::Kind::runtime,
              "q: SparseAttention on CUDA tensors is not available in this version; use "
              "cuda::block_sparse_attention or host tensors");
}

}  // namespace spaattn::detail
