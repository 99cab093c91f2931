// Method::calibrated (docs/methods.md, Calibrated correction): reference steps are full
// attention and record each candidate's error at distances 0 and k (from the previous
// reference), a sparse step at distance d applies, per (b, h), the candidate with the least
// error expected at d (Re-ttention's correction before a distance can be measured), the drift
// fit, the errors of invalid use, and on the captured testbed workload an error never above
// plain block-sparse attention's.
// Every candidate is recomputed here from the public CPU stages and its own formula, in double.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <optional>
#include <random>
#include <vector>

#include "cpu/testing.hpp"
#include "workload.hpp"

namespace spaattn {
namespace {

using testing::expect_error;

constexpr int kNone = 0, kAffine = 1, kScale = 2, kRett = 3, kMerge = 4;

// Batch 2 with L_t = {37, 5} of 37 text tokens (padding in item 1), 200 video tokens in blocks of
// 64 (the last holds 8), 3 heads. Step s adds s * 0.15 * (a fixed second draw) to q and k, so that
// the share of the mass inside a mask drifts from step to step, and to v (0, 0.5, 2 for heads 0,
// 1, 2) * (a fresh draw of each step) plus (0, 0.5, 4) * (an offset per step and head, the same
// for every token), so that the values cached at a reference step go stale at different rates
// and the choices differ between heads.
struct Steps {
  int64_t B = 2, NV = 200, NT = 37, H = 3, D = 64, S = NV + NT;
  TextPlacement placement;
  std::vector<float> q0, k0, v0, dq, dk;
  std::vector<int32_t> lengths{37, 5};
  std::vector<float> q, k, v;
  explicit Steps(TextPlacement p, uint32_t seed = 11) : placement(p) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> n;
    for (auto* t : {&q0, &k0, &v0, &dq, &dk}) {
      t->resize(static_cast<size_t>(B * S * H * D));
      for (auto& x : *t) x = n(rng);
    }
    // A spatial bias per head so that attention is local for some heads and diffuse for others.
    for (int64_t b = 0; b < B; ++b)
      for (int64_t s = 0; s < S; ++s)
        for (int64_t h = 0; h < H; ++h) {
          const float pos = static_cast<float>(s) / static_cast<float>(S);
          const float gain = 0.5f * static_cast<float>(h);
          float* qr = q0.data() + ((b * S + s) * H + h) * D;
          float* kr = k0.data() + ((b * S + s) * H + h) * D;
          qr[0] += gain * 6.f * std::cos(6.f * pos);
          qr[1] += gain * 6.f * std::sin(6.f * pos);
          kr[0] += gain * 6.f * std::cos(6.f * pos);
          kr[1] += gain * 6.f * std::sin(6.f * pos);
        }
  }
  AttentionArgs args(int step) {
    q = q0;
    k = k0;
    v = v0;
    constexpr float kValueNoise[3] = {0.f, 0.5f, 2.f};
    constexpr float kValueShift[3] = {0.f, 0.5f, 4.f};
    std::mt19937 rng(1000u + static_cast<uint32_t>(step));
    std::normal_distribution<float> n;
    // One offset per (step, head), the same for every token of the head.
    std::vector<float> shift(static_cast<size_t>(H * D));
    for (auto& x : shift) x = n(rng);
    for (size_t i = 0; i < q.size(); ++i) {
      const size_t h = (i / static_cast<size_t>(D)) % 3;
      q[i] += 0.15f * static_cast<float>(step) * dq[i];
      k[i] += 0.15f * static_cast<float>(step) * dk[i];
      v[i] += kValueNoise[h] * n(rng) + kValueShift[h] * shift[h * D + i % D];
    }
    AttentionArgs a;
    a.q = TensorView::contiguous(q.data(), DType::f32, {B, S, H, D});
    a.k = TensorView::contiguous(k.data(), DType::f32, {B, S, H, D});
    a.v = TensorView::contiguous(v.data(), DType::f32, {B, S, H, D});
    a.text_lengths = TensorView::contiguous(lengths.data(), DType::i32, {B});
    a.layout = Layout{.num_video = NV, .num_text = NT, .block_size = 64};
    a.layout.text_placement = placement;
    return a;
  }
  Config config() const {
    Config c;
    c.method = Method::calibrated;
    c.block_size = 64;
    c.select.sparsity = 0.5;  // k = 2 of 4 video blocks
    c.select.p = 0.2;
    c.schedule.dense_steps = 1;
    c.rettention.ref_period = 3;
    return c;
  }
  TensorView view(std::vector<float>& o) const {
    return TensorView::contiguous(o.data(), DType::f32, {B, S, H, D});
  }
  int64_t row(int64_t b, int64_t n, int64_t h) const { return (b * S + n) * H + h; }
};

// What the test keeps of a reference step to recompute the candidates later.
struct Reference {
  int step = -1;
  Selection selection;
  std::vector<float> rho, delta;  // [b, S, H(, d)]
  std::vector<double> drift;      // per (b, h)
  int interval = 0;               // distance from the reference before (0: none)
  std::vector<double> e0, ek;     // each candidate's error at distances 0 and interval
};

// The candidate the test expects at distance d of a reference step: the least of the squared
// norms linear in the distance through sqrt(e0) and sqrt(ek) (never below 0), ties to the lower
// index; Re-ttention's without a distance measured. Also returns the least error.
std::pair<int, double> expected_choice(const Reference& ref, int64_t bh, int d) {
  if (ref.interval == 0) return {kRett, 0.0};
  double best = std::numeric_limits<double>::infinity();
  int want = kNone;
  for (int c = 0; c < kCandidates; ++c) {
    const double a = std::sqrt(ref.e0[bh * kCandidates + c]),
                 b = std::sqrt(ref.ek[bh * kCandidates + c]);
    const double norm = std::max(0.0, a + (b - a) * d / ref.interval);
    if (norm * norm < best) {
      best = norm * norm;
      want = c;
    }
  }
  return {want, best};
}

// Every candidate's output of every video row, [5][b, S, H, d] (other rows 0), recomputed from
// the public stages: O_spa over `sel`, R_i, C_i from this call's pooling, the pooled complement
// over the non-critical blocks of `sel`, and Re-ttention's terms of `ref` at distance k.
struct Candidates {
  std::vector<std::vector<double>> out;
  std::vector<float> o_spa_ref;  // O_spa over ref's mask (for the drift)
  std::vector<float> lse_spa_ref;
};

Candidates candidates(Steps& s, const AttentionArgs& a, const Selection& sel, const Config& cfg,
                      const Reference* ref, int k) {
  const int64_t B = s.B, S = s.S, H = s.H, D = s.D;
  const Layout& L = a.layout;
  std::vector<float> o_spa(static_cast<size_t>(B * S * H * D)), lse_spa(B * S * H);
  cpu::block_sparse_attention(a, sel.mask.view(), s.view(o_spa),
                              TensorView::contiguous(lse_spa.data(), DType::f32, {B, S, H}));
  const Pooled pooled = cpu::pool(a);
  const BlockScores scores = cpu::implicit_full_attention(a, pooled);
  const Correction rect = cpu::rectification(pooled, scores, sel, cfg.gapr);
  Candidates c;
  c.out.assign(kCandidates, std::vector<double>(o_spa.size(), 0.0));
  if (ref) {
    c.o_spa_ref.resize(o_spa.size());
    c.lse_spa_ref.resize(lse_spa.size());
    cpu::block_sparse_attention(
        a, ref->selection.mask.view(), s.view(c.o_spa_ref),
        TensorView::contiguous(c.lse_spa_ref.data(), DType::f32, {B, S, H}));
  }
  const int64_t nv = L.num_video_blocks(), v0 = L.video_offset();
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < L.num_video; ++t) {
        const int64_t n = v0 + t, i = t / 64, r = s.row(b, n, h);
        const int64_t e0 = (b * H + h) * nv + i;
        const float* spa = o_spa.data() + r * D;
        // Merge: a softmax over the pooled non-critical blocks, weighed against lse_spa.
        const uint8_t* crit = sel.critical.data() + e0 * nv;
        std::vector<double> m;
        std::vector<int64_t> cols;
        for (int64_t j = 0; j < nv; ++j) {
          if (crit[j]) continue;
          double dot = 0;
          for (int64_t e = 0; e < D; ++e)
            dot += static_cast<double>(a.q.ptr<float>()[r * D + e]) *
                   pooled.k[pooled.at(b, h, j) + e];
          m.push_back(scale * dot + std::log(static_cast<double>(L.block_count(j))));
          cols.push_back(j);
        }
        double w_pool = 0;
        std::vector<double> pool_sum(D, 0.0);
        const double ls = lse_spa[r];
        for (size_t c2 = 0; c2 < m.size(); ++c2) {
          const double w = std::exp(m[c2] - ls);
          w_pool += w;
          const float* v = pooled.v.data() + pooled.at(b, h, cols[c2]);
          for (int64_t e = 0; e < D; ++e) pool_sum[e] += w * v[e];
        }
        for (int64_t e = 0; e < D; ++e) {
          const size_t x = static_cast<size_t>(r * D + e);
          c.out[kNone][x] = spa[e];
          c.out[kAffine][x] = rect.a[e0] * static_cast<double>(spa[e]) + rect.c[e0 * D + e];
          c.out[kScale][x] = rect.a[e0] * static_cast<double>(spa[e]);
          c.out[kMerge][x] = (spa[e] + pool_sum[e]) / (1.0 + w_pool);
          if (ref) {
            double rho = ref->rho[r] + (k - 1) * ref->drift[b * H + h];
            if (cfg.rettention.clamp) rho = std::min(rho, 1.0);
            c.out[kRett][x] = rho * c.o_spa_ref[r * D + e] + ref->delta[r * D + e];
          }
        }
      }
  return c;
}

double head_error(const std::vector<double>& x, const std::vector<float>& full, const Steps& s,
                  const Layout& L, int64_t b, int64_t h) {
  double err = 0;
  for (int64_t n = L.video_offset(); n < L.video_offset() + L.num_video; ++n)
    for (int64_t e = 0; e < s.D; ++e) {
      const size_t i = static_cast<size_t>(s.row(b, n, h) * s.D + e);
      err += (x[i] - full[i]) * (x[i] - full[i]);
    }
  return err;
}

// Runs steps 0 .. 8 (dense, then references at 1, 4, 7 and sparse steps between) and checks each
// call against the candidates recomputed here; counts in `chosen` how often each candidate was
// chosen.
void run_schedule(TextPlacement placement, std::vector<int>& chosen) {
  Steps s(placement);
  const Config cfg = s.config();
  SparseAttention sa(cfg);
  Reference ref;
  chosen.assign(kCandidates, 0);
  for (int step = 0; step < 9; ++step) {
    SCOPED_TRACE(::testing::Message() << "step " << step);
    const AttentionArgs a = s.args(step);
    const Layout& L = a.layout;
    std::vector<float> out(static_cast<size_t>(s.B * s.S * s.H * s.D), std::nanf(""));
    const CallStats st = sa.forward({0, 0, step}, a, s.view(out));
    std::vector<float> full(out.size()), lse_full(s.B * s.S * s.H);
    const BlockMask all = BlockMask::full(s.B, s.H, L.num_blocks(), L.num_blocks());
    cpu::reference_attention(a, all.view(), s.view(full),
                             TensorView::contiguous(lse_full.data(), DType::f32, {s.B, s.S, s.H}),
                             TensorView{}, TensorView{});
    if (step == 0) {
      EXPECT_EQ(st.kind, CallStats::Kind::dense);
      EXPECT_FALSE(sa.calibration(0, 0).has_value());
      EXPECT_EQ(sa.state_count(), 0u);
      continue;
    }
    const bool is_ref = (step - 1) % 3 == 0;
    if (is_ref) {
      // (1) A reference step is full attention.
      EXPECT_EQ(st.kind, CallStats::Kind::reference);
      EXPECT_EQ(st.density, 1.0);
      double worst = 0;
      for (size_t i = 0; i < out.size(); ++i)
        worst = std::max(worst, static_cast<double>(std::fabs(out[i] - full[i])));
      EXPECT_LT(worst, 1e-5);
      // (3) The errors at distances 0 and k, recomputed here.
      const Pooled pooled = cpu::pool(a);
      const BlockScores scores = cpu::implicit_full_attention(a, pooled);
      Reference now;
      now.step = step;
      now.selection = cpu::select_blocks(a, cfg, &scores, nullptr);
      const bool has_prev = ref.step >= 0;
      const int k = step - ref.step;
      now.interval = has_prev ? k : 0;
      // Each candidate at distance 0 (the fresh mask; Re-ttention exact there) and, with a
      // previous reference, at distance k (as it would have served this step from it).
      const Candidates c = candidates(s, a, now.selection, cfg, nullptr, k);
      const Candidates ck =
          has_prev ? candidates(s, a, ref.selection, cfg, &ref, k) : Candidates{};
      const std::optional<Calibration> cal = sa.calibration(0, 0);
      ASSERT_TRUE(cal.has_value());
      EXPECT_EQ(cal->ref_step, step);
      EXPECT_EQ(cal->interval, now.interval);
      ASSERT_EQ(cal->error_ref.size(), static_cast<size_t>(s.B * s.H * kCandidates));
      ASSERT_EQ(cal->error_then.size(), cal->error_ref.size());
      ASSERT_EQ(cal->drift.size(), static_cast<size_t>(s.B * s.H));
      // Before a drift can be fitted, the configured one.
      now.drift.assign(s.B * s.H, cfg.rettention.drift);
      now.e0.assign(s.B * s.H * kCandidates, 0.0);
      now.ek.assign(s.B * s.H * kCandidates, 0.0);
      for (int64_t b = 0; b < s.B; ++b)
        for (int64_t h = 0; h < s.H; ++h) {
          SCOPED_TRACE(::testing::Message() << "b " << b << ", h " << h);
          const int64_t bh = b * s.H + h;
          for (int cand = 0; cand < kCandidates; ++cand) {
            const size_t at = static_cast<size_t>(bh * kCandidates + cand);
            const double e0 = cand == kRett ? 0.0 : head_error(c.out[cand], full, s, L, b, h);
            EXPECT_NEAR(cal->error_ref[at], e0, 1e-4 * e0 + 1e-7)
                << to_string(static_cast<Candidate>(cand));
            now.e0[at] = e0;
            if (!has_prev) {
              EXPECT_TRUE(std::isnan(cal->error_then[at]));
              EXPECT_TRUE(std::isnan(cal->expected(bh, static_cast<Candidate>(cand), 1)));
              continue;
            }
            const double ek = head_error(ck.out[cand], full, s, L, b, h);
            EXPECT_NEAR(cal->error_then[at], ek, 1e-4 * ek + 1e-7)
                << to_string(static_cast<Candidate>(cand));
            now.ek[at] = ek;
          }
          // (4) The drift: the share the previous mask holds now against its rho then.
          if (has_prev) {
            double sum = 0;
            for (int64_t n = L.video_offset(); n < L.video_offset() + L.num_video; ++n) {
              const int64_t r = s.row(b, n, h);
              sum += std::exp(static_cast<double>(ck.lse_spa_ref[r]) - lse_full[r]) - ref.rho[r];
            }
            now.drift[bh] = sum / (static_cast<double>(L.num_video) * (k - 1));
          }
          EXPECT_NEAR(cal->drift[bh], now.drift[bh], 1e-5);
        }
      // Keep rho, Delta of this step (the stage that computes them is tested in
      // test_rettention.cpp).
      std::vector<float> o_spa(out.size()), lse_spa(lse_full.size());
      cpu::reference_attention(a, now.selection.mask.view(), s.view(full),
                               TensorView::contiguous(lse_full.data(), DType::f32, {s.B, s.S, s.H}),
                               s.view(o_spa),
                               TensorView::contiguous(lse_spa.data(), DType::f32, {s.B, s.S, s.H}));
      const RettentionCache cache = cpu::rettention_statistics(
          s.view(full), TensorView::contiguous(lse_full.data(), DType::f32, {s.B, s.S, s.H}),
          s.view(o_spa), TensorView::contiguous(lse_spa.data(), DType::f32, {s.B, s.S, s.H}),
          true);
      now.rho = cache.rho;
      now.delta = cache.delta;
      ref = std::move(now);
      continue;
    }
    // (2) A sparse step at distance d: each head's candidate is the least error expected at d
    // (from the errors recomputed at the reference step), and its video rows are that
    // candidate over the reference step's mask; text rows are exact attention, padding rows
    // zero.
    EXPECT_EQ(st.kind, CallStats::Kind::sparse);
    EXPECT_TRUE(st.mask_reused);
    EXPECT_LT(st.density, 1.0);
    const int k = step - ref.step;
    const Candidates c = candidates(s, a, ref.selection, cfg, &ref, k);
    const std::optional<Calibration> cal = sa.calibration(0, 0);
    ASSERT_TRUE(cal.has_value());
    for (int64_t b = 0; b < s.B; ++b)
      for (int64_t h = 0; h < s.H; ++h) {
        const int64_t bh = b * s.H + h;
        const int cand = static_cast<int>(cal->choice(bh, k));
        SCOPED_TRACE(::testing::Message() << "b " << b << ", h " << h << ", candidate "
                                          << to_string(static_cast<Candidate>(cand)));
        const auto [want, best] = expected_choice(ref, bh, k);
        if (cand != want) {
          // Equal to the recomputed argmin unless the two are within rounding of each other.
          EXPECT_NEAR(cal->expected(bh, static_cast<Candidate>(cand), k), best, 1e-5 * best);
        }
        if (ref.interval > 0)
          EXPECT_NEAR(cal->expected(bh, static_cast<Candidate>(cand), k), best, 1e-4 * best + 1e-7);
        ++chosen[cand];
        double worst = 0;
        for (int64_t n = 0; n < s.S; ++n) {
          const bool video = n >= L.video_offset() && n < L.video_offset() + L.num_video;
          for (int64_t e = 0; e < s.D; ++e) {
            const size_t i = static_cast<size_t>(s.row(b, n, h) * s.D + e);
            const double want_x = video ? c.out[cand][i] : full[i];
            worst = std::max(worst, std::fabs(out[i] - want_x));
          }
        }
        EXPECT_LT(worst, 2e-5);
      }
  }
}

TEST(Calibrated, ReferenceStepsMeasureAndSparseStepsApplyTheLeastExpectedError) {
  std::vector<int> suffix, prefix;
  run_schedule(TextPlacement::suffix, suffix);
  run_schedule(TextPlacement::prefix, prefix);
  // The inputs make the choice differ between heads: more than one candidate is exercised.
  int kinds = 0;
  for (int c = 0; c < kCandidates; ++c) kinds += suffix[c] + prefix[c] > 0;
  EXPECT_GE(kinds, 2);
  for (int c = 0; c < kCandidates; ++c)
    std::printf("candidate %-10s chosen %d times (suffix), %d (prefix)\n",
                to_string(static_cast<Candidate>(c)), suffix[c], prefix[c]);
}

// The error expected at a distance (expected_error) and the choice that follows from it.
TEST(Calibrated, ExpectedErrorInterpolatesTheNorm) {
  // Norms 0 and 3 at distances 0 and 3: 1 and 2 at distances 1 and 2, 4 past the interval.
  EXPECT_DOUBLE_EQ(expected_error(0.0, 9.0, 3, 1), 1.0);
  EXPECT_DOUBLE_EQ(expected_error(0.0, 9.0, 3, 2), 4.0);
  EXPECT_DOUBLE_EQ(expected_error(0.0, 9.0, 3, 4), 16.0);
  // A candidate whose error does not change with the distance.
  EXPECT_NEAR(expected_error(4.0, 4.0, 5, 3), 4.0, 1e-12);
  // Norms 5 and 1 at distances 0 and 2: 3 at 1, 1 at 2, and 0 (not -1) at 3.
  EXPECT_NEAR(expected_error(25.0, 1.0, 2, 1), 9.0, 1e-12);
  EXPECT_NEAR(expected_error(25.0, 1.0, 2, 3), 0.0, 1e-12);
  expect_error([] { expected_error(-1.0, 1.0, 2, 1); }, "e0", "expected a finite squared error");
  expect_error([] { expected_error(1.0, std::nan(""), 2, 1); }, "ek", "expected a finite squared");
  const double inf = std::numeric_limits<double>::infinity();
  expect_error([&] { expected_error(inf, 1.0, 2, 1); }, "e0", "expected a finite squared error");
  expect_error([] { expected_error(1.0, 1.0, 0, 1); }, "k", "expected a distance >= 1, got 0");
  expect_error([] { expected_error(1.0, 1.0, 2, 0); }, "d", "expected a distance >= 1, got 0");

  // One (b, h): Re-ttention exact at distance 0 and worst at 4; none flat; affine in between.
  Calibration cal;
  cal.batch = cal.heads = 1;
  cal.ref_step = 5;
  cal.interval = 4;
  //                none  affine scale rettention merge
  cal.error_ref = {4.0, 1.0, 9.0, 0.0, 16.0};
  cal.error_then = {4.0, 9.0, 9.0, 16.0, std::nan("")};
  // Expected norms at d: none 2; affine 1 + d / 2; rettention d; merge not measured.
  EXPECT_EQ(cal.choice(0, 1), Candidate::rettention);  // 1 < 1.5 < 2
  EXPECT_EQ(cal.choice(0, 2), Candidate::none);        // 2 = 2 = 2: the lower index
  EXPECT_EQ(cal.choice(0, 3), Candidate::none);        // 2 < 2.5 < 3
  EXPECT_DOUBLE_EQ(cal.expected(0, Candidate::affine, 2), 4.0);
  EXPECT_TRUE(std::isnan(cal.expected(0, Candidate::merge, 1)));
  // An overflowed candidate (infinite error) is expected infinite and never chosen, even where
  // the line through its norms would cross 0.
  Calibration over = cal;
  over.error_ref[static_cast<int>(Candidate::scale)] = inf;
  over.error_then[static_cast<int>(Candidate::scale)] = inf;
  EXPECT_EQ(over.expected(0, Candidate::scale, 1), inf);
  over.error_ref = {inf, inf, inf, inf, inf};
  over.error_then = {inf, 1.0, inf, inf, inf};
  EXPECT_EQ(over.choice(0, 1), Candidate::none);  // every candidate skipped: no correction
  over.error_ref[1] = 4.0;
  EXPECT_EQ(over.choice(0, 1), Candidate::affine);
  expect_error([&] { cal.expected(0, static_cast<Candidate>(5), 1); }, "c",
               "expected a Candidate, got 5");
  // Without a previous reference step, nothing was measured at a distance: Re-ttention's.
  cal.interval = 0;
  EXPECT_EQ(cal.choice(0, 1), Candidate::rettention);
  EXPECT_TRUE(std::isnan(cal.expected(0, Candidate::none, 1)));
  expect_error([&] { cal.choice(1, 1); }, "bh", "expected 0 <= bh < 1, got 1");
  expect_error([&] { cal.choice(0, 0); }, "distance", "expected a distance >= 1, got 0");
  Calibration negative = cal;
  negative.interval = -1;
  expect_error([&] { negative.choice(0, 1); }, "calibration", "expected interval >= 0, got -1");
  cal.error_then.pop_back();
  expect_error([&] { cal.choice(0, 1); }, "calibration", "expected 5 errors at each distance");
}

// (4) The drift fit: the least-squares slope of rho over (k - 1), the form rettention applies.
TEST(Calibrated, DriftFitRecoversTheSlope) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(0.2f, 0.8f);
  std::vector<float> prev(101), now(101);
  for (const float lambda : {0.04f, -0.013f, 0.f}) {
    for (const int k : {2, 3, 5}) {
      for (size_t n = 0; n < prev.size(); ++n) {
        prev[n] = u(rng);
        // Noise of zero mean (+e, -e in pairs) does not move a least-squares slope.
        const float noise = n + 1 < prev.size() ? (n % 2 ? -0.01f : 0.01f) : 0.f;
        now[n] = prev[n] + static_cast<float>(k - 1) * lambda + noise;
      }
      const std::optional<float> fit = fit_drift(prev, now, k);
      ASSERT_TRUE(fit.has_value());
      EXPECT_NEAR(*fit, lambda, 1e-6) << "k " << k;
    }
  }
  // k = 1 is the reference step's own mask distance in rettention's form: nothing to fit.
  EXPECT_FALSE(fit_drift(prev, now, 1).has_value());
  EXPECT_FALSE(fit_drift({}, {}, 3).has_value());
  expect_error([&] { fit_drift(prev, std::span<const float>(now).first(3), 3); }, "now",
               "expected 101 values");
}

// (5) What the method refuses, before any work or state change.
TEST(Calibrated, InvalidUseIsRefused) {
  EXPECT_EQ(parse_method("calibrated"), Method::calibrated);
  EXPECT_STREQ(to_string(Method::calibrated), "calibrated");
  expect_error([] { parse_method("calibrate"); }, "method",
               "rectified_rettention, calibrated, got 'calibrate'");
  Config bad;
  bad.method = Method::calibrated;
  bad.rettention.cache_delta = false;
  expect_error([&] { SparseAttention sa(bad); }, "config.rettention.cache_delta",
               "expected true for calibrated");
  bad = Config{};
  bad.method = static_cast<Method>(static_cast<int>(Method::calibrated) + 1);
  expect_error([&] { bad.validate(); }, "config.method", "or calibrated, got 6");

  Steps s(TextPlacement::suffix);
  SparseAttention sa(s.config());
  std::vector<float> out(static_cast<size_t>(s.B * s.S * s.H * s.D));
  ASSERT_EQ(sa.forward({0, 0, 1}, s.args(1), s.view(out)).kind, CallStats::Kind::reference);
  EXPECT_EQ(sa.state_count(), 1u);
  EXPECT_EQ(sa.calibration(0, 0)->ref_step, 1);
  // A sparse step of another layout than its reference step's: refused, the state kept.
  AttentionArgs other = s.args(2);
  other.layout.num_video -= 8;
  other.layout.num_text += 8;
  std::vector<int32_t> lengths{45, 5};
  other.text_lengths = TensorView::contiguous(lengths.data(), DType::i32, {s.B});
  expect_error([&] { sa.forward({0, 0, 2}, other, s.view(out)); }, "layout",
               "expected the layout of the reference step");
  EXPECT_EQ(sa.forward({0, 0, 2}, s.args(2), s.view(out)).kind, CallStats::Kind::sparse);
  // Other methods keep no calibration.
  Config rect = s.config();
  rect.method = Method::rectified;
  SparseAttention r(rect);
  r.forward({0, 0, 1}, s.args(1), s.view(out));
  EXPECT_FALSE(r.calibration(0, 0).has_value());
}

// (6) On the captured testbed workload (each layer: step 10 a reference, step 14 a sparse step
// at k = 4) at sparsity 0.9, calibrated's error at the sparse step is at most that of plain
// block-sparse attention, in every layer and head.
TEST(Calibrated, CapturedWorkloadNeverWorseThanSparse) {
  const tools::CapturedWorkload w = tools::load_captured(SPAATTN_DEFAULT_WORKLOAD);
  auto make = [&](Method m) {
    Config cfg;
    cfg.method = m;
    cfg.block_size = 128;
    cfg.order = TokenOrder{.kind = OrderKind::gilbert, .grid = w.grid};
    cfg.select.sparsity = 0.9;
    cfg.select.neighbours = false;
    return SparseAttention(cfg);
  };
  SparseAttention dense = make(Method::dense), sparse = make(Method::sparse),
                  calibrated = make(Method::calibrated);
  const int64_t S = w.seq_len(), H = w.heads, D = w.head_dim;
  int sparse_steps = 0;
  for (size_t i = 0; i < w.calls.size(); ++i) {
    std::vector<std::vector<float>> outs;
    CallStats st;
    for (SparseAttention* sa : {&dense, &sparse, &calibrated}) {
      outs.emplace_back(w.calls[i].q.size());
      st = sa->forward(w.info(i), w.args(i, 128),
                       TensorView::contiguous(outs.back().data(), DType::f32, {w.batch, S, H, D}));
    }
    if (st.kind != CallStats::Kind::sparse) continue;
    ++sparse_steps;
    const std::optional<Calibration> cal = calibrated.calibration(w.calls[i].layer, 0);
    ASSERT_TRUE(cal.has_value());
    for (int64_t b = 0; b < w.batch; ++b)
      for (int64_t h = 0; h < H; ++h) {
        double e_sparse = 0, e_cal = 0, norm = 0;
        for (int64_t n = 0; n < S; ++n)
          for (int64_t e = 0; e < D; ++e) {
            const size_t x = static_cast<size_t>(((b * S + n) * H + h) * D + e);
            const double ref = outs[0][x];
            e_sparse += (outs[1][x] - ref) * (outs[1][x] - ref);
            e_cal += (outs[2][x] - ref) * (outs[2][x] - ref);
            norm += ref * ref;
          }
        std::printf("layer %d step %d b %lld h %lld: rel_l2 sparse %.5f, calibrated %.5f (%s)\n",
                    w.calls[i].layer, w.calls[i].step, static_cast<long long>(b),
                    static_cast<long long>(h), std::sqrt(e_sparse / norm),
                    std::sqrt(e_cal / norm),
                    to_string(cal->choice(b * H + h, w.calls[i].step - cal->ref_step)));
        EXPECT_LE(e_cal, e_sparse) << "layer " << w.calls[i].layer << ", b " << b << ", h " << h;
      }
  }
  EXPECT_GE(sparse_steps, 1);
}

}  // namespace
}  // namespace spaattn
