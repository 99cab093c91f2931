// Rectified SpaAttn's stages (docs/methods.md): pooling, IPAR, GAPR, the correction R, C
// and its application, and the whole chain against float64 dense attention in the cases where
// it must be exact.
#include <gtest/gtest.h>

#include <cmath>

#include "spaattn/config.hpp"
#include "spaattn/stages.hpp"
#include "cpu/reference.hpp"

namespace spaattn::test {
namespace {

// Makes every video token of q, k and v equal to the first token of its block, so that pooling
// loses nothing.
void make_blocks_constant(Problem& p) {
  const Layout& L = p.args.layout;
  const int64_t B = p.args.batch(), H = p.args.heads(), D = p.args.head_dim();
  for (HostTensor* t : {&p.q, &p.k, &p.v})
    for (int64_t b = 0; b < B; ++b)
      for (int64_t n = 0; n < L.num_video; ++n) {
        const int64_t tok = L.video_offset() + n,
                      first = L.video_offset() + n / L.block_size * L.block_size;
        for (int64_t h = 0; h < H; ++h)
          for (int64_t e = 0; e < D; ++e) t->set(b, tok, h, e, t->get(b, first, h, e));
      }
}

// pool -> IPAR -> select -> block-sparse attention -> R, C -> O = R O_spa + C.
void run_rectified(const AttentionArgs& args, const Config& cfg, HostTensor& out,
                   double* density = nullptr) {
  const Pooled pooled = cpu::pool(args);
  const BlockScores scores = cpu::implicit_full_attention(args, pooled);
  const Selection sel = cpu::select_blocks(args, cfg, &scores, nullptr);
  cpu::block_sparse_attention(args, sel.mask.view(), out.view, TensorView{});
  const Correction corr = cpu::rectification(pooled, scores, sel, cfg.gapr);
  cpu::apply_correction(corr, args.layout, out.view, out.view);
  if (density) *density = sel.mask.density(args.layout);
}

TEST(Pool, MeansAndDeviationsUseTheTrueBlockCounts) {
  Problem p;
  make_problem(p, DType::bf16, 2, 2, 64, layout_of(150, 10, 64, TextPlacement::prefix), 7);
  const Pooled pooled = cpu::pool(p.args);
  ASSERT_EQ(pooled.blocks, 3);  // text is not pooled
  EXPECT_EQ(pooled.count, (std::vector<int32_t>{64, 64, 22}));
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t i = 0; i < 3; ++i) {
        const int64_t first = 10 + i * 64, n = pooled.count[i];
        for (int64_t e = 0; e < 64; ++e) {
          double mq = 0, mk = 0, mv = 0, dq = 0, dk = 0;
          for (int64_t m = 0; m < n; ++m) {
            mq += p.q.get(b, first + m, h, e) / n;
            mk += p.k.get(b, first + m, h, e) / n;
            mv += p.v.get(b, first + m, h, e) / n;
          }
          for (int64_t m = 0; m < n; ++m) {
            dq += std::fabs(p.q.get(b, first + m, h, e) - mq) / n;
            dk += std::fabs(p.k.get(b, first + m, h, e) - mk) / n;
          }
          const int64_t at = pooled.at(b, h, i) + e;
          ASSERT_NEAR(pooled.q[at], mq, 1e-5);
          ASSERT_NEAR(pooled.k[at], mk, 1e-5);
          ASSERT_NEAR(pooled.v[at], mv, 1e-5);
          ASSERT_NEAR(pooled.dq[at], dq, 1e-5);
          ASSERT_NEAR(pooled.dk[at], dk, 1e-5);
        }
      }
}

// With block-constant video tokens, P_ij is exactly the full-attention mass of key block j for
// any query of block i, and P_i,text the mass of the valid text keys.
TEST(Ipar, EqualsTheBlockMassesOfFullAttention) {
  Problem p;
  make_problem(p, DType::f32, 2, 2, 64, layout_of(200, 30), 13, {30, 11}, Strides::bhsd, 2.0);
  make_blocks_constant(p);
  const Layout& L = p.args.layout;
  const BlockScores scores = cpu::implicit_full_attention(p.args, cpu::pool(p.args));
  const int64_t nv = L.num_video_blocks(), S = L.seq_len();
  const double scale = p.args.softmax_scale();
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t i = 0; i < nv; ++i) {
        const int64_t n = i * 64 + 1;  // any query row of block i
        std::vector<double> z(S), mass(nv + 1, 0.0);
        double zmax = -1e300, total = 0;
        for (int64_t m = 0; m < S; ++m) {
          double dot = 0;
          for (int64_t e = 0; e < 64; ++e) dot += p.q.get(b, n, h, e) * p.k.get(b, m, h, e);
          z[m] = scale * dot;
          if (m < 200 || m - 200 < p.text_len[b]) zmax = std::max(zmax, z[m]);
        }
        for (int64_t m = 0; m < S; ++m) {
          if (m >= 200 && m - 200 >= p.text_len[b]) continue;
          const double w = std::exp(z[m] - zmax);
          mass[m < 200 ? m / 64 : nv] += w;
          total += w;
        }
        const float* P = scores.P.data() + scores.row(b, h, i);
        double row_sum = 0;
        for (int64_t j = 0; j <= nv; ++j) {
          EXPECT_NEAR(P[j], mass[j] / total, 1e-6) << b << h << i << j;
          row_sum += P[j];
        }
        EXPECT_NEAR(row_sum, 1.0, 1e-6);
      }
}

TEST(Ipar, TextColumnIsZeroWithoutValidText) {
  for (const int64_t nt : {0, 25}) {
    Problem p;
    make_problem(p, DType::f32, 1, 1, 64, layout_of(300, nt), 19,
                 nt ? std::vector<int32_t>{0} : std::vector<int32_t>{});
    const Pooled pooled = cpu::pool(p.args);
    const BlockScores scores = cpu::implicit_full_attention(p.args, pooled);
    for (int64_t i = 0; i < 5; ++i) {
      const float* P = scores.P.data() + scores.row(0, 0, i);
      EXPECT_EQ(P[5], 0.f);
      // A softmax over z_ij + log n_j.
      std::vector<double> z(5);
      double zmax = -1e300, total = 0;
      for (int64_t j = 0; j < 5; ++j) {
        double dot = 0;
        for (int64_t e = 0; e < 64; ++e)
          dot += pooled.q[pooled.at(0, 0, i) + e] * pooled.k[pooled.at(0, 0, j) + e];
        z[j] = dot / 8 + std::log(pooled.count[j]);
        zmax = std::max(zmax, z[j]);
      }
      for (double x : z) total += std::exp(x - zmax);
      for (int64_t j = 0; j < 5; ++j) EXPECT_NEAR(P[j], std::exp(z[j] - zmax) / total, 1e-6);
    }
  }
}

// One query block against three key blocks, d = 2, values chosen by hand:
//  j = 0: G = |q.k| = 2,   E = |dq.k| + |q.dk| = 0.2 + 0.1 = 0.3  -> compensable
//  j = 1: G = 0.5,         E = 0.05 + 0.6 = 0.65                   -> not compensable
//  j = 2: G = 0 (orthogonal), E = 0                                 -> not compensable (strict >)
Pooled constructed_pooled() {
  Pooled pl;
  pl.batch = pl.heads = 1;
  pl.blocks = 3;
  pl.dim = 2;
  pl.count = {64, 64, 30};
  pl.q = {1, 0, 0, 0, 0, 0};
  pl.dq = {0.1f, 0, 0, 0, 0, 0};
  pl.k = {2, 0, 0.5f, 1, 0, 1};
  pl.dk = {0.1f, 0, 0.6f, 0, 0, 0};
  pl.v = {1, 2, 3, 4, 5, 6};
  return pl;
}

TEST(Gapr, CompensatesOnlyWhereTheGainExceedsThePoolingError) {
  const std::vector<uint8_t> comp = cpu::compensable(constructed_pooled());
  ASSERT_EQ(comp.size(), 9u);
  EXPECT_EQ(comp[0], 1);
  EXPECT_EQ(comp[1], 0);
  EXPECT_EQ(comp[2], 0);
}

TEST(Rectification, SplitsTheMassIntoRAndC) {
  const Pooled pooled = constructed_pooled();
  BlockScores scores;
  scores.batch = scores.heads = 1;
  scores.blocks = 3;
  scores.P.assign(3 * 4, 0.f);
  const float row0[4] = {0.1f, 0.2f, 0.4f, 0.3f};  // P_00, P_01, P_02, P_0,text
  std::copy(row0, row0 + 4, scores.P.begin());
  Selection sel;
  sel.critical.assign(9, 0);
  sel.critical[2] = 1;  // crit(0) = {2}
  // GAPR: block 0 is compensated (0.1 v̄_0), block 1 is not (its mass joins R).
  Correction on = cpu::rectification(pooled, scores, sel, true);
  EXPECT_NEAR(on.a[0], 0.4 + 0.3 + 0.2, 1e-6);
  EXPECT_NEAR(on.c[0], 0.1 * 1, 1e-6);
  EXPECT_NEAR(on.c[1], 0.1 * 2, 1e-6);
  // Without GAPR every non-critical block is compensated.
  Correction off = cpu::rectification(pooled, scores, sel, false);
  EXPECT_NEAR(off.a[0], 0.4 + 0.3, 1e-6);
  EXPECT_NEAR(off.c[0], 0.1 * 1 + 0.2 * 3, 1e-6);
  EXPECT_NEAR(off.c[1], 0.1 * 2 + 0.2 * 4, 1e-6);
}

TEST(ApplyCorrection, BlockRowsOfVideoOnlyWithTextPrefix) {
  const Layout L = layout_of(100, 20, 64, TextPlacement::prefix);
  HostTensor o = random_tensor(DType::f32, 2, 120, 3, 64, 51);
  Correction corr;
  corr.batch = 2;
  corr.heads = 3;
  corr.rows = 2;
  corr.dim = 64;
  for (int i = 0; i < 2 * 3 * 2; ++i) corr.a.push_back(0.5f + 0.1f * i);
  for (int i = 0; i < 2 * 3 * 2 * 64; ++i) corr.c.push_back(0.01f * (i % 97));
  HostTensor out = make_tensor(DType::bf16, 2, 120, 3, 64, Strides::padded);
  out.poison();
  cpu::apply_correction(corr, L, o.view, out.view);
  HostTensor inplace = o;
  inplace.view.data = inplace.storage.data();
  cpu::apply_correction(corr, L, inplace.view, inplace.view);
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t n = 0; n < 120; ++n)
      for (int64_t h = 0; h < 3; ++h)
        for (int64_t e = 0; e < 64; ++e) {
          double want = o.get(b, n, h, e);  // text rows: unchanged
          if (n >= 20) {
            const int64_t k = (b * 3 + h) * 2 + (n - 20) / 64;
            want = corr.a[k] * want + corr.c[k * 64 + e];
          }
          ASSERT_NEAR(inplace.get(b, n, h, e), want, 1e-6);
          ASSERT_NEAR(out.get(b, n, h, e), want, 1e-2 * (1 + std::fabs(want)));
        }
}

TEST(Rectified, EqualsDenseWhenEveryBlockIsCritical) {
  Problem p;
  make_problem(p, DType::bf16, 2, 2, 64, layout_of(333, 40), 61, {40, 9});
  Config cfg;
  cfg.select.sparsity = 0.0;  // k = NV
  for (const bool gapr : {true, false}) {
    cfg.gapr = gapr;
    HostTensor out = make_tensor(DType::f32, 2, 373, 2, 64);
    double density = 0;
    run_rectified(p.args, cfg, out, &density);
    EXPECT_DOUBLE_EQ(density, 1.0);
    EXPECT_LE(rel_l2(out.view, attention64(p.args).out), 1e-5);
  }
}

// Block-constant tokens make the pooled pairs exact, so R O_spa + C restores full attention for
// any selection, while plain block-sparse attention is far from it.
TEST(Rectified, RestoresFullAttentionForBlockConstantTokens) {
  Problem p;
  make_problem(p, DType::f32, 1, 2, 128, layout_of(1000, 70, 128), 67, {55}, Strides::padded, 2.0);
  make_blocks_constant(p);
  const Reference64 dense = attention64(p.args);
  Config cfg;
  cfg.select.sparsity = 0.75;
  cfg.select.p = 0.3;
  HostTensor plain = make_tensor(DType::f32, 1, 1070, 2, 128);
  const Pooled pooled = cpu::pool(p.args);
  const BlockScores scores = cpu::implicit_full_attention(p.args, pooled);
  const Selection sel = cpu::select_blocks(p.args, cfg, &scores, nullptr);
  cpu::block_sparse_attention(p.args, sel.mask.view(), plain.view, TensorView{});
  EXPECT_LT(sel.mask.density(p.args.layout), 0.6);
  EXPECT_GT(rel_l2(plain.view, dense.out), 1e-2);
  for (const bool gapr : {true, false}) {
    cfg.gapr = gapr;
    HostTensor out = make_tensor(DType::f32, 1, 1070, 2, 128);
    run_rectified(p.args, cfg, out);
    EXPECT_LE(rel_l2(out.view, dense.out), 1e-5) << "gapr " << gapr;
  }
}

}  // namespace
}  // namespace spaattn::test
