// Parameters of the block-sparse attention kernels (docs/gpu.md, Attention kernels), shared by both
// families. Filled once on the host by make_fwd_params() (api.cu) and passed by value as a
// __grid_constant__ argument (the sm90 family wraps them with its tensor maps, sm90/params.cuh).
#pragma once
#include <cstdint>

#include "cuda/attention/epilogue.cuh"

namespace spaattn::cuda_detail {

struct FwdParams {
  // [b, S, H, d] tensors; strides in elements (unit stride on d).
  const void* q;
  const void* k;
  const void* v;
  void* out;
  int64_t q_stride[3], k_stride[3], v_stride[3], out_stride[3];
  float* lse;  // f32 [b, S, H], nullptr when not wanted
  int64_t lse_stride[3];

  // CSR block mask: row (b * heads + h) * num_q_blocks + i lists key blocks (logical ids).
  // row_offsets == nullptr: every row lists every key block (a dense call needs no lists).
  const int32_t* row_offsets;
  const int32_t* col_indices;
  const int32_t* text_lengths;  // L_t per batch item, nullptr: all num_text valid

  int batch, seq_len, heads;
  int num_q_blocks;  // = num_blocks (video blocks, then text blocks)
  int num_video, num_text;
  int video_offset, text_offset;  // sequence index of the first video / text token
  int num_video_blocks;

  float scale_log2;  // softmax scale * log2(e): logits are exponentiated with exp2

  // Token order of the video segment (nullptr: identity): ordered video position k (the order the
  // blocks are cut in) is sequence row video_offset + video_perm[k] of q, k, v, out and lse, and
  // of the epilogue's per-row arrays. Text rows are never permuted. Device int32 [num_video],
  // 16-byte aligned (it is copied block by block with cp.async).
  const int32_t* video_perm;
  // K and V are already in the token order (the GPU pipeline's gathered copies, gather.cuh):
  // video_perm then applies to the Q, out and lse rows and the epilogue's arrays only.
  bool kv_ordered;
  FwdEpilogue epi;
};

}  // namespace spaattn::cuda_detail
