// The sm90 kernel on 8-bit operands (docs/gpu.md, FP8): the schedule of kernel.cuh (persistent
// CTAs, a producer warpgroup, two consumer warpgroups of 64 query rows, S = Q K^T of block n + 1
// issued behind O += P V of block n) with both products on 8-bit wgmma (k = 32, twice the 16-bit
// rate: S = Q K^T on int8, O += P V on FP8 e4m3) and every operand brought in by the copy engine
// from the arrays of plan/quant.cuh.
//
// What differs from the 16-bit kernel:
// - Q and K tiles are B x d bytes (128-byte swizzle at d = 128, 64-byte at d = 64), V^T tiles
//   d x B bytes: a stage is half the 16-bit size and the CTA keeps more of them; Q is one copy
//   of its block-ordered rows, no gather through the token order.
// - Logits: Q and K are int8 (e4m3 would leave several percent of error in the logits of
//   learned attention; 8-bit integers with a per-block scale about a sixth of it), S = Q8 K8^T
//   exact in int32 on the int8 wgmma (the e4m3 rate), then S = q_scale k_scale S8, the block's
//   scale folded into the exponent's factor. The running maxima are kept in log2 units (their
//   factor changes from block to block).
// - P = exp2(. + 7), i.e. 128 times the probability (up to 362 times, as the running maximum
//   may lag, Fp8Softmax), is rounded to e4m3 in registers, in the layout of the A operand; V^T's
//   keys were stored in the matching order (key_of_position), so no register shuffles are
//   needed. The row sums add the same scaled values in fp32, before rounding.
// - The softmax is the kernel's limit (H200, S = 76,800, H = 40, d = 128; bench/results/
//   2026-11-30-h200-3773926-fp8-softmax.md): a quarter of the exponentials on the FMA pipe,
//   row maxima by three-way integer maxima, sums in four chains and the lagging maximum together
//   took the kernel from 1.26 to 1.29 of cuDNN's dense bf16 rate dense and from 1.06 to 1.16 at
//   density 0.05. Measured and left out: the two consumer warpgroups taking turns at the tensor
//   cores (named barriers; 1-2% slower), and the row sums on the tensor cores (a product with a
//   tile of ones: 3% faster, but summing the rounded P made the lse ten times less accurate).
// - O is not accumulated on the tensor cores over the whole item: the FP8 wgmma keeps only about
//   13 bits below the leading bit of the largest of its terms (the accumulator included) and
//   drops the rest, so once O is large against one block's contribution, every block loses
//   precision, always towards zero. Each group of kFold = 4 key blocks starts a fresh
//   accumulator, which is then added to O in fp32. On the captured workload (d = 64) this took
//   the error against the 16-bit path of a dense call from 0.0185 to 0.0131 (an emulation with
//   13-bit truncation reproduced the GPU's output within 0.002); at d = 128 the kernel ran up to
//   2% faster (dense; the same at densities 0.11 and 0.05), at d = 64 3% slower
//   (bench/results/2026-12-01-h200-fp8-accumulation.md).
// - Epilogue: O times the per-channel V scale, the logits' mean term q_shift and -7 (the 128)
//   added back to the maxima; then finish_rows and the functor as in the 16-bit kernel.
// - No zeroing of V rows past a block's valid keys: quantisation wrote them as zeros.
#pragma once
#include <cmath>

#include "cuda/attention/sm90/kernel.cuh"

namespace spaattn::cuda_detail::sm90 {

template <int D_>
struct Fp8Traits {
  static constexpr int D = D_, B = 128;
  static constexpr int kConsumers = 2;
  static constexpr int kThreads = 128 * (kConsumers + 1);
  static constexpr int kStages = D == 128 ? 6 : 8;
  static constexpr int kTileBytes = B * D;  // one Q, K or V^T tile
  static constexpr int kBarriers = 2 + 3 * kStages;
  static constexpr int kSmemBytes = 1024 + kTileBytes + 2 * kStages * kTileBytes + 8 * kBarriers +
                                    2 * B * 4 + 16;  // ... the rows tables, the walks' period
  static constexpr int kProducerRegs = 40;
  static constexpr int kConsumerRegs = 232;
  // Key blocks whose P V the tensor cores add up in one accumulator before it is added to O in
  // fp32 (consume_fp8).
  static constexpr int kFold = 4;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory of an SM");
  static_assert(D == 64 || D == 128, "head dim 64 or 128");
};

struct Fp8Params {
  FwdParams base;
  // 3-D maps (row bytes, rows, batch * heads) over q8, k8 (rows of d bytes) and vt8 (rows of B
  // bytes): boxes of one tile.
  CUtensorMap q_map, k_map, v_map;
};

template <int D>
using Fp8Smem = SmemLayout<Fp8Traits<D>::kStages, Fp8Traits<D>::kTileBytes>;

// Producer warp 0, one lane: the K and V^T copies of every key block of every item.
template <int D>
__device__ __forceinline__ void produce_kv_fp8(const Fp8Params& sp, const Fp8Smem<D>& sh,
                                               int num_items, const int& period) {
  using Tr = Fp8Traits<D>;
  const FwdParams& p = sp.base;
  prefetch_tensor_map(&sp.k_map);
  prefetch_tensor_map(&sp.v_map);
  int n = 0;
  for (int index = blockIdx.x; index < num_items; index += gridDim.x) {
    Item<Tr::B> it(p, index);
    it.start_walk(n, period);
    const int bh = it.w.b * p.heads + it.w.h;
    int j;
    Span s;
    while (it.next_block(p, j, s)) {
      const int stage = n % Tr::kStages;
      mbar_wait(sh.empty(stage), ((n / Tr::kStages) & 1) ^ 1);
      mbar_arrive_expect_tx(sh.k_full(stage), Tr::kTileBytes);
      tma_load_3d(sh.k_tile(stage), &sp.k_map, sh.k_full(stage), 0, j * Tr::B, bh);
      mbar_arrive_expect_tx(sh.v_full(stage), Tr::kTileBytes);
      tma_load_3d(sh.v_tile(stage), &sp.v_map, sh.v_full(stage), 0, j * Tr::D, bh);
      ++n;
    }
  }
}

// Producer warps 1-3 (t = 0 .. 95): each item's Q tile (one copy, thread 0) and its table of
// sequence rows (rows[it % 2]) for the epilogue's stores.
template <int D>
__device__ __forceinline__ void produce_q_fp8(const Fp8Params& sp, const Fp8Smem<D>& sh,
                                              int32_t (*rows)[128], int num_items, int t) {
  using Tr = Fp8Traits<D>;
  const FwdParams& p = sp.base;
  if (t == 0) prefetch_tensor_map(&sp.q_map);
  int k = 0;
  for (int index = blockIdx.x; index < num_items; index += gridDim.x, ++k) {
    const Item<Tr::B> it(p, index);
    mbar_wait(sh.q_empty(), (k & 1) ^ 1);
    const bool permuted = p.video_perm && it.w.qb < p.num_video_blocks;
    for (int r = t; r < Tr::B; r += 96)
      rows[k & 1][r] = permuted && r < it.q.count
                           ? p.video_offset + __ldg(p.video_perm + it.w.qb * Tr::B + r)
                           : it.q.begin + r;
    if (t == 0) {
      mbar_arrive_expect_tx(sh.q_full(), Tr::kTileBytes);
      tma_load_3d(sh.q, &sp.q_map, sh.q_full(), 0, it.w.qb * Tr::B,
                  it.w.b * p.heads + it.w.h);
    } else {
      mbar_arrive(sh.q_full());
    }
  }
}

// 2^x on the FMA pipe, for a quarter of the probabilities: the special function unit's 16
// exponentials a clock per SM are the softmax's narrowest resource, and the FMA pipe has room.
// The integer part comes from the 1.5 * 2^23 rounding add, 2^f on [-0.5, 0.5] from a cubic
// through the Chebyshev nodes (relative error 1e-4, far below e4m3's rounding of P), and the
// integer goes into the exponent bits. Arguments below -125 give 2^-125, which P rounds to 0.
__device__ __forceinline__ float exp2_fma(float x) {
  x = fmaxf(x, -125.f);
  const float t = x + 12582912.f;
  const float f = x - (t - 12582912.f);
  const float q = fmaf(fmaf(fmaf(0.0558382829f, f, 0.2426394785f), f, 0.6931367339f), f,
                       0.9999245570f);
  return __int_as_float(__float_as_int(q) + (__float_as_int(t) << 23));
}

// The largest of a thread's 32 int32 scores of row half hf: a tree of three-way maxima (one
// Hopper DPX instruction each), 16 instructions four deep instead of a chain of 31.
__device__ __forceinline__ int32_t row_max_s32(const int32_t (&si)[16][4], int hf) {
  auto at = [&](int i) { return si[i / 2][2 * hf + i % 2]; };
  int32_t t[11];
#pragma unroll
  for (int i = 0; i < 10; ++i) t[i] = __vimax3_s32(at(3 * i), at(3 * i + 1), at(3 * i + 2));
  t[10] = max(at(30), at(31));
  return max(__vimax3_s32(__vimax3_s32(t[0], t[1], t[2]), __vimax3_s32(t[3], t[4], t[5]),
                          __vimax3_s32(t[6], t[7], t[8])),
             max(t[9], t[10]));
}

// Online softmax of one consumer thread's two rows, maxima in log2 units: the logits' factor
// c = scale_log2 * q_scale * k_scale changes from key block to key block.
//
// The running maximum is raised only when a block's maximum exceeds it by more than kSlack,
// so that most blocks skip the rescaling of O (at density 0.05 a warp's 16 rows raise one
// maximum or more in most of their 30 blocks). P = 2^(c s - m + kBias) then stays below
// 2^(kBias + kSlack) = 362, inside e4m3's 448; the same m goes into l, so the result is exact
// whatever m is.
struct Fp8Softmax {
  static constexpr float kBias = 7.f;
  static constexpr float kSlack = 1.5f;
  float m[2];  // running maximum of c * s, up to kSlack behind (-inf before any key)
  float l[2];  // this lane's share of sum 2^(c s - m + kBias)

  // Probabilities of one key block into pa (e4m3 A fragments, k32 step kk), maxima and sums
  // updated; o's factors come back in alpha. Returns whether a maximum of this thread rose.
  // s: the int32 accumulators of Q8 K8^T, read as floats offset by 1.5 * 2^23 (exact and
  // monotonic for |s| < 2^22; d * 127^2 < 2^21): one integer add each instead of a conversion
  // (16 a clock per SM), the offset folded into the exponent's constant term.
  template <bool kMasked>
  __device__ __forceinline__ bool scores(const int32_t (&si)[16][4], uint32_t (&pa)[4][4],
                                         float (&alpha)[2], float c, int valid, int lane) {
    constexpr float kOffset = 12582912.f;  // 1.5 * 2^23, the float whose bits are kMagic
    constexpr int32_t kMagic = 0x4B400000;
    bool raised = false;
    const int col = 2 * (lane & 3);
    float s[16][4], e[16][4];
#pragma unroll
    for (int n = 0; n < 16; ++n)
#pragma unroll
      for (int j = 0; j < 4; ++j) s[n][j] = __int_as_float(si[n][j] + kMagic);
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float mx = -INFINITY;
      if constexpr (kMasked) {
#pragma unroll
        for (int n = 0; n < 16; ++n)
#pragma unroll
          for (int j = 0; j < 2; ++j)
            if (n * 8 + col + j < valid) mx = fmaxf(mx, s[n][2 * hf + j]);
      } else {
        mx = __int_as_float(row_max_s32(si, hf) + kMagic);
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float scaled = mx == -INFINITY ? -INFINITY : (mx - kOffset) * c;  // c > 0
      // -inf + kSlack is -inf: a row's first usable block always sets its maximum.
      const float m_new = scaled > m[hf] + kSlack ? scaled : m[hf];
      // A row that has seen only masked keys keeps -inf: subtract 0 so that exp2 gives 0.
      const float m_use = m_new == -INFINITY ? 0.f : m_new;
      alpha[hf] = exp2_approx(m[hf] - m_use);
      raised |= m_new != m[hf];
      m[hf] = m_new;
      const float bias = kBias - m_use - kOffset * c;
      // Four partial sums: four dependent chains of 8 additions instead of one of 32.
      float sum[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int n = 0; n < 16; ++n)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const float arg = fmaf(s[n][2 * hf + j], c, bias);
          const float x = kMasked && n * 8 + col + j >= valid ? 0.f
                          : n % 4 == 3                        ? exp2_fma(arg)
                                                              : exp2_approx(arg);
          e[n][2 * hf + j] = x;
          sum[n % 4] += x;
        }
      l[hf] = l[hf] * alpha[hf] + ((sum[0] + sum[1]) + (sum[2] + sum[3]));
    }
    // k32 step kk covers tiles 4 kk .. 4 kk + 3: registers 0 / 1 the rows (lane / 4, + 8) of
    // tiles 4 kk and 4 kk + 1, registers 2 / 3 those of tiles 4 kk + 2 and 4 kk + 3.
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int t = 4 * kk + 2 * (r >> 1), j = 2 * (r & 1);
        pa[kk][r] = pack_e4m3(e[t][j], e[t][j + 1], e[t + 1][j], e[t + 1][j + 1]);
      }
    return raised;
  }
};

// S = Q K^T over d in k32 steps (int8, exact in int32): rows of d bytes, 128-byte swizzle at
// d = 128, 64-byte at 64. Each operand's descriptor is built once and advanced per step.
template <int D>
__device__ __forceinline__ void issue_qk_fp8(int32_t (&sc)[16][4], uint32_t q_rows,
                                             uint32_t k_tile) {
  const uint64_t qd = D == 128 ? smem_desc(q_rows, 16, 1024) : smem_desc_sw64(q_rows);
  const uint64_t kd = D == 128 ? smem_desc(k_tile, 16, 1024) : smem_desc_sw64(k_tile);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < D / 32; ++kk)
    WgmmaS8::ss(sc, desc_add(qd, kk * 32), desc_add(kd, kk * 32), kk > 0);
  wgmma_commit();
}

// o (+)= P V over the block's 128 keys: V^T rows of 128 bytes (128-byte swizzle). fresh: o is
// overwritten with the block's product.
template <int D>
__device__ __forceinline__ void issue_pv_fp8(float (&o)[D / 8][4], const uint32_t (&pa)[4][4],
                                             uint32_t v_tile, bool fresh) {
  const uint64_t vd = smem_desc(v_tile, 16, 1024);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
    Wgmma<__nv_fp8_e4m3, D>::rs(o, pa[kk], desc_add(vd, kk * 32), kk > 0 || !fresh);
  wgmma_commit();
}

template <class T, int D, class Epi>
__device__ __forceinline__ void consume_fp8(const FwdParams& p, const Fp8Smem<D>& sh,
                                            const int32_t (*rows)[128], int num_items,
                                            const int& period, int tid) {
  using Tr = Fp8Traits<D>;
  constexpr int B = Tr::B, kFold = Tr::kFold;
  const Fp8Operands& f8 = p.fp8;
  const int cw = (tid - 128) / 128;
  const int lane = tid & 31;
  const int warp_row = cw * 64 + ((tid / 32) % 4) * 16;
  const uint32_t q_rows = sh.q + cw * 64 * D;
  int n = 0;
  int k = 0;
  for (int index = blockIdx.x; index < num_items; index += gridDim.x, ++k) {
    Item<B> it(p, index);
    it.start_walk(n, period);
    const int64_t bh = static_cast<int64_t>(it.w.b) * p.heads + it.w.h;
    const float cq = p.scale_log2 * __ldg(f8.q_scale + bh * p.num_q_blocks + it.w.qb);
    const float* k_scale = f8.k_scale + bh * p.num_q_blocks;
    // o: fp32 output of the folded blocks; acc: the tensor cores' sum over the blocks since the
    // last fold (done % kFold of them, or kFold). acc is never read before a product that
    // overwrites it (fresh: scale-d 0), so it starts uninitialised.
    float o[D / 8][4], acc[D / 8][4];
#pragma unroll
    for (int t = 0; t < D / 8; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.f;
    fence_operands(o);
    auto fold = [&] {
#pragma unroll
      for (int t = 0; t < D / 8; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[t][e] += acc[t][e];
    };
    Fp8Softmax sm;
    sm.m[0] = sm.m[1] = -INFINITY;
    sm.l[0] = sm.l[1] = 0.f;
    mbar_wait(sh.q_full(), k & 1);

    // The item's walk, with the scale of each block.
    auto next = [&](Span& s, float& c) {
      int j;
      if (!it.next_block(p, j, s)) return false;
      c = cq * __ldg(k_scale + j);
      return true;
    };
    Span cur;
    float c_cur = 0.f;
    bool have = next(cur, c_cur);
    if (!have) mbar_arrive(sh.q_empty());
    uint32_t pa[4][4] = {};
    int done = 0;  // blocks of the item whose P V has been issued; the last one's stage is n - 1
    while (have) {
      int32_t sc[16][4];
      const int stage = n % Tr::kStages;
      const uint32_t parity = (n / Tr::kStages) & 1;
      ++n;
      mbar_wait(sh.k_full(stage), parity);
      issue_qk_fp8<D>(sc, q_rows, sh.k_tile(stage));
      const Span s = cur;
      const float c = c_cur;
      have = next(cur, c_cur);
      wgmma_wait<0>();
      fence_operands(sc);
      fence_operands(o);
      fence_operands(pa);
      fence_operands(acc);
      if (done > 0 && done % kFold == 0) fold();
      __syncwarp();
      if (done > 0 && lane == 0) mbar_arrive(sh.empty((n - 2) % Tr::kStages));
      if (!have) mbar_arrive(sh.q_empty());
      float alpha[2];
      const bool raised = s.valid < B ? sm.scores<true>(sc, pa, alpha, c, s.valid, lane)
                                      : sm.scores<false>(sc, pa, alpha, c, B, lane);
      if (__any_sync(0xffffffffu, raised)) {  // the sums so far: o and, between folds, acc
        auto rescale = [&](float (&x)[D / 8][4]) {
#pragma unroll
          for (int t = 0; t < D / 8; ++t) {
            x[t][0] *= alpha[0];
            x[t][1] *= alpha[0];
            x[t][2] *= alpha[1];
            x[t][3] *= alpha[1];
          }
        };
        rescale(o);
        if (done % kFold != 0) rescale(acc);
      }
      fence_operands(o);
      fence_operands(pa);
      mbar_wait(sh.v_full(stage), parity);
      fence_operands(acc);
      issue_pv_fp8<D>(acc, pa, sh.v_tile(stage), /*fresh=*/done % kFold == 0);
      ++done;
    }
    wgmma_wait<0>();
    fence_operands(o);
    fence_operands(pa);
    fence_operands(acc);
    if (done > 0) fold();
    __syncwarp();
    if (done > 0 && lane == 0) mbar_arrive(sh.empty((n - 1) % Tr::kStages));

    // Back to the 16-bit kernel's terms: O times V's channel scales; maxima in raw logits with
    // the mean term and the 2^7 of P added back (finish_rows takes m * scale_log2 + log2 l).
    const float* vs = f8.v_scale + bh * D + 2 * (lane & 3);
#pragma unroll
    for (int t = 0; t < D / 8; ++t) {
      const float2 v = __ldg(reinterpret_cast<const float2*>(vs + t * 8));
      o[t][0] *= v.x;
      o[t][1] *= v.y;
      o[t][2] *= v.x;
      o[t][3] *= v.y;
    }
    OnlineSoftmax<1> fin;
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int r = warp_row + hf * 8 + (lane >> 2);
      const float shift = __ldg(f8.q_shift + (bh * p.num_q_blocks + it.w.qb) * B + r);
      fin.row_max[0][hf] =
          sm.m[hf] == -INFINITY
              ? -INFINITY
              : (sm.m[hf] - Fp8Softmax::kBias) / p.scale_log2 + shift;
      fin.row_sum[0][hf] = sm.l[hf];
    }
    finish_item<T, D, B, Epi>(p, fin, reinterpret_cast<float (&)[1][D / 8][4]>(o), it,
                              rows[k & 1], warp_row, lane);
  }
}

template <class T, int D, class Epi>
__global__ void __launch_bounds__(Fp8Traits<D>::kThreads, 1)
    fwd_kernel_sm90_fp8(const __grid_constant__ Fp8Params sp) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Tr = Fp8Traits<D>;
  const FwdParams& p = sp.base;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const int tid = threadIdx.x;
  Fp8Smem<D> sh;
  const uint32_t raw = smem_addr(smem_raw);
  sh.q = (raw + 1023u) & ~1023u;
  sh.kv = sh.q + Tr::kTileBytes;
  sh.bars = sh.kv + 2 * Tr::kStages * Tr::kTileBytes;
  auto* rows =
      reinterpret_cast<int32_t(*)[Tr::B]>(smem_raw + (sh.bars - raw) + 8 * Tr::kBarriers);
  const int num_items = p.batch * p.heads * p.num_q_blocks;

  int& period = rows[2][0];  // of the walks (Item::start_walk), after the rows tables
  if (tid == 0) {
    sh.init_barriers(Tr::kConsumers);
    period = mean_row_length(p);
  }
  __syncthreads();

  if (tid < 128) {
    reg_dealloc<Tr::kProducerRegs>();
    if (tid == 0)
      produce_kv_fp8<D>(sp, sh, num_items, period);
    else if (tid >= 32)
      produce_q_fp8<D>(sp, sh, rows, num_items, tid - 32);
  } else {
    reg_alloc<Tr::kConsumerRegs>();
    consume_fp8<T, D, Epi>(p, sh, rows, num_items, period, tid);
  }
#else
  __trap();
#endif
}

}  // namespace spaattn::cuda_detail::sm90
