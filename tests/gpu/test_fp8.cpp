// FP8 block-sparse attention (quantize_fp8 + block_sparse_attention_fp8) against the CPU
// reference, float64 on sampled rows and the 16-bit Hopper kernel on the same inputs: awkward
// shapes (S < B, partial blocks, text prefix and suffix with L_t = 0 and L_t < N_t, d = 64 and
// 128), strided and
// gapped tensors, empty rows and masks, equal keys, keys with a large shared offset (what the
// smoothing of K is for), both output dtypes, multi-wave sizes. And the errors of the calls.
//
// Tolerances: Q and K are rounded to int8 (per-block scales), V and P to e4m3 (3 mantissa bits:
// relative rounding error up to 1/16); Q K^T is exact in int32, P V accumulates in fp32. On
// these inputs (uniform in [-1, 1), attention spread over many keys, where the rounding of V and
// P dominates) an H200 measured a relative L2 error of 0.027-0.039 for the output and at most
// 0.0030 for the lse (each case prints its errors); the bounds leave about 1.3x and 3x.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>

#include "attention_case.hpp"
#include "cpu/testing.hpp"
#include "gpu_testing.hpp"

namespace spaattn::gpu_test {
namespace {

constexpr double kRelL2 = 0.05;  // output, against the CPU reference / float64 / 16-bit kernel
constexpr double kLse = 0.01;    // lse, absolute

Layout layout(int64_t nv, int64_t nt, TextPlacement place = TextPlacement::suffix) {
  return Layout{.num_video = nv, .num_text = nt, .text_placement = place, .block_size = 128};
}

std::vector<Case> cases() {
  std::vector<Case> v;
  auto add = [&](Case c) {
    c.fp8 = true;
    c.lse_tol = kLse;
    v.push_back(std::move(c));
  };
  const auto bf = DType::bf16, hf = DType::f16;
  add({.name = "S_lt_B_Lt0_bf16", .dtype = bf, .layout = layout(50, 20), .text_len = {0},
       .density = 1, .empty_rows = 0, .small = true, .seed = 113});
  add({.name = "S200_gapped_f16", .dtype = hf, .heads = 2, .layout = layout(200, 0),
       .gapped_out = true, .density = 0.7, .small = true, .seed = 115});
  add({.name = "S300_prefix_bhsd_bf16", .batch = 2, .heads = 2,
       .layout = layout(250, 50, TextPlacement::prefix), .text_len = {50, 7},
       .strides = test::Strides::bhsd, .small = true, .seed = 114});
  add({.name = "empty_mask_bf16", .batch = 2, .heads = 2, .layout = layout(300, 40),
       .density = 0, .empty_rows = 1, .small = true, .seed = 127});
  add({.name = "S1023_bf16", .batch = 2, .heads = 3, .layout = layout(1023, 0), .seed = 121});
  add({.name = "S1023_bhsd_f16", .dtype = hf, .batch = 2, .heads = 3, .layout = layout(1023, 0),
       .strides = test::Strides::bhsd, .seed = 122});
  add({.name = "S2000_text_bf16_gapped", .batch = 2, .heads = 2, .layout = layout(1000, 1000),
       .text_len = {1000, 517}, .gapped_out = true, .density = 0.3, .seed = 124});
  add({.name = "S2000_prefix_f16", .dtype = hf, .batch = 2, .heads = 2,
       .layout = layout(1700, 300, TextPlacement::prefix), .text_len = {300, 129}, .seed = 125});
  add({.name = "full_mask_bf16", .heads = 4, .layout = layout(777, 0), .gapped_out = true,
       .density = 1, .empty_rows = 0, .seed = 126});
  add({.name = "equal_keys_bf16", .heads = 2, .layout = layout(640, 0), .equal_keys = true,
       .seed = 130});
  add({.name = "key_offset_bf16", .heads = 2, .layout = layout(900, 77), .text_len = {60},
       .small = true, .seed = 131, .k_mean = 3.0});
  add({.name = "S300_prefix_bf16_d64", .batch = 2, .heads = 2, .dim = 64,
       .layout = layout(250, 50, TextPlacement::prefix), .text_len = {50, 7}, .small = true,
       .seed = 151});
  add({.name = "S1023_bhsd_f16_d64", .dtype = hf, .batch = 2, .heads = 3, .dim = 64,
       .layout = layout(1023, 0), .strides = test::Strides::bhsd, .seed = 152});
  add({.name = "S2000_text_bf16_d64_gapped", .batch = 2, .heads = 2, .dim = 64,
       .layout = layout(1923, 77), .text_len = {77, 30}, .gapped_out = true, .seed = 153});
  add({.name = "key_offset_f16_d64", .dtype = hf, .heads = 2, .dim = 64, .layout = layout(900, 0),
       .seed = 154, .k_mean = 2.0});
  add({.name = "large_bf16_d64_full", .heads = 4, .dim = 64, .layout = layout(4000, 96),
       .density = 1, .empty_rows = 0, .cpu_reference = false, .seed = 155});
  add({.name = "large_bf16", .heads = 8, .layout = layout(8192, 0), .density = 0.4,
       .empty_rows = 0.02, .cpu_reference = false, .seed = 141});
  add({.name = "large_f16_text", .dtype = hf, .batch = 2, .heads = 6, .layout = layout(5800, 200),
       .text_len = {200, 150}, .strides = test::Strides::bhsd, .density = 0.3,
       .cpu_reference = false, .seed = 142});
  return v;
}

class Fp8 : public ::testing::TestWithParam<Case> {};

TEST_P(Fp8, MatchesReference) {
  const Case& c = GetParam();
  if (small_mode() && !c.small) GTEST_SKIP() << "small mode";
  if (!hopper_available()) GTEST_SKIP() << "no Hopper kernel family on this device or build";
  const CaseResult r = run_case(c);
  std::printf("[fp8 %s] rel L2: cpu %.4f f64 %.4f; lse: cpu %.4f f64 %.4f\n", c.name.c_str(),
              r.rel_l2_cpu, r.rel_l2_f64, r.lse_err_cpu, r.lse_err_f64);
  expect_clean_writes(r);
  if (c.cpu_reference) {
    EXPECT_LE(r.rel_l2_cpu, kRelL2) << "relative L2 error against the CPU reference";
    EXPECT_LE(r.lse_err_cpu, kLse) << "lse error against the CPU reference";
  }
  EXPECT_GT(r.sampled_rows, 0);
  EXPECT_LE(r.rel_l2_f64, kRelL2) << "relative L2 error against float64";
  EXPECT_LE(r.lse_err_f64, kLse) << "lse error against float64";
}

TEST_P(Fp8, MatchesSixteenBitKernel) {
  Case c = GetParam();
  if (small_mode() && !c.small) GTEST_SKIP() << "small mode";
  if (!hopper_available()) GTEST_SKIP() << "no Hopper kernel family on this device or build";
  const CaseResult f = run_case(c);
  c.fp8 = false;
  c.kernel = KernelFamily::hopper;
  const CaseResult h = run_case(c);
  ASSERT_EQ(f.out.size(), h.out.size());
  const Difference d = difference(f, h);
  std::printf("[fp8 %s] against the 16-bit kernel: rel L2 %.4f, lse %.4f\n", c.name.c_str(),
              d.rel_l2, d.lse);
  EXPECT_LE(d.rel_l2, kRelL2);
  EXPECT_LE(d.lse, kLse);
}

INSTANTIATE_TEST_SUITE_P(Sweep, Fp8, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& i) { return i.param.name; });

// The same inputs give the same bits: the statistics of K and V are added up in a fixed order
// (no atomics), so the quantised operands and the output do not change from run to run. Eight
// chunks of rows per head, so that an unordered sum would show.
TEST(Fp8Determinism, SameInputsSameBits) {
  if (!hopper_available()) GTEST_SKIP() << "no Hopper kernel family on this device or build";
  const Case c{.name = "determinism", .heads = 8, .layout = layout(8000, 192), .text_len = {150},
               .density = 0.4, .cpu_reference = false, .seed = 161, .fp8 = true, .k_mean = 1.5};
  const CaseResult a = run_case(c);
  for (int run = 0; run < 3; ++run) {
    const CaseResult b = run_case(c);
    ASSERT_EQ(a.out.size(), b.out.size());
    ASSERT_EQ(a.lse.size(), b.lse.size());
    EXPECT_EQ(0, std::memcmp(a.out.data(), b.out.data(), a.out.size() * sizeof(float)))
        << "output differs in run " << run + 2;
    EXPECT_EQ(0, std::memcmp(a.lse.data(), b.lse.data(), a.lse.size() * sizeof(float)))
        << "lse differs in run " << run + 2;
  }
}

// Errors: named arguments, before any work.
TEST(Fp8Errors, UnsupportedShapesAndWorkspace) {
  if (!hopper_available()) GTEST_SKIP() << "no Hopper kernel family on this device or build";
  test::Problem p;
  test::make_problem(p, DType::bf16, 1, 2, 128, layout(300, 0), 5);
  const DeviceProblem d(p);
  AttentionArgs args = d.args;
  const size_t bytes = cuda::fp8_workspace_size(args);
  DeviceBuffer ws(bytes);
  testing::expect_error([&] { cuda::quantize_fp8(args, ws.get(), bytes - 1, nullptr); },
                        "workspace", "at least");
  testing::expect_error(
      [&] { cuda::quantize_fp8(args, static_cast<char*>(ws.get()) + 16, bytes, nullptr); },
      "workspace", "256-byte");
  args.kernel = KernelFamily::portable;
  testing::expect_error([&] { cuda::quantize_fp8(args, ws.get(), bytes, nullptr); }, "kernel",
                        "hopper");
  args.kernel = KernelFamily::automatic;
  args.layout.block_size = 64;
  testing::expect_error([&] { (void)cuda::fp8_workspace_size(args); }, "layout.block_size",
                        "128");
}

}  // namespace
}  // namespace spaattn::gpu_test
