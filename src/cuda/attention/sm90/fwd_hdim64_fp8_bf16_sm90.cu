// Hopper FP8 kernel instance (int8 Q K^T, e4m3 P V): head dim 64, block size 128, bf16 output.
#include "cuda/attention/sm90/launch_fp8.cuh"

namespace spaattn::cuda_detail {

template void run_fwd_sm90_fp8<__nv_bfloat16, 64>(const FwdParams&, cudaStream_t);

}  // namespace spaattn::cuda_detail
