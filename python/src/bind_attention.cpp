// Block-sparse attention (docs/methods.md) on the CPU reference or the CUDA kernel,
// chosen by q's device, and the conversion of dense block masks into CSR index lists.
#include <nanobind/stl/array.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <vector>

#include "bindings.hpp"
#include "views.hpp"

namespace spaattn::python {
namespace {

// The precision setting of the functional call: fp8 runs on CUDA tensors only.
Precision call_precision(const std::string& precision, Device device) {
  const Precision p = parse_precision(precision, "precision");
  SPAATTN_CHECK_ARG(p != Precision::fp8 || device == Device::cuda, "precision",
                    "fp8 needs CUDA tensors (the Hopper FP8 kernel), got ", to_string(device),
                    " tensors");
  return p;
}

void attention(const In& q, const In& k, const In& v, const In& row_offsets,
               const In& col_indices, const Out& out, const std::optional<Out>& lse,
               const std::optional<In>& text_lengths, const std::optional<In>& text_lengths_host,
               int64_t num_text, const std::string& text_placement, int block_size, float scale,
               const std::string& kernel, const std::string& precision,
               std::optional<std::array<int64_t, 4>> mask_dims, const std::optional<Out>& workspace,
               uintptr_t stream) {
  AttentionArgs args = make_args(q, k, v, text_lengths, text_lengths_host, num_text,
                                 text_placement, block_size, scale);
  args.kernel = parse_kernel_family(kernel, "kernel");
  const TensorView o = to_view(out, "out");
  const TensorView l = to_view(lse, "lse");
  // The call is validated before its layout is used: counting blocks divides by block_size.
  // Host text lengths are read here; device ones only through their host copy (make_args).
  validate(args, &o, l.empty() ? nullptr : &l);
  const bool fp8 = call_precision(precision, args.q.device) == Precision::fp8;
  // CSR lists carry no dims: those of the call, unless the dense mask they came from had others.
  BlockMaskView mask;
  mask.batch = args.q.shape[0];
  mask.heads = args.q.shape[2];
  mask.num_q_blocks = mask.num_k_blocks = args.layout.num_blocks();
  if (mask_dims) {
    mask.batch = (*mask_dims)[0];
    mask.heads = (*mask_dims)[1];
    mask.num_q_blocks = (*mask_dims)[2];
    mask.num_k_blocks = (*mask_dims)[3];
  }
  mask.row_offsets = to_view(row_offsets, "mask.row_offsets");
  mask.col_indices = to_view(col_indices, "mask.col_indices");
  if (fp8) {
    // The mask's checks before the quantisation runs; the workspace comes from the caller
    // (fp8_workspace_size below).
    validate(mask, args);
    void* ws = workspace ? workspace->data() : nullptr;
    const size_t bytes = workspace ? workspace->nbytes() : 0;
    nb::gil_scoped_release release;
    cuda::quantize_fp8(args, ws, bytes, to_stream(stream));
    cuda::block_sparse_attention_fp8(args, mask, o, l, ws, bytes, to_stream(stream));
    return;
  }
  nb::gil_scoped_release release;
  if (args.q.device == Device::cuda)
    cuda::block_sparse_attention(args, mask, o, l, to_stream(stream));
  else
    cpu::block_sparse_attention(args, mask, o, l);
}

// Bytes of device workspace the FP8 functional call needs (its quantised Q, K, V and scales).
size_t fp8_workspace_size(const In& q, const In& k, const In& v, int64_t num_text,
                          const std::string& text_placement, int block_size) {
  const AttentionArgs args =
      make_args(q, k, v, std::nullopt, std::nullopt, num_text, text_placement, block_size, 0.f);
  return cuda::fp8_workspace_size(args);
}

// attention()'s checks from the tensors' metadata (torch's fake tensors): q, k, v, out, lse, the
// text lengths and the layout. The mask's lists are checked when the call runs.
void check_attention(const Meta& q, const Meta& k, const Meta& v, const Meta& out,
                     const std::optional<Meta>& lse, const std::optional<Meta>& text_lengths,
                     int64_t num_text, const std::string& text_placement, int block_size,
                     float scale, const std::string& kernel, const std::string& precision) {
  std::vector<int32_t> zeros;
  AttentionArgs args =
      meta_args(q, k, v, text_lengths, zeros, num_text, text_placement, block_size);
  args.scale = scale;
  args.kernel = parse_kernel_family(kernel, "kernel");
  const TensorView o = meta_view(out, "out");
  const TensorView l = lse ? meta_view(*lse, "lse") : TensorView{};
  validate(args, &o, l.empty() ? nullptr : &l);
  const bool fp8 = call_precision(precision, args.q.device) == Precision::fp8;
  if (args.q.device == Device::cuda) validate_gpu_operands(args, o);
  if (fp8) (void)cuda::fp8_workspace_size(args);  // its shape checks (block size, head dim)
}

// Mask rows (b * H * num_q_blocks) of a dense [b, H, nq, nk] mask.
BlockMaskView mask_dims(const TensorView& dense) {
  SPAATTN_CHECK_ARG(dense.rank == 4, "mask",
                    "expected a dense [batch, heads, num_q_blocks, num_k_blocks] mask, got ",
                    dense.rank, " dimensions");
  BlockMaskView m;
  m.batch = dense.shape[0];
  m.heads = dense.shape[1];
  m.num_q_blocks = dense.shape[2];
  m.num_k_blocks = dense.shape[3];
  return m;
}

void dense_to_csr_device(const In& dense, const Out& row_offsets, const Out& col_indices,
                         const Out& workspace, uintptr_t stream) {
  const TensorView d = to_view(dense, "mask");
  BlockMaskView out = mask_dims(d);
  out.row_offsets = to_view(row_offsets, "row_offsets");
  out.col_indices = to_view(col_indices, "col_indices");
  const size_t need = cuda::dense_to_csr_workspace_size(out.batch * out.heads * out.num_q_blocks);
  SPAATTN_CHECK_ARG(workspace.nbytes() >= need, "workspace", "expected at least ", need,
                    " bytes, got ", workspace.nbytes());
  void* ws = workspace.data();
  nb::gil_scoped_release release;
  cuda::dense_to_csr(d, out, ws, to_stream(stream));
}

std::pair<Int32Array, Int32Array> dense_to_csr_host(const In& dense) {
  const TensorView d = to_view(dense, "mask");
  const BlockMaskView dims = mask_dims(d);
  SPAATTN_CHECK_ARG(d.device == Device::cpu, "mask", "expected host memory, got ",
                    to_string(d.device));
  SPAATTN_CHECK_ARG(d.dtype == DType::u8, "mask", "expected dtype bool or uint8, got ",
                    to_string(d.dtype));
  SPAATTN_CHECK_ARG(d.is_contiguous(), "mask", "expected a contiguous tensor");
  BlockMask mask = BlockMask::from_dense(d.ptr<const uint8_t>(), dims.batch, dims.heads,
                                         dims.num_q_blocks, dims.num_k_blocks);
  return {to_numpy(std::move(mask.row_offsets)), to_numpy(std::move(mask.col_indices))};
}

}  // namespace

void bind_attention(nb::module_& m) {
  using namespace nb::literals;
  m.def("cuda_available", &cuda::available,
        "True when spaattn was built with CUDA and a CUDA device is present.");
  m.def("block_sparse_attention", &attention, "q"_a, "k"_a, "v"_a, "row_offsets"_a,
        "col_indices"_a, "out"_a, "lse"_a.none(), "text_lengths"_a.none(),
        "text_lengths_host"_a.none(), "num_text"_a, "text_placement"_a, "block_size"_a,
        "scale"_a, "kernel"_a, "precision"_a, "mask_dims"_a.none(), "workspace"_a.none(),
        "stream"_a,
        "Block-sparse attention over CSR block lists into `out` (and `lse` when given); "
        "precision fp8 quantises into `workspace` first.");
  m.def("fp8_workspace_size", &fp8_workspace_size, "q"_a, "k"_a, "v"_a, "num_text"_a,
        "text_placement"_a, "block_size"_a,
        "Bytes of device workspace block_sparse_attention needs with precision fp8.");
  m.def("check_block_sparse_attention", &check_attention, "q"_a, "k"_a, "v"_a, "out"_a,
        "lse"_a.none(), "text_lengths"_a.none(), "num_text"_a, "text_placement"_a, "block_size"_a,
        "scale"_a, "kernel"_a, "precision"_a,
        "block_sparse_attention's checks from metadata (shape, strides, dtype, device) tuples.");
  m.def("dense_to_csr_workspace_size", &cuda::dense_to_csr_workspace_size, "rows"_a);
  m.def("dense_to_csr", &dense_to_csr_device, "mask"_a, "row_offsets"_a, "col_indices"_a,
        "workspace"_a, "stream"_a, "Dense CUDA block mask -> CSR lists on the GPU.");
  m.def("dense_to_csr_host", &dense_to_csr_host, "mask"_a,
        "Dense host block mask -> (row_offsets, col_indices) int32 numpy arrays.");
}

}  // namespace spaattn::python
