// One step of the portable kernel's main loop for one warp: S = Q K^T over kStepN keys,
// masking of keys past the tile's valid count, the online softmax update, and O += P V.
// Q, K and V are swizzled shared-memory tiles (sm80/tile.cuh); addresses carry this lane's
// ldmatrix row, xa / xb its swizzle XOR for A / trans-B and B fragments.
#pragma once
#include "cuda/attention/softmax.cuh"
#include "cuda/attention/ptx.cuh"

namespace spaattn::cuda_detail {

// The step with the scores of the N keys rewritten by score_mod(s) before the softmax (masking
// and additive terms; the scores are raw, before the softmax scale).
template <class T, int D, int MT, int N, class ScoreMod>
__device__ __forceinline__ void attend_step_with(OnlineSoftmax<MT>& sm, float (&o)[MT][D / 8][4],
                                                 uint32_t q_warp, uint32_t k_rows, uint32_t v_rows,
                                                 int xa, int xb, float scale_log2,
                                                 ScoreMod&& score_mod) {
  constexpr int NT = N / 8;
  float s[MT][NT][4];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int n = 0; n < NT; ++n) s[m][n][0] = s[m][n][1] = s[m][n][2] = s[m][n][3] = 0.f;
      // Each K fragment feeds all MT m16 tiles of the warp.
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t a[MT][4];
#pragma unroll
    for (int m = 0; m < MT; ++m)
      ldmatrix_x4(a[m], q_warp + m * 16 * D * 2 + (((2 * kk) ^ xa) << 4));
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t kb[4];
      ldmatrix_x4(kb, k_rows + np * 16 * D * 2 + (((2 * kk) ^ xb) << 4));
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        Mma<T>::run(s[m][2 * np], a[m], kb[0], kb[1]);
        Mma<T>::run(s[m][2 * np + 1], a[m], kb[2], kb[3]);
      }
    }
  }
  score_mod(s);

  uint32_t pa[MT][NT / 2][4];
  sm.template update<T>(s, o, pa, scale_log2);

  // O += P V: V fragments through ldmatrix.trans (V is [key][d], the mma wants it by column).
#pragma unroll
  for (int kk = 0; kk < NT / 2; ++kk)
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      uint32_t vb[4];
      ldmatrix_x4_trans(vb, v_rows + kk * 16 * D * 2 + (((2 * dp) ^ xa) << 4));
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        Mma<T>::run(o[m][2 * dp], pa[m][kk], vb[0], vb[1]);
        Mma<T>::run(o[m][2 * dp + 1], pa[m][kk], vb[2], vb[3]);
      }
    }
}

// The kernel's step: keys at or beyond `valid` are masked.
template <class T, int D, int MT, int N>
__device__ __forceinline__ void attend_step(OnlineSoftmax<MT>& sm, float (&o)[MT][D / 8][4],
                                            uint32_t q_warp, uint32_t k_rows, uint32_t v_rows,
                                            int xa, int xb, int valid, int lane, float scale_log2) {
  attend_step_with<T, D, MT, N>(sm, o, q_warp, k_rows, v_rows, xa, xb, scale_log2,
                                [&](float (&s)[MT][N / 8][4]) {
                                  if (valid < N) mask_keys<MT, N / 8>(s, valid, lane);
                                });
}

}  // namespace spaattn::cuda_detail
