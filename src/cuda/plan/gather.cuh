// K and V gathered into the token order for the attention kernel (docs/gpu.md, K, V gather): the
// video rows through the permutation, the text rows as they are, written as contiguous
// [b, H, S, d] copies so that each key block is one run of B * d contiguous elements.
//
// Why a copy rather than the kernel's own indirection (video_perm on K and V): measured on the
// H100 at S = 76,800, H = 40, a gilbert block's 128 rows lie up to four latent frames apart, i.e.
// spread over ~150 MB of a [b, S, H, d] tensor; gathering every key tile through the permutation
// made the kernel 14% slower (113 -> 129 ms at density 0.32), while this copy moves 3.1 GB in
// about 1 ms. Q, O and lse stay permuted inside the kernel: they are touched once per CTA.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "spaattn/layout.hpp"

namespace spaattn::cuda::stages {

struct GatherParams {
  int batch = 0, seq = 0, heads = 0, dim = 0;
  int video_offset = 0, num_video = 0;
  DType dtype = DType::bf16;
  const void *k = nullptr, *v = nullptr;
  int64_t k_stride[3] = {}, v_stride[3] = {};  // elements, dims b, S, H (unit stride on d)
  const int32_t* perm = nullptr;            // ordered video token k is row video_offset + perm[k]
  void *k_out = nullptr, *v_out = nullptr;  // [b, H, S, d] contiguous, q's dtype
  // Only the text rows of every batch item (those outside [video_offset, video_offset +
  // num_video)): the pooling pass wrote the video rows (stages.cuh PoolParams::k_out).
  bool text_only = false;
};

// Bytes of one gathered copy (k_out or v_out) for the call's shape.
size_t gathered_bytes(const AttentionArgs& args);
// args: device bf16/f16 k, v with 16-byte aligned rows; perm: device int32 [N_v].
GatherParams make_gather_params(const AttentionArgs& args, const int32_t* perm, void* k_out,
                                void* v_out);
void launch_gather_kv(const GatherParams& p, cudaStream_t stream);
// The view the kernel reads a gathered copy through: [b, S, H, d] with the strides of the
// [b, H, S, d] layout.
TensorView gathered_view(const AttentionArgs& args, void* data);

}  // namespace spaattn::cuda::stages
