// Block geometry on the device: where a logical block's tokens lie (Layout::block_begin,
// block_count, valid_count of layout.hpp) and the walk over a CSR row's key tiles.
#pragma once
#include "fwd_params.cuh"

namespace spaattn::cuda_detail {

// What one CTA computes: query block qb of head h of batch item b.
struct Work {
  int b, h, qb;
};

// CTA index -> work. Text query blocks of every (batch item, head) come first, then the video
// blocks head by head: text query rows are usually dense (Rectified SpaAttn, CogVideoX masks),
// so the heaviest CTAs start in the first wave instead of trailing at the end, while the video
// blocks of one head, resident together, share that head's K and V in L2.
__device__ __forceinline__ Work decode_work(const FwdParams& p, int index) {
  const int nt = p.num_q_blocks - p.num_video_blocks;
  const int text_items = p.batch * p.heads * nt;
  if (index < text_items) {
    const int bh = index / nt;
    return Work{bh / p.heads, bh % p.heads, p.num_video_blocks + index % nt};
  }
  index -= text_items;
  const int bh = index / p.num_video_blocks;
  return Work{bh / p.heads, bh % p.heads, index % p.num_video_blocks};
}

// Per-CTA values the threads need only now and then (when a key block is entered, in the
// epilogue): kept in shared memory rather than in registers, the main loop's scarce resource.
struct CtaShared {
  int b, h, qb, text_len, e_end;
};

// Tokens of one block: sequence index of the first, real count n_j, and how many may be used
// (text padding beyond L_t excluded).
struct Span {
  int begin, count, valid;
};

template <int B>
__device__ __forceinline__ Span block_span(const FwdParams& p, int j, int text_len) {
  Span s{0, 0, 0};
  if (j < 0) return s;
  if (j < p.num_video_blocks) {
    const int first = j * B;
    s.begin = p.video_offset + first;
    s.count = min(B, p.num_video - first);
    s.valid = s.count;
  } else {
    const int first = (j - p.num_video_blocks) * B;
    if (first >= p.num_text) return s;  // an index past the last block selects nothing
    s.begin = p.text_offset + first;
    s.count = min(B, p.num_text - first);
    s.valid = max(0, min(s.count, text_len - first));
  }
  return s;
}

// First output row / lse entry of (batch b, head h) at sequence index `begin`.
template <class T>
__device__ __forceinline__ T* out_rows(const FwdParams& p, int b, int h, int begin) {
  return static_cast<T*>(p.out) + b * p.out_stride[0] + h * p.out_stride[2] +
         begin * p.out_stride[1];
}
__device__ __forceinline__ float* lse_rows(const FwdParams& p, int b, int h, int begin) {
  return p.lse + b * p.lse_stride[0] + h * p.lse_stride[2] + begin * p.lse_stride[1];
}

// A key tile: kTileN consecutive key tokens of one block, the first `valid` of them usable.
struct KeyTile {
  int begin, valid;
};

// Walks the key tiles of one CSR row: each listed block gives B / kTileN tiles, tiles with no
// valid key (text padding, the empty tail of a partial last block) are skipped. The next
// column index is loaded one call ahead so its latency hides behind a tile's arithmetic. The
// row end and L_t live in shared memory: they are needed only when a block is entered, and
// registers are the kernel's scarcest resource.
template <int B, int kTileN>
struct KeyCursor {
  int e, j_next, u, begin, valid;

  __device__ __forceinline__ KeyCursor(const FwdParams& p, int e_begin, int e_end) {
    e = e_begin - 1;
    j_next = e_begin < e_end ? __ldg(p.col_indices + e_begin) : -1;
    u = B / kTileN;
    begin = valid = 0;
  }

  __device__ __forceinline__ bool next(const FwdParams& p, const CtaShared& sh, KeyTile& t) {
    while (true) {
      if (u < B / kTileN && u * kTileN < valid) {
        t.begin = begin + u * kTileN;
        t.valid = min(kTileN, valid - u * kTileN);
        ++u;
        return true;
      }
      const int e_end = sh.e_end;
      if (e + 1 >= e_end) return false;
      ++e;
      const Span s = block_span<B>(p, j_next, sh.text_len);
      begin = s.begin;
      valid = s.valid;
      u = 0;
      j_next = e + 1 < e_end ? __ldg(p.col_indices + e + 1) : -1;
    }
  }
};

}  // namespace spaattn::cuda_detail
