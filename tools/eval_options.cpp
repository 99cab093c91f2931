#include "eval_options.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string_view>
#include <system_error>
#include <utility>

#include "checked_math.hpp"
#include "cli_args.hpp"
#include "spaattn/error.hpp"

namespace spaattn::tools {
namespace {

constexpr int kMaxInt = std::numeric_limits<int>::max();

constexpr std::array<std::string_view, 7> kMethods = {
    "dense",      "sparse",               "rectified", "rectified-nogapr",
    "rettention", "rectified_rettention", "calibrated"};

// Flags that take a value, and the synthetic-only ones among them.
constexpr std::array<std::string_view, 17> kValueFlags = {
    "--workload",   "--block",      "--order", "--sparsity", "--methods", "--p",
    "--neighbours", "--ref-period", "--json",  "--plot",     "--grid",    "--text",
    "--text-len",   "--heads",      "--dim",   "--steps",    "--seed"};
constexpr std::array<std::string_view, 7> kSyntheticFlags = {
    "--grid", "--text", "--text-len", "--heads", "--dim", "--steps", "--seed"};
constexpr std::array<std::string_view, 5> kSwitches = {"--help", "-h", "--version", "--progress",
                                                       "--no-progress"};

template <size_t N>
bool contains(const std::array<std::string_view, N>& list, std::string_view s) {
  return std::find(list.begin(), list.end(), s) != list.end();
}

std::string errno_text(int err) { return std::strerror(err); }

const char* kHelp =
    "usage: spaattn eval [options]\n\n"
    "Compares dense attention, plain block-sparse attention, Rectified SpaAttn (GAPR on and off),\n"
    "Re-ttention, Rectified SpaAttn selection with Re-ttention's correction and the calibrated\n"
    "correction (per head, the candidate with the least error at reference steps) on Q/K/V\n"
    "captured from the testbed model, or on a deterministic synthetic workload (see README: 'The\n"
    "eval workload'). The calls of each captured layer run in step order as one denoising run;\n"
    "error is against dense attention of the same call, averaged over all calls; time is wall\n"
    "clock per call of the CPU implementation.\n\n"
    "Every option with a value takes it as the next argument or after '=' (--sparsity=0.9).\n"
    "All options, the --workload file and the output paths are checked before the evaluation\n"
    "starts; an invalid one exits with status 2 and a message naming the option.\n\n"
    "options:\n"
    "  --workload FILE     captured Q/K/V (safetensors), or 'synthetic'\n"
    "                      (default " SPAATTN_DEFAULT_WORKLOAD
    ")\n"
    "  --block B           block size, 64 or 128 (default 128)\n"
    "  --order NAME        token order: gilbert, tiles or raster (default gilbert)\n"
    "  --sparsity LIST     comma-separated target sparsities in [0, 1) (default\n"
    "                      0.75,0.85,0.9,0.95)\n"
    "  --methods LIST      comma-separated, each at most once, from dense, sparse, rectified,\n"
    "                      rectified-nogapr, rettention, rectified_rettention, calibrated\n"
    "                      (default all but calibrated);\n"
    "                      the dense row is always computed, as the reference of the errors\n"
    "  --p P               cumulative attention share kept by selection, in [0, 1] (default 0.3)\n"
    "  --neighbours on|off add each block's 3D neighbour blocks to the selection (default off:\n"
    "                      on these small grids they alone cover 22-35% of the blocks at B=128)\n"
    "  --ref-period R      Re-ttention (and calibrated) reference period >= 1, first reference\n"
    "                      at a layer's first call (default 5)\n"
    "  --json FILE         also write {\"version\", \"settings\": {every option's value},\n"
    "                      \"workload\": {kind, path or synthetic parameters, shapes},\n"
    "                      \"rows\": [{method, sparsity, density, rel_l2, cos, ms}]}\n"
    "  --plot FILE         also write an SVG plot of relative L2 error against achieved\n"
    "                      density, one line per method (the speed-error frontier)\n"
    "  --progress          print a line per finished row on stderr, with the elapsed time and\n"
    "                      an estimate of the time left (default: only when stderr is a\n"
    "                      terminal)\n"
    "  --no-progress       never print progress\n"
    "  --version           print the version of spaattn\n"
    "  --help              this text\n\n"
    "synthetic workload only:\n"
    "  --grid TxHxW        latent grid of the video tokens (default 8x16x24)\n"
    "  --text N            text tokens after the video tokens (default 128)\n"
    "  --text-len L        valid text tokens, L <= N (default 77)\n"
    "  --heads H           attention heads (default 4)\n"
    "  --dim D             head dim, 64 or 128 (default 64)\n"
    "  --steps N           denoising steps per run (default 5)\n"
    "  --seed S            workload seed, an integer in [0, 2^64) (default 2026)\n";

}  // namespace

const char* eval_help() { return kHelp; }

const char* order_name(OrderKind kind) {
  return kind == OrderKind::gilbert ? "gilbert" : kind == OrderKind::tiles ? "tiles" : "raster";
}

EvalOptions parse_eval_args(const std::vector<std::string>& args) {
  EvalOptions o;
  for (const CommandOption& opt : split_options(args, kValueFlags, kSwitches, "eval")) {
    const std::string& flag = opt.flag;
    const std::string& val = opt.value;
    const char* f = flag.c_str();
    if (opt.is_switch) {
      if (flag == "--help" || flag == "-h")
        o.help = true;
      else if (flag == "--version")
        o.version = true;
      else
        o.progress = flag == "--progress" ? ProgressMode::on : ProgressMode::off;
      continue;
    }
    if (contains(kSyntheticFlags, flag)) o.synthetic_flags.push_back(flag);
    if (flag == "--workload") {
      SPAATTN_CHECK_ARG(!val.empty(), f, "expected a file or 'synthetic'");
      o.workload = val;
    } else if (flag == "--grid")
      o.spec.grid = parse_grid_flag(val, f);
    else if (flag == "--text")
      o.spec.num_text = parse_integer_flag<int64_t>(val, f, 0, kMaxInt);
    else if (flag == "--text-len")
      o.spec.text_len = parse_integer_flag<int64_t>(val, f, 0, kMaxInt);
    else if (flag == "--heads")
      o.spec.heads = parse_integer_flag<int64_t>(val, f, 1, kMaxInt);
    else if (flag == "--dim")
      o.spec.head_dim = parse_choice_flag(val, f, {64, 128});
    else if (flag == "--block")
      o.block = parse_choice_flag(val, f, {64, 128});
    else if (flag == "--steps")
      o.steps = parse_integer_flag<int>(val, f, 1, kMaxInt);
    else if (flag == "--ref-period")
      o.ref_period = parse_integer_flag<int>(val, f, 1, kMaxInt);
    else if (flag == "--seed") {
      o.spec.seed = parse_integer_flag<uint64_t>(val, f, 0, std::numeric_limits<uint64_t>::max());
    } else if (flag == "--p")
      o.p = parse_real_flag(val, f, 0.0, 1.0);
    else if (flag == "--json" || flag == "--plot") {
      SPAATTN_CHECK_ARG(!val.empty(), f, "expected a file name");
      (flag == "--json" ? o.json : o.plot) = val;
    } else if (flag == "--neighbours") {
      SPAATTN_CHECK_ARG(val == "on" || val == "off", f, "expected on or off, got '", val, "'");
      o.neighbours = val == "on";
    } else if (flag == "--order") {
      SPAATTN_CHECK_ARG(val == "gilbert" || val == "tiles" || val == "raster", f,
                        "expected gilbert, tiles or raster, got '", val, "'");
      o.order = val == "gilbert" ? OrderKind::gilbert
                : val == "tiles" ? OrderKind::tiles
                                 : OrderKind::raster;
    } else if (flag == "--sparsity") {
      o.sparsities.clear();
      for (const auto& s : split_list(val))
        o.sparsities.push_back(parse_real_flag(s, f, 0.0, 1.0, /*hi_open=*/true));
    } else if (flag == "--methods") {
      // "dense" is accepted as a name of its row but adds no computation: dense attention
      // always runs once, as the reference of every other row.
      const std::vector<std::string> names = split_list(val);
      o.methods.clear();
      for (const auto& m : names) {
        SPAATTN_CHECK_ARG(contains(kMethods, m), f, "unknown method '", m,
                          "' (expected dense, sparse, rectified, rectified-nogapr, rettention, "
                          "rectified_rettention or calibrated)");
        SPAATTN_CHECK_ARG(std::count(names.begin(), names.end(), m) == 1, f, "method '", m,
                          "' given more than once");
        if (m != "dense") o.methods.push_back(m);
      }
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

std::string settings_json(const EvalOptions& o) {
  std::string sparsity, methods;
  for (const double s : o.sparsities) sparsity += (sparsity.empty() ? "" : ", ") + json_number(s);
  for (const auto& m : o.methods) methods += (methods.empty() ? "" : ", ") + json_string(m);
  const char* progress = o.progress == ProgressMode::on    ? "on"
                         : o.progress == ProgressMode::off ? "off"
                                                           : "auto";
  const Grid& g = o.spec.grid;
  // The synthetic-only options are recorded with their values even for a captured workload,
  // so that every run's settings have the same keys.
  return detail::concat(
      "{\"workload\": ", json_string(o.workload), ", \"block\": ", o.block, ", \"order\": \"",
      order_name(o.order), "\", \"sparsity\": [", sparsity, "], \"methods\": [", methods,
      "], \"p\": ", json_number(o.p), ", \"neighbours\": \"", o.neighbours ? "on" : "off",
      "\", \"ref_period\": ", o.ref_period,
      ", \"json\": ", o.json.empty() ? "null" : json_string(o.json),
      ", \"plot\": ", o.plot.empty() ? "null" : json_string(o.plot), ", \"progress\": \"", progress,
      "\", \"grid\": \"", g.t, "x", g.h, "x", g.w, "\", \"text\": ", o.spec.num_text,
      ", \"text_len\": ", o.spec.text_len, ", \"heads\": ", o.spec.heads,
      ", \"dim\": ", o.spec.head_dim, ", \"steps\": ", o.steps, ", \"seed\": ", o.spec.seed, "}");
}

EvalOutputs check_eval_files(const EvalOptions& o) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (o.workload != "synthetic") {
    SPAATTN_CHECK_ARG(!fs::is_directory(o.workload, ec), "--workload", "cannot open '", o.workload,
                      "' (", errno_text(EISDIR), "; expected captured Q/K/V, or 'synthetic')");
    std::FILE* f = std::fopen(o.workload.c_str(), "rb");
    const int err = errno;
    SPAATTN_CHECK_ARG(f != nullptr, "--workload", "cannot open '", o.workload, "' (",
                      errno_text(err), "; expected captured Q/K/V, or 'synthetic')");
    std::fclose(f);
  }
  // An output that names the input, or both outputs the same file, would lose data.
  auto same = [&](const std::string& a, const std::string& b) {
    return fs::equivalent(a, b, ec) ||
           fs::path(a).lexically_normal() == fs::path(b).lexically_normal();
  };
  for (const auto& [path, flag] : {std::pair{&o.json, "--json"}, std::pair{&o.plot, "--plot"}})
    SPAATTN_CHECK_ARG(path->empty() || o.workload == "synthetic" || !same(*path, o.workload), flag,
                      "'", *path, "' is the --workload file");
  SPAATTN_CHECK_ARG(o.json.empty() || o.plot.empty() || !same(o.json, o.plot), "--plot", "'",
                    o.plot, "' is also the --json file");
  EvalOutputs out;
  if (!o.json.empty()) out.json = OutputFile(o.json, "--json");
  if (!o.plot.empty()) out.plot = OutputFile(o.plot, "--plot");
  return out;
}

}  // namespace spaattn::tools
