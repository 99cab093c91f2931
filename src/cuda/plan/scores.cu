// IPAR block scores and the GAPR decisions (docs/methods.md, Block-level attention P and GAPR;
// docs/gpu.md, Scores) in one pass over the pooled pairs.
//
// Kernel 1 (score_tiles): the grid covers, per (batch, head), 64 x 64 tiles of (query block i,
// key column) pairs, the key columns being the NV pooled video blocks and then the text tokens
// (read straight from K; only the valid t < L_t count). A video tile computes for every pair the
// raw dots q̄_i.k̄_j, δq_i.k̄_j and q̄_i.δk_j (fp32 FMA chains over e in order, 4 x 4 pairs per
// thread, operands staged transposed in shared memory 32 dims at a time); it writes the logit
// z_ij + log n_j into P, the bit "G_ij > E_ij" (the common factor n_i n_j dropped, as on the CPU)
// into the compensable bitmask, and the row's (max, sum of exp) over the tile into `partial`.
// A text tile only adds its (max, sum of exp). Computing GAPR here shares the q̄.k̄ dot with IPAR
// and leaves the rectification a pure weighted sum. Splitting the key axis across CTAs (instead
// of one CTA per query tile sweeping the whole row) keeps thousands of CTAs in flight, at the
// price of the small pass below.
// Kernel 2 (normalize_rows): one warp per row combines the tiles' (max, sum) into the row's max M
// and Z = sum_j n_j e^{z_ij} + sum_t e^{z_it}, then rewrites P_ij = e^{z_ij - M} / Z in place and
// P_i,text = (text sum) / Z, as cpu::implicit_full_attention does in fp32.
// GAPR near ties: the CPU sums each dot without FMA, so a pair with G and E equal to within fp32
// rounding may be decided the other way here.
// Measured on an H100 at S = 76,800, H = 40 (NV = 600), d = 128: 0.47 ms for both kernels, about
// 12 TFLOP/s of fp32 FMA against a ~67 TFLOP/s peak; a prefetch of the next 32 dims into
// registers, larger thread tiles or 3xTF32 tensor-core products would narrow that.
#include <cmath>

#include "cuda/check.cuh"
#include "cuda/dispatch.cuh"
#include "cuda/plan/stage_util.cuh"
#include "cuda/plan/stages.cuh"

namespace spaattn::cuda::stages {
namespace {

constexpr int kTile = 64;      // query blocks x key columns per CTA
constexpr int kChunk = 32;     // dims staged in shared memory at a time
constexpr int kThreads = 256;  // 16 x 16 threads, 4 x 4 pairs each
constexpr int kPad = 4;  // keeps the float4 reads aligned; the transposed stores conflict 4-way

struct TileSmem {
  float a[kChunk][kTile + kPad];   // q̄ᵀ
  float ad[kChunk][kTile + kPad];  // δqᵀ
  float b[kChunk][kTile + kPad];   // k̄ᵀ or the text keys, transposed
  float bd[kChunk][kTile + kPad];  // δkᵀ
};

// Stages rows [row0, row0 + 64) x dims [e0, e0 + 32) of an fp32 [rows, D] matrix, transposed.
template <int D>
__device__ __forceinline__ void stage_pooled(float (*dst)[kTile + kPad], const float* src, int row0,
                                             int rows, int e0) {
#pragma unroll
  for (int s = 0; s < 2; ++s) {
    const int x = threadIdx.x + s * kThreads, r = x / 8, e4 = x % 8;
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (row0 + r < rows) v = *reinterpret_cast<const float4*>(src + (row0 + r) * D + e0 + e4 * 4);
    dst[e4 * 4 + 0][r] = v.x;
    dst[e4 * 4 + 1][r] = v.y;
    dst[e4 * 4 + 2][r] = v.z;
    dst[e4 * 4 + 3][r] = v.w;
  }
}

template <class T, int D, bool kGapr>
__global__ void __launch_bounds__(kThreads, 2) score_tiles(const __grid_constant__ ScoreParams p) {
  __shared__ __align__(16) TileSmem sm;
  const Dims& dims = p.dims;
  const int nv = dims.nv, video_tiles = (nv + kTile - 1) / kTile;
  const int tiles = gridDim.x, jt = blockIdx.x, i0 = blockIdx.y * kTile;
  const int64_t bh = blockIdx.z;
  if (p.calibrated_choice && !reads_scores(p.calibrated_choice[bh])) return;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const float* qm = p.q_mean + bh * nv * D;
  const float* qd = p.q_dev + bh * nv * D;
  const bool video = jt < video_tiles;
  const int j0 = video ? jt * kTile : (jt - video_tiles) * kTile;  // key block or text token
  int cols = nv;  // valid key columns of this tile's kind
  if (!video) {
    const int b = static_cast<int>(bh / dims.heads);
    cols = p.text_lengths ? min(p.text_lengths[b * p.text_lengths_stride], dims.num_text)
                          : dims.num_text;
  }
  float2* part = p.partial + (bh * nv + i0) * tiles + jt;
  if (j0 >= cols) {  // a text tile past L_t: nothing to add
    if (tid < kTile && i0 + tid < nv) part[tid * tiles] = make_float2(-INFINITY, 0.f);
    return;
  }

  float dot[4][4] = {}, e1[4][4] = {}, e2[4][4] = {};
  for (int e0 = 0; e0 < D; e0 += kChunk) {
    stage_pooled<D>(sm.a, qm, i0, nv, e0);
    if (video) {
      stage_pooled<D>(sm.b, p.k_mean + bh * nv * D, j0, nv, e0);
      if (kGapr) {
        stage_pooled<D>(sm.ad, qd, i0, nv, e0);
        stage_pooled<D>(sm.bd, p.k_dev + bh * nv * D, j0, nv, e0);
      }
    } else {
      // 64 text keys x 32 dims of 16-bit values: one 16-byte load per thread.
      const int r = tid / 4, part8 = tid % 4, t = j0 + r;
      float x[8] = {};
      if (t < cols) {
        const int b = static_cast<int>(bh / dims.heads), h = static_cast<int>(bh % dims.heads);
        const T* k = static_cast<const T*>(p.k) + b * p.k_stride[0] +
                     static_cast<int64_t>(dims.text_offset + t) * p.k_stride[1] +
                     h * p.k_stride[2] + e0 + part8 * 8;
        unpack8<T>(__ldg(reinterpret_cast<const uint4*>(k)), x);
      }
#pragma unroll
      for (int c = 0; c < 8; ++c) sm.b[part8 * 8 + c][r] = x[c];
    }
    __syncthreads();
    if (video && kGapr) {
#pragma unroll 4
      for (int e = 0; e < kChunk; ++e) {
        const float4 a = *reinterpret_cast<const float4*>(&sm.a[e][ty * 4]);
        const float4 ad = *reinterpret_cast<const float4*>(&sm.ad[e][ty * 4]);
        const float4 b = *reinterpret_cast<const float4*>(&sm.b[e][tx * 4]);
        const float4 bd = *reinterpret_cast<const float4*>(&sm.bd[e][tx * 4]);
        const float av[4] = {a.x, a.y, a.z, a.w}, adv[4] = {ad.x, ad.y, ad.z, ad.w};
        const float bv[4] = {b.x, b.y, b.z, b.w}, bdv[4] = {bd.x, bd.y, bd.z, bd.w};
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            dot[r][c] = fmaf(av[r], bv[c], dot[r][c]);
            e1[r][c] = fmaf(adv[r], bv[c], e1[r][c]);
            e2[r][c] = fmaf(av[r], bdv[c], e2[r][c]);
          }
      }
    } else {
#pragma unroll 8
      for (int e = 0; e < kChunk; ++e) {
        const float4 a = *reinterpret_cast<const float4*>(&sm.a[e][ty * 4]);
        const float4 b = *reinterpret_cast<const float4*>(&sm.b[e][tx * 4]);
        const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
          for (int c = 0; c < 4; ++c) dot[r][c] = fmaf(av[r], bv[c], dot[r][c]);
      }
    }
    __syncthreads();
  }

  // Epilogue: 16 consecutive lanes (same ty) hold one row's 64 columns.
  const float last_count = static_cast<float>(dims.num_video - (nv - 1) * dims.block);
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int i = i0 + ty * 4 + r;
    float z[4], zmax = -INFINITY;
    uint32_t bits = 0;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int j = j0 + tx * 4 + c;
      const bool ok = i < nv && j < cols;
      z[c] = -INFINITY;
      if (ok) {
        if (video) {
          // n_j: B, or the true count of the last (partial) video block.
          z[c] =
              p.scale * dot[r][c] + logf(j == nv - 1 ? last_count : static_cast<float>(dims.block));
          p.P[(bh * nv + i) * (nv + 1) + j] = z[c];
          if (kGapr && fabsf(dot[r][c]) > fabsf(e1[r][c]) + fabsf(e2[r][c]))
            bits |= 1u << ((tx % 8) * 4 + c);
        } else {
          z[c] = p.scale * dot[r][c];
        }
        zmax = fmaxf(zmax, z[c]);
      }
    }
    zmax = group_max<16>(zmax);
    float s = 0.f;
#pragma unroll
    for (int c = 0; c < 4; ++c)
      if (z[c] != -INFINITY) s += expf(z[c] - zmax);
    s = group_sum<16>(s);
    if (tx == 0 && i < nv) part[(i - i0) * tiles] = make_float2(zmax, s);
    if (kGapr && video) {
      bits = group_or<8>(bits);
      const int w = j0 / 32 + tx / 8;
      if (tx % 8 == 0 && i < nv && w < dims.words)
        p.compensable[(bh * nv + i) * dims.words + w] = bits;
    }
  }
}

// One warp per video query row: P_ij = e^{z_ij - M} / Z and P_i,text.
__global__ void __launch_bounds__(256) normalize_rows(const __grid_constant__ ScoreParams p) {
  const Dims& dims = p.dims;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * 8 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= dims.video_rows()) return;
  if (p.calibrated_choice && !reads_scores(p.calibrated_choice[row / dims.nv])) return;
  const int nv = dims.nv, video_tiles = (nv + kTile - 1) / kTile;
  const int tiles = score_tiles(dims);
  const float2* part = p.partial + row * tiles;
  float m = -INFINITY;
  for (int t = lane; t < tiles; t += 32) m = fmaxf(m, part[t].x);
  m = group_max<32>(m);
  float z = 0.f, text = 0.f;
  for (int t = lane; t < tiles; t += 32) {
    const float2 pt = part[t];
    const float x = pt.x == -INFINITY ? 0.f : pt.y * expf(pt.x - m);
    z += x;
    if (t >= video_tiles) text += x;
  }
  z = group_sum<32>(z);
  text = group_sum<32>(text);
  const float inv = 1.f / z;  // z >= 1: the row's largest term contributes e^0
  float* P = p.P + row * (nv + 1);
  for (int j = lane; j < nv; j += 32) P[j] = expf(P[j] - m) * inv;
  if (lane == 0) P[nv] = text * inv;
}

}  // namespace

__host__ __device__ int score_tiles(const Dims& dims) {
  return (dims.nv + kTile - 1) / kTile + (dims.num_text + kTile - 1) / kTile;
}

ScoreParams make_score_params(const AttentionArgs& args, bool gapr, const Buffers& buf) {
  validate(args);
  check_rows16(args.k, "k");
  ScoreParams p;
  p.dims = make_dims(args.layout, args.batch(), args.heads(), args.head_dim());
  p.dtype = args.k.dtype;
  SPAATTN_CHECK_ARG(buf.q_mean && buf.k_mean && buf.q_dev && buf.k_dev, "buffers",
                    "expected the pooled arrays (kPooled)");
  SPAATTN_CHECK_ARG(buf.P && buf.partial && buf.compensable, "buffers",
                    "expected the score arrays (kScores)");
  p.q_mean = buf.q_mean;
  p.k_mean = buf.k_mean;
  p.q_dev = buf.q_dev;
  p.k_dev = buf.k_dev;
  p.k = args.k.data;
  for (int d = 0; d < 3; ++d) p.k_stride[d] = args.k.stride[d];
  if (!args.text_lengths.empty()) {
    SPAATTN_CHECK_ARG(args.text_lengths.device == Device::cuda, "text_lengths",
                      "expected a CUDA tensor, got ", to_string(args.text_lengths.device));
    p.text_lengths = args.text_lengths.ptr<const int32_t>();
    p.text_lengths_stride = args.text_lengths.stride[0];
  }
  p.scale = args.softmax_scale();
  p.gapr = gapr;
  p.P = buf.P;
  p.partial = buf.partial;
  p.compensable = buf.compensable;
  return p;
}

void launch_scores(const ScoreParams& p, cudaStream_t stream) {
  const Dims& d = p.dims;
  if (d.nv == 0) return;
  const dim3 grid(score_tiles(d), (d.nv + kTile - 1) / kTile, static_cast<unsigned>(d.bh()));
  cuda_detail::dispatch_dtype(p.dtype, [&](auto t) {
    using T = decltype(t);
    cuda_detail::dispatch_head_dim(d.dim, [&](auto dim) {
      constexpr int D = decltype(dim)::value;
      const auto kernel = p.gapr ? score_tiles<T, D, true> : score_tiles<T, D, false>;
      kernel<<<grid, kThreads, 0, stream>>>(p);
    });
  });
  cuda_detail::check_launch("score_tiles");
  const int64_t rows = d.video_rows();
  normalize_rows<<<static_cast<unsigned>((rows + 7) / 8), 256, 0, stream>>>(p);
  cuda_detail::check_launch("normalize_rows");
}

}  // namespace spaattn::cuda::stages
