// CUDA error checks for library code: every runtime call is checked and a failure throws
// spaattn::Error (Kind::runtime) naming the call, never prints or exits.
#pragma once
#include <cuda_runtime.h>

#include "spaattn/error.hpp"

#define SPAATTN_CUDA_CHECK(call)                                                     \
  do {                                                                               \
    const cudaError_t spaattn_err_ = (call);                                         \
    if (spaattn_err_ != cudaSuccess)                                                 \
      throw ::spaattn::Error(                                                        \
          ::spaattn::Error::Kind::runtime,                                           \
          ::spaattn::detail::concat(#call, ": ", cudaGetErrorString(spaattn_err_))); \
  } while (0)

namespace spaattn::cuda_detail {

// Checks the launch of `kernel` (a configuration error shows up as the last error).
inline void check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw Error(Error::Kind::runtime,
                detail::concat("launch of ", kernel, ": ", cudaGetErrorString(err)));
}

}  // namespace spaattn::cuda_detail
