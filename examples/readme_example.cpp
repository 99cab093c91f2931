// The C++ example of README.md: Rectified SpaAttn on host tensors, compared with dense attention.
#include <spaattn/spaattn.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

int main() {
  using namespace spaattn;
  const int64_t T = 4, Hh = 16, Ww = 16, text = 32;  // 1,024 video tokens + 32 text tokens
  const int64_t S = T * Hh * Ww + text, H = 2, D = 64;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  std::vector<float> q(S * H * D), k(S * H * D), v(S * H * D), out(S * H * D), ref(S * H * D);
  for (auto* t : {&q, &k, &v})
    for (auto& x : *t) x = normal(rng);

  AttentionArgs args;  // [batch, seq, heads, head_dim] views over the vectors above
  args.q = TensorView::contiguous(q.data(), DType::f32, {1, S, H, D});
  args.k = TensorView::contiguous(k.data(), DType::f32, {1, S, H, D});
  args.v = TensorView::contiguous(v.data(), DType::f32, {1, S, H, D});
  args.layout = Layout{.num_video = T * Hh * Ww, .num_text = text, .block_size = 128};

  Config config;  // Rectified SpaAttn, 90% sparsity, gilbert token order on the latent grid
  config.method = Method::rectified;
  config.select.sparsity = 0.9;
  config.order = TokenOrder{.kind = OrderKind::gilbert, .grid = Grid{T, Hh, Ww}};
  SparseAttention attention(config);
  const CallStats stats = attention.forward(CallInfo{.layer = 0, .step = 0}, args,
                                            TensorView::contiguous(out.data(), DType::f32,
                                                                   {1, S, H, D}));

  config.method = Method::dense;
  SparseAttention dense(config);
  dense.forward(CallInfo{}, args, TensorView::contiguous(ref.data(), DType::f32, {1, S, H, D}));

  double err = 0, norm = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    err += (out[i] - ref[i]) * (out[i] - ref[i]);
    norm += ref[i] * ref[i];
  }
  std::printf("density %.3f, relative L2 error against dense %.4f\n", stats.density,
              std::sqrt(err / norm));
  return std::isfinite(err) && stats.density < 1.0 ? 0 : 1;
}
