// Argument validation of an attention call (docs/choices.md, Arguments and errors) and the host
// CSR mask.
#include "spaattn/layout.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <utility>

#include "spaattn/error.hpp"

namespace spaattn {

float AttentionArgs::softmax_scale() const {
  return scale != 0.f ? scale : 1.0f / std::sqrt(static_cast<float>(head_dim()));
}

int64_t AttentionArgs::text_len(int64_t b) const {
  if (text_lengths.empty()) return layout.num_text;
  return static_cast<const int32_t*>(text_lengths.data)[b * text_lengths.stride[0]];
}

const char* to_string(KernelFamily f) {
  switch (f) {
    case KernelFamily::automatic: return "auto";
    case KernelFamily::portable: return "portable";
    case KernelFamily::hopper: return "hopper";
  }
  return "unknown";
}

KernelFamily parse_kernel_family(std::string_view name, const char* arg) {
  for (KernelFamily f : {KernelFamily::automatic, KernelFamily::portable, KernelFamily::hopper})
    if (name == to_string(f)) return f;
  throw Error(Error::Kind::invalid_argument,
              detail::concat(arg, ": expected one of auto, portable, hopper, got '",
                             std::string(name), "'"));
}

namespace {

bool is_float(DType dt) { return dt == DType::f32 || dt == DType::bf16 || dt == DType::f16; }

std::string shape_str(const TensorView& t) {
  std::string s = "[";
  for (int d = 0; d < t.rank; ++d) s += (d ? ", " : "") + std::to_string(t.shape[d]);
  return s + "]";
}

// q/k/v/out: rank 4, same shape as q, unit stride on d, memory present.
void check_qkv_like(const TensorView& t, const char* name, const TensorView& q) {
  SPAATTN_CHECK_ARG(t.data != nullptr, name, "expected a tensor, got a null pointer");
  SPAATTN_CHECK_ARG(t.rank == 4, name, "expected 4 dimensions [b, S, H, d], got ", t.rank);
  SPAATTN_CHECK_ARG(t.device == q.device, name, "expected device ", to_string(q.device), ", got ",
                    to_string(t.device));
  for (int d = 0; d < 4; ++d)
    SPAATTN_CHECK_ARG(t.shape[d] == q.shape[d], name, "expected shape ", shape_str(q), ", got ",
                      shape_str(t));
  SPAATTN_CHECK_ARG(t.stride[3] == 1, name, "expected unit stride on head_dim, got ", t.stride[3]);
  for (int d = 0; d < 3; ++d)
    SPAATTN_CHECK_ARG(t.stride[d] >= 0, name, "expected non-negative strides, got ", t.stride[d],
                      " on dim ", d);
}

// An output must not reach one element through two indices (a zero stride, or strides that
// interleave): the kernels write every index once and would race or lose values. The dims with
// more than one index, taken by increasing stride, must each step past everything the smaller
// ones reach. 128-bit arithmetic: the products of absurd shapes and strides fit.
void check_no_self_overlap(const TensorView& t, const char* name) {
  // (stride, shape) of the dims with more than one index; unused entries sort last.
  std::array<std::pair<int64_t, int64_t>, 4> dims;
  dims.fill({std::numeric_limits<int64_t>::max(), 1});
  int n = 0;
  for (int d = 0; d < std::min(t.rank, 4); ++d)
    if (t.shape[d] > 1) dims[n++] = {t.stride[d], t.shape[d]};
  std::sort(dims.begin(), dims.end());
  __int128 reach = 0;  // largest offset the smaller dims reach
  for (int i = 0; i < n; ++i) {
    SPAATTN_CHECK_ARG(dims[i].first > reach, name,
                      "expected a view whose elements do not overlap, got shape ", shape_str(t),
                      " with a stride of ", dims[i].first, " on a dim of ", dims[i].second);
    reach += static_cast<__int128>(dims[i].first) * (dims[i].second - 1);
  }
}

}  // namespace

void validate(const AttentionArgs& args, const TensorView* out, const TensorView* lse) {
  const TensorView& q = args.q;
  SPAATTN_CHECK_ARG(q.data != nullptr, "q", "expected a tensor, got a null pointer");
  SPAATTN_CHECK_ARG(q.device == Device::cpu || q.device == Device::cuda, "q",
                    "expected device cpu or cuda, got ", static_cast<int>(q.device));
  SPAATTN_CHECK_ARG(q.rank == 4, "q", "expected 4 dimensions [b, S, H, d], got ", q.rank);
  SPAATTN_CHECK_ARG(is_float(q.dtype), "q", "expected dtype float32, bfloat16 or float16, got ",
                    to_string(q.dtype));
  SPAATTN_CHECK_ARG(q.shape[0] >= 1, "q", "expected batch >= 1, got ", q.shape[0]);
  SPAATTN_CHECK_ARG(q.shape[1] >= 1, "q", "expected a non-empty sequence, got seq_len ", q.shape[1]);
  SPAATTN_CHECK_ARG(q.shape[2] >= 1, "q", "expected heads >= 1, got ", q.shape[2]);
  SPAATTN_CHECK_ARG(q.shape[3] == 64 || q.shape[3] == 128, "q", "expected head_dim 64 or 128, got ",
                    q.shape[3]);
  check_qkv_like(q, "q", q);
  check_qkv_like(args.k, "k", q);
  check_qkv_like(args.v, "v", q);
  SPAATTN_CHECK_ARG(args.k.dtype == q.dtype, "k", "expected dtype ", to_string(q.dtype),
                    " (as q), got ", to_string(args.k.dtype));
  SPAATTN_CHECK_ARG(args.v.dtype == q.dtype, "v", "expected dtype ", to_string(q.dtype),
                    " (as q), got ", to_string(args.v.dtype));

  const Layout& L = args.layout;
  SPAATTN_CHECK_ARG(L.block_size == 64 || L.block_size == 128, "layout.block_size",
                    "expected 64 or 128, got ", L.block_size);
  SPAATTN_CHECK_ARG(L.text_placement <= TextPlacement::prefix, "layout.text_placement",
                    "expected suffix or prefix, got ", static_cast<int>(L.text_placement));
  SPAATTN_CHECK_ARG(args.kernel <= KernelFamily::hopper, "kernel",
                    "expected auto, portable or hopper, got ", static_cast<int>(args.kernel));
  SPAATTN_CHECK_ARG(L.num_video >= 0 && L.num_text >= 0, "layout",
                    "expected num_video >= 0 and num_text >= 0, got ", L.num_video, " and ",
                    L.num_text);
  SPAATTN_CHECK_ARG(L.seq_len() == q.shape[1], "layout",
                    "expected num_video + num_text == seq_len ", q.shape[1], ", got ",
                    L.num_video, " + ", L.num_text);
  SPAATTN_CHECK_ARG(std::isfinite(args.scale) && args.scale >= 0.f, "scale",
                    "expected a finite value > 0 (or 0 for 1/sqrt(d)), got ", args.scale);

  if (!args.text_lengths.empty()) {
    const TensorView& tl = args.text_lengths;
    SPAATTN_CHECK_ARG(tl.dtype == DType::i32, "text_lengths", "expected dtype int32, got ",
                      to_string(tl.dtype));
    SPAATTN_CHECK_ARG(tl.rank == 1 && tl.shape[0] == q.shape[0], "text_lengths",
                      "expected shape [", q.shape[0], "], got ", shape_str(tl));
    SPAATTN_CHECK_ARG(tl.device == q.device, "text_lengths", "expected device ",
                      to_string(q.device), ", got ", to_string(tl.device));
    // Every stage reads L_t of item b at text_lengths[b]: one layout for all of them.
    SPAATTN_CHECK_ARG(tl.shape[0] == 1 || tl.stride[0] == 1, "text_lengths",
                      "expected a contiguous vector, got stride ", tl.stride[0]);
    if (tl.device == Device::cpu) {
      for (int64_t b = 0; b < q.shape[0]; ++b) {
        const int64_t lt = args.text_len(b);
        SPAATTN_CHECK_ARG(lt >= 0 && lt <= L.num_text, "text_lengths",
                          "expected 0 <= L_t <= num_text (", L.num_text, "), got ", lt,
                          " for batch item ", b);
      }
    }
  }
  if (out) {
    check_qkv_like(*out, "out", q);
    SPAATTN_CHECK_ARG(is_float(out->dtype), "out",
                      "expected dtype float32, bfloat16 or float16, got ", to_string(out->dtype));
    check_no_self_overlap(*out, "out");
  }
  if (lse && !lse->empty()) {
    SPAATTN_CHECK_ARG(lse->dtype == DType::f32, "lse", "expected dtype float32, got ",
                      to_string(lse->dtype));
    SPAATTN_CHECK_ARG(lse->rank == 3 && lse->shape[0] == q.shape[0] &&
                          lse->shape[1] == q.shape[1] && lse->shape[2] == q.shape[2],
                      "lse", "expected shape [", q.shape[0], ", ", q.shape[1], ", ", q.shape[2],
                      "], got ", shape_str(*lse));
    SPAATTN_CHECK_ARG(lse->device == q.device, "lse", "expected device ", to_string(q.device),
                      ", got ", to_string(lse->device));
    for (int d = 0; d < 3; ++d)
      SPAATTN_CHECK_ARG(lse->stride[d] >= 0, "lse", "expected non-negative strides, got ",
                        lse->stride[d], " on dim ", d);
    check_no_self_overlap(*lse, "lse");
  }
}

namespace {
void check_gpu_operand(const TensorView& t, const char* name, DType dtype) {
  SPAATTN_CHECK_ARG(t.device == Device::cuda, name, "expected a CUDA tensor, got ",
                    to_string(t.device));
  SPAATTN_CHECK_ARG(t.dtype == DType::bf16 || t.dtype == DType::f16, name,
                    "expected dtype bfloat16 or float16 on the GPU, got ", to_string(t.dtype));
  SPAATTN_CHECK_ARG(t.dtype == dtype, name, "expected dtype ", to_string(dtype), " (as q), got ",
                    to_string(t.dtype));
  for (int d = 0; d < 3; ++d)
    SPAATTN_CHECK_ARG(t.stride[d] % 8 == 0, name,
                      "expected strides that are multiples of 8 elements (16 bytes) for cp.async,"
                      " got ",
                      t.stride[d], " on dim ", d);
}
}  // namespace

void validate_gpu_operands(const AttentionArgs& args, const TensorView& out) {
  const DType dtype = args.q.dtype;
  check_gpu_operand(args.q, "q", dtype);
  check_gpu_operand(args.k, "k", dtype);
  check_gpu_operand(args.v, "v", dtype);
  check_gpu_operand(out, "out", dtype);
}

void validate(const BlockMaskView& mask, const AttentionArgs& args) {
  const int64_t nb = args.layout.num_blocks();
  SPAATTN_CHECK_ARG(mask.batch == args.batch() && mask.heads == args.heads(), "mask",
                    "expected batch ", args.batch(), " and heads ", args.heads(), ", got ",
                    mask.batch, " and ", mask.heads);
  SPAATTN_CHECK_ARG(mask.num_q_blocks == nb && mask.num_k_blocks == nb, "mask",
                    "expected ", nb, " x ", nb, " blocks (layout), got ", mask.num_q_blocks, " x ",
                    mask.num_k_blocks);
  const int64_t rows = mask.batch * mask.heads * mask.num_q_blocks;
  const TensorView& ro = mask.row_offsets;
  const TensorView& ci = mask.col_indices;
  SPAATTN_CHECK_ARG(ro.data && ro.dtype == DType::i32 && ro.rank == 1 && ro.shape[0] == rows + 1 &&
                        ro.stride[0] == 1,
                    "mask.row_offsets", "expected contiguous int32 [", rows + 1, "], got ",
                    to_string(ro.dtype), " ", shape_str(ro));
  // An empty list (a mask that selects nothing) may come with any stride and no data.
  SPAATTN_CHECK_ARG(ci.dtype == DType::i32 && ci.rank == 1 &&
                        (ci.shape[0] == 0 || (ci.data && ci.stride[0] == 1)),
                    "mask.col_indices", "expected contiguous int32 [nnz], got ",
                    to_string(ci.dtype), " ", shape_str(ci));
  SPAATTN_CHECK_ARG(ci.shape[0] <= kMaxMaskEntries, "mask.col_indices",
                    "expected fewer than 2^31 entries (int32 offsets), got ", ci.shape[0]);
  SPAATTN_CHECK_ARG(ro.device == args.q.device && ci.device == args.q.device, "mask",
                    "expected device ", to_string(args.q.device));
  if (ro.device != Device::cpu) return;  // device masks: contents are produced by the GPU plan
  const int32_t* off = ro.ptr<int32_t>();
  const int32_t* col = ci.ptr<int32_t>();
  const int64_t nnz = ci.shape[0];
  // Offsets first, all of them, so that no column is read through an offset past nnz.
  SPAATTN_CHECK_ARG(off[0] == 0 && off[rows] == nnz, "mask.row_offsets",
                    "expected to start at 0 and end at nnz ", nnz, ", got ", off[0], " and ",
                    off[rows]);
  for (int64_t r = 0; r < rows; ++r)
    SPAATTN_CHECK_ARG(off[r] <= off[r + 1] && off[r + 1] <= nnz, "mask.row_offsets",
                      "expected non-decreasing offsets in [0, ", nnz, "], got ", off[r], " then ",
                      off[r + 1], " at row ", r);
  for (int64_t r = 0; r < rows; ++r)
    for (int32_t e = off[r]; e < off[r + 1]; ++e)
      SPAATTN_CHECK_ARG(col[e] >= 0 && col[e] < nb && (e == off[r] || col[e] > col[e - 1]),
                        "mask.col_indices", "expected sorted unique block ids in [0, ", nb,
                        "), got ", col[e], " in row ", r);
}

BlockMaskView BlockMask::view() const {
  BlockMaskView v;
  v.batch = batch;
  v.heads = heads;
  v.num_q_blocks = num_q_blocks;
  v.num_k_blocks = num_k_blocks;
  v.row_offsets = TensorView::contiguous(const_cast<int32_t*>(row_offsets.data()), DType::i32,
                                         {static_cast<int64_t>(row_offsets.size())});
  v.col_indices = TensorView::contiguous(const_cast<int32_t*>(col_indices.data()), DType::i32,
                                         {static_cast<int64_t>(col_indices.size())});
  return v;
}

BlockMask BlockMask::full(int64_t batch, int64_t heads, int64_t nq, int64_t nk) {
  std::vector<uint8_t> dense(static_cast<size_t>(batch * heads * nq * nk), 1);
  return from_dense(dense.data(), batch, heads, nq, nk);
}

BlockMask BlockMask::from_dense(const uint8_t* dense, int64_t batch, int64_t heads, int64_t nq,
                                int64_t nk) {
  BlockMask m;
  m.batch = batch;
  m.heads = heads;
  m.num_q_blocks = nq;
  m.num_k_blocks = nk;
  SPAATTN_CHECK_ARG(nk < kMaxMaskEntries, "mask", "expected fewer than 2^31 key blocks, got ", nk);
  int64_t total = 0;  // counted first: the int32 offsets must hold it
  for (int64_t i = 0; i < m.rows() * nk; ++i) total += dense[i] != 0;
  SPAATTN_CHECK_ARG(total <= kMaxMaskEntries, "mask",
                    "expected at most 2^31 - 1 selected blocks in all (int32 offsets), got ", total);
  m.row_offsets.reserve(static_cast<size_t>(m.rows() + 1));
  m.col_indices.reserve(static_cast<size_t>(total));
  m.row_offsets.push_back(0);
  for (int64_t r = 0; r < m.rows(); ++r) {
    for (int64_t j = 0; j < nk; ++j)
      if (dense[r * nk + j]) m.col_indices.push_back(static_cast<int32_t>(j));
    m.row_offsets.push_back(static_cast<int32_t>(m.col_indices.size()));
  }
  return m;
}

std::vector<uint8_t> BlockMask::to_dense() const {
  std::vector<uint8_t> dense(static_cast<size_t>(rows() * num_k_blocks), 0);
  for (int64_t r = 0; r < rows(); ++r)
    for (int32_t e = row_offsets[r]; e < row_offsets[r + 1]; ++e)
      dense[r * num_k_blocks + col_indices[e]] = 1;
  return dense;
}

double BlockMask::density(const Layout& layout) const {
  const double s = static_cast<double>(layout.seq_len());
  double pairs = 0;
  for (int64_t r = 0; r < rows(); ++r) {
    const int64_t i = r % num_q_blocks;
    double keys = 0;
    for (int32_t e = row_offsets[r]; e < row_offsets[r + 1]; ++e)
      keys += static_cast<double>(layout.block_count(col_indices[e]));
    pairs += static_cast<double>(layout.block_count(i)) * keys;
  }
  return rows() == 0 ? 0.0 : pairs / (static_cast<double>(batch * heads) * s * s);
}

}  // namespace spaattn
