// The attention kernels' epilogue in registers, shared by both families: normalisation of O_spa
// by the row sums, its lse, and the correction of epilogue.cuh as a compile-time functor, all in
// fp32 before O is rounded to the element type.
//
// Both families hold O in the same per-warp fragment layout (mma.sync m16n8 accumulators on
// sm80, wgmma m64nN accumulators on sm90, whose warp slices are the same): a thread holds rows
// warp_row + m * 16 + hf * 8 + lane / 4 and columns t * 8 + 2 * (lane % 4) + {0, 1}; per-row
// values (lse, rho) are written by the first lane of each quad. Rows are addressed through the
// work item's table of sequence rows, so every per-row array is indexed in the caller's order.
//
// A functor is constructed once per work item (block-level values such as R_i and the C_i row)
// and then called per row: row(p, cta, seq, pad, col, lane, lse, x, hf) rewrites x[t][2 hf],
// x[t][2 hf + 1] (t < D / 8) and may rewrite lse.
#pragma once
#include <cmath>

#include "cuda/attention/blocks.cuh"
#include "spaattn/error.hpp"
#include "spaattn/method.hpp"
#include "cuda/attention/softmax.cuh"

namespace spaattn::cuda_detail {

template <class T, int D>
struct EpiNone {
  __device__ __forceinline__ EpiNone(const FwdParams&, const CtaShared&, int) {}
  __device__ __forceinline__ void row(const FwdParams&, const CtaShared&, int64_t, bool, int, int,
                                      float&, float (&)[D / 8][4], int) const {}
};

// Rectified SpaAttn: O = R_i O_spa + C_i on video query blocks; text query rows keep O_spa.
template <class T, int D>
struct EpiBlockAffine {
  const float* c = nullptr;
  float a = 1.f;
  __device__ __forceinline__ EpiBlockAffine(const FwdParams& p, const CtaShared& cta, int col) {
    if (cta.qb < p.num_video_blocks) {
      const int64_t e =
          (static_cast<int64_t>(cta.b) * p.heads + cta.h) * p.num_video_blocks + cta.qb;
      a = p.epi.R[e];
      c = p.epi.C + e * D + col;
    }
  }
  __device__ __forceinline__ void row(const FwdParams&, const CtaShared&, int64_t, bool, int, int,
                                      float&, float (&x)[D / 8][4], int hf) const {
    if (!c) return;
#pragma unroll
    for (int t = 0; t < D / 8; ++t) {
      const float2 v = __ldg(reinterpret_cast<const float2*>(c + t * 8));
      x[t][2 * hf] = fmaf(a, x[t][2 * hf], v.x);
      x[t][2 * hf + 1] = fmaf(a, x[t][2 * hf + 1], v.y);
    }
  }
};

// O = a O_spa + Delta for one row of the Re-ttention cache (rho, Delta at the row's sequence
// position), a = rho + drift, clamped to 1 on request; padding rows are left alone.
template <class T, int D>
__device__ __forceinline__ void rettention_row(const FwdEpilogue& epi, const CtaShared& cta,
                                               int64_t seq, bool pad, int col, float drift,
                                               float (&x)[D / 8][4], int hf) {
  if (pad) return;
  const int64_t e =
      cta.b * epi.rho_stride[0] + seq * epi.rho_stride[1] + cta.h * epi.rho_stride[2];
  float a = epi.rho[e] + drift;
  if (epi.clamp) a = fminf(a, 1.f);
  const uint32_t* delta =
      epi.delta ? reinterpret_cast<const uint32_t*>(
                      static_cast<const T*>(epi.delta) + cta.b * epi.delta_stride[0] +
                      seq * epi.delta_stride[1] + cta.h * epi.delta_stride[2] + col)
                : nullptr;
#pragma unroll
  for (int t = 0; t < D / 8; ++t) {
    const float2 c = delta ? Mma<T>::unpack(delta[t * 4]) : make_float2(0.f, 0.f);
    x[t][2 * hf] = fmaf(a, x[t][2 * hf], c.x);
    x[t][2 * hf + 1] = fmaf(a, x[t][2 * hf + 1], c.y);
  }
}

// Re-ttention sparse step: O = a O_spa + Delta, a = rho + drift (clamped to 1 on request).
template <class T, int D>
struct EpiRowAffine {
  __device__ __forceinline__ EpiRowAffine(const FwdParams&, const CtaShared&, int) {}
  __device__ __forceinline__ void row(const FwdParams& p, const CtaShared& cta, int64_t seq,
                                      bool pad, int col, int, float&, float (&x)[D / 8][4],
                                      int hf) const {
    rettention_row<T, D>(p.epi, cta, seq, pad, col, p.epi.drift, x, hf);
  }
};

// Method::calibrated's sparse step: the candidate its (b, h) chose. none and merge leave O_spa
// (merge is completed by the pass that follows, from this launch's lse); affine and scale are
// the block-affine map (scale without C_i) on video query blocks; rettention is the row-affine
// map with the (b, h)'s own drift.
template <class T, int D>
struct EpiCalibrated {
  static constexpr int kAffine = static_cast<int>(Candidate::affine);
  static constexpr int kScale = static_cast<int>(Candidate::scale);
  static constexpr int kRettention = static_cast<int>(Candidate::rettention);
  int choice = 0;
  float a = 1.f, drift = 0.f;
  const float* c = nullptr;
  __device__ __forceinline__ EpiCalibrated(const FwdParams& p, const CtaShared& cta, int col) {
    const int64_t bh = static_cast<int64_t>(cta.b) * p.heads + cta.h;
    choice = cta.qb < p.num_video_blocks ? p.epi.choice[bh] : -1;  // text rows: O_spa
    if (choice == kAffine || choice == kScale) {
      const int64_t e = bh * p.num_video_blocks + cta.qb;
      a = p.epi.R[e];
      if (choice == kAffine) c = p.epi.C + e * D + col;
    } else if (choice == kRettention) {
      drift = p.epi.steps * p.epi.head_drift[bh];
    }
  }
  __device__ __forceinline__ void row(const FwdParams& p, const CtaShared& cta, int64_t seq,
                                      bool pad, int col, int, float&, float (&x)[D / 8][4],
                                      int hf) const {
    if (choice == kRettention) {
      rettention_row<T, D>(p.epi, cta, seq, pad, col, drift, x, hf);
    } else if (choice == kAffine || choice == kScale) {
#pragma unroll
      for (int t = 0; t < D / 8; ++t) {
        const float2 v =
            c ? __ldg(reinterpret_cast<const float2*>(c + t * 8)) : make_float2(0.f, 0.f);
        x[t][2 * hf] = fmaf(a, x[t][2 * hf], v.x);
        x[t][2 * hf + 1] = fmaf(a, x[t][2 * hf + 1], v.y);
      }
    }
  }
};

// Second launch of a Re-ttention reference step: this launch holds the complement (O_c, lse_c);
// the masked launch left (O_spa, lse_spa) in prev_out (at prev_stride) and prev_lse (at lse's
// strides).
template <class T, int D>
struct EpiMergeReference {
  __device__ __forceinline__ EpiMergeReference(const FwdParams&, const CtaShared&, int) {}
  __device__ __forceinline__ void row(const FwdParams& p, const CtaShared& cta, int64_t seq,
                                      bool pad, int col, int lane, float& lse,
                                      float (&x)[D / 8][4], int hf) const {
    const FwdEpilogue& epi = p.epi;
    float rho = 0.f, wc = 0.f;
    if (!pad) {
      const float ls =
          epi.prev_lse[cta.b * p.lse_stride[0] + seq * p.lse_stride[1] + cta.h * p.lse_stride[2]];
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
        static_cast<const T*>(epi.prev_out) + cta.b * epi.prev_stride[0] +
        seq * epi.prev_stride[1] + cta.h * epi.prev_stride[2] + col);
    uint32_t* delta = epi.delta_out
                          ? reinterpret_cast<uint32_t*>(
                                static_cast<T*>(epi.delta_out) + cta.b * epi.delta_stride[0] +
                                seq * epi.delta_stride[1] + cta.h * epi.delta_stride[2] + col)
                          : nullptr;
#pragma unroll
    for (int t = 0; t < D / 8; ++t) {
      const float d0 = wc * x[t][2 * hf], d1 = wc * x[t][2 * hf + 1];
      if (delta) delta[t * 4] = Mma<T>::pack(d0, d1);
      // rho = 0 (padding, no mass, empty mask row): O_spa is not read.
      const float2 s = rho > 0.f ? Mma<T>::unpack(prev[t * 4]) : make_float2(0.f, 0.f);
      x[t][2 * hf] = fmaf(rho, s.x, d0);
      x[t][2 * hf + 1] = fmaf(rho, s.y, d1);
    }
  }
};

// The weights of two partial attentions of a row over disjoint key sets, (w_a, w_b), and the
// lse of their union; both weights 0 and lse -inf when neither has mass.
__device__ __forceinline__ float3 merge_partials(float lse_a, float lse_b) {
  const float m = fmaxf(lse_a, lse_b);
  if (m == -INFINITY) return make_float3(0.f, 0.f, -INFINITY);
  const float ea = expf(lse_a - m), eb = expf(lse_b - m), sum = ea + eb;
  return make_float3(ea / sum, eb / sum, m + logf(sum));
}

// A row's value of an fp32 [b, S, H] array, read by the first lane of the quad that holds the
// row and shared with the other three: an array that the first lane then rewrites in place is
// never read after the write. (A quad's lanes hold the same row, so they are converged here.)
__device__ __forceinline__ float quad_load(const float* p, int lane) {
  const float v = (lane & 3) == 0 ? *p : 0.f;
  return __shfl_sync(0xFu << (lane & 28), v, lane & 28);
}

// Method::calibrated's reference step over four disjoint key sets (epilogue.cuh, partial_merge).
template <class T, int D>
struct EpiPartialMerge {
  // Many registers a row: the sm90 kernel does not run it while a product is in flight.
  static constexpr bool kRegisterHeavy = true;
  __device__ __forceinline__ EpiPartialMerge(const FwdParams&, const CtaShared&, int) {}
  __device__ __forceinline__ void row(const FwdParams& p, const CtaShared& cta, int64_t seq,
                                      bool, int col, int lane, float& lse, float (&x)[D / 8][4],
                                      int hf) const {
    const FwdEpilogue& e = p.epi;
    const int64_t li = cta.b * p.lse_stride[0] + seq * p.lse_stride[1] + cta.h * p.lse_stride[2];
    const auto row_of = [&](const void* base, const int64_t(&st)[3]) {
      return reinterpret_cast<uint32_t*>(const_cast<T*>(static_cast<const T*>(base)) +
                                         cta.b * st[0] + seq * st[1] + cta.h * st[2] + col);
    };
    if (e.merge_mode != MergeMode::side) {  // into, finish: x = merge(prev, x)
      const float3 w = merge_partials(quad_load(e.prev_lse + li, lane), lse);
      const uint32_t* prev = row_of(e.prev_out, e.prev_stride);
#pragma unroll
      for (int t = 0; t < D / 8; ++t) {
        const float2 v = w.x > 0.f ? Mma<T>::unpack(prev[t * 4]) : make_float2(0.f, 0.f);
        x[t][2 * hf] = fmaf(w.x, v.x, w.y * x[t][2 * hf]);
        x[t][2 * hf + 1] = fmaf(w.x, v.y, w.y * x[t][2 * hf + 1]);
      }
      lse = w.z;
      if (e.merge_mode == MergeMode::into) return;
    }
    // side: side = merge(side, x); finish: side = O_full = rho O_spa + Delta, Delta = w_c O_c.
    const float3 w = merge_partials(quad_load(e.side_lse + li, lane), lse);
    uint32_t* side = row_of(e.side_out, e.side_stride);
    const bool finish = e.merge_mode == MergeMode::finish;
    uint32_t* delta = finish && e.delta_out ? row_of(e.delta_out, e.delta_stride) : nullptr;
#pragma unroll
    for (int t = 0; t < D / 8; ++t) {
      const float2 v = w.x > 0.f ? Mma<T>::unpack(side[t * 4]) : make_float2(0.f, 0.f);
      const float d0 = w.x * v.x, d1 = w.x * v.y;  // the side's share
      side[t * 4] = Mma<T>::pack(fmaf(w.y, x[t][2 * hf], d0), fmaf(w.y, x[t][2 * hf + 1], d1));
      if (delta) delta[t * 4] = Mma<T>::pack(d0, d1);
    }
    if ((lane & 3) == 0) {
      e.side_lse[li] = w.z;
      if (finish)
        e.rho_out[cta.b * e.rho_stride[0] + seq * e.rho_stride[1] + cta.h * e.rho_stride[2]] = w.y;
    }
  }
};

// Run-time kind -> functor, for the launchers: f(tag) with tag::template type<T, D>.
template <template <class, int> class E>
struct EpiTag {
  template <class T, int D>
  using type = E<T, D>;
};

template <class F>
void dispatch_epilogue(EpilogueKind kind, F&& f) {
  switch (kind) {
    case EpilogueKind::none:
      return f(EpiTag<EpiNone>{});
    case EpilogueKind::block_affine:
      return f(EpiTag<EpiBlockAffine>{});
    case EpilogueKind::row_affine:
      return f(EpiTag<EpiRowAffine>{});
    case EpilogueKind::merge_reference:
      return f(EpiTag<EpiMergeReference>{});
    case EpilogueKind::calibrated:
      return f(EpiTag<EpiCalibrated>{});
    case EpilogueKind::partial_merge:
      return f(EpiTag<EpiPartialMerge>{});
  }
  throw Error(Error::Kind::invalid_argument,
              detail::concat("unsupported epilogue kind: ", static_cast<int>(kind)));
}

// Whether an epilogue functor says it needs many registers (kRegisterHeavy; false if absent).
template <class Epi>
constexpr bool register_heavy() {
  if constexpr (requires { Epi::kRegisterHeavy; })
    return Epi::kRegisterHeavy;
  else
    return false;
}

// Normalises the thread's rows of o by their sums, computes lse, applies the functor and writes
// lse; rows at or beyond qe.count are left alone (nothing is stored for them).
template <class T, int D, int MT, class Epi>
__device__ __forceinline__ void finish_rows(const FwdParams& p, const OnlineSoftmax<MT>& sm,
                                            float (&o)[MT][D / 8][4], const CtaShared& cta,
                                            const int32_t* seq_rows, const Span& qe, int warp_row,
                                            int lane) {
  constexpr int DT = D / 8;
  const int col = 2 * (lane & 3);
  const Epi epi(p, cta, col);
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
      const int64_t seq = seq_rows[r];
      epi.row(p, cta, seq, r >= qe.valid, col, lane, lse, x, hf);
      if (p.lse && (lane & 3) == 0)
        p.lse[cta.b * p.lse_stride[0] + seq * p.lse_stride[1] + cta.h * p.lse_stride[2]] = lse;
    }
}

}  // namespace spaattn::cuda_detail
