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

  // The score half of update(): new running maxima, the probabilities packed as mma A fragments
  // (pa[m][k16 step]) and the row sums; the factors by which o must still be scaled come back in
  // alpha. With kMasked, keys at or beyond `valid` in this tile count as masked (probability 0;
  // a separate instance, so that full tiles pay nothing for the test). s is only
  // read: on sm90 it is a wgmma accumulator that must not be redefined while a product is in
  // flight. Returns whether any of this thread's maxima rose (else alpha is 1).
  // kSlack > 0: a row's maximum is only raised when a tile's exceeds it by more than kSlack in
  // log2 units (the probabilities then reach up to 2^kSlack), so that o is rescaled far less
  // often once the maxima are near their final values.
  template <class T, bool kMasked, float kSlack = 0.f, int NT>
  __device__ __forceinline__ bool scores(const float (&s)[MT][NT][4],
                                         uint32_t (&pa)[MT][NT / 2][4], float (&alpha)[MT][2],
                                         float scale_log2, int valid, int lane) {
    bool raised = false;
    const int col = 2 * (lane & 3);
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        float mx = row_max[m][hf];
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
          for (int j = 0; j < 2; ++j)
            if (!kMasked || n * 8 + col + j < valid) mx = fmaxf(mx, s[m][n][2 * hf + j]);
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const bool rise = kSlack > 0.f ? (mx - row_max[m][hf]) * scale_log2 > kSlack
                                       : mx != row_max[m][hf];
        if (kSlack > 0.f && !rise) mx = row_max[m][hf];
        // A row that has seen only masked keys keeps max -inf: subtract 0 instead of -inf so
        // that exp2 gives 0, not NaN.
        const float m_scaled = mx == -INFINITY ? 0.f : mx * scale_log2;
        alpha[m][hf] = exp2_approx(row_max[m][hf] * scale_log2 - m_scaled);  // 1 if unchanged
        raised |= rise;
        row_max[m][hf] = mx;
        float sum = 0.f;
#pragma unroll
        for (int n = 0; n < NT; n += 2) {
          float e[2][2];
#pragma unroll
          for (int h = 0; h < 2; ++h)
#pragma unroll
            for (int j = 0; j < 2; ++j) {
              const bool keep = !kMasked || (n + h) * 8 + col + j < valid;
              e[h][j] = keep ? exp2_approx(fmaf(s[m][n + h][2 * hf + j], scale_log2, -m_scaled))
                             : 0.f;
              sum += e[h][j];
            }
          // A fragment of k16 step n / 2: registers {0, 2} hold row lane / 4 (columns of tiles
          // n and n + 1), {1, 3} the row 8 below.
          pa[m][n / 2][hf] = Mma<T>::pack(e[0][0], e[0][1]);
          pa[m][n / 2][2 + hf] = Mma<T>::pack(e[1][0], e[1][1]);
        }
        row_sum[m][hf] = row_sum[m][hf] * alpha[m][hf] + sum;
      }
    return raised;
  }

  // The output half: o scaled by the factors of scores(). Once the running maxima settle, most
  // tiles raise none of a warp's rows, so callers skip it then (a warp-uniform branch).
  template <int DT>
  static __device__ __forceinline__ void rescale(float (&o)[MT][DT][4],
                                                 const float (&alpha)[MT][2]) {
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

  // Folds one tile of scores in: both halves at once (o is not being written elsewhere).
  template <class T, int NT, int DT>
  __device__ __forceinline__ void update(float (&s)[MT][NT][4], float (&o)[MT][DT][4],
                                         uint32_t (&pa)[MT][NT / 2][4], float scale_log2) {
    float alpha[MT][2];
    if (__any_sync(0xffffffffu, scores<T, false>(s, pa, alpha, scale_log2, NT * 8, 0)))
      rescale(o, alpha);
  }
};

}  // namespace spaattn::cuda_detail
