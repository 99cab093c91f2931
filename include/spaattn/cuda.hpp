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

// Bytes of scratch memory dense_to_csr needs for `rows` mask rows.
size_t dense_to_csr_workspace_size(int64_t rows);
// Converts a dense u8 mask [batch, heads, num_q_blocks, num_k_blocks] (device) into CSR on the
// GPU: out.row_offsets int32 [rows + 1], out.col_indices int32 with room for rows * num_k_blocks.
void dense_to_csr(const TensorView& dense, BlockMaskView out, void* workspace, void* stream);

}  // namespace spaattn::cuda
