// gather.cuh: one warp per (batch item, ordered row; text rows only when the pooling pass wrote
// the video rows) moves that row of every head of K and V in 16-byte chunks: the reads of a
// warp are one contiguous token row of the caller's [b, S, H, d] tensor (when the heads are
// packed), the writes go to H runs of d contiguous elements.
#include "cuda/check.cuh"
#include "cuda/plan/gather.cuh"

namespace spaattn::cuda::stages {
namespace {

constexpr int kWarps = 8;

// Rows copied per batch item: all of them, or the text rows only.
__host__ __device__ inline int rows_per_item(const GatherParams& p) {
  return p.text_only ? p.seq - p.num_video : p.seq;
}

__global__ void __launch_bounds__(kWarps * 32)
    gather_kv_kernel(const __grid_constant__ GatherParams p) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int per_item = rows_per_item(p);
  if (row >= static_cast<int64_t>(p.batch) * per_item) return;
  const int b = static_cast<int>(row / per_item);
  int n = static_cast<int>(row % per_item);
  if (p.text_only && n >= p.video_offset) n += p.num_video;  // text after the video
  const int vn = n - p.video_offset;
  const int src = p.perm && vn >= 0 && vn < p.num_video ? p.video_offset + __ldg(p.perm + vn) : n;
  const int chunks = p.dim / 8;  // 16-byte chunks of one head's row
  const auto* k = static_cast<const uint16_t*>(p.k) + b * p.k_stride[0] + src * p.k_stride[1];
  const auto* v = static_cast<const uint16_t*>(p.v) + b * p.v_stride[0] + src * p.v_stride[1];
  const int64_t out_row = (static_cast<int64_t>(b) * p.heads * p.seq + n) * p.dim;
  auto* ko = static_cast<uint16_t*>(p.k_out) + out_row;
  auto* vo = static_cast<uint16_t*>(p.v_out) + out_row;
  const int64_t head_out = static_cast<int64_t>(p.seq) * p.dim;
#pragma unroll 4
  for (int c = lane; c < p.heads * chunks; c += 32) {
    const int h = c / chunks, e = (c % chunks) * 8;
    const uint4 kx = __ldg(reinterpret_cast<const uint4*>(k + h * p.k_stride[2] + e));
    const uint4 vx = __ldg(reinterpret_cast<const uint4*>(v + h * p.v_stride[2] + e));
    *reinterpret_cast<uint4*>(ko + h * head_out + e) = kx;
    *reinterpret_cast<uint4*>(vo + h * head_out + e) = vx;
  }
}

}  // namespace

size_t gathered_bytes(const AttentionArgs& args) {
  return static_cast<size_t>(args.batch() * args.seq_len() * args.heads() * args.head_dim()) *
         element_size(args.q.dtype);
}

GatherParams make_gather_params(const AttentionArgs& args, const int32_t* perm, void* k_out,
                                void* v_out) {
  SPAATTN_CHECK_ARG(k_out && v_out, "gather", "expected two outputs of gathered_bytes()");
  GatherParams p;
  p.batch = static_cast<int>(args.batch());
  p.seq = static_cast<int>(args.seq_len());
  p.heads = static_cast<int>(args.heads());
  p.dim = static_cast<int>(args.head_dim());
  p.video_offset = static_cast<int>(args.layout.video_offset());
  p.num_video = static_cast<int>(args.layout.num_video);
  p.dtype = args.q.dtype;
  p.k = args.k.data;
  p.v = args.v.data;
  for (int d = 0; d < 3; ++d) {
    p.k_stride[d] = args.k.stride[d];
    p.v_stride[d] = args.v.stride[d];
  }
  p.perm = perm;
  p.k_out = k_out;
  p.v_out = v_out;
  return p;
}

void launch_gather_kv(const GatherParams& p, cudaStream_t stream) {
  const int64_t rows = static_cast<int64_t>(p.batch) * rows_per_item(p);
  if (rows == 0) return;
  gather_kv_kernel<<<static_cast<unsigned>((rows + kWarps - 1) / kWarps), kWarps * 32, 0, stream>>>(
      p);
  cuda_detail::check_launch("gather_kv_kernel");
}

TensorView gathered_view(const AttentionArgs& args, void* data) {
  const int64_t B = args.batch(), S = args.seq_len(), H = args.heads(), D = args.head_dim();
  TensorView t = TensorView::contiguous(data, args.q.dtype, {B, S, H, D}, Device::cuda);
  t.stride = {H * S * D, D, S * D, 1};
  return t;
}

}  // namespace spaattn::cuda::stages
