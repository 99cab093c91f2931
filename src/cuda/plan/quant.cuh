// Q and K quantised to int8, V to FP8 e4m3, for the sm90 FP8 kernel (docs/gpu.md, FP8): the arrays of
// cuda_detail::Fp8Operands (attention/params.cuh) carved out of one workspace, and the passes
// that fill them:
//   stats:    per (batch item, head), the sum of K and the largest |V| of every channel over the
//             valid tokens (video, and text up to L_t): partials per chunk of rows, then added
//             up in a fixed order (no atomics: the same operands from run to run). Where pooling
//             runs in the same call, it writes the video blocks' partials as it reads K and V
//             (fp8_pool_stats), and this pass reads only the text rows;
//   quantise: per (batch item, head, block), the block's rows through the token order: K minus
//             its mean, Q and K scaled and rounded to int8, V to e4m3 and transposed; q . mean(K)
//             per row.
// Scales: Q and K one per block and head (largest |x| / 127), V one per channel and head
// (largest |v| / 448).
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuda/attention/params.cuh"
#include "spaattn/layout.hpp"

namespace spaattn::cuda::stages {

// Byte offsets of the arrays in the workspace (each 256-byte aligned) and its size.
struct Fp8Layout {
  size_t q8 = 0, k8 = 0, vt8 = 0, q_scale = 0, k_scale = 0, v_scale = 0, q_shift = 0, k_sum = 0,
         v_amax = 0, part = 0, total = 0;
};

// The arrays of bh (batch item, head) pairs of nb blocks, head dim d.
Fp8Layout fp8_layout(int64_t bh, int64_t nb, int64_t d);
// Checks that the call can run in FP8 (head dim 64 or 128, block size 128, 32-bit coordinates) and
// sizes its arrays; throws naming the argument.
Fp8Layout fp8_layout(const AttentionArgs& args);
cuda_detail::Fp8Operands fp8_operands(const Fp8Layout& layout, const void* workspace);

// Where pooling writes its partials of the statistics (PoolParams::fp8_part, fp8_chunks): one per
// video block, before the text rows' chunks, `chunks` per (batch item, head).
struct Fp8PoolStats {
  float* part = nullptr;
  int chunks = 0;
};
Fp8PoolStats fp8_pool_stats(const AttentionArgs& args, const Fp8Layout& layout, void* workspace);

// Fills the arrays (layout: fp8_layout of the call) from args.q / k / v (device bf16 / f16,
// checked by the caller); perm: the token order of the video rows (device int32 [N_v]) or
// nullptr. video_pooled: pooling of the same args has written the video blocks' partials
// (fp8_pool_stats) earlier on `stream`.
void launch_quantize_fp8(const AttentionArgs& args, const Fp8Layout& layout, const int32_t* perm,
                         void* workspace, cudaStream_t stream, bool video_pooled = false);

}  // namespace spaattn::cuda::stages
