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
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <unistd.h>

#include "eval_options.hpp"
#include "plot.hpp"
#include "spaattn/error.hpp"
#include "spaattn/method.hpp"
#include "workload.hpp"

namespace spaattn::tools {
namespace {

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

// "12.3 s", "4 min 05 s".
std::string duration(double seconds) {
  char buf[32];
  if (seconds < 60) std::snprintf(buf, sizeof buf, "%.1f s", seconds);
  else std::snprintf(buf, sizeof buf, "%d min %02d s", static_cast<int>(seconds / 60),
                     static_cast<int>(seconds) % 60);
  return buf;
}

}  // namespace

int run_eval(int argc, char** argv) {
  const EvalOptions opt = parse_eval_args(std::vector<std::string>(argv, argv + argc));
  if (opt.help) {
    std::fputs(eval_help(), stdout);
    return 0;
  }
  if (opt.version) {
    std::printf("spaattn %s\n", SPAATTN_VERSION);
    return 0;
  }
  EvalOutputs outputs = check_eval_files(opt);
  const bool progress = opt.progress == ProgressMode::on ||
                        (opt.progress == ProgressMode::automatic && isatty(fileno(stderr)));

  // The calls: (layer, position in the layer's run, args). Synthetic: one layer, --steps steps.
  struct Call {
    int layer = 0, step = 0, label = 0;
    AttentionArgs args;
  };
  std::vector<Call> calls;
  std::vector<Workload> synthetic;
  CapturedWorkload captured;
  Grid grid = opt.spec.grid;
  std::string description, workload_json;
  if (opt.workload == "synthetic") {
    for (int s = 0; s < opt.steps; ++s) synthetic.push_back(make_workload(opt.spec, s, opt.block));
    for (int s = 0; s < opt.steps; ++s) calls.push_back(Call{0, s, s, synthetic[s].args()});
    description = detail::concat(
        "synthetic workload: grid ", grid.t, "x", grid.h, "x", grid.w, " (", grid.size(),
        " video tokens), ", opt.spec.num_text, " text (", opt.spec.text_len, " valid), ",
        opt.spec.heads, " heads, d=", opt.spec.head_dim, ", ", opt.steps, " steps");
    workload_json = detail::concat(
        "{\"kind\": \"synthetic\", \"grid\": [", grid.t, ", ", grid.h, ", ", grid.w,
        "], \"text\": ", opt.spec.num_text, ", \"text_len\": ", opt.spec.text_len,
        ", \"heads\": ", opt.spec.heads, ", \"dim\": ", opt.spec.head_dim,
        ", \"steps\": ", opt.steps, ", \"seed\": ", opt.spec.seed, "}");
  } else {
    captured = load_captured(opt.workload);
    grid = captured.grid;
    std::string layers, calls_json;
    for (size_t i = 0; i < captured.calls.size(); ++i) {
      const CapturedCall& c = captured.calls[i];
      calls.push_back(Call{c.layer, c.run_step, c.step, captured.args(i, opt.block)});
      if (c.run_step == 0)
        layers += detail::concat(i ? "; " : "", "layer ", c.layer, " steps ", c.step);
      else
        layers += detail::concat(", ", c.step);
      calls_json += detail::concat(i ? ", " : "", "{\"layer\": ", c.layer, ", \"step\": ",
                                   c.step, "}");
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
    workload_json = detail::concat(
        "{\"kind\": \"captured\", \"path\": ", json_string(captured.path), ", \"grid\": [",
        grid.t, ", ", grid.h, ", ", grid.w, "], \"text\": ", captured.num_text,
        ", \"batch\": ", captured.batch, ", \"heads\": ", captured.heads,
        ", \"dim\": ", captured.head_dim, ", \"calls\": [", calls_json, "]}");
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

  // The estimate of the time left assumes the remaining rows cost what the finished ones did on
  // average; the dense row, the slowest, runs first, so it errs on the long side.
  const size_t total_rows = 1 + opt.sparsities.size() * opt.methods.size();
  const auto start = std::chrono::steady_clock::now();
  std::vector<Row> rows;
  auto finished = [&](const Row& r) {
    rows.push_back(r);
    if (!progress) return;
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double left = elapsed / static_cast<double>(rows.size()) *
                        static_cast<double>(total_rows - rows.size());
    std::fprintf(stderr,
                 "spaattn eval: row %zu/%zu (%s, sparsity %.3f) done, %s elapsed, ~%s left\n",
                 rows.size(), total_rows, r.method.c_str(), r.sparsity, duration(elapsed).c_str(),
                 duration(left).c_str());
  };

  std::vector<std::vector<float>> dense_out;
  Config dense_cfg = base;
  dense_cfg.method = Method::dense;
  finished(run(dense_cfg, "dense", 0.0, nullptr, &dense_out));

  std::printf("%s\n  block %d, %s order, neighbours %s, p %.2f, Re-ttention reference period "
              "%d\n\n",
              description.c_str(), opt.block, order_name(opt.order), opt.neighbours ? "on" : "off",
              opt.p, opt.ref_period);
  std::fflush(stdout);
  for (double sp : opt.sparsities) {
    for (const auto& m : opt.methods) {
      Config cfg = base;
      cfg.select.sparsity = sp;
      cfg.method = m == "rectified-nogapr" ? Method::rectified : parse_method(m);
      cfg.gapr = m != "rectified-nogapr";
      finished(run(cfg, m, sp, &dense_out, nullptr));
    }
  }

  std::printf("%-22s %8s %8s %10s %9s %10s\n", "method", "sparsity", "density", "rel_l2", "cos",
              "ms/call");
  for (const Row& r : rows)
    std::printf("%-22s %8.3f %8.3f %10.5f %9.6f %10.2f\n", r.method.c_str(), r.sparsity,
                r.density, r.rel_l2, r.cos, r.ms);
  if (outputs.json.is_open()) {
    std::string json = detail::concat("{\"version\": ", json_string(SPAATTN_VERSION),
                                      ",\n\"settings\": ", settings_json(opt),
                                      ",\n\"workload\": ", workload_json, ",\n\"rows\": [");
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      char buf[512];
      std::snprintf(buf, sizeof buf,
                    "%s\n  {\"method\": \"%s\", \"sparsity\": %.4f, \"density\": %.6f, "
                    "\"rel_l2\": %.8f, \"cos\": %.8f, \"ms\": %.4f}",
                    i ? "," : "", r.method.c_str(), r.sparsity, r.density, r.rel_l2, r.cos, r.ms);
      json += buf;
    }
    outputs.json.commit(json + "\n]}\n");
  }
  if (outputs.plot.is_open()) {
    std::vector<PlotSeries> series;
    for (const Row& r : rows) {
      auto it = std::find_if(series.begin(), series.end(),
                             [&](const PlotSeries& s) { return s.name == r.method; });
      if (it == series.end()) it = series.insert(series.end(), PlotSeries{r.method, {}});
      it->points.emplace_back(r.density, r.rel_l2);
    }
    outputs.plot.commit(frontier_svg(series));
  }
  return 0;
}

}  // namespace spaattn::tools
