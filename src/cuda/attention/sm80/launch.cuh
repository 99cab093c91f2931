// Definition of run_fwd_sm80: a 1-D grid of batch * heads * query blocks CTAs, ordered by
// decode_work (attention/blocks.cuh), one kernel instance per epilogue functor.
#pragma once
#include "cuda/attention/launch.hpp"
#include "cuda/attention/sm80/kernel.cuh"
#include "cuda/check.cuh"

namespace spaattn::cuda_detail {

template <class T, int D, int B>
void run_fwd_sm80(const FwdParams& params, cudaStream_t stream) {
  using Tr = FwdTraits<D, B>;
  dispatch_epilogue(params.epi.kind, [&](auto epi) {
    using Epi = typename decltype(epi)::template type<T, D>;
    const auto kernel = fwd_kernel_sm80<T, D, B, Epi>;
    // Above 48 KB of dynamic shared memory a kernel must opt in, once per device.
    static OncePerDevice smem_opt_in;
    smem_opt_in([&] {
      SPAATTN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              Tr::kSmemBytes));
    });
    const dim3 grid(params.batch * params.heads * params.num_q_blocks);
    kernel<<<grid, Tr::kThreads, Tr::kSmemBytes, stream>>>(params);
    check_launch("fwd_kernel_sm80");
  });
}

}  // namespace spaattn::cuda_detail
