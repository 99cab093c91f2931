// The kernel's epilogue in registers: normalisation of O_spa by the row sums, its lse, and the
// correction that fwd_epilogue.cuh specifies (block_affine, row_affine, merge_reference), all in
// fp32 before O is rounded to the element type. A thread holds rows warp_row + m * 16 + hf * 8 +
// lane / 4 and columns t * 8 + 2 * (lane % 4) + {0, 1} (the mma accumulator layout); per-row
// values (lse, rho) are written by the first lane of each quad. Rows are addressed through the
// CTA's table of sequence rows, so every per-row array is indexed in the caller's token order.
//
// merge_reference weighs the two launches by exp(lse_spa - lse_full) and exp(lse_c - lse_full):
// the second is 1 - rho, computed without the cancellation of 1 - rho when rho is close to 1.
#pragma once
#include <cmath>

#include "fwd_blocks.cuh"
#include "fwd_softmax.cuh"

namespace spaattn::cuda_detail {

template <class T, int D, int MT>
__device__ __forceinline__ void finish_rows(const FwdParams& p, const OnlineSoftmax<MT>& sm,
                                            float (&o)[MT][D / 8][4], const CtaShared& cta,
                                            const int32_t* seq_rows, const Span& qe, int warp_row,
                                            int lane) {
  constexpr int DT = D / 8;
  const FwdEpilogue& epi = p.epi;
  const int col = 2 * (lane & 3);
  // block_affine: the block's R and C row (video query blocks only; text rows keep O_spa).
  const float* c_blk = nullptr;
  float a_blk = 1.f;
  if (epi.kind == EpilogueKind::block_affine && cta.qb < p.num_video_blocks) {
    const int64_t e = (static_cast<int64_t>(cta.b) * p.heads + cta.h) * p.num_video_blocks + cta.qb;
    a_blk = epi.R[e];
    c_blk = epi.C + e * D + col;
  }
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float l = sm.row_sum[m][hf];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const int r = warp_row + m * 16 + hf * 8 + (lane >> 2);
      // Padding query rows (r >= valid) and rows that saw no valid key: O_spa = 0, lse = -inf.
      const bool ok = r < qe.valid && l > 0.f;
      const float inv = ok ? 1.f / l : 0.f;
      float lse =
          ok ? (sm.row_max[m][hf] * p.scale_log2 + log2f(l)) * 0.69314718055994531f : -INFINITY;
      float(&x)[DT][4] = o[m];
#pragma unroll
      for (int t = 0; t < DT; ++t) {
        x[t][2 * hf] *= inv;
        x[t][2 * hf + 1] *= inv;
      }
      if (r >= qe.count) continue;  // beyond the block: nothing is stored for this row
      const bool pad = r >= qe.valid;
      const int64_t seq = seq_rows[r];
      if (c_blk) {
#pragma unroll
        for (int t = 0; t < DT; ++t) {
          const float2 c = __ldg(reinterpret_cast<const float2*>(c_blk + t * 8));
          x[t][2 * hf] = fmaf(a_blk, x[t][2 * hf], c.x);
          x[t][2 * hf + 1] = fmaf(a_blk, x[t][2 * hf + 1], c.y);
        }
      } else if (epi.kind == EpilogueKind::row_affine && !pad) {
        const int64_t e =
            cta.b * epi.rho_stride[0] + seq * epi.rho_stride[1] + cta.h * epi.rho_stride[2];
        float a = epi.rho[e] + epi.drift;
        if (epi.clamp) a = fminf(a, 1.f);
        const uint32_t* delta =
            epi.delta ? reinterpret_cast<const uint32_t*>(
                            static_cast<const T*>(epi.delta) + cta.b * epi.delta_stride[0] +
                            seq * epi.delta_stride[1] + cta.h * epi.delta_stride[2] + col)
                      : nullptr;
#pragma unroll
        for (int t = 0; t < DT; ++t) {
          const float2 c = delta ? Mma<T>::unpack(delta[t * 4]) : make_float2(0.f, 0.f);
          x[t][2 * hf] = fmaf(a, x[t][2 * hf], c.x);
          x[t][2 * hf + 1] = fmaf(a, x[t][2 * hf + 1], c.y);
        }
      } else if (epi.kind == EpilogueKind::merge_reference) {
        // This launch holds the complement (O_c, lse_c); the masked launch left (O_spa, lse_spa)
        // in prev_out / prev_lse at the same places.
        float rho = 0.f, wc = 0.f;
        if (!pad) {
          const float ls = epi.prev_lse[cta.b * p.lse_stride[0] + seq * p.lse_stride[1] +
                                        cta.h * p.lse_stride[2]];
          const float mx = fmaxf(ls, lse);
          if (mx != -INFINITY) {
            const float es = expf(ls - mx), ec = expf(lse - mx), sum = es + ec;
            rho = es / sum;
            wc = ec / sum;
            lse = mx + logf(sum);
          }
        }
        const int64_t e =
            cta.b * epi.rho_stride[0] + seq * epi.rho_stride[1] + cta.h * epi.rho_stride[2];
        if ((lane & 3) == 0) epi.rho_out[e] = rho;
        const uint32_t* prev = reinterpret_cast<const uint32_t*>(
            static_cast<const T*>(epi.prev_out) + cta.b * p.out_stride[0] + seq * p.out_stride[1] +
            cta.h * p.out_stride[2] + col);
        uint32_t* delta = epi.delta_out
                              ? reinterpret_cast<uint32_t*>(
                                    static_cast<T*>(epi.delta_out) + cta.b * epi.delta_stride[0] +
                                    seq * epi.delta_stride[1] + cta.h * epi.delta_stride[2] + col)
                              : nullptr;
#pragma unroll
        for (int t = 0; t < DT; ++t) {
          const float d0 = wc * x[t][2 * hf], d1 = wc * x[t][2 * hf + 1];
          if (delta) delta[t * 4] = Mma<T>::pack(d0, d1);
          // rho = 0 (padding, no mass, empty mask row): O_spa is not read.
          const float2 s = rho > 0.f ? Mma<T>::unpack(prev[t * 4]) : make_float2(0.f, 0.f);
          x[t][2 * hf] = fmaf(rho, s.x, d0);
          x[t][2 * hf + 1] = fmaf(rho, s.y, d1);
        }
      }
      if (p.lse && (lane & 3) == 0)
        p.lse[cta.b * p.lse_stride[0] + seq * p.lse_stride[1] + cta.h * p.lse_stride[2]] = lse;
    }
}

}  // namespace spaattn::cuda_detail
