// spaattn_bench_stages: the GPU stages that run outside the attention kernel (pooling, IPAR
// scores with GAPR, selection as CSR lists, rectification terms; src/cuda/plan/stages.cuh) on the
// shapes of docs/benchmarks.md, bf16, d = 128, B = 128, batch 1, gilbert token order with the block
// neighbour map, IPAR selection at the given sparsity with p = 0.3. Each stage is timed on its own
// with time_calls() (CUDA events, warm-up, median), then the four together; the share is taken of
// the cuDNN dense attention time measured for the shape on an H100.
// Usage: spaattn_bench_stages [--shape S=76800] [--sparsity 0.9] [--iters N]
#include <algorithm>
#include <cstdio>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/plan/stages.cuh"
#include "inputs.hpp"
#include "spaattn/spaattn.hpp"
#include "timing.hpp"

namespace spaattn::bench {
namespace {

namespace st = cuda::stages;

struct Shape {
  const char* name;
  Grid grid;  // the video latent grid (N_v = t * h * w)
  int64_t text, heads;
  double cudnn_ms;  // cuDNN SDPA dense on an H100
};

struct Options {
  std::string shape;
  double sparsity = 0.9;
  int iters = 20;
};

Options parse(int argc, char** argv) {
  Options o;
  parse_flags(argc, argv, [&](const std::string& a, const std::string& v) {
    if (a == "--shape")
      o.shape = v;
    else if (a == "--sparsity")
      o.sparsity = std::stod(v);
    else if (a == "--iters")
      o.iters = std::stoi(v);
    else
      return false;
    return true;
  });
  return o;
}


void run_shape(const Options& o, const Shape& sh, cudaStream_t stream) {
  const int64_t D = 128, H = sh.heads;
  const Layout L{.num_video = sh.grid.size(), .num_text = sh.text, .block_size = 128};
  const int64_t S = L.seq_len(), n = S * H * D;
  // Q, K, V are 0.3 to 1 GB each, far beyond the 50 MB L2: no rotation of inputs is needed.
  DeviceMem q(n * 2), k(n * 2), v(n * 2);
  fill_random(q.p, DType::bf16, n, 1);
  fill_random(k.p, DType::bf16, n, 2);
  fill_random(v.p, DType::bf16, n, 3);
  AttentionArgs args;
  args.q = TensorView::contiguous(q.p, DType::bf16, {1, S, H, D}, Device::cuda);
  args.k = TensorView::contiguous(k.p, DType::bf16, {1, S, H, D}, Device::cuda);
  args.v = TensorView::contiguous(v.p, DType::bf16, {1, S, H, D}, Device::cuda);
  args.layout = L;

  // The tables the pipeline uploads once per shape: permutation and block neighbour map.
  Config cfg;
  cfg.method = Method::rectified;
  cfg.order.kind = OrderKind::gilbert;
  cfg.order.grid = sh.grid;
  cfg.select.selector = Selector::ipar;
  cfg.select.sparsity = o.sparsity;
  const std::vector<int32_t> perm = token_permutation(cfg.order);
  const auto [offsets, cols] = st::flatten_neighbours(block_neighbours(cfg.order, L.block_size));
  DeviceMem dperm(perm.size() * 4), doff(offsets.size() * 4), dcols(cols.size() * 4);
  cuda_ok(cudaMemcpy(dperm.p, perm.data(), perm.size() * 4, cudaMemcpyHostToDevice), "upload");
  cuda_ok(cudaMemcpy(doff.p, offsets.data(), offsets.size() * 4, cudaMemcpyHostToDevice), "upload");
  cuda_ok(cudaMemcpy(dcols.p, cols.data(), cols.size() * 4, cudaMemcpyHostToDevice), "upload");
  const st::NeighbourMap map{static_cast<const int32_t*>(doff.p),
                             static_cast<const int32_t*>(dcols.p)};

  const st::Dims dims = st::make_dims(L, 1, H, D);
  const size_t ws_bytes = st::workspace_size(dims);
  DeviceMem ws(ws_bytes);
  const st::Buffers buf = st::carve_workspace(dims, ws.p);
  const st::PoolParams pool = st::make_pool_params(args, static_cast<const int32_t*>(dperm.p), buf);
  const st::ScoreParams scores = st::make_score_params(args, cfg.gapr, buf);
  const st::SelectParams select = st::make_select_params(dims, cfg, map, buf);
  const st::RectifyParams rectify = st::make_rectify_params(dims, cfg.gapr, buf);
  // Re-ttention's published selector on the same buffers: the part of `select` that is not IPAR.
  Config band_cfg = cfg;
  band_cfg.select.selector = Selector::band;
  const st::SelectParams band = st::make_select_params(dims, band_cfg, map, buf);

  struct Stage {
    const char* name;
    std::function<void(cudaStream_t)> fn;
  };
  const std::vector<Stage> stages = {
      {"pool (Q, K, V through the permutation)", [&](cudaStream_t s) { st::launch_pool(pool, s); }},
      {"scores (IPAR P + GAPR bits)", [&](cudaStream_t s) { st::launch_scores(scores, s); }},
      {"select (ipar, CSR)", [&](cudaStream_t s) { st::launch_select(select, s); }},
      {"rectify (R, C)", [&](cudaStream_t s) { st::launch_rectify(rectify, s); }},
      {"select (band + neighbours, CSR; Re-ttention)",
       [&](cudaStream_t s) { st::launch_select(band, s); }},
      {"all four", [&](cudaStream_t s) {
         st::launch_pool(pool, s);
         st::launch_scores(scores, s);
         st::launch_select(select, s);
         st::launch_rectify(rectify, s);
       }}};
  std::printf(
      "\n%s (N_v = %lld, N_t = %lld), H = %lld, d = 128, B = 128, bf16, NV = %d, "
      "sparsity %.2f, p = 0.3, gilbert + neighbours, workspace %.1f MB\n\n",
      sh.name, static_cast<long long>(L.num_video), static_cast<long long>(L.num_text),
      static_cast<long long>(H), dims.nv, o.sparsity, ws_bytes / 1e6);
  std::printf("| stage | median ms | min ms | max ms | share of cuDNN dense (%.0f ms) |\n",
              sh.cudnn_ms);
  std::printf("| --- | --- | --- | --- | --- |\n");
  for (const Stage& stage : stages) {
    const Timing t = time_calls(stage.fn, stream, 3, o.iters);
    std::printf("| %s | %.3f | %.3f | %.3f | %.2f%% |\n", stage.name, t.median_ms, t.min_ms,
                t.max_ms, 100.0 * t.median_ms / sh.cudnn_ms);
  }
  // What the selection kept: video key blocks per video query row, on these random inputs.
  std::vector<int32_t> row_offsets(static_cast<size_t>(dims.mask_rows() + 1));
  cuda_ok(cudaMemcpy(row_offsets.data(), buf.row_offsets, row_offsets.size() * 4,
                     cudaMemcpyDeviceToHost),
          "download");
  int64_t video_nnz = 0;
  for (int64_t h = 0; h < H; ++h)
    for (int64_t i = 0; i < dims.nv; ++i) {
      const int64_t r = h * dims.nb + i;
      video_nnz += row_offsets[r + 1] - row_offsets[r] - (dims.nb - dims.nv);
    }
  std::printf("\nkept video blocks per video row: %.1f of %d (k = %lld)\n",
              static_cast<double>(video_nnz) / (H * dims.nv), dims.nv,
              static_cast<long long>(kept_video_blocks(o.sparsity, dims.nv)));
}

}  // namespace
}  // namespace spaattn::bench

int main(int argc, char** argv) {
  using namespace spaattn::bench;
  try {
    const Options o = parse(argc, argv);
    // Wan 2.1 720p-like (20 latent frames of 48 x 80) and HunyuanVideo 720p
    // (33 latent frames of 45 x 80 + 256 text tokens).
    const std::vector<Shape> shapes = {{"S=76800,H=40", {20, 48, 80}, 0, 40, 196.0},
                                       {"S=119056,H=24", {33, 45, 80}, 256, 24, 305.0}};
    cudaStream_t stream;
    cuda_ok(cudaStreamCreate(&stream), "cudaStreamCreate");
    cudaDeviceProp prop{};
    cuda_ok(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
    std::printf("spaattn GPU stages on %s, median of %d calls (CUDA events)\n", prop.name,
                std::max(o.iters, 10));
    for (const Shape& s : shapes)
      if (o.shape.empty() || std::string(s.name).find(o.shape) != std::string::npos)
        run_shape(o, s, stream);
    cuda_ok(cudaStreamDestroy(stream), "cudaStreamDestroy");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "spaattn_bench_stages: %s\n", e.what());
    return 1;
  }
  return 0;
}
