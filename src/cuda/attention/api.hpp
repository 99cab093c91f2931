// Internal entry points of the attention kernel for the GPU pipeline (pipeline.cu): the checks
// that need the device, the params of one launch, and the launch itself. The public
// cuda::block_sparse_attention (api.cu) is these three in a row.
#pragma once
#include <cuda_runtime.h>

#include "cuda/attention/params.cuh"
#include "spaattn/layout.hpp"

namespace spaattn::cuda_detail {

// What validate() cannot check: CUDA memory of the current device, bf16/f16 q/k/v/out of one
// dtype, 16-byte aligned rows (cp.async), 32-bit index ranges. lse and text_lengths may be empty;
// mask (optional) has its arrays checked for device memory and its entry count for int32.
void check_gpu_call(const AttentionArgs& args, const TensorView& out, const TensorView& lse,
                    const BlockMaskView* mask = nullptr);

// Throws naming `name` unless ptr is device (or managed) memory of `device`.
void check_device_pointer(const void* ptr, const char* name, int device);

// Throws unless the FP8 kernel can run: family (named family_arg) not portable, and a compute
// capability 9.0 device with sm_90a code in the build (named device_arg).
void check_fp8_runs(KernelFamily family, const char* family_arg, const char* device_arg);

// Params of one launch: no epilogue, no token permutation (the caller sets p.epi, p.video_perm).
FwdParams make_fwd_params(const AttentionArgs& args, const BlockMaskView& mask,
                          const TensorView& out, const TensorView& lse);

// The family that launch_fwd runs for these params: `requested`, else SPAATTN_KERNEL, else
// hopper where it applies (layout.hpp KernelFamily). Throws naming the field or the variable
// when hopper is forced and cannot serve the call.
KernelFamily resolve_family(KernelFamily requested, const FwdParams& params);

// Launches the kernel instance for (family, dtype, head dim, block size) on `stream`. Throws
// before the launch when the epilogue lacks an array its kind needs (row_affine: rho;
// merge_reference: prev_out, prev_lse, rho_out and lse, whose strides prev_lse shares).
void launch_fwd(const FwdParams& params, DType dtype, int64_t head_dim, int block_size,
                cudaStream_t stream, KernelFamily family = KernelFamily::automatic);

}  // namespace spaattn::cuda_detail
