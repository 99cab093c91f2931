// Shared by the CPU tests: host tensors that own their memory (with a choice of strides and
// dtypes), seeded random fillers, a float64 dense / block-masked attention reference that reads
// the inputs exactly as stored (so bf16 inputs are compared on the same rounded values), and
// error measures.
#pragma once
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "spaattn/layout.hpp"
#include "spaattn/tensor.hpp"

namespace spaattn::test {

// Memory layouts of a [b, S, H, d] tensor: contiguous, [b, H, S, d] in memory, and [b, S, H, d]
// with gaps after every row, head and batch item.
enum class Strides { bshd, bhsd, padded };

struct HostTensor {
  std::vector<uint64_t> storage;  // 8-byte words keep every dtype aligned
  TensorView view;

  int64_t at(int64_t b, int64_t n, int64_t h, int64_t e = 0) const {
    return b * view.stride[0] + n * view.stride[1] + h * view.stride[2] + e * view.stride[3];
  }
  double get(int64_t b, int64_t n, int64_t h, int64_t e = 0) const {
    return load_as_float(view.data, view.dtype, at(b, n, h, e));
  }
  void set(int64_t b, int64_t n, int64_t h, int64_t e, double x) {
    store_from_float(view.data, view.dtype, at(b, n, h, e), static_cast<float>(x));
  }
  // Every stored element (padding included) set to NaN, to see that outputs are fully written.
  void poison() {
    const size_t n = storage.size() * 8 / element_size(view.dtype);
    for (size_t i = 0; i < n; ++i)
      store_from_float(view.data, view.dtype, static_cast<int64_t>(i),
                       std::numeric_limits<float>::quiet_NaN());
  }
};

// A [b, S, H, d] tensor of zeros (d = 0: an f32 [b, S, H] tensor for lse).
inline HostTensor make_tensor(DType dt, int64_t b, int64_t s, int64_t h, int64_t d,
                              Strides st = Strides::bshd) {
  HostTensor t;
  const bool rank3 = d == 0;
  const int64_t dd = rank3 ? 1 : d;
  std::array<int64_t, 4> stride{};
  int64_t elems = 0;
  if (st == Strides::bhsd) {
    stride = {h * s * dd, dd, s * dd, 1};
    elems = b * h * s * dd;
  } else if (st == Strides::padded) {
    const int64_t row = dd + 8, batch = s * h * row + 5;
    stride = {batch, h * row, row, 1};
    elems = b * batch;
  } else {
    stride = {s * h * dd, h * dd, dd, 1};
    elems = b * s * h * dd;
  }
  t.storage.assign(static_cast<size_t>((elems * element_size(dt) + 7) / 8), 0);
  t.view.data = t.storage.data();
  t.view.dtype = dt;
  t.view.rank = rank3 ? 3 : 4;
  t.view.shape = {b, s, h, rank3 ? 0 : d};
  t.view.stride = stride;
  if (rank3) t.view.stride[3] = 0;
  return t;
}

inline HostTensor make_lse(int64_t b, int64_t s, int64_t h, Strides st = Strides::bshd) {
  return make_tensor(DType::f32, b, s, h, 0, st);
}

// Uniform values in [-scale, scale) (never all zero), rounded to dt.
inline HostTensor random_tensor(DType dt, int64_t b, int64_t s, int64_t h, int64_t d, uint64_t seed,
                                double scale = 1.0, Strides st = Strides::bshd) {
  HostTensor t = make_tensor(dt, b, s, h, d, st);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(-scale, scale);
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t n = 0; n < s; ++n)
      for (int64_t hi = 0; hi < h; ++hi)
        for (int64_t e = 0; e < d; ++e) t.set(bi, n, hi, e, u(rng));
  return t;
}

// q, k, v and text lengths of one call; not copyable because args points into the members.
struct Problem {
  HostTensor q, k, v;
  std::vector<int32_t> text_len;
  AttentionArgs args;
  Problem() = default;
  Problem(const Problem&) = delete;
  Problem& operator=(const Problem&) = delete;
};

// args with q, k and v replaced by these views; layout, text lengths and the rest kept.
inline AttentionArgs with_qkv(AttentionArgs args, const TensorView& q, const TensorView& k,
                              const TensorView& v) {
  args.q = q;
  args.k = k;
  args.v = v;
  return args;
}

inline void make_problem(Problem& p, DType dt, int64_t batch, int64_t heads, int64_t dim,
                         const Layout& layout, uint64_t seed, std::vector<int32_t> text_len = {},
                         Strides st = Strides::bshd, double qk_scale = 1.0) {
  const int64_t s = layout.seq_len();
  p.q = random_tensor(dt, batch, s, heads, dim, seed, qk_scale, st);
  p.k = random_tensor(dt, batch, s, heads, dim, seed + 1, qk_scale, st);
  p.v = random_tensor(dt, batch, s, heads, dim, seed + 2, 1.0, st);
  p.text_len = std::move(text_len);
  p.args = AttentionArgs{};
  p.args.q = p.q.view;
  p.args.k = p.k.view;
  p.args.v = p.v.view;
  p.args.layout = layout;
  if (!p.text_len.empty())
    p.args.text_lengths = TensorView::contiguous(p.text_len.data(), DType::i32,
                                                 {static_cast<int64_t>(p.text_len.size())});
}

// A layout of nv video and nt text tokens (text after the video by default).
inline Layout layout_of(int64_t nv, int64_t nt, int block = 64,
                        TextPlacement placement = TextPlacement::suffix) {
  Layout L;
  L.num_video = nv;
  L.num_text = nt;
  L.block_size = block;
  L.text_placement = placement;
  return L;
}

// Logical block of token n (Layout: video blocks first, then text blocks), and its text index
// (-1 for a video token).
inline int64_t token_block(const Layout& L, int64_t n, int64_t* text_index = nullptr) {
  const int64_t v = n - L.video_offset();
  if (v >= 0 && v < L.num_video) {
    if (text_index) *text_index = -1;
    return v / L.block_size;
  }
  const int64_t t = n - L.text_offset();
  if (text_index) *text_index = t;
  return L.num_video_blocks() + t / L.block_size;
}

// float64 attention: out [b, S, H, d] and lse [b, S, H], contiguous. mask: dense
// [b, H, NB, NB] bytes over logical blocks, or empty for full attention. Padding text keys are
// never attended; padding text query rows and rows with no key give O = 0, lse = -inf.
struct Reference64 {
  std::vector<double> out, lse;
};

inline Reference64 attention64(const AttentionArgs& args, const std::vector<uint8_t>& mask = {}) {
  const Layout& L = args.layout;
  const int64_t B = args.batch(), S = args.seq_len(), H = args.heads(), D = args.head_dim();
  const int64_t nb = L.num_blocks();
  const double scale = args.softmax_scale();
  Reference64 r;
  r.out.assign(static_cast<size_t>(B * S * H * D), 0.0);
  r.lse.assign(static_cast<size_t>(B * S * H), -std::numeric_limits<double>::infinity());
  // The inputs as float64 [b, H, S, d], read once.
  auto read = [&](const TensorView& t) {
    std::vector<double> x(static_cast<size_t>(B * H * S * D));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t n = 0; n < S; ++n)
          for (int64_t e = 0; e < D; ++e)
            x[((b * H + h) * S + n) * D + e] = load_as_float(
                t.data, t.dtype, b * t.stride[0] + n * t.stride[1] + h * t.stride[2] + e);
    return x;
  };
  const std::vector<double> q = read(args.q), k = read(args.k), v = read(args.v);
  std::vector<double> s(S);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t lt = args.text_len(b);
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t n = 0; n < S; ++n) {
        int64_t tq = -1;
        const int64_t qb = token_block(L, n, &tq);
        if (tq >= lt) continue;
        double smax = -std::numeric_limits<double>::infinity();
        std::vector<uint8_t> use(S, 0);
        for (int64_t m = 0; m < S; ++m) {
          int64_t tk = -1;
          const int64_t kb = token_block(L, m, &tk);
          if (tk >= lt) continue;
          if (!mask.empty() && !mask[((b * H + h) * nb + qb) * nb + kb]) continue;
          const double* qn = q.data() + ((b * H + h) * S + n) * D;
          const double* km = k.data() + ((b * H + h) * S + m) * D;
          double dot = 0;
          for (int64_t e = 0; e < D; ++e) dot += qn[e] * km[e];
          s[m] = scale * dot;
          use[m] = 1;
          smax = std::max(smax, s[m]);
        }
        if (std::isinf(smax)) continue;
        double sum = 0;
        double* o = r.out.data() + ((b * S + n) * H + h) * D;
        for (int64_t m = 0; m < S; ++m) {
          if (!use[m]) continue;
          const double p = std::exp(s[m] - smax);
          sum += p;
          const double* vm = v.data() + ((b * H + h) * S + m) * D;
          for (int64_t e = 0; e < D; ++e) o[e] += p * vm[e];
        }
        for (int64_t e = 0; e < D; ++e) o[e] /= sum;
        r.lse[(b * S + n) * H + h] = smax + std::log(sum);
      }
    }
  }
  return r;
}

// ||x - ref|| / ||ref|| over a [b, S, H, d] view against a contiguous float64 reference.
inline double rel_l2(const TensorView& x, const std::vector<double>& ref) {
  const int64_t B = x.shape[0], S = x.shape[1], H = x.shape[2], D = x.shape[3];
  double num = 0, den = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = 0; n < S; ++n)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t e = 0; e < D; ++e) {
          const double r = ref[((b * S + n) * H + h) * D + e];
          const double v = load_as_float(x.data, x.dtype, x.offset({b, n, h, e}));
          num += (v - r) * (v - r);
          den += r * r;
        }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

// Largest |lse - ref| over finite reference entries; infinity when a -inf entry is not matched.
inline double lse_error(const TensorView& lse, const std::vector<double>& ref) {
  const int64_t B = lse.shape[0], S = lse.shape[1], H = lse.shape[2];
  double worst = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = 0; n < S; ++n)
      for (int64_t h = 0; h < H; ++h) {
        const double r = ref[(b * S + n) * H + h];
        const double v = lse.ptr<float>()[lse.offset({b, n, h})];
        if (std::isnan(v)) return std::numeric_limits<double>::infinity();
        if (std::isinf(r)) {
          if (!(std::isinf(v) && v < 0)) return std::numeric_limits<double>::infinity();
        } else {
          worst = std::max(worst, std::fabs(v - r));
        }
      }
  return worst;
}

}  // namespace spaattn::test
