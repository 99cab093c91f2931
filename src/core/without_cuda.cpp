// The CUDA entry points of a build without nvcc: they report that, never pretend to work.
#include "core/device_pipeline.hpp"
#include "spaattn/cuda.hpp"
#include "spaattn/error.hpp"

namespace spaattn::cuda {
namespace {
[[noreturn]] void unavailable(const char* what) {
  throw Error(Error::Kind::runtime,
              detail::concat(what, ": spaattn was built without CUDA (nvcc was not found)"));
}
}  // namespace

bool available() { return false; }

void block_sparse_attention(const AttentionArgs&, const BlockMaskView&, TensorView, TensorView,
                            void*) {
  unavailable("cuda::block_sparse_attention");
}

size_t fp8_workspace_size(const AttentionArgs&) { unavailable("cuda::fp8_workspace_size"); }

void quantize_fp8(const AttentionArgs&, void*, size_t, void*) {
  unavailable("cuda::quantize_fp8");
}

void block_sparse_attention_fp8(const AttentionArgs&, const BlockMaskView&, TensorView, TensorView,
                                const void*, size_t, void*) {
  unavailable("cuda::block_sparse_attention_fp8");
}

size_t dense_to_csr_workspace_size(int64_t) { unavailable("cuda::dense_to_csr_workspace_size"); }

void dense_to_csr(const TensorView&, BlockMaskView, void*, void*) {
  unavailable("cuda::dense_to_csr");
}

}  // namespace spaattn::cuda

namespace spaattn::detail {

std::unique_ptr<DevicePipeline> make_device_pipeline(const Config&, const DeviceMemory&,
                                                     std::span<const int32_t>,
                                                     const std::vector<std::vector<int32_t>>&) {
  throw Error(Error::Kind::runtime,
              "q: CUDA tensors need spaattn built with CUDA (nvcc was not found)");
}

WorkspaceSize device_workspace_size(const Config&, const AttentionArgs&, size_t,
                                    const std::vector<std::vector<int32_t>>&) {
  throw Error(Error::Kind::runtime,
              "SparseAttention::workspace_size: spaattn was built without CUDA (nvcc was not "
              "found)");
}

}  // namespace spaattn::detail
