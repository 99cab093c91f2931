// Portable kernel instances for head dim 64, float16: block sizes 128 and 64.
#include "fwd_launch.cuh"

namespace spaattn::cuda_detail {

template void run_fwd<__half, 64, 128>(const FwdParams&, cudaStream_t);
template void run_fwd<__half, 64, 64>(const FwdParams&, cudaStream_t);

}  // namespace spaattn::cuda_detail
