// Launchers of the portable kernel, one per (element type, head dim, block size); each is
// instantiated in its own fwd_hdim<D>_<dtype>_sm80.cu so the instances compile in parallel.
#pragma once
#include <cuda_runtime.h>

#include "fwd_params.cuh"

namespace spaattn::cuda_detail {

template <class T, int D, int B>
void run_fwd(const FwdParams& params, cudaStream_t stream);

}  // namespace spaattn::cuda_detail
