// The portable block-sparse attention kernel (docs/gpu.md), FlashAttention-2 scheme:
// one CTA per (query block, head, batch item) (decode_work: text query blocks first), 4 warps; Q
// stays in shared memory, K and V tiles of 64 keys stream through two cp.async stages while the
// previous tile is computed; scores and output accumulate in fp32 registers with an online softmax
// in the exp2 domain; P is rounded to the input type in registers and fed straight back to the
// tensor cores. With a token order (video_perm) the video rows are gathered and scattered through
// per-CTA row tables in shared memory (sm80/key_cursor.cuh CtaRows); the correction of the epilogue
// (attention/epilogue.cuh) is applied in registers before O is stored (attention/finish.cuh).
#pragma once
#include <cmath>

#include "cuda/attention/blocks.cuh"
#include "cuda/attention/sm80/key_cursor.cuh"
#include "cuda/attention/finish.cuh"
#include "cuda/attention/softmax.cuh"
#include "cuda/attention/sm80/step.cuh"
#include "cuda/attention/sm80/tile.cuh"

namespace spaattn::cuda_detail {

// Issues the cp.async copies of one K and one V tile into the given stage buffers: contiguous
// rows, or (tile.begin < 0) permuted video rows through the CTA's key row table.
template <class T, int D, int B, int kTileN, int kThreads>
__device__ __forceinline__ void load_kv_tile(const FwdParams& p, const CtaShared& cta,
                                             const CtaRows<B>& rows, const KeyTile& tile,
                                             uint32_t k_dst, uint32_t v_dst) {
  if (tile.begin >= 0) {
    load_rows<T, kTileN, D, kThreads>(
        k_dst, head_rows<T>(p.k, p.k_stride, cta.b, cta.h, tile.begin), p.k_stride[1], tile.valid);
    load_rows<T, kTileN, D, kThreads>(
        v_dst, head_rows<T>(p.v, p.v_stride, cta.b, cta.h, tile.begin), p.v_stride[1], tile.valid);
  } else {
    const int32_t* r = rows.key + (-1 - tile.begin);
    load_rows_indexed<T, kTileN, D, kThreads>(k_dst, head_rows<T>(p.k, p.k_stride, cta.b, cta.h, 0),
                                              p.k_stride[1], r, p.video_offset, tile.valid);
    load_rows_indexed<T, kTileN, D, kThreads>(v_dst, head_rows<T>(p.v, p.v_stride, cta.b, cta.h, 0),
                                              p.v_stride[1], r, p.video_offset, tile.valid);
  }
}

template <class T, int D, int B, class Epi>
__global__ void __launch_bounds__(FwdTraits<D, B>::kThreads, FwdTraits<D, B>::kMinBlocks)
    fwd_kernel_sm80(const __grid_constant__ FwdParams p) {
  using Tr = FwdTraits<D, B>;
  constexpr int MT = Tr::kMTiles, DT = Tr::kDTiles;
  extern __shared__ __align__(128) unsigned char smem[];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const Work w = decode_work(p, blockIdx.x);
  const int text_len = p.text_lengths ? min(max(p.text_lengths[w.b], 0), p.num_text) : p.num_text;
  const Span q = block_span<B>(p, w.qb, text_len);
  const int64_t row = (static_cast<int64_t>(w.b) * p.heads + w.h) * p.num_q_blocks + w.qb;

  // Without a token order, Q does not depend on anything: its load goes out first, beside the
  // two dependent reads (row offsets, then the first column index) that locate the first key
  // tile. With one, Q's rows come from the row table, filled before the barrier below.
  const uint32_t q_smem = smem_addr(smem);
  const uint32_t k_smem = q_smem + Tr::kQBytes;
  const uint32_t v_smem = k_smem + 2 * Tr::kKVBytes;
  if (!p.video_perm && q.valid > 0)
    load_rows<T, B, D, Tr::kThreads>(q_smem, head_rows<T>(p.q, p.q_stride, w.b, w.h, q.begin),
                                     p.q_stride[1], q.valid);

  __shared__ CtaShared cta;
  __shared__ CtaRows<B> rows;
  const int2 entries = row_entries(p, row);
  const int e_begin = entries.x, e_end = entries.y;
  if (tid == 0) cta = {w.b, w.h, w.qb, text_len, e_end};
  if (tid < q.count)
    rows.q[tid] = p.video_perm && w.qb < p.num_video_blocks
                      ? p.video_offset + __ldg(p.video_perm + w.qb * B + tid)
                      : q.begin + tid;
  KeyCursor<B, Tr::kTileN> keys(p, e_begin, e_end);
  if (p.video_perm && !p.kv_ordered) {
    // The first key block's permutation entries, read by its first tile's loads below.
    if (keys.j_next >= 0 && keys.j_next < p.num_video_blocks)
      fetch_block_perm<B>(p, rows.key + (e_begin & 1) * B, keys.j_next);
    cp_async_commit();
    cp_async_wait<0>();
  }
  __syncthreads();
  if (p.video_perm && q.valid > 0)
    load_rows_indexed<T, B, D, Tr::kThreads>(q_smem, head_rows<T>(p.q, p.q_stride, w.b, w.h, 0),
                                             p.q_stride[1], rows.q, 0, q.valid);

  float o[MT][DT][4];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int t = 0; t < DT; ++t) o[m][t][0] = o[m][t][1] = o[m][t][2] = o[m][t][3] = 0.f;
  OnlineSoftmax<MT> sm;
  sm.init();

  KeyTile tile;
  if (q.valid > 0 && keys.next(p, cta, rows, tile)) {
    load_kv_tile<T, D, B, Tr::kTileN, Tr::kThreads>(p, cta, rows, tile, k_smem, v_smem);
    cp_async_commit();
    int valid = tile.valid;  // keys of the tile being computed

    const LaneRows<D> lr(lane);  // this lane's ldmatrix rows (sm80/tile.cuh)
    const uint32_t a_row = lr.a_row, b_row = lr.b_row;
    const int xa = lr.xa, xb = lr.xb;
    const uint32_t q_warp = q_smem + warp * MT * 16 * D * 2 + a_row;

    for (int stage = 0;; stage ^= 1) {
      cp_async_wait<0>();
      __syncthreads();  // tile `stage` visible to all; everyone is done with the other stage
      const bool more = keys.next(p, cta, rows, tile);
      if (more) {
        load_kv_tile<T, D, B, Tr::kTileN, Tr::kThreads>(p, cta, rows, tile,
                                                        k_smem + (stage ^ 1) * Tr::kKVBytes,
                                                        v_smem + (stage ^ 1) * Tr::kKVBytes);
        cp_async_commit();
      }

      // kStepN keys per softmax step. For d = 128, two steps of 32 per tile: the 32-key score
      // tile keeps the peak register use (128 output + 32 score accumulators + fragments) under
      // 255 without spills, at the price of reading the Q fragments twice per tile.
      const uint32_t k_tile = k_smem + stage * Tr::kKVBytes + b_row;
      const uint32_t v_tile = v_smem + stage * Tr::kKVBytes + a_row;
#pragma unroll
      for (int step = 0; step < Tr::kTileN / Tr::kStepN; ++step) {
        if (step > 0 && valid <= step * Tr::kStepN) break;  // the rest of the tile is padding
        attend_step<T, D, MT, Tr::kStepN>(sm, o, q_warp, k_tile + step * Tr::kStepN * D * 2,
                                          v_tile + step * Tr::kStepN * D * 2, xa, xb,
                                          valid - step * Tr::kStepN, lane, p.scale_log2);
      }
      if (!more) break;
      valid = tile.valid;
    }
  } else {
    // Empty mask row or padding queries only: O_spa = 0 and lse = -inf go through the epilogue.
    // Q's load may still be in flight (not yet in a group: commit it so that the wait covers
    // it), and the staging below overwrites its tile.
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
  }

  // Epilogue: normalise, correct, write lse, then stage O through this warp's own rows of the Q
  // tile (no other warp reads them) for coalesced 16-byte stores. The query span is recomputed
  // here rather than kept in registers through the main loop.
  const Span qe = block_span<B>(p, cta.qb, cta.text_len);
  const int warp_row = warp * MT * 16;
  finish_rows<T, D, MT, Epi>(p, sm, o, cta, rows.q, qe, warp_row, lane);
  __syncwarp();
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int r = warp_row + m * 16 + hf * 8 + (lane >> 2);
#pragma unroll
      for (int t = 0; t < DT; ++t) {
        const uint32_t v = Mma<T>::pack(o[m][t][2 * hf], o[m][t][2 * hf + 1]);
        asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(q_smem + swizzled<D>(r, t) + (lane & 3) * 4),
                     "r"(v)
                     : "memory");
      }
    }
  __syncwarp();
  store_rows<T, D>(static_cast<T*>(p.out) + cta.b * p.out_stride[0] + cta.h * p.out_stride[2],
                   p.out_stride[1], rows.q, q_smem, warp_row, MT * 16, qe.count, lane);
}

}  // namespace spaattn::cuda_detail
