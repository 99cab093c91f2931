// Hopper kernel instances for head dim 64, bfloat16: block sizes 128 and 64.
#include "cuda/attention/sm90/launch.cuh"

namespace spaattn::cuda_detail {

template void run_fwd_sm90<__nv_bfloat16, 64, 128>(const FwdParams&, cudaStream_t);
template void run_fwd_sm90<__nv_bfloat16, 64, 64>(const FwdParams&, cudaStream_t);

}  // namespace spaattn::cuda_detail
