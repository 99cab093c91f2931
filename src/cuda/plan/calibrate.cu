// Method::calibrated on the GPU (docs/methods.md, Calibrated correction; docs/gpu.md,
// Calibrated correction): the pooled attention of a query block's non-critical video blocks
// (the merge candidate), the error terms of every candidate at a reference step, and the choice
// and drift that follow from them.
//
// One CTA of 256 threads per (video query block i, bh). The block's Q rows (through the token
// order) sit in shared memory as fp32; the pooled keys k̄_j, v̄_j are swept 32 at a time: every
// thread computes 32 / (256 / B) logits m_j = s q_n.k̄_j + log n_j of one row (-inf for critical
// blocks and past NV), one thread per row updates that row's running maximum and sum, and every
// thread accumulates a patch of rows x 4 columns of O_pool. All sums run in a fixed order, so the
// results are deterministic. The error terms of a block are reduced over its threads (shuffles,
// then the warps in order) and written per block; a second launch sums them per bh in block
// order and chooses, so no atomics and no host synchronisation are involved.
//
// The kernels compute on CUDA cores. The merge term costs about 4 N_v NV d H flops per mask
// (twice per reference step, once per sparse step where a head chose merge), which is small
// next to the attention kernel at the sizes of the testbed but grows with NV.
#include <cmath>

#include "core/served_error.hpp"
#include "cuda/check.cuh"
#include "cuda/dispatch.cuh"
#include "cuda/plan/stage_util.cuh"
#include "cuda/plan/stages.cuh"
#include "spaattn/method.hpp"

namespace spaattn::cuda::stages {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kChunk = 32;  // pooled keys per step (one word of the crit bitmask)
constexpr int kNone = static_cast<int>(Candidate::none);
constexpr int kAffine = static_cast<int>(Candidate::affine);
constexpr int kScale = static_cast<int>(Candidate::scale);
constexpr int kRettention = static_cast<int>(Candidate::rettention);
constexpr int kMerge = static_cast<int>(Candidate::merge);

template <int D, int B>
struct Tile {
  static constexpr int kColGroups = D / 4;                 // 4 columns of O per thread
  static constexpr int kRowGroups = kThreads / kColGroups;
  static constexpr int kRows = B / kRowGroups;             // rows of O per thread
  static constexpr int kPerRow = kThreads / B;             // threads per row for the logits
  static constexpr int kKeys = kChunk / kPerRow;           // logits per thread and step
  // Shared memory in floats: Q [B][D + 1], k̄ [32][D + 1], v̄ [32][D], logits [B][33], and per
  // row the running maximum, the sum and the rescale factor. Odd row strides keep the column
  // reads of Q, k̄ and the logits conflict-free.
  static constexpr int kQ = B * (D + 1), kK = kChunk * (D + 1), kV = kChunk * D;
  static constexpr int kS = B * (kChunk + 1);
  static constexpr int kBytes = (kQ + kK + kV + kS + 3 * B) * 4;
  static_assert((kQ + kK) % 4 == 0, "v̄ rows must be 16-byte aligned");

  float *q, *k, *v, *s, *mx, *sum, *alpha;
  __device__ explicit Tile(float* base)
      : q(base), k(q + kQ), v(k + kK), s(v + kV), mx(s + kS), sum(mx + B), alpha(sum + B) {}
};

template <class T>
__device__ __forceinline__ float2 to_float2(uint32_t w) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w));
  } else {
    return __half22float2(*reinterpret_cast<const __half2*>(&w));
  }
}
template <class T>
__device__ __forceinline__ uint32_t from_float2(float a, float b) {
  uint32_t w;
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    *reinterpret_cast<__nv_bfloat162*>(&w) = __floats2bfloat162_rn(a, b);
  } else {
    *reinterpret_cast<__half2*>(&w) = __floats2half2_rn(a, b);
  }
  return w;
}
// Four consecutive elements (8-byte aligned).
template <class T>
__device__ __forceinline__ void load4(const T* src, float (&x)[4]) {
  const uint2 raw = *reinterpret_cast<const uint2*>(src);
  const float2 a = to_float2<T>(raw.x), b = to_float2<T>(raw.y);
  x[0] = a.x;
  x[1] = a.y;
  x[2] = b.x;
  x[3] = b.y;
}
template <class T>
__device__ __forceinline__ void store4(T* dst, const float (&x)[4]) {
  *reinterpret_cast<uint2*>(dst) = make_uint2(from_float2<T>(x[0], x[1]), from_float2<T>(x[2], x[3]));
}

// The sequence row of row r of video block i (r < the block's count).
__device__ __forceinline__ int64_t video_row(const CalibrateParams& p, int i, int r) {
  const int k = i * p.dims.block + r;
  return p.dims.video_offset + (p.perm ? __ldg(p.perm + k) : k);
}

// Q rows of block i as fp32 into the tile; rows past the block's count are zero.
template <class T, int D, int B>
__device__ void load_q(const CalibrateParams& p, const Tile<D, B>& t, int b, int h, int i,
                       int count) {
  const T* head = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[2];
  for (int x = threadIdx.x; x < B * D / 8; x += kThreads) {
    const int r = x / (D / 8), e = (x % (D / 8)) * 8;
    float v[8] = {};
    if (r < count)
      unpack8<T>(*reinterpret_cast<const uint4*>(head + video_row(p, i, r) * p.q_stride[1] + e),
                 v);
#pragma unroll
    for (int c = 0; c < 8; ++c) t.q[r * (D + 1) + e + c] = v[c];
  }
}

// The pooled attention of every row of the tile's Q over the video blocks j not set in
// crit_row (the row of the block's crit bitmask): o = O_pool (this thread's rows ty * kRows + a,
// columns 4 tx ..), and per row lse_pool in t.mx (-inf and o = 0 for a row without such
// blocks). Starts and ends with a barrier.
template <int D, int B>
__device__ void pooled_complement(const CalibrateParams& p, const Tile<D, B>& t,
                                  const float* k_mean, const float* v_mean,
                                  const uint32_t* crit_row, float (&o)[Tile<D, B>::kRows][4]) {
  using Tl = Tile<D, B>;
  const int tid = threadIdx.x, nv = p.dims.nv;
  const int tx = tid % Tl::kColGroups, ty = tid / Tl::kColGroups;
#pragma unroll
  for (int a = 0; a < Tl::kRows; ++a) o[a][0] = o[a][1] = o[a][2] = o[a][3] = 0.f;
  __syncthreads();  // the caller is done with t.mx and the Q tile is complete
  if (tid < B) {
    t.mx[tid] = -INFINITY;
    t.sum[tid] = 0.f;
  }
  const int sr = tid % B, part = tid / B;  // logits: row sr, keys part * kKeys ..
  for (int j0 = 0; j0 < nv; j0 += kChunk) {
    for (int x = tid; x < kChunk * D / 4; x += kThreads) {
      const int jj = x / (D / 4), e = (x % (D / 4)) * 4, j = j0 + jj;
      float4 kv = make_float4(0.f, 0.f, 0.f, 0.f), vv = kv;
      if (j < nv) {
        kv = *reinterpret_cast<const float4*>(k_mean + static_cast<int64_t>(j) * D + e);
        vv = *reinterpret_cast<const float4*>(v_mean + static_cast<int64_t>(j) * D + e);
      }
      float* kr = t.k + jj * (D + 1) + e;
      kr[0] = kv.x;
      kr[1] = kv.y;
      kr[2] = kv.z;
      kr[3] = kv.w;
      *reinterpret_cast<float4*>(t.v + jj * D + e) = vv;
    }
    __syncthreads();
    {
      float acc[Tl::kKeys] = {};
      const float* qr = t.q + sr * (D + 1);
      const float* kr = t.k + part * Tl::kKeys * (D + 1);
#pragma unroll 4
      for (int e = 0; e < D; ++e) {
        const float qv = qr[e];
#pragma unroll
        for (int jj = 0; jj < Tl::kKeys; ++jj) acc[jj] = fmaf(qv, kr[jj * (D + 1) + e], acc[jj]);
      }
      const uint32_t word = crit_row[j0 / 32];
#pragma unroll
      for (int jj = 0; jj < Tl::kKeys; ++jj) {
        const int c = part * Tl::kKeys + jj, j = j0 + c;
        const bool use = j < nv && !((word >> c) & 1u);
        const int n_j = min(p.dims.block, p.dims.num_video - j * p.dims.block);
        t.s[sr * (kChunk + 1) + c] =
            use ? fmaf(p.scale, acc[jj], logf(static_cast<float>(n_j))) : -INFINITY;
      }
    }
    __syncthreads();
    if (tid < B) {
      float* sr_row = t.s + tid * (kChunk + 1);
      float m = t.mx[tid];
      for (int c = 0; c < kChunk; ++c) m = fmaxf(m, sr_row[c]);
      if (m == -INFINITY) {
        for (int c = 0; c < kChunk; ++c) sr_row[c] = 0.f;
        t.alpha[tid] = 1.f;
      } else {
        const float a = expf(t.mx[tid] - m);
        float s = 0.f;
        for (int c = 0; c < kChunk; ++c) {
          const float e = expf(sr_row[c] - m);
          sr_row[c] = e;
          s += e;
        }
        t.sum[tid] = fmaf(t.sum[tid], a, s);
        t.mx[tid] = m;
        t.alpha[tid] = a;
      }
    }
    __syncthreads();
#pragma unroll
    for (int a = 0; a < Tl::kRows; ++a) {
      const int r = ty * Tl::kRows + a;
      const float al = t.alpha[r];
      const float* pr = t.s + r * (kChunk + 1);
      float x0 = o[a][0] * al, x1 = o[a][1] * al, x2 = o[a][2] * al, x3 = o[a][3] * al;
#pragma unroll 8
      for (int c = 0; c < kChunk; ++c) {
        const float w = pr[c];
        const float4 v = *reinterpret_cast<const float4*>(t.v + c * D + tx * 4);
        x0 = fmaf(w, v.x, x0);
        x1 = fmaf(w, v.y, x1);
        x2 = fmaf(w, v.z, x2);
        x3 = fmaf(w, v.w, x3);
      }
      o[a][0] = x0;
      o[a][1] = x1;
      o[a][2] = x2;
      o[a][3] = x3;
    }
    __syncthreads();  // the next step overwrites k̄, v̄ and the logits
  }
  if (tid < B) {
    const float s = t.sum[tid];
    t.alpha[tid] = s > 0.f ? 1.f / s : 0.f;
    t.mx[tid] = s > 0.f ? t.mx[tid] + logf(s) : -INFINITY;
  }
  __syncthreads();
#pragma unroll
  for (int a = 0; a < Tl::kRows; ++a) {
    const float inv = t.alpha[ty * Tl::kRows + a];
#pragma unroll
    for (int c = 0; c < 4; ++c) o[a][c] *= inv;
  }
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

template <class T, int D, int B>
__global__ void __launch_bounds__(kThreads) measure_kernel(const __grid_constant__ CalibrateParams p) {
  using Tl = Tile<D, B>;
  extern __shared__ __align__(16) float smem[];
  const Tile<D, B> t(smem);
  const int i = blockIdx.x, nv = p.dims.nv, words = p.dims.words;
  const int64_t bh = blockIdx.y;
  const int b = static_cast<int>(bh / p.dims.heads), h = static_cast<int>(bh % p.dims.heads);
  const int count = min(B, p.dims.num_video - i * B);
  const int tid = threadIdx.x, tx = tid % Tl::kColGroups, ty = tid / Tl::kColGroups;
  const int col = tx * 4;
  const float* k_mean = p.k_mean + bh * nv * D;
  const float* v_mean = p.v_mean + bh * nv * D;
  const int64_t blk = bh * nv + i;
  const T* out = static_cast<const T*>(p.out);
  double acc[kCalibrationTerms] = {};

  load_q<T, D, B>(p, t, b, h, i, count);
  float o[Tl::kRows][4];
  pooled_complement<D, B>(p, t, k_mean, v_mean, p.critical + blk * words, o);
  {
    const float R = p.R[blk];
    const float4 C = *reinterpret_cast<const float4*>(p.C + blk * D + col);
    const float Cc[4] = {C.x, C.y, C.z, C.w};
#pragma unroll
    for (int a = 0; a < Tl::kRows; ++a) {
      const int r = ty * Tl::kRows + a;
      if (r >= count) continue;
      const RowAt at = row_at(p, b, h, video_row(p, i, r));
      float full[4], spa[4];
      load4(out + at.out + col, full);
      load4(static_cast<const T*>(p.o_spa) + at.r * D + col, spa);
      const float2 w = merge_weights(p.lse_spa[at.r], t.mx[r]);
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const double none = spa[c] - full[c];
        const double affine = fmaf(R, spa[c], Cc[c]) - full[c];
        const double scale = R * spa[c] - full[c];
        const double merge = fmaf(w.x, spa[c], w.y * o[a][c]) - full[c];
        acc[0] += none * none;
        acc[1] += affine * affine;
        acc[2] += scale * scale;
        acc[3] += merge * merge;
      }
    }
  }
  if (p.o_then) {
    pooled_complement<D, B>(p, t, k_mean, v_mean, p.critical_then + blk * words, o);
    const float R = p.R_then[blk];
    const float4 C = *reinterpret_cast<const float4*>(p.C_then + blk * D + col);
    const float Cc[4] = {C.x, C.y, C.z, C.w};
    const float steps = static_cast<float>(p.k - 1) * p.drift[bh];
#pragma unroll
    for (int a = 0; a < Tl::kRows; ++a) {
      const int r = ty * Tl::kRows + a;
      if (r >= count) continue;
      const RowAt at = row_at(p, b, h, video_row(p, i, r));
      float full[4], then[4], delta[4];
      load4(out + at.out + col, full);
      load4(static_cast<const T*>(p.o_then) + at.r * D + col, then);
      load4(static_cast<const T*>(p.delta_then) + at.r * D + col, delta);
      const float lse_then = p.lse_then[at.r], rho = p.rho_then[at.r];
      float a_r = rho + steps;
      if (p.clamp) a_r = fminf(a_r, 1.f);
      const float2 w = merge_weights(lse_then, t.mx[r]);
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const double none = then[c] - full[c];
        const double affine = fmaf(R, then[c], Cc[c]) - full[c];
        const double scale = R * then[c] - full[c];
        const double rett = fmaf(a_r, then[c], delta[c]) - full[c];
        const double merge = fmaf(w.x, then[c], w.y * o[a][c]) - full[c];
        acc[4 + kNone] += none * none;
        acc[4 + kAffine] += affine * affine;
        acc[4 + kScale] += scale * scale;
        acc[4 + kRettention] += rett * rett;
        acc[4 + kMerge] += merge * merge;
      }
      if (tx == 0) acc[9] += expf(lse_then - p.lse_full[at.r]) - rho;
    }
  }

  // Block sum of the terms: lanes, then the warps in order.
#pragma unroll
  for (int x = 0; x < kCalibrationTerms; ++x)
    for (int off = 16; off > 0; off /= 2) acc[x] += __shfl_xor_sync(0xffffffffu, acc[x], off);
  __syncthreads();  // the tile is no longer read
  double* red = reinterpret_cast<double*>(smem);
  if (tid % 32 == 0)
#pragma unroll
    for (int x = 0; x < kCalibrationTerms; ++x) red[(tid / 32) * kCalibrationTerms + x] = acc[x];
  __syncthreads();
  if (tid < kCalibrationTerms) {
    double s = 0;
    for (int w = 0; w < kWarps; ++w) s += red[w * kCalibrationTerms + tid];
    p.partial[blk * kCalibrationTerms + tid] = s;
  }
}

// Per bh: the terms summed over the video blocks in order, each candidate's expected error, the
// least one (the lower index on a tie) and the drift (methods.md; the host's calibrated_step
// decides the same way).
__global__ void choose_kernel(const __grid_constant__ CalibrateParams p) {
  const int64_t bh = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (bh >= p.dims.bh()) return;
  double t[kCalibrationTerms] = {};
  for (int i = 0; i < p.dims.nv; ++i)
    for (int x = 0; x < kCalibrationTerms; ++x)
      t[x] += p.partial[(bh * p.dims.nv + i) * kCalibrationTerms + x];
  const bool has_prev = p.o_then != nullptr;
  double best = INFINITY;
  int choice = kNone;
  for (int c = 0; c < kCandidates; ++c) {
    double e = NAN;
    if (c != kRettention || has_prev) {
      const double e0 = c == kRettention ? 0.0 : t[c == kMerge ? 3 : c];
      e = has_prev ? detail::served_error_of(e0, t[4 + c], p.k) : e0;
    }
    p.errors[bh * kCandidates + c] = e;
    if (e < best) {
      best = e;
      choice = c;
    }
  }
  if (!has_prev) {
    // No previous reference step: Re-ttention's correction serves until the next one.
    p.choice[bh] = kRettention;
    p.drift[bh] = 0.f;
    return;
  }
  p.choice[bh] = choice;
  if (p.k > 1 && p.dims.num_video > 0)
    p.drift[bh] = static_cast<float>(t[9] / (static_cast<double>(p.dims.num_video) * (p.k - 1)));
}

template <class T, int D, int B>
__global__ void __launch_bounds__(kThreads) merge_kernel(const __grid_constant__ CalibrateParams p) {
  using Tl = Tile<D, B>;
  const int i = blockIdx.x, nv = p.dims.nv;
  const int64_t bh = blockIdx.y;
  if (p.choice[bh] != kMerge) return;
  extern __shared__ __align__(16) float smem[];
  const Tile<D, B> t(smem);
  const int b = static_cast<int>(bh / p.dims.heads), h = static_cast<int>(bh % p.dims.heads);
  const int count = min(B, p.dims.num_video - i * B);
  const int tid = threadIdx.x, tx = tid % Tl::kColGroups, ty = tid / Tl::kColGroups;
  const int col = tx * 4;
  load_q<T, D, B>(p, t, b, h, i, count);
  float o[Tl::kRows][4];
  pooled_complement<D, B>(p, t, p.k_mean + bh * nv * D, p.v_mean + bh * nv * D,
                          p.critical + (bh * nv + i) * p.dims.words, o);
  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int a = 0; a < Tl::kRows; ++a) {
    const int r = ty * Tl::kRows + a;
    if (r >= count) continue;
    const RowAt at = row_at(p, b, h, video_row(p, i, r));
    float x[4];
    load4(out + at.out + col, x);
    const float2 w = merge_weights(p.lse_spa[at.r], t.mx[r]);
#pragma unroll
    for (int c = 0; c < 4; ++c) x[c] = fmaf(w.x, x[c], w.y * o[a][c]);
    store4(out + at.out + col, x);
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
void launch_tile(Kernel kernel, int bytes, const CalibrateParams& p, cudaStream_t stream,
                 cuda_detail::OncePerDevice& once) {
  once([&] {
    SPAATTN_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  });
  const dim3 grid(static_cast<unsigned>(p.dims.nv), static_cast<unsigned>(p.dims.bh()));
  kernel<<<grid, kThreads, bytes, stream>>>(p);
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
  SPAATTN_CHECK_ARG(p.o_spa && p.lse_full && p.R && p.C && p.partial && p.choice && p.drift &&
                        p.errors,
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
      launch_tile(measure_kernel<T, D, B>, Tile<D, B>::kBytes, p, stream, once);
    });
    cuda_detail::check_launch("calibrate measure_kernel");
  }
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
    launch_tile(merge_kernel<T, D, B>, Tile<D, B>::kBytes, p, stream, once);
  });
  cuda_detail::check_launch("calibrate merge_kernel");
}

}  // namespace spaattn::cuda::stages
