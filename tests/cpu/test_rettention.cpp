// Re-ttention (docs/methods.md): statistics of a reference step, the drifted correction at
// later sparse steps, and its row-granularity application.
#include <gtest/gtest.h>

#include <cmath>

#include "spaattn/error.hpp"
#include "spaattn/stages.hpp"
#include "cpu/reference.hpp"

namespace spaattn::test {
namespace {

TEST(Rettention, ReferenceStepStatisticsReproduceFullAttention) {
  Layout L;
  L.num_video = 300;
  L.num_text = 50;
  L.block_size = 64;
  Problem p;
  make_problem(p, DType::bf16, 2, 3, 64, L, 71, {50, 17});
  const int64_t S = 350, nb = L.num_blocks(), nv = L.num_video_blocks();
  // A random video mask (some rows empty) with dense text rows.
  std::mt19937_64 rng(73);
  std::bernoulli_distribution pick(0.35);
  std::vector<uint8_t> dense(static_cast<size_t>(2 * 3 * nb * nb));
  for (int64_t r = 0; r < 2 * 3 * nb; ++r)
    for (int64_t j = 0; j < nb; ++j)
      dense[r * nb + j] = (r % nb >= nv) || (r % 4 != 1 && pick(rng));
  const BlockMask mask = BlockMask::from_dense(dense.data(), 2, 3, nb, nb);
  HostTensor of = make_tensor(DType::f32, 2, S, 3, 64), os = make_tensor(DType::f32, 2, S, 3, 64);
  HostTensor lf = make_lse(2, S, 3), ls = make_lse(2, S, 3);
  cpu::reference_attention(p.args, mask.view(), of.view, lf.view, os.view, ls.view);
  const RettentionCache cache =
      cpu::rettention_statistics(of.view, lf.view, os.view, ls.view, true);
  ASSERT_EQ(cache.delta.size(), static_cast<size_t>(2 * S * 3 * 64));
  // At the reference step itself (k = 1), rho O_spa + Delta is O_full.
  const Correction corr = cpu::rettention_correction(cache, 1, RettentionConfig{});
  HostTensor out = make_tensor(DType::f32, 2, S, 3, 64, Strides::bhsd);
  out.poison();
  cpu::apply_correction(corr, L, os.view, out.view);
  EXPECT_LE(rel_l2(out.view, attention64(p.args).out), 1e-5);
  // rho is the in-mask share of the softmax mass: in [0, 1], 0 exactly on rows whose mask is
  // empty and on padding rows.
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t n = 0; n < S; ++n)
      for (int64_t h = 0; h < 3; ++h) {
        const float rho = cache.rho[(b * S + n) * 3 + h];
        EXPECT_GE(rho, 0.f);
        EXPECT_LE(rho, 1.f + 1e-6f);
        const bool padding = n >= 300 + p.text_len[b];
        const bool empty_row = n < 300 && ((b * 3 + h) * nb + n / 64) % 4 == 1;
        if (padding || empty_row) EXPECT_EQ(rho, 0.f);
        if (padding)
          for (int64_t e = 0; e < 64; ++e)
            ASSERT_EQ(cache.delta[((b * S + n) * 3 + h) * 64 + e], 0.f);
      }
}

TEST(Rettention, DriftAndClamp) {
  RettentionCache cache;
  cache.batch = 1;
  cache.seq = 3;
  cache.heads = 1;
  cache.dim = 2;
  cache.rho = {0.5f, 0.98f, 0.f};
  cache.delta = {1, 2, 3, 4, 5, 6};
  RettentionConfig cfg;  // lambda = 0.04, no clamp
  Correction c = cpu::rettention_correction(cache, 3, cfg);
  EXPECT_EQ(c.granularity, Correction::Granularity::row);
  EXPECT_NEAR(c.a[0], 0.58, 1e-6);
  EXPECT_NEAR(c.a[1], 1.06, 1e-6);  // the published code does not clamp
  EXPECT_NEAR(c.a[2], 0.08, 1e-6);
  EXPECT_EQ(c.c, cache.delta);
  cfg.clamp = true;
  cfg.cache_delta = false;
  c = cpu::rettention_correction(cache, 3, cfg);
  EXPECT_NEAR(c.a[0], 0.58, 1e-6);
  EXPECT_EQ(c.a[1], 1.f);
  EXPECT_TRUE(c.c.empty());
  cfg.drift = 0.1f;
  c = cpu::rettention_correction(cache, 1, cfg);  // k = 1: no drift yet
  EXPECT_EQ(c.a[0], 0.5f);
  EXPECT_THROW(cpu::rettention_correction(cache, 0, cfg), Error);
}

TEST(Rettention, RowCorrectionWithoutDeltaScalesEveryRow) {
  Layout L;
  L.num_video = 70;
  L.num_text = 10;
  L.block_size = 64;
  HostTensor o = random_tensor(DType::f32, 1, 80, 2, 64, 79);
  Correction corr;
  corr.granularity = Correction::Granularity::row;
  corr.batch = 1;
  corr.heads = 2;
  corr.rows = 80;
  corr.dim = 64;
  for (int i = 0; i < 160; ++i) corr.a.push_back(1.f + 0.01f * i);
  HostTensor out = make_tensor(DType::f16, 1, 80, 2, 64);
  cpu::apply_correction(corr, L, o.view, out.view);
  for (int64_t n = 0; n < 80; ++n)
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t e = 0; e < 64; e += 7) {
        const double want = corr.a[n * 2 + h] * o.get(0, n, h, e);
        EXPECT_NEAR(out.get(0, n, h, e), want, 2e-3 * (1 + std::fabs(want)));
      }
  corr.c.assign(5, 0.f);  // neither empty nor [rows, d]
  EXPECT_THROW(cpu::apply_correction(corr, L, o.view, out.view), Error);
}

TEST(Rettention, StatisticsWithoutDeltaAndShapeChecks) {
  HostTensor of = random_tensor(DType::f32, 1, 20, 1, 64, 83);
  HostTensor os = random_tensor(DType::f32, 1, 20, 1, 64, 89);
  HostTensor lf = make_lse(1, 20, 1), ls = make_lse(1, 20, 1);
  for (int64_t n = 0; n < 20; ++n) {
    lf.set(0, n, 0, 0, 2.0);
    ls.set(0, n, 0, 0, 2.0 + std::log(0.25));
  }
  const RettentionCache cache =
      cpu::rettention_statistics(of.view, lf.view, os.view, ls.view, false);
  EXPECT_TRUE(cache.delta.empty());
  for (float rho : cache.rho) EXPECT_NEAR(rho, 0.25, 1e-6);
  HostTensor short_lse = make_lse(1, 19, 1);
  EXPECT_THROW(cpu::rettention_statistics(of.view, short_lse.view, os.view, ls.view, true), Error);
}

}  // namespace
}  // namespace spaattn::test
