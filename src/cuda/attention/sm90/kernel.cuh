// The sm90 (Hopper) block-sparse attention kernel: persistent, warp-specialised, K and V tiles
// brought in by the copy engine (each selected key block is one contiguous box of the K / V
// tensors, which are in the token order), both matrix products on wgmma with fp32 accumulators
// in registers, the online softmax and the epilogue functor (attention/finish.cuh) shared with
// the portable family.
//
// Roles (sm90/params.cuh Traits): the producer warpgroup walks each query block's CSR row; its
// warp 0 waits for a free stage and issues the K and V copies of each key block with usable
// keys; its warps 1-3 load the Q rows (through the token order) with cp.async. Each consumer
// warpgroup owns 64 query rows; per key block it computes S = Q K^T (Q from registers for short
// items at d = 128, B = 128, else from shared memory; see consume), the online softmax in
// registers and O += P V. The two consumer warpgroups of a CTA (B = 128), or of two CTAs (B =
// 64), interleave on the tensor cores: one's softmax runs while the other's products do. A
// warpgroup issues S = Q K^T of block n + 1 right behind its O += P V of block n and waits once
// for both, releasing block n's stage then (three stages at B = 128): at S = 76,800, H = 40,
// d = 128 on an H200 this took the kernel from 560 to 610 TFLOP/s dense and from 486 to 495 at
// density 0.05 (B = 64: 450 to 480 dense).
// Two explicit schedules were measured slower at S = 76,800, H = 40 on an H200 and left out:
// overlapping a warpgroup's own softmax with its products (S of block n + 1 issued before P V of
// block n) needs P of two blocks live next to S and O: 0.68 of cuDNN dense against 0.86, from
// register spills and serialised wgmma; warpgroups taking turns (named barriers) to issue P V of
// block n - 1 with S of block n: 0.80 against 0.89 dense, 0.68 against 0.73 at B = 64.
// Also measured and left out (bench/results/2026-11-30-h200-9211efd-kernel-experiments.md):
// the next CSR entry loaded one step ahead, item records built by the Q loaders, the next Q
// fetched into L2 an item early, L2 cache policies on the copies, each item's walk rotated so
// that all CTAs sweep K and V together, and items handed out at run time (in their usual order
// 2.5% faster on the pipeline's mask, but the hand-out cost 4% everywhere; longest first 15%
// slower, as it mixes heads in L2). None raised the rate; most lowered it. The FP8 kernel's softmax
// changes (a running maximum that lags by up to 8 in log2 units, tree maxima, sums in four
// chains; bench/results/2026-11-30-h200-3773926-fp8-softmax.md) took this kernel from 0.90 to
// 0.82 of cuDNN dense at d = 128 in the same run, so it keeps the chains. Nor does the FP8
// kernel's fresh accumulator per 4 key blocks help here (bf16 / f16 wgmma sums in fp32, so
// there is no accuracy to gain): 6-8% slower at d = 128 (it spills), 1-3% at d = 64 (once 6% at
// density 0.05) and 2-6% at B = 64 (bench/results/2026-12-01-h200-fp8-accumulation.md).
// Measured and left out with Q in registers (bench/results/2026-12-01-h200-q-registers.md): an
// item's epilogue run behind the next item's first S = Q K^T (ptxas serialises the wgmmas when
// the epilogue reads O while that product is in flight), and three stages at B = 64. The
// opposite order does overlap (consume): the next item's first S = Q K^T is issued behind the
// item's last O += P V and the epilogue follows the wait for both; with 16-byte stores of O this
// took density 0.11 from 0.93-0.95 to 0.96-0.97 of cuDNN dense and 0.05 from 0.83-0.86 to
// 0.87-0.88 (0.82 in one round of five; bench/results/2026-12-01-h200-carry.md). In the same runs a warpgroup's softmax
// overlapped with its own O += P V in the FlashAttention-3 order (S of block n issued before P V
// of block n - 1, the probabilities kept in fp32 until that P V is waited for, Q from shared
// memory; no spills, no serialised wgmma) ran at 0.82 of cuDNN dense against 0.97, 0.75 against
// 0.86 at 0.05, and lost 13-37% at B = 64 and d = 64: the two warpgroups' own interleaving is
// worth more here than the overlap within one.
// The wgmma descriptors of a tile are built once and advanced by addition (ptx.cuh desc_add):
// 1-2% at d = 128, B = 128, up to 8% at B = 64. In the same runs, K tiles released apart from V
// tiles (a K tile once its S = Q K^T is complete, K copied a block ahead of V) were 1-3% slower
// alone and level with the descriptors, though at B = 64 a consumer waited for K 16% of its
// time (Nsight Compute). During dense runs the board sits at its power limit (690 W, SM clock
// 1.6 GHz), so work taken out of the loop also raises the clock
// (bench/results/2026-12-01-h200-descriptors.md). K and V prefetched into L2 by the producer,
// 2-8 key blocks ahead of the copies, were slower everywhere: 1-10% at B = 128, 28-35% at B = 64
// (bench/results/2026-12-01-h200-low-density-power.md). Query blocks in pairs at B = 64, what
// the K / V copies cost at the power limit, sweeps that turn around and L2 priorities on the
// copies: docs/gpu.md ("Measured and left out", "What the copies cost").
// The running maximum lags: a row's maximum rises only when a key block's exceeds it by more
// than 8 (log2 units; the probabilities then stay below 2^8), so O is rescaled in far fewer
// key blocks (at density 0.05 about 70% of them before). Taken alone, without the FP8 kernel's
// other softmax changes: 0.5-1% faster at d = 128, B = 128 (1.00-1.01 of cuDNN dense when dense,
// 0.92 at 0.05), level at B = 64 and d = 64. In the same runs Q in registers for every item at
// B = 64 was 3-11% slower (bench/results/2026-12-01-h200-lagging-maximum.md).
//
// Work items (query blocks) are taken in decode_work order (text query blocks, the densest,
// first), item blockIdx.x + k * gridDim.x by CTA blockIdx.x. Each item's walk over its row
// starts at a share of the row set by the CTA's pipeline slot (Item::start_walk), so that CTAs
// stay at the same key blocks when rows differ in length: on the pipeline's IPAR mask (rows of
// 192 +- 3.8 entries) this took the kernel from 67.3-67.6 ms to 64.5-64.9 ms at S = 76,800,
// H = 40, d = 128, level with a random mask of the same density and equal rows (64.4-64.8 ms),
// and left random masks level (bench/results/2026-12-01-h200-phase-aligned-walks.md).
#pragma once
#include <cmath>

#include "cuda/attention/blocks.cuh"
#include "cuda/attention/finish.cuh"
#include "cuda/attention/softmax.cuh"
#include "cuda/attention/sm90/params.cuh"
#include "cuda/attention/sm90/ptx.cuh"

namespace spaattn::cuda_detail::sm90 {

// The mean length of the mask's rows (CSR entries per row, rounded; 0 for a dense call, which
// has no lists): the period of the walks' phase (Item::start_walk). One thread computes it
// before the roles start and keeps it in shared memory (registers are the consumers' scarce
// resource); fp32 arithmetic without a 64-bit division, the same value for every role.
__device__ __forceinline__ int mean_row_length(const FwdParams& p) {
  if (!p.row_offsets) return 0;
  const int rows = p.batch * p.heads * p.num_q_blocks;
  const float entries = static_cast<float>(p.row_offsets[rows] - p.row_offsets[0]);
  return __float2int_rn(__fdividef(entries, static_cast<float>(rows)));
}

// One work item as every role sees it: the query block's span and its CSR entries (none when
// the block holds only padding rows).
template <int B>
struct Item {
  Work w;
  int text_len;
  Span q;
  int e_begin, e_end;  // the row's entries; once walking, what is left of the walk's segment
  int e_wrap = -1;     // >= 0: the walk goes on from the row's first entry up to e_wrap
  __device__ __forceinline__ Item(const FwdParams& p, int index) {
    w = decode_work(p, index);
    text_len = p.text_lengths ? min(max(p.text_lengths[w.b], 0), p.num_text) : p.num_text;
    q = block_span<B>(p, w.qb, text_len);
    const int2 entries = row_entries(p, row(p));
    e_begin = entries.x;
    e_end = q.valid > 0 ? entries.y : e_begin;
  }
  __device__ __forceinline__ int64_t row(const FwdParams& p) const {
    return (static_cast<int64_t>(w.b) * p.heads + w.h) * p.num_q_blocks + w.qb;
  }
  // The walk over the row's entries starts where the CTA's pipeline slot `slot` puts it in the
  // period `period` (mean_row_length): at entry about len * (slot mod period) / period, and
  // wraps at the end. Every CTA fetches key blocks at the same pace, so all of them are at about
  // the same share of their rows at any moment, hence, with columns spread over a row, at about
  // the same key blocks of their heads, whose K and V then stay in L2 between them. Starting
  // every row at its first entry keeps them together only while all rows are equally long (rows
  // exactly `period` long do start there). Producer and consumers start every walk at the same
  // slot, so the n-th block of either side is still the n-th pipeline slot.
  __device__ __forceinline__ void start_walk(int slot, int period) {
    const int len = e_end - e_begin;
    if (period <= 0 || len <= 1) return;
    const int skip = min(len - 1, __float2int_rz(__fdividef(static_cast<float>(slot % period),
                                                           static_cast<float>(period)) *
                                                static_cast<float>(len)));
    if (skip == 0) return;
    e_wrap = e_begin + skip;
    e_begin = e_wrap;
  }
  // The next key block with usable keys (index j, span s) of the walk.
  __device__ __forceinline__ bool next_block(const FwdParams& p, int& j, Span& s) {
    for (;;) {
      while (e_begin < e_end) {
        j = key_block(p, e_begin++);
        s = block_span<B>(p, j, text_len);
        if (s.valid > 0) return true;
      }
      if (e_wrap < 0) return false;
      e_begin = row_entries(p, row(p)).x;  // the second segment: read again, not kept
      e_end = e_wrap;
      e_wrap = -1;
    }
  }
  __device__ __forceinline__ bool next_key(const FwdParams& p, Span& s) {
    int j;
    return next_block(p, j, s);
  }
};

// Shared-memory addresses of one CTA: the Q tile, S stages of a K and a V tile each, and the
// barriers (both sm90 kernels).
template <int S, int kTileBytes>
struct SmemLayout {
  uint32_t q, kv, bars;
  __device__ __forceinline__ uint32_t k_tile(int s) const { return kv + 2 * s * kTileBytes; }
  __device__ __forceinline__ uint32_t v_tile(int s) const { return k_tile(s) + kTileBytes; }
  __device__ __forceinline__ uint32_t q_full() const { return bars; }
  __device__ __forceinline__ uint32_t q_empty() const { return bars + 8; }
  __device__ __forceinline__ uint32_t k_full(int s) const { return bars + 8 * (2 + s); }
  __device__ __forceinline__ uint32_t v_full(int s) const { return bars + 8 * (2 + S + s); }
  __device__ __forceinline__ uint32_t empty(int s) const { return bars + 8 * (2 + 2 * S + s); }
  // One thread, before the CTA's first __syncthreads: Q full waits for the 96 Q-loading threads,
  // Q empty for every consumer thread (each has read the Q tile or the rows table itself, so
  // each orders its own reads before the loaders' next writes), a stage's empty for one arrival
  // per consumer warp, K / V full for the copies.
  __device__ __forceinline__ void init_barriers(int consumers) const {
    mbar_init(q_full(), 96);
    mbar_init(q_empty(), 128 * consumers);
    for (int s = 0; s < S; ++s) {
      mbar_init(k_full(s), 1);
      mbar_init(v_full(s), 1);
      mbar_init(empty(s), 4 * consumers);
    }
    fence_barrier_init();
  }
};
template <int D, int B>
using Smem = SmemLayout<Traits<D, B>::kStages, Traits<D, B>::kTileBytes>;

// Producer warp 0, one lane: the K and V copies of every key block of every item.
template <int D, int B>
__device__ __forceinline__ void produce_kv(const Params& sp, const Smem<D, B>& sh, int num_items,
                                           const int& period) {
  using Tr = Traits<D, B>;
  const FwdParams& p = sp.base;
  prefetch_tensor_map(&sp.k_map);
  prefetch_tensor_map(&sp.v_map);
  int n = 0;
  for (int index = blockIdx.x; index < num_items; index += gridDim.x) {
    Item<B> it(p, index);
    it.start_walk(n, period);
    Span s;
    for (; it.next_key(p, s); ++n) {
      const int stage = n % Tr::kStages;
      mbar_wait(sh.empty(stage), ((n / Tr::kStages) & 1) ^ 1);
      mbar_arrive_expect_tx(sh.k_full(stage), Tr::kTileBytes);
#pragma unroll
      for (int c = 0; c < Tr::kChunks; ++c)
        tma_load_4d(sh.k_tile(stage) + c * Tr::kChunkBytes, &sp.k_map, sh.k_full(stage), c * 64,
                    s.begin, it.w.h, it.w.b);
      mbar_arrive_expect_tx(sh.v_full(stage), Tr::kTileBytes);
#pragma unroll
      for (int c = 0; c < Tr::kChunks; ++c)
        tma_load_4d(sh.v_tile(stage) + c * Tr::kChunkBytes, &sp.v_map, sh.v_full(stage), c * 64,
                    s.begin, it.w.h, it.w.b);
    }
  }
}

// Producer warps 1-3 (t = 0 .. 95): each item's Q rows, B rows of D columns in 16-byte units,
// rows past the valid count zero-filled, and the item's table of sequence rows (rows[k %
// Traits::kRowTables] for the CTA's k-th item: the consumers write item k's O while the loaders
// fill item k + 1, or item k + 2 when item k's epilogue was carried into item k + 1, which may
// release Q before that epilogue runs).
template <class T, int D, int B>
__device__ __forceinline__ void produce_q(const FwdParams& p, const Smem<D, B>& sh,
                                          int32_t (*rows)[B], int num_items, int t) {
  using Tr = Traits<D, B>;
  int k = 0;
  for (int index = blockIdx.x; index < num_items; index += gridDim.x, ++k) {
    const Item<B> it(p, index);
    mbar_wait(sh.q_empty(), (k & 1) ^ 1);
    const bool permuted = p.video_perm && it.w.qb < p.num_video_blocks;
    const T* head = static_cast<const T*>(p.q) + it.w.b * p.q_stride[0] + it.w.h * p.q_stride[2];
    for (int i = t; i < B * D / 8; i += 96) {
      const int r = i / (D / 8), u = i % (D / 8);
      const int seq = permuted && r < it.q.count
                          ? p.video_offset + __ldg(p.video_perm + it.w.qb * B + r)
                          : it.q.begin + r;
      if (u == 0) rows[k % Tr::kRowTables][r] = seq;
      const bool ok = r < it.q.valid;
      const uint32_t dst =
          sh.q + (u / 8) * Tr::kChunkBytes + r * 128 + (((u % 8) ^ (r % 8)) << 4);
      cp_async_16(dst, ok ? head + static_cast<int64_t>(seq) * p.q_stride[1] + u * 8 : head,
                  ok ? 16 : 0);
    }
    cp_async_wait_all();
    fence_proxy_async();
    mbar_arrive(sh.q_full());
  }
}

// Consumer side, once per item: the warp's 16 query rows of Q as wgmma A fragments (the
// mma.sync A layout), 16 columns each, read from the Q tile (64-column chunks, 128-byte swizzle).
// Held in registers for the whole item, they free the Q tile for the next item's rows at once.
template <int D, int B>
__device__ __forceinline__ void load_q(uint32_t (&qa)[D / 16][4], uint32_t q_tile, int warp_row,
                                       int lane) {
  using Tr = Traits<D, B>;
  const int r = warp_row + (lane & 7) + ((lane >> 3) & 1) * 8;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const int u = 2 * kk + (lane >> 4);
    ldmatrix_x4(qa[kk],
                q_tile + (u / 8) * Tr::kChunkBytes + r * 128 + (((u % 8) ^ (r & 7)) << 4));
  }
}

// Per key block: S = Q K^T over the head dim, K from shared memory; Q from registers (qa) when
// q_regs, else from the Q tile (the warpgroup's rows at q_rows). Each form has its own fence and
// commit: with them outside the branch ptxas inserts arrives and serialises the wgmmas (C7520).
template <class T, int D, int B>
__device__ __forceinline__ void issue_qk(float (&sc)[1][B / 8][4], const uint32_t (&qa)[D / 16][4],
                                         bool q_regs, uint32_t q_rows, uint32_t k_tile) {
  using Tr = Traits<D, B>;
  const uint64_t kd = smem_desc(k_tile, 16, 1024);
  if (q_regs) {
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      Wgmma<T, B>::rs_kb(sc[0], qa[kk], desc_add(kd, (kk / 4) * Tr::kChunkBytes + (kk % 4) * 32),
                         kk > 0);
    wgmma_commit();
  } else {
    const uint64_t qd = smem_desc(q_rows, 16, 1024);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t off = (kk / 4) * Tr::kChunkBytes + (kk % 4) * 32;
      Wgmma<T, B>::ss(sc[0], desc_add(qd, off), desc_add(kd, off), kk > 0);
    }
    wgmma_commit();
  }
}

// O += P V with P from registers and V transposed through its descriptor. Keys past the valid
// count have P = 0, but their V rows (text padding, tokens past the block, zero fill past the
// tensor) may hold anything, NaN included: the consumer warpgroups zero them first, splitting
// the rows, and meet at a named barrier.
template <class T, int D, int B>
__device__ __forceinline__ void issue_pv(float (&o)[1][D / 8][4], const uint32_t (&pa)[1][B / 16][4],
                                         uint32_t v_tile, int valid, int ctid) {
  using Tr = Traits<D, B>;
  if (valid < B) {
    for (int i = ctid; i < (B - valid) * (D / 8); i += 128 * Tr::kConsumers) {
      const int r = valid + i / (D / 8), u = i % (D / 8);
      asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(
                       v_tile + (u / 8) * Tr::kChunkBytes + r * 128 + (((u % 8) ^ (r % 8)) << 4)),
                   "r"(0)
                   : "memory");
    }
    fence_proxy_async();
    named_barrier_sync(1, 128 * Tr::kConsumers);
  }
  const uint64_t vd = smem_desc(v_tile, Tr::kChunkBytes, 1024);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < B / 16; ++kk)
    Wgmma<T, D>::rs(o[0], pa[0][kk], desc_add(vd, kk * 16 * 128), 1);
  wgmma_commit();
}

// A work item's epilogue (both sm90 kernels): normalise, correct, write lse (finish_rows), then
// O straight from registers, rows through the item's table of sequence rows. A lane holds two
// columns of a row per 8-column tile; two exchanges within its quad (lanes j ^ 1, then j ^ 2)
// give lane j all 16 bytes of tile 4 g + j, so that each row goes out in 16-byte stores (the
// layout checks make rows 16-byte aligned).
template <class T, int D, int B, class Epi>
__device__ __forceinline__ void finish_item(const FwdParams& p, const OnlineSoftmax<1>& sm,
                                            float (&o)[1][D / 8][4], const Item<B>& it,
                                            const int32_t* seq_rows, int warp_row, int lane) {
  // The row's end read again: a walk that wrapped (Item::next_block) has moved it.e_end.
  const CtaShared cta{it.w.b, it.w.h, it.w.qb, it.text_len, row_entries(p, it.row(p)).y};
  finish_rows<T, D, 1, Epi>(p, sm, o, cta, seq_rows, it.q, warp_row, lane);
  T* out = static_cast<T*>(p.out) + it.w.b * p.out_stride[0] + it.w.h * p.out_stride[2];
  const int j = lane & 3;
  const bool odd = j & 1, upper = j & 2;
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    uint4 v[D / 32];  // all lanes exchange, rows past the block included
#pragma unroll
    for (int g = 0; g < D / 32; ++g) {
      uint32_t half[2][2];  // 8 bytes (columns 4 (j >> 1) ..) of tiles 4 g + 2 u + (j & 1)
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        const int t = 4 * g + 2 * u;
        const uint32_t w0 = Mma<T>::pack(o[0][t][2 * hf], o[0][t][2 * hf + 1]);
        const uint32_t w1 = Mma<T>::pack(o[0][t + 1][2 * hf], o[0][t + 1][2 * hf + 1]);
        const uint32_t got = __shfl_xor_sync(0xffffffffu, odd ? w0 : w1, 1);
        half[u][0] = odd ? got : w0;
        half[u][1] = odd ? w1 : got;
      }
      const uint32_t g0 = __shfl_xor_sync(0xffffffffu, upper ? half[0][0] : half[1][0], 2);
      const uint32_t g1 = __shfl_xor_sync(0xffffffffu, upper ? half[0][1] : half[1][1], 2);
      v[g] = upper ? make_uint4(g0, g1, half[1][0], half[1][1])
                   : make_uint4(half[0][0], half[0][1], g0, g1);
    }
    const int r = warp_row + hf * 8 + (lane >> 2);
    if (r >= it.q.count) continue;
    T* dst = out + static_cast<int64_t>(seq_rows[r]) * p.out_stride[1] + 8 * j;
#pragma unroll
    for (int g = 0; g < D / 32; ++g) *reinterpret_cast<uint4*>(dst + 32 * g) = v[g];
  }
}

// The consumer warpgroups: every item's key blocks, then its epilogue. At d = 128, B = 128 an
// item with few CSR entries (Traits::kQRegsBelow) takes the warp's Q rows into registers first
// and releases the Q tile at once, so that the loaders bring in the next item's Q while this one
// runs; otherwise S = Q K^T reads the Q tile, which is released after the item's last S = Q K^T.
// Such an item's last O += P V is not waited for on its own either: the next item's start (its
// Q, its first CSR entry) and first S = Q K^T go behind it, one wait covers both as within an
// item, and the item's epilogue runs after that wait (not for a register-heavy functor, which
// would spill next to the next item's Q and probabilities).
template <class T, int D, int B, class Epi>
__device__ __forceinline__ void consume(const FwdParams& p, const Smem<D, B>& sh,
                                        const int32_t (*rows)[B], int num_items, const int& period,
                                        int tid) {
  using Tr = Traits<D, B>;
  const int ctid = tid - 128;
  const int cw = ctid / 128;  // consumer warpgroup: query rows 64 cw .. 64 cw + 63
  const int lane = tid & 31;
  const int warp_row = cw * 64 + ((tid / 32) % 4) * 16;
  const uint32_t q_rows = sh.q + cw * 64 * 128;
  float o[1][D / 8][4];
  const auto zero_o = [&] {
#pragma unroll
    for (int t = 0; t < D / 8; ++t) o[0][t][0] = o[0][t][1] = o[0][t][2] = o[0][t][3] = 0.f;
    fence_operands(o[0]);
  };
  zero_o();
  uint32_t pa[1][B / 16][4] = {};
  int n = 0;         // pipeline slot of the next key block
  int pending = -1;  // the stage whose O += P V is in flight
  // The item whose O += P V of its last block is still in flight (carried into the next item),
  // with its softmax state and the index of its rows table.
  bool carried = false;
  int owner_index = 0, owner_k = 0;
  OnlineSoftmax<1> owner_sm;
  // An item's epilogue (the k-th of the CTA), then O zeroed for the next item: the functor may
  // have written it.
  const auto finish = [&](const OnlineSoftmax<1>& state, const Item<B>& item, int item_k) {
    finish_item<T, D, B, Epi>(p, state, o, item, rows[item_k % Tr::kRowTables], warp_row, lane);
    zero_o();
  };
  const auto finish_owner = [&] {
    finish(owner_sm, Item<B>(p, owner_index), owner_k);  // read again, not kept in registers
    carried = false;
  };
  // Every product waited for: unconditional where O is touched next, so that ptxas sees O
  // complete on every path there.
  const auto wait_all = [&] {
    wgmma_wait<0>();
    fence_operands(o[0]);
    fence_operands(pa[0]);
    __syncwarp();
    if (pending >= 0 && lane == 0) mbar_arrive(sh.empty(pending));
    pending = -1;
  };
  int k = 0;  // items started
  for (int index = blockIdx.x; index < num_items; index += gridDim.x, ++k) {
    Item<B> it(p, index);
    const int entries = it.e_end - it.e_begin;
    it.start_walk(n, period);
    OnlineSoftmax<1> sm;
    sm.init();
    mbar_wait(sh.q_full(), k & 1);
    const bool q_regs = Tr::kQRegsBelow > 0 && entries < Tr::kQRegsBelow;
    uint32_t qa[D / 16][4];
    if (q_regs) {
      load_q<D, B>(qa, sh.q, warp_row, lane);
      mbar_arrive(sh.q_empty());
    }

    // O += P V of key block n is not waited for on its own: S = Q K^T of block n + 1 is issued
    // behind it and one wait covers both, so the tensor cores go from one product to the next
    // without this warpgroup's round trip; P (pa) stays untouched until then, and block n's
    // stage is released after that wait.
    Span cur;
    bool have = it.next_key(p, cur);
    if (!q_regs && !have) mbar_arrive(sh.q_empty());
    if (!have) {  // no usable keys: O_spa = 0 (the functor still runs, and may write O)
      wait_all();
      if (carried) finish_owner();
      finish(sm, it, k);
      continue;
    }
    while (have) {
      float sc[1][B / 8][4];
      const int stage = n % Tr::kStages;
      const uint32_t parity = (n / Tr::kStages) & 1;
      ++n;
      mbar_wait(sh.k_full(stage), parity);
      issue_qk<T, D, B>(sc, qa, q_regs, q_rows, sh.k_tile(stage));
      const Span s = cur;
      have = it.next_key(p, cur);
      wait_all();
      fence_operands(sc[0]);
      if (!q_regs && !have) mbar_arrive(sh.q_empty());
      float alpha[1][2];
      const bool raised = s.valid < B
                              ? sm.scores<T, true, 8.f>(sc, pa, alpha, p.scale_log2, s.valid, lane)
                              : sm.scores<T, false, 8.f>(sc, pa, alpha, p.scale_log2, B, lane);
      // The previous item's O is complete; after the scores, whose registers are free then.
      if (carried) finish_owner();
      if (__any_sync(0xffffffffu, raised)) OnlineSoftmax<1>::rescale(o, alpha);
      fence_operands(o[0]);
      fence_operands(pa[0]);
      mbar_wait(sh.v_full(stage), parity);
      issue_pv<T, D, B>(o, pa, sh.v_tile(stage), s.valid, ctid);
      pending = stage;
    }
    if (!register_heavy<Epi>() && q_regs && index + static_cast<int>(gridDim.x) < num_items) {
      carried = true;
      owner_index = index;
      owner_k = k;
      owner_sm = sm;
    } else {
      wait_all();
      finish(sm, it, k);
    }
  }
  // Nothing is in flight here (the last item is never carried); the wait tells ptxas so.
  wgmma_wait<0>();
}

template <class T, int D, int B, class Epi>
__global__ void __launch_bounds__(Traits<D, B>::kThreads, Traits<D, B>::kMinBlocks)
    fwd_kernel_sm90(const __grid_constant__ Params sp) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Tr = Traits<D, B>;
  const FwdParams& p = sp.base;
  extern __shared__ __align__(1024) unsigned char smem_raw[];

  const int tid = threadIdx.x;
  Smem<D, B> sh;
  const uint32_t raw = smem_addr(smem_raw);
  sh.q = (raw + 1023u) & ~1023u;
  sh.kv = sh.q + Tr::kQBytes;
  sh.bars = sh.kv + 2 * Tr::kStages * Tr::kTileBytes;
  // The tables of the query rows' sequence positions (Traits::kRowTables), after the barriers.
  auto* rows = reinterpret_cast<int32_t(*)[B]>(smem_raw + (sh.bars - raw) + 8 * Tr::kBarriers);
  const int num_items = p.batch * p.heads * p.num_q_blocks;

  int& period = rows[Tr::kRowTables][0];  // of the walks (Item::start_walk), after the tables
  if (tid == 0) {
    sh.init_barriers(Tr::kConsumers);
    period = mean_row_length(p);
  }
  __syncthreads();

  if (tid < 128) {  // ---------------------------------------------------------------- producer
    reg_dealloc<Tr::kProducerRegs>();
    if (tid == 0)
      produce_kv<D, B>(sp, sh, num_items, period);
    else if (tid >= 32)
      produce_q<T, D, B>(p, sh, rows, num_items, tid - 32);
  } else {  // ----------------------------------------------------------------------- consumers
    reg_alloc<Tr::kConsumerRegs>();
    consume<T, D, B, Epi>(p, sh, rows, num_items, period, tid);
  }
#else
  __trap();  // built for another architecture: the launcher never selects this instance there
#endif
}

}  // namespace spaattn::cuda_detail::sm90
