// The rectification terms of Rectified SpaAttn at block granularity (docs/methods.md, R_i and C_i):
//   R_i = P_i,text + sum_{j in crit(i)} P_ij + sum_{j not in crit(i), not compensable} P_ij
//   C_i = sum_{j not in crit(i), compensable} P_ij v̄_j
// (without GAPR every non-critical block is compensated), the layout of the CPU Correction:
// R [bh, NV], C [bh, NV, d].
//
// C is a matrix product W V̄ per (batch, head) with W_ij = P_ij on the compensated pairs and 0
// elsewhere, so the kernel is a small tiled GEMM: a CTA owns 32 query blocks and all d columns
// and sweeps the key blocks 32 at a time. Each step builds the W tile from P and the two bitmasks
// (one 32-bit word per row covers the step, since steps start at multiples of 32), adds the
// uncompensated P_ij to the row's R on the side, and stages v̄'s rows; then every thread
// accumulates a 4 x 4 (d = 128) or 2 x 4 (d = 64) patch of C with FMAs. The GAPR decisions come
// from the scores pass (scores.cu), which already has the dot products.
#include "cuda/check.cuh"
#include "cuda/dispatch.cuh"
#include "cuda/plan/stage_util.cuh"
#include "cuda/plan/stages.cuh"

namespace spaattn::cuda::stages {
namespace {

constexpr int kRows = 32;  // query blocks per CTA
constexpr int kStep = 32;  // key blocks per step
constexpr int kThreads = 256;

template <int D, bool kGapr>
__global__ void __launch_bounds__(kThreads)
    rectify_kernel(const __grid_constant__ RectifyParams p) {
  constexpr int kColGroups = D / 4;  // float4 columns of C
  constexpr int kRowGroups = kThreads / kColGroups;
  constexpr int kRowsPerThread = kRows / kRowGroups;  // 4 (d = 128) or 2 (d = 64)
  // W is stored transposed; a row stride of 33 keeps the transposed stores conflict-free.
  __shared__ float w_s[kStep][kRows + 1];
  __shared__ __align__(16) float v_s[kStep][D];

  const Dims& dims = p.dims;
  const int nv = dims.nv, words = dims.words;
  const int i0 = blockIdx.x * kRows;
  const int64_t bh = blockIdx.y;
  if (p.calibrated_choice && !reads_scores(p.calibrated_choice[bh])) return;
  const int tid = threadIdx.x;
  // W builder: row bi of the tile, key blocks 4 * (tid % 8) .. + 3 of each step.
  const int bi = tid / 8, bj = (tid % 8) * 4, i_build = i0 + bi;
  const bool row_ok = i_build < nv;
  const float* P = p.P + (bh * nv + i_build) * (nv + 1);
  const uint32_t* crit = p.critical + (bh * nv + i_build) * words;
  const uint32_t* comp = kGapr ? p.compensable + (bh * nv + i_build) * words : nullptr;
  const float* vm = p.v_mean + bh * nv * D;
  // C patch of this thread.
  const int tx = tid % kColGroups, ty = tid / kColGroups;
  float acc[kRowsPerThread][4] = {};
  float r_sum = 0.f;

  for (int j0 = 0; j0 < nv; j0 += kStep) {
    const uint32_t crit_w = row_ok ? crit[j0 / 32] : 0u;
    const uint32_t comp_w = kGapr && row_ok ? comp[j0 / 32] : 0u;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int j = j0 + bj + c;
      float w = 0.f;
      if (row_ok && j < nv) {
        const float pij = P[j];
        const uint32_t bit = 1u << ((bj + c) % 32);
        const bool compensated = !(crit_w & bit) && (!kGapr || (comp_w & bit));
        if (compensated)
          w = pij;
        else
          r_sum += pij;
      }
      w_s[bj + c][bi] = w;
    }
    for (int x = tid; x < kStep * kColGroups; x += kThreads) {
      const int jj = x / kColGroups, e4 = x % kColGroups, j = j0 + jj;
      float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
      if (j < nv) v = *reinterpret_cast<const float4*>(vm + static_cast<int64_t>(j) * D + e4 * 4);
      *reinterpret_cast<float4*>(&v_s[jj][e4 * 4]) = v;
    }
    __syncthreads();
#pragma unroll 8
    for (int jj = 0; jj < kStep; ++jj) {
      const float4 v = *reinterpret_cast<const float4*>(&v_s[jj][tx * 4]);
#pragma unroll
      for (int a = 0; a < kRowsPerThread; ++a) {
        const float w = w_s[jj][ty * kRowsPerThread + a];
        acc[a][0] = fmaf(w, v.x, acc[a][0]);
        acc[a][1] = fmaf(w, v.y, acc[a][1]);
        acc[a][2] = fmaf(w, v.z, acc[a][2]);
        acc[a][3] = fmaf(w, v.w, acc[a][3]);
      }
    }
    __syncthreads();
  }

  r_sum = group_sum<8>(r_sum);
  if (tid % 8 == 0 && row_ok) p.R[bh * nv + i_build] = P[nv] + r_sum;  // text keys are critical
#pragma unroll
  for (int a = 0; a < kRowsPerThread; ++a) {
    const int i = i0 + ty * kRowsPerThread + a;
    if (i < nv)
      *reinterpret_cast<float4*>(p.C + (bh * nv + i) * D + tx * 4) =
          make_float4(acc[a][0], acc[a][1], acc[a][2], acc[a][3]);
  }
}

}  // namespace

RectifyParams make_rectify_params(const Dims& dims, bool gapr, const Buffers& buf) {
  RectifyParams p;
  p.dims = dims;
  p.gapr = gapr;
  SPAATTN_CHECK_ARG(buf.P && buf.critical && buf.v_mean && (buf.compensable || !gapr), "buffers",
                    "expected P, critical, v̄ and (with GAPR) compensable");
  SPAATTN_CHECK_ARG(buf.R && buf.C, "buffers", "expected R and C (kCorrection)");
  p.P = buf.P;
  p.critical = buf.critical;
  p.compensable = buf.compensable;
  p.v_mean = buf.v_mean;
  p.R = buf.R;
  p.C = buf.C;
  return p;
}

void launch_rectify(const RectifyParams& p, cudaStream_t stream) {
  const Dims& d = p.dims;
  if (d.nv == 0) return;
  const dim3 grid((d.nv + kRows - 1) / kRows, static_cast<unsigned>(d.bh()));
  cuda_detail::dispatch_head_dim(d.dim, [&](auto dim) {
    constexpr int D = decltype(dim)::value;
    const auto kernel = p.gapr ? rectify_kernel<D, true> : rectify_kernel<D, false>;
    kernel<<<grid, kThreads, 0, stream>>>(p);
  });
  cuda_detail::check_launch("rectify_kernel");
}

}  // namespace spaattn::cuda::stages
