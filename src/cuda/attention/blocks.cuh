// Block geometry on the device, shared by both kernel families: which work item a CTA computes,
// and where a logical block's tokens lie (Layout::block_begin, block_count, valid_count of
// layout.hpp).
#pragma once
#include "cuda/attention/params.cuh"
#include "cuda/attention/ptx.cuh"

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

// The key-block entries of mask row `row`: [begin, end) of the CSR lists, or every key block
// when the call has no lists (row_offsets == nullptr: a dense call, whose entry e is block e).
__device__ __forceinline__ int2 row_entries(const FwdParams& p, int64_t row) {
  if (!p.row_offsets) return make_int2(0, p.num_q_blocks);
  return make_int2(p.row_offsets[row], p.row_offsets[row + 1]);
}
__device__ __forceinline__ int key_block(const FwdParams& p, int e) {
  return p.row_offsets ? __ldg(p.col_indices + e) : e;
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

}  // namespace spaattn::cuda_detail
