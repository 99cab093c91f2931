// The GPU part of `spaattn bench` (CUDA builds only): on seeded random q, k, v of the chosen shape,
//   - the kernel table: cuda::block_sparse_attention (lse on, no token order, no epilogue) with a
//     full mask, the dense reference, then on one random block mask per density; eff TFLOP/s
//     counts the computed blocks only, with the mask's token-weighted density. --precision fp8:
//     cuda::block_sparse_attention_fp8 instead, on operands that cuda::quantize_fp8 wrote once
//     (its time printed on its own line);
//   - the pipeline: SparseAttention::forward of the method (a fresh selection every call; for
//     Re-ttention and calibrated their reference and their sparse steps) against
//     SparseAttention("dense").
// Every time comes from bench::time_calls (bench/timing.cu), the inputs from bench/inputs.cu: the
// helpers of the benchmarks in bench/. The device memory the run needs is computed from the sizes
// and checked against the free memory before anything is allocated.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "bench.hpp"
#include "inputs.hpp"
#include "spaattn/spaattn.hpp"
#include "timing.hpp"

namespace spaattn::tools {
namespace {

using bench::cuda_ok;
using bench::DeviceMem;
using bench::Timing;

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
constexpr uint64_t kMaskSeed = 7;  // the kernel benchmark's seed of its random masks

struct KernelRow {
  double density = 0, token_density = 0, tflops = 0;
  Timing t;
};

struct PipelineRow {
  std::string call;
  Timing t;
};

// The stream every timed call runs on.
class Stream {
 public:
  Stream() { cuda_ok(cudaStreamCreate(&stream_), "cudaStreamCreate"); }
  ~Stream() { cudaStreamDestroy(stream_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

const char* dtype_name(DType t) { return t == DType::f16 ? "f16" : "bf16"; }

// The arguments of every call: contiguous [batch, S, heads, d] q, k, v in device memory.
AttentionArgs make_args(const BenchOptions& o, void* q, void* k, void* v) {
  const int64_t S = o.layout().seq_len();
  AttentionArgs a;
  a.q = TensorView::contiguous(q, o.dtype, {o.batch, S, o.heads, o.head_dim}, Device::cuda);
  a.k = TensorView::contiguous(k, o.dtype, {o.batch, S, o.heads, o.head_dim}, Device::cuda);
  a.v = TensorView::contiguous(v, o.dtype, {o.batch, S, o.heads, o.head_dim}, Device::cuda);
  a.layout = o.layout();
  a.kernel = o.kernel;
  return a;
}

// The arguments of the calls before the tensors exist, for the sizes that read shapes only: a
// placeholder address stands in for q, k and v.
AttentionArgs shape_args(const BenchOptions& o) {
  alignas(256) static unsigned char placeholder[256];
  return make_args(o, placeholder, placeholder, placeholder);
}

// The largest device memory one SparseAttention object of the pipeline part takes (one object
// lives at a time): its workspace, constants and the state of its one (layer, entry).
uint64_t pipeline_bytes(const BenchOptions& o) {
  const AttentionArgs shape = shape_args(o);
  uint64_t bytes = SparseAttention(o.config(Method::dense)).workspace_size(shape).total(0);
  if (o.method != Method::dense)
    bytes = std::max<uint64_t>(
        bytes, SparseAttention(o.config(o.method)).workspace_size(shape).total(1));
  return bytes;
}

// The kernel table's FP8 workspace (0 at --precision input), from the shapes only.
uint64_t fp8_bytes(const BenchOptions& o) {
  return o.precision == Precision::fp8 ? cuda::fp8_workspace_size(shape_args(o)) : 0;
}

// Dense [batch, heads, nb, nb] masks for the kernel: every block, or max(1, round(density * nb))
// random key blocks per query block (bench/inputs.cu, the kernel benchmark's masks).
BlockMask kernel_mask(const BenchOptions& o, double density) {
  const int64_t nb = o.layout().num_blocks();
  if (density >= 1.0) return BlockMask::full(o.batch, o.heads, nb, nb);
  const std::vector<uint8_t> dense =
      bench::random_block_mask(o.batch * o.heads, nb, density, kMaskSeed);
  return BlockMask::from_dense(dense.data(), o.batch, o.heads, nb, nb);
}

// "12.34 GiB".
std::string gib(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(bytes) / kGiB);
  return buf;
}

std::string timing_json(const Timing& t) {
  return detail::concat("\"ms\": ", json_number(t.median_ms), ", \"min_ms\": ",
                        json_number(t.min_ms), ", \"max_ms\": ", json_number(t.max_ms));
}

}  // namespace

int run_bench_device(const BenchOptions& o, OutputFile& json) {
  int count = 0;
  const cudaError_t found = cudaGetDeviceCount(&count);
  if (found != cudaSuccess || count == 0) {
    cudaGetLastError();  // clear the error
    std::fprintf(stderr, "spaattn bench: no CUDA device (cudaGetDeviceCount: %s)\n",
                 found != cudaSuccess ? cudaGetErrorString(found) : "none found");
    return 1;
  }
  try {
    int device = 0;
    cuda_ok(cudaGetDevice(&device), "cudaGetDevice");
    cudaDeviceProp prop{};
    cuda_ok(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
    const bool sm90 = prop.major == 9 && prop.minor == 0;
    SPAATTN_CHECK_ARG(o.kernel != KernelFamily::hopper || sm90, "--kernel",
                      "the hopper family needs a compute capability 9.0 device, got ", prop.name,
                      " (compute capability ", prop.major, ".", prop.minor, ")");
    SPAATTN_CHECK_ARG(o.precision != Precision::fp8 || sm90,
                      "--precision", "fp8 needs a compute capability 9.0 device, got ", prop.name,
                      " (compute capability ", prop.major, ".", prop.minor, ")");

    // Device memory: computed from the sizes, checked before anything is allocated.
    const uint64_t pipeline = pipeline_bytes(o);
    const uint64_t fp8_workspace = fp8_bytes(o);
    const uint64_t need = bench_device_bytes(o, pipeline, fp8_workspace);
    size_t free_bytes = 0, total_bytes = 0;
    cuda_ok(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");
    SPAATTN_CHECK_ARG(need <= free_bytes, "--seq", "this shape needs ", gib(need),
                      " of device memory (q, k, v, out ", gib(4 * o.sizes.tensor),
                      ", then the larger of the kernel's lse, mask and FP8 operands, ",
                      gib(o.sizes.lse + o.sizes.mask + fp8_workspace),
                      ", and the pipeline's workspace, ",
                      gib(pipeline), ", and a reserve of ", gib(kBenchReserveBytes), "), but ",
                      prop.name, " has ", gib(free_bytes),
                      " free; lower --batch, --heads, --seq or --text");

    const Layout L = o.layout();
    const int64_t S = L.seq_len(), B = o.batch, H = o.heads, D = o.head_dim;
    const char* env_kernel = std::getenv("SPAATTN_KERNEL");
    std::printf("spaattn bench on %s (compute capability %d.%d, %s, %s free; this run needs %s)\n",
                prop.name, prop.major, prop.minor, gib(total_bytes).c_str(),
                gib(free_bytes).c_str(), gib(need).c_str());
    std::string video = detail::concat(o.seq, " video tokens");
    if (!o.grid.empty())
      video += detail::concat(" on a ", o.grid.t, "x", o.grid.h, "x", o.grid.w, " grid");
    std::printf("shape: batch %lld, S = %lld (%s + %lld text), %lld heads, d = %lld, %s, block "
                "size %d; %s operands; kernel family %s%s%s\n",
                static_cast<long long>(B), static_cast<long long>(S), video.c_str(),
                static_cast<long long>(o.text), static_cast<long long>(H),
                static_cast<long long>(D), dtype_name(o.dtype), o.block,
                o.precision == Precision::fp8 ? "FP8 (int8 Q, K; e4m3 V)" : "16-bit",
                to_string(o.kernel),
                o.kernel == KernelFamily::automatic && env_kernel && *env_kernel
                    ? " with SPAATTN_KERNEL="
                    : "",
                o.kernel == KernelFamily::automatic && env_kernel && *env_kernel ? env_kernel
                                                                                 : "");
    std::printf("timing: median of %d calls between CUDA events, after >= %d calls and >= 300 ms "
                "of warm-up\n\n",
                o.iters, o.warmup);
    std::fflush(stdout);

    const int64_t n = B * S * H * D;
    DeviceMem q(o.sizes.tensor), k(o.sizes.tensor), v(o.sizes.tensor), out(o.sizes.tensor);
    bench::fill_random(q.p, o.dtype, n, 1);
    bench::fill_random(k.p, o.dtype, n, 2);
    bench::fill_random(v.p, o.dtype, n, 3);
    cuda_ok(cudaDeviceSynchronize(), "fill_random");
    const AttentionArgs args = make_args(o, q.p, k.p, v.p);
    const TensorView out_v = TensorView::contiguous(out.p, o.dtype, {B, S, H, D}, Device::cuda);
    Stream stream;
    auto timed = [&](const std::function<void(cudaStream_t)>& fn) {
      return bench::time_calls(fn, stream.get(), o.warmup, o.iters);
    };

    // The kernel table. 4 S^2 d H FLOPs per batch item: Q K^T and P V, two per multiply-add.
    const double dense_flop = 4.0 * double(B) * double(S) * double(S) * double(D) * double(H);
    Timing dense_kernel, quantize;
    double dense_tflops = 0;
    std::vector<KernelRow> rows;
    {
      const int64_t nb = L.num_blocks(), mask_rows = B * H * nb;
      DeviceMem lse(o.sizes.lse), offsets((mask_rows + 1) * 4), cols(mask_rows * nb * 4);
      DeviceMem fp8(fp8_workspace);
      const TensorView lse_v = TensorView::contiguous(lse.p, DType::f32, {B, S, H}, Device::cuda);
      if (fp8_workspace) {
        quantize = timed([&](cudaStream_t s) {
          cuda::quantize_fp8(args, fp8.p, fp8_workspace, s);
        });
        std::printf("cuda::quantize_fp8 (once per call, not in the rows below): %.3f ms\n",
                    quantize.median_ms);
      }
      auto time_mask = [&](const BlockMask& m) {
        cuda_ok(cudaMemcpy(offsets.p, m.row_offsets.data(), m.row_offsets.size() * 4,
                           cudaMemcpyHostToDevice),
                "mask upload");
        cuda_ok(cudaMemcpy(cols.p, m.col_indices.data(), m.col_indices.size() * 4,
                           cudaMemcpyHostToDevice),
                "mask upload");
        BlockMaskView mask;
        mask.batch = B;
        mask.heads = H;
        mask.num_q_blocks = mask.num_k_blocks = nb;
        mask.row_offsets =
            TensorView::contiguous(offsets.p, DType::i32, {mask_rows + 1}, Device::cuda);
        mask.col_indices = TensorView::contiguous(
            cols.p, DType::i32, {static_cast<int64_t>(m.col_indices.size())}, Device::cuda);
        return timed([&](cudaStream_t s) {
          if (fp8_workspace)
            cuda::block_sparse_attention_fp8(args, mask, out_v, lse_v, fp8.p, fp8_workspace, s);
          else
            cuda::block_sparse_attention(args, mask, out_v, lse_v, s);
        });
      };
      dense_kernel = time_mask(kernel_mask(o, 1.0));
      dense_tflops = dense_flop / (dense_kernel.median_ms * 1e9);
      std::printf("block-sparse kernel (cuda::block_sparse_attention%s, lse on), random block "
                  "masks;\ndense: the same kernel with every block, %.3f ms, %.1f TFLOP/s\n\n",
                  fp8_workspace ? "_fp8" : "", dense_kernel.median_ms, dense_tflops);
      std::printf("%8s %14s %10s %12s %12s %9s\n", "density", "token density", "ms",
                  "eff TFLOP/s", "eff / dense", "speed-up");
      std::fflush(stdout);
      for (const double density : o.densities) {
        KernelRow r;
        r.density = density;
        if (density >= 1.0) {  // the full mask: the dense reference itself
          r.token_density = 1.0;
          r.t = dense_kernel;
        } else {
          const BlockMask m = kernel_mask(o, density);
          r.token_density = m.density(L);
          r.t = time_mask(m);
        }
        r.tflops = r.token_density * dense_flop / (r.t.median_ms * 1e9);
        std::printf("%8.3f %14.4f %10.3f %12.1f %12.2f %8.2fx\n", r.density, r.token_density,
                    r.t.median_ms, r.tflops, r.tflops / dense_tflops,
                    dense_kernel.median_ms / r.t.median_ms);
        std::fflush(stdout);
        rows.push_back(r);
      }
    }
    cuda_ok(cudaDeviceSynchronize(), "kernel table");

    // The pipeline: one SparseAttention object at a time, each call a new denoising step.
    // Methods on Re-ttention's schedule: reference steps, and sparse steps on their mask.
    const bool rettention = o.method == Method::rettention ||
                            o.method == Method::rectified_rettention ||
                            o.method == Method::calibrated;
    const bool calibrated = o.method == Method::calibrated;
    const std::string sparsity =
        o.method == Method::dense ? "" : detail::concat(" at sparsity ", o.sparsity);
    std::printf("\npipeline: SparseAttention::forward, %s%s%s, %s\n", to_string(o.method),
                sparsity.c_str(),
                o.precision == Precision::fp8 && o.method != Method::dense ? ", FP8 operands" : "",
                o.grid.empty() ? "no grid (raster order, no neighbour map)"
                               : "gilbert order with the block neighbour map");
    // The density of the method's mask on these inputs, from calls of their own (reading the
    // mask back synchronises, so the timed objects leave it off).
    double mask_density = 1.0;
    if (o.method != Method::dense) {
      Config measured = o.config(o.method);
      measured.measure_density = true;
      if (rettention) measured.rettention.ref_period = 1 << 30;  // step 1 is a sparse step
      SparseAttention sa(measured);
      for (int s = 0; s <= (rettention ? 1 : 0); ++s)
        mask_density =
            sa.forward(CallInfo{.layer = 0, .entry = 0, .step = s}, args, out_v, stream.get())
                .density;
    }
    cuda_ok(cudaDeviceSynchronize(), "mask density");
    std::printf("mask density %.4f (share of query-key token pairs the method's mask computes)\n\n",
                mask_density);
    std::printf("%-44s %10s %9s\n", "call", "ms", "speed-up");
    std::fflush(stdout);

    std::vector<PipelineRow> lines;
    // Times `name`: a fresh object of `cfg` after untimed calls at the steps `primed`, then the
    // timed calls at the steps after the last of them. The object frees its memory when it
    // goes, after a synchronisation.
    auto run = [&](const std::string& name, const Config& cfg, std::vector<int> primed) {
      {
        SparseAttention sa(cfg);
        int step = 0;
        for (const int s : primed) {
          sa.forward(CallInfo{.layer = 0, .entry = 0, .step = s}, args, out_v, stream.get());
          step = s + 1;
        }
        const Timing t = timed([&](cudaStream_t s) {
          sa.forward(CallInfo{.layer = 0, .entry = 0, .step = step++}, args, out_v, s);
        });
        lines.push_back({name, t});
      }
      cuda_ok(cudaDeviceSynchronize(), name.c_str());
      const PipelineRow& l = lines.back();
      std::printf("%-44s %10.3f %8.2fx\n", l.call.c_str(), l.t.median_ms,
                  lines[0].t.median_ms / l.t.median_ms);
      std::fflush(stdout);
    };
    run("dense (SparseAttention \"dense\", 16-bit)", o.config(Method::dense), {});
    const std::string m = to_string(o.method);
    Config cfg = o.config(o.method);
    if (rettention && !calibrated) {
      cfg.rettention.ref_period = 1;  // every step a reference step
      run(m + " reference step", cfg, {});
      cfg.rettention.ref_period = 1 << 30;  // one reference step, then sparse steps only
      run(m + " sparse step", cfg, {0});
    } else if (calibrated) {
      // Reference steps after a first one, so that each measures the previous mask too; sparse
      // steps after two reference steps, so that the choices are measured ones (after the
      // first, every head takes Re-ttention's correction).
      cfg.rettention.ref_period = 1;
      run(m + " reference step", cfg, {0});
      cfg.rettention.ref_period = 1 << 20;
      run(m + " sparse step", cfg, {0, 1 << 20});
    } else if (o.method != Method::dense) {
      run(m + ", whole call (fresh selection)", cfg, {});
    }
    const double dense_ms = lines[0].t.median_ms;
    // Re-ttention's cost per call in a run: one reference step per period.
    double period_ms = 0;
    const int period = Config{}.rettention.ref_period;
    if (rettention) {
      period_ms = (lines[1].t.median_ms + (period - 1) * lines[2].t.median_ms) / period;
      const std::string what = detail::concat("mean per call, reference period ", period);
      std::printf("%-44s %10.3f %8.2fx\n", what.c_str(), period_ms, dense_ms / period_ms);
      std::fflush(stdout);
    }

    if (json.is_open()) {
      std::string j = detail::concat(
          "{\"version\": ", json_string(SPAATTN_VERSION),
          ",\n\"settings\": ", bench_settings_json(o), ",\n\"device\": {\"name\": ",
          json_string(prop.name), ", \"compute_capability\": \"", prop.major, ".", prop.minor,
          "\", \"memory_bytes\": ", total_bytes, "},\n\"memory_bytes\": ", need,
          ",\n\"dense\": {", timing_json(dense_kernel), ", \"tflops\": ",
          json_number(dense_tflops), "},\n\"quantize\": ",
          fp8_workspace ? detail::concat("{", timing_json(quantize), "}") : std::string("null"),
          ",\n\"rows\": [");
      for (size_t i = 0; i < rows.size(); ++i) {
        const KernelRow& r = rows[i];
        j += detail::concat(i ? "," : "", "\n  {\"density\": ", json_number(r.density),
                            ", \"token_density\": ", json_number(r.token_density), ", ",
                            timing_json(r.t), ", \"eff_tflops\": ", json_number(r.tflops),
                            ", \"eff_vs_dense\": ", json_number(r.tflops / dense_tflops),
                            ", \"speedup\": ",
                            json_number(dense_kernel.median_ms / r.t.median_ms), "}");
      }
      j += detail::concat("\n],\n\"pipeline\": {\"method\": \"", to_string(o.method),
                          "\", \"sparsity\": ", json_number(o.sparsity),
                          ", \"mask_density\": ", json_number(mask_density), ", \"rows\": [");
      for (size_t i = 0; i < lines.size(); ++i)
        j += detail::concat(i ? "," : "", "\n  {\"call\": ", json_string(lines[i].call), ", ",
                            timing_json(lines[i].t), ", \"speedup\": ",
                            json_number(dense_ms / lines[i].t.median_ms), "}");
      j += "\n]";
      if (rettention)
        j += detail::concat(", \"reference_period\": ", period,
                            ", \"period_mean_ms\": ", json_number(period_ms));
      json.commit(j + "}}\n");
    }
    return 0;
  } catch (const Error& e) {
    if (e.kind() == Error::Kind::invalid_argument) throw;  // main: "spaattn: --flag: ...", 2
    std::fprintf(stderr, "spaattn bench: %s\n", e.what());
    return 1;
  } catch (const std::runtime_error& e) {  // CUDA errors of the benchmark helpers
    std::fprintf(stderr, "spaattn bench: %s\n", e.what());
    return 1;
  }
}

}  // namespace spaattn::tools
