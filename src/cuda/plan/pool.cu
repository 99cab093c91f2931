// Pooling with GAPR's deviations (docs/methods.md, Pooling; docs/gpu.md, Pooling) in one pass
// over Q, K and V.
//
// One CTA of 256 threads per (batch, head, video block i). Each thread owns one 16-byte column
// chunk (8 dims) of B * d / 2048 token rows and copies all of its Q, K and V chunks into shared
// memory with cp.async up front, so a CTA has the whole block (up to 96 KB) in flight and two
// CTAs fit an SM. The tile stays in shared memory for the mean absolute deviations around the
// final mean, which need a second look at every element of Q and K but no second read of device
// memory. (Holding the rows in registers instead spills at B = d = 128.) Column sums are
// reduced with shuffles inside a warp and a fixed-order sum over warps in shared memory, so the
// result is deterministic. Means and deviations divide by the block's true count n_i (a partial
// last block divides by its count, not by B) with the CPU's arithmetic: sum * (1 / n).
//
// With k_out / v_out the same pass writes the video rows of K and V in the token order into the
// kernel's gathered copies (gather.cuh), which then copies only the text rows.
//
// With FP8 operands the same pass also writes each video block's partial statistics for the
// quantisation (quant.cuh): K's column sums and |V|'s column maxima, so that the quantisation's
// statistics pass reads only the text rows.
//
// Rows are read through the token permutation: ordered video token k is sequence row
// video_offset + perm[k], so the gathered tensor never exists. Text tokens are not pooled.
// Grid: x = i * H + h (neighbouring CTAs read neighbouring heads of the same tokens, which share
// DRAM pages), y = batch. Measured on an H100 at S = 76,800, H = 40, d = 128, bf16, gilbert
// order: 0.94 ms for the 2.36 GB of Q, K and V, 2.5 TB/s (the copy ceiling is 3.0 TB/s).
#include "cuda/check.cuh"
#include "cuda/dispatch.cuh"
#include "cuda/plan/stage_util.cuh"
#include "cuda/plan/stages.cuh"

namespace spaattn::cuda::stages {
namespace {

constexpr int kThreads = 256;

template <class T, int D, int B>
__global__ void __launch_bounds__(kThreads, 2) pool_kernel(const __grid_constant__ PoolParams p) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per token row
  constexpr int kRowGroups = kThreads / kChunks;
  constexpr int kRows = B / kRowGroups;  // token rows per thread
  constexpr int kWarps = kThreads / 32;
  __shared__ float red[kWarps][3][D];
  __shared__ float mean[2][D];

  const Dims& dims = p.dims;
  const int h = blockIdx.x % dims.heads, i = blockIdx.x / dims.heads, b = blockIdx.y;
  const bool stats = !p.calibrated_choice || reads_pooling(p.calibrated_choice[b * dims.heads + h]);
  if (!stats && !p.k_out) return;
  const int tid = threadIdx.x, chunk = tid % kChunks, group = tid / kChunks;
  const int first = i * B;
  const int n = min(B, dims.num_video - first);

  // tile[t][r][chunk]: the rows of Q (t = 0), K and V; each thread reads back only the chunks it
  // copied itself, so its own cp.async wait is the only synchronisation the tile needs.
  extern __shared__ uint4 tile[];
  const T* src[3] = {
      static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[2] + chunk * 8,
      static_cast<const T*>(p.k) + b * p.k_stride[0] + h * p.k_stride[2] + chunk * 8,
      static_cast<const T*>(p.v) + b * p.v_stride[0] + h * p.v_stride[2] + chunk * 8};
  const int64_t row_stride[3] = {p.q_stride[1], p.k_stride[1], p.v_stride[1]};
#pragma unroll
  for (int m = 0; m < kRows; ++m) {
    const int r = group + m * kRowGroups;
    if (r < n) {
      const int64_t row = dims.video_offset + (p.perm ? p.perm[first + r] : first + r);
#pragma unroll
      for (int t = 0; t < 3; ++t)
        if (t > 0 || stats)  // an unpooled (b, h) is here for K and V only
          cp_async16(&tile[(t * B + r) * kChunks + chunk], src[t] + row * row_stride[t]);
    }
  }
  cp_async_wait_all();

  // The gathered copies of K and V: each thread stores the chunks it copied in (16 bytes, a
  // warp's stores two runs of d contiguous elements).
  if (p.k_out) {
    const int64_t base = (static_cast<int64_t>(b) * dims.heads + h) *
                             (dims.num_video + dims.num_text) +
                         dims.video_offset + first;
#pragma unroll
    for (int m = 0; m < kRows; ++m) {
      const int r = group + m * kRowGroups;
      if (r < n) {
        const int64_t at = (base + r) * D + chunk * 8;
        *reinterpret_cast<uint4*>(static_cast<T*>(p.k_out) + at) = tile[(B + r) * kChunks + chunk];
        *reinterpret_cast<uint4*>(static_cast<T*>(p.v_out) + at) =
            tile[(2 * B + r) * kChunks + chunk];
      }
    }
  }
  if (!stats) return;  // the whole CTA: a (b, h) that the calibrated choice leaves unpooled

  // Sums over this thread's rows, then over the lanes that own the same chunk, then over warps.
  float sum[3][8] = {};
#pragma unroll
  for (int m = 0; m < kRows; ++m) {
    const int r = group + m * kRowGroups;
    if (r >= n) continue;
#pragma unroll
    for (int t = 0; t < 3; ++t) {
      float x[8];
      unpack8<T>(tile[(t * B + r) * kChunks + chunk], x);
#pragma unroll
      for (int e = 0; e < 8; ++e) sum[t][e] += x[e];
    }
  }
  const int warp = tid / 32, lane = tid % 32;
#pragma unroll
  for (int t = 0; t < 3; ++t)
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      float s = sum[t][e];
#pragma unroll
      for (int o = kChunks; o < 32; o *= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
      if (lane < kChunks) red[warp][t][chunk * 8 + e] = s;
    }
  __syncthreads();

  const float inv = 1.f / static_cast<float>(n);
  const int64_t bh = static_cast<int64_t>(b) * dims.heads + h;
  const int64_t out = (bh * dims.nv + i) * D;
  float* part = p.fp8_part ? p.fp8_part + (bh * p.fp8_chunks + i) * 2 * D : nullptr;
  for (int x = tid; x < 3 * D; x += kThreads) {
    const int t = x / D, e = x % D;
    float s = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) s += red[w][t][e];
    const float mu = s * inv;
    if (t < 2) mean[t][e] = mu;
    (t == 0 ? p.q_mean : t == 1 ? p.k_mean : p.v_mean)[out + e] = mu;
    if (t == 1 && part) part[e] = s;
  }
  __syncthreads();

  // Deviations around the final means, from the rows still in shared memory; for FP8, the
  // largest |v| of each column too.
  float mu[2][8], dev[2][8] = {}, vmax[8] = {};
#pragma unroll
  for (int t = 0; t < 2; ++t)
#pragma unroll
    for (int e = 0; e < 8; ++e) mu[t][e] = mean[t][chunk * 8 + e];
#pragma unroll
  for (int m = 0; m < kRows; ++m) {
    const int r = group + m * kRowGroups;
    if (r >= n) continue;
#pragma unroll
    for (int t = 0; t < 2; ++t) {
      float x[8];
      unpack8<T>(tile[(t * B + r) * kChunks + chunk], x);
#pragma unroll
      for (int e = 0; e < 8; ++e) dev[t][e] += fabsf(x[e] - mu[t][e]);
    }
    if (part) {
      float x[8];
      unpack8<T>(tile[(2 * B + r) * kChunks + chunk], x);
#pragma unroll
      for (int e = 0; e < 8; ++e) vmax[e] = fmaxf(vmax[e], fabsf(x[e]));
    }
  }
#pragma unroll
  for (int t = 0; t < 3; ++t)
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      if (t == 2 && !part) break;
      float s = t < 2 ? dev[t][e] : vmax[e];
#pragma unroll
      for (int o = kChunks; o < 32; o *= 2) {
        const float y = __shfl_xor_sync(0xffffffffu, s, o);
        s = t < 2 ? s + y : fmaxf(s, y);
      }
      if (lane < kChunks) red[warp][t][chunk * 8 + e] = s;
    }
  __syncthreads();
  for (int x = tid; x < (part ? 3 : 2) * D; x += kThreads) {
    const int t = x / D, e = x % D;
    float s = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) s = t < 2 ? s + red[w][t][e] : fmaxf(s, red[w][t][e]);
    if (t < 2)
      (t == 0 ? p.q_dev : p.k_dev)[out + e] = s * inv;
    else
      part[D + e] = s;
  }
}

}  // namespace

PoolParams make_pool_params(const AttentionArgs& args, const int32_t* perm, const Buffers& buf) {
  validate(args);
  check_rows16(args.q, "q");
  check_rows16(args.k, "k");
  check_rows16(args.v, "v");
  PoolParams p;
  p.dims = make_dims(args.layout, args.batch(), args.heads(), args.head_dim());
  p.dtype = args.q.dtype;
  p.q = args.q.data;
  p.k = args.k.data;
  p.v = args.v.data;
  for (int d = 0; d < 3; ++d) {
    p.q_stride[d] = args.q.stride[d];
    p.k_stride[d] = args.k.stride[d];
    p.v_stride[d] = args.v.stride[d];
  }
  p.perm = perm;
  SPAATTN_CHECK_ARG(buf.q_mean && buf.k_mean && buf.v_mean && buf.q_dev && buf.k_dev, "buffers",
                    "expected the pooled arrays (kPooled)");
  p.q_mean = buf.q_mean;
  p.k_mean = buf.k_mean;
  p.v_mean = buf.v_mean;
  p.q_dev = buf.q_dev;
  p.k_dev = buf.k_dev;
  return p;
}

void launch_pool(const PoolParams& p, cudaStream_t stream) {
  SPAATTN_CHECK_ARG(!p.k_out == !p.v_out, "pool", "expected both gathered copies or neither");
  if (p.dims.nv == 0) return;
  const dim3 grid(static_cast<unsigned>(p.dims.nv) * p.dims.heads, p.dims.batch);
  cuda_detail::dispatch_dtype(p.dtype, [&](auto t) {
    using T = decltype(t);
    cuda_detail::dispatch_head_dim(p.dims.dim, [&](auto d) {
      cuda_detail::dispatch_block_size(p.dims.block, [&](auto b) {
        constexpr int D = decltype(d)::value, B = decltype(b)::value;
        constexpr int smem = 3 * B * D * 2;  // the block's Q, K and V rows, 16-bit
        static cuda_detail::OncePerDevice smem_opt_in;
        smem_opt_in([&] {
          SPAATTN_CUDA_CHECK(cudaFuncSetAttribute(
              pool_kernel<T, D, B>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        });
        pool_kernel<T, D, B><<<grid, kThreads, smem, stream>>>(p);
      });
    });
  });
  cuda_detail::check_launch("pool_kernel");
}

}  // namespace spaattn::cuda::stages
