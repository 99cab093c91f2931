// Argument validation (docs/choices.md): every invalid argument throws spaattn::Error naming
// it, before any work.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "cpu/testing.hpp"

namespace spaattn {
namespace {

using testing::Call;
using testing::expect_error;

TEST(Validation, AcceptsAWellFormedCall) {
  Call c(2, 100, 13, 3, 64);
  TensorView out = c.out_view();
  EXPECT_NO_THROW(validate(c.args, &out, nullptr));
}

TEST(Validation, HeadDimDtypeShapeAndStride) {
  Call c(1, 70, 0, 2, 64);
  AttentionArgs a = c.args;
  a.q.shape[3] = a.k.shape[3] = a.v.shape[3] = 96;
  expect_error([&] { validate(a); }, "q", "expected head_dim 64 or 128, got 96");
  a = c.args;
  a.k.dtype = DType::bf16;
  expect_error([&] { validate(a); }, "k", "expected dtype float32 (as q), got bfloat16");
  a = c.args;
  a.v.shape[2] = 3;
  expect_error([&] { validate(a); }, "v", "expected shape [1, 70, 2, 64], got [1, 70, 3, 64]");
  a = c.args;
  a.q.stride[3] = 2;
  expect_error([&] { validate(a); }, "q", "expected unit stride on head_dim, got 2");
  a = c.args;
  a.q.dtype = a.k.dtype = a.v.dtype = DType::i32;
  expect_error([&] { validate(a); }, "q", "got int32");
}

TEST(Validation, LayoutTextLengthsAndEmptySequences) {
  Call c(2, 50, 20, 1, 64);
  AttentionArgs a = c.args;
  a.layout.num_text = 21;
  expect_error([&] { validate(a); }, "layout", "expected num_video + num_text == seq_len 70");
  a = c.args;
  a.layout.block_size = 96;
  expect_error([&] { validate(a); }, "layout.block_size", "expected 64 or 128, got 96");
  int32_t lt[2] = {20, 21};
  a = c.args;
  a.text_lengths = TensorView::contiguous(lt, DType::i32, {2});
  expect_error([&] { validate(a); }, "text_lengths", "got 21 for batch item 1");
  a.text_lengths = TensorView::contiguous(lt, DType::i32, {1});
  expect_error([&] { validate(a); }, "text_lengths", "expected shape [2], got [1]");
  a = c.args;
  a.q.shape[1] = a.k.shape[1] = a.v.shape[1] = 0;
  a.layout = Layout{.num_video = 0, .num_text = 0, .block_size = 64};
  expect_error([&] { validate(a); }, "q", "expected a non-empty sequence, got seq_len 0");
  a = c.args;
  a.scale = std::nanf("");
  expect_error([&] { validate(a); }, "scale", "got nan");
}

TEST(Validation, OutputsAndMasks) {
  Call c(1, 130, 5, 2, 64);
  TensorView out = c.out_view();
  out.shape[1] = 134;
  expect_error([&] { validate(c.args, &out, nullptr); }, "out", "expected shape");
  std::vector<float> lse_d(135 * 2);
  TensorView lse = TensorView::contiguous(lse_d.data(), DType::f32, {1, 135, 2});
  lse.dtype = DType::bf16;
  expect_error([&] { validate(c.args, nullptr, &lse); }, "lse", "expected dtype float32");

  const int64_t nb = c.args.layout.num_blocks();  // 3 video blocks of 64 + 1 text block
  ASSERT_EQ(nb, 4);
  BlockMask m = BlockMask::full(1, 2, nb, nb);
  EXPECT_NO_THROW(validate(m.view(), c.args));
  BlockMask wrong = BlockMask::full(1, 2, nb - 1, nb - 1);
  expect_error([&] { validate(wrong.view(), c.args); }, "mask", "expected 4 x 4 blocks");
  m.col_indices[1] = 0;  // row 0 now lists 0, 0, 2, 3
  expect_error([&] { validate(m.view(), c.args); }, "mask.col_indices", "sorted unique");
  m.col_indices[1] = 7;
  expect_error([&] { validate(m.view(), c.args); }, "mask.col_indices", "got 7 in row 0");

  // Offsets are checked before any column is read through them: an offset past nnz in the
  // middle, or decreasing offsets, are errors of row_offsets (nothing beyond col_indices read).
  BlockMask bad = BlockMask::full(1, 2, nb, nb);
  const int32_t nnz = static_cast<int32_t>(bad.col_indices.size());
  bad.row_offsets[1] = nnz + 1000;
  expect_error([&] { validate(bad.view(), c.args); }, "mask.row_offsets",
               "then " + std::to_string(nnz + 1000) + " at row 0");
  bad = BlockMask::full(1, 2, nb, nb);
  bad.row_offsets[2] = 1;  // 0, 4, 1, ...
  expect_error([&] { validate(bad.view(), c.args); }, "mask.row_offsets", "4 then 1 at row 1");

  // A mask that selects nothing is valid: zero-size lists, with any stride and no data.
  BlockMask none;
  none.batch = 1;
  none.heads = 2;
  none.num_q_blocks = none.num_k_blocks = nb;
  none.row_offsets.assign(static_cast<size_t>(2 * nb + 1), 0);
  BlockMaskView nv = none.view();
  nv.col_indices.data = nullptr;
  nv.col_indices.stride[0] = 0;
  EXPECT_NO_THROW(validate(nv, c.args));
  // More entries than int32 offsets can address: refused before anything is read.
  BlockMaskView huge = m.view();
  huge.col_indices.shape[0] = int64_t{1} << 31;
  expect_error([&] { validate(huge, c.args); }, "mask.col_indices", "fewer than 2^31");
}

// Outputs that reach an element twice, enum values out of range and grids whose size does not fit
// are refused, naming the argument.
TEST(Validation, OverlappingOutputsEnumsAndGrids) {
  Call c(1, 130, 5, 2, 64);
  TensorView out = c.out_view();
  out.stride[1] = 0;  // every token of a head writes the same row
  expect_error([&] { validate(c.args, &out, nullptr); }, "out", "do not overlap");
  out = c.out_view();
  out.stride[2] = 32;  // heads interleave with the 64 columns of a row
  expect_error([&] { validate(c.args, &out, nullptr); }, "out", "do not overlap");
  out = c.out_view();
  EXPECT_NO_THROW(validate(c.args, &out, nullptr));
  std::vector<float> lse_d(135 * 2);
  TensorView lse = TensorView::contiguous(lse_d.data(), DType::f32, {1, 135, 2});
  lse.stride[2] = 0;
  expect_error([&] { validate(c.args, nullptr, &lse); }, "lse", "do not overlap");

  AttentionArgs a = c.args;
  std::vector<int32_t> lengths = {5, 99, 3, 99};
  a.text_lengths = TensorView::contiguous(lengths.data(), DType::i32, {2});
  a.text_lengths.shape[0] = 1;
  EXPECT_NO_THROW(validate(a));  // batch 1: the stride of a single entry is never used
  Call c2(2, 130, 5, 2, 64);
  a = c2.args;
  a.text_lengths = TensorView::contiguous(lengths.data(), DType::i32, {2});
  a.text_lengths.stride[0] = 2;  // L_t = 5, 3 at a stride of 2
  expect_error([&] { validate(a); }, "text_lengths", "expected a contiguous vector, got stride 2");
  a = c.args;
  a.layout.text_placement = static_cast<TextPlacement>(5);
  expect_error([&] { validate(a); }, "layout.text_placement", "got 5");
  a = c.args;
  a.q.device = static_cast<Device>(9);
  expect_error([&] { validate(a); }, "q", "expected device cpu or cuda, got 9");
  a = c.args;
  a.kernel = static_cast<KernelFamily>(3);
  expect_error([&] { validate(a); }, "kernel", "got 3");

  Config cfg;
  cfg.method = static_cast<Method>(11);
  expect_error([&] { cfg.validate(); }, "config.method", "got 11");
  cfg = Config{};
  cfg.select.selector = static_cast<Selector>(12);
  expect_error([&] { cfg.validate(); }, "config.select.selector", "got 12");
  cfg = Config{};
  cfg.order.kind = static_cast<OrderKind>(13);
  expect_error([&] { cfg.validate(); }, "config.order.kind", "got 13");
  cfg = Config{};
  cfg.order.grid = Grid{int64_t{1} << 32, int64_t{1} << 32, 1};  // t * h * w wraps to 0
  expect_error([&] { cfg.validate(); }, "order.grid", "expected at most");
  cfg.order.grid = Grid{4, 0, 4};
  expect_error([&] { cfg.validate(); }, "order.grid", "expected t, h, w >= 1");
}

// Attention under a mask that selects nothing: every row is 0 with lse = -inf.
TEST(Validation, EmptyMaskGivesZerosAndMinusInfinity) {
  Call c(1, 130, 5, 2, 64);
  const int64_t nb = c.args.layout.num_blocks();
  BlockMask none;
  none.batch = 1;
  none.heads = 2;
  none.num_q_blocks = none.num_k_blocks = nb;
  none.row_offsets.assign(static_cast<size_t>(2 * nb + 1), 0);
  std::vector<float> out_d(135 * 2 * 64, NAN), lse_d(135 * 2, NAN);
  const TensorView out = TensorView::contiguous(out_d.data(), DType::f32, {1, 135, 2, 64});
  const TensorView lse = TensorView::contiguous(lse_d.data(), DType::f32, {1, 135, 2});
  cpu::block_sparse_attention(c.args, none.view(), out, lse);
  for (float x : out_d) ASSERT_EQ(x, 0.f);
  for (float l : lse_d) ASSERT_TRUE(std::isinf(l) && l < 0);
}

TEST(Validation, ConfigFields) {
  Config c;
  c.select.sparsity = 1.2;
  expect_error([&] { c.validate(); }, "config.select.sparsity", "got 1.2");
  c = Config{};
  c.select.p = -0.1;
  expect_error([&] { c.validate(); }, "config.select.p", "got -0.1");
  c = Config{};
  c.block_size = 32;
  expect_error([&] { c.validate(); }, "config.block_size", "expected 64 or 128, got 32");
  c = Config{};
  c.rettention.ref_period = 0;
  expect_error([&] { c.validate(); }, "config.rettention.ref_period", "got 0");
  c = Config{};
  c.select.selector = Selector::local;
  expect_error([&] { c.validate(); }, "config.select.selector", "expected a grid");
  expect_error([&] { parse_method("flash"); }, "method", "got 'flash'");
  EXPECT_EQ(parse_method("rectified_rettention"), Method::rectified_rettention);
  c = Config{};
  c.kernel = static_cast<KernelFamily>(7);
  expect_error([&] { c.validate(); }, "config.kernel", "got 7");
  expect_error([&] { parse_kernel_family("sm90"); }, "kernel", "got 'sm90'");
  for (KernelFamily f : {KernelFamily::automatic, KernelFamily::portable, KernelFamily::hopper})
    EXPECT_EQ(parse_kernel_family(to_string(f)), f);
  // FP8: block size 128, the Hopper family (any method); parsed by name.
  c = Config{};
  c.precision = static_cast<Precision>(5);
  expect_error([&] { c.validate(); }, "config.precision", "got 5");
  c = Config{};
  c.precision = Precision::fp8;
  c.block_size = 64;
  expect_error([&] { c.validate(); }, "config.precision", "block_size 128, got 64");
  c.block_size = 128;
  c.kernel = KernelFamily::portable;
  expect_error([&] { c.validate(); }, "config.precision", "hopper kernel family");
  c.kernel = KernelFamily::automatic;
  c.method = Method::calibrated;
  EXPECT_NO_THROW(c.validate());
  expect_error([&] { parse_precision("fp4"); }, "precision", "got 'fp4'");
  for (Precision p : {Precision::input, Precision::fp8}) EXPECT_EQ(parse_precision(to_string(p)), p);
}

// FP8 runs only on CUDA tensors: a host call is refused before any work, never computed in
// 16 bits instead.
TEST(Validation, Fp8NeedsCudaTensors) {
  Config c;
  c.precision = Precision::fp8;
  c.method = Method::sparse;
  SparseAttention sa(c);
  Call call(1, 200, 0, 2, 64);
  call.args.layout.block_size = 128;
  expect_error([&] { sa.forward(CallInfo{}, call.args, call.out_view()); }, "config.precision",
               "needs CUDA tensors");
  EXPECT_EQ(sa.state_count(), 0u);
}

TEST(Validation, Float16RoundTrip) {
  // f16 conversion used by the CPU reference: exact for representable values, RNE otherwise.
  for (float x : {0.f, -0.f, 1.f, -2.5f, 65504.f, 6.103515625e-05f, 5.960464477539063e-08f})
    EXPECT_EQ(static_cast<float>(f16(x)), x) << x;
  EXPECT_EQ(static_cast<float>(f16(1.0f + 1.0f / 2048)), 1.0f);  // ties to even
  EXPECT_EQ(static_cast<float>(f16(1.0f + 3.0f / 2048)), 1.0f + 1.0f / 512);
  EXPECT_TRUE(std::isinf(static_cast<float>(f16(70000.f))));
  EXPECT_TRUE(std::isnan(static_cast<float>(f16(std::nanf("")))));
  EXPECT_EQ(static_cast<float>(bf16(1.0f + 1.0f / 256)), 1.0f);  // ties to even
  EXPECT_EQ(static_cast<float>(bf16(3.0f)), 3.0f);
}

}  // namespace
}  // namespace spaattn
