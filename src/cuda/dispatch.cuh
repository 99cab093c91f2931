// Switch helpers from run-time values to the kernel's template parameters. Every default
// branch throws (naming the value) so an unsupported case never falls through silently.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "spaattn/error.hpp"
#include "spaattn/tensor.hpp"

namespace spaattn::cuda_detail {

template <class F>
void dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::bf16:
      return f(__nv_bfloat16{});
    case DType::f16:
      return f(__half{});
    default:
      throw Error(Error::Kind::invalid_argument,
                  detail::concat("unsupported dtype: ", to_string(dtype)));
  }
}

template <class F>
void dispatch_head_dim(int64_t head_dim, F&& f) {
  switch (head_dim) {
    case 64:
      return f(std::integral_constant<int, 64>{});
    case 128:
      return f(std::integral_constant<int, 128>{});
    default:
      throw Error(Error::Kind::invalid_argument,
                  detail::concat("unsupported head_dim: ", head_dim));
  }
}

template <class F>
void dispatch_block_size(int block_size, F&& f) {
  switch (block_size) {
    case 64:
      return f(std::integral_constant<int, 64>{});
    case 128:
      return f(std::integral_constant<int, 128>{});
    default:
      throw Error(Error::Kind::invalid_argument,
                  detail::concat("unsupported block_size: ", block_size));
  }
}

}  // namespace spaattn::cuda_detail
