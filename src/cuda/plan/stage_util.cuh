// Device helpers shared by the stage kernels (pool.cu, scores.cu, select.cu, rectify_terms.cu):
// 16-bit to fp32 conversion of 16-byte vectors and warp reductions over lane groups.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "spaattn/error.hpp"
#include "spaattn/tensor.hpp"

namespace spaattn::cuda::stages {

// Eight bf16 / f16 values of one 16-byte load as fp32.
template <class T>
__device__ __forceinline__ void unpack8(const uint4& raw, float (&out)[8]) {
  const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    float2 f;
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w[c]));
    } else {
      f = __half22float2(*reinterpret_cast<const __half2*>(&w[c]));
    }
    out[2 * c] = f.x;
    out[2 * c + 1] = f.y;
  }
}

// 16-byte asynchronous copy global -> shared (bypassing L1: every byte is read once), and the
// wait for all of this thread's copies.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;\n" ::: "memory");
}

// Sum / max over the `width` consecutive lanes of an aligned group (width a power of two <= 32).
template <int width>
__device__ __forceinline__ float group_sum(float x) {
#pragma unroll
  for (int o = width / 2; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
template <int width>
__device__ __forceinline__ float group_max(float x) {
#pragma unroll
  for (int o = width / 2; o > 0; o /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
template <int width>
__device__ __forceinline__ uint32_t group_or(uint32_t x) {
#pragma unroll
  for (int o = width / 2; o > 0; o /= 2) x |= __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Host: the checks every stage runs on a Q/K/V-like device tensor it reads with 16-byte loads.
inline void check_rows16(const TensorView& t, const char* name) {
  SPAATTN_CHECK_ARG(t.data != nullptr && t.rank == 4, name, "expected a [b, S, H, d] tensor");
  SPAATTN_CHECK_ARG(t.device == Device::cuda, name, "expected a CUDA tensor, got ",
                    to_string(t.device));
  SPAATTN_CHECK_ARG(t.dtype == DType::bf16 || t.dtype == DType::f16, name,
                    "expected dtype bfloat16 or float16 on the GPU, got ", to_string(t.dtype));
  SPAATTN_CHECK_ARG(t.stride[3] == 1, name, "expected unit stride on head_dim, got ", t.stride[3]);
  SPAATTN_CHECK_ARG(reinterpret_cast<uintptr_t>(t.data) % 16 == 0, name,
                    "expected a 16-byte aligned base pointer, got ", t.data);
  for (int d = 0; d < 3; ++d)
    SPAATTN_CHECK_ARG(t.stride[d] % 8 == 0, name,
                      "expected strides that are multiples of 8 elements (16 bytes), got ",
                      t.stride[d], " on dim ", d);
}

}  // namespace spaattn::cuda::stages
