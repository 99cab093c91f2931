// The sm90 (Hopper) block-sparse attention kernel: warp-specialised, K and V tiles brought in by
// the copy engine (each selected key block is one contiguous box of the K / V tensors, which are
// in the token order), both matrix products on wgmma with fp32 accumulators in registers, the
// online softmax and the epilogue functor (attention/finish.cuh) shared with the portable family.
//
// Roles: the producer warpgroup walks the query block's CSR row; its warp 0 waits for a free
// stage and issues the K and V copies of each key block with usable keys, its warps 1-3 load the
// Q rows (through the token order) with cp.async. Each consumer warpgroup owns 64 query rows:
// per key block S = Q K^T (wgmma, both operands in shared memory), mask and online softmax in
// registers, P rounded to the element type and fed from registers into O += P V (wgmma, V
// transposed through its descriptor), then it frees the stage.
#pragma once
#include <cmath>

#include "cuda/attention/blocks.cuh"
#include "cuda/attention/finish.cuh"
#include "cuda/attention/softmax.cuh"
#include "cuda/attention/sm90/params.cuh"
#include "cuda/attention/sm90/ptx.cuh"

namespace spaattn::cuda_detail::sm90 {

// The key blocks of one CSR row that hold usable keys, in order; producer and consumers walk
// the same sequence, so the n-th block of either side is the n-th pipeline slot.
template <int B>
struct KeyBlocks {
  int e, e_end;
  __device__ __forceinline__ bool next(const FwdParams& p, int text_len, Span& s) {
    while (e < e_end) {
      s = block_span<B>(p, __ldg(p.col_indices + e++), text_len);
      if (s.valid > 0) return true;
    }
    return false;
  }
};

template <class T, int D, int B, class Epi>
__global__ void __launch_bounds__(Traits<D, B>::kThreads, Traits<D, B>::kMinBlocks)
    fwd_kernel_sm90(const __grid_constant__ Params sp) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Tr = Traits<D, B>;
  constexpr int S = Tr::kStages;
  const FwdParams& p = sp.base;
  extern __shared__ unsigned char smem_raw[];
  __shared__ __align__(8) uint64_t bars[1 + 3 * S];  // q_full, k_full[S], v_full[S], empty[S]
  __shared__ CtaShared cta;
  __shared__ int32_t rows_q[B];

  const int tid = threadIdx.x;
  const uint32_t q_smem = (smem_addr(smem_raw) + 1023u) & ~1023u;
  const uint32_t kv_smem = q_smem + Tr::kQBytes;  // stage s: K at + 2 s tile, V one tile later
  const uint32_t q_full = smem_addr(bars);
  const auto k_full = [&](int s) { return q_full + 8 * (1 + s); };
  const auto v_full = [&](int s) { return q_full + 8 * (1 + S + s); };
  const auto empty = [&](int s) { return q_full + 8 * (1 + 2 * S + s); };

  const Work w = decode_work(p, blockIdx.x);
  const int text_len = p.text_lengths ? min(max(p.text_lengths[w.b], 0), p.num_text) : p.num_text;
  const Span q = block_span<B>(p, w.qb, text_len);
  const int64_t row = (static_cast<int64_t>(w.b) * p.heads + w.h) * p.num_q_blocks + w.qb;
  const int e_begin = p.row_offsets[row];
  const int e_end = q.valid > 0 ? p.row_offsets[row + 1] : e_begin;  // padding only: no keys

  if (tid == 0) {
    mbar_init(q_full, 96);  // the 96 Q-loading threads of warps 1-3
    for (int s = 0; s < S; ++s) {
      mbar_init(k_full(s), 1);
      mbar_init(v_full(s), 1);
      mbar_init(empty(s), 4 * Tr::kConsumers);  // one arrival per consumer warp
    }
    fence_barrier_init();
    cta = {w.b, w.h, w.qb, text_len, e_end};
  }
  if (tid < B)
    rows_q[tid] = p.video_perm && w.qb < p.num_video_blocks
                      ? p.video_offset + __ldg(p.video_perm + w.qb * B + tid)
                      : q.begin + tid;
  __syncthreads();

  if (tid < 128) {  // ---------------------------------------------------------------- producer
    reg_dealloc<Tr::kProducerRegs>();
    if (tid == 0) {
      prefetch_tensor_map(&sp.k_map);
      prefetch_tensor_map(&sp.v_map);
      KeyBlocks<B> keys{e_begin, e_end};
      Span s;
      for (int n = 0; keys.next(p, text_len, s); ++n) {
        const int stage = n % S;
        mbar_wait(empty(stage), ((n / S) & 1) ^ 1);
        const uint32_t k_dst = kv_smem + 2 * stage * Tr::kTileBytes;
        mbar_arrive_expect_tx(k_full(stage), Tr::kTileBytes);
#pragma unroll
        for (int c = 0; c < Tr::kChunks; ++c)
          tma_load_4d(k_dst + c * Tr::kChunkBytes, &sp.k_map, k_full(stage), c * 64, s.begin,
                      w.h, w.b);
        mbar_arrive_expect_tx(v_full(stage), Tr::kTileBytes);
#pragma unroll
        for (int c = 0; c < Tr::kChunks; ++c)
          tma_load_4d(k_dst + Tr::kTileBytes + c * Tr::kChunkBytes, &sp.v_map, v_full(stage),
                      c * 64, s.begin, w.h, w.b);
      }
    } else if (tid >= 32) {
      // Q: B rows of D columns in 16-byte units, rows past the valid count zero-filled.
      const T* q_head = static_cast<const T*>(p.q) + w.b * p.q_stride[0] + w.h * p.q_stride[2];
      for (int i = tid - 32; i < B * D / 8; i += 96) {
        const int r = i / (D / 8), u = i % (D / 8);
        const uint32_t dst = q_smem + (u / 8) * Tr::kChunkBytes + r * 128 + (((u % 8) ^ (r % 8)) << 4);
        const bool ok = r < q.valid;
        const T* src = ok ? q_head + static_cast<int64_t>(rows_q[r]) * p.q_stride[1] + u * 8 : q_head;
        cp_async_16(dst, src, ok ? 16 : 0);
      }
      cp_async_wait_all();
      fence_proxy_async();
      mbar_arrive(q_full);
    }
    return;
  }

  // ------------------------------------------------------------------------------- consumers
  reg_alloc<Tr::kConsumerRegs>();
  const int cw = tid / 128 - 1;  // consumer warpgroup: query rows 64 cw .. 64 cw + 63
  const int lane = tid & 31;
  const int warp_row = cw * 64 + ((tid / 32) % 4) * 16;

  float o[1][D / 8][4];
#pragma unroll
  for (int t = 0; t < D / 8; ++t) o[0][t][0] = o[0][t][1] = o[0][t][2] = o[0][t][3] = 0.f;
  OnlineSoftmax<1> sm;
  sm.init();

  mbar_wait(q_full, 0);
  const uint32_t q_rows = q_smem + cw * 64 * 128;
  KeyBlocks<B> keys{e_begin, e_end};
  Span s;
  for (int n = 0; keys.next(p, text_len, s); ++n) {
    const int stage = n % S;
    const uint32_t parity = (n / S) & 1;
    const uint32_t k_tile = kv_smem + 2 * stage * Tr::kTileBytes;
    const uint32_t v_tile = k_tile + Tr::kTileBytes;

    float sc[1][B / 8][4];
    mbar_wait(k_full(stage), parity);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t off = (kk / 4) * Tr::kChunkBytes + (kk % 4) * 32;
      Wgmma<T, B>::ss(sc[0], smem_desc(q_rows + off, 16, 1024), smem_desc(k_tile + off, 16, 1024),
                      kk > 0);
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_operands(sc[0]);

    if (s.valid < B) mask_keys<1, B / 8>(sc, s.valid, lane);
    uint32_t pa[1][B / 16][4];
    sm.template update<T>(sc, o, pa, p.scale_log2);

    mbar_wait(v_full(stage), parity);
    if (s.valid < B) {
      // Keys past the valid count have P = 0, but their V rows (text padding, tokens past the
      // block, zero fill past the tensor) may hold anything, NaN included: zero them. The
      // consumer warpgroups split the rows, then meet at a named barrier.
      const uint4 zero = make_uint4(0, 0, 0, 0);
      for (int i = tid - 128; i < (B - s.valid) * (D / 8); i += 128 * Tr::kConsumers) {
        const int r = s.valid + i / (D / 8), u = i % (D / 8);
        asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(
                         v_tile + (u / 8) * Tr::kChunkBytes + r * 128 + (((u % 8) ^ (r % 8)) << 4)),
                     "r"(zero.x), "r"(zero.y), "r"(zero.z), "r"(zero.w)
                     : "memory");
      }
      fence_proxy_async();
      named_barrier_sync(1, 128 * Tr::kConsumers);
    }
    fence_operands(o[0]);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < B / 16; ++kk)
      Wgmma<T, D>::rs(o[0], pa[0][kk], smem_desc(v_tile + kk * 16 * 128, Tr::kChunkBytes, 1024), 1);
    wgmma_commit();
    wgmma_wait<0>();
    fence_operands(o[0]);
    __syncwarp();
    if (lane == 0) mbar_arrive(empty(stage));
  }

  // Epilogue: normalise, correct, write lse (finish_rows), then O straight from registers: each
  // quad of lanes writes 16 contiguous bytes of a row per column tile.
  const Span qe = block_span<B>(p, cta.qb, cta.text_len);
  finish_rows<T, D, 1, Epi>(p, sm, o, cta, rows_q, qe, warp_row, lane);
  T* out = static_cast<T*>(p.out) + cta.b * p.out_stride[0] + cta.h * p.out_stride[2];
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int r = warp_row + hf * 8 + (lane >> 2);
    if (r >= qe.count) continue;
    uint32_t* dst = reinterpret_cast<uint32_t*>(out + static_cast<int64_t>(rows_q[r]) * p.out_stride[1] +
                                                2 * (lane & 3));
#pragma unroll
    for (int t = 0; t < D / 8; ++t) dst[t * 4] = Mma<T>::pack(o[0][t][2 * hf], o[0][t][2 * hf + 1]);
  }
#else
  __trap();  // built for another architecture: the launcher never selects this instance there
#endif
}

}  // namespace spaattn::cuda_detail::sm90
