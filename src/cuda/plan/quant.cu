// quant.cuh: the statistics passes and the quantisation pass of the FP8 operands.
#include <cuda_fp8.h>

#include <limits>

#include "cuda/attention/api.hpp"
#include "cuda/attention/blocks.cuh"
#include "cuda/check.cuh"
#include "cuda/dispatch.cuh"
#include "cuda/plan/quant.cuh"
#include "cuda/plan/stage_util.cuh"

namespace spaattn::cuda::stages {
namespace {

using cuda_detail::FwdParams;

constexpr int kB = 128;         // the FP8 block size
constexpr int kThreads = 256;   // D / 8 threads of 8 channels per row, 2048 / D rows at a time
constexpr int kStatRows = 1024;    // sequence rows per CTA of the statistics pass
constexpr float kE4m3Max = 448.f;  // V
constexpr float kI8Max = 127.f;     // Q, K

// Chunks of kStatRows rows that the statistics pass cuts `rows` sequence rows into.
int64_t stat_chunks(int64_t rows) { return (rows + kStatRows - 1) / kStatRows; }

// Fp8Operands as the quantisation writes them.
struct Fp8Arrays {
  uint8_t *q8, *k8, *vt8;
  float *q_scale, *k_scale, *v_scale, *q_shift;
};

struct QuantParams {
  FwdParams geo;  // q, k, v, strides, text_lengths, video_perm and the block geometry
  Fp8Arrays out;
  float* part;    // [bh, chunks, 2, d]: per chunk of rows, K's sums and |V|'s maxima
  int chunks;     // partials per (batch item, head)
  // The statistics pass: sequence rows [row_begin, row_end) in chunks of kStatRows, written to
  // partials part_first, part_first + 1, ... (the ones before part_first come from pooling).
  int row_begin, row_end, part_first;
  float* k_sum;   // [bh, d]
  float* v_amax;  // [bh, d]
};

__device__ __forceinline__ int text_len_of(const FwdParams& p, int b) {
  return p.text_lengths ? min(max(p.text_lengths[b], 0), p.num_text) : p.num_text;
}

template <class T>
__device__ __forceinline__ void load8(const void* base, const int64_t (&stride)[3], int b, int n,
                                      int h, int c, float (&x)[8]) {
  const T* row = static_cast<const T*>(base) + b * stride[0] + n * stride[1] + h * stride[2] + c;
  unpack8<T>(__ldg(reinterpret_cast<const uint4*>(row)), x);
}

// Eight floats (already scaled into e4m3 range) to eight e4m3 bytes.
__device__ __forceinline__ uint2 to_e4m3(const float (&x)[8]) {
  uint32_t w[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const uint32_t lo = __nv_cvt_float2_to_fp8x2(make_float2(x[4 * h], x[4 * h + 1]),
                                                 __NV_SATFINITE, __NV_E4M3);
    const uint32_t hi = __nv_cvt_float2_to_fp8x2(make_float2(x[4 * h + 2], x[4 * h + 3]),
                                                 __NV_SATFINITE, __NV_E4M3);
    w[h] = lo | (hi << 16);
  }
  return make_uint2(w[0], w[1]);
}

// Eight floats (already scaled into [-127, 127]) to eight int8 bytes, rounded to nearest.
__device__ __forceinline__ uint2 to_i8(const float (&x)[8]) {
  uint32_t w[2] = {0, 0};
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const int v = max(-127, min(127, __float2int_rn(x[e])));
    w[e / 4] |= (static_cast<uint32_t>(v) & 0xFFu) << (8 * (e % 4));
  }
  return make_uint2(w[0], w[1]);
}

// Largest value over the CTA (every thread gets it).
__device__ __forceinline__ float cta_max(float x, float* scratch) {
  x = group_max<32>(x);
  __syncthreads();  // scratch may still be read from the previous call
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = x;
  __syncthreads();
  float m = scratch[0];
#pragma unroll
  for (int w = 1; w < kThreads / 32; ++w) m = fmaxf(m, scratch[w]);
  return m;
}

// Grid (chunks, H, b): chunk blockIdx.x's sums and maxima, written whole (zeros where it holds
// no valid row); fp8_reduce_kernel adds them up in a fixed order, so that the statistics, and
// with them the quantised operands, are the same from run to run.
template <class T, int kD>
__global__ void __launch_bounds__(kThreads) fp8_stats_kernel(const __grid_constant__ QuantParams qp) {
  constexpr int kTpr = kD / 8, kRows = kThreads / kTpr;  // threads per row, rows at a time
  const FwdParams& p = qp.geo;
  const int h = blockIdx.y, b = blockIdx.z;
  const int rg = threadIdx.x / kTpr, c0 = (threadIdx.x % kTpr) * 8;
  const int text_len = text_len_of(p, b);
  float sum[8] = {}, amax[8] = {};
  const int first = qp.row_begin + blockIdx.x * kStatRows;
  const int last = min(qp.row_end, first + kStatRows);
  for (int n = first + rg; n < last; n += kRows) {
    const bool video = n >= p.video_offset && n < p.video_offset + p.num_video;
    const bool text = n >= p.text_offset && n < p.text_offset + text_len;
    if (!video && !text) continue;
    float k[8], v[8];
    load8<T>(p.k, p.k_stride, b, n, h, c0, k);
    load8<T>(p.v, p.v_stride, b, n, h, c0, v);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      sum[e] += k[e];
      amax[e] = fmaxf(amax[e], fabsf(v[e]));
    }
  }
  __shared__ float s_sum[kRows][kD], s_max[kRows][kD];
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    s_sum[rg][c0 + e] = sum[e];
    s_max[rg][c0 + e] = amax[e];
  }
  __syncthreads();
  if (threadIdx.x < kD) {
    float s = 0.f, m = 0.f;
#pragma unroll
    for (int g = 0; g < kRows; ++g) {
      s += s_sum[g][threadIdx.x];
      m = fmaxf(m, s_max[g][threadIdx.x]);
    }
    const int64_t chunk = qp.part_first + blockIdx.x;
    float* out = qp.part + ((static_cast<int64_t>(b) * p.heads + h) * qp.chunks + chunk) * 2 * kD;
    out[threadIdx.x] = s;
    out[kD + threadIdx.x] = m;
  }
}

// Grid (H, b), kD threads: channel threadIdx.x's sum and maximum over the partials, in order,
// and the channel's V scale.
template <int kD>
__global__ void __launch_bounds__(kD) fp8_reduce_kernel(const __grid_constant__ QuantParams qp) {
  const int64_t bh = static_cast<int64_t>(blockIdx.y) * qp.geo.heads + blockIdx.x;
  const float* part = qp.part + bh * qp.chunks * 2 * kD + threadIdx.x;
  float s = 0.f, m = 0.f;
  for (int c = 0; c < qp.chunks; ++c) {
    s += part[c * 2 * kD];
    m = fmaxf(m, part[c * 2 * kD + kD]);
  }
  const int64_t at = bh * kD + threadIdx.x;
  qp.k_sum[at] = s;
  qp.v_amax[at] = m;
  qp.out.v_scale[at] = m > 0.f ? m / kE4m3Max : 1.f;
}

// Grid (num_blocks * H, b): block j = x / H of head h = x % H of batch item b (neighbouring CTAs
// read neighbouring heads of the same tokens, which share DRAM pages). The block's K, Q and V rows
// are copied into shared memory up front (cp.async, 3 * 128 * d * 2 bytes), so that all of them
// are in flight at once; each thread then reads back only the chunks it copied itself.
template <class T, int kD>
__global__ void __launch_bounds__(kThreads, 2)
    fp8_quantize_kernel(const __grid_constant__ QuantParams qp) {
  constexpr int kTpr = kD / 8, kRows = kThreads / kTpr, kPasses = kB / kRows;
  const FwdParams& p = qp.geo;
  const Fp8Arrays& f = qp.out;
  const int j = blockIdx.x / p.heads, h = blockIdx.x % p.heads, b = blockIdx.y;
  const int rg = threadIdx.x / kTpr, chunk = threadIdx.x % kTpr, c0 = chunk * 8;
  const int64_t bh = static_cast<int64_t>(b) * p.heads + h;
  const int text_len = text_len_of(p, b);
  const cuda_detail::Span span = cuda_detail::block_span<kB>(p, j, text_len);
  const bool permuted = p.video_perm && j < p.num_video_blocks;
  const int64_t block = bh * p.num_q_blocks + j;  // index of (bh, j)
  __shared__ float scratch[kThreads / 32];

  // tile[t][r][chunk]: row r of K (t = 0), Q and V, 16-bit.
  extern __shared__ uint4 tile[];
  {
    const T* src[3] = {static_cast<const T*>(p.k) + b * p.k_stride[0] + h * p.k_stride[2] + c0,
                       static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[2] + c0,
                       static_cast<const T*>(p.v) + b * p.v_stride[0] + h * p.v_stride[2] + c0};
    const int64_t row_stride[3] = {p.k_stride[1], p.q_stride[1], p.v_stride[1]};
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {
      const int r = i * kRows + rg;
      if (r >= span.valid) continue;
      const int64_t n =
          permuted ? p.video_offset + __ldg(p.video_perm + j * kB + r) : span.begin + r;
#pragma unroll
      for (int t = 0; t < 3; ++t)
        cp_async16(&tile[(t * kB + r) * kTpr + chunk], src[t] + n * row_stride[t]);
    }
  }
  cp_async_wait_all();
  // Rows r of tensor t as floats (zeros past the block's valid rows).
  float x[kPasses][8];
  auto read = [&](int t) {
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {
      const int r = i * kRows + rg;
      if (r < span.valid) {
        unpack8<T>(tile[(t * kB + r) * kTpr + chunk], x[i]);
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) x[i][e] = 0.f;
      }
    }
  };

  const int count = p.num_video + text_len;
  float mean[8], vinv[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    mean[e] = count > 0 ? qp.k_sum[bh * kD + c0 + e] / static_cast<float>(count) : 0.f;
    const float amax = qp.v_amax[bh * kD + c0 + e];
    vinv[e] = amax > 0.f ? kE4m3Max / amax : 1.f;
  }

  // K: smoothed by its mean, one scale for the block.
  read(0);
  float amax = 0.f;
#pragma unroll
  for (int i = 0; i < kPasses; ++i)
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      if (i * kRows + rg < span.valid) x[i][e] -= mean[e];
      amax = fmaxf(amax, fabsf(x[i][e]));
    }
  amax = cta_max(amax, scratch);
  float inv = amax > 0.f ? kI8Max / amax : 1.f;
  uint8_t* k8 = f.k8 + block * kB * kD;
#pragma unroll
  for (int i = 0; i < kPasses; ++i) {
    const int r = i * kRows + rg;
#pragma unroll
    for (int e = 0; e < 8; ++e) x[i][e] *= inv;
    *reinterpret_cast<uint2*>(k8 + r * kD + c0) = to_i8(x[i]);
  }
  if (threadIdx.x == 0) f.k_scale[block] = 1.f / inv;

  // Q: one scale for the block; q . mean(K) per row, from the unrounded values.
  read(1);
  amax = 0.f;
#pragma unroll
  for (int i = 0; i < kPasses; ++i) {
    const int r = i * kRows + rg;
    float dot = 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      dot = fmaf(x[i][e], mean[e], dot);
      amax = fmaxf(amax, fabsf(x[i][e]));
    }
    dot = group_sum<kTpr>(dot);
    if (chunk == 0) f.q_shift[block * kB + r] = dot;
  }
  amax = cta_max(amax, scratch);
  inv = amax > 0.f ? kI8Max / amax : 1.f;
  uint8_t* q8 = f.q8 + block * kB * kD;
#pragma unroll
  for (int i = 0; i < kPasses; ++i) {
    const int r = i * kRows + rg;
#pragma unroll
    for (int e = 0; e < 8; ++e) x[i][e] *= inv;
    *reinterpret_cast<uint2*>(q8 + r * kD + c0) = to_i8(x[i]);
  }
  if (threadIdx.x == 0) f.q_scale[block] = 1.f / inv;

  // V: per-channel scales, then transposed through shared memory. sv takes the place of K's
  // rows, which no thread reads after the first cta_max.
  read(2);
  auto* sv = reinterpret_cast<uint8_t(*)[kD + 8]>(tile);  // [kB][kD + 8] e4m3, row per key
  static_assert(kB * (kD + 8) <= kB * kD * 2, "sv must fit in K's rows");
#pragma unroll
  for (int i = 0; i < kPasses; ++i) {
    const int r = i * kRows + rg;
#pragma unroll
    for (int e = 0; e < 8; ++e) x[i][e] *= vinv[e];
    *reinterpret_cast<uint2*>(&sv[r][c0]) = to_e4m3(x[i]);
  }
  __syncthreads();
  uint8_t* vt8 = f.vt8 + block * kD * kB;
  for (int c16 = threadIdx.x; c16 < kD * kB / 16; c16 += kThreads) {
    const int c = c16 / (kB / 16), p0 = (c16 % (kB / 16)) * 16;
    uint32_t w[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      w[q] = 0;
#pragma unroll
      for (int t = 0; t < 4; ++t)
        w[q] |= static_cast<uint32_t>(sv[p0 + cuda_detail::key_of_position(4 * q + t)][c])
                << (8 * t);
    }
    *reinterpret_cast<uint4*>(vt8 + c * kB + p0) = make_uint4(w[0], w[1], w[2], w[3]);
  }
}

size_t align256(size_t n) { return (n + 255) / 256 * 256; }

Fp8Arrays carve(const Fp8Layout& l, void* workspace) {
  auto* base = static_cast<uint8_t*>(workspace);
  return {base + l.q8,
          base + l.k8,
          base + l.vt8,
          reinterpret_cast<float*>(base + l.q_scale),
          reinterpret_cast<float*>(base + l.k_scale),
          reinterpret_cast<float*>(base + l.v_scale),
          reinterpret_cast<float*>(base + l.q_shift)};
}

}  // namespace

Fp8Layout fp8_layout(const AttentionArgs& args) {
  SPAATTN_CHECK_ARG(args.head_dim() == 64 || args.head_dim() == 128, "q",
                    "FP8 precision supports head_dim 64 or 128, got ", args.head_dim());
  SPAATTN_CHECK_ARG(args.layout.block_size == kB, "layout.block_size",
                    "FP8 precision supports block_size 128, got ", args.layout.block_size);
  // check_gpu_call bounds batch * heads * blocks and S below 2^31; the copy engine's row
  // coordinates (block * 128 within a head) must stay below 2^31 as well.
  const int64_t bh = args.batch() * args.heads(), nb = args.layout.num_blocks();
  constexpr int64_t kMaxInt = std::numeric_limits<int32_t>::max();
  SPAATTN_CHECK_ARG(nb * kB < kMaxInt && bh < kMaxInt && nb * args.heads() < kMaxInt, "q",
                    "expected blocks * 128, blocks * heads and batch * heads < 2^31, got ", nb,
                    " blocks, ", args.heads(), " heads and ", bh, " (batch, head) pairs");
  SPAATTN_CHECK_ARG(args.batch() <= 65535 && args.heads() <= 65535, "q",
                    "FP8 quantisation supports batch and heads up to 65535, got ", args.batch(),
                    " and ", args.heads());
  return fp8_layout(bh, nb, args.head_dim());
}

Fp8Layout fp8_layout(int64_t bh, int64_t nb, int64_t d) {
  const size_t tiles = static_cast<size_t>(bh * nb) * kB * d;
  Fp8Layout l;
  size_t at = 0;
  auto take = [&](size_t bytes) {
    const size_t here = at;
    at += align256(bytes);
    return here;
  };
  l.q8 = take(tiles);
  l.k8 = take(tiles);
  l.vt8 = take(tiles);
  l.q_scale = take(static_cast<size_t>(bh * nb) * 4);
  l.k_scale = take(static_cast<size_t>(bh * nb) * 4);
  l.v_scale = take(static_cast<size_t>(bh) * d * 4);
  l.q_shift = take(static_cast<size_t>(bh * nb) * kB * 4);
  l.k_sum = take(static_cast<size_t>(bh) * d * 4);
  l.v_amax = take(static_cast<size_t>(bh) * d * 4);
  // Partials: the statistics pass's chunks of the sequence (at most nb blocks of kB rows), or
  // pooling's video blocks and the pass's chunks of the text rows (fewer than nb + those).
  l.part = take(static_cast<size_t>(bh * (nb + stat_chunks(nb * kB))) * 2 * d * 4);
  l.total = at;
  return l;
}

cuda_detail::Fp8Operands fp8_operands(const Fp8Layout& l, const void* workspace) {
  const Fp8Arrays a = carve(l, const_cast<void*>(workspace));
  return {a.q8, a.k8, a.vt8, a.q_scale, a.k_scale, a.v_scale, a.q_shift};
}

Fp8PoolStats fp8_pool_stats(const AttentionArgs& args, const Fp8Layout& l, void* workspace) {
  return {reinterpret_cast<float*>(static_cast<uint8_t*>(workspace) + l.part),
          static_cast<int>(args.layout.num_video_blocks() + stat_chunks(args.layout.num_text))};
}

void launch_quantize_fp8(const AttentionArgs& args, const Fp8Layout& l, const int32_t* perm,
                         void* workspace, cudaStream_t stream, bool video_pooled) {
  QuantParams qp;
  qp.geo = cuda_detail::make_fwd_params(args, BlockMaskView{}, args.q, TensorView{});
  qp.geo.video_perm = perm;
  qp.out = carve(l, workspace);
  auto* base = static_cast<uint8_t*>(workspace);
  qp.k_sum = reinterpret_cast<float*>(base + l.k_sum);
  qp.v_amax = reinterpret_cast<float*>(base + l.v_amax);
  qp.part = reinterpret_cast<float*>(base + l.part);
  if (video_pooled) {  // the video rows' partials are pooling's; the pass covers the text rows
    qp.chunks = fp8_pool_stats(args, l, workspace).chunks;
    qp.row_begin = static_cast<int>(args.layout.text_offset());
    qp.row_end = static_cast<int>(args.layout.text_offset() + args.layout.num_text);
    qp.part_first = static_cast<int>(args.layout.num_video_blocks());
  } else {
    qp.chunks = static_cast<int>(stat_chunks(args.seq_len()));
    qp.row_begin = 0;
    qp.row_end = static_cast<int>(args.seq_len());
    qp.part_first = 0;
  }
  const int64_t H = args.heads(), nb = args.layout.num_blocks();
  const dim3 stats(static_cast<unsigned>(stat_chunks(qp.row_end - qp.row_begin)), H, args.batch());
  const dim3 heads(H, args.batch());
  const dim3 quant(static_cast<unsigned>(nb * H), args.batch());
  cuda_detail::dispatch_dtype(args.q.dtype, [&](auto t) {
    cuda_detail::dispatch_head_dim(args.head_dim(), [&](auto d) {
      using T = decltype(t);
      constexpr int D = decltype(d)::value;
      constexpr int smem = 3 * kB * D * 2;  // the block's K, Q and V rows, 16-bit
      static cuda_detail::OncePerDevice smem_opt_in;
      smem_opt_in([&] {
        SPAATTN_CUDA_CHECK(cudaFuncSetAttribute(
            fp8_quantize_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
      });
      if (stats.x > 0) {
        fp8_stats_kernel<T, D><<<stats, kThreads, 0, stream>>>(qp);
        cuda_detail::check_launch("fp8_stats_kernel");
      }
      fp8_reduce_kernel<D><<<heads, D, 0, stream>>>(qp);
      cuda_detail::check_launch("fp8_reduce_kernel");
      fp8_quantize_kernel<T, D><<<quant, kThreads, smem, stream>>>(qp);
      cuda_detail::check_launch("fp8_quantize_kernel");
    });
  });
}

}  // namespace spaattn::cuda::stages
