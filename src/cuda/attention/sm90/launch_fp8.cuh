// Definition of run_fwd_sm90_fp8: tensor maps of the FP8 operands, then the persistent grid of
// kernel_fp8.cuh, one kernel instance per epilogue functor.
#pragma once
#include <algorithm>

#include "cuda/attention/launch.hpp"
#include "cuda/attention/sm90/kernel_fp8.cuh"
#include "cuda/attention/sm90/tensor_map.hpp"
#include "cuda/check.cuh"

namespace spaattn::cuda_detail {

template <class T, int D>
void run_fwd_sm90_fp8(const FwdParams& params, cudaStream_t stream) {
  using Tr = sm90::Fp8Traits<D>;
  sm90::Fp8Params sp;
  sp.base = params;
  const int64_t bh = static_cast<int64_t>(params.batch) * params.heads;
  const int64_t rows = static_cast<int64_t>(params.num_q_blocks) * Tr::B;
  const int64_t vt_rows = static_cast<int64_t>(params.num_q_blocks) * D;
  // Q, K tiles: B rows of d bytes; V^T tiles: d rows of B bytes (each box exactly one tile,
  // the kTileBytes every copy announces).
  sp.q_map = sm90::make_fp8_map(params.fp8.q8, rows, bh, D, Tr::B, "fp8 workspace (q)");
  sp.k_map = sm90::make_fp8_map(params.fp8.k8, rows, bh, D, Tr::B, "fp8 workspace (k)");
  sp.v_map = sm90::make_fp8_map(params.fp8.vt8, vt_rows, bh, Tr::B, D, "fp8 workspace (v)");
  dispatch_epilogue(params.epi.kind, [&](auto epi) {
    using Epi = typename decltype(epi)::template type<T, D>;
    const auto kernel = sm90::fwd_kernel_sm90_fp8<T, D, Epi>;
    static OncePerDevice smem_opt_in;
    smem_opt_in([&] {
      SPAATTN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              Tr::kSmemBytes));
    });
    const int items = params.batch * params.heads * params.num_q_blocks;
    const dim3 grid(std::min(items, sm90::resident_ctas(1)));
    kernel<<<grid, Tr::kThreads, Tr::kSmemBytes, stream>>>(sp);
    check_launch("fwd_kernel_sm90_fp8");
  });
}

}  // namespace spaattn::cuda_detail
