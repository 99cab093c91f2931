// Method::calibrated on the GPU (docs/methods.md, Calibrated correction; docs/gpu.md,
// Calibrated correction): the pooled attention of a query block's non-critical video blocks
// (the merge candidate), the error terms of every candidate at a reference step, the errors and
// drift that follow from them, and each sparse step's choice.
//
// One CTA of B / 16 warps per (video query block i, bh), with the portable attention kernel's
// fragments and tiles (sm80/tile.cuh): the block's Q rows (through the token order) in a swizzled shared tile, the
// pooled keys k̄_j, v̄_j staged 64 at a time, rounded to the element type, and the portable
// kernel's step (sm80/step.cuh) on the tensor cores with each key's additive term log n_j / s
// (-inf for the critical blocks): the pooled attention is block-sparse attention over NV pooled
// keys. The error terms are then computed from the output fragments in registers, reduced over
// the block (shuffles, then the warps in order) and written per block; a second launch sums them
// per bh in block order, so the results are deterministic and no atomics or host
// synchronisation are involved. A sparse step's choice is one more small launch, before its
// stages read it.
//
// Measured on an H200 at S = 76,800, H = 40, d = 128, NV = 600 (docs/gpu.md, Calibrated
// correction): see there for the cost of the pass against the attention kernel.
#include <cmath>

#include "core/expected_error.hpp"
#include "cuda/check.cuh"
#include "cuda/dispatch.cuh"
#include "cuda/attention/sm80/step.cuh"
#include "cuda/attention/sm80/tile.cuh"
#include "cuda/plan/stage_util.cuh"
#include "cuda/plan/stages.cuh"
#include "spaattn/method.hpp"

namespace spaattn::cuda::stages {
namespace {

using cuda_detail::LaneRows;
using cuda_detail::Mma;
using cuda_detail::OnlineSoftmax;

constexpr int kChunk = 64;  // pooled keys per staged tile and step (two words of the bitmask)
constexpr int kNone = static_cast<int>(Candidate::none);
constexpr int kAffine = static_cast<int>(Candidate::affine);
constexpr int kScale = static_cast<int>(Candidate::scale);
constexpr int kRettention = static_cast<int>(Candidate::rettention);
constexpr int kMerge = static_cast<int>(Candidate::merge);

// The portable kernel's fragments (sm80/tile.cuh), one m16 tile of query rows per warp (MT = 1:
// the output fragment, 4 D / 8 registers, leaves room for the scores of 64 keys without
// spills): a thread holds rows 16 warp + hf * 8 + lane / 4 and columns t * 8 + 2 (lane % 4) +
// {0, 1}.
template <int D, int B>
struct Shape {
  static constexpr int MT = 1, DT = D / 8;
  static constexpr int kWarps = B / 16, kThreads = 32 * kWarps;
  // Dynamic shared memory: the Q tile and one k̄, v̄ tile, 16-bit, swizzled.
  static constexpr int kQBytes = B * D * 2, kTileBytes = kChunk * D * 2;
  static constexpr int kBytes = kQBytes + 2 * kTileBytes;
};

// Static shared memory of both kernels: the block's sequence rows, each staged key's additive
// term (log n_j / s, or -inf for a critical block or past NV) and the block sum of the terms.
template <int B>
struct Statics {
  int32_t rows[B];
  float key_term[kChunk];
  double red[B / 16][kCalibrationTerms];
};

// The sequence row of row r of video block i (r < the block's count).
__device__ __forceinline__ int64_t video_row(const CalibrateParams& p, int i, int r) {
  const int k = i * p.dims.block + r;
  return p.dims.video_offset + (p.perm ? __ldg(p.perm + k) : k);
}

// The block's row table and its Q rows (rows past the count zero) into the Q tile; ends with a
// barrier.
template <class T, int D, int B>
__device__ void load_q(const CalibrateParams& p, Statics<B>& st, uint32_t q_smem, int b, int h,
                       int i, int count) {
  if (threadIdx.x < B) st.rows[threadIdx.x] = threadIdx.x < count ? video_row(p, i, threadIdx.x) : 0;
  __syncthreads();
  const T* head = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[2];
  cuda_detail::load_rows_indexed<T, B, D, Shape<D, B>::kThreads>(q_smem, head, p.q_stride[1],
                                                                  st.rows, 0, count);
  cuda_detail::cp_async_commit();
  cuda_detail::cp_async_wait<0>();
  __syncthreads();
}

// The pooled attention of this warp's query rows over the video blocks j not set in crit_row
// (the row of the block's crit bitmask): m_j = s q_n.k̄_j + log n_j, on the tensor cores with the
// portable kernel's step (sm80/step.cuh), k̄ and v̄ rounded to the element type as they are
// staged. o = O_pool and lse = lse_pool of the thread's rows (-inf and o = 0 for a row without
// such blocks). Starts and ends with a barrier (the Q tile must be complete).
template <class T, int D, int B>
__device__ void pooled_complement(const CalibrateParams& p, Statics<B>& st, uint32_t q_smem,
                                  int64_t bh, const uint32_t* crit_row,
                                  float (&o)[Shape<D, B>::MT][D / 8][4],
                                  float (&lse)[Shape<D, B>::MT][2]) {
  using Sh = Shape<D, B>;
  constexpr int MT = Sh::MT, N = kChunk, kThreads = Sh::kThreads;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nv = p.dims.nv;
  const uint32_t k_smem = q_smem + Sh::kQBytes, v_smem = k_smem + Sh::kTileBytes;
  const float* k_mean = p.k_mean + bh * nv * D;
  const float* v_mean = p.v_mean + bh * nv * D;
  const float scale_log2 = p.scale * 1.4426950408889634f;
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int t = 0; t < D / 8; ++t) o[m][t][0] = o[m][t][1] = o[m][t][2] = o[m][t][3] = 0.f;
  OnlineSoftmax<MT> sm;
  sm.init();
  const LaneRows<D> lr(lane);
  const uint32_t q_warp = q_smem + warp * MT * 16 * D * 2 + lr.a_row;
  for (int j0 = 0; j0 < nv; j0 += kChunk) {
    __syncthreads();  // the previous tile is consumed
    for (int x = tid; x < kChunk * D / 8; x += kThreads) {
      const int r = x / (D / 8), c = x % (D / 8), j = j0 + r;
      float kf[8] = {}, vf[8] = {};
      if (j < nv) {
        const float4* kr = reinterpret_cast<const float4*>(k_mean + static_cast<int64_t>(j) * D + c * 8);
        const float4* vr = reinterpret_cast<const float4*>(v_mean + static_cast<int64_t>(j) * D + c * 8);
        const float4 k0 = kr[0], k1 = kr[1], v0 = vr[0], v1 = vr[1];
        const float kk[8] = {k0.x, k0.y, k0.z, k0.w, k1.x, k1.y, k1.z, k1.w};
        const float vv[8] = {v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w};
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          kf[e] = kk[e];
          vf[e] = vv[e];
        }
      }
      const uint32_t off = cuda_detail::swizzled<D>(r, c);
      asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(k_smem + off),
                   "r"(Mma<T>::pack(kf[0], kf[1])), "r"(Mma<T>::pack(kf[2], kf[3])),
                   "r"(Mma<T>::pack(kf[4], kf[5])), "r"(Mma<T>::pack(kf[6], kf[7]))
                   : "memory");
      asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(v_smem + off),
                   "r"(Mma<T>::pack(vf[0], vf[1])), "r"(Mma<T>::pack(vf[2], vf[3])),
                   "r"(Mma<T>::pack(vf[4], vf[5])), "r"(Mma<T>::pack(vf[6], vf[7]))
                   : "memory");
    }
    if (tid < kChunk) {
      const int j = j0 + tid;
      const bool use = j < nv && !((crit_row[j / 32] >> (j % 32)) & 1u);
      const int n_j = use ? min(p.dims.block, p.dims.num_video - j * p.dims.block) : 1;
      st.key_term[tid] = use ? logf(static_cast<float>(n_j)) / p.scale : -INFINITY;
    }
    __syncthreads();
#pragma unroll
    for (int step = 0; step < kChunk / N; ++step) {
      if (j0 + step * N >= nv) break;  // the rest of the tile is past NV
      cuda_detail::attend_step_with<T, D, MT, N>(
          sm, o, q_warp, k_smem + step * N * D * 2 + lr.b_row,
          v_smem + step * N * D * 2 + lr.a_row, lr.xa, lr.xb, scale_log2,
          [&](float (&s)[MT][N / 8][4]) {
#pragma unroll
            for (int n = 0; n < N / 8; ++n)
#pragma unroll
              for (int j = 0; j < 2; ++j) {
                const float term = st.key_term[step * N + n * 8 + 2 * (lane & 3) + j];
#pragma unroll
                for (int m = 0; m < MT; ++m) {
                  s[m][n][j] += term;
                  s[m][n][2 + j] += term;
                }
              }
          });
    }
  }
  // The row sums are per-lane partial (softmax.cuh): add the quad's, then normalise.
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float l = sm.row_sum[m][hf];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const bool ok = l > 0.f;
      lse[m][hf] = ok ? (sm.row_max[m][hf] * scale_log2 + log2f(l)) * 0.69314718055994531f
                      : -INFINITY;
      const float inv = ok ? 1.f / l : 0.f;
#pragma unroll
      for (int t = 0; t < D / 8; ++t) {
        o[m][t][2 * hf] *= inv;
        o[m][t][2 * hf + 1] *= inv;
      }
    }
  __syncthreads();
}

// The merge candidate's weights of O_spa and O_pool for a row: both 0 when neither has mass.
__device__ __forceinline__ float2 merge_weights(float lse_spa, float lse_pool) {
  const float m = fmaxf(lse_spa, lse_pool);
  if (m == -INFINITY) return make_float2(0.f, 0.f);
  const float ws = expf(lse_spa - m), wp = expf(lse_pool - m), inv = 1.f / (ws + wp);
  return make_float2(ws * inv, wp * inv);
}

// Offsets of a row of the contiguous [b, S, H(, d)] arrays and of out.
struct RowAt {
  int64_t r;    // (b S + seq) H + h
  int64_t out;  // element offset of the row in out
};
__device__ __forceinline__ RowAt row_at(const CalibrateParams& p, int b, int h, int64_t seq) {
  const int64_t S = p.dims.num_video + p.dims.num_text;
  return RowAt{(b * S + seq) * p.dims.heads + h,
               b * p.out_stride[0] + seq * p.out_stride[1] + h * p.out_stride[2]};
}

// Two consecutive elements of a 16-bit array as floats.
template <class T>
__device__ __forceinline__ float2 load2(const void* base, int64_t at) {
  return Mma<T>::unpack(*reinterpret_cast<const uint32_t*>(static_cast<const T*>(base) + at));
}

// Sums the terms acc over the warp and leaves them in st.red[warp][first ..].
template <int B, int N>
__device__ __forceinline__ void warp_terms(Statics<B>& st, const double (&acc)[N], int first) {
#pragma unroll
  for (int x = 0; x < N; ++x) {
    double v = acc[x];
#pragma unroll
    for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
    if ((threadIdx.x & 31) == 0) st.red[threadIdx.x >> 5][first + x] = v;
  }
}

template <class T, int D, int B>
__global__ void __launch_bounds__(2 * B) measure_kernel(const __grid_constant__ CalibrateParams p) {
  using Sh = Shape<D, B>;
  constexpr int MT = Sh::MT;
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ Statics<B> st;
  const uint32_t q_smem = cuda_detail::smem_addr(smem);
  const int i = blockIdx.x, nv = p.dims.nv, words = p.dims.words;
  const int64_t bh = blockIdx.y, blk = bh * nv + i;
  const int b = static_cast<int>(bh / p.dims.heads), h = static_cast<int>(bh % p.dims.heads);
  const int count = min(B, p.dims.num_video - i * B);
  const int lane = threadIdx.x & 31, warp_row = (threadIdx.x >> 5) * MT * 16;
  const int col0 = 2 * (lane & 3);
  if (threadIdx.x < Sh::kWarps * kCalibrationTerms) (&st.red[0][0])[threadIdx.x] = 0.0;
  load_q<T, D, B>(p, st, q_smem, b, h, i, count);

  float o[MT][D / 8][4], lse_pool[MT][2];
  pooled_complement<T, D, B>(p, st, q_smem, bh, p.critical + blk * words, o, lse_pool);
  {  // distance 0: this step's mask
    double acc[4] = {};
    const float R = p.R[blk];
    const float* C = p.C + blk * D;
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int r = warp_row + m * 16 + hf * 8 + (lane >> 2);
        if (r >= count) continue;
        const RowAt at = row_at(p, b, h, st.rows[r]);
        const float2 w = merge_weights(p.lse_spa[at.r], lse_pool[m][hf]);
#pragma unroll
        for (int t = 0; t < D / 8; ++t) {
          const int col = t * 8 + col0;
          const float2 full = load2<T>(p.out, at.out + col);
          const float2 spa = load2<T>(p.o_spa, at.r * D + col);
          const float2 c = *reinterpret_cast<const float2*>(C + col);
          const float f[2] = {full.x, full.y}, x[2] = {spa.x, spa.y}, cc[2] = {c.x, c.y};
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const double none = x[j] - f[j];
            const double affine = fmaf(R, x[j], cc[j]) - f[j];
            const double scale = R * x[j] - f[j];
            const double merge = fmaf(w.x, x[j], w.y * o[m][t][2 * hf + j]) - f[j];
            acc[0] += none * none;
            acc[1] += affine * affine;
            acc[2] += scale * scale;
            acc[3] += merge * merge;
          }
        }
      }
    warp_terms(st, acc, 0);
  }
  if (p.o_then) {  // distance k: the previous reference step's mask
    pooled_complement<T, D, B>(p, st, q_smem, bh, p.critical_then + blk * words, o, lse_pool);
    double acc[6] = {};
    const float R = p.R_then[blk];
    const float* C = p.C_then + blk * D;
    const float steps = static_cast<float>(p.k - 1) * p.drift[bh];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int r = warp_row + m * 16 + hf * 8 + (lane >> 2);
        if (r >= count) continue;
        const RowAt at = row_at(p, b, h, st.rows[r]);
        const float lse_then = p.lse_then[at.r], rho = p.rho_then[at.r];
        float a = rho + steps;
        if (p.clamp) a = fminf(a, 1.f);
        const float2 w = merge_weights(lse_then, lse_pool[m][hf]);
#pragma unroll
        for (int t = 0; t < D / 8; ++t) {
          const int col = t * 8 + col0;
          const float2 full = load2<T>(p.out, at.out + col);
          const float2 then = load2<T>(p.o_then, at.r * D + col);
          const float2 delta = load2<T>(p.delta_then, at.r * D + col);
          const float2 c = *reinterpret_cast<const float2*>(C + col);
          const float f[2] = {full.x, full.y}, x[2] = {then.x, then.y}, cc[2] = {c.x, c.y};
          const float dl[2] = {delta.x, delta.y};
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const double none = x[j] - f[j];
            const double affine = fmaf(R, x[j], cc[j]) - f[j];
            const double scale = R * x[j] - f[j];
            const double rett = fmaf(a, x[j], dl[j]) - f[j];
            const double merge = fmaf(w.x, x[j], w.y * o[m][t][2 * hf + j]) - f[j];
            acc[kNone] += none * none;
            acc[kAffine] += affine * affine;
            acc[kScale] += scale * scale;
            acc[kRettention] += rett * rett;
            acc[kMerge] += merge * merge;
          }
        }
        if ((lane & 3) == 0) acc[5] += expf(lse_then - p.lse_full[at.r]) - rho;
      }
    warp_terms(st, acc, 4);
  }
  __syncthreads();
  if (threadIdx.x < kCalibrationTerms) {
    double sum = 0;
    for (int w = 0; w < Sh::kWarps; ++w) sum += st.red[w][threadIdx.x];
    p.partial[blk * kCalibrationTerms + threadIdx.x] = sum;
  }
}

// Per bh: the terms summed over the video blocks in order, each candidate's error at distances
// 0 and k, and the drift (methods.md; the host's calibrated_step records the same).
__global__ void errors_kernel(const __grid_constant__ CalibrateParams p) {
  const int64_t bh = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (bh >= p.dims.bh()) return;
  double t[kCalibrationTerms] = {};
  for (int i = 0; i < p.dims.nv; ++i)
    for (int x = 0; x < kCalibrationTerms; ++x)
      t[x] += p.partial[(bh * p.dims.nv + i) * kCalibrationTerms + x];
  const bool has_prev = p.o_then != nullptr;
  for (int c = 0; c < kCandidates; ++c) {
    p.error_ref[bh * kCandidates + c] = c == kRettention ? 0.0 : t[c == kMerge ? 3 : c];
    p.error_then[bh * kCandidates + c] = has_prev ? t[4 + c] : NAN;
  }
  if (!has_prev) {
    // No previous reference step: Re-ttention's correction with the configured drift serves
    // until the next one.
    p.drift[bh] = p.initial_drift;
    return;
  }
  if (p.k > 1 && p.dims.num_video > 0)
    p.drift[bh] = static_cast<float>(t[9] / (static_cast<double>(p.dims.num_video) * (p.k - 1)));
}

// Per bh: the candidate a sparse step at p.distance from the reference step applies.
__global__ void choose_kernel(const __grid_constant__ CalibrateParams p) {
  const int64_t bh = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (bh >= p.dims.bh()) return;
  p.choice[bh] = detail::choose_at(p.error_ref + bh * kCandidates,
                                   p.error_then + bh * kCandidates, p.k, p.distance);
}

template <class T, int D, int B>
__global__ void __launch_bounds__(2 * B) merge_kernel(const __grid_constant__ CalibrateParams p) {
  using Sh = Shape<D, B>;
  constexpr int MT = Sh::MT;
  const int i = blockIdx.x, nv = p.dims.nv;
  const int64_t bh = blockIdx.y;
  if (p.choice[bh] != kMerge) return;
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ Statics<B> st;
  const uint32_t q_smem = cuda_detail::smem_addr(smem);
  const int b = static_cast<int>(bh / p.dims.heads), h = static_cast<int>(bh % p.dims.heads);
  const int count = min(B, p.dims.num_video - i * B);
  const int lane = threadIdx.x & 31, warp_row = (threadIdx.x >> 5) * MT * 16;
  load_q<T, D, B>(p, st, q_smem, b, h, i, count);
  float o[MT][D / 8][4], lse_pool[MT][2];
  pooled_complement<T, D, B>(p, st, q_smem, bh, p.critical + (bh * nv + i) * p.dims.words, o,
                             lse_pool);
  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int r = warp_row + m * 16 + hf * 8 + (lane >> 2);
      if (r >= count) continue;
      const RowAt at = row_at(p, b, h, st.rows[r]);
      const float2 w = merge_weights(p.lse_spa[at.r], lse_pool[m][hf]);
#pragma unroll
      for (int t = 0; t < D / 8; ++t) {
        uint32_t* dst = reinterpret_cast<uint32_t*>(out + at.out + t * 8 + 2 * (lane & 3));
        const float2 x = Mma<T>::unpack(*dst);
        *dst = Mma<T>::pack(fmaf(w.x, x.x, w.y * o[m][t][2 * hf]),
                            fmaf(w.x, x.y, w.y * o[m][t][2 * hf + 1]));
      }
    }
}

// Instantiates kernel<T, D, B> for the call's dtype, head dim and block size, opts it into its
// shared memory and launches it over (NV, bh).
template <class Launch>
void dispatch_tile(const CalibrateParams& p, Launch&& launch) {
  cuda_detail::dispatch_dtype(p.dtype, [&](auto t) {
    cuda_detail::dispatch_head_dim(p.dims.dim, [&](auto d) {
      cuda_detail::dispatch_block_size(p.dims.block, [&](auto b) {
        launch(t, std::integral_constant<int, decltype(d)::value>{},
               std::integral_constant<int, decltype(b)::value>{});
      });
    });
  });
}

template <class Kernel>
void launch_tile(Kernel kernel, int threads, int bytes, const CalibrateParams& p,
                 cudaStream_t stream, cuda_detail::OncePerDevice& once) {
  once([&] {
    SPAATTN_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  });
  const dim3 grid(static_cast<unsigned>(p.dims.nv), static_cast<unsigned>(p.dims.bh()));
  kernel<<<grid, threads, bytes, stream>>>(p);
}

void check_common(const CalibrateParams& p) {
  SPAATTN_CHECK_ARG(p.q && p.k_mean && p.v_mean && p.out && p.critical && p.lse_spa, "calibrate",
                    "expected q, the pooled k̄ and v̄, out, the crit bits and lse_spa");
  SPAATTN_CHECK_ARG(p.dims.bh() <= 65535, "q", "expected batch * heads <= 65535, got ",
                    p.dims.bh());
}

}  // namespace

void launch_calibrate_measure(const CalibrateParams& p, cudaStream_t stream) {
  check_common(p);
  SPAATTN_CHECK_ARG(p.o_spa && p.lse_full && p.R && p.C && p.partial && p.drift && p.error_ref &&
                        p.error_then,
                    "calibrate", "expected O_spa, lse_full, R, C and the calibration arrays");
  SPAATTN_CHECK_ARG(!p.o_then || (p.lse_then && p.critical_then && p.R_then && p.C_then &&
                                  p.rho_then && p.delta_then && p.k >= 1),
                    "calibrate", "expected the previous mask's terms, rho, Delta and k >= 1");
  if (p.dims.bh() == 0) return;
  if (p.dims.nv > 0) {
    dispatch_tile(p, [&](auto t, auto d, auto b) {
      using T = decltype(t);
      constexpr int D = decltype(d)::value, B = decltype(b)::value;
      static cuda_detail::OncePerDevice once;
      launch_tile(measure_kernel<T, D, B>, Shape<D, B>::kThreads, Shape<D, B>::kBytes, p, stream,
                  once);
    });
    cuda_detail::check_launch("calibrate measure_kernel");
  }
  const int threads = 128;
  const auto blocks = static_cast<unsigned>((p.dims.bh() + threads - 1) / threads);
  errors_kernel<<<blocks, threads, 0, stream>>>(p);
  cuda_detail::check_launch("calibrate errors_kernel");
}

void launch_calibrate_choose(const CalibrateParams& p, cudaStream_t stream) {
  SPAATTN_CHECK_ARG(p.error_ref && p.error_then && p.choice, "calibrate",
                    "expected the errors and the choices");
  SPAATTN_CHECK_ARG(p.k >= 0 && p.distance >= 1, "calibrate",
                    "expected k >= 0 and a distance >= 1, got ", p.k, " and ", p.distance);
  if (p.dims.bh() == 0) return;
  const int threads = 128;
  const auto blocks = static_cast<unsigned>((p.dims.bh() + threads - 1) / threads);
  choose_kernel<<<blocks, threads, 0, stream>>>(p);
  cuda_detail::check_launch("calibrate choose_kernel");
}

void launch_calibrate_merge(const CalibrateParams& p, cudaStream_t stream) {
  check_common(p);
  SPAATTN_CHECK_ARG(p.choice, "calibrate", "expected the choices");
  if (p.dims.nv == 0 || p.dims.bh() == 0) return;
  dispatch_tile(p, [&](auto t, auto d, auto b) {
    using T = decltype(t);
    constexpr int D = decltype(d)::value, B = decltype(b)::value;
    static cuda_detail::OncePerDevice once;
    launch_tile(merge_kernel<T, D, B>, Shape<D, B>::kThreads, Shape<D, B>::kBytes, p, stream,
                once);
  });
  cuda_detail::check_launch("calibrate merge_kernel");
}

}  // namespace spaattn::cuda::stages
