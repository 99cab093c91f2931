// Definition of run_fwd: a 1-D grid of batch * heads * query blocks CTAs, ordered by
// decode_work (fwd_blocks.cuh).
#pragma once
#include "check.cuh"
#include "fwd_kernel.cuh"
#include "fwd_launch.hpp"

namespace spaattn::cuda_detail {

template <class T, int D, int B>
void run_fwd(const FwdParams& params, cudaStream_t stream) {
  using Tr = FwdTraits<D, B>;
  const auto kernel = fwd_kernel<T, D, B>;
  // Above 48 KB of dynamic shared memory a kernel must opt in (per device, so every call).
  SPAATTN_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes));
  const dim3 grid(params.batch * params.heads * params.num_q_blocks);
  kernel<<<grid, Tr::kThreads, Tr::kSmemBytes, stream>>>(params);
  check_launch("fwd_kernel");
}

}  // namespace spaattn::cuda_detail
