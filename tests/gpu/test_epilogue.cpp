// The attention kernel's token order (video_perm) and epilogue kinds (attention/epilogue.cuh) at the
// level of one launch (attention/api.hpp), against float64 on the host: Q, K, V are gathered into the
// order on the host, attention64 gives O_spa / lse (and O_full for the reference merge), the
// epilogue is applied in float64 and every result is read back at the caller's rows. Random
// masks with empty rows, text padding, a partial last block, both text placements; outputs are
// poisoned first and must be fully written.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "cuda/attention/api.hpp"
#include "gpu_testing.hpp"

namespace spaattn::gpu_test {
namespace {

using cuda_detail::EpilogueKind;

struct EpiCase {
  std::string name;
  EpilogueKind kind = EpilogueKind::none;
  DType dtype = DType::bf16;
  int64_t dim = 128;
  int block = 128;
  TextPlacement placement = TextPlacement::suffix;
  bool small = false;
  // 28 heads give 280 query blocks, more than twice the SMs of an H100 / H200 (132), so CTAs of
  // the persistent sm90 kernel take two or three blocks, empty ones among them, one after the
  // other (all three tables of its rows in use). The hopper family runs the kv_ordered ones.
  int64_t heads = 2;
  // K and V handed to the kernel already in the token order (kv_ordered, as the GPU pipeline
  // does; either family, SPAATTN_KERNEL decides), or read through video_perm inside the kernel
  // (the portable family only).
  bool kv_ordered = false;
};
void PrintTo(const EpiCase& c, std::ostream* os) { *os << c.name; }

std::vector<float> random_floats(size_t n, double lo, double hi, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(lo, hi);
  std::vector<float> x(n);
  for (auto& v : x) v = static_cast<float>(u(rng));
  return x;
}

template <class T>
struct DeviceArray {
  DeviceBuffer buf;
  explicit DeviceArray(const std::vector<T>& host) : buf(host.size() * sizeof(T)) {
    buf.upload(host.data(), buf.bytes());
  }
  T* get() const { return static_cast<T*>(buf.get()); }
  std::vector<T> download() const {
    std::vector<T> h(buf.bytes() / sizeof(T));
    buf.download(h.data(), buf.bytes());
    return h;
  }
};

double max_lse_err(const std::vector<float>& got, const std::vector<double>& want) {
  double err = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isinf(want[i]) || std::isinf(got[i])) {
      if (got[i] != want[i]) return INFINITY;
      continue;
    }
    err = std::max(err, std::abs(got[i] - want[i]));
  }
  return err;
}

class Epilogue : public ::testing::TestWithParam<EpiCase> {};

TEST_P(Epilogue, MatchesFloat64InTheCallersOrder) {
  const EpiCase& c = GetParam();
  if (small_mode() && !c.small) GTEST_SKIP() << "large case (SPAATTN_GPU_TESTS_SMALL)";
  const int64_t B = 2, H = c.heads, D = c.dim;
  const Layout L{
      .num_video = 390, .num_text = 77, .text_placement = c.placement, .block_size = c.block};
  const int64_t S = L.seq_len(), NB = L.num_blocks(), NV = L.num_video_blocks();
  const int64_t v0 = L.video_offset();
  test::Problem p;
  test::make_problem(p, c.dtype, B, H, D, L, 41, {77, 30});

  // A random order of the video tokens; the reference runs on the gathered tensors.
  std::vector<int32_t> perm(static_cast<size_t>(L.num_video));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937_64(7));
  const std::vector<int32_t> inv = invert_permutation(perm);
  auto ordered = [&](const test::HostTensor& t) {
    test::HostTensor o = test::make_tensor(c.dtype, B, S, H, D);
    permute_tokens(t.view, o.view, perm, v0, /*inverse=*/false);
    return o;
  };
  const test::HostTensor qo = ordered(p.q), ko = ordered(p.k), vo = ordered(p.v);
  const AttentionArgs args_o = test::with_qkv(p.args, qo.view, ko.view, vo.view);
  // Caller row n -> its row in the order.
  auto ord_row = [&](int64_t n) { return n >= v0 && n < v0 + L.num_video ? v0 + inv[n - v0] : n; };

  // Mask: random blocks, a tenth of the rows empty; its complement for the reference merge.
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> u(0, 1);
  std::vector<uint8_t> dense(static_cast<size_t>(B * H * NB * NB), 0), comp(dense.size(), 0);
  for (int64_t r = 0; r < B * H * NB; ++r) {
    const bool empty = u(rng) < 0.1;
    for (int64_t j = 0; j < NB; ++j) {
      dense[r * NB + j] = !empty && u(rng) < 0.4;
      comp[r * NB + j] = !dense[r * NB + j];
    }
  }
  const test::Reference64 spa = test::attention64(args_o, dense);
  const test::Reference64 full =
      c.kind == EpilogueKind::merge_reference ? test::attention64(args_o) : test::Reference64{};

  DeviceTensor q(p.q), k(c.kv_ordered ? ko : p.k), v(c.kv_ordered ? vo : p.v);
  test::HostTensor out_h = test::make_tensor(c.dtype, B, S, H, D);
  out_h.poison();
  DeviceTensor out(out_h);
  const size_t rows = static_cast<size_t>(B * S * H);
  DeviceArray<float> lse(std::vector<float>(rows, NAN)), lse_full(std::vector<float>(rows, NAN));
  DeviceArray<int32_t> d_perm(perm), d_len(p.text_len);
  AttentionArgs args = test::with_qkv(p.args, q.view, k.view, v.view);
  args.text_lengths = TensorView::contiguous(d_len.get(), DType::i32, {B}, Device::cuda);
  const TensorView lse_v = TensorView::contiguous(lse.get(), DType::f32, {B, S, H}, Device::cuda);
  const TensorView lse_full_v =
      TensorView::contiguous(lse_full.get(), DType::f32, {B, S, H}, Device::cuda);
  DeviceMask mask(dense, B, H, NB, NB), comp_mask(comp, B, H, NB, NB);

  // Epilogue inputs: R, C per (b, h, video block); rho and Delta per caller row.
  const std::vector<float> R = random_floats(B * H * NV, 0.5, 1.5, 21);
  const std::vector<float> C = random_floats(B * H * NV * D, -0.5, 0.5, 22);
  const std::vector<float> rho = random_floats(rows, 0.3, 1.0, 23);
  test::HostTensor delta_h = test::random_tensor(c.dtype, B, S, H, D, 24, 0.3);
  DeviceArray<float> d_R(R), d_C(C), d_rho(rho), rho_out(std::vector<float>(rows, NAN));
  DeviceTensor delta(delta_h);
  test::HostTensor delta_out_h = test::make_tensor(c.dtype, B, S, H, D);
  delta_out_h.poison();
  DeviceTensor delta_out(delta_out_h);
  const float drift = 0.08f;

  auto params = [&](const DeviceMask& m, const TensorView& l) {
    cuda_detail::FwdParams fp = cuda_detail::make_fwd_params(args, m.view, out.view, l);
    fp.video_perm = d_perm.get();
    fp.kv_ordered = c.kv_ordered;
    const int64_t rs[3] = {S * H, H, 1}, ds[3] = {S * H * D, H * D, D};
    for (int d = 0; d < 3; ++d) {
      fp.epi.rho_stride[d] = rs[d];
      fp.epi.delta_stride[d] = ds[d];
    }
    return fp;
  };
  const KernelFamily family = c.kv_ordered ? KernelFamily::automatic : KernelFamily::portable;
  cuda_detail::check_gpu_call(args, out.view, lse_v);
  cuda_detail::FwdParams fp = params(mask, lse_v);
  fp.epi.kind = c.kind == EpilogueKind::merge_reference ? EpilogueKind::none : c.kind;
  fp.epi.R = d_R.get();
  fp.epi.C = d_C.get();
  fp.epi.rho = d_rho.get();
  fp.epi.delta = delta.view.data;
  fp.epi.drift = drift;
  fp.epi.clamp = true;
  cuda_detail::launch_fwd(fp, c.dtype, D, c.block, nullptr, family);
  if (c.kind == EpilogueKind::merge_reference) {
    cuda_detail::FwdParams mp = params(comp_mask, lse_full_v);
    mp.epi.kind = EpilogueKind::merge_reference;
    mp.epi.prev_out = out.view.data;  // in place, as the pipeline runs it
    for (int d = 0; d < 3; ++d) mp.epi.prev_stride[d] = out.view.stride[d];
    mp.epi.prev_lse = lse.get();
    mp.epi.rho_out = rho_out.get();
    mp.epi.delta_out = delta_out.view.data;
    cuda_detail::launch_fwd(mp, c.dtype, D, c.block, nullptr, family);
  }
  cuda_ok(cudaDeviceSynchronize(), "launch");
  out.to_host(out_h);
  delta_out.to_host(delta_out_h);
  EXPECT_EQ(check_writes(out_h).unwritten, 0);

  // Expected values in the caller's order.
  const bool merge = c.kind == EpilogueKind::merge_reference;
  std::vector<double> want_o(rows * D), want_lse(rows), want_rho(rows), want_delta(rows * D);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = 0; n < S; ++n)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t on = ord_row(n), i = (b * S + n) * H + h, oi = (b * S + on) * H + h;
        int64_t text = -1;
        const int64_t blk = test::token_block(L, on, &text);
        const bool pad = text >= p.text_len[b];
        want_lse[i] = merge ? full.lse[oi] : spa.lse[oi];
        double a = 1.0;
        if (c.kind == EpilogueKind::block_affine && text < 0) a = R[(b * H + h) * NV + blk];
        if (c.kind == EpilogueKind::row_affine && !pad) a = std::min(rho[i] + drift, 1.0f);
        double r = 0;
        if (merge && !std::isinf(full.lse[oi])) r = std::exp(spa.lse[oi] - full.lse[oi]);
        want_rho[i] = r;
        for (int64_t e = 0; e < D; ++e) {
          double o = a * spa.out[oi * D + e];
          if (c.kind == EpilogueKind::block_affine && text < 0)
            o += C[((b * H + h) * NV + blk) * D + e];
          if (c.kind == EpilogueKind::row_affine && !pad) o += delta_h.get(b, n, h, e);
          if (merge) {
            o = full.out[oi * D + e];
            want_delta[i * D + e] = o - r * spa.out[oi * D + e];
          }
          want_o[i * D + e] = o;
        }
      }
  auto rel_l2 = [&](const test::HostTensor& t, const std::vector<double>& want) {
    double err = 0, norm = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t n = 0; n < S; ++n)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t e = 0; e < D; ++e) {
            const double x = t.get(b, n, h, e), w = want[((b * S + n) * H + h) * D + e];
            if (std::isnan(x)) return static_cast<double>(INFINITY);
            err += (x - w) * (x - w);
            norm += w * w;
          }
    return std::sqrt(err / std::max(norm, 1e-30));
  };
  EXPECT_LE(rel_l2(out_h, want_o), 1e-2);
  EXPECT_LE(max_lse_err(merge ? lse_full.download() : lse.download(), want_lse), 1e-2);
  if (merge) {
    const std::vector<float> got_rho = rho_out.download();
    double err = 0;
    for (size_t i = 0; i < rows; ++i) err = std::max(err, std::abs(got_rho[i] - want_rho[i]));
    EXPECT_LE(err, 1e-3);
    EXPECT_LE(rel_l2(delta_out_h, want_delta), 2e-2);
    EXPECT_EQ(check_writes(delta_out_h).unwritten, 0);
  }
}

std::vector<EpiCase> cases() {
  const std::pair<EpilogueKind, const char*> kinds[] = {
      {EpilogueKind::none, "none"},
      {EpilogueKind::block_affine, "block_affine"},
      {EpilogueKind::row_affine, "row_affine"},
      {EpilogueKind::merge_reference, "merge_reference"}};
  std::vector<EpiCase> out;
  for (const auto& [kind, name] : kinds) {
    EpiCase c;
    c.kind = kind;
    c.name = std::string(name) + "_d128_b128_bf16";
    c.small = true;
    out.push_back(c);
    c.name = std::string(name) + "_d64_b64_f16_text_prefix";
    c.small = false;
    c.dim = 64;
    c.block = 64;
    c.dtype = DType::f16;
    c.placement = TextPlacement::prefix;
    out.push_back(c);
    c.name = std::string(name) + "_d128_b64_bf16";
    c.dim = 128;
    c.dtype = DType::bf16;
    c.placement = TextPlacement::suffix;
    out.push_back(c);
    c.name = std::string(name) + "_d64_b128_bf16";
    c.dim = 64;
    c.block = 128;
    out.push_back(c);
    c.name = std::string(name) + "_d128_b128_bf16_many_blocks";
    c.dim = 128;
    c.heads = 28;
    c.small = kind == EpilogueKind::block_affine;
    out.push_back(c);
  }
  const size_t n = out.size();
  for (size_t i = 0; i < n; ++i) {
    EpiCase c = out[i];
    c.name += "_kv_ordered";
    c.kv_ordered = true;
    out.push_back(c);
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Kinds, Epilogue, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace spaattn::gpu_test
