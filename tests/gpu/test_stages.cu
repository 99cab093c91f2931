// The GPU stages outside the attention kernel (src/cuda/plan/stages.cuh) against the CPU stages on the
// same rounded inputs: pooling through the token permutation, IPAR scores and GAPR decisions, the
// selection as CSR lists, and the rectification terms. Every stage is checked on its own (given
// the CPU's inputs) and the chain end to end; awkward shapes: partial last blocks, S < B, text
// with L_t < N_t, L_t = 0 and N_t = 0, both head dims and block sizes, gilbert order on and off,
// batch 2, ties in P, p = 0 and 1, and a few thousand video blocks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <optional>
#include <random>

#include "cuda/plan/gather.cuh"
#include "cuda/plan/quant.cuh"
#include "cuda/plan/stages.cuh"
#include "gpu_testing.hpp"
#include "spaattn/stages.hpp"

namespace spaattn::gpu_test {
namespace {

namespace st = cuda::stages;

template <class T>
std::vector<T> fetch(const T* device, size_t n) {
  std::vector<T> host(n);
  if (n) cuda_ok(cudaMemcpy(host.data(), device, n * sizeof(T), cudaMemcpyDeviceToHost), "fetch");
  return host;
}
template <class T>
void put(T* device, const std::vector<T>& host) {
  if (!host.empty())
    cuda_ok(cudaMemcpy(device, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
            "put");
}

double rel_err(const std::vector<float>& x, const std::vector<float>& ref) {
  EXPECT_EQ(x.size(), ref.size());
  double num = 0, den = 0;
  for (size_t n = 0; n < ref.size(); ++n) {
    const double d = static_cast<double>(x[n]) - ref[n];
    num += d * d;
    den += static_cast<double>(ref[n]) * ref[n];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

// A dense [rows, NV] byte matrix as [rows, W] bitmask words, and back.
std::vector<uint32_t> to_bits(const std::vector<uint8_t>& dense, int64_t rows, int nv) {
  const int words = (nv + 31) / 32;
  std::vector<uint32_t> bits(static_cast<size_t>(rows * words), 0);
  for (int64_t r = 0; r < rows; ++r)
    for (int j = 0; j < nv; ++j)
      if (dense[r * nv + j]) bits[r * words + j / 32] |= 1u << (j % 32);
  return bits;
}
std::vector<uint8_t> from_bits(const std::vector<uint32_t>& bits, int64_t rows, int nv) {
  const int words = (nv + 31) / 32;
  std::vector<uint8_t> dense(static_cast<size_t>(rows * nv));
  for (int64_t r = 0; r < rows; ++r)
    for (int j = 0; j < nv; ++j) dense[r * nv + j] = (bits[r * words + j / 32] >> (j % 32)) & 1u;
  return dense;
}

// A workspace for every stage, NaN-poisoned so that unwritten outputs fail the comparisons.
struct Workspace {
  st::Dims dims;
  DeviceBuffer mem;
  st::Buffers buf;
  explicit Workspace(const st::Dims& d) : dims(d), mem(st::workspace_size(d)) {
    buf = st::carve_workspace(dims, mem.get());
    cuda_ok(cudaMemset(mem.get(), 0xff, mem.bytes()), "poison");
  }
  size_t pooled_size() const { return static_cast<size_t>(dims.video_rows() * dims.dim); }
  size_t score_size() const { return static_cast<size_t>(dims.video_rows() * (dims.nv + 1)); }
  size_t bits_size() const { return static_cast<size_t>(dims.video_rows() * dims.words); }
  BlockMask mask() const {
    BlockMask m;
    m.batch = dims.batch;
    m.heads = dims.heads;
    m.num_q_blocks = m.num_k_blocks = dims.nb;
    m.row_offsets = fetch(buf.row_offsets, static_cast<size_t>(dims.mask_rows() + 1));
    m.col_indices = fetch(buf.col_indices, static_cast<size_t>(m.row_offsets.back()));
    return m;
  }
};

// Equality of two arrays, reported as the number of differing entries and the first of them
// (gtest would print both arrays whole).
template <class T>
::testing::AssertionResult same(const std::vector<T>& got, const std::vector<T>& want) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << "size " << got.size() << ", expected " << want.size();
  int64_t diff = 0, first = -1;
  for (size_t n = 0; n < got.size(); ++n)
    if (got[n] != want[n] && diff++ == 0) first = static_cast<int64_t>(n);
  if (diff == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << diff << " of " << got.size() << " entries differ, first at " << first << ": "
         << +got[first] << " vs " << +want[first];
}

// Rows (b, h, i) of two crit matrices that differ.
int64_t differing_rows(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b, int nv) {
  int64_t rows = 0;
  for (size_t r = 0; r * nv < a.size(); ++r)
    rows += !std::equal(a.begin() + r * nv, a.begin() + (r + 1) * nv, b.begin() + r * nv);
  return rows;
}

struct StageCase {
  const char* name;
  DType dtype = DType::bf16;
  int64_t batch = 1, heads = 2, dim = 128;
  Layout layout;
  std::vector<int32_t> text_len;  // empty: all N_t valid
  Grid grid;                      // empty: raster order, no neighbours
  double qk_scale = 1.0;
  double sparsity = 0.9, p = 0.3;
  int64_t first_frame = 0;
  bool small = true;
  uint64_t seed = 1;
};

Layout layout(int64_t nv, int64_t nt, int block, TextPlacement place = TextPlacement::suffix) {
  return Layout{.num_video = nv, .num_text = nt, .text_placement = place, .block_size = block};
}

std::vector<StageCase> stage_cases() {
  const auto hf = DType::f16;
  std::vector<StageCase> v;
  v.push_back({.name = "raster_bf16_d128_B64_text",
               .batch = 2,
               .heads = 3,
               .layout = layout(1000, 77, 64),
               .text_len = {77, 30},
               .seed = 2});
  v.push_back({.name = "gilbert_f16_d64_B128_prefix",
               .dtype = hf,
               .batch = 2,
               .dim = 64,
               .layout = layout(2000, 13, 128, TextPlacement::prefix),
               .text_len = {0, 13},
               .grid = {5, 20, 20},
               .seed = 3});
  v.push_back({.name = "gilbert_bf16_d128_B128_no_text",
               .heads = 2,
               .layout = layout(3000, 0, 128),
               .grid = {6, 20, 25},
               .sparsity = 0.75,
               .seed = 4});
  v.push_back({.name = "S_lt_B_f16_d64",
               .dtype = hf,
               .dim = 64,
               .layout = layout(50, 20, 128),
               .text_len = {5},
               .seed = 5});
  v.push_back({.name = "gilbert_bf16_d64_B64_first_frame",
               .dim = 64,
               .layout = layout(8190, 100, 64),
               .text_len = {64},
               .grid = {6, 35, 39},
               .first_frame = 10,
               .seed = 6});
  v.push_back({.name = "peaked_bf16_d128_B64",
               .batch = 2,
               .layout = layout(4000, 200, 64),
               .qk_scale = 8.0,
               .p = 0.5,
               .seed = 7});
  v.push_back({.name = "wan_like_bf16_d128_B128",
               .heads = 4,
               .layout = layout(30720, 0, 128),
               .grid = {8, 48, 80},
               .small = false,
               .seed = 8});
  v.push_back({.name = "hunyuan_like_f16_d128_B128",
               .dtype = hf,
               .batch = 2,
               .heads = 2,
               .layout = layout(24576, 256, 128),
               .text_len = {256, 100},
               .grid = {6, 64, 64},
               .sparsity = 0.8,
               .small = false,
               .seed = 9});
  return v;
}

// The case's seeded q, k, v and text lengths.
void make_inputs(const StageCase& c, test::Problem& prob) {
  test::make_problem(prob, c.dtype, c.batch, c.heads, c.dim, c.layout, c.seed, c.text_len,
                     test::Strides::bshd, c.qk_scale);
}
// The gilbert order of the case's grid (with no grid: raster, which the tests do not apply).
TokenOrder token_order(const StageCase& c) {
  TokenOrder order;
  if (!c.grid.empty()) {
    order.kind = OrderKind::gilbert;
    order.grid = c.grid;
  }
  return order;
}

// A case's inputs on the device, with its token permutation (perm_d: nullptr without a grid).
struct DeviceCase {
  test::Problem prob;
  std::vector<int32_t> perm;
  std::optional<DeviceProblem> dp;
  std::optional<DeviceBuffer> dperm;
  const int32_t* perm_d = nullptr;
  explicit DeviceCase(const StageCase& c) {
    make_inputs(c, prob);
    if (!c.grid.empty()) perm = token_permutation(token_order(c));
    dp.emplace(prob);
    dperm.emplace(perm.size() * 4);
    put(static_cast<int32_t*>(dperm->get()), perm);
    if (!perm.empty()) perm_d = static_cast<const int32_t*>(dperm->get());
  }
};

class StagesChain : public ::testing::TestWithParam<StageCase> {};

TEST_P(StagesChain, MatchCpuStages) {
  const StageCase& c = GetParam();
  if (small_mode() && !c.small) GTEST_SKIP() << "large case";
  const Layout& L = c.layout;
  test::Problem prob;
  make_inputs(c, prob);

  // The token order and, with a grid, the neighbour map; the CPU stages see gathered tensors.
  const TokenOrder order = token_order(c);
  std::vector<int32_t> perm;
  std::vector<std::vector<int32_t>> nbrs;
  if (!c.grid.empty()) {
    perm = token_permutation(order);
    nbrs = block_neighbours(order, L.block_size);
  }
  auto gathered = [&](const test::HostTensor& src) {
    test::HostTensor dst = src;
    dst.view.data = dst.storage.data();
    if (!perm.empty()) permute_tokens(src.view, dst.view, perm, L.video_offset(), false);
    return dst;
  };
  const test::HostTensor oq = gathered(prob.q), ok = gathered(prob.k), ov = gathered(prob.v);
  const AttentionArgs cpu_args = test::with_qkv(prob.args, oq.view, ok.view, ov.view);
  Config cfg;
  cfg.method = Method::rectified;
  cfg.block_size = L.block_size;
  cfg.select.selector = Selector::ipar;
  cfg.select.sparsity = c.sparsity;
  cfg.select.p = c.p;
  cfg.select.neighbours = !nbrs.empty();
  cfg.select.first_frame_blocks = c.first_frame;
  const auto* cpu_nbrs = nbrs.empty() ? nullptr : &nbrs;
  const Pooled pooled = cpu::pool(cpu_args);
  const BlockScores scores = cpu::implicit_full_attention(cpu_args, pooled);
  const Selection sel = cpu::select_blocks(cpu_args, cfg, &scores, cpu_nbrs);
  const std::vector<uint8_t> comp = cpu::compensable(pooled);

  // Device inputs: the raster-order tensors, the permutation, the map, L_t.
  DeviceTensor dq(prob.q), dk(prob.k), dv(prob.v);
  DeviceBuffer dperm(perm.size() * 4), dtext(c.text_len.size() * 4);
  put(static_cast<int32_t*>(dperm.get()), perm);
  put(static_cast<int32_t*>(dtext.get()), c.text_len);
  const auto [nbr_off, nbr_cols] = st::flatten_neighbours(nbrs);
  DeviceBuffer doff(nbr_off.size() * 4), dcols(nbr_cols.size() * 4);
  put(static_cast<int32_t*>(doff.get()), nbr_off);
  put(static_cast<int32_t*>(dcols.get()), nbr_cols);
  const st::NeighbourMap map{nbrs.empty() ? nullptr : static_cast<const int32_t*>(doff.get()),
                             static_cast<const int32_t*>(dcols.get())};
  AttentionArgs gpu_args = test::with_qkv(prob.args, dq.view, dk.view, dv.view);
  if (!c.text_len.empty())
    gpu_args.text_lengths =
        TensorView::contiguous(dtext.get(), DType::i32, {c.batch}, Device::cuda);

  const st::Dims dims = st::make_dims(L, c.batch, c.heads, c.dim);
  const int nv = dims.nv;
  const int64_t rows = dims.video_rows();
  cudaStream_t stream;
  cuda_ok(cudaStreamCreate(&stream), "stream");

  // 1. The chain end to end.
  Workspace ws(dims);
  const auto* perm_ptr = perm.empty() ? nullptr : static_cast<const int32_t*>(dperm.get());
  st::launch_pool(st::make_pool_params(gpu_args, perm_ptr, ws.buf), stream);
  st::launch_scores(st::make_score_params(gpu_args, cfg.gapr, ws.buf), stream);
  st::launch_select(st::make_select_params(dims, cfg, map, ws.buf), stream);
  st::launch_rectify(st::make_rectify_params(dims, cfg.gapr, ws.buf), stream);
  cuda_ok(cudaStreamSynchronize(stream), "chain");
  const size_t np = ws.pooled_size();
  EXPECT_LE(rel_err(fetch(ws.buf.q_mean, np), pooled.q), 1e-5) << "q_mean";
  EXPECT_LE(rel_err(fetch(ws.buf.k_mean, np), pooled.k), 1e-5) << "k_mean";
  EXPECT_LE(rel_err(fetch(ws.buf.v_mean, np), pooled.v), 1e-5) << "v_mean";
  EXPECT_LE(rel_err(fetch(ws.buf.q_dev, np), pooled.dq), 1e-5) << "q_dev";
  EXPECT_LE(rel_err(fetch(ws.buf.k_dev, np), pooled.dk), 1e-5) << "k_dev";
  const double p_err = rel_err(fetch(ws.buf.P, ws.score_size()), scores.P);
  EXPECT_LE(p_err, 1e-4) << "P";
  const std::vector<uint8_t> chain_crit =
      from_bits(fetch(ws.buf.critical, ws.bits_size()), rows, nv);
  const int64_t chain_diff = differing_rows(chain_crit, sel.critical, nv);
  EXPECT_LE(chain_diff, rows / 100) << "selection rows that differ end to end";
  const BlockMask chain_mask = ws.mask();
  int64_t chain_row_diff = 0;  // CSR rows (all blocks, text rows too) that differ
  for (int64_t r = 0; r < chain_mask.rows(); ++r) {
    const auto a = chain_mask.col_indices.begin() + chain_mask.row_offsets[r];
    const auto b = sel.mask.col_indices.begin() + sel.mask.row_offsets[r];
    const int64_t na = chain_mask.row_offsets[r + 1] - chain_mask.row_offsets[r];
    const int64_t nb = sel.mask.row_offsets[r + 1] - sel.mask.row_offsets[r];
    chain_row_diff += na != nb || !std::equal(a, a + na, b);
  }
  EXPECT_EQ(chain_row_diff, chain_diff);
  const Correction chain_ref = cpu::rectification(pooled, scores, sel, cfg.gapr);
  const double chain_r = rel_err(fetch(ws.buf.R, static_cast<size_t>(rows)), chain_ref.a);
  const double chain_c = rel_err(fetch(ws.buf.C, np), chain_ref.c);

  // 2. Scores and GAPR decisions from the CPU's pooled arrays.
  Workspace ws2(dims);
  put(ws2.buf.q_mean, pooled.q);
  put(ws2.buf.k_mean, pooled.k);
  put(ws2.buf.q_dev, pooled.dq);
  put(ws2.buf.k_dev, pooled.dk);
  st::launch_scores(st::make_score_params(gpu_args, true, ws2.buf), stream);
  cuda_ok(cudaStreamSynchronize(stream), "scores");
  EXPECT_LE(rel_err(fetch(ws2.buf.P, ws2.score_size()), scores.P), 1e-5) << "P from CPU pooled";
  const std::vector<uint8_t> gpu_comp =
      from_bits(fetch(ws2.buf.compensable, ws2.bits_size()), rows, nv);
  int64_t comp_diff = 0, comp_far = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int j = 0; j < nv; ++j) {
      if (gpu_comp[r * nv + j] == comp[r * nv + j]) continue;
      ++comp_diff;
      // A disagreement must be a near tie: G and E equal to within fp32 rounding of the dots.
      const int64_t bh = r / nv, i = r % nv, d = c.dim;
      const float* q = pooled.q.data() + (bh * nv + i) * d;
      const float* dq_ = pooled.dq.data() + (bh * nv + i) * d;
      const float* k = pooled.k.data() + (bh * nv + j) * d;
      const float* dk_ = pooled.dk.data() + (bh * nv + j) * d;
      double g = 0, e1 = 0, e2 = 0, scale = 0;
      for (int64_t e = 0; e < d; ++e) {
        g += double(q[e]) * k[e];
        e1 += double(dq_[e]) * k[e];
        e2 += double(q[e]) * dk_[e];
        scale += std::fabs(double(q[e]) * k[e]) + std::fabs(double(dq_[e]) * k[e]) +
                 std::fabs(double(q[e]) * dk_[e]);
      }
      comp_far += std::fabs(std::fabs(g) - std::fabs(e1) - std::fabs(e2)) > 1e-5 * scale;
    }
  EXPECT_EQ(comp_far, 0) << "GAPR decisions that differ beyond rounding";

  // 3. The selection from the CPU's P: exactly cpu::select_blocks.
  Workspace ws3(dims);
  put(ws3.buf.P, scores.P);
  st::launch_select(st::make_select_params(dims, cfg, map, ws3.buf), stream);
  cuda_ok(cudaStreamSynchronize(stream), "select");
  const BlockMask mask = ws3.mask();
  EXPECT_TRUE(same(mask.row_offsets, sel.mask.row_offsets)) << "row offsets";
  EXPECT_TRUE(same(mask.col_indices, sel.mask.col_indices)) << "column indices";
  EXPECT_TRUE(same(from_bits(fetch(ws3.buf.critical, ws3.bits_size()), rows, nv), sel.critical))
      << "critical";

  // 4. R and C from the CPU's P, selection, decisions and v̄, with and without GAPR.
  double rc_err[2][2] = {};
  for (const bool gapr : {true, false}) {
    Workspace ws4(dims);
    put(ws4.buf.P, scores.P);
    put(ws4.buf.v_mean, pooled.v);
    put(ws4.buf.critical, to_bits(sel.critical, rows, nv));
    put(ws4.buf.compensable, to_bits(comp, rows, nv));
    st::launch_rectify(st::make_rectify_params(dims, gapr, ws4.buf), stream);
    cuda_ok(cudaStreamSynchronize(stream), "rectify");
    const Correction ref = cpu::rectification(pooled, scores, sel, gapr);
    rc_err[gapr][0] = rel_err(fetch(ws4.buf.R, static_cast<size_t>(rows)), ref.a);
    rc_err[gapr][1] = rel_err(fetch(ws4.buf.C, np), ref.c);
    EXPECT_LE(rc_err[gapr][0], 1e-4) << "R, gapr " << gapr;
    EXPECT_LE(rc_err[gapr][1], 1e-4) << "C, gapr " << gapr;
  }
  cuda_ok(cudaStreamDestroy(stream), "stream");
  std::printf(
      "[ stages ] %s: NV %d, P rel err %.2e, chain selection rows differing %lld of %lld, "
      "GAPR near-tie flips %lld of %lld, R/C rel err (CPU inputs) %.1e/%.1e, "
      "R/C rel err (chain) %.1e/%.1e\n",
      c.name, nv, p_err, static_cast<long long>(chain_diff), static_cast<long long>(rows),
      static_cast<long long>(comp_diff), static_cast<long long>(rows * nv), rc_err[1][0],
      rc_err[1][1], chain_r, chain_c);
}

INSTANTIATE_TEST_SUITE_P(Stages, StagesChain, ::testing::ValuesIn(stage_cases()),
                         [](const auto& info) { return std::string(info.param.name); });

// Selection alone, on made-up P rows: ties (values from a small set, equal rows, the text column
// tied with video blocks), p = 0 and p = 1, k = 0, many blocks; the band and local selectors;
// and the CSR lists rebuilt from the stored crit bits (as is, complement, full).
struct SelectCase {
  const char* name;
  int64_t nv_blocks, nt;
  int block = 64;
  Selector selector = Selector::ipar;
  double sparsity = 0.9, p = 0.3;
  int levels = 0;  // > 0: P drawn from `levels` distinct values (ties), else continuous
  bool neighbours = false;
  int64_t first_frame = 0;
  bool small = true;
};

std::vector<SelectCase> select_cases() {
  return {
      {.name = "ties_few_levels", .nv_blocks = 37, .nt = 70, .levels = 3},
      {.name = "ties_two_levels_p0", .nv_blocks = 300, .nt = 64, .p = 0.0, .levels = 2},
      {.name = "all_equal_p1", .nv_blocks = 50, .nt = 10, .p = 1.0, .levels = 1},
      {.name = "diffuse_p09", .nv_blocks = 600, .nt = 0, .block = 128, .p = 0.9},
      {.name = "k0_sparse", .nv_blocks = 9, .nt = 5, .sparsity = 0.95, .p = 0.1},
      {.name = "dense_k", .nv_blocks = 40, .nt = 0, .sparsity = 0.0, .p = 0.3, .levels = 4},
      {.name = "many_blocks", .nv_blocks = 3000, .nt = 256, .p = 0.3, .small = false},
      {.name = "many_blocks_ties",
       .nv_blocks = 2500,
       .nt = 0,
       .p = 0.3,
       .levels = 5,
       .small = false},
      {.name = "band_neighbours_first",
       .nv_blocks = 100,
       .nt = 70,
       .selector = Selector::band,
       .sparsity = 0.9,
       .neighbours = true,
       .first_frame = 7},
      {.name = "band_no_text",
       .nv_blocks = 33,
       .nt = 0,
       .block = 128,
       .selector = Selector::band,
       .sparsity = 0.8},
      {.name = "local", .nv_blocks = 64, .nt = 1, .selector = Selector::local},
      {.name = "ipar_neighbours_first",
       .nv_blocks = 120,
       .nt = 3,
       .levels = 6,
       .neighbours = true,
       .first_frame = 12},
      {.name = "text_only", .nv_blocks = 0, .nt = 300, .selector = Selector::band},
  };
}

class StagesSelect : public ::testing::TestWithParam<SelectCase> {};

TEST_P(StagesSelect, MatchesCpuExactly) {
  const SelectCase& c = GetParam();
  if (small_mode() && !c.small) GTEST_SKIP() << "large case";
  const int64_t batch = 2, heads = 2, dim = 64;
  const Layout L = layout(c.nv_blocks * c.block, c.nt, c.block);
  // q, k, v do not matter to the selection: zero-stride views of one row.
  std::vector<float> row(dim, 1.f);
  AttentionArgs args;
  args.q = TensorView::contiguous(row.data(), DType::f32, {batch, L.seq_len(), heads, dim});
  args.q.stride = {0, 0, 0, 1};
  args.k = args.v = args.q;
  args.layout = L;
  const st::Dims dims = st::make_dims(L, batch, heads, dim);
  const int nv = dims.nv;
  const int64_t rows = dims.video_rows();

  BlockScores scores;
  scores.batch = batch;
  scores.heads = heads;
  scores.blocks = nv;
  scores.P.resize(static_cast<size_t>(rows * (nv + 1)));
  std::mt19937_64 rng(static_cast<uint64_t>(c.nv_blocks * 131 + c.nt));
  std::normal_distribution<double> normal;
  for (int64_t r = 0; r < rows; ++r) {
    float* P = scores.P.data() + r * (nv + 1);
    double total = 0;
    for (int j = 0; j <= nv; ++j) {
      const double x =
          c.levels > 0 ? 1.0 + static_cast<double>(rng() % c.levels) : std::exp(2.0 * normal(rng));
      P[j] = static_cast<float>(x);
      total += x;
    }
    for (int j = 0; j <= nv; ++j) P[j] = static_cast<float>(P[j] / total);
  }
  // A square-ish grid for the neighbour map: nv_blocks * block tokens.
  std::vector<std::vector<int32_t>> nbrs;
  Config cfg;
  if (c.neighbours || c.selector == Selector::local) {
    cfg.order.kind = OrderKind::gilbert;
    cfg.order.grid = {c.nv_blocks, 8, c.block / 8};
    nbrs = block_neighbours(cfg.order, c.block);
  }
  cfg.block_size = c.block;
  cfg.select.selector = c.selector;
  cfg.select.sparsity = c.sparsity;
  cfg.select.p = c.p;
  cfg.select.neighbours = c.neighbours;
  cfg.select.first_frame_blocks = c.first_frame;
  const Selection sel = cpu::select_blocks(args, cfg, &scores, nbrs.empty() ? nullptr : &nbrs);

  const auto [nbr_off, nbr_cols] = st::flatten_neighbours(nbrs);
  DeviceBuffer doff(nbr_off.size() * 4), dcols(nbr_cols.size() * 4);
  put(static_cast<int32_t*>(doff.get()), nbr_off);
  put(static_cast<int32_t*>(dcols.get()), nbr_cols);
  const st::NeighbourMap map{nbrs.empty() ? nullptr : static_cast<const int32_t*>(doff.get()),
                             static_cast<const int32_t*>(dcols.get())};
  Workspace ws(dims);
  put(ws.buf.P, scores.P);
  st::launch_select(st::make_select_params(dims, cfg, map, ws.buf), nullptr);
  cuda_ok(cudaDeviceSynchronize(), "select");
  const BlockMask mask = ws.mask();
  EXPECT_TRUE(same(mask.row_offsets, sel.mask.row_offsets)) << "row offsets";
  EXPECT_TRUE(same(mask.col_indices, sel.mask.col_indices)) << "column indices";
  if (nv > 0)
    EXPECT_TRUE(same(from_bits(fetch(ws.buf.critical, ws.bits_size()), rows, nv), sel.critical))
        << "critical";

  // The same lists again from the stored crit bits, their complement, and the full mask.
  const int nb = dims.nb;
  std::vector<uint8_t> complement(static_cast<size_t>(batch * heads * nb * nb), 0);
  for (int64_t bh = 0; bh < batch * heads; ++bh)
    for (int i = 0; i < nv; ++i)
      for (int j = 0; j < nv; ++j)
        complement[(bh * nb + i) * nb + j] = !sel.critical[(bh * nv + i) * nv + j];
  const BlockMask want_complement = BlockMask::from_dense(complement.data(), batch, heads, nb, nb);
  const BlockMask want_full = BlockMask::full(batch, heads, nb, nb);
  Workspace again(dims);
  const uint32_t* crit = nv > 0 ? ws.buf.critical : nullptr;
  for (const int variant : {0, 1, 2}) {
    st::launch_csr_from_critical(dims, variant == 2 ? nullptr : crit, variant == 1, again.buf,
                                 nullptr);
    cuda_ok(cudaDeviceSynchronize(), "csr_from_critical");
    const BlockMask got = again.mask();
    const BlockMask& want = variant == 0 ? sel.mask : variant == 1 ? want_complement : want_full;
    EXPECT_TRUE(same(got.row_offsets, want.row_offsets)) << "csr_from_critical " << variant;
    EXPECT_TRUE(same(got.col_indices, want.col_indices)) << "csr_from_critical " << variant;
  }
}

INSTANTIATE_TEST_SUITE_P(Stages, StagesSelect, ::testing::ValuesIn(select_cases()),
                         [](const auto& info) { return std::string(info.param.name); });

// FP8 statistics written by pooling: its per-video-block partials plus the statistics pass over
// the text rows give the operands of the pass over the whole sequence. V's maxima and scales and
// the rounded Q and V are the same bit for bit; K's sums are added up in another order, so they,
// q . mean(K) and K's scales agree to float rounding and K's int8 values by one step at most.
// Every entry is compared, on workspaces poisoned with NaN bytes. Block size 128 only (FP8).
class StagesFp8 : public ::testing::TestWithParam<StageCase> {};

TEST_P(StagesFp8, PooledStatisticsGiveTheSameOperands) {
  const StageCase& c = GetParam();
  if (small_mode() && !c.small) GTEST_SKIP() << "large case";
  const Layout& L = c.layout;
  const DeviceCase dc(c);
  const DeviceProblem& dp = *dc.dp;
  const int32_t* perm_d = dc.perm_d;

  const st::Fp8Layout fl = st::fp8_layout(dp.args);
  DeviceBuffer whole(fl.total), fused(fl.total);
  cuda_ok(cudaMemset(whole.get(), 0xff, fl.total), "poison");
  cuda_ok(cudaMemset(fused.get(), 0xff, fl.total), "poison");
  st::launch_quantize_fp8(dp.args, fl, perm_d, whole.get(), nullptr);
  Workspace ws(st::make_dims(L, c.batch, c.heads, c.dim));
  st::PoolParams pool = st::make_pool_params(dp.args, perm_d, ws.buf);
  const st::Fp8PoolStats partials = st::fp8_pool_stats(dp.args, fl, fused.get());
  pool.fp8_part = partials.part;
  pool.fp8_chunks = partials.chunks;
  st::launch_pool(pool, nullptr);
  st::launch_quantize_fp8(dp.args, fl, perm_d, fused.get(), nullptr, /*video_pooled=*/true);
  cuda_ok(cudaDeviceSynchronize(), "quantise");

  auto array = [](const DeviceBuffer& m, size_t offset, size_t n, auto tag) {
    using T = decltype(tag);
    return fetch(reinterpret_cast<const T*>(static_cast<const char*>(m.get()) + offset), n);
  };
  const size_t bh = static_cast<size_t>(c.batch * c.heads), nb = L.num_blocks(), D = c.dim;
  const size_t tiles = bh * nb * 128 * D;
  for (auto [offset, what] : {std::pair{fl.q8, "q8"}, std::pair{fl.vt8, "vt8"}})
    EXPECT_TRUE(same(array(fused, offset, tiles, uint8_t{}), array(whole, offset, tiles, uint8_t{})))
        << what;
  for (auto [offset, n, what] : {std::tuple{fl.v_amax, bh * D, "v_amax"},
                                 std::tuple{fl.v_scale, bh * D, "v_scale"},
                                 std::tuple{fl.q_scale, bh * nb, "q_scale"}})
    EXPECT_TRUE(same(array(fused, offset, n, float{}), array(whole, offset, n, float{}))) << what;

  // Float rounding of the sums: a few ulps of the largest partial sums, far below 1e-5 * count.
  auto close = [](const std::vector<float>& got, const std::vector<float>& want, double tol,
                  const char* what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    for (size_t n = 0; n < got.size(); ++n) {
      ASSERT_TRUE(std::isfinite(got[n]) && std::isfinite(want[n])) << what << " entry " << n;
      ASSERT_LE(std::fabs(got[n] - want[n]), tol * (1.0 + std::fabs(want[n])))
          << what << " entry " << n << ": " << got[n] << " vs " << want[n];
    }
  };
  close(array(fused, fl.k_sum, bh * D, float{}), array(whole, fl.k_sum, bh * D, float{}),
        1e-5 * static_cast<double>(L.seq_len()), "k_sum");
  close(array(fused, fl.q_shift, bh * nb * 128, float{}),
        array(whole, fl.q_shift, bh * nb * 128, float{}), 1e-4, "q_shift");
  close(array(fused, fl.k_scale, bh * nb, float{}), array(whole, fl.k_scale, bh * nb, float{}),
        1e-4, "k_scale");
  const std::vector<uint8_t> k_fused = array(fused, fl.k8, tiles, uint8_t{});
  const std::vector<uint8_t> k_whole = array(whole, fl.k8, tiles, uint8_t{});
  int64_t differ = 0;
  for (size_t n = 0; n < tiles; ++n) {
    const int a = static_cast<int8_t>(k_fused[n]), b = static_cast<int8_t>(k_whole[n]);
    ASSERT_LE(std::abs(a - b), 1) << "k8 entry " << n;
    differ += a != b;
  }
  EXPECT_LE(differ, static_cast<int64_t>(tiles / 100)) << "k8 entries one step apart";
  std::printf("[fp8 stats %s] k8 entries one step apart: %lld of %zu\n", c.name,
              static_cast<long long>(differ), tiles);
}

std::vector<StageCase> fp8_stage_cases() {
  std::vector<StageCase> v;
  for (const StageCase& c : stage_cases())
    if (c.layout.block_size == 128) v.push_back(c);
  return v;
}
INSTANTIATE_TEST_SUITE_P(Stages, StagesFp8, ::testing::ValuesIn(fp8_stage_cases()),
                         [](const ::testing::TestParamInfo<StageCase>& i) {
                           return std::string(i.param.name);
                         });

// The pipeline's gathered K, V (16-bit, after pooling): the pooling pass writes the video rows
// from the tiles it reads, the gather then copies only the text rows; the copies must equal the
// gather's own over the whole sequence bit for bit, also when a calibrated choice leaves some
// (b, h) unpooled (their K, V rows are still written, their pooled statistics are not). Copies
// poisoned with 0xff bytes first, so that a row nobody wrote fails.
class StagesGather : public ::testing::TestWithParam<StageCase> {};

TEST_P(StagesGather, PoolingWritesTheVideoRows) {
  const StageCase& c = GetParam();
  if (small_mode() && !c.small) GTEST_SKIP() << "large case";
  const DeviceCase dc(c);
  const DeviceProblem& dp = *dc.dp;
  const int32_t* perm_d = dc.perm_d;
  const size_t bytes = st::gathered_bytes(dp.args);
  const size_t count = bytes / 2;

  DeviceBuffer k_whole(bytes), v_whole(bytes);
  cuda_ok(cudaMemset(k_whole.get(), 0xff, bytes), "poison");
  cuda_ok(cudaMemset(v_whole.get(), 0xff, bytes), "poison");
  st::launch_gather_kv(st::make_gather_params(dp.args, perm_d, k_whole.get(), v_whole.get()),
                       nullptr);
  const std::vector<uint16_t> k_want = fetch(static_cast<const uint16_t*>(k_whole.get()), count);
  const std::vector<uint16_t> v_want = fetch(static_cast<const uint16_t*>(v_whole.get()), count);

  // Every (b, h) pooled; then a choice that pools only every other (b, h).
  const int64_t bh = c.batch * c.heads;
  std::vector<int32_t> choice(static_cast<size_t>(bh));
  for (int64_t n = 0; n < bh; ++n)
    choice[n] = static_cast<int32_t>(n % 2 ? Candidate::rettention : Candidate::merge);
  DeviceBuffer dchoice(choice.size() * 4);
  put(static_cast<int32_t*>(dchoice.get()), choice);
  for (const bool chosen : {false, true}) {
    SCOPED_TRACE(chosen ? "calibrated choice" : "every (b, h)");
    Workspace ws(st::make_dims(c.layout, c.batch, c.heads, c.dim));
    DeviceBuffer k_out(bytes), v_out(bytes);
    cuda_ok(cudaMemset(k_out.get(), 0xff, bytes), "poison");
    cuda_ok(cudaMemset(v_out.get(), 0xff, bytes), "poison");
    st::PoolParams pool = st::make_pool_params(dp.args, perm_d, ws.buf);
    pool.k_out = k_out.get();
    pool.v_out = v_out.get();
    if (chosen) pool.calibrated_choice = static_cast<const int32_t*>(dchoice.get());
    st::launch_pool(pool, nullptr);
    st::GatherParams gather = st::make_gather_params(dp.args, perm_d, k_out.get(), v_out.get());
    gather.text_only = true;
    st::launch_gather_kv(gather, nullptr);
    cuda_ok(cudaDeviceSynchronize(), "pool and gather");
    EXPECT_TRUE(same(fetch(static_cast<const uint16_t*>(k_out.get()), count), k_want)) << "k";
    EXPECT_TRUE(same(fetch(static_cast<const uint16_t*>(v_out.get()), count), v_want)) << "v";
  }
}

INSTANTIATE_TEST_SUITE_P(Stages, StagesGather, ::testing::ValuesIn(stage_cases()),
                         [](const ::testing::TestParamInfo<StageCase>& i) {
                           return std::string(i.param.name);
                         });

TEST(StagesErrors, NameTheArgument) {
  auto expect = [](auto&& fn, const std::string& arg) {
    try {
      fn();
      ADD_FAILURE() << "no error for " << arg;
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).rfind(arg + ":", 0), 0u) << e.what();
    }
  };
  expect([] { st::make_dims(layout(100, 0, 32), 1, 1, 64); }, "layout.block_size");
  expect([] { st::make_dims(layout(100, 0, 64), 1, 1, 96); }, "q");
  const st::Dims dims = st::make_dims(layout(640, 0, 64), 1, 1, 64);
  Config local;
  local.select.selector = Selector::local;
  local.order.kind = OrderKind::gilbert;
  local.order.grid = {10, 8, 8};
  expect([&] { st::make_select_params(dims, local, st::NeighbourMap{}, st::Buffers{}); },
         "neighbours");
  Config ipar;
  ipar.select.selector = Selector::ipar;
  expect([&] { st::make_select_params(dims, ipar, st::NeighbourMap{}, st::Buffers{}); }, "buffers");
  // The pooling pass's gathered copies: both or neither; refused before any launch (no device
  // memory is touched: the pointer is never dereferenced).
  st::PoolParams pool;
  pool.dims = dims;
  int dummy = 0;
  pool.k_out = &dummy;
  expect([&] { st::launch_pool(pool, nullptr); }, "pool");
}

}  // namespace
}  // namespace spaattn::gpu_test
