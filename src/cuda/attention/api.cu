// The public CUDA entry point of cuda.hpp for attention and the internal pieces it is made of
// (attention/api.hpp), which the GPU pipeline calls with its own epilogue and token order: host-side
// checks that need the device (memory location, dtype, cp.async alignment), then one FwdParams
// and one launch on the caller's stream. Nothing is allocated and nothing synchronises.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdlib>
#include <limits>

#include "cuda/check.cuh"
#include "cuda/dispatch.cuh"
#include "cuda/attention/api.hpp"
#include "cuda/attention/launch.hpp"
#include "cuda/attention/sm90/tensor_map.hpp"
#include "cuda/plan/quant.cuh"
#include "spaattn/cuda.hpp"

namespace spaattn::cuda_detail {

void check_device_pointer(const void* ptr, const char* name, int device) {
  cudaPointerAttributes attr{};
  const cudaError_t err = cudaPointerGetAttributes(&attr, ptr);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the error so it does not surface at the next launch check
    SPAATTN_CHECK_ARG(false, name, "expected CUDA device memory (", cudaGetErrorString(err), ")");
  }
  SPAATTN_CHECK_ARG(attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged, name,
                    "expected CUDA device memory, got host memory");
  SPAATTN_CHECK_ARG(attr.device == device, name, "expected memory of the current device ", device,
                    ", got device ", attr.device);
}

namespace {

// q/k/v/out: the kernel moves rows with 16-byte cp.async / stores, so every row start must be
// 16-byte aligned: the base pointer here, the strides in validate_gpu_operands.
void check_qkv_pointer(const TensorView& t, const char* name, int device) {
  check_device_pointer(t.data, name, device);
  SPAATTN_CHECK_ARG(reinterpret_cast<uintptr_t>(t.data) % 16 == 0, name,
                    "expected a 16-byte aligned base pointer for cp.async, got ", t.data);
}

}  // namespace

void check_fp8_runs(KernelFamily family, const char* family_arg, const char* device_arg) {
  SPAATTN_CHECK_ARG(family != KernelFamily::portable, family_arg,
                    "fp8 runs on the hopper kernel family only, and the portable one was "
                    "requested");
  SPAATTN_CHECK_ARG(sm90::kernels_available(), device_arg,
                    "fp8 needs a compute capability 9.0 device and a build with sm_90a code");
}

void check_gpu_call(const AttentionArgs& args, const TensorView& out, const TensorView& lse,
                    const BlockMaskView* mask) {
  validate_gpu_operands(args, out);
  int device = 0;
  SPAATTN_CUDA_CHECK(cudaGetDevice(&device));
  check_qkv_pointer(args.q, "q", device);
  check_qkv_pointer(args.k, "k", device);
  check_qkv_pointer(args.v, "v", device);
  check_qkv_pointer(out, "out", device);
  if (!lse.empty()) {
    SPAATTN_CHECK_ARG(lse.device == Device::cuda, "lse", "expected a CUDA tensor");
    check_device_pointer(lse.data, "lse", device);
  }
  if (mask) {
    SPAATTN_CHECK_ARG(mask->row_offsets.device == Device::cuda, "mask.row_offsets",
                      "expected a CUDA tensor");
    check_device_pointer(mask->row_offsets.data, "mask.row_offsets", device);
    if (mask->col_indices.shape[0] > 0)
      check_device_pointer(mask->col_indices.data, "mask.col_indices", device);
  }
  if (!args.text_lengths.empty())
    check_device_pointer(args.text_lengths.data, "text_lengths", device);
  // Token, block and CTA indices are 32-bit in the kernel (one CTA per query block and head).
  constexpr int64_t kMaxInt = std::numeric_limits<int32_t>::max();
  SPAATTN_CHECK_ARG(args.seq_len() < kMaxInt, "q", "expected seq_len < 2^31, got ", args.seq_len());
  SPAATTN_CHECK_ARG(args.batch() * args.heads() * args.layout.num_blocks() < kMaxInt, "q",
                    "expected batch * heads * blocks < 2^31, got ",
                    args.batch() * args.heads() * args.layout.num_blocks());
  if (mask)
    SPAATTN_CHECK_ARG(mask->col_indices.shape[0] < kMaxInt, "mask.col_indices",
                      "expected fewer than 2^31 entries, got ", mask->col_indices.shape[0]);
}

FwdParams make_fwd_params(const AttentionArgs& args, const BlockMaskView& mask,
                          const TensorView& out, const TensorView& lse) {
  FwdParams p{};
  p.q = args.q.data;
  p.k = args.k.data;
  p.v = args.v.data;
  p.out = out.data;
  for (int d = 0; d < 3; ++d) {
    p.q_stride[d] = args.q.stride[d];
    p.k_stride[d] = args.k.stride[d];
    p.v_stride[d] = args.v.stride[d];
    p.out_stride[d] = out.stride[d];
    p.lse_stride[d] = lse.empty() ? 0 : lse.stride[d];
  }
  p.lse = lse.empty() ? nullptr : static_cast<float*>(lse.data);
  p.row_offsets = mask.row_offsets.ptr<const int32_t>();
  p.col_indices = mask.col_indices.ptr<const int32_t>();
  p.text_lengths = args.text_lengths.empty() ? nullptr : args.text_lengths.ptr<const int32_t>();
  const Layout& L = args.layout;
  p.batch = static_cast<int>(args.batch());
  p.seq_len = static_cast<int>(args.seq_len());
  p.heads = static_cast<int>(args.heads());
  p.num_q_blocks = static_cast<int>(L.num_blocks());
  p.num_video = static_cast<int>(L.num_video);
  p.num_text = static_cast<int>(L.num_text);
  p.video_offset = static_cast<int>(L.video_offset());
  p.text_offset = static_cast<int>(L.text_offset());
  p.num_video_blocks = static_cast<int>(L.num_video_blocks());
  p.scale_log2 = args.softmax_scale() * 1.4426950408889634f;
  return p;
}

KernelFamily resolve_family(KernelFamily requested, const FwdParams& params) {
  KernelFamily family = requested;
  const char* source = "kernel";
  if (family == KernelFamily::automatic) {
    if (const char* env = std::getenv("SPAATTN_KERNEL"); env && *env) {
      family = parse_kernel_family(env, "SPAATTN_KERNEL");
      source = "SPAATTN_KERNEL";
    }
  }
  if (family == KernelFamily::portable) return family;
  // What the Hopper family needs, in the order a user can act on it.
  const char* missing = nullptr;
  if (!sm90::kernels_available())
    missing = "a compute capability 9.0 device and a build with sm_90a code";
  else if (params.video_perm && !params.kv_ordered)
    missing = "K and V rows in the token order (the kernel does not read them through video_perm)";
  if (!missing) return KernelFamily::hopper;
  SPAATTN_CHECK_ARG(family == KernelFamily::automatic, source, "the hopper kernel family needs ",
                    missing);
  return KernelFamily::portable;
}

void launch_fwd(const FwdParams& params, DType dtype, int64_t head_dim, int block_size,
                cudaStream_t stream, KernelFamily family) {
  const FwdEpilogue& e = params.epi;
  SPAATTN_CHECK_ARG(!params.video_perm || reinterpret_cast<uintptr_t>(params.video_perm) % 16 == 0,
                    "video_perm", "expected a 16-byte aligned pointer for cp.async, got ",
                    params.video_perm);
  switch (e.kind) {
    case EpilogueKind::none:
      break;
    case EpilogueKind::block_affine:
      SPAATTN_CHECK_ARG(e.R && e.C, "epilogue", "block_affine needs R and C");
      break;
    case EpilogueKind::row_affine:
      SPAATTN_CHECK_ARG(e.rho, "epilogue", "row_affine needs rho");
      break;
    case EpilogueKind::merge_reference:
      SPAATTN_CHECK_ARG(e.prev_out && e.prev_lse && e.rho_out && params.lse, "epilogue",
                        "merge_reference needs prev_out, prev_lse, rho_out and lse");
      break;
    case EpilogueKind::calibrated:
      SPAATTN_CHECK_ARG(e.choice && e.head_drift && e.R && e.C && e.rho, "epilogue",
                        "calibrated needs choice, head_drift, R, C and rho");
      break;
    case EpilogueKind::partial_merge:
      SPAATTN_CHECK_ARG(params.lse && (e.merge_mode == MergeMode::side || (e.prev_out && e.prev_lse)) &&
                            (e.merge_mode == MergeMode::into || (e.side_out && e.side_lse)) &&
                            (e.merge_mode != MergeMode::finish || e.rho_out),
                        "epilogue", "partial_merge needs lse and, by mode, prev_out and prev_lse, "
                        "side_out and side_lse, rho_out");
      break;
  }
  if (params.fp8.q8) {
    // FP8 operands exist only for the sm90 family at block size 128 (quant.cuh checked the
    // shape when they were sized).
    SPAATTN_CHECK_ARG(block_size == 128, "precision", "fp8 needs block_size 128, got ",
                      block_size);
    check_fp8_runs(family, "precision", "precision");
    dispatch_dtype(dtype, [&](auto t) {
      dispatch_head_dim(head_dim, [&](auto d) {
        run_fwd_sm90_fp8<decltype(t), decltype(d)::value>(params, stream);
      });
    });
    return;
  }
  const bool hopper = resolve_family(family, params) == KernelFamily::hopper;
  dispatch_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    dispatch_head_dim(head_dim, [&](auto d) {
      dispatch_block_size(block_size, [&](auto b) {
        constexpr int D = decltype(d)::value, B = decltype(b)::value;
        if (hopper)
          run_fwd_sm90<T, D, B>(params, stream);
        else
          run_fwd_sm80<T, D, B>(params, stream);
      });
    });
  });
}

}  // namespace spaattn::cuda_detail

namespace spaattn::cuda {

bool available() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return count > 0;
}

void block_sparse_attention(const AttentionArgs& args, const BlockMaskView& mask, TensorView out,
                            TensorView lse, void* stream) {
  validate(args, &out, lse.empty() ? nullptr : &lse);
  validate(mask, args);
  cuda_detail::check_gpu_call(args, out, lse, &mask);
  const cuda_detail::FwdParams params = cuda_detail::make_fwd_params(args, mask, out, lse);
  cuda_detail::launch_fwd(params, args.q.dtype, args.head_dim(), args.layout.block_size,
                          static_cast<cudaStream_t>(stream), args.kernel);
}

namespace {

// The FP8 calls' own checks: Hopper first (what a user can act on), then the shape and the
// workspace.
stages::Fp8Layout check_fp8_call(const AttentionArgs& args, const void* workspace,
                                 size_t workspace_bytes) {
  cuda_detail::check_fp8_runs(args.kernel, "kernel", "precision");
  const stages::Fp8Layout l = stages::fp8_layout(args);
  SPAATTN_CHECK_ARG(workspace, "workspace", "expected device memory of ", l.total, " bytes");
  SPAATTN_CHECK_ARG(workspace_bytes >= l.total, "workspace", "expected at least ", l.total,
                    " bytes (fp8_workspace_size), got ", workspace_bytes);
  SPAATTN_CHECK_ARG(reinterpret_cast<uintptr_t>(workspace) % 256 == 0, "workspace",
                    "expected a 256-byte aligned pointer, got ", workspace);
  int device = 0;
  SPAATTN_CUDA_CHECK(cudaGetDevice(&device));
  cuda_detail::check_device_pointer(workspace, "workspace", device);
  return l;
}

}  // namespace

size_t fp8_workspace_size(const AttentionArgs& args) {
  validate(args);
  return stages::fp8_layout(args).total;
}

void quantize_fp8(const AttentionArgs& args, void* workspace, size_t workspace_bytes,
                  void* stream) {
  validate(args);
  cuda_detail::check_gpu_call(args, args.q, TensorView{});
  const stages::Fp8Layout l = check_fp8_call(args, workspace, workspace_bytes);
  stages::launch_quantize_fp8(args, l, nullptr, workspace, static_cast<cudaStream_t>(stream));
}

void block_sparse_attention_fp8(const AttentionArgs& args, const BlockMaskView& mask,
                                TensorView out, TensorView lse, const void* workspace,
                                size_t workspace_bytes, void* stream) {
  validate(args, &out, lse.empty() ? nullptr : &lse);
  validate(mask, args);
  cuda_detail::check_gpu_call(args, out, lse, &mask);
  const stages::Fp8Layout l = check_fp8_call(args, workspace, workspace_bytes);
  cuda_detail::FwdParams params = cuda_detail::make_fwd_params(args, mask, out, lse);
  params.fp8 = stages::fp8_operands(l, workspace);
  cuda_detail::launch_fwd(params, args.q.dtype, args.head_dim(), args.layout.block_size,
                          static_cast<cudaStream_t>(stream), args.kernel);
}

}  // namespace spaattn::cuda
