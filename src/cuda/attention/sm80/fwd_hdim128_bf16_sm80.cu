// Portable kernel instances for head dim 128, bfloat16: block sizes 128 and 64.
#include "cuda/attention/sm80/launch.cuh"

namespace spaattn::cuda_detail {

template void run_fwd_sm80<__nv_bfloat16, 128, 128>(const FwdParams&, cudaStream_t);
template void run_fwd_sm80<__nv_bfloat16, 128, 64>(const FwdParams&, cudaStream_t);

}  // namespace spaattn::cuda_detail
