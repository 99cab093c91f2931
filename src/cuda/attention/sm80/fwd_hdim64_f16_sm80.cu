// Portable kernel instances for head dim 64, float16: block sizes 128 and 64.
#include "cuda/attention/sm80/launch.cuh"

namespace spaattn::cuda_detail {

template void run_fwd_sm80<__half, 64, 128>(const FwdParams&, cudaStream_t);
template void run_fwd_sm80<__half, 64, 64>(const FwdParams&, cudaStream_t);

}  // namespace spaattn::cuda_detail
