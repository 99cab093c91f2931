// SparseAttention: the method pipeline, its schedule and its per-(layer, entry) state.
#include <gtest/gtest.h>

#include <cmath>
#include <thread>
#include <vector>

#include "cpu/reference.hpp"
#include "cpu/testing.hpp"

namespace spaattn {
namespace {

using testing::Call;
using testing::expect_error;

double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double err = 0, norm = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    err += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    norm += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(err / norm);
}

// A 3 x 5 x 7 latent grid (105 video tokens, two blocks of 64, the second partial) + 10 text.
struct GridCall : Call {
  Grid grid{3, 5, 7};
  GridCall(uint32_t seed = 3) : Call(2, 105, 10, 2, 64, seed) {}
  Config config(Method m) const {
    Config c;
    c.method = m;
    c.block_size = 64;
    c.order = TokenOrder{.kind = OrderKind::gilbert, .grid = grid};
    return c;
  }
  std::vector<float> run(SparseAttention& sa, CallInfo info, CallStats* stats = nullptr) {
    std::vector<float> o(out.size());
    const CallStats st = sa.forward(info, args, TensorView::contiguous(o.data(), DType::f32,
                                                                      {B, S, H, D}));
    if (stats) *stats = st;
    return o;
  }
};

TEST(Method, DenseIsTheKernelWithEveryBlockAndIgnoresTokenOrder) {
  GridCall c;
  std::vector<float> direct(c.out.size());
  BlockMask full = BlockMask::full(c.B, c.H, c.args.layout.num_blocks(), c.args.layout.num_blocks());
  cpu::block_sparse_attention(c.args, full.view(),
                              TensorView::contiguous(direct.data(), DType::f32, {c.B, c.S, c.H, c.D}),
                              TensorView{});
  SparseAttention gilbert(c.config(Method::dense));
  Config raster_cfg = c.config(Method::dense);
  raster_cfg.order.kind = OrderKind::raster;
  SparseAttention raster(raster_cfg);
  EXPECT_LT(rel_l2(c.run(gilbert, {}), direct), 1e-6);
  EXPECT_LT(rel_l2(c.run(raster, {}), direct), 1e-6);
}

TEST(Method, RectifiedWithEveryBlockCriticalEqualsDense) {
  GridCall c;
  SparseAttention dense(c.config(Method::dense));
  Config cfg = c.config(Method::rectified);
  cfg.select.sparsity = 0.0;  // k = NV: every video block is critical, so R = 1 and C = 0
  SparseAttention rect(cfg);
  CallStats st;
  const std::vector<float> out = c.run(rect, {}, &st);
  EXPECT_LT(rel_l2(out, c.run(dense, {})), 1e-5);
  EXPECT_EQ(st.kind, CallStats::Kind::sparse);
}

TEST(Method, RettentionReferenceStepThenSameInputsReproduceDense) {
  GridCall c;
  SparseAttention dense(c.config(Method::dense));
  const std::vector<float> ref = c.run(dense, {});
  Config cfg = c.config(Method::rettention);
  cfg.select.sparsity = 0.5;
  cfg.select.neighbours = false;  // with two video blocks the neighbour map would select all
  cfg.rettention.ref_period = 3;
  SparseAttention rt(cfg);
  CallStats st;
  EXPECT_LT(rel_l2(c.run(rt, {0, 0, 0}, &st), ref), 1e-6);
  EXPECT_EQ(st.kind, CallStats::Kind::reference);
  // Step 1 (k = 1, no drift) on the same inputs: rho O_spa + Delta = O_full.
  EXPECT_LT(rel_l2(c.run(rt, {0, 0, 1}, &st), ref), 1e-5);
  EXPECT_EQ(st.kind, CallStats::Kind::sparse);
  EXPECT_LT(st.density, 1.0);
  // Step 2 (k = 2): rho' = rho + lambda moves the output away from dense.
  EXPECT_GT(rel_l2(c.run(rt, {0, 0, 2}, &st), ref), 1e-3);
  EXPECT_EQ(c.run(rt, {0, 0, 3}, &st).size(), ref.size());
  EXPECT_EQ(st.kind, CallStats::Kind::reference);
}

TEST(Method, MissingReferenceMakesTheCallALateReference) {
  GridCall c;
  SparseAttention rt(c.config(Method::rettention));
  SparseAttention dense(c.config(Method::dense));
  const std::vector<float> ref = c.run(dense, {0, 0, 1});
  CallStats st;
  // Step 1 without the reference of step 0 (skipped, e.g. by a step cache): full attention.
  EXPECT_LT(rel_l2(c.run(rt, {0, 0, 1}, &st), ref), 1e-5);
  EXPECT_EQ(st.kind, CallStats::Kind::reference);
  // Step 2 corrects with the statistics of step 1 (k = 1: no drift yet), step 3 with k = 2.
  c.run(rt, {0, 0, 2}, &st);
  EXPECT_EQ(st.kind, CallStats::Kind::sparse);
  EXPECT_TRUE(st.mask_reused);
  // A state from a later step (a new run without reset()) is not reused either.
  c.run(rt, {0, 0, 1}, &st);
  EXPECT_EQ(st.kind, CallStats::Kind::reference);
}

TEST(Method, BadInputLeavesCachesAndOutputUntouched) {
  GridCall c;
  SparseAttention dense(c.config(Method::dense));
  const std::vector<float> ref = c.run(dense, {});
  SparseAttention rt(c.config(Method::rectified_rettention));
  c.run(rt, {0, 0, 0});
  AttentionArgs bad = c.args;
  bad.layout.num_text = 9;
  bad.layout.num_video = 106;
  const std::vector<float> poison = c.out;
  expect_error([&] { rt.forward({0, 0, 1}, bad, c.out_view()); }, "args.layout.num_video",
               "expected the grid's t*h*w = 105, got 106");
  bad = c.args;
  bad.v.stride[3] = 3;
  expect_error([&] { rt.forward({0, 0, 1}, bad, c.out_view()); }, "v", "unit stride");
  EXPECT_EQ(c.out, poison);
  EXPECT_EQ(rt.state_count(), 1u);
  EXPECT_LT(rel_l2(c.run(rt, {0, 0, 1}), ref), 1e-5);  // the cache of step 0 is intact
}

TEST(Method, ScheduleDenseStepsDenseLayersAndReferences) {
  GridCall c;
  Config cfg = c.config(Method::rettention);
  cfg.schedule.dense_steps = 2;
  cfg.schedule.dense_layers = {3};
  cfg.rettention.ref_period = 2;
  SparseAttention rt(cfg);
  const CallStats::Kind D = CallStats::Kind::dense, R = CallStats::Kind::reference,
                        S = CallStats::Kind::sparse;
  const CallStats::Kind expected[] = {D, D, R, S, R, S};
  for (int step = 0; step < 6; ++step) {
    CallStats st;
    c.run(rt, {0, 1, step}, &st);
    EXPECT_EQ(st.kind, expected[step]) << "step " << step;
    c.run(rt, {3, 1, step}, &st);
    EXPECT_EQ(st.kind, D) << "dense layer, step " << step;
  }
  EXPECT_EQ(rt.state_count(), 1u);  // dense calls keep no state
  rt.reset();
  EXPECT_EQ(rt.state_count(), 0u);
  CallStats st;
  c.run(rt, {0, 1, 3}, &st);  // after reset(): no reference to correct with, a late one
  EXPECT_EQ(st.kind, R);
}

TEST(Method, MaskPeriodReusesTheSelectionPerLayerAndEntry) {
  GridCall c;
  Config cfg = c.config(Method::rectified);
  cfg.select.sparsity = 0.5;
  cfg.schedule.mask_period = 3;
  SparseAttention rect(cfg);
  const bool reused[] = {false, true, true, false, true};
  for (int step = 0; step < 5; ++step) {
    CallStats st;
    c.run(rect, {0, 0, step}, &st);
    EXPECT_EQ(st.mask_reused, reused[step]) << "step " << step;
    c.run(rect, {0, 1, step}, &st);  // the other CFG entry keeps its own mask
    EXPECT_EQ(st.mask_reused, reused[step]) << "entry 1, step " << step;
  }
  EXPECT_EQ(rect.state_count(), 2u);
}

// One object shared by threads: calls on different (layer, entry) states and reset() interleave
// without a race (the suite runs under ThreadSanitizer in CI) and each call still computes its
// own result.
TEST(Method, CallsFromSeveralThreadsAreSerialised) {
  GridCall c;
  Config cfg = c.config(Method::rectified);
  cfg.select.sparsity = 0.5;
  cfg.schedule.mask_period = 2;
  SparseAttention shared(cfg);
  SparseAttention alone(cfg);
  const std::vector<float> want = c.run(alone, {0, 0, 0});
  std::vector<std::vector<float>> got(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int step = 0; step < 3; ++step) {
        std::vector<float> o(c.out.size());
        shared.forward({t, t % 2, step}, c.args,
                       TensorView::contiguous(o.data(), DType::f32, {c.B, c.S, c.H, c.D}));
        if (step == 0) got[t] = std::move(o);
        if (t == 3) shared.reset();
      }
    });
  for (auto& th : threads) th.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(got[t], want) << "thread " << t;
  EXPECT_LE(shared.state_count(), 4u);
}

// Config::scale is the call's softmax scale where the call leaves it unset; a call with another
// scale is refused before any work.
TEST(Method, ConfigScaleAppliesToCallsWithoutOne) {
  GridCall c;
  Config cfg = c.config(Method::dense);
  cfg.scale = 0.05f;
  SparseAttention scaled(cfg);
  std::vector<float> direct(c.out.size());
  AttentionArgs a = c.args;
  a.scale = 0.05f;
  BlockMask full = BlockMask::full(c.B, c.H, c.args.layout.num_blocks(), c.args.layout.num_blocks());
  cpu::block_sparse_attention(a, full.view(),
                              TensorView::contiguous(direct.data(), DType::f32, {c.B, c.S, c.H, c.D}),
                              TensorView{});
  EXPECT_LT(rel_l2(c.run(scaled, {}), direct), 1e-6);
  SparseAttention plain(c.config(Method::dense));
  EXPECT_GT(rel_l2(c.run(plain, {}), direct), 1e-3);  // 1/sqrt(64) differs from 0.05
  a.scale = 0.1f;
  const std::vector<float> poison = c.out;
  expect_error([&] { scaled.forward({}, a, c.out_view()); }, "args.scale",
               "expected 0 or config.scale 0.05, got 0.1");
  EXPECT_EQ(c.out, poison);
}

// A stored selection belongs to the layout it was made for: with the same tensor shape but
// another split into video and text tokens, the selection is made afresh (and a Re-ttention
// cache is refused), so the call equals the one of a fresh object.
TEST(Method, AnotherLayoutOfTheSameShapeMakesAFreshSelection) {
  Call c(1, 200, 0, 2, 64, 5);
  Config cfg;
  cfg.method = Method::sparse;
  cfg.block_size = 64;
  cfg.select.sparsity = 0.5;
  cfg.schedule.mask_period = 4;
  SparseAttention reused(cfg);
  auto run = [&](SparseAttention& sa, const AttentionArgs& a, int step, CallStats* st) {
    std::vector<float> o(c.out.size());
    *st = sa.forward({0, 0, step}, a,
                     TensorView::contiguous(o.data(), DType::f32, {c.B, c.S, c.H, c.D}));
    return o;
  };
  CallStats st;
  run(reused, c.args, 0, &st);
  EXPECT_FALSE(st.mask_reused);
  AttentionArgs text = c.args;
  text.layout.num_video = 72;
  text.layout.num_text = 128;
  const std::vector<float> got = run(reused, text, 1, &st);
  EXPECT_FALSE(st.mask_reused) << "a selection made for another layout was reused";
  SparseAttention fresh(cfg);
  CallStats st_fresh;
  EXPECT_EQ(got, run(fresh, text, 1, &st_fresh));
  run(reused, text, 2, &st);
  EXPECT_TRUE(st.mask_reused);  // same layout again: reused as the period says

  Config rcfg = cfg;
  rcfg.method = Method::rettention;
  SparseAttention rt(rcfg);
  run(rt, c.args, 0, &st);
  EXPECT_EQ(st.kind, CallStats::Kind::reference);
  const std::vector<float> poison = c.out;
  expect_error([&] { rt.forward({0, 0, 1}, text, c.out_view()); }, "layout",
               "expected the layout of the reference step (200 video and 0 suffix");
  EXPECT_EQ(c.out, poison);
  run(rt, c.args, 1, &st);  // the cache of step 0 still serves its own layout
  EXPECT_EQ(st.kind, CallStats::Kind::sparse);
}

// The cache belongs to the dtype of its reference step too (the GPU path keeps Delta in it): a
// sparse step with the same values in bfloat16 is refused before it writes anything, and the
// cache keeps serving the dtype it was made for.
TEST(Method, RettentionSparseStepInAnotherDtypeIsAnError) {
  Call c(1, 200, 8, 2, 64, 7);
  Config cfg;
  cfg.method = Method::rettention;
  cfg.block_size = 64;
  SparseAttention rt(cfg);  // default sparsity
  std::vector<float> o(c.out.size());
  const TensorView o_view = TensorView::contiguous(o.data(), DType::f32, {c.B, c.S, c.H, c.D});
  EXPECT_EQ(rt.forward({0, 0, 0}, c.args, o_view).kind, CallStats::Kind::reference);

  const auto to_bf16 = [&](const std::vector<float>& x) {
    test::HostTensor t = test::make_tensor(DType::bf16, c.B, c.S, c.H, c.D);
    for (size_t i = 0; i < x.size(); ++i)
      store_from_float(t.view.data, DType::bf16, static_cast<int64_t>(i), x[i]);
    return t;
  };
  const test::HostTensor q = to_bf16(c.q), k = to_bf16(c.k), v = to_bf16(c.v);
  const AttentionArgs half = test::with_qkv(c.args, q.view, k.view, v.view);
  const std::vector<float> poison = c.out;
  expect_error([&] { rt.forward({0, 0, 1}, half, c.out_view()); }, "q",
               "expected the dtype of the reference step (float32), got bfloat16");
  EXPECT_EQ(c.out, poison);
  EXPECT_EQ(rt.forward({0, 0, 1}, c.args, o_view).kind, CallStats::Kind::sparse);
}

}  // namespace
}  // namespace spaattn
