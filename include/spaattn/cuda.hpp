// CUDA entry points. All take device memory, run on the caller's stream (a cudaStream_t passed
// as void*, nullptr = the legacy default stream), allocate nothing and never synchronise.
#pragma once
#include <cstddef>
#include <cstdint>

#include "spaattn/layout.hpp"

namespace spaattn::cuda {

// True when the library was built with CUDA and a CUDA device is present.
bool available();

// Block-sparse attention (docs/methods.md) on the GPU: bf16 or f16 q/k/v/out [b, S, H, d]
// (d = 64 or 128, unit stride on d), lse f32 [b, S, H] (may be empty), mask CSR int32 in device
// memory, text_lengths int32 [b] in device memory (may be empty). Arguments are validated on the
// host (shapes, dtypes, devices, strides); the mask's indices are read on the device only and must
// be sorted, unique and < num_k_blocks, as dense_to_csr() produces them.
void block_sparse_attention(const AttentionArgs& args, const BlockMaskView& mask, TensorView out,
                            TensorView lse, void* stream);

// FP8 block-sparse attention on Hopper (8-bit operands: int8 Q, K; e4m3 V, P; docs/gpu.md, FP8),
// in two calls so that one quantisation serves several launches on the same q, k, v (several
// masks, or a Re-ttention reference step's two launches):
//   quantize_fp8 reads q, k, v of `args` and writes their 8-bit copies and scales into
//   `workspace` (device memory, 256-byte aligned, at least fp8_workspace_size(args) bytes);
//   block_sparse_attention_fp8 computes what block_sparse_attention computes, from the workspace
//   that quantize_fp8 filled for the same args (q, k, v themselves are not read), out and lse in
//   out's dtype / f32 as there. Both need d = 64 or 128, block_size 128 and a device of compute
//   capability 9.0 with a build holding sm_90a code, and throw naming the argument otherwise.
// Q and K are rounded to int8 with one scale per 128-token block and head, K after subtracting
// its mean over the sequence (the lse is exact in that term); V to FP8 e4m3 with one scale per
// channel and head; P to e4m3. Q K^T is exact in int32; P V is summed by the tensor cores over
// 4 key blocks at a time (they keep about 13 bits below the largest term) and those sums are
// added up in fp32.
size_t fp8_workspace_size(const AttentionArgs& args);
void quantize_fp8(const AttentionArgs& args, void* workspace, size_t workspace_bytes,
                  void* stream);
void block_sparse_attention_fp8(const AttentionArgs& args, const BlockMaskView& mask,
                                TensorView out, TensorView lse, const void* workspace,
                                size_t workspace_bytes, void* stream);

// Bytes of scratch memory dense_to_csr needs for `rows` mask rows.
size_t dense_to_csr_workspace_size(int64_t rows);
// Converts a dense u8 mask [batch, heads, num_q_blocks, num_k_blocks] (device) into CSR on the
// GPU: out.row_offsets int32 [rows + 1], out.col_indices int32 with room for rows * num_k_blocks.
void dense_to_csr(const TensorView& dense, BlockMaskView out, void* workspace, void* stream);

}  // namespace spaattn::cuda
