// spaattn_bench: the block-sparse kernel on the shapes of docs/benchmarks.md at densities 1.0, 0.5,
// 0.25, 0.11 and 0.05 (random block masks, fixed blocks per row), timed with time_calls().
// A last shape repeats HunyuanVideo's with a Rectified SpaAttn-like mask (dense text query rows,
// every video row sees all text blocks): unbalanced rows.
// eff TFLOP/s counts only computed blocks: density * 4 * S^2 * d * H * batch, with the
// token-weighted density of the mask. With --baseline (sdpa_baseline.py's JSON from the same
// run) it prints the ratios to PyTorch SDPA dense (cuDNN and flash back-ends).
// Usage: spaattn_bench [--quick] [--shape S=76800] [--densities 1,0.05] [--dtype bf16|f16]
//                      [--head-dim 64|128] [--block 128|64] [--iters N]
//                      [--kernel auto|portable|hopper] [--precision input|fp8]
//                      [--baseline sdpa.json] [--json out.json] [--marks FILE]
// --precision fp8 times block_sparse_attention_fp8 on operands quantised once per shape, and
// quantize_fp8 on its own (its time is printed with the table; d = 128, B = 128 only).
// --shape keeps the shapes whose name contains the text; --quick keeps the first shape.
// --marks appends "<unix seconds> begin|end <label>" around each timed kernel measurement
// (warm-up included), for scripts/power_summary.py.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "baseline.hpp"
#include "inputs.hpp"
#include "spaattn/spaattn.hpp"
#include "timing.hpp"

namespace spaattn::bench {
namespace {

struct Shape {
  const char* name;
  int64_t video, text, heads;
  bool text_dense = false;  // Rectified SpaAttn-like mask (random_block_mask)
};

struct Options {
  bool quick = false;
  DType dtype = DType::bf16;
  int64_t dim = 128;
  int block = 128;
  int iters = 10;
  KernelFamily kernel = KernelFamily::automatic;
  bool fp8 = false;
  std::string shape, densities, baseline, json, marks;
};

struct Row {
  std::string shape;
  int64_t seq, heads;
  double density, token_density, ms, tflops, csr_ms, cudnn_ms, flash_ms;
  double quant_ms = 0;  // --precision fp8: quantize_fp8 of the shape
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error(a + ": expected a value");
      return argv[++i];
    };
    if (a == "--quick")
      o.quick = true;
    else if (a == "--dtype")
      o.dtype = value() == "f16" ? DType::f16 : DType::bf16;
    else if (a == "--head-dim")
      o.dim = std::stoll(value());
    else if (a == "--block")
      o.block = std::stoi(value());
    else if (a == "--iters")
      o.iters = std::stoi(value());
    else if (a == "--kernel")
      o.kernel = parse_kernel_family(value(), "--kernel");
    else if (a == "--precision") {
      const std::string v = value();
      if (v != "input" && v != "fp8")
        throw std::runtime_error("--precision: expected input or fp8, got " + v);
      o.fp8 = v == "fp8";
    } else if (a == "--shape")
      o.shape = value();
    else if (a == "--densities")
      o.densities = value();
    else if (a == "--baseline")
      o.baseline = value();
    else if (a == "--json")
      o.json = value();
    else if (a == "--marks")
      o.marks = value();
    else
      throw std::runtime_error("unknown argument " + a);
  }
  return o;
}

// One --marks line (nothing without --marks).
void mark(const Options& o, const char* kind, const std::string& label) {
  if (o.marks.empty()) return;
  std::ofstream f(o.marks, std::ios::app);
  if (!f) throw std::runtime_error("--marks: cannot write " + o.marks);
  const auto since = std::chrono::system_clock::now().time_since_epoch();
  char line[64];
  std::snprintf(line, sizeof line, "%.3f %s ",
                std::chrono::duration<double>(since).count(), kind);
  f << line << label << '\n';
}

void run_shape(const Options& o, const Shape& sh, const std::vector<double>& densities,
               const std::vector<BaselineEntry>& base, cudaStream_t stream,
               std::vector<Row>& rows) {
  const Layout L{.num_video = sh.video, .num_text = sh.text, .block_size = o.block};
  const int64_t S = L.seq_len(), H = sh.heads, D = o.dim, nb = L.num_blocks();
  const int64_t n = S * H * D;
  // Each tensor is hundreds of MB, far beyond the 50 MB L2: no input rotation is needed.
  DeviceMem q(n * 2), k(n * 2), v(n * 2), out(n * 2), lse(S * H * 4);
  fill_random(q.p, o.dtype, n, 1);
  fill_random(k.p, o.dtype, n, 2);
  fill_random(v.p, o.dtype, n, 3);
  AttentionArgs args;
  args.q = TensorView::contiguous(q.p, o.dtype, {1, S, H, D}, Device::cuda);
  args.k = TensorView::contiguous(k.p, o.dtype, {1, S, H, D}, Device::cuda);
  args.v = TensorView::contiguous(v.p, o.dtype, {1, S, H, D}, Device::cuda);
  args.layout = L;
  args.kernel = o.kernel;
  const TensorView out_v = TensorView::contiguous(out.p, o.dtype, {1, S, H, D}, Device::cuda);
  const TensorView lse_v = TensorView::contiguous(lse.p, DType::f32, {1, S, H}, Device::cuda);
  // FP8: the operands are quantised once per shape (as a pipeline quantises once per call);
  // the quantisation is timed on its own.
  size_t ws_bytes = 0;
  double quant_ms = 0;
  DeviceMem fp8_ws(o.fp8 ? (ws_bytes = cuda::fp8_workspace_size(args)) : 0);
  if (o.fp8) {
    quant_ms = time_calls([&](cudaStream_t s) { cuda::quantize_fp8(args, fp8_ws.p, ws_bytes, s); },
                          stream, 2, 10)
                   .median_ms;
    std::fprintf(stderr, "%s quantize_fp8: %.3f ms\n", sh.name, quant_ms);
  }
  const int64_t mrows = H * nb;
  DeviceMem dense(mrows * nb), offsets(4 * (mrows + 1)), cols(4 * mrows * nb),
      ws(cuda::dense_to_csr_workspace_size(mrows));
  for (double density : densities) {
    if (sh.text_dense && density > 0.3) continue;  // near dense: the plain shape's rows say it
    const std::vector<uint8_t> host =
        random_block_mask(H, nb, density, 7, sh.text_dense, L.num_video_blocks());
    const double token_density = BlockMask::from_dense(host.data(), 1, H, nb, nb).density(L);
    cuda_ok(cudaMemcpy(dense.p, host.data(), host.size(), cudaMemcpyHostToDevice), "mask upload");
    BlockMaskView mask{.batch = 1, .heads = H, .num_q_blocks = nb, .num_k_blocks = nb};
    mask.row_offsets = TensorView::contiguous(offsets.p, DType::i32, {mrows + 1}, Device::cuda);
    mask.col_indices = TensorView::contiguous(cols.p, DType::i32, {mrows * nb}, Device::cuda);
    const TensorView dense_v =
        TensorView::contiguous(dense.p, DType::u8, {1, H, nb, nb}, Device::cuda);
    const Timing csr = time_calls(
        [&](cudaStream_t s) { cuda::dense_to_csr(dense_v, mask, ws.p, s); }, stream, 2, 10, 20);
    char label[160];
    std::snprintf(label, sizeof label, "spaattn %s%s d=%lld B=%d %s density %.2f",
                  to_string(o.kernel), o.fp8 ? " fp8" : "", static_cast<long long>(D), o.block,
                  sh.name, density);
    mark(o, "begin", label);
    const Timing t = time_calls(
        [&](cudaStream_t s) {
          if (o.fp8)
            cuda::block_sparse_attention_fp8(args, mask, out_v, lse_v, fp8_ws.p, ws_bytes, s);
          else
            cuda::block_sparse_attention(args, mask, out_v, lse_v, s);
        },
        stream, 3, o.iters);
    mark(o, "end", label);
    const double flop = token_density * 4.0 * double(S) * double(S) * double(D) * double(H);
    Row r{sh.name,
          S,
          H,
          density,
          token_density,
          t.median_ms,
          flop / (t.median_ms * 1e9),
          csr.median_ms,
          baseline_ms(base, S, H, D, "cudnn"),
          baseline_ms(base, S, H, D, "flash"),
          quant_ms};
    std::fprintf(stderr, "%s density %.2f: %.3f ms (min %.3f, max %.3f), %.1f TFLOP/s\n", sh.name,
                 density, t.median_ms, t.min_ms, t.max_ms, r.tflops);
    rows.push_back(r);
  }
}

void print_table(const Options& o, const std::vector<Row>& rows, const char* gpu) {
  std::printf(
      "\nspaattn block-sparse kernel (family %s%s), %s, %s, d = %lld, B = %d, batch 1, median "
      "of >= %d calls (CUDA events)\n\n",
      to_string(o.kernel), o.fp8 ? ", FP8 e4m3 operands" : "", gpu, o.dtype == DType::f16 ? "f16" : "bf16", static_cast<long long>(o.dim), o.block,
      std::max(o.iters, 10));
  std::printf(
      "| shape | density (token) | ms | eff TFLOP/s | cuDNN dense ms | flash dense ms | "
      "eff / cuDNN | eff / flash | speed-up vs cuDNN dense | dense_to_csr ms |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
  for (const Row& r : rows) {
    const double dense_flop = 4.0 * double(r.seq) * double(r.seq) * double(o.dim) * double(r.heads);
    const double cudnn_tf = r.cudnn_ms > 0 ? dense_flop / (r.cudnn_ms * 1e9) : 0;
    const double flash_tf = r.flash_ms > 0 ? dense_flop / (r.flash_ms * 1e9) : 0;
    std::printf("| %s | %.2f (%.4f) | %.2f | %.1f | ", r.shape.c_str(), r.density, r.token_density,
                r.ms, r.tflops);
    if (r.cudnn_ms > 0)
      std::printf("%.2f (%.0f TF/s) | ", r.cudnn_ms, cudnn_tf);
    else
      std::printf("- | ");
    if (r.flash_ms > 0)
      std::printf("%.2f (%.0f TF/s) | ", r.flash_ms, flash_tf);
    else
      std::printf("- | ");
    if (cudnn_tf > 0)
      std::printf("%.2f | ", r.tflops / cudnn_tf);
    else
      std::printf("- | ");
    if (flash_tf > 0)
      std::printf("%.2f | ", r.tflops / flash_tf);
    else
      std::printf("- | ");
    if (r.cudnn_ms > 0)
      std::printf("%.2fx | ", r.cudnn_ms / r.ms);
    else
      std::printf("- | ");
    std::printf("%.3f |\n", r.csr_ms);
  }
  if (o.fp8)
    for (size_t i = 0; i < rows.size(); ++i)
      if (i == 0 || rows[i].shape != rows[i - 1].shape)
        std::printf("\nquantize_fp8 (once per call, not in the rows above), %s: %.3f ms\n",
                    rows[i].shape.c_str(), rows[i].quant_ms);
}

void write_json(const Options& o, const std::vector<Row>& rows, const char* gpu) {
  std::ofstream f(o.json);
  if (!f) throw std::runtime_error("--json: cannot write " + o.json);
  f << "{\n  \"gpu\": \"" << gpu << "\",\n  \"dtype\": \""
    << (o.dtype == DType::f16 ? "f16" : "bf16") << "\",\n  \"d\": " << o.dim
    << ",\n  \"block\": " << o.block << ",\n  \"kernel\": \"" << to_string(o.kernel)
    << "\",\n  \"precision\": \"" << (o.fp8 ? "fp8" : "input")
    << "\",\n  \"results\": [\n";
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    f << "    {\"shape\": \"" << r.shape << "\", \"S\": " << r.seq << ", \"H\": " << r.heads
      << ", \"density\": " << r.density << ", \"token_density\": " << r.token_density
      << ", \"ms\": " << r.ms << ", \"eff_tflops\": " << r.tflops
      << ", \"cudnn_ms\": " << r.cudnn_ms << ", \"flash_ms\": " << r.flash_ms
      << ", \"dense_to_csr_ms\": " << r.csr_ms << ", \"quantize_ms\": " << r.quant_ms << "}" << (i + 1 < rows.size() ? "," : "") << "\n";
  }
  f << "  ]\n}\n";
}

}  // namespace
}  // namespace spaattn::bench

int main(int argc, char** argv) {
  using namespace spaattn::bench;
  try {
    const Options o = parse(argc, argv);
    const std::vector<BaselineEntry> base = read_baseline(o.baseline);
    cudaDeviceProp prop{};
    cuda_ok(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
    // Wan 2.1 720p-like and HunyuanVideo 720p (129 frames + 256 text tokens).
    std::vector<Shape> shapes = {{"S=32768,H=24", 32768, 0, 24},
                                 {"S=76800,H=40", 76800, 0, 40},
                                 {"S=119056,H=24", 118800, 256, 24},
                                 {"S=119056,H=24 text rows dense", 118800, 256, 24, true}};
    std::vector<double> densities = {1.0, 0.5, 0.25, 0.11, 0.05};
    if (o.quick) shapes.resize(1);
    if (!o.shape.empty())
      std::erase_if(shapes, [&](const Shape& s) {
        return std::string(s.name).find(o.shape) == std::string::npos;
      });
    if (!o.densities.empty()) {
      densities.clear();
      for (size_t pos = 0; pos < o.densities.size();) {
        const size_t end = std::min(o.densities.find(',', pos), o.densities.size());
        densities.push_back(std::stod(o.densities.substr(pos, end - pos)));
        pos = end + 1;
      }
    }
    cudaStream_t stream;
    cuda_ok(cudaStreamCreate(&stream), "cudaStreamCreate");
    std::vector<Row> rows;
    for (const Shape& s : shapes) run_shape(o, s, densities, base, stream, rows);
    cuda_ok(cudaStreamDestroy(stream), "cudaStreamDestroy");
    if (!o.json.empty()) write_json(o, rows, prop.name);
    print_table(o, rows, prop.name);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "spaattn_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
