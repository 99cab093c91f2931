// run_case(): see attention_case.hpp.
#include "attention_case.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "gpu_testing.hpp"

namespace spaattn::gpu_test {
namespace {

std::vector<uint8_t> random_mask(const Case& c, int64_t nb) {
  const int64_t rows = c.batch * c.heads * nb;
  std::vector<uint8_t> dense(static_cast<size_t>(rows * nb), 0);
  std::mt19937_64 rng(c.seed * 7919 + 3);
  std::uniform_real_distribution<double> u(0, 1);
  for (int64_t r = 0; r < rows; ++r) {
    if (u(rng) < c.empty_rows) continue;
    for (int64_t j = 0; j < nb; ++j) dense[r * nb + j] = u(rng) < c.density;
  }
  return dense;
}

// float64 attention of one query row (b, n, h) over the mask's key blocks.
void row64(const AttentionArgs& a, const std::vector<uint8_t>& mask, int64_t b, int64_t n,
           int64_t h, std::vector<double>& o, double& lse) {
  const Layout& L = a.layout;
  const int64_t S = a.seq_len(), D = a.head_dim(), nb = L.num_blocks(), H = a.heads();
  const int64_t lt = a.text_len(b);
  o.assign(static_cast<size_t>(D), 0.0);
  lse = -std::numeric_limits<double>::infinity();
  auto get = [](const TensorView& t, int64_t b, int64_t n, int64_t h, int64_t e) {
    return static_cast<double>(load_as_float(t.data, t.dtype, t.offset({b, n, h, e})));
  };
  int64_t tq = -1;
  const int64_t qb = test::token_block(L, n, &tq);
  if (tq >= lt) return;
  std::vector<double> s(S, -std::numeric_limits<double>::infinity());
  double smax = -std::numeric_limits<double>::infinity();
  for (int64_t m = 0; m < S; ++m) {
    int64_t tk = -1;
    const int64_t kb = test::token_block(L, m, &tk);
    if (tk >= lt || !mask[((b * H + h) * nb + qb) * nb + kb]) continue;
    double dot = 0;
    for (int64_t e = 0; e < D; ++e) dot += get(a.q, b, n, h, e) * get(a.k, b, m, h, e);
    s[m] = a.softmax_scale() * dot;
    smax = std::max(smax, s[m]);
  }
  if (std::isinf(smax)) return;
  double sum = 0;
  for (int64_t m = 0; m < S; ++m) {
    if (std::isinf(s[m])) continue;
    const double p = std::exp(s[m] - smax);
    sum += p;
    for (int64_t e = 0; e < D; ++e) o[e] += p * get(a.v, b, m, h, e);
  }
  for (auto& x : o) x /= sum;
  lse = smax + std::log(sum);
}

}  // namespace

CaseResult run_case(const Case& c) {
  CaseResult res;
  const Layout& L = c.layout;
  const int64_t S = L.seq_len(), nb = L.num_blocks(), B = c.batch, H = c.heads, D = c.dim;
  test::Problem p;
  test::make_problem(p, c.dtype, B, H, D, L, c.seed, c.text_len, c.strides, c.qk_scale);
  if (c.equal_keys)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t n = 1; n < S; ++n)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t e = 0; e < D; ++e) p.k.set(b, n, h, e, p.k.get(b, 0, h, e));
  if (c.k_mean != 0.0)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t n = 0; n < S; ++n)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t e = 0; e < D; ++e)
            p.k.set(b, n, h, e, p.k.get(b, n, h, e) + c.k_mean * double(1 + e % 5));
  const std::vector<uint8_t> dense = random_mask(c, nb);
  const BlockMask host_mask = BlockMask::from_dense(dense.data(), B, H, nb, nb);

  // Device inputs, same bytes and strides; L_t in device memory.
  DeviceTensor q(p.q), k(p.k), v(p.v);
  AttentionArgs args = test::with_qkv(p.args, q.view, k.view, v.view);
  args.kernel = c.kernel;
  DeviceBuffer text_len(sizeof(int32_t) * c.text_len.size());
  if (!c.text_len.empty()) {
    text_len.upload(c.text_len.data(), text_len.bytes());
    args.text_lengths = TensorView::contiguous(text_len.get(), DType::i32, {B}, Device::cuda);
  }
  cudaStream_t stream;
  cuda_ok(cudaStreamCreate(&stream), "cudaStreamCreate");
  DeviceMask mask(dense, B, H, nb, nb, stream);

  test::HostTensor out =
      c.gapped_out ? make_gapped(c.dtype, B, S, H, D) : test::make_tensor(c.dtype, B, S, H, D);
  test::HostTensor lse =
      c.gapped_out ? make_gapped(DType::f32, B, S, H, 0) : test::make_lse(B, S, H);
  out.poison();
  lse.poison();
  DeviceTensor out_d(out), lse_d(lse);
  if (c.fp8) {
    const size_t bytes = cuda::fp8_workspace_size(args);
    DeviceBuffer ws(bytes);
    cuda::quantize_fp8(args, ws.get(), bytes, stream);
    cuda::block_sparse_attention_fp8(args, mask.view, out_d.view, lse_d.view, ws.get(), bytes,
                                     stream);
    cuda_ok(cudaStreamSynchronize(stream), "fp8 kernel");
  } else {
    cuda::block_sparse_attention(args, mask.view, out_d.view, lse_d.view, stream);
  }
  cuda_ok(cudaStreamSynchronize(stream), "kernel");
  cuda_ok(cudaStreamDestroy(stream), "cudaStreamDestroy");
  out_d.to_host(out);
  lse_d.to_host(lse);
  const BlockMask gpu_mask = mask.download();
  res.csr_matches = gpu_mask.row_offsets == host_mask.row_offsets &&
                    gpu_mask.col_indices == host_mask.col_indices;

  const WriteCheck wo = check_writes(out), wl = check_writes(lse);
  res.unwritten_out = wo.unwritten;
  res.outside_out = wo.outside;
  res.unwritten_lse = wl.unwritten;
  res.outside_lse = wl.outside;

  if (c.cpu_reference) {
    test::HostTensor ref_out = test::make_tensor(DType::f32, B, S, H, D);
    test::HostTensor ref_lse = test::make_lse(B, S, H);
    cpu::block_sparse_attention(p.args, host_mask.view(), ref_out.view, ref_lse.view);
    std::vector<double> ro(static_cast<size_t>(B * S * H * D)), rl(static_cast<size_t>(B * S * H));
    for (size_t i = 0; i < ro.size(); ++i) ro[i] = ref_out.view.ptr<float>()[i];
    for (size_t i = 0; i < rl.size(); ++i) rl[i] = ref_lse.view.ptr<float>()[i];
    res.rel_l2_cpu = test::rel_l2(out.view, ro);
    res.lse_err_cpu = test::lse_error(lse.view, rl);
  }

  // float64 on sampled rows (every row for small problems); rows without mass must be 0.
  std::mt19937_64 rng(c.seed + 99);
  const int64_t total = B * S * H, want = std::min<int64_t>(total, 384);
  double num = 0, den = 0;
  std::vector<double> o;
  for (int64_t i = 0; i < want; ++i) {
    const int64_t idx = want == total ? i : static_cast<int64_t>(rng() % total);
    const int64_t b = idx / (S * H), n = idx / H % S, h = idx % H;
    double l = 0;
    row64(p.args, dense, b, n, h, o, l);
    const double gl = lse.get(b, n, h);
    if (std::isinf(l)) {
      if (!(std::isinf(gl) && gl < 0)) res.lse_err_f64 = std::numeric_limits<double>::infinity();
      for (int64_t e = 0; e < D; ++e) res.nonzero_empty_rows += out.get(b, n, h, e) != 0.0;
    } else {
      res.lse_err_f64 = std::max(res.lse_err_f64, std::isnan(gl) ? INFINITY : std::fabs(gl - l));
    }
    for (int64_t e = 0; e < D; ++e) {
      const double x = out.get(b, n, h, e);
      num += std::isnan(x) ? INFINITY : (x - o[e]) * (x - o[e]);
      den += o[e] * o[e];
    }
    ++res.sampled_rows;
  }
  res.rel_l2_f64 = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  res.out.reserve(static_cast<size_t>(B * S * H * D));
  res.lse.reserve(static_cast<size_t>(B * S * H));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = 0; n < S; ++n)
      for (int64_t h = 0; h < H; ++h) {
        res.lse.push_back(static_cast<float>(lse.get(b, n, h)));
        for (int64_t e = 0; e < D; ++e) res.out.push_back(static_cast<float>(out.get(b, n, h, e)));
      }
  return res;
}

void expect_clean_writes(const CaseResult& r) {
  EXPECT_EQ(r.unwritten_out, 0) << "output elements left unwritten or not finite";
  EXPECT_EQ(r.outside_out, 0) << "elements written outside the output view";
  EXPECT_EQ(r.unwritten_lse, 0) << "lse entries left unwritten";
  EXPECT_EQ(r.outside_lse, 0) << "elements written outside the lse view";
  EXPECT_EQ(r.nonzero_empty_rows, 0) << "rows without keys must be exactly zero";
}

Difference difference(const CaseResult& r, const CaseResult& ref) {
  Difference d;
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.out.size() && i < r.out.size(); ++i) {
    num += (double(r.out[i]) - ref.out[i]) * (double(r.out[i]) - ref.out[i]);
    den += double(ref.out[i]) * ref.out[i];
  }
  d.rel_l2 = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  for (size_t i = 0; i < ref.lse.size() && i < r.lse.size(); ++i) {
    if (std::isinf(ref.lse[i]) || std::isinf(r.lse[i]))
      d.lse = std::max(d.lse, ref.lse[i] == r.lse[i] ? 0.0 : double(INFINITY));
    else
      d.lse = std::max(d.lse, std::fabs(double(r.lse[i]) - ref.lse[i]));
  }
  return d;
}

}  // namespace spaattn::gpu_test
