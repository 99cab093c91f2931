// Hopper FP8 kernel instance (int8 Q K^T, e4m3 P V): head dim 128, block size 128, f16 output.
#include "cuda/attention/sm90/launch_fp8.cuh"

namespace spaattn::cuda_detail {

template void run_fwd_sm90_fp8<__half, 128>(const FwdParams&, cudaStream_t);

}  // namespace spaattn::cuda_detail
