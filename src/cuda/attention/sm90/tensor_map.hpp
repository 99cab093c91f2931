// Host side of the sm90 family: the tensor maps of K and V, and whether this build holds sm_90a
// code for the current device.
#pragma once
#include <cuda.h>

#include "cuda/attention/params.cuh"
#include "spaattn/tensor.hpp"

namespace spaattn::cuda_detail::sm90 {

// A 4-D map (d, S, H, b) of a [b, S, H, d] tensor with the given element strides (unit on d),
// boxes of 64 columns x `rows` rows, 128-byte swizzle, zero fill outside. Throws naming `name`
// when the driver refuses it.
CUtensorMap make_kv_map(const void* data, const int64_t (&stride)[3], const FwdParams& p, int dim,
                        int rows, DType dtype, const char* name);

// A 3-D map (row_bytes, rows, bh) of a contiguous u8 array [bh, rows, row_bytes] (an FP8
// operand of plan/quant.cuh): boxes of row_bytes x box_rows, swizzled over the row (128 or 64
// bytes). Throws naming `name`.
CUtensorMap make_fp8_map(const void* data, int64_t rows, int64_t bh, int row_bytes, int box_rows,
                         const char* name);

// CTAs of `per_sm` per multiprocessor on the current device (the persistent grid).
int resident_ctas(int per_sm);

// True when the library was built with sm_90a code and the current device runs it.
bool kernels_available();

}  // namespace spaattn::cuda_detail::sm90
