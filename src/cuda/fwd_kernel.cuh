// The portable block-sparse attention kernel (ALGORITHM.md section 3), FlashAttention-2 scheme:
// one CTA per (query block, head, batch item), 4 warps; Q stays in shared memory, K and V tiles
// of 64 keys stream through two cp.async stages while the previous tile is computed; scores and
// output accumulate in fp32 registers with an online softmax in the exp2 domain; P is rounded
// to the input type in registers and fed straight back to the tensor cores.
#pragma once
#include <cmath>

#include "fwd_blocks.cuh"
#include "fwd_softmax.cuh"
#include "fwd_tile.cuh"

namespace spaattn::cuda_detail {

template <class T, int D, int B>
__global__ void __launch_bounds__(FwdTraits<D, B>::kThreads, 2)
    fwd_kernel(const __grid_constant__ FwdParams p) {
  using Tr = FwdTraits<D, B>;
  constexpr int MT = Tr::kMTiles, NT = Tr::kNTiles, DT = Tr::kDTiles;
  extern __shared__ __align__(128) unsigned char smem[];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int qb = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int text_len = p.text_lengths ? min(max(p.text_lengths[b], 0), p.num_text) : p.num_text;
  const Span q = block_span<B>(p, qb, text_len);
  const int64_t row = (static_cast<int64_t>(b) * p.heads + h) * p.num_q_blocks + qb;

  const T* q_bh = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[2];
  const T* k_bh = static_cast<const T*>(p.k) + b * p.k_stride[0] + h * p.k_stride[2];
  const T* v_bh = static_cast<const T*>(p.v) + b * p.v_stride[0] + h * p.v_stride[2];

  using Cursor = KeyCursor<B, Tr::kTileN>;
  __shared__ typename Cursor::Shared cursor_shared;
  const int e_begin = p.row_offsets[row], e_end = p.row_offsets[row + 1];
  if (tid == 0) cursor_shared = {e_end, text_len};
  __syncthreads();
  Cursor keys(p, e_begin, e_end);
  KeyTile tile;
  if (q.valid == 0 || !keys.next(p, cursor_shared, tile)) {
    // Empty mask row or padding queries only: O = 0, lse = -inf, never NaN.
    store_zero_rows<T, D, Tr::kThreads>(out_rows<T>(p, b, h, q.begin), p.out_stride[1], q.count,
                                        tid);
    if (p.lse)
      for (int r = tid; r < q.count; r += Tr::kThreads)
        lse_rows(p, b, h, q.begin)[r * p.lse_stride[1]] = -INFINITY;
    return;
  }

  const uint32_t q_smem = smem_addr(smem);
  const uint32_t k_smem = q_smem + Tr::kQBytes;
  const uint32_t v_smem = k_smem + 2 * Tr::kKVBytes;
  load_rows<T, B, D, Tr::kThreads>(q_smem, q_bh + q.begin * p.q_stride[1], p.q_stride[1],
                                   q.valid, tid);
  load_rows<T, Tr::kTileN, D, Tr::kThreads>(k_smem, k_bh + tile.begin * p.k_stride[1],
                                            p.k_stride[1], tile.valid, tid);
  load_rows<T, Tr::kTileN, D, Tr::kThreads>(v_smem, v_bh + tile.begin * p.v_stride[1],
                                            p.v_stride[1], tile.valid, tid);
  cp_async_commit();
  int valid = tile.valid;  // keys of the tile being computed

  // Per-lane ldmatrix row and chunk: A (Q) and trans-B (V) fragments take rows lane % 16 and
  // chunk lane / 16; B (K) fragments take rows (lane % 8) + 8 * (lane / 16), chunk (lane / 8) % 2.
  // The swizzle XOR with (row % 8) = lane % 8 is folded into one per-lane constant.
  const int r7 = lane & 7;
  const uint32_t a_row = static_cast<uint32_t>((r7 + ((lane >> 3) & 1) * 8) * D * 2);
  const uint32_t b_row = static_cast<uint32_t>((r7 + (lane >> 4) * 8) * D * 2);
  const int xa = (lane >> 4) ^ r7;
  const int xb = ((lane >> 3) & 1) ^ r7;
  const uint32_t q_warp = q_smem + warp * MT * 16 * D * 2 + a_row;

  float o[MT][DT][4];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int t = 0; t < DT; ++t) o[m][t][0] = o[m][t][1] = o[m][t][2] = o[m][t][3] = 0.f;
  OnlineSoftmax<MT> sm;
  sm.init();

  for (int stage = 0;; stage ^= 1) {
    cp_async_wait<0>();
    __syncthreads();  // tile `stage` visible to all; everyone is done with the other stage
    const bool more = keys.next(p, cursor_shared, tile);
    if (more) {
      const uint32_t kn = k_smem + (stage ^ 1) * Tr::kKVBytes;
      const uint32_t vn = v_smem + (stage ^ 1) * Tr::kKVBytes;
      load_rows<T, Tr::kTileN, D, Tr::kThreads>(kn, k_bh + tile.begin * p.k_stride[1],
                                                p.k_stride[1], tile.valid, tid);
      load_rows<T, Tr::kTileN, D, Tr::kThreads>(vn, v_bh + tile.begin * p.v_stride[1],
                                                p.v_stride[1], tile.valid, tid);
      cp_async_commit();
    }

    // S = Q K^T for this warp's MT x 16 rows and the tile's 64 keys.
    const uint32_t k_tile = k_smem + stage * Tr::kKVBytes + b_row;
    float s[MT][NT][4];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int n = 0; n < NT; ++n) s[m][n][0] = s[m][n][1] = s[m][n][2] = s[m][n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[MT][4];
#pragma unroll
      for (int m = 0; m < MT; ++m)
        ldmatrix_x4(a[m], q_warp + m * 16 * D * 2 + (((2 * kk) ^ xa) << 4));
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        uint32_t kb[4];
        ldmatrix_x4(kb, k_tile + np * 16 * D * 2 + (((2 * kk) ^ xb) << 4));
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          Mma<T>::run(s[m][2 * np], a[m], kb[0], kb[1]);
          Mma<T>::run(s[m][2 * np + 1], a[m], kb[2], kb[3]);
        }
      }
    }
    if (valid < Tr::kTileN) mask_keys<MT, NT>(s, valid, lane);

    uint32_t pa[MT][NT / 2][4];
    sm.template update<T>(s, o, pa, p.scale_log2);

    // O += P V: V fragments through ldmatrix.trans (V is [key][d], the mma wants it by column).
    const uint32_t v_tile = v_smem + stage * Tr::kKVBytes + a_row;
#pragma unroll
    for (int kk = 0; kk < NT / 2; ++kk) {
#pragma unroll
      for (int dp = 0; dp < DT / 2; ++dp) {
        uint32_t vb[4];
        ldmatrix_x4_trans(vb, v_tile + kk * 16 * D * 2 + (((2 * dp) ^ xa) << 4));
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          Mma<T>::run(o[m][2 * dp], pa[m][kk], vb[0], vb[1]);
          Mma<T>::run(o[m][2 * dp + 1], pa[m][kk], vb[2], vb[3]);
        }
      }
    }
    if (!more) break;
    valid = tile.valid;
  }

  // Epilogue: normalise, zero the padding query rows, write lse, then stage O through this
  // warp's own rows of the Q tile (no other warp reads them) for coalesced 16-byte stores.
  const int warp_row = warp * MT * 16;
  sm.finish(o, q.valid, warp_row, lane, p.scale_log2,
            p.lse ? lse_rows(p, b, h, q.begin) : nullptr, p.lse_stride[1], q.count);
  __syncwarp();
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int r = warp_row + m * 16 + hf * 8 + (lane >> 2);
#pragma unroll
      for (int t = 0; t < DT; ++t) {
        const uint32_t v = Mma<T>::pack(o[m][t][2 * hf], o[m][t][2 * hf + 1]);
        asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(q_smem + swizzled<D>(r, t) +
                                                       (lane & 3) * 4),
                     "r"(v)
                     : "memory");
      }
    }
  __syncwarp();
  store_rows<T, D>(out_rows<T>(p, b, h, q.begin), p.out_stride[1], q_smem, warp_row, MT * 16, q.count, lane);
}

}  // namespace spaattn::cuda_detail
