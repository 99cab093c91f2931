// Definition of run_fwd_sm90: tensor maps of K and V, then a persistent grid (as many CTAs as fit
// on the device at once, at most one per work item), one kernel instance per epilogue functor.
#pragma once
#include <algorithm>

#include "cuda/attention/launch.hpp"
#include "cuda/attention/sm90/kernel.cuh"
#include "cuda/attention/sm90/tensor_map.hpp"
#include "cuda/check.cuh"

namespace spaattn::cuda_detail {

template <class T, int D, int B>
void run_fwd_sm90(const FwdParams& params, cudaStream_t stream) {
  using Tr = sm90::Traits<D, B>;
  const DType dtype = std::is_same_v<T, __nv_bfloat16> ? DType::bf16 : DType::f16;
  sm90::Params sp;
  sp.base = params;
  sp.k_map = sm90::make_kv_map(params.k, params.k_stride, params, D, B, dtype, "k");
  sp.v_map = sm90::make_kv_map(params.v, params.v_stride, params, D, B, dtype, "v");
  dispatch_epilogue(params.epi.kind, [&](auto epi) {
    using Epi = typename decltype(epi)::template type<T, D>;
    const auto kernel = sm90::fwd_kernel_sm90<T, D, B, Epi>;
    static OncePerDevice smem_opt_in;
    smem_opt_in([&] {
      SPAATTN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              Tr::kSmemBytes));
    });
    const int items = params.batch * params.heads * params.num_q_blocks;
    const dim3 grid(std::min(items, sm90::resident_ctas(Tr::kMinBlocks)));
    kernel<<<grid, Tr::kThreads, Tr::kSmemBytes, stream>>>(sp);
    check_launch("fwd_kernel_sm90");
  });
}

}  // namespace spaattn::cuda_detail
