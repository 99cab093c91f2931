#include "bench_options.hpp"

#include <algorithm>
#include <array>
#include <limits>
#include <string_view>

#include "checked_math.hpp"
#include "cli_args.hpp"
#include "spaattn/error.hpp"

namespace spaattn::tools {
namespace {

constexpr int64_t kMaxInt = std::numeric_limits<int32_t>::max();
// The kernel needs seq_len < 2^31 - 1 and fewer than 2^31 - 1 mask entries (int32 indices).
constexpr int64_t kMaxTokens = kMaxInt - 1;
constexpr int64_t kMaxMaskEntries = kMaxInt - 1;
// The GPU stages take batch and heads in 16-bit grid dimensions.
constexpr int64_t kMaxBatchHeads = 65535;
constexpr int kMaxIters = 100000;

constexpr std::array<std::string_view, 17> kValueFlags = {
    "--batch",     "--seq",    "--grid",   "--text",      "--heads",    "--head-dim",
    "--block-size", "--dtype", "--densities", "--method", "--sparsity", "--kernel",
    "--precision", "--iters",  "--warmup", "--json",      "--block"};
constexpr std::array<std::string_view, 3> kSwitches = {"--help", "-h", "--version"};

const char* kHelp =
    "usage: spaattn bench [options]\n\n"
    "Times spaattn's GPU block-sparse attention kernel and a whole SparseAttention call on seeded\n"
    "random inputs of the given shape (a CUDA build and a CUDA device). Every time is the median\n"
    "of --iters calls, each between two CUDA events, after at least --warmup calls and 300 ms of\n"
    "warm-up: the timing of the benchmarks in bench/ (docs/benchmarks.md, 'spaattn bench').\n\n"
    "Kernel table, one row per density: cuda::block_sparse_attention (with its lse output) on a\n"
    "random block mask keeping max(1, round(density * blocks)) key blocks per query block.\n"
    "  token density  share of (query, key) token pairs the mask computes\n"
    "  ms             median time of one call\n"
    "  eff TFLOP/s    token density * 4 * batch * S^2 * d * heads / time (computed blocks only)\n"
    "  eff / dense    eff TFLOP/s over that of spaattn's dense call: the same kernel with every\n"
    "                 block (density 1), timed as the reference of every run\n"
    "  speed-up       the dense call's time over the row's\n"
    "Pipeline: SparseAttention::forward of --method at --sparsity (a fresh selection every call;\n"
    "the Re-ttention methods and calibrated: their reference and sparse steps) against\n"
    "SparseAttention(\"dense\") on the same tensors, and the speed-up.\n\n"
    "Every option with a value takes it as the next argument or after '=' (--seq=32768). All\n"
    "options and the --json path are checked before any GPU work; an invalid one exits with\n"
    "status 2 and a message naming the option. Without a CUDA device (or in a build without\n"
    "CUDA) the command exits with status 1 after the checks.\n\n"
    "shape (S = video + text tokens):\n"
    "  --batch N           batch size, 1 to 65535 (default 1)\n"
    "  --seq N             video tokens (default 16384); given alone, the video tokens have no\n"
    "                      grid: they stay in their order and the selection has no neighbour map\n"
    "  --grid TxHxW        the video latent grid; the pipeline puts the tokens in gilbert order\n"
    "                      and adds the block neighbour map (default 16x32x32 when --seq is not\n"
    "                      given; with --seq, T*H*W must equal it)\n"
    "  --text N            text tokens after the video tokens, all valid (default 0)\n"
    "  --heads H           attention heads, 1 to 65535 (default 8)\n"
    "  --head-dim D        64 or 128 (default 128)\n"
    "  --block-size B      block size, 64 or 128 (default 128; --block is the same)\n"
    "  --dtype T           bf16 or f16 (default bf16)\n"
    "kernel:\n"
    "  --densities LIST    comma-separated block densities in (0, 1] (default\n"
    "                      1,0.5,0.25,0.11,0.05)\n"
    "  --kernel F          kernel family: auto, portable or hopper (default auto: hopper on a\n"
    "                      compute capability 9.0 device with sm_90a code, else portable)\n"
    "  --precision P       the operands of the kernel table and of --method (not dense: the\n"
    "                      pipeline's dense call is the 16-bit reference): input (the\n"
    "                      tensors' 16-bit values) or fp8 (Q, K int8, V e4m3, quantised once\n"
    "                      per call: cuda::quantize_fp8, timed on its own, then\n"
    "                      cuda::block_sparse_attention_fp8; the Hopper family, block size 128)\n"
    "                      (default input)\n"
    "pipeline:\n"
    "  --method M          dense, sparse, rectified, rettention, rectified_rettention or\n"
    "                      calibrated (default rectified)\n"
    "  --sparsity S        target sparsity of the selection, in [0, 1) (default 0.9)\n"
    "timing:\n"
    "  --iters N           timed calls per measurement, 10 to 100000 (default 20)\n"
    "  --warmup N          least warm-up calls per measurement, 0 to 100000 (default 3)\n"
    "output:\n"
    "  --json FILE         also write {\"version\", \"settings\": {every option's value},\n"
    "                      \"device\", \"memory_bytes\", \"dense\", \"quantize\" (fp8; else\n"
    "                      null), \"rows\": [{density,\n"
    "                      token_density, ms, min_ms, max_ms, eff_tflops, eff_vs_dense,\n"
    "                      speedup}], \"pipeline\": {method, sparsity, mask_density, rows}}\n"
    "  --version           print the version of spaattn\n"
    "  --help              this text\n";

const char* dtype_name(DType t) { return t == DType::f16 ? "f16" : "bf16"; }

}  // namespace

const char* bench_help() { return kHelp; }

Layout BenchOptions::layout() const {
  return Layout{.num_video = seq, .num_text = text, .block_size = block};
}

Config BenchOptions::config(Method m) const {
  Config c;
  c.method = m;
  c.block_size = block;
  c.kernel = kernel;
  c.precision = m == Method::dense ? Precision::input : precision;
  c.select.sparsity = sparsity;
  if (!grid.empty()) {
    c.order.kind = OrderKind::gilbert;
    c.order.grid = grid;
  }
  return c;
}

BenchOptions parse_bench_args(const std::vector<std::string>& args) {
  BenchOptions o;
  bool seq_given = false, grid_given = false;
  for (const CommandOption& opt : split_options(args, kValueFlags, kSwitches, "bench")) {
    const std::string& flag = opt.flag;
    const std::string& val = opt.value;
    const char* f = flag.c_str();
    if (opt.is_switch) {
      (flag == "--version" ? o.version : o.help) = true;
      continue;
    }
    if (flag == "--batch")
      o.batch = parse_integer_flag<int64_t>(val, f, 1, kMaxBatchHeads);
    else if (flag == "--seq") {
      o.seq = parse_integer_flag<int64_t>(val, f, 1, kMaxTokens);
      seq_given = true;
    } else if (flag == "--grid") {
      o.grid = parse_grid_flag(val, f, kMaxTokens);
      grid_given = true;
    } else if (flag == "--text")
      o.text = parse_integer_flag<int64_t>(val, f, 0, kMaxTokens);
    else if (flag == "--heads")
      o.heads = parse_integer_flag<int64_t>(val, f, 1, kMaxBatchHeads);
    else if (flag == "--head-dim")
      o.head_dim = parse_choice_flag(val, f, {64, 128});
    else if (flag == "--block-size" || flag == "--block")
      o.block = parse_choice_flag(val, f, {64, 128});
    else if (flag == "--dtype") {
      SPAATTN_CHECK_ARG(val == "bf16" || val == "f16", f, "expected bf16 or f16, got '", val, "'");
      o.dtype = val == "f16" ? DType::f16 : DType::bf16;
    } else if (flag == "--densities") {
      o.densities.clear();
      for (const auto& s : split_list(val)) {
        const double d = parse_real_flag(s, f, 0.0, 1.0, /*hi_open=*/false, /*lo_open=*/true);
        SPAATTN_CHECK_ARG(std::find(o.densities.begin(), o.densities.end(), d) ==
                              o.densities.end(),
                          f, "density ", s, " given more than once");
        o.densities.push_back(d);
      }
    } else if (flag == "--method")
      o.method = parse_method(val, f);
    else if (flag == "--sparsity")
      o.sparsity = parse_real_flag(val, f, 0.0, 1.0, /*hi_open=*/true);
    else if (flag == "--kernel")
      o.kernel = parse_kernel_family(val, f);
    else if (flag == "--precision")
      o.precision = parse_precision(val, f);
    else if (flag == "--iters")
      o.iters = parse_integer_flag<int>(val, f, 10, kMaxIters);
    else if (flag == "--warmup")
      o.warmup = parse_integer_flag<int>(val, f, 0, kMaxIters);
    else if (flag == "--json") {
      SPAATTN_CHECK_ARG(!val.empty(), f, "expected a file name");
      o.json = val;
    }
  }
  // --seq alone: no grid. --grid alone: the grid's tokens. Both: they must agree.
  if (grid_given) {
    SPAATTN_CHECK_ARG(!seq_given || o.grid.size() == o.seq, "--grid", "expected T*H*W = --seq (",
                      o.seq, "), got ", o.grid.t, "x", o.grid.h, "x", o.grid.w, " (",
                      o.grid.size(), " tokens)");
    o.seq = o.grid.size();
  } else if (seq_given) {
    o.grid = Grid{};
  }

  if (o.precision == Precision::fp8) {
    SPAATTN_CHECK_ARG(o.block == 128, "--precision", "fp8 needs --block-size 128, got ", o.block);
    SPAATTN_CHECK_ARG(o.kernel != KernelFamily::portable, "--precision",
                      "fp8 runs on the hopper kernel family, not --kernel portable");
  }

  // The sizes, each checked before it is used: tokens, mask entries, then bytes.
  const auto seq_len = checked_add<int64_t>(o.seq, o.text, kMaxTokens);
  SPAATTN_CHECK_ARG(seq_len.has_value(), o.text > 0 ? "--text" : "--seq", "expected at most ",
                    kMaxTokens, " video + text tokens, got ", o.seq, " + ", o.text);
  const Layout L = o.layout();
  const int64_t nb = L.num_blocks();
  const std::array<int64_t, 4> entries = {o.batch, o.heads, nb, nb};
  SPAATTN_CHECK_ARG(checked_product<int64_t>(entries, kMaxMaskEntries).has_value(), "--seq",
                    "expected batch x heads x blocks^2 < 2^31 - 1 (int32 offsets of the block "
                    "mask), got ",
                    o.batch, " x ", o.heads, " x ", nb, "^2; lower --batch, --heads or --seq");
  const int64_t max_bytes = std::numeric_limits<int64_t>::max();
  const std::array<int64_t, 5> tensor = {o.batch, *seq_len, o.heads, o.head_dim,
                                         static_cast<int64_t>(element_size(o.dtype))};
  const std::array<int64_t, 4> lse = {o.batch, *seq_len, o.heads, 4};
  const std::array<int64_t, 4> cols = {o.batch * o.heads * nb, nb + 1, 4, 1};  // + offsets
  const auto tensor_bytes = checked_product<int64_t>(tensor, max_bytes);
  const auto lse_bytes = checked_product<int64_t>(lse, max_bytes);
  const auto mask_bytes = checked_product<int64_t>(cols, max_bytes);
  SPAATTN_CHECK_ARG(tensor_bytes && lse_bytes && mask_bytes, "--heads",
                    "expected tensors of at most ", max_bytes, " bytes, got ", o.batch, " x ",
                    *seq_len, " tokens x ", o.heads, " heads x ", o.head_dim);
  o.sizes.tensor = static_cast<uint64_t>(*tensor_bytes);
  o.sizes.lse = static_cast<uint64_t>(*lse_bytes);
  o.sizes.mask = static_cast<uint64_t>(*mask_bytes) + 4;
  o.config(o.method).validate();
  return o;
}

std::string bench_settings_json(const BenchOptions& o) {
  std::string densities;
  for (const double d : o.densities)
    densities += (densities.empty() ? "" : ", ") + json_number(d);
  const std::string grid =
      o.grid.empty() ? "null" : detail::concat("\"", o.grid.t, "x", o.grid.h, "x", o.grid.w, "\"");
  return detail::concat(
      "{\"batch\": ", o.batch, ", \"seq\": ", o.seq, ", \"grid\": ", grid,
      ", \"order\": \"", o.grid.empty() ? "raster" : "gilbert", "\", \"text\": ", o.text,
      ", \"heads\": ", o.heads, ", \"head_dim\": ", o.head_dim, ", \"block_size\": ", o.block,
      ", \"dtype\": \"", dtype_name(o.dtype), "\", \"densities\": [", densities,
      "], \"method\": \"", to_string(o.method), "\", \"sparsity\": ", json_number(o.sparsity),
      ", \"kernel\": \"", to_string(o.kernel), "\", \"precision\": \"", to_string(o.precision),
      "\", \"iters\": ", o.iters,
      ", \"warmup\": ", o.warmup, ", \"json\": ", o.json.empty() ? "null" : json_string(o.json),
      "}");
}

OutputFile check_bench_files(const BenchOptions& o) {
  return o.json.empty() ? OutputFile() : OutputFile(o.json, "--json");
}

uint64_t bench_device_bytes(const BenchOptions& o, uint64_t pipeline_bytes,
                            uint64_t kernel_workspace) {
  // Every term is below 2^50 for the shapes parse_bench_args accepts: no overflow.
  const uint64_t kernel = o.sizes.lse + o.sizes.mask + kernel_workspace;
  return 4 * o.sizes.tensor + std::max(kernel, pipeline_bytes) + kBenchReserveBytes;
}

}  // namespace spaattn::tools
