// Launchers of the two kernel families, one per (element type, head dim, block size); each
// family's instances sit in fwd_hdim<D>_<dtype>_<arch>.cu files (sm80/, sm90/) so that they
// compile in parallel. launch_fwd (api.cu) picks the family and the instance.
#pragma once
#include <cuda_runtime.h>

#include "cuda/attention/params.cuh"

namespace spaattn::cuda_detail {

template <class T, int D, int B>
void run_fwd_sm80(const FwdParams& params, cudaStream_t stream);

template <class T, int D, int B>
void run_fwd_sm90(const FwdParams& params, cudaStream_t stream);

// The sm90 kernel on the FP8 operands of params.fp8 (block size 128); T is out's type.
template <class T, int D>
void run_fwd_sm90_fp8(const FwdParams& params, cudaStream_t stream);

}  // namespace spaattn::cuda_detail
