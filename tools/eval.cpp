// `spaattn eval`: runs every method over the calls of a workload and reports, per method and
// target sparsity, the achieved density, the output error against dense attention of the same
// call, and the time per call (CPU reference, wall clock). The default workload is Q/K/V captured
// from the testbed model (data/testbed_qkv.safetensors: a few sampler steps of one layer); the
// synthetic one (workload.hpp) stays available. The calls of each layer run in step order as one
// denoising run, so Re-ttention's first call of a layer is its full-attention reference step.
// Each row averages over all calls, reference steps included, so error and time are compared for
// the same amount of work.
#include "eval.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "checked_math.hpp"
#include "cli_args.hpp"
#include "spaattn/error.hpp"
#include "spaattn/method.hpp"
#include "workload.hpp"

#ifndef SPAATTN_DEFAULT_WORKLOAD
#define SPAATTN_DEFAULT_WORKLOAD "data/testbed_qkv.safetensors"
#endif

namespace spaattn::tools {
namespace {

constexpr int kMaxInt = std::numeric_limits<int>::max();

struct Options {
  std::string workload = SPAATTN_DEFAULT_WORKLOAD;  // a captured file, or "synthetic"
  std::vector<std::string> synthetic_flags;          // synthetic-only flags given
  WorkloadSpec spec;
  int block = 128;
  int steps = 5;
  int ref_period = 5;
  double p = 0.3;
  bool neighbours = false;
  OrderKind order = OrderKind::gilbert;
  std::vector<double> sparsities = {0.75, 0.85, 0.9, 0.95};
  std::vector<std::string> methods = {"sparse", "rectified", "rectified-nogapr", "rettention",
                                      "rectified_rettention"};
  std::string json;
};

const char* kHelp =
    "usage: spaattn eval [options]\n\n"
    "Compares dense attention, plain block-sparse attention, Rectified SpaAttn (GAPR on and off),\n"
    "Re-ttention and Rectified SpaAttn selection with Re-ttention's correction on Q/K/V captured\n"
    "from the testbed model, or on a deterministic synthetic workload (see README: 'The eval\n"
    "workload'). The calls of each captured layer run in step order as one denoising run; error\n"
    "is against dense attention of the same call, averaged over all calls; time is wall clock\n"
    "per call of the CPU implementation.\n\n"
    "options:\n"
    "  --workload FILE     captured Q/K/V (safetensors), or 'synthetic'\n"
    "                      (default " SPAATTN_DEFAULT_WORKLOAD ")\n"
    "  --block B           block size, 64 or 128 (default 128)\n"
    "  --order NAME        token order: gilbert, tiles or raster (default gilbert)\n"
    "  --sparsity LIST     comma-separated target sparsities in [0, 1) (default\n"
    "                      0.75,0.85,0.9,0.95)\n"
    "  --methods LIST      comma-separated from sparse, rectified, rectified-nogapr, rettention,\n"
    "                      rectified_rettention (default all)\n"
    "  --p P               cumulative attention share kept by selection, in [0, 1] (default 0.3)\n"
    "  --neighbours on|off add each block's 3D neighbour blocks to the selection (default off:\n"
    "                      on these small grids they alone cover 22-35% of the blocks at B=128)\n"
    "  --ref-period R      Re-ttention reference period >= 1, first reference at a layer's\n"
    "                      first call (default 5)\n"
    "  --json FILE         also write {\"rows\": [{method, sparsity, density, rel_l2, cos, ms}]}\n"
    "  --help              this text\n\n"
    "synthetic workload only:\n"
    "  --grid TxHxW        latent grid of the video tokens (default 8x16x24)\n"
    "  --text N            text tokens after the video tokens (default 128)\n"
    "  --text-len L        valid text tokens, L <= N (default 77)\n"
    "  --heads H           attention heads (default 4)\n"
    "  --dim D             head dim, 64 or 128 (default 64)\n"
    "  --steps N           denoising steps per run (default 5)\n"
    "  --seed S            workload seed, an integer in [0, 2^64) (default 2026)\n";

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t end = s.find(',', start);
    out.push_back(s.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return out;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 0; i < argc; ++i) {
    const std::string flag = argv[i];
    SPAATTN_CHECK_ARG(i + 1 < argc, flag, "expected a value");
    const std::string val = argv[++i];
    const char* f = flag.c_str();
    if (flag == "--grid" || flag == "--text" || flag == "--text-len" || flag == "--heads" ||
        flag == "--dim" || flag == "--steps" || flag == "--seed")
      o.synthetic_flags.push_back(flag);
    if (flag == "--workload") {
      SPAATTN_CHECK_ARG(!val.empty(), f, "expected a file or 'synthetic'");
      o.workload = val;
    } else if (flag == "--grid") o.spec.grid = parse_grid_flag(val, f);
    else if (flag == "--text") o.spec.num_text = parse_integer_flag<int64_t>(val, f, 0, kMaxInt);
    else if (flag == "--text-len")
      o.spec.text_len = parse_integer_flag<int64_t>(val, f, 0, kMaxInt);
    else if (flag == "--heads") o.spec.heads = parse_integer_flag<int64_t>(val, f, 1, kMaxInt);
    else if (flag == "--dim") o.spec.head_dim = parse_choice_flag(val, f, {64, 128});
    else if (flag == "--block") o.block = parse_choice_flag(val, f, {64, 128});
    else if (flag == "--steps") o.steps = parse_integer_flag<int>(val, f, 1, kMaxInt);
    else if (flag == "--ref-period") o.ref_period = parse_integer_flag<int>(val, f, 1, kMaxInt);
    else if (flag == "--seed") {
      o.spec.seed = parse_integer_flag<uint64_t>(val, f, 0, std::numeric_limits<uint64_t>::max());
    } else if (flag == "--p") o.p = parse_real_flag(val, f, 0.0, 1.0);
    else if (flag == "--json") o.json = val;
    else if (flag == "--neighbours") {
      SPAATTN_CHECK_ARG(val == "on" || val == "off", f, "expected on or off, got '", val, "'");
      o.neighbours = val == "on";
    }
    else if (flag == "--order") {
      SPAATTN_CHECK_ARG(val == "gilbert" || val == "tiles" || val == "raster", f,
                        "expected gilbert, tiles or raster, got '", val, "'");
      o.order = val == "gilbert" ? OrderKind::gilbert : val == "tiles" ? OrderKind::tiles
                                                                       : OrderKind::raster;
    } else if (flag == "--sparsity") {
      o.sparsities.clear();
      for (const auto& s : split(val))
        o.sparsities.push_back(parse_real_flag(s, f, 0.0, 1.0, /*hi_open=*/true));
    } else if (flag == "--methods") {
      o.methods = split(val);
      for (const auto& m : o.methods)
        SPAATTN_CHECK_ARG(m == "sparse" || m == "rectified" || m == "rectified-nogapr" ||
                              m == "rettention" || m == "rectified_rettention",
                          f, "unknown method '", m, "'");
    } else {
      SPAATTN_CHECK_ARG(false, flag, "unknown option (see spaattn eval --help)");
    }
  }
  SPAATTN_CHECK_ARG(o.workload == "synthetic" || o.synthetic_flags.empty(),
                    o.synthetic_flags.empty() ? "--workload" : o.synthetic_flags[0].c_str(),
                    "applies to the synthetic workload only (add --workload synthetic)");
  SPAATTN_CHECK_ARG(o.spec.text_len <= o.spec.num_text, "--text-len", "expected <= --text (",
                    o.spec.num_text, "), got ", o.spec.text_len);
  // The synthetic tensors hold (video + text tokens) * heads * dim floats.
  const auto seq = checked_add<int64_t>(o.spec.grid.size(), o.spec.num_text, kMaxInt);
  SPAATTN_CHECK_ARG(seq.has_value(), "--text", "expected at most ", kMaxInt,
                    " video + text tokens, got ", o.spec.grid.size(), " + ", o.spec.num_text);
  const std::array<int64_t, 3> dims = {*seq, o.spec.heads, o.spec.head_dim};
  const int64_t max_floats = static_cast<int64_t>(
      std::min<uint64_t>(std::numeric_limits<int64_t>::max(), SIZE_MAX / sizeof(float)));
  SPAATTN_CHECK_ARG(checked_product<int64_t>(dims, max_floats).has_value(), "--heads",
                    "expected tensors of at most ", max_floats, " elements, got ", *seq,
                    " tokens x ", o.spec.heads, " heads x ", o.spec.head_dim);
  return o;
}

struct Row {
  std::string method;
  double sparsity = 0, density = 0, rel_l2 = 0, cos = 0, ms = 0;
};

// Relative L2 error and mean cosine similarity over the rows that dense attention writes.
void compare(const std::vector<float>& out, const std::vector<float>& ref, int64_t dim,
             double& rel_l2, double& cos) {
  double err = 0, norm = 0, cos_sum = 0;
  int64_t rows = 0;
  for (size_t r = 0; r < ref.size() / dim; ++r) {
    double dot = 0, na = 0, nb = 0;
    for (int64_t e = 0; e < dim; ++e) {
      const double a = out[r * dim + e], b = ref[r * dim + e];
      err += (a - b) * (a - b);
      norm += b * b;
      dot += a * b;
      na += a * a;
      nb += b * b;
    }
    if (nb == 0) continue;  // padding rows: zero in both
    cos_sum += na > 0 ? dot / std::sqrt(na * nb) : 0.0;
    ++rows;
  }
  rel_l2 = std::sqrt(err / norm);
  cos = cos_sum / static_cast<double>(rows);
}

}  // namespace

int run_eval(int argc, char** argv) {
  for (int i = 0; i < argc; ++i)
    if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) {
      std::fputs(kHelp, stdout);
      return 0;
    }
  const Options opt = parse(argc, argv);

  // The calls: (layer, position in the layer's run, args). Synthetic: one layer, --steps steps.
  struct Call {
    int layer = 0, step = 0, label = 0;
    AttentionArgs args;
  };
  std::vector<Call> calls;
  std::vector<Workload> synthetic;
  CapturedWorkload captured;
  Grid grid = opt.spec.grid;
  std::string description;
  if (opt.workload == "synthetic") {
    for (int s = 0; s < opt.steps; ++s) synthetic.push_back(make_workload(opt.spec, s, opt.block));
    for (int s = 0; s < opt.steps; ++s) calls.push_back(Call{0, s, s, synthetic[s].args()});
    description = detail::concat(
        "synthetic workload: grid ", grid.t, "x", grid.h, "x", grid.w, " (", grid.size(),
        " video tokens), ", opt.spec.num_text, " text (", opt.spec.text_len, " valid), ",
        opt.spec.heads, " heads, d=", opt.spec.head_dim, ", ", opt.steps, " steps");
  } else {
    SPAATTN_CHECK_ARG(std::ifstream(opt.workload).good(), "--workload", "cannot open '",
                      opt.workload, "' (expected captured Q/K/V, or 'synthetic')");
    captured = load_captured(opt.workload);
    grid = captured.grid;
    std::string layers;
    for (size_t i = 0; i < captured.calls.size(); ++i) {
      const CapturedCall& c = captured.calls[i];
      calls.push_back(Call{c.layer, c.run_step, c.step, captured.args(i, opt.block)});
      if (c.run_step == 0)
        layers += detail::concat(i ? "; " : "", "layer ", c.layer, " steps ", c.step);
      else
        layers += detail::concat(", ", c.step);
    }
    std::string lengths;
    for (int32_t l : captured.calls[0].text_lengths)
      lengths += detail::concat(lengths.empty() ? "" : ",", l);
    const auto model = captured.metadata.find("model_step");
    description = detail::concat(
        "captured workload ", captured.path,
        model != captured.metadata.end() ? " (testbed model after " + model->second + " steps)" : "",
        ":\n  grid ", grid.t, "x", grid.h, "x", grid.w, " (", grid.size(), " video tokens), ",
        captured.num_text, " text (", lengths, " valid), batch ", captured.batch, ", ",
        captured.heads, " heads, d=", captured.head_dim, ", calls: ", layers);
  }

  auto run = [&](const Config& cfg, const std::string& name, double sparsity,
                 const std::vector<std::vector<float>>* ref,
                 std::vector<std::vector<float>>* outs) {
    SparseAttention sa(cfg);
    Row row{name, sparsity};
    for (size_t i = 0; i < calls.size(); ++i) {
      const AttentionArgs& a = calls[i].args;
      const int64_t B = a.batch(), S = a.seq_len(), H = a.heads(), D = a.head_dim();
      std::vector<float> out(static_cast<size_t>(B * S * H * D));
      const auto t0 = std::chrono::steady_clock::now();
      const CallStats st =
          sa.forward(CallInfo{calls[i].layer, 0, calls[i].step}, a,
                     TensorView::contiguous(out.data(), DType::f32, {B, S, H, D}));
      row.ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                    .count();
      row.density += st.density;
      if (ref) {
        double e = 0, c = 0;
        compare(out, (*ref)[i], D, e, c);
        row.rel_l2 += e;
        row.cos += c;
      }
      if (outs) outs->push_back(std::move(out));
    }
    const double n = static_cast<double>(calls.size());
    row.ms /= n;
    row.density /= n;
    row.rel_l2 = ref ? row.rel_l2 / n : 0.0;
    row.cos = ref ? row.cos / n : 1.0;
    return row;
  };

  Config base;
  base.block_size = opt.block;
  base.order.kind = opt.order;
  base.order.grid = grid;
  base.select.p = opt.p;
  base.select.neighbours = opt.neighbours;
  base.rettention.ref_period = opt.ref_period;

  std::vector<Row> rows;
  std::vector<std::vector<float>> dense_out;
  Config dense_cfg = base;
  dense_cfg.method = Method::dense;
  rows.push_back(run(dense_cfg, "dense", 0.0, nullptr, &dense_out));

  std::printf("%s\n  block %d, %s order, neighbours %s, p %.2f, Re-ttention reference period %d\n\n",
              description.c_str(), opt.block,
              opt.order == OrderKind::gilbert ? "gilbert" : opt.order == OrderKind::tiles ? "tiles"
                                                                                         : "raster",
              opt.neighbours ? "on" : "off", opt.p, opt.ref_period);
  for (double sp : opt.sparsities) {
    for (const auto& m : opt.methods) {
      Config cfg = base;
      cfg.select.sparsity = sp;
      cfg.method = m == "rectified-nogapr" ? Method::rectified : parse_method(m);
      cfg.gapr = m != "rectified-nogapr";
      rows.push_back(run(cfg, m, sp, &dense_out, nullptr));
    }
  }

  std::printf("%-22s %8s %8s %10s %9s %10s\n", "method", "sparsity", "density", "rel_l2", "cos",
              "ms/call");
  for (const Row& r : rows)
    std::printf("%-22s %8.3f %8.3f %10.5f %9.6f %10.2f\n", r.method.c_str(), r.sparsity,
                r.density, r.rel_l2, r.cos, r.ms);
  if (!opt.json.empty()) {
    std::ofstream f(opt.json);
    SPAATTN_CHECK_ARG(f.good(), "--json", "cannot write '", opt.json, "'");
    f << "{\"rows\": [";
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      char buf[512];
      std::snprintf(buf, sizeof buf,
                    "%s\n  {\"method\": \"%s\", \"sparsity\": %.4f, \"density\": %.6f, "
                    "\"rel_l2\": %.8f, \"cos\": %.8f, \"ms\": %.4f}",
                    i ? "," : "", r.method.c_str(), r.sparsity, r.density, r.rel_l2, r.cos, r.ms);
      f << buf;
    }
    f << "\n]}\n";
  }
  return 0;
}

}  // namespace spaattn::tools
