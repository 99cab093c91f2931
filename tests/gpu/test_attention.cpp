// GPU block-sparse attention against the CPU reference and float64: awkward shapes (S = 1, 113,
// 1023, 2000 with text, S < B, partial blocks), text suffix and prefix with L_t = 0 and L_t < N_t,
// random masks with empty rows, full and empty masks, strided and gapped tensors, huge logits,
// equal keys, both dtypes, d = 64 / 128, B = 64 / 128, and multi-wave sizes.
#include <gtest/gtest.h>

#include <cmath>

#include "attention_case.hpp"
#include "gpu_testing.hpp"

namespace spaattn::gpu_test {
namespace {

using test::Strides;

Layout layout(int64_t nv, int64_t nt, int block, TextPlacement place = TextPlacement::suffix) {
  return Layout{.num_video = nv, .num_text = nt, .text_placement = place, .block_size = block};
}

std::vector<Case> cases() {
  std::vector<Case> v;
  auto add = [&](Case c) { v.push_back(std::move(c)); };
  const auto bf = DType::bf16, hf = DType::f16;
  add({.name = "S1_f16_d64", .dtype = hf, .dim = 64, .layout = layout(1, 0, 128), .density = 1,
       .empty_rows = 0, .small = true, .seed = 11});
  add({.name = "S113_prefix_Lt0_bf16_d128_B64", .batch = 2, .heads = 2,
       .layout = layout(100, 13, 64, TextPlacement::prefix), .text_len = {13, 0},
       .gapped_out = true, .small = true, .seed = 12});
  add({.name = "S_lt_B_Lt0_bf16_d128", .layout = layout(50, 20, 128), .text_len = {0},
       .density = 1, .empty_rows = 0, .small = true, .seed = 13});
  add({.name = "S300_bhsd_f16_d64_B64", .dtype = hf, .batch = 2, .heads = 2, .dim = 64,
       .layout = layout(250, 50, 64), .text_len = {50, 7}, .strides = Strides::bhsd,
       .small = true, .seed = 14});
  // Item counts at B = 64: odd (15 items: three heads of four video blocks and a text block
  // with L_t < N_t), and a call of a single item.
  add({.name = "S263_odd_items_bf16_d128_B64", .heads = 3, .layout = layout(250, 13, 64),
       .text_len = {9}, .small = true, .seed = 16});
  add({.name = "S40_one_item_f16_d64_B64", .dtype = hf, .dim = 64, .layout = layout(40, 0, 64),
       .density = 1, .empty_rows = 0, .small = true, .seed = 17});
  add({.name = "S200_bf16_d128_B128_gapped", .heads = 2, .layout = layout(200, 0, 128),
       .gapped_out = true, .density = 0.7, .small = true, .seed = 15});
  add({.name = "S1023_bf16_d128", .batch = 2, .heads = 3, .layout = layout(1023, 0, 128),
       .seed = 21});
  add({.name = "S1023_bhsd_f16_d128", .dtype = hf, .batch = 2, .heads = 3,
       .layout = layout(1023, 0, 128), .strides = Strides::bhsd, .seed = 22});
  add({.name = "S2000_text_bf16_d64_B64", .batch = 2, .heads = 2, .dim = 64,
       .layout = layout(1923, 77, 64), .text_len = {77, 30}, .seed = 23});
  add({.name = "S2000_text_f16_d128_B64_gapped", .dtype = hf, .batch = 2, .heads = 2,
       .layout = layout(1000, 1000, 64), .text_len = {1000, 517}, .gapped_out = true,
       .density = 0.3, .seed = 24});
  add({.name = "S2000_prefix_bf16_d128_B128", .batch = 2, .heads = 2,
       .layout = layout(1700, 300, 128, TextPlacement::prefix), .text_len = {300, 129},
       .strides = Strides::bhsd, .seed = 25});
  add({.name = "full_mask_bf16_d64_B128", .heads = 4, .dim = 64, .layout = layout(777, 0, 128),
       .gapped_out = true, .density = 1, .empty_rows = 0, .seed = 26});
  add({.name = "empty_mask_bf16_d128", .batch = 2, .heads = 2, .layout = layout(300, 40, 128),
       .density = 0, .empty_rows = 1, .small = true, .seed = 27});
  add({.name = "huge_logits_bf16_d128", .heads = 2, .layout = layout(500, 0, 128),
       .qk_scale = 170, .lse_tol = 5e-2, .seed = 28});
  add({.name = "huge_logits_f16_d64_B64", .dtype = hf, .heads = 2, .dim = 64,
       .layout = layout(500, 20, 64), .qk_scale = 120, .lse_tol = 5e-2, .seed = 29});
  add({.name = "equal_keys_bf16_d128", .heads = 2, .layout = layout(640, 0, 128),
       .equal_keys = true, .seed = 30});
  // Multi-wave: more CTAs than fit on the GPU at once; float64 checks on sampled rows.
  add({.name = "large_bf16_d128_B128", .heads = 8, .layout = layout(8192, 0, 128),
       .density = 0.4, .empty_rows = 0.02, .cpu_reference = false, .seed = 41});
  add({.name = "large_f16_d64_B64_text", .dtype = hf, .batch = 2, .heads = 6, .dim = 64,
       .layout = layout(5800, 200, 64), .text_len = {200, 150}, .strides = Strides::bhsd,
       .density = 0.3, .cpu_reference = false, .seed = 42});
  add({.name = "large_f16_d128_B64_full", .dtype = hf, .heads = 4, .layout = layout(4000, 96, 64),
       .density = 1, .empty_rows = 0, .cpu_reference = false, .seed = 43});
  // 110 key blocks at density 0.9: rows of about 99 +- 3 entries, so the Hopper kernel's items
  // alternate between its two forms of S = Q K^T (Q in registers below 96 entries, from the Q
  // tile at or above), with empty rows among them.
  add({.name = "mixed_rows_bf16_d128_B128", .heads = 3, .layout = layout(14000, 0, 128),
       .density = 0.9, .empty_rows = 0.05, .cpu_reference = false, .seed = 44});
  return v;
}

class Attention : public ::testing::TestWithParam<Case> {};

TEST_P(Attention, MatchesReference) {
  const Case& c = GetParam();
  if (small_mode() && !c.small) GTEST_SKIP() << "small mode";
  const CaseResult r = run_case(c);
  EXPECT_TRUE(r.csr_matches) << "dense_to_csr differs from BlockMask::from_dense";
  expect_clean_writes(r);
  if (c.cpu_reference) {
    EXPECT_LE(r.rel_l2_cpu, 1e-2) << "relative L2 error against the CPU reference";
    EXPECT_LE(r.lse_err_cpu, c.lse_tol) << "lse error against the CPU reference";
  }
  EXPECT_GT(r.sampled_rows, 0);
  EXPECT_LE(r.rel_l2_f64, 1e-2) << "relative L2 error against float64";
  EXPECT_LE(r.lse_err_f64, c.lse_tol) << "lse error against float64";
  RecordProperty("rel_l2_f64", std::to_string(r.rel_l2_f64));
}

// The two kernel families on the same inputs: the Hopper kernel against the portable one (each
// is also checked against the references above, in the runs with SPAATTN_KERNEL set to each).
TEST_P(Attention, HopperMatchesPortable) {
  Case c = GetParam();
  if (small_mode() && !c.small) GTEST_SKIP() << "small mode";
  if (!hopper_available()) GTEST_SKIP() << "no Hopper kernel family on this device or build";
  c.kernel = KernelFamily::portable;
  const CaseResult a = run_case(c);
  c.kernel = KernelFamily::hopper;
  const CaseResult h = run_case(c);
  ASSERT_EQ(a.out.size(), h.out.size());
  const Difference d = difference(h, a);
  // Both round P to the element type and accumulate in fp32, in another order: they differ by
  // about the error of one bf16 computation.
  EXPECT_LE(d.rel_l2, 1e-2);
  EXPECT_LE(d.lse, c.lse_tol);
  EXPECT_EQ(h.unwritten_out, 0);
  EXPECT_EQ(h.outside_out, 0);
}

INSTANTIATE_TEST_SUITE_P(Sweep, Attention, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& i) { return i.param.name; });

}  // namespace
}  // namespace spaattn::gpu_test
