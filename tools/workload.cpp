// How the built-in workload is made (all from one seed, identical on every platform):
//  - Locality: every video token at grid point p = (t, y, x) gets q and k from a smooth random
//    field F_h(p) in R^d (a sum of 24 random Fourier modes of low spatial frequency), so tokens
//    close in space-time have similar keys and a query attends most to its neighbourhood.
//  - Sharp and diffuse heads: q = beta_h F_h(p) + noise, k = F_h(p) + noise, with beta_h large
//    (sharp, local attention) in some heads and small (diffuse attention) in others.
//  - Global tokens: in some heads 6 video tokens carry a key component along a direction u_h that
//    every query shares, so they are attended from everywhere (attention sinks).
//  - Text: N_t text tokens, the first L_t valid. Their keys share a direction w_h; in some heads
//    every query leans towards w_h, so text draws a large share of attention there.
//  - V: another smooth field plus noise, so pooled values summarise their blocks.
//  - Steps: step s adds 0.04 * s times an independent noise draw to the base tensors.
// Head roles cycle over: 0 sharp local, 1 diffuse, 2 text-heavy, 3 global tokens.
#include "workload.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <numbers>

#include "checked_math.hpp"
#include "safetensors.hpp"
#include "spaattn/error.hpp"

namespace spaattn::tools {
namespace {

// splitmix64 + Box-Muller: portable, so the workload is the same everywhere.
struct Rng {
  uint64_t state;
  explicit Rng(uint64_t seed) : state(seed * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull) {}
  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return (static_cast<double>(next() >> 11) + 0.5) * 0x1.0p-53; }
  double normal() {
    return std::sqrt(-2.0 * std::log(uniform())) * std::cos(2.0 * std::numbers::pi * uniform());
  }
};

// F(p) = sum_m a_m cos(2 pi w_m . p + phi_m), unit-variance entries, p in [0,1)^3.
struct SmoothField {
  static constexpr int kModes = 24;
  int64_t dim;
  std::vector<double> amp, freq, phase;
  SmoothField(Rng& rng, int64_t dim_, double max_freq) : dim(dim_) {
    amp.resize(static_cast<size_t>(kModes * dim));
    for (auto& a : amp) a = rng.normal() * std::sqrt(2.0 / kModes);
    for (int m = 0; m < kModes; ++m) {
      for (int a = 0; a < 3; ++a) freq.push_back((rng.uniform() * 2 - 1) * max_freq);
      phase.push_back(rng.uniform() * 2 * std::numbers::pi);
    }
  }
  void eval(double t, double y, double x, float* out) const {
    double c[kModes];
    for (int m = 0; m < kModes; ++m)
      c[m] = std::cos(2 * std::numbers::pi * (freq[3 * m] * t + freq[3 * m + 1] * y +
                                              freq[3 * m + 2] * x) + phase[m]);
    for (int64_t e = 0; e < dim; ++e) {
      double s = 0;
      for (int m = 0; m < kModes; ++m) s += amp[m * dim + e] * c[m];
      out[e] = static_cast<float>(s);
    }
  }
};

}  // namespace

AttentionArgs Workload::args() {
  AttentionArgs a;
  const int64_t S = layout.seq_len(), H = spec.heads, D = spec.head_dim;
  a.q = TensorView::contiguous(q.data(), DType::f32, {1, S, H, D});
  a.k = TensorView::contiguous(k.data(), DType::f32, {1, S, H, D});
  a.v = TensorView::contiguous(v.data(), DType::f32, {1, S, H, D});
  a.text_lengths = TensorView::contiguous(&text_len, DType::i32, {1});
  a.layout = layout;
  return a;
}

Workload make_workload(const WorkloadSpec& spec, int step, int block_size) {
  Workload w;
  w.spec = spec;
  w.layout.num_video = spec.grid.size();
  w.layout.num_text = spec.num_text;
  w.layout.block_size = block_size;
  w.text_len = static_cast<int32_t>(spec.text_len);
  const int64_t NV = spec.grid.size(), S = NV + spec.num_text, H = spec.heads, D = spec.head_dim;
  w.q.assign(static_cast<size_t>(S * H * D), 0.f);
  w.k = w.q;
  w.v = w.q;
  for (int64_t h = 0; h < H; ++h) {
    Rng rng(spec.seed * 1000003 + static_cast<uint64_t>(h));
    const int role = static_cast<int>(h % 4);
    const double beta = role == 0 ? 2.2 : role == 1 ? 0.35 : 1.0;
    const SmoothField fk(rng, D, 2.5), fv(rng, D, 1.5);
    std::vector<double> u(D), wdir(D);
    for (auto& x : u) x = rng.normal();
    for (auto& x : wdir) x = rng.normal();
    const double lean_text = role == 2 ? 0.9 : 0.1, lean_global = role == 3 ? 0.8 : 0.05;
    std::vector<float> f(D), g(D);
    for (int64_t n = 0; n < NV; ++n) {
      const int64_t t = n / (spec.grid.h * spec.grid.w), y = (n / spec.grid.w) % spec.grid.h,
                    x = n % spec.grid.w;
      const double pt = static_cast<double>(t) / spec.grid.t, py = static_cast<double>(y) / spec.grid.h,
                   px = static_cast<double>(x) / spec.grid.w;
      fk.eval(pt, py, px, f.data());
      fv.eval(pt, py, px, g.data());
      float* qn = &w.q[(n * H + h) * D];
      float* kn = &w.k[(n * H + h) * D];
      float* vn = &w.v[(n * H + h) * D];
      for (int64_t e = 0; e < D; ++e) {
        qn[e] = static_cast<float>(beta * f[e] + 0.3 * rng.normal() + lean_text * wdir[e] +
                                   lean_global * u[e]);
        kn[e] = static_cast<float>(f[e] + 0.3 * rng.normal());
        vn[e] = static_cast<float>(g[e] + 0.5 * rng.normal());
      }
    }
    for (int i = 0; i < 6; ++i) {  // global tokens: keys along u
      const int64_t n = static_cast<int64_t>(rng.uniform() * static_cast<double>(NV));
      for (int64_t e = 0; e < D; ++e) w.k[(n * H + h) * D + e] += static_cast<float>(2.0 * u[e]);
    }
    for (int64_t n = NV; n < S; ++n) {  // text tokens
      for (int64_t e = 0; e < D; ++e) {
        w.q[(n * H + h) * D + e] = static_cast<float>(rng.normal());
        w.k[(n * H + h) * D + e] = static_cast<float>(wdir[e] * 1.2 + 0.6 * rng.normal());
        w.v[(n * H + h) * D + e] = static_cast<float>(rng.normal());
      }
    }
  }
  if (step > 0) {  // drift between denoising steps
    Rng rng(spec.seed * 7919 + static_cast<uint64_t>(step));
    const double amp = 0.04 * step;
    for (auto* t : {&w.q, &w.k, &w.v})
      for (auto& x : *t) x += static_cast<float>(amp * rng.normal());
  }
  return w;
}

}  // namespace spaattn::tools

namespace spaattn::tools {

AttentionArgs CapturedWorkload::args(size_t i, int block_size) const {
  const CapturedCall& c = calls.at(i);
  AttentionArgs a;
  const int64_t S = seq_len();
  auto view = [&](const std::vector<uint16_t>& x) {
    return TensorView::contiguous(const_cast<uint16_t*>(x.data()), DType::bf16,
                                  {batch, S, heads, head_dim});
  };
  a.q = view(c.q);
  a.k = view(c.k);
  a.v = view(c.v);
  a.text_lengths = TensorView::contiguous(const_cast<int32_t*>(c.text_lengths.data()), DType::i32,
                                          {batch});
  a.layout.num_video = grid.size();
  a.layout.num_text = num_text;
  a.layout.block_size = block_size;
  return a;
}

CapturedWorkload load_captured(const std::string& path) {
  const SafeTensors st = read_safetensors(path);
  CapturedWorkload w;
  w.path = path;
  w.metadata = st.metadata;
  // Token indices, layer and step numbers, text lengths and the core's loop counters are 32-bit:
  // every size and number from the file is checked against this before it is used.
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  const auto grid = parse_int_rows(st.meta("grid"), "workload: " + path + ": metadata 'grid'");
  SPAATTN_CHECK_ARG(grid.size() == 3 && grid[0].size() == 1 && grid[1].size() == 1 &&
                        grid[2].size() == 1 && grid[0][0] > 0 && grid[1][0] > 0 &&
                        grid[2][0] > 0 && grid[0][0] <= kMax && grid[1][0] <= kMax &&
                        grid[2][0] <= kMax,
                    "workload", path, ": metadata 'grid': expected [T, H, W] with sizes in [1, ",
                    kMax, "], got ", st.meta("grid"));
  const std::array<int64_t, 3> dims = {grid[0][0], grid[1][0], grid[2][0]};
  const auto n_grid = checked_product<int64_t>(dims, kMax);
  SPAATTN_CHECK_ARG(n_grid.has_value(), "workload", path, ": metadata 'grid' ", st.meta("grid"),
                    ": T*H*W exceeds ", kMax, " tokens");
  w.grid = Grid{dims[0], dims[1], dims[2]};
  const int64_t n_video =
      parse_int(st.meta("n_video"), "workload: " + path + ": metadata 'n_video'");
  const int64_t n_text = parse_int(st.meta("n_text"), "workload: " + path + ": metadata 'n_text'");
  SPAATTN_CHECK_ARG(n_video == *n_grid, "workload", path, ": metadata 'n_video' ", n_video,
                    " is not T*H*W = ", *n_grid);
  SPAATTN_CHECK_ARG(n_text >= 0 && n_text <= kMax, "workload", path,
                    ": metadata 'n_text': expected an integer in [0, ", kMax, "], got ", n_text);
  w.num_text = n_text;
  const auto seq = checked_add(n_video, n_text, kMax);
  SPAATTN_CHECK_ARG(seq.has_value(), "workload", path, ": n_video + n_text = ", n_video, " + ",
                    n_text, " exceeds ", kMax, " tokens");
  const int64_t S = *seq;
  auto pairs = parse_int_rows(st.meta("pairs"), "workload: " + path + ": metadata 'pairs'");
  SPAATTN_CHECK_ARG(!pairs.empty(), "workload", path, ": metadata 'pairs' is empty");
  std::sort(pairs.begin(), pairs.end());
  for (size_t i = 0; i < pairs.size(); ++i) {
    const auto& pair = pairs[i];
    SPAATTN_CHECK_ARG(pair.size() == 2 && pair[0] >= 0 && pair[1] >= 0 && pair[0] <= kMax &&
                          pair[1] <= kMax,
                      "workload", path, ": metadata 'pairs': expected [[layer, step], ...] in [0, ",
                      kMax, "], got ", st.meta("pairs"));
    SPAATTN_CHECK_ARG(i == 0 || pair != pairs[i - 1], "workload", path, ": metadata 'pairs': [",
                      pair[0], ", ", pair[1], "] appears twice");
    CapturedCall c;
    c.layer = static_cast<int>(pair[0]);
    c.step = static_cast<int>(pair[1]);
    const std::string prefix = detail::concat("layer", c.layer, ".step", c.step, ".");
    for (auto [name, dst] : {std::pair{"q", &c.q}, std::pair{"k", &c.k}, std::pair{"v", &c.v}}) {
      const StoredTensor& t = st.get(prefix + name, "BF16", 4);
      const std::string tensor = detail::concat("tensor '", prefix, name, "' shape [", t.shape[0],
                                                ", ", t.shape[1], ", ", t.shape[2], ", ",
                                                t.shape[3], "]");
      for (int d : {0, 2, 3})
        SPAATTN_CHECK_ARG(t.shape[d] >= 1 && t.shape[d] <= kMax, "workload", path, ": ", tensor,
                          ": expected ", d == 0 ? "batch" : d == 2 ? "heads" : "head_dim",
                          " in [1, ", kMax, "], got ", t.shape[d]);
      if (w.calls.empty() && dst == &c.q) {
        w.batch = t.shape[0];
        w.heads = t.shape[2];
        w.head_dim = t.shape[3];
      }
      SPAATTN_CHECK_ARG(t.shape[0] == w.batch && t.shape[1] == S && t.shape[2] == w.heads &&
                            t.shape[3] == w.head_dim,
                        "workload", path, ": ", tensor, ": expected [", w.batch, ", ", S, ", ",
                        w.heads, ", ", w.head_dim, "] (n_video + n_text = ", S, ")");
      // The reader already matched the byte count to the shape; checked again here because the
      // copy below trusts it.
      const std::array<int64_t, 4> shape = {t.shape[0], t.shape[1], t.shape[2], t.shape[3]};
      const auto elems = checked_product<int64_t>(shape, std::numeric_limits<int64_t>::max() / 2);
      SPAATTN_CHECK_ARG(elems && t.bytes.size() == static_cast<uint64_t>(*elems) * 2, "workload",
                        path, ": ", tensor, ": expected 2 data bytes per element, got ",
                        t.bytes.size());
      dst->resize(t.bytes.size() / 2);
      std::memcpy(dst->data(), t.bytes.data(), t.bytes.size());
    }
    const StoredTensor& len = st.get(prefix + "text_lengths", "I32", 1);
    SPAATTN_CHECK_ARG(len.shape[0] == w.batch &&
                          len.bytes.size() == static_cast<size_t>(w.batch) * sizeof(int32_t),
                      "workload", path, ": tensor '", prefix, "text_lengths': expected ", w.batch,
                      " entries, got ", len.shape[0]);
    c.text_lengths.resize(static_cast<size_t>(w.batch));
    std::memcpy(c.text_lengths.data(), len.bytes.data(), len.bytes.size());
    for (int32_t l : c.text_lengths)
      SPAATTN_CHECK_ARG(l >= 0 && l <= w.num_text, "workload", path, ": tensor '", prefix,
                        "text_lengths': expected values in [0, ", w.num_text, "], got ", l);
    if (!w.calls.empty() && w.calls.back().layer == c.layer)
      c.run_step = w.calls.back().run_step + 1;
    w.calls.push_back(std::move(c));
  }
  return w;
}

}  // namespace spaattn::tools
