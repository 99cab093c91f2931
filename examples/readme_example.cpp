// The C++ example of README.md: Rectified SpaAttn on host tensors, compared with dense attention.
#include <spaattn/spaattn.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

int main() {
  using namespace spaattn;
  const int64_t T = 8, Hh = 32, Ww = 32, text = 32;  // 8,192 video tokens + 32 text tokens
  const int64_t S = T * Hh * Ww + text, H = 2, D = 64;
  std::mt19937 rng(7);
  const auto uniform = [&rng] { return static_cast<float>(rng() / 2147483648.0 - 1.0); };
  std::vector<float> q(S * H * D), k(S * H * D), v(S * H * D), out(S * H * D), ref(S * H * D);
  for (auto* t : {&q, &k, &v})
    for (auto& x : *t) x = 2 * uniform();
  // Video-like inputs: q and k vary smoothly over the (t, h, w) grid, so each query attends
  // mostly to nearby tokens, as in a video model (on plain noise every block matters alike).
  float freq[3][D / 2];
  for (auto& axis : freq)
    for (auto& f : axis) f = 0.5f * uniform();
  for (int64_t n = 0; n < T * Hh * Ww; ++n)
    for (int64_t e = 0; e < D / 2; ++e) {
      const float a = n / (Hh * Ww) * freq[0][e] + n / Ww % Hh * freq[1][e] + n % Ww * freq[2][e];
      for (int64_t h = 0; h < H; ++h)
        for (auto* t : {&q, &k}) {
          (*t)[(n * H + h) * D + e] += 1.5f * std::cos(a);
          (*t)[(n * H + h) * D + D / 2 + e] += 1.5f * std::sin(a);
        }
    }

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
