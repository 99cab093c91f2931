// Randomized cross-check of SparseAttention's GPU path against its CPU path: seeded awkward shapes
// (S from 1 to 20,000 with S < B among them, odd latent grids, 0 to 300 text tokens with padding
// before or after the video, [b, S, H, d] and [b, H, S, d] strides, both head dims, block sizes
// and element types, every token order) and every method over a run of steps (dense warm-up,
// Re-ttention references and sparse steps, reused masks). Each call's output must be written
// everywhere (the GPU output is poisoned first), match the CPU's within the tolerance below, and
// report the same kind, mask reuse and density. The test prints how many cases and calls it
// compared and how many mismatched; SPAATTN_CROSSCHECK_CASES sets the number of cases (300).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "gpu_testing.hpp"

namespace spaattn::gpu_test {
namespace {

// The GPU computes in bf16 / f16 with fp32 accumulation, the CPU in fp32 from the same rounded
// inputs; the outputs differ by the rounding of the GPU's output and its P (about 2^-8).
constexpr double kMaxRelL2 = 2e-2;
constexpr double kMaxDensityDiff = 0.02;

struct Case {
  Config config;
  DType dtype = DType::bf16;
  int64_t batch = 1, heads = 1, dim = 64;
  Layout layout;
  std::vector<int32_t> text_len;
  test::Strides strides = test::Strides::bshd;
  std::string describe() const {
    const Grid& g = config.order.grid;
    return "method " + std::string(to_string(config.method)) + " grid " + std::to_string(g.t) +
           "x" + std::to_string(g.h) + "x" + std::to_string(g.w) + " text " +
           std::to_string(layout.num_text) +
           (layout.text_placement == TextPlacement::prefix ? " prefix" : " suffix") + " b " +
           std::to_string(batch) + " H " + std::to_string(heads) + " d " + std::to_string(dim) +
           " B " + std::to_string(layout.block_size) +
           (dtype == DType::f16 ? " f16" : " bf16") +
           (strides == test::Strides::bhsd ? " bhsd" : " bshd") + " order " +
           std::to_string(static_cast<int>(config.order.kind));
  }
};

Case random_case(std::mt19937_64& rng) {
  const auto pick = [&rng](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  Case c;
  // Video tokens log-uniform in [1, 20000] on an odd grid T x H x W.
  const double target = std::exp(std::uniform_real_distribution<double>(0, std::log(20000.0))(rng));
  const int64_t t = pick(1, 6);
  const int64_t h = std::max<int64_t>(1, static_cast<int64_t>(std::sqrt(target / t)) + pick(-2, 2));
  const int64_t w = std::max<int64_t>(1, static_cast<int64_t>(target / (t * h)) + pick(-1, 1));
  c.dim = pick(0, 1) ? 128 : 64;
  c.dtype = pick(0, 3) == 0 ? DType::f16 : DType::bf16;
  c.strides = pick(0, 1) ? test::Strides::bhsd : test::Strides::bshd;
  const int64_t num_text = pick(0, 2) == 0 ? 0 : pick(1, 300);
  c.layout = Layout{.num_video = t * h * w,
                    .num_text = num_text,
                    .text_placement = pick(0, 1) ? TextPlacement::prefix : TextPlacement::suffix,
                    .block_size = pick(0, 1) ? 128 : 64};
  // The CPU reference costs b * H * S^2 * d: keep each call under about 3e10 multiply-adds.
  const double s = static_cast<double>(c.layout.seq_len());
  const int64_t most = std::max<int64_t>(1, static_cast<int64_t>(3e10 / (s * s * c.dim)));
  c.batch = std::min<int64_t>(pick(1, 2), most);
  c.heads = std::min<int64_t>(pick(1, 3), std::max<int64_t>(1, most / c.batch));
  if (num_text > 0)
    for (int64_t b = 0; b < c.batch; ++b)
      c.text_len.push_back(static_cast<int32_t>(pick(0, 2) == 0 ? num_text : pick(0, num_text)));

  Config& cfg = c.config;
  const Method methods[] = {Method::sparse, Method::rectified, Method::rettention,
                            Method::rectified_rettention, Method::dense};
  cfg.method = methods[pick(0, 4)];
  cfg.block_size = c.layout.block_size;
  const OrderKind orders[] = {OrderKind::raster, OrderKind::gilbert, OrderKind::tiles};
  cfg.order = TokenOrder{.kind = orders[pick(0, 2)], .grid = Grid{t, h, w}};
  cfg.select.sparsity = std::uniform_real_distribution<double>(0.0, 0.95)(rng);
  cfg.select.neighbours = pick(0, 1);
  cfg.gapr = pick(0, 1);
  cfg.schedule.dense_steps = static_cast<int>(pick(0, 1));
  cfg.schedule.mask_period = static_cast<int>(pick(1, 2));
  cfg.rettention.ref_period = static_cast<int>(pick(1, 3));
  return c;
}

TEST(CrossCheck, RandomShapesAndMethodsMatchTheCpuPath) {
  if (small_mode()) GTEST_SKIP() << "large test (SPAATTN_GPU_TESTS_SMALL)";
  const char* env = std::getenv("SPAATTN_CROSSCHECK_CASES");
  const int cases = env && *env ? std::atoi(env) : 300;
  std::mt19937_64 rng(20261130);
  int calls = 0, mismatches = 0;
  for (int i = 0; i < cases; ++i) {
    const Case c = random_case(rng);
    Config gpu_config = c.config;
    gpu_config.measure_density = true;
    SparseAttention cpu(c.config), gpu(gpu_config);
    const int steps = 4;
    for (int step = 0; step < steps; ++step) {
      test::Problem p;
      test::make_problem(p, c.dtype, c.batch, c.heads, c.dim, c.layout, 7919 * i + 31 * step,
                         c.text_len, c.strides, 2.0);
      const int64_t S = c.layout.seq_len();
      test::HostTensor ref = test::make_tensor(DType::f32, c.batch, S, c.heads, c.dim);
      const CallInfo info{.layer = 1, .entry = 0, .step = step};
      const CallStats cs = cpu.forward(info, p.args, ref.view);

      const DeviceProblem d(p);
      test::HostTensor out = test::make_tensor(c.dtype, c.batch, S, c.heads, c.dim, c.strides);
      out.poison();
      DeviceTensor d_out(out);
      const CallStats gs = gpu.forward(info, d.args, d_out.view);
      cuda_ok(cudaDeviceSynchronize(), "forward");
      d_out.to_host(out);
      ++calls;
      int64_t unwritten = 0;
      const double err = rel_l2(out, ref, &unwritten);
      const bool ok = gs.kind == cs.kind && gs.mask_reused == cs.mask_reused &&
                      std::abs(gs.density - cs.density) <= kMaxDensityDiff && err <= kMaxRelL2 &&
                      unwritten == 0;
      if (!ok) {
        ++mismatches;
        ADD_FAILURE() << "case " << i << " step " << step << ": " << c.describe() << ": kind "
                      << static_cast<int>(gs.kind) << " vs " << static_cast<int>(cs.kind)
                      << ", reused " << gs.mask_reused << " vs " << cs.mask_reused
                      << ", density " << gs.density << " vs " << cs.density << ", rel L2 " << err
                      << ", unwritten " << unwritten;
      }
    }
  }
  std::printf("cross-check: %d cases, %d calls, %d mismatches (rel L2 <= %g, density within %g)\n",
              cases, calls, mismatches, kMaxRelL2, kMaxDensityDiff);
  EXPECT_EQ(mismatches, 0);
}

}  // namespace
}  // namespace spaattn::gpu_test
