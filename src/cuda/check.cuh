// CUDA error checks for library code: every runtime call is checked and a failure throws
// spaattn::Error (Kind::runtime) naming the call, never prints or exits.
#pragma once
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

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

// Runs a function-attribute call once per device for the code that owns it (a function-local
// `static OncePerDevice once;`, one per kernel instance): the attribute stays set for the
// function on that device, so launches after the first skip the driver call.
class OncePerDevice {
 public:
  template <class Set>
  void operator()(Set&& set) {
    int device = 0;
    SPAATTN_CUDA_CHECK(cudaGetDevice(&device));
    const uint64_t bit = device < 64 ? uint64_t{1} << device : 0;  // later devices: every call
    if (bit && (done_.load(std::memory_order_acquire) & bit)) return;
    set();
    if (bit) done_.fetch_or(bit, std::memory_order_release);
  }

 private:
  std::atomic<uint64_t> done_{0};
};

// Checks the launch of `kernel` (a configuration error shows up as the last error).
inline void check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw Error(Error::Kind::runtime,
                detail::concat("launch of ", kernel, ": ", cudaGetErrorString(err)));
}

}  // namespace spaattn::cuda_detail
