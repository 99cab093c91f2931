// The CPU block-sparse attention kernel and the reference step's single pass against a float64
// reference, over dtypes, head dims, block sizes, strides, text placements and padding, plus the
// edge cases of docs/methods.md and docs/choices.md.
#include <gtest/gtest.h>

#include <cmath>

#include "spaattn/error.hpp"
#include "spaattn/stages.hpp"
#include "cpu/reference.hpp"

namespace spaattn::test {
namespace {

struct Case {
  const char* name;
  DType in, out;
  int64_t dim;
  int block;
  int64_t num_video, num_text;
  TextPlacement placement;
  std::vector<int32_t> text_len;  // per batch item; empty: all valid (batch 1)
  Strides strides;
  int64_t batch, heads;
  double tol;  // rel L2 of the output
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

Layout make_layout(const Case& c) {
  Layout L;
  L.num_video = c.num_video;
  L.num_text = c.num_text;
  L.text_placement = c.placement;
  L.block_size = c.block;
  return L;
}

// Random block mask with about 40% of the blocks and a few empty rows.
std::vector<uint8_t> random_mask(int64_t rows, int64_t nb, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::bernoulli_distribution pick(0.4);
  std::vector<uint8_t> dense(static_cast<size_t>(rows * nb));
  for (auto& x : dense) x = pick(rng);
  for (int64_t r = 0; r < rows; r += 5)
    std::fill(dense.begin() + r * nb, dense.begin() + (r + 1) * nb, uint8_t{0});
  return dense;
}

class AttentionSweep : public ::testing::TestWithParam<Case> {};

// Runs the kernel with the given dense mask (empty: full) on poisoned outputs and compares with
// float64 attention over the same stored inputs.
void check_against_reference(const Case& c, const std::vector<uint8_t>& dense) {
  Problem p;
  make_problem(p, c.in, c.batch, c.heads, c.dim, make_layout(c), 17, c.text_len, c.strides);
  const int64_t S = p.args.seq_len(), nb = p.args.layout.num_blocks();
  HostTensor out = make_tensor(c.out, c.batch, S, c.heads, c.dim, c.strides);
  HostTensor lse = make_lse(c.batch, S, c.heads, c.strides);
  out.poison();
  lse.poison();
  BlockMask mask = dense.empty() ? BlockMask::full(c.batch, c.heads, nb, nb)
                                 : BlockMask::from_dense(dense.data(), c.batch, c.heads, nb, nb);
  cpu::block_sparse_attention(p.args, mask.view(), out.view, lse.view);
  const Reference64 ref = attention64(p.args, dense);
  EXPECT_LE(rel_l2(out.view, ref.out), c.tol);
  EXPECT_LE(lse_error(lse.view, ref.lse), 1e-4);
}

TEST_P(AttentionSweep, DenseMatchesFloat64) { check_against_reference(GetParam(), {}); }

TEST_P(AttentionSweep, RandomMaskMatchesMaskedFloat64) {
  const Case& c = GetParam();
  const int64_t nb = make_layout(c).num_blocks();
  check_against_reference(c, random_mask(c.batch * c.heads * nb, nb, 5));
}

// One case per two lines, kept as a table.
// clang-format off
const Case kCases[] = {
    {"f32_suffix_padding", DType::f32, DType::f32, 64, 64, 150, 37, TextPlacement::suffix,
     {37, 20}, Strides::bshd, 2, 3, 1e-5},
    {"f32_d128_no_text_bhsd", DType::f32, DType::f32, 128, 128, 300, 0, TextPlacement::suffix,
     {}, Strides::bhsd, 1, 2, 1e-5},
    {"f32_short_padded", DType::f32, DType::f32, 64, 64, 20, 13, TextPlacement::suffix, {13},
     Strides::padded, 1, 2, 1e-5},
    {"f32_prefix_lt0", DType::f32, DType::f32, 64, 64, 130, 70, TextPlacement::prefix, {70, 0},
     Strides::bshd, 2, 2, 1e-5},
    {"f32_prefix_b128_bhsd", DType::f32, DType::f32, 64, 128, 200, 150, TextPlacement::prefix,
     {149}, Strides::bhsd, 1, 1, 1e-5},
    {"bf16_in_f32_out", DType::bf16, DType::f32, 128, 64, 100, 29, TextPlacement::suffix,
     {29, 3}, Strides::padded, 2, 2, 1e-5},
    {"bf16_in_bf16_out", DType::bf16, DType::bf16, 64, 128, 200, 50, TextPlacement::suffix,
     {50}, Strides::bshd, 1, 3, 1e-2},
    {"f16_in_f32_out", DType::f16, DType::f32, 64, 64, 77, 0, TextPlacement::suffix, {},
     Strides::bhsd, 1, 2, 1e-5},
    {"f16_in_f16_out", DType::f16, DType::f16, 128, 128, 129, 64, TextPlacement::prefix, {40},
     Strides::bshd, 1, 2, 2e-3},
};
// clang-format on

INSTANTIATE_TEST_SUITE_P(Cases, AttentionSweep, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(Attention, PaddingTextRowsAreZeroWithMinusInfLse) {
  Problem p;
  make_problem(p, DType::f32, 2, 2, 64, layout_of(90, 40), 3, {7, 0});
  const int64_t S = p.args.seq_len(), nb = p.args.layout.num_blocks();
  HostTensor out = make_tensor(DType::f32, 2, S, 2, 64);
  HostTensor lse = make_lse(2, S, 2);
  out.poison();
  lse.poison();
  cpu::block_sparse_attention(p.args, BlockMask::full(2, 2, nb, nb).view(), out.view, lse.view);
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t t = p.text_len[b]; t < 40; ++t)
      for (int64_t h = 0; h < 2; ++h) {
        EXPECT_TRUE(std::isinf(lse.get(b, 90 + t, h)) && lse.get(b, 90 + t, h) < 0);
        for (int64_t e = 0; e < 64; ++e) ASSERT_EQ(out.get(b, 90 + t, h, e), 0.0);
      }
  // Padding keys are never attended: making them huge changes nothing.
  const Reference64 before = attention64(p.args);
  for (int64_t t = 7; t < 40; ++t)
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t e = 0; e < 64; ++e) {
        p.k.set(0, 90 + t, h, e, 1e3);
        p.v.set(0, 90 + t, h, e, 1e3);
      }
  cpu::block_sparse_attention(p.args, BlockMask::full(2, 2, nb, nb).view(), out.view, lse.view);
  EXPECT_LE(rel_l2(out.view, before.out), 1e-5);
}

TEST(Attention, HugeLogitsStayFiniteAndCorrect) {
  // |q|, |k| up to 200 in d = 64 with s = 1/8: logits reach several 1e4.
  Problem p;
  make_problem(p, DType::f32, 1, 2, 64, layout_of(150, 30), 11, {}, Strides::bshd, 200.0);
  const int64_t S = p.args.seq_len(), nb = p.args.layout.num_blocks();
  HostTensor out = make_tensor(DType::f32, 1, S, 2, 64);
  HostTensor lse = make_lse(1, S, 2);
  cpu::block_sparse_attention(p.args, BlockMask::full(1, 2, nb, nb).view(), out.view, lse.view);
  const Reference64 ref = attention64(p.args);
  double max_lse = 0;
  for (double x : ref.lse) max_lse = std::max(max_lse, std::fabs(x));
  EXPECT_GT(max_lse, 1e4);
  // fp32 logits of magnitude 1e4 carry absolute errors near 1e-3: the output follows them.
  EXPECT_LE(rel_l2(out.view, ref.out), 1e-3);
  EXPECT_LE(lse_error(lse.view, ref.lse), 1e-6 * max_lse * 10);
}

TEST(Attention, AllEqualKeysAverageTheValues) {
  Problem p;
  make_problem(p, DType::f32, 1, 1, 64, layout_of(100, 0), 23);
  for (int64_t n = 0; n < 100; ++n)
    for (int64_t e = 0; e < 64; ++e) p.k.set(0, n, 0, e, p.k.get(0, 0, 0, e));
  const int64_t nb = p.args.layout.num_blocks();
  HostTensor out = make_tensor(DType::f32, 1, 100, 1, 64);
  HostTensor lse = make_lse(1, 100, 1);
  cpu::block_sparse_attention(p.args, BlockMask::full(1, 1, nb, nb).view(), out.view, lse.view);
  for (int64_t e = 0; e < 64; ++e) {
    double mean = 0;
    for (int64_t n = 0; n < 100; ++n) mean += p.v.get(0, n, 0, e) / 100;
    EXPECT_NEAR(out.get(0, 37, 0, e), mean, 1e-6);
  }
  EXPECT_LE(lse_error(lse.view, attention64(p.args).lse), 1e-5);
}

TEST(Attention, EmptyRowsGiveZerosAndMinusInf) {
  // Query block 0 selects nothing; query block 1 selects only the text block, whose keys are all
  // padding (L_t = 0). Neither may produce NaN.
  Problem p;
  make_problem(p, DType::bf16, 1, 1, 64, layout_of(128, 20), 29, {0});
  std::vector<uint8_t> dense = {0, 0, 0, 0, 0, 1, 1, 1, 1};
  BlockMask mask = BlockMask::from_dense(dense.data(), 1, 1, 3, 3);
  HostTensor out = make_tensor(DType::f32, 1, 148, 1, 64);
  HostTensor lse = make_lse(1, 148, 1);
  out.poison();
  lse.poison();
  cpu::block_sparse_attention(p.args, mask.view(), out.view, lse.view);
  for (int64_t n = 0; n < 148; ++n) {
    EXPECT_TRUE(std::isinf(lse.get(0, n, 0)) && lse.get(0, n, 0) < 0) << n;
    for (int64_t e = 0; e < 64; ++e) ASSERT_EQ(out.get(0, n, 0, e), 0.0) << n;
  }
}

TEST(Attention, SkipsAnEmptyLse) {
  Problem p;
  make_problem(p, DType::f32, 1, 2, 64, layout_of(70, 5), 31);
  const int64_t nb = p.args.layout.num_blocks();
  HostTensor out = make_tensor(DType::f32, 1, 75, 2, 64);
  cpu::block_sparse_attention(p.args, BlockMask::full(1, 2, nb, nb).view(), out.view, TensorView{});
  EXPECT_LE(rel_l2(out.view, attention64(p.args).out), 1e-5);
}

TEST(Attention, ReferencePassMatchesTwoSeparateCalls) {
  Problem p;
  make_problem(p, DType::bf16, 2, 2, 64, layout_of(200, 45, 64, TextPlacement::prefix), 37,
               {45, 12});
  const int64_t S = p.args.seq_len(), nb = p.args.layout.num_blocks();
  const std::vector<uint8_t> dense = random_mask(2 * 2 * nb, nb, 41);
  BlockMask mask = BlockMask::from_dense(dense.data(), 2, 2, nb, nb);
  BlockMask full = BlockMask::full(2, 2, nb, nb);
  HostTensor of = make_tensor(DType::f32, 2, S, 2, 64), os = make_tensor(DType::f32, 2, S, 2, 64);
  HostTensor lf = make_lse(2, S, 2), ls = make_lse(2, S, 2);
  cpu::reference_attention(p.args, mask.view(), of.view, lf.view, os.view, ls.view);
  HostTensor of2 = make_tensor(DType::f32, 2, S, 2, 64), os2 = make_tensor(DType::f32, 2, S, 2, 64);
  HostTensor lf2 = make_lse(2, S, 2), ls2 = make_lse(2, S, 2);
  cpu::block_sparse_attention(p.args, full.view(), of2.view, lf2.view);
  cpu::block_sparse_attention(p.args, mask.view(), os2.view, ls2.view);
  // Same logits, same accumulation order: the results agree to the last bit.
  for (size_t i = 0; i < of.storage.size(); ++i) {
    ASSERT_EQ(of.storage[i], of2.storage[i]);
    ASSERT_EQ(os.storage[i], os2.storage[i]);
  }
  for (size_t i = 0; i < lf.storage.size(); ++i) {
    ASSERT_EQ(lf.storage[i], lf2.storage[i]);
    ASSERT_EQ(ls.storage[i], ls2.storage[i]);
  }
  EXPECT_LE(rel_l2(os.view, attention64(p.args, dense).out), 1e-5);
}

TEST(Attention, InvalidMaskThrowsBeforeWriting) {
  Problem p;
  make_problem(p, DType::f32, 1, 2, 64, layout_of(100, 0), 43);
  HostTensor out = make_tensor(DType::f32, 1, 100, 2, 64);
  out.poison();
  BlockMask wrong = BlockMask::full(1, 1, 2, 2);  // one head instead of two
  EXPECT_THROW(cpu::block_sparse_attention(p.args, wrong.view(), out.view, TensorView{}), Error);
  for (int64_t e = 0; e < 64; ++e) EXPECT_TRUE(std::isnan(out.get(0, 0, 0, e)));
  HostTensor bad_out = make_tensor(DType::f32, 1, 99, 2, 64);
  BlockMask full = BlockMask::full(1, 2, 2, 2);
  EXPECT_THROW(cpu::block_sparse_attention(p.args, full.view(), bad_out.view, TensorView{}), Error);
  // Views that claim device memory are refused by the CPU reference, not dereferenced.
  AttentionArgs on_device = p.args;
  for (TensorView* t : {&on_device.q, &on_device.k, &on_device.v}) t->device = Device::cuda;
  TensorView device_out = out.view;
  device_out.device = Device::cuda;
  EXPECT_THROW(cpu::pool(on_device), Error);
  EXPECT_THROW(cpu::block_sparse_attention(on_device, full.view(), device_out, TensorView{}),
               Error);
}

}  // namespace
}  // namespace spaattn::test
