// Parameters of the block-sparse attention kernels (docs/gpu.md, Attention kernels), shared by both
// families. Filled once on the host by make_fwd_params() (api.cu) and passed by value as a
// __grid_constant__ argument (the sm90 family wraps them with its tensor maps, sm90/params.cuh).
#pragma once
#include <cstdint>

#include "cuda/attention/epilogue.cuh"

namespace spaattn::cuda_detail {

// The 8-bit operands of the sm90 FP8 kernel (plan/quant.cuh writes them; docs/gpu.md, FP8): Q
// and K as int8, V as FP8 e4m3. Per (batch item, head) bh and logical block j of B tokens, every
// array in block order:
//   q8, k8  int8 [bh, j * B + r, d]: row r of block j (the token order applied), rows past the
//           valid count zero; K minus its mean over the (b, h) sequence (k_mean), then each
//           array divided by its block's scale (q_scale, k_scale f32 [bh, j]; largest |x| / 127);
//   vt8     e4m3 [bh, j, d, B]: V of block j transposed (a channel's B keys contiguous), divided
//           by the per-channel scale v_scale f32 [bh, d] (largest |v| / 448), keys inside each
//           group of 16 in the order in which the kernel's P fragments hold them
//           (key_of_position);
//   q_shift f32 [bh, j * B + r]: q_r . k_mean, the logit term the smoothing of K removes
//           (constant along a row, so it changes the lse and nothing else).
struct Fp8Operands {
  const uint8_t* q8 = nullptr;
  const uint8_t* k8 = nullptr;
  const uint8_t* vt8 = nullptr;
  const float* q_scale = nullptr;
  const float* k_scale = nullptr;
  const float* v_scale = nullptr;
  const float* q_shift = nullptr;
};

// Position p (0 .. 15) of a group of 16 keys in vt8 holds key key_of_position(p) of the group:
// a thread's S accumulators cover columns 2 q, 2 q + 1 of two neighbouring 8-key tiles, and the
// FP8 A fragment it builds from them holds positions 4 q .. 4 q + 3.
__host__ __device__ constexpr int key_of_position(int p) {
  return (p & 3) < 2 ? 2 * (p >> 2) + (p & 3) : 8 + 2 * (p >> 2) + (p & 3) - 2;
}

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
  // FP8 operands (quant.cuh), all null for a 16-bit call. Set: the kernel reads q8 / k8 / vt8
  // instead of q / k / v (which it then never touches) and its output keeps out's dtype.
  Fp8Operands fp8;
};

}  // namespace spaattn::cuda_detail
