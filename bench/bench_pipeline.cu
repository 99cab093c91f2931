// spaattn_bench_pipeline: a whole Rectified SpaAttn call on the GPU, stage by stage, and
// Re-ttention's two kinds of steps, at S = 76,800 (gilbert order on a 20 x 60 x 64 latent grid),
// H = 40, d = 128, bf16, batch 1, B = 128, IPAR selection at sparsity 0.9 with p = 0.3 and the
// block neighbours. Every figure is a median of time_calls() (CUDA events, warm-up):
//   - the stages of one call on their own: pool (which also writes the video rows of K and V in
//     the token order), scores, select, rectify (R, C), the gather of K and V's text rows, the
//     kernel as the pipeline runs it (gathered K, V; Q and O permuted inside; block-affine
//     epilogue) and without the epilogue;
//   - the kernel alone (no permutation, no epilogue) on the same mask, the reference point, on
//     the caller's K, V and on the gathered ones; the same on a random mask of the same density
//     drawn as the kernel benchmark draws its masks (so that a difference between the two
//     benchmarks can be told apart: the mask, or everything else); and the kernel gathering K, V
//     itself through the permutation (the design gather.cuh replaces);
//   - SparseAttention::forward as a caller runs it (a fresh selection every call);
//   - Re-ttention (rectified_rettention: the same IPAR mask) reference and sparse steps;
//   - on a Hopper device, the same three with Config::precision fp8, and the FP8 quantisation
//     (quant.cuh) on its own.
// "Outside the kernel" is the whole call minus the kernel alone, as a share of PyTorch's cuDNN
// dense attention time for the same shape from --baseline (sdpa_baseline.py, same run).
// Usage: spaattn_bench_pipeline [--baseline sdpa.json] [--sparsity 0.9] [--neighbours 1|0]
//                               [--iters N]
// --neighbours 0 leaves the block neighbour map out of the selection: at sparsity 0.9 on random
// inputs the mask then keeps 30.0% of the blocks instead of 32.0% (measured; the cumulative-p
// rule keeps about 30% of a flat pooled attention, docs/choices.md).
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <queue>
#include <stdexcept>
#include <string>
#include <vector>

#include "baseline.hpp"
#include "cuda/attention/api.hpp"
#include "cuda/attention/sm90/tensor_map.hpp"
#include "cuda/plan/gather.cuh"
#include "cuda/plan/quant.cuh"
#include "cuda/plan/stages.cuh"
#include "inputs.hpp"
#include "spaattn/spaattn.hpp"
#include "timing.hpp"

namespace spaattn::bench {
namespace {

namespace st = cuda::stages;

struct Options {
  std::string baseline;
  double sparsity = 0.9;
  bool neighbours = true;
  int iters = 20;
};

// The mask's row lengths, and how evenly the kernel's static order (item i to CTA i mod G, one
// CTA per multiprocessor at B = 128; here item i is mask row i, as there is no text) spreads
// them: the most loaded CTA's entries over the mean, against handing each item in the same order
// to the least loaded CTA.
void print_row_balance(const std::vector<int32_t>& offsets, int ctas) {
  const size_t rows = offsets.size() - 1;
  std::vector<double> round_robin(static_cast<size_t>(ctas), 0.0);
  std::priority_queue<double, std::vector<double>, std::greater<>> least(round_robin.begin(),
                                                                         round_robin.end());
  double sum = 0, sq = 0;
  int lo = INT32_MAX, hi = 0;
  for (size_t r = 0; r < rows; ++r) {
    const int n = offsets[r + 1] - offsets[r];
    sum += n;
    sq += static_cast<double>(n) * n;
    lo = std::min(lo, n);
    hi = std::max(hi, n);
    round_robin[r % static_cast<size_t>(ctas)] += n;
    const double next = least.top() + n;
    least.pop();
    least.push(next);
  }
  double greedy = 0;
  for (; !least.empty(); least.pop()) greedy = least.top();
  const double mean_row = sum / static_cast<double>(rows), mean_cta = sum / ctas;
  const double sd = std::sqrt(std::max(0.0, sq / static_cast<double>(rows) - mean_row * mean_row));
  std::printf(
      "Mask rows: %zu, entries mean %.1f, sd %.1f, min %d, max %d. Most loaded of %d CTAs over "
      "the mean: %.4f in the kernel's order, %.4f with each item to the least loaded CTA.\n\n",
      rows, mean_row, sd, lo, hi, ctas,
      *std::max_element(round_robin.begin(), round_robin.end()) / mean_cta, greedy / mean_cta);
}

Options parse(int argc, char** argv) {
  Options o;
  parse_flags(argc, argv, [&](const std::string& a, const std::string& v) {
    if (a == "--baseline")
      o.baseline = v;
    else if (a == "--sparsity")
      o.sparsity = std::stod(v);
    else if (a == "--neighbours")
      o.neighbours = v != "0";
    else if (a == "--iters")
      o.iters = std::stoi(v);
    else
      return false;
    return true;
  });
  return o;
}


template <class T>
void upload(DeviceMem& dst, const std::vector<T>& src) {
  cuda_ok(cudaMemcpy(dst.p, src.data(), src.size() * sizeof(T), cudaMemcpyHostToDevice), "upload");
}

struct Line {
  std::string what;
  Timing t;
  bool outside;  // part of the time outside the kernel
};

void run(const Options& o, cudaStream_t stream) {
  const Grid grid{20, 60, 64};
  const int64_t H = 40, D = 128;
  const Layout L{.num_video = grid.size(), .num_text = 0, .block_size = 128};
  const int64_t S = L.seq_len(), n = S * H * D;
  // Q, K, V and O are 0.8 GB each, far beyond the 50 MB L2: no rotation of inputs is needed.
  DeviceMem q(n * 2), k(n * 2), v(n * 2), out(n * 2);
  fill_random(q.p, DType::bf16, n, 1);
  fill_random(k.p, DType::bf16, n, 2);
  fill_random(v.p, DType::bf16, n, 3);
  AttentionArgs args;
  args.q = TensorView::contiguous(q.p, DType::bf16, {1, S, H, D}, Device::cuda);
  args.k = TensorView::contiguous(k.p, DType::bf16, {1, S, H, D}, Device::cuda);
  args.v = TensorView::contiguous(v.p, DType::bf16, {1, S, H, D}, Device::cuda);
  args.layout = L;
  const TensorView out_view =
      TensorView::contiguous(out.p, DType::bf16, {1, S, H, D}, Device::cuda);

  Config cfg;
  cfg.method = Method::rectified;
  cfg.order.kind = OrderKind::gilbert;
  cfg.order.grid = grid;
  cfg.select.sparsity = o.sparsity;
  cfg.select.neighbours = o.neighbours;

  // The stages on buffers of their own, as the pipeline runs them.
  const std::vector<int32_t> perm = token_permutation(cfg.order);
  const auto [offsets, cols] = st::flatten_neighbours(block_neighbours(cfg.order, L.block_size));
  DeviceMem dperm(perm.size() * 4), doff(offsets.size() * 4), dcols(cols.size() * 4);
  upload(dperm, perm);
  upload(doff, offsets);
  upload(dcols, cols);
  const auto* perm_d = static_cast<const int32_t*>(dperm.p);
  const st::NeighbourMap map{static_cast<const int32_t*>(doff.p),
                             static_cast<const int32_t*>(dcols.p)};
  const st::Dims dims = st::make_dims(L, 1, H, D);
  DeviceMem ws(st::workspace_size(dims));
  const st::Buffers buf = st::carve_workspace(dims, ws.p);
  // As the pipeline runs them: the pooling pass also writes the video rows of the ordered K, V,
  // the gather copies the text rows.
  DeviceMem k_ord(n * 2), v_ord(n * 2);
  st::PoolParams pool = st::make_pool_params(args, perm_d, buf);
  pool.k_out = k_ord.p;
  pool.v_out = v_ord.p;
  st::GatherParams gather = st::make_gather_params(args, perm_d, k_ord.p, v_ord.p);
  gather.text_only = true;
  const st::ScoreParams scores = st::make_score_params(args, cfg.gapr, buf);
  const st::SelectParams select = st::make_select_params(dims, cfg, map, buf);
  const st::RectifyParams rectify = st::make_rectify_params(dims, cfg.gapr, buf);
  auto all_stages = [&](cudaStream_t s) {
    st::launch_pool(pool, s);
    st::launch_scores(scores, s);
    st::launch_select(select, s);
    st::launch_rectify(rectify, s);
  };
  AttentionArgs ordered = args;
  ordered.k = st::gathered_view(args, k_ord.p);
  ordered.v = st::gathered_view(args, v_ord.p);
  all_stages(stream);
  st::launch_gather_kv(gather, stream);
  cuda_ok(cudaStreamSynchronize(stream), "stages");

  BlockMaskView mask;
  mask.batch = 1;
  mask.heads = H;
  mask.num_q_blocks = mask.num_k_blocks = dims.nb;
  mask.row_offsets =
      TensorView::contiguous(buf.row_offsets, DType::i32, {dims.mask_rows() + 1}, Device::cuda);
  mask.col_indices =
      TensorView::contiguous(buf.col_indices, DType::i32, {dims.max_nnz()}, Device::cuda);
  std::vector<int32_t> row_offsets(static_cast<size_t>(dims.mask_rows()) + 1);
  cuda_ok(cudaMemcpy(row_offsets.data(), buf.row_offsets, row_offsets.size() * 4,
                     cudaMemcpyDeviceToHost),
          "row offsets");
  const double density =
      static_cast<double>(row_offsets.back()) / (static_cast<double>(H) * dims.nb * dims.nb);

  cuda_detail::FwdParams plain = cuda_detail::make_fwd_params(args, mask, out_view, TensorView{});
  // A random mask of the same density, drawn as spaattn_bench draws its masks, in CSR.
  const BlockMask random_csr = BlockMask::from_dense(
      random_block_mask(H, dims.nb, density, 7, /*text_dense=*/false, dims.nv).data(), 1, H,
      dims.nb, dims.nb);
  DeviceMem d_random_offsets(random_csr.row_offsets.size() * 4),
      d_random_cols(random_csr.col_indices.size() * 4);
  upload(d_random_offsets, random_csr.row_offsets);
  upload(d_random_cols, random_csr.col_indices);
  BlockMaskView random_mask = mask;
  random_mask.row_offsets = TensorView::contiguous(
      d_random_offsets.p, DType::i32, {dims.mask_rows() + 1}, Device::cuda);
  random_mask.col_indices =
      TensorView::contiguous(d_random_cols.p, DType::i32,
                             {static_cast<int64_t>(random_csr.col_indices.size())}, Device::cuda);
  const cuda_detail::FwdParams plain_random =
      cuda_detail::make_fwd_params(args, random_mask, out_view, TensorView{});
  cuda_detail::FwdParams plain_ordered =
      cuda_detail::make_fwd_params(ordered, mask, out_view, TensorView{});
  cuda_detail::FwdParams in_kernel = plain;  // K, V through the permutation in every tile
  in_kernel.video_perm = perm_d;
  cuda_detail::FwdParams permuted = plain_ordered;
  permuted.video_perm = perm_d;
  permuted.kv_ordered = true;
  cuda_detail::FwdParams rectified = permuted;
  rectified.epi.kind = cuda_detail::EpilogueKind::block_affine;
  rectified.epi.R = buf.R;
  rectified.epi.C = buf.C;
  auto kernel = [&](const cuda_detail::FwdParams& p) {
    return [&p](cudaStream_t s) { cuda_detail::launch_fwd(p, DType::bf16, 128, 128, s); };
  };

  // The public call. A fresh selection every call: the step advances by the mask period.
  SparseAttention sa(cfg);
  int step = 0;
  auto forward = [&](SparseAttention& a, int stride) {
    return [&a, &step, &args, &out_view, stride](cudaStream_t s) {
      a.forward(CallInfo{.layer = 0, .entry = 0, .step = step}, args, out_view, s);
      step += stride;
    };
  };

  std::vector<Line> lines;
  auto measure = [&](const std::string& what, const std::function<void(cudaStream_t)>& fn,
                     bool outside) {
    lines.push_back({what, time_calls(fn, stream, 3, o.iters), outside});
    return lines.back().t.median_ms;
  };
  measure(
      "pool (Q, K, V through the permutation, GAPR deviations; video rows of the ordered K, V)",
      [&](cudaStream_t s) { st::launch_pool(pool, s); }, true);
  measure(
      "scores (IPAR P, isolated text keys, GAPR bits)",
      [&](cudaStream_t s) { st::launch_scores(scores, s); }, true);
  measure(
      "select (top-k / cumulative p, neighbours -> CSR)",
      [&](cudaStream_t s) { st::launch_select(select, s); }, true);
  measure(
      "rectify (R_i, C_i)", [&](cudaStream_t s) { st::launch_rectify(rectify, s); }, true);
  measure(
      "gather the text rows of K, V into the token order",
      [&](cudaStream_t s) { st::launch_gather_kv(gather, s); },
      true);
  const double k_rect =
      measure("kernel as run: gathered K, V; Q, O permuted; block-affine epilogue",
              kernel(rectified), false);
  const double k_perm = measure("kernel: gathered K, V; Q, O permuted", kernel(permuted), false);
  const double k_alone =
      measure("kernel alone (caller's K, V; no permutation, no epilogue)", kernel(plain), false);
  const double k_alone_ord =
      measure("kernel alone on the gathered K, V (no permutation, no epilogue)",
              kernel(plain_ordered), false);
  measure("kernel alone on a random mask of the same density (as spaattn_bench draws it)",
          kernel(plain_random), false);
  measure("kernel permuting K, V itself in every tile (not used)", kernel(in_kernel), false);
  const double whole =
      measure("SparseAttention::forward (rectified, whole call)", forward(sa, 1), false);

  Config ref_cfg = cfg;
  ref_cfg.method = Method::rectified_rettention;
  ref_cfg.rettention.ref_period = 1;  // every step a reference step
  SparseAttention ref(ref_cfg);
  step = 0;
  const double t_ref =
      measure("Re-ttention reference step (select, mask pass, complement pass + merge)",
              forward(ref, 1), false);
  Config sp_cfg = ref_cfg;
  sp_cfg.rettention.ref_period = 1 << 30;  // one reference step, then sparse steps only
  SparseAttention sp(sp_cfg);
  step = 0;
  forward(sp, 1)(stream);
  const double t_sparse = measure(
      "Re-ttention sparse step (CSR of stored bits, row-affine epilogue)", forward(sp, 1), false);

  // FP8 operands (Hopper only): the same calls with Config::precision fp8.
  double whole8 = 0, ref8 = 0, sparse8 = 0;
  const bool fp8 = cuda_detail::sm90::kernels_available();
  if (fp8) {
    const st::Fp8Layout layout8 = st::fp8_layout(args);
    DeviceMem q8(layout8.total);
    measure(
        "FP8: quantise Q, K, V in the token order (stats + quantise)",
        [&](cudaStream_t s) { st::launch_quantize_fp8(args, layout8, perm_d, q8.p, s); }, false);
    st::PoolParams pool8 = pool;
    pool8.k_out = pool8.v_out = nullptr;  // the FP8 pipeline gathers K, V while quantising
    const st::Fp8PoolStats partials = st::fp8_pool_stats(args, layout8, q8.p);
    pool8.fp8_part = partials.part;
    pool8.fp8_chunks = partials.chunks;
    measure(
        "FP8: pool writing the video blocks' statistics too",
        [&](cudaStream_t s) { st::launch_pool(pool8, s); }, false);
    measure(
        "FP8: quantise after that pool (statistics of the text rows only)",
        [&](cudaStream_t s) { st::launch_quantize_fp8(args, layout8, perm_d, q8.p, s, true); },
        false);
    Config c8 = cfg;
    c8.precision = Precision::fp8;
    SparseAttention sa8(c8);
    step = 0;
    whole8 = measure("FP8: SparseAttention::forward (rectified, whole call)", forward(sa8, 1),
                     false);
    Config r8 = ref_cfg;
    r8.precision = Precision::fp8;
    SparseAttention ref8_sa(r8);
    step = 0;
    ref8 = measure("FP8: Re-ttention reference step", forward(ref8_sa, 1), false);
    Config s8 = sp_cfg;
    s8.precision = Precision::fp8;
    SparseAttention sp8(s8);
    step = 0;
    forward(sp8, 1)(stream);
    sparse8 = measure("FP8: Re-ttention sparse step", forward(sp8, 1), false);
  }

  const std::vector<BaselineEntry> base = read_baseline(o.baseline);
  const double cudnn = baseline_ms(base, S, H, D, "cudnn");
  cudaDeviceProp prop{};
  cuda_ok(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  std::printf(
      "spaattn GPU pipeline on %s: S = %lld (gilbert, 20 x 60 x 64), H = %lld, d = 128, bf16, "
      "batch 1, B = 128, IPAR sparsity %.2f, p = 0.3, %s; mask density %.4f; median of "
      ">= %d calls (CUDA events)\n\n",
      prop.name, static_cast<long long>(S), static_cast<long long>(H), o.sparsity,
      o.neighbours ? "neighbours" : "no neighbours", density, std::max(o.iters, 10));
  print_row_balance(row_offsets, prop.multiProcessorCount);
  auto share = [&](double ms) { return cudnn > 0 ? 100.0 * ms / cudnn : 0.0; };
  std::printf("| part | median ms | min ms | max ms | share of cuDNN dense |\n");
  std::printf("| --- | --- | --- | --- | --- |\n");
  for (const Line& l : lines)
    std::printf("| %s | %.3f | %.3f | %.3f | %.2f%% |\n", l.what.c_str(), l.t.median_ms, l.t.min_ms,
                l.t.max_ms, share(l.t.median_ms));
  double stages = 0;
  for (const Line& l : lines)
    if (l.outside) stages += l.t.median_ms;
  const double kernel_ref = std::min(k_alone, k_alone_ord);
  std::printf("\n| summary | ms | share of cuDNN dense |\n| --- | --- | --- |\n");
  std::printf("| PyTorch SDPA cuDNN dense, same shape, same run | %.2f | 100%% |\n", cudnn);
  std::printf("| stages (pool + scores + select + rectify + gather) | %.3f | %.2f%% |\n", stages,
              share(stages));
  std::printf(
      "| Q, O permutation in the kernel (vs kernel alone on gathered K, V) | %.3f | %.2f%% |\n",
      k_perm - k_alone_ord, share(k_perm - k_alone_ord));
  std::printf("| epilogue in the kernel | %.3f | %.2f%% |\n", k_rect - k_perm,
              share(k_rect - k_perm));
  std::printf("| stages + in-kernel extras (vs the faster kernel alone) | %.3f | %.2f%% |\n",
              stages + k_rect - kernel_ref, share(stages + k_rect - kernel_ref));
  std::printf(
      "| **outside the kernel: whole call - faster kernel alone** | **%.3f** | **%.2f%%** |\n",
      whole - kernel_ref, share(whole - kernel_ref));
  if (cudnn > 0) {
    std::printf("| speed-up of the whole rectified call vs cuDNN dense | %.2fx | |\n",
                cudnn / whole);
    std::printf("| Re-ttention reference step vs cuDNN dense | %.2fx | |\n", cudnn / t_ref);
    std::printf("| Re-ttention sparse step vs cuDNN dense | %.2fx | |\n", cudnn / t_sparse);
    if (fp8) {
      std::printf("| FP8: whole rectified call vs cuDNN dense | %.2fx | |\n", cudnn / whole8);
      std::printf("| FP8: Re-ttention reference step vs cuDNN dense | %.2fx | |\n", cudnn / ref8);
      std::printf("| FP8: Re-ttention sparse step vs cuDNN dense | %.2fx | |\n",
                  cudnn / sparse8);
    }
  }
}

}  // namespace
}  // namespace spaattn::bench

int main(int argc, char** argv) {
  using namespace spaattn::bench;
  try {
    const Options o = parse(argc, argv);
    cudaStream_t stream;
    cuda_ok(cudaStreamCreate(&stream), "cudaStreamCreate");
    run(o, stream);
    cuda_ok(cudaStreamDestroy(stream), "cudaStreamDestroy");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "spaattn_bench_pipeline: %s\n", e.what());
    return 1;
  }
  return 0;
}
