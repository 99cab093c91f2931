// Row access for the CPU stages: reads one token row (d elements) of a [b, S, H, d] view of any
// floating dtype as fp32, and writes one back rounded to the view's dtype. The dtype switch sits
// outside the element loop so that the f32 and bf16 paths are plain loops the compiler vectorises;
// every stage converts its inputs with these once and then works on contiguous fp32 buffers.
#pragma once
#include <cstdint>
#include <cstring>

#include "spaattn/error.hpp"
#include "spaattn/layout.hpp"
#include "spaattn/tensor.hpp"

namespace spaattn::cpu {

// The CPU stages read and write host memory only. validate() has put k, v, text_lengths and the
// outputs on q's device, so checking q covers them all.
inline void check_host(const AttentionArgs& args) {
  SPAATTN_CHECK_ARG(args.q.device == Device::cpu, "q",
                    "the CPU reference needs host tensors, got device ", to_string(args.q.device));
}

// a . b over d fp32 elements, accumulated in fp32 in index order.
inline float dot(const float* a, const float* b, int64_t d) {
  float acc = 0.f;
  for (int64_t e = 0; e < d; ++e) acc += a[e] * b[e];
  return acc;
}

inline bool is_float(DType dt) { return dt == DType::f32 || dt == DType::bf16 || dt == DType::f16; }

// Element offset of row (b, n, h) of a [b, S, H, d] view.
inline int64_t row_offset(const TensorView& t, int64_t b, int64_t n, int64_t h) {
  return b * t.stride[0] + n * t.stride[1] + h * t.stride[2];
}

// dst[0 .. d) = t[b, n, h, 0 .. d) as float.
inline void load_row(const TensorView& t, int64_t b, int64_t n, int64_t h, int64_t d, float* dst) {
  const int64_t off = row_offset(t, b, n, h);
  switch (t.dtype) {
    case DType::f32:
      std::memcpy(dst, t.ptr<const float>() + off, static_cast<size_t>(d) * sizeof(float));
      return;
    case DType::bf16: {
      const bf16* src = t.ptr<const bf16>() + off;
      for (int64_t e = 0; e < d; ++e) dst[e] = static_cast<float>(src[e]);
      return;
    }
    case DType::f16: {
      const f16* src = t.ptr<const f16>() + off;
      for (int64_t e = 0; e < d; ++e) dst[e] = static_cast<float>(src[e]);
      return;
    }
    default:
      SPAATTN_CHECK_ARG(false, "tensor", "expected a floating dtype, got ", to_string(t.dtype));
  }
}

// t[b, n, h, 0 .. d) = src rounded to t's dtype.
inline void store_row(const TensorView& t, int64_t b, int64_t n, int64_t h, int64_t d,
                      const float* src) {
  const int64_t off = row_offset(t, b, n, h);
  switch (t.dtype) {
    case DType::f32:
      std::memmove(t.ptr<float>() + off, src, static_cast<size_t>(d) * sizeof(float));
      return;
    case DType::bf16: {
      bf16* dst = t.ptr<bf16>() + off;
      for (int64_t e = 0; e < d; ++e) dst[e] = bf16(src[e]);
      return;
    }
    case DType::f16: {
      f16* dst = t.ptr<f16>() + off;
      for (int64_t e = 0; e < d; ++e) dst[e] = f16(src[e]);
      return;
    }
    default:
      SPAATTN_CHECK_ARG(false, "tensor", "expected a floating dtype, got ", to_string(t.dtype));
  }
}

// Writes value into element (b, n, h) of an f32 [b, S, H] view (the lse outputs).
inline void store_scalar(const TensorView& t, int64_t b, int64_t n, int64_t h, float value) {
  t.ptr<float>()[b * t.stride[0] + n * t.stride[1] + h * t.stride[2]] = value;
}

// Reads element (b, n, h) of a [b, S, H] view of any floating dtype.
inline float load_scalar(const TensorView& t, int64_t b, int64_t n, int64_t h) {
  return load_as_float(t.data, t.dtype, b * t.stride[0] + n * t.stride[1] + h * t.stride[2]);
}

}  // namespace spaattn::cpu
