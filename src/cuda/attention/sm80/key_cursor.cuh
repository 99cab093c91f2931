// The portable kernel's walk over a CSR row's key tiles, and the per-CTA row tables of the
// token order it reads K and V through when they are not already in that order.
#pragma once
#include "cuda/attention/blocks.cuh"
#include "cuda/attention/ptx.cuh"

namespace spaattn::cuda_detail {

// Per-CTA row tables of the token order (attention/params.cuh video_perm), in shared memory:
// q: the sequence row of each query row of the block (always filled: identity for text blocks
//    and without a permutation); read by the Q load, the output stores and the epilogue.
// key: video_perm entries of two key blocks, the one being loaded and the next one: block e of a
//    CSR row sits in slot e % 2 and is copied in (cp.async) when block e - 1 is entered, so its
//    latency hides behind a tile of arithmetic.
template <int B>
struct alignas(16) CtaRows {  // 16-byte aligned: cp.async destinations
  int32_t q[B];
  int32_t key[2 * B];  // slot s at key + s * B
};

// A key tile: kTileN consecutive key tokens of one block, the first `valid` of them usable.
// begin >= 0: sequence index of the first token (rows are contiguous). begin < 0: a permuted
// video tile whose row r is video_offset + CtaRows::key[-1 - begin + r] (slot and offset folded
// into one index), so the tile costs no register more than a contiguous one.
struct KeyTile {
  int begin, valid;
};

// Copies the video_perm entries of video block j into a slot (cp.async, committed with the next
// K/V group); threads beyond the block's B / 4 chunks do nothing. The tail of a partial last
// block (fewer than 4 entries in its chunk) is read with plain loads, so nothing past the end of
// video_perm is touched; its unused entries are zeroed.
template <int B>
__device__ __forceinline__ void fetch_block_perm(const FwdParams& p, int32_t* slot, int j) {
  const int c = fresh_tid();
  if (c >= B / 4) return;
  const int first = j * B + 4 * c;
  const int n = p.num_video - first;
  if (n >= 4) {
    cp_async_16(smem_addr(slot + 4 * c), p.video_perm + first, 16);
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) slot[4 * c + i] = i < n ? __ldg(p.video_perm + first + i) : 0;
  }
}

// Walks the key tiles of one CSR row: each listed block gives B / kTileN tiles, tiles with no
// valid key (text padding, the empty tail of a partial last block) are skipped. Column indices
// are loaded two blocks ahead, so that on entering block e the index of block e + 1 is at hand
// and its permutation entries can be fetched (fetch_block_perm) while block e is computed. The
// state is the current block, the next two indices, the entry and the tile: 5 registers, as many
// as the begin / valid pair it replaces with the second index. The row end and L_t live in shared
// memory: they are needed only when a block is entered, and registers are the kernel's scarcest
// resource. Column lists are sorted, so video blocks (the permuted ones) come before text blocks:
// a block whose slot is read has always been fetched one iteration (one cp.async wait) earlier.
template <int B, int kTileN>
struct KeyCursor {
  int e, j, j_next, j_after, u;

  __device__ __forceinline__ KeyCursor(const FwdParams& p, int e_begin, int e_end) {
    e = e_begin - 1;
    j = -1;
    j_next = e_begin < e_end ? key_block(p, e_begin) : -1;
    j_after = e_begin + 1 < e_end ? key_block(p, e_begin + 1) : -1;
    u = B / kTileN;
  }

  __device__ __forceinline__ bool next(const FwdParams& p, const CtaShared& sh, CtaRows<B>& rows,
                                       KeyTile& t) {
    while (true) {
      if (u < B / kTileN) {
        const Span s = block_span<B>(p, j, sh.text_len);
        if (u * kTileN < s.valid) {
          t.valid = min(kTileN, s.valid - u * kTileN);
          t.begin = p.video_perm && !p.kv_ordered && j < p.num_video_blocks
                        ? -1 - ((e & 1) * B + u * kTileN)
                        : s.begin + u * kTileN;
          ++u;
          return true;
        }
      }
      const int e_end = sh.e_end;
      if (e + 1 >= e_end) return false;
      ++e;
      j = j_next;
      j_next = j_after;
      j_after = e + 2 < e_end ? key_block(p, e + 2) : -1;
      u = 0;
      if (p.video_perm && !p.kv_ordered && j_next >= 0 && j_next < p.num_video_blocks)
        fetch_block_perm<B>(p, rows.key + ((e + 1) & 1) * B, j_next);
    }
  }
};

}  // namespace spaattn::cuda_detail
