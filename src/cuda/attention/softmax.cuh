// Online softmax of the portable kernel, in registers. A thread holds two rows (lane / 4 and
// lane / 4 + 8) of each of its m16 tiles; a row's 64 scores are spread over the 4 lanes of a
// quad, so row maxima need two shuffles. Row sums stay per-lane partial until the epilogue
// (attention/finish.cuh).
// Exponentials are exp2 of (s * scale * log2 e - m * scale * log2 e), one FMA each.
#pragma once
#include <cmath>

#include "cuda/attention/ptx.cuh"

namespace spaattn::cuda_detail {

// Sets scores of keys at or beyond `valid` in this tile to -inf (only boundary tiles).
template <int MT, int NT>
__device__ __forceinline__ void mask_keys(float (&s)[MT][NT][4], int valid, int lane) {
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (n * 8 + 2 * (lane & 3) + (j & 1) >= valid) s[m][n][j] = -INFINITY;
}

template <int MT>
struct OnlineSoftmax {
  float row_max[MT][2];  // running maximum of the raw scores (-inf before any key)
  float row_sum[MT][2];  // this lane's share of sum exp(scale * (s - row_max))

  __device__ __forceinline__ void init() {
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        row_max[m][hf] = -INFINITY;
        row_sum[m][hf] = 0.f;
      }
  }

  // Folds one tile of scores in: rescales o, turns s into probabilities packed as mma A
  // fragments (pa[m][k16 step]).
  template <class T, int NT, int DT>
  __device__ __forceinline__ void update(float (&s)[MT][NT][4], float (&o)[MT][DT][4],
                                         uint32_t (&pa)[MT][NT / 2][4], float scale_log2) {
    float alpha[MT][2];
    bool raised = false;
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        float mx = row_max[m][hf];
#pragma unroll
        for (int n = 0; n < NT; ++n) mx = fmaxf(mx, fmaxf(s[m][n][2 * hf], s[m][n][2 * hf + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        // A row that has seen only masked keys keeps max -inf: subtract 0 instead of -inf so
        // that exp2 gives 0, not NaN.
        const float m_scaled = mx == -INFINITY ? 0.f : mx * scale_log2;
        alpha[m][hf] = exp2_approx(row_max[m][hf] * scale_log2 - m_scaled);  // 1 if unchanged
        raised |= mx != row_max[m][hf];
        row_max[m][hf] = mx;
        float sum = 0.f;
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const float e = exp2_approx(fmaf(s[m][n][2 * hf + j], scale_log2, -m_scaled));
            s[m][n][2 * hf + j] = e;
            sum += e;
          }
        row_sum[m][hf] = row_sum[m][hf] * alpha[m][hf] + sum;
      }
    // Once the running maxima settle, most tiles raise none of a warp's rows: skip rescaling
    // the output accumulator then (a warp-uniform branch).
    if (__any_sync(0xffffffffu, raised)) {
#pragma unroll
      for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int t = 0; t < DT; ++t) {
          o[m][t][0] *= alpha[m][0];
          o[m][t][1] *= alpha[m][0];
          o[m][t][2] *= alpha[m][1];
          o[m][t][3] *= alpha[m][1];
        }
    }
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int kk = 0; kk < NT / 2; ++kk) {
        pa[m][kk][0] = Mma<T>::pack(s[m][2 * kk][0], s[m][2 * kk][1]);
        pa[m][kk][1] = Mma<T>::pack(s[m][2 * kk][2], s[m][2 * kk][3]);
        pa[m][kk][2] = Mma<T>::pack(s[m][2 * kk + 1][0], s[m][2 * kk + 1][1]);
        pa[m][kk][3] = Mma<T>::pack(s[m][2 * kk + 1][2], s[m][2 * kk + 1][3]);
      }
  }
};

}  // namespace spaattn::cuda_detail
