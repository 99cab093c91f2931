// Strict parsing of the numeric flags of `spaattn eval` and `spaattn bench` (tools/cli_args.hpp),
// the overflow-checked size arithmetic behind it (tools/checked_math.hpp), the option parsers
// (tools/eval_options.hpp, tools/bench_options.hpp), the output files (tools/output.hpp) and the
// SVG writer (tools/plot.hpp). The flags themselves, run through the built tool, are tested by the
// cli_* CTest cases in tests/CMakeLists.txt.
#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "bench_options.hpp"
#include "checked_math.hpp"
#include "cli_args.hpp"
#include "eval_options.hpp"
#include "plot.hpp"
#include "testing.hpp"

namespace spaattn::testing {
namespace {

using tools::parse_choice_flag;
using tools::parse_grid_flag;
using tools::parse_integer_flag;
using tools::parse_real_flag;

constexpr int kMaxInt = std::numeric_limits<int>::max();
constexpr uint64_t kMaxU64 = std::numeric_limits<uint64_t>::max();

TEST(CliArgs, IntegersAreParsedWholeAndInRange) {
  EXPECT_EQ(parse_integer_flag<int>("5", "--ref-period", 1, kMaxInt), 5);
  EXPECT_EQ(parse_integer_flag<int>("2147483647", "--ref-period", 1, kMaxInt), kMaxInt);
  EXPECT_EQ(parse_integer_flag<uint64_t>("18446744073709551615", "--seed", 0, kMaxU64), kMaxU64);
  EXPECT_EQ(parse_integer_flag<uint64_t>("0", "--seed", 0, kMaxU64), 0u);
  EXPECT_EQ(parse_integer_flag<int64_t>("-3", "--x", -5, 5), -3);

  const std::string ref_range = "expected an integer in [1, 2147483647], got ";
  for (const char* bad : {"1e10", "2147483648", "0", "-1", "2.0", "2.5", "", " 5", "5 ", "+5",
                          "0x10", "5abc", "nan", "inf", "99999999999999999999999"})
    expect_error([&] { parse_integer_flag<int>(bad, "--ref-period", 1, kMaxInt); },
                 "--ref-period", ref_range + "'" + bad + "'");
  const std::string seed_range = "expected an integer in [0, 18446744073709551615], got ";
  for (const char* bad : {"1e300", "18446744073709551616", "-1", "-0", "2026.5", "1e3"})
    expect_error([&] { parse_integer_flag<uint64_t>(bad, "--seed", 0, kMaxU64); }, "--seed",
                 seed_range + "'" + bad + "'");
}

TEST(CliArgs, RealsAreFiniteAndInRange) {
  EXPECT_EQ(parse_real_flag("0.3", "--p", 0.0, 1.0), 0.3);
  EXPECT_EQ(parse_real_flag("1", "--p", 0.0, 1.0), 1.0);
  EXPECT_EQ(parse_real_flag("0", "--sparsity", 0.0, 1.0, true), 0.0);
  EXPECT_EQ(parse_real_flag("9.5e-1", "--sparsity", 0.0, 1.0, true), 0.95);
  for (const char* bad : {"nan", "NaN", "inf", "-inf", "1e400", "1.5", "-0.1", "", "0.5x", " 0.5",
                          "+0.5", "0x1p-1", "0.5,"})
    expect_error([&] { parse_real_flag(bad, "--p", 0.0, 1.0); }, "--p",
                 std::string("expected a number in [0, 1], got '") + bad + "'");
  expect_error([] { parse_real_flag("1", "--sparsity", 0.0, 1.0, true); }, "--sparsity",
               "expected a number in [0, 1), got '1'");
  // (0, 1]: the densities of spaattn bench.
  EXPECT_EQ(parse_real_flag("1", "--densities", 0.0, 1.0, false, true), 1.0);
  EXPECT_EQ(parse_real_flag("5e-324", "--densities", 0.0, 1.0, false, true), 5e-324);
  for (const char* bad : {"0", "-0", "0.0", "-1", "1.0001"})
    expect_error([&] { parse_real_flag(bad, "--densities", 0.0, 1.0, false, true); },
                 "--densities", std::string("expected a number in (0, 1], got '") + bad + "'");
}

TEST(CliArgs, ListsAndOptions) {
  EXPECT_EQ(tools::split_list("0.5"), std::vector<std::string>{"0.5"});
  EXPECT_EQ(tools::split_list(""), std::vector<std::string>{""});
  EXPECT_EQ(tools::split_list("a,,b,"), (std::vector<std::string>{"a", "", "b", ""}));

  const std::array<std::string_view, 2> values = {"--seq", "--json"};
  const std::array<std::string_view, 1> switches = {"--help"};
  const auto opts = tools::split_options({"--seq", "4096", "--help", "--json=a=b", "--seq="},
                                         values, switches, "bench");
  ASSERT_EQ(opts.size(), 4u);
  EXPECT_EQ(opts[0].flag, "--seq");
  EXPECT_EQ(opts[0].value, "4096");
  EXPECT_FALSE(opts[0].is_switch);
  EXPECT_TRUE(opts[1].is_switch);
  EXPECT_EQ(opts[2].flag, "--json");
  EXPECT_EQ(opts[2].value, "a=b");  // only the first '=' separates
  EXPECT_EQ(opts[3].value, "");
  // A value may start with '-' ("--text -1" is then rejected by the number's range, not here).
  EXPECT_EQ(tools::split_options({"--seq", "--help"}, values, switches, "bench")[0].value,
            "--help");
  expect_error([&] { tools::split_options({"--seq"}, values, switches, "bench"); }, "--seq",
               "expected a value");
  expect_error([&] { tools::split_options({"--help=1"}, values, switches, "bench"); }, "--help",
               "takes no value, got '1'");
  expect_error([&] { tools::split_options({"--nope", "1"}, values, switches, "bench"); }, "--nope",
               "unknown option (see spaattn bench --help)");
  expect_error([&] { tools::split_options({"4096"}, values, switches, "eval"); }, "4096",
               "unknown option (see spaattn eval --help)");
}

TEST(CliArgs, ChoicesAndGrids) {
  EXPECT_EQ(parse_choice_flag("64", "--block", {64, 128}), 64);
  EXPECT_EQ(parse_choice_flag("128", "--dim", {64, 128}), 128);
  for (const char* bad : {"96", "64.0", "6.4e1", "4294967360", "-64", ""})
    expect_error([&] { parse_choice_flag(bad, "--block", {64, 128}); }, "--block",
                 std::string("expected 64 or 128, got '") + bad + "'");

  const Grid g = parse_grid_flag("8x16x24", "--grid");
  EXPECT_EQ(g.t, 8);
  EXPECT_EQ(g.h, 16);
  EXPECT_EQ(g.w, 24);
  EXPECT_EQ(parse_grid_flag("1x1x2147483647", "--grid").w, 2147483647);
  for (const char* bad : {"8x16", "8x16x24x2", "8x16x24x", "8x16x", "x8x16", "8x0x24",
                          "8x-1x24", "8x16x2.5", "8 x16x24", "8X16X24", "1e1x2x2",
                          "9223372036854775808x1x1", ""})
    expect_error([&] { parse_grid_flag(bad, "--grid"); }, "--grid", std::string("'") + bad + "'");
  expect_error([] { parse_grid_flag("65536x65536x2", "--grid"); }, "--grid",
               "expected at most 2147483647 video tokens, got '65536x65536x2'");
  expect_error([] { parse_grid_flag("8x16x24x2", "--grid"); }, "--grid",
               "expected TxHxW, got '8x16x24x2'");
}

// Against 128-bit arithmetic on seeded values around the overflow boundaries.
TEST(CheckedMath, MatchesWideArithmetic) {
  std::mt19937_64 rng(11);
  const int64_t max = std::numeric_limits<int64_t>::max();
  // Magnitudes of every bit length, so that products land on both sides of the limits.
  auto magnitude = [&] { return static_cast<int64_t>(rng() >> (1 + rng() % 63)); };
  auto draw = [&] {
    const int64_t v = magnitude();
    return rng() % 8 == 0 ? -v - 1 : v;
  };
  for (int i = 0; i < 20000; ++i) {
    const int64_t a = draw(), b = draw();
    const int64_t limit = rng() % 2 ? max : magnitude();
    const __int128 prod = static_cast<__int128>(a) * b, sum = static_cast<__int128>(a) + b;
    const bool mul_ok = a >= 0 && b >= 0 && a <= limit && b <= limit && prod <= limit;
    const bool add_ok = a >= 0 && b >= 0 && a <= limit && b <= limit && sum <= limit;
    const auto m = tools::checked_mul(a, b, limit);
    const auto s = tools::checked_add(a, b, limit);
    ASSERT_EQ(m.has_value(), mul_ok) << a << " * " << b << " within " << limit;
    ASSERT_EQ(s.has_value(), add_ok) << a << " + " << b << " within " << limit;
    if (m) {
      ASSERT_TRUE(*m == prod) << a << " * " << b;
    }
    if (s) {
      ASSERT_TRUE(*s == sum) << a << " + " << b;
    }
  }
  // A zero after an overflowing prefix does not hide the overflow.
  const std::array<int64_t, 3> wraps = {int64_t{1} << 62, 4, 0};
  EXPECT_FALSE(tools::checked_product<int64_t>(wraps).has_value());
  const std::array<int64_t, 3> zero = {0, int64_t{1} << 62, 4};
  EXPECT_EQ(tools::checked_product<int64_t>(zero), 0);
  const std::array<int64_t, 4> heads = {1, 6, (int64_t{1} << 58) + 1, 64};
  EXPECT_FALSE(tools::checked_product<int64_t>(heads).has_value());
  EXPECT_EQ(tools::checked_product<int64_t>(std::array<int64_t, 0>{}), 1);
}

tools::EvalOptions parse(std::vector<std::string> args) { return tools::parse_eval_args(args); }

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

TEST(EvalArgs, ValuesFollowOrComeAfterEquals) {
  const auto a = parse({"--sparsity", "0.9,0.5", "--block", "64", "--json", "x.json"});
  const auto b = parse({"--sparsity=0.9,0.5", "--block=64", "--json=x.json"});
  for (const auto& o : {a, b}) {
    EXPECT_EQ(o.sparsities, (std::vector<double>{0.9, 0.5}));
    EXPECT_EQ(o.block, 64);
    EXPECT_EQ(o.json, "x.json");
  }
  // Only the first '=' separates: the value may hold more.
  EXPECT_EQ(parse({"--plot=a=b.svg"}).plot, "a=b.svg");
  const auto s = parse({"--workload=synthetic", "--grid=2x3x4", "--text=3", "--text-len=2",
                        "--heads=2", "--dim=128", "--steps=3", "--seed=7", "--p=0.5",
                        "--neighbours=on", "--order=raster", "--ref-period=2", "--methods=sparse"});
  EXPECT_EQ(s.spec.grid.w, 4);
  EXPECT_EQ(s.spec.num_text, 3);
  EXPECT_EQ(s.spec.text_len, 2);
  EXPECT_EQ(s.spec.heads, 2);
  EXPECT_EQ(s.spec.head_dim, 128);
  EXPECT_EQ(s.steps, 3);
  EXPECT_EQ(s.spec.seed, 7u);
  EXPECT_EQ(s.p, 0.5);
  EXPECT_TRUE(s.neighbours);
  EXPECT_EQ(s.order, OrderKind::raster);
  EXPECT_EQ(s.ref_period, 2);
  EXPECT_EQ(s.methods, std::vector<std::string>{"sparse"});

  expect_error([] { parse({"--sparsity"}); }, "--sparsity", "expected a value");
  expect_error([] { parse({"--sparsity="}); }, "--sparsity", "got ''");
  expect_error([] { parse({"--json="}); }, "--json", "expected a file name");
  expect_error([] { parse({"--nope=1"}); }, "--nope", "unknown option");
  expect_error([] { parse({"extra"}); }, "extra", "unknown option");
}

TEST(EvalArgs, SwitchesAndMethods) {
  EXPECT_EQ(parse({}).progress, tools::ProgressMode::automatic);
  EXPECT_EQ(parse({"--progress"}).progress, tools::ProgressMode::on);
  EXPECT_EQ(parse({"--progress", "--no-progress"}).progress, tools::ProgressMode::off);
  EXPECT_TRUE(parse({"--version"}).version);
  EXPECT_TRUE(parse({"-h"}).help);
  expect_error([] { parse({"--no-progress=1"}); }, "--no-progress", "takes no value, got '1'");
  expect_error([] { parse({"--version="}); }, "--version", "takes no value");

  // dense names the reference row, which always runs: it adds no row of its own.
  EXPECT_TRUE(parse({"--methods", "dense"}).methods.empty());
  EXPECT_EQ(parse({"--methods=rettention,dense,sparse"}).methods,
            (std::vector<std::string>{"rettention", "sparse"}));
  expect_error([] { parse({"--methods=dense,flash"}); }, "--methods", "unknown method 'flash'");
  expect_error([] { parse({"--methods=sparse,sparse"}); }, "--methods",
               "method 'sparse' given more than once");
  expect_error([] { parse({"--grid=2x2x2"}); }, "--grid", "synthetic workload only");
}

TEST(EvalArgs, HelpNamesEveryFlag) {
  const std::string help = tools::eval_help();
  for (const char* flag : {"--workload", "--block", "--order", "--sparsity", "--methods", "--p ",
                           "--neighbours", "--ref-period", "--json", "--plot", "--progress",
                           "--no-progress", "--version", "--help", "--grid", "--text ",
                           "--text-len", "--heads", "--dim", "--steps", "--seed", "dense",
                           "--sparsity=0.9"})
    EXPECT_NE(help.find(flag), std::string::npos) << flag;
}

TEST(EvalArgs, SettingsJsonRecordsEveryOption) {
  const auto o = parse({"--json", "out \"1\".json", "--sparsity=0.3,0.95", "--no-progress"});
  const std::string j = tools::settings_json(o);
  for (const char* key : {"workload", "block", "order", "sparsity", "methods", "p", "neighbours",
                          "ref_period", "json", "plot", "progress", "grid", "text", "text_len",
                          "heads", "dim", "steps", "seed"})
    EXPECT_EQ(count(j, std::string("\"") + key + "\": "), 1u) << key << " in " << j;
  EXPECT_NE(j.find("\"sparsity\": [0.3, 0.95]"), std::string::npos) << j;
  EXPECT_NE(j.find("\"json\": \"out \\\"1\\\".json\""), std::string::npos) << j;
  EXPECT_NE(j.find("\"plot\": null"), std::string::npos) << j;
  EXPECT_NE(j.find("\"progress\": \"off\""), std::string::npos) << j;
  EXPECT_EQ(tools::json_string("a\\b\n\x01"), "\"a\\\\b\\n\\u0001\"");
}

TEST(EvalFiles, OutputsAreOpenedUpFrontAndRemovedUnlessCommitted) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("spaattn_cli_files_" + std::to_string(
                                                        std::random_device{}()));
  fs::create_directories(dir);
  const std::string created = (dir / "new.json").string();
  {
    tools::OutputFile f(created, "--json");
    EXPECT_TRUE(fs::exists(created));
  }
  EXPECT_FALSE(fs::exists(created)) << "an uncommitted new file is removed";

  const std::string kept = (dir / "old.svg").string();
  std::ofstream(kept) << "old";
  { tools::OutputFile f(kept, "--plot"); }
  std::stringstream old;
  old << std::ifstream(kept).rdbuf();
  EXPECT_EQ(old.str(), "old") << "an existing file is neither truncated nor removed";

  {
    tools::OutputFile f(kept, "--plot");
    f.commit("new");
  }
  std::stringstream now;
  now << std::ifstream(kept).rdbuf();
  EXPECT_EQ(now.str(), "new");

  expect_error([&] { tools::OutputFile((dir / "no" / "x.json").string(), "--json"); }, "--json",
               "cannot create '" + (dir / "no" / "x.json").string() + "' (No such file");
  expect_error([&] { tools::OutputFile(dir.string(), "--plot"); }, "--plot", "(Is a directory)");

  auto o = parse({"--workload", (dir / "missing.safetensors").string()});
  expect_error([&] { tools::check_eval_files(o); }, "--workload", "(No such file");
  o = parse({"--workload=synthetic", "--json", (dir / "a").string(), "--plot",
             (dir / "." / "a").string()});
  expect_error([&] { tools::check_eval_files(o); }, "--plot", "is also the --json file");
  EXPECT_FALSE(fs::exists(dir / "a")) << "nothing is created when a check fails";
  fs::remove_all(dir);
}

tools::BenchOptions bench(std::vector<std::string> args) { return tools::parse_bench_args(args); }

TEST(BenchArgs, DefaultsAndSizes) {
  const auto o = bench({});
  EXPECT_EQ(o.batch, 1);
  EXPECT_EQ(o.seq, 16384);
  EXPECT_EQ(o.grid.t, 16);
  EXPECT_EQ(o.grid.h, 32);
  EXPECT_EQ(o.grid.w, 32);
  EXPECT_EQ(o.text, 0);
  EXPECT_EQ(o.heads, 8);
  EXPECT_EQ(o.head_dim, 128);
  EXPECT_EQ(o.block, 128);
  EXPECT_EQ(o.dtype, DType::bf16);
  EXPECT_EQ(o.densities, (std::vector<double>{1.0, 0.5, 0.25, 0.11, 0.05}));
  EXPECT_EQ(o.method, Method::rectified);
  EXPECT_EQ(o.sparsity, 0.9);
  EXPECT_EQ(o.kernel, KernelFamily::automatic);
  EXPECT_EQ(o.precision, Precision::input);
  EXPECT_EQ(o.iters, 20);
  EXPECT_EQ(o.warmup, 3);
  EXPECT_TRUE(o.json.empty());
  // 16384 tokens x 8 heads x 128 x 2 bytes; lse f32; a full mask of 8 x 128 rows of 128 blocks.
  EXPECT_EQ(o.sizes.tensor, 16384u * 8 * 128 * 2);
  EXPECT_EQ(o.sizes.lse, 16384u * 8 * 4);
  EXPECT_EQ(o.sizes.mask, (8u * 128 + 1) * 4 + 8u * 128 * 128 * 4);
  EXPECT_EQ(tools::bench_device_bytes(o, 0),
            4 * o.sizes.tensor + o.sizes.lse + o.sizes.mask + tools::kBenchReserveBytes);
  EXPECT_EQ(tools::bench_device_bytes(o, uint64_t{1} << 30),
            4 * o.sizes.tensor + (uint64_t{1} << 30) + tools::kBenchReserveBytes);
  // The FP8 operands count with the kernel part.
  EXPECT_EQ(tools::bench_device_bytes(o, 0, 1000),
            4 * o.sizes.tensor + o.sizes.lse + o.sizes.mask + 1000 + tools::kBenchReserveBytes);

  // With text, batch and f16: S = 1000 + 77 tokens, 9 blocks of 128.
  const auto t = bench({"--seq=1000", "--text=77", "--batch=3", "--heads=2", "--head-dim=64",
                        "--dtype=f16"});
  EXPECT_EQ(t.layout().seq_len(), 1077);
  EXPECT_EQ(t.layout().num_blocks(), 9);
  EXPECT_EQ(t.sizes.tensor, 3u * 1077 * 2 * 64 * 2);
  EXPECT_EQ(t.sizes.mask, (3u * 2 * 9 + 1) * 4 + 3u * 2 * 9 * 9 * 4);
}

TEST(BenchArgs, ValuesFollowOrComeAfterEquals) {
  const std::vector<std::vector<std::string>> forms = {
      {"--batch", "2", "--seq", "4096", "--text", "256", "--heads", "4", "--head-dim", "64",
       "--block-size", "64", "--dtype", "f16", "--densities", "0.5,0.1", "--method", "sparse",
       "--sparsity", "0.75", "--kernel", "portable", "--precision", "input", "--iters", "10",
       "--warmup", "0", "--json", "b.json"},
      {"--batch=2", "--seq=4096", "--text=256", "--heads=4", "--head-dim=64", "--block=64",
       "--dtype=f16", "--densities=0.5,0.1", "--method=sparse", "--sparsity=0.75",
       "--kernel=portable", "--precision=input", "--iters=10", "--warmup=0", "--json=b.json"}};
  for (const auto& args : forms) {
    const auto o = bench(args);
    EXPECT_EQ(o.batch, 2);
    EXPECT_EQ(o.seq, 4096);
    EXPECT_TRUE(o.grid.empty()) << "--seq alone: no grid";
    EXPECT_EQ(o.text, 256);
    EXPECT_EQ(o.heads, 4);
    EXPECT_EQ(o.head_dim, 64);
    EXPECT_EQ(o.block, 64);
    EXPECT_EQ(o.dtype, DType::f16);
    EXPECT_EQ(o.densities, (std::vector<double>{0.5, 0.1}));
    EXPECT_EQ(o.method, Method::sparse);
    EXPECT_EQ(o.sparsity, 0.75);
    EXPECT_EQ(o.kernel, KernelFamily::portable);
    EXPECT_EQ(o.iters, 10);
    EXPECT_EQ(o.warmup, 0);
    EXPECT_EQ(o.json, "b.json");
  }
  EXPECT_TRUE(bench({"--help"}).help);
  EXPECT_TRUE(bench({"-h"}).help);
  EXPECT_TRUE(bench({"--version"}).version);
}

TEST(BenchArgs, Precision) {
  const auto o = bench({"--precision", "fp8", "--method", "rettention"});
  EXPECT_EQ(o.precision, Precision::fp8);
  EXPECT_EQ(o.config(Method::rettention).precision, Precision::fp8);
  // The pipeline's dense reference keeps the 16-bit operands.
  EXPECT_EQ(o.config(Method::dense).precision, Precision::input);
  EXPECT_EQ(bench({"--precision=fp8", "--kernel=hopper"}).config(Method::sparse).precision,
            Precision::fp8);
  expect_error([] { bench({"--precision", "fp16"}); }, "--precision",
               "expected input or fp8, got 'fp16'");
  expect_error([] { bench({"--precision", "fp8", "--block-size", "64"}); }, "--precision",
               "fp8 needs --block-size 128, got 64");
  expect_error([] { bench({"--precision", "fp8", "--kernel", "portable"}); }, "--precision",
               "not --kernel portable");
  EXPECT_EQ(bench({"--precision=fp8", "--method=calibrated"}).config(Method::calibrated).precision,
            Precision::fp8);
}

TEST(BenchArgs, SeqAndGrid) {
  auto o = bench({"--grid", "4x8x8"});
  EXPECT_EQ(o.seq, 256);
  EXPECT_EQ(o.grid.w, 8);
  o = bench({"--seq", "256", "--grid", "4x8x8"});
  EXPECT_EQ(o.seq, 256);
  EXPECT_FALSE(o.grid.empty());
  // The grid puts the pipeline's tokens in gilbert order; no grid leaves them in raster order.
  EXPECT_EQ(o.config(Method::rectified).order.kind, OrderKind::gilbert);
  EXPECT_EQ(o.config(Method::rectified).order.grid.size(), 256);
  const Config raster = bench({"--seq", "256", "--kernel", "hopper", "--sparsity", "0.5",
                               "--block-size", "64"})
                            .config(Method::rettention);
  EXPECT_EQ(raster.order.kind, OrderKind::raster);
  EXPECT_TRUE(raster.order.grid.empty());
  EXPECT_EQ(raster.method, Method::rettention);
  EXPECT_EQ(raster.kernel, KernelFamily::hopper);
  EXPECT_EQ(raster.select.sparsity, 0.5);
  EXPECT_EQ(raster.block_size, 64);
  expect_error([] { bench({"--seq", "255", "--grid", "4x8x8"}); }, "--grid",
               "expected T*H*W = --seq (255), got 4x8x8 (256 tokens)");
  expect_error([] { bench({"--grid", "4x8"}); }, "--grid", "expected TxHxW");
}

TEST(BenchArgs, RangesAndLimits) {
  expect_error([] { bench({"--batch", "65536"}); }, "--batch",
               "expected an integer in [1, 65535], got '65536'");
  expect_error([] { bench({"--heads", "0"}); }, "--heads", "[1, 65535], got '0'");
  expect_error([] { bench({"--seq", "2147483647"}); }, "--seq",
               "expected an integer in [1, 2147483646], got '2147483647'");
  expect_error([] { bench({"--head-dim", "256"}); }, "--head-dim", "expected 64 or 128");
  expect_error([] { bench({"--block-size", "96"}); }, "--block-size", "expected 64 or 128");
  expect_error([] { bench({"--dtype", "f32"}); }, "--dtype", "expected bf16 or f16, got 'f32'");
  expect_error([] { bench({"--densities", "0.5,0"}); }, "--densities", "(0, 1], got '0'");
  expect_error([] { bench({"--densities", "0.50,0.5"}); }, "--densities",
               "density 0.5 given more than once");
  expect_error([] { bench({"--method", "rectified-nogapr"}); }, "--method", "expected one of");
  expect_error([] { bench({"--sparsity", "1"}); }, "--sparsity", "[0, 1), got '1'");
  expect_error([] { bench({"--kernel", "wgmma"}); }, "--kernel", "got 'wgmma'");
  expect_error([] { bench({"--iters", "9"}); }, "--iters", "[10, 100000], got '9'");
  expect_error([] { bench({"--warmup", "100001"}); }, "--warmup", "[0, 100000], got '100001'");
  expect_error([] { bench({"--json="}); }, "--json", "expected a file name");
  expect_error([] { bench({"--grid=4x4x4", "--frames", "2"}); }, "--frames", "unknown option");
  // Overflow: tokens, then int32 mask offsets (batch * heads * blocks^2), before any size is used.
  expect_error([] { bench({"--seq", "2147483600", "--text", "100"}); }, "--text",
               "expected at most 2147483646 video + text tokens, got 2147483600 + 100");
  expect_error([] { bench({"--seq", "2147483646"}); }, "--seq",
               "got 1 x 8 x 16777216^2; lower --batch, --heads or --seq");
  expect_error([] { bench({"--seq", "65536", "--batch", "65535", "--heads", "65535"}); }, "--seq",
               "got 65535 x 65535 x 512^2");
  // The largest mask that fits: 2^31 - 2 entries at most.
  EXPECT_EQ(bench({"--seq", "5931520", "--heads", "1"}).layout().num_blocks(), 46340);
  expect_error([] { bench({"--seq", "5931521", "--heads", "1"}); }, "--seq", "got 1 x 1 x 46341^2");
}

TEST(BenchArgs, HelpNamesEveryFlagAndSettingsRecordThem) {
  const std::string help = tools::bench_help();
  for (const char* flag : {"--batch", "--seq", "--grid", "--text", "--heads", "--head-dim",
                           "--block-size", "--dtype", "--densities", "--method", "--sparsity",
                           "--kernel", "--precision", "--iters", "--warmup", "--json",
                           "--version", "--help",
                           "eff TFLOP/s", "eff / dense", "speed-up", "--seq=32768"})
    EXPECT_NE(help.find(flag), std::string::npos) << flag;

  const auto o = bench({"--seq=4096", "--densities=0.3,1", "--json", "x \"1\".json"});
  const std::string j = tools::bench_settings_json(o);
  for (const char* key : {"batch", "seq", "grid", "order", "text", "heads", "head_dim",
                          "block_size", "dtype", "densities", "method", "sparsity", "kernel",
                          "precision", "iters", "warmup", "json"})
    EXPECT_EQ(count(j, std::string("\"") + key + "\": "), 1u) << key << " in " << j;
  EXPECT_NE(j.find("\"grid\": null, \"order\": \"raster\""), std::string::npos) << j;
  EXPECT_NE(j.find("\"densities\": [0.3, 1]"), std::string::npos) << j;
  EXPECT_NE(j.find("\"method\": \"rectified\""), std::string::npos) << j;
  EXPECT_NE(j.find("\"kernel\": \"auto\", \"precision\": \"input\""), std::string::npos) << j;
  EXPECT_NE(j.find("\"json\": \"x \\\"1\\\".json\""), std::string::npos) << j;
  EXPECT_NE(tools::bench_settings_json(bench({})).find("\"grid\": \"16x32x32\", \"order\": "
                                                       "\"gilbert\""),
            std::string::npos);
}

TEST(BenchFiles, JsonIsOpenedUpFront) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("spaattn_cli_bench_" + std::to_string(
                                                        std::random_device{}()));
  fs::create_directories(dir);
  EXPECT_FALSE(tools::check_bench_files(bench({})).is_open());
  const std::string path = (dir / "b.json").string();
  {
    tools::OutputFile f = tools::check_bench_files(bench({"--json", path}));
    EXPECT_TRUE(f.is_open());
    EXPECT_TRUE(fs::exists(path));
  }
  EXPECT_FALSE(fs::exists(path)) << "an uncommitted new file is removed";
  const std::string missing = (dir / "no" / "b.json").string();
  expect_error([&] { tools::check_bench_files(bench({"--json", missing})); }, "--json",
               "(No such file");
  fs::remove_all(dir);
}

TEST(Plot, TicksAreRoundAndCoverTheRange) {
  EXPECT_EQ(tools::axis_ticks(1.0), (std::vector<double>{0, 0.2, 0.4, 0.6, 0.8, 1.0}));
  EXPECT_EQ(tools::axis_ticks(0.37), (std::vector<double>{0, 0.1, 0.2, 0.3, 0.4}));
  EXPECT_EQ(tools::axis_ticks(0.0), (std::vector<double>{0, 1}));
  EXPECT_EQ(tools::axis_ticks(7.0), (std::vector<double>{0, 2, 4, 6, 8}));
  for (const double max : {1e-4, 0.0123, 0.5, 3.3, 250.0}) {
    const auto t = tools::axis_ticks(max);
    EXPECT_GE(t.back(), max);
    EXPECT_GE(t.size(), 3u);
    EXPECT_LE(t.size(), 11u);
  }
}

TEST(Plot, FrontierSvgHasALineMarkersAndALegendEntryPerMethod) {
  const std::vector<tools::PlotSeries> series = {
      {"dense", {{1.0, 0.0}}},
      {"sparse", {{0.1, 0.36}, {0.26, 0.17}, {0.15, 0.25}}},
      {"a<b", {{0.5, 0.05}, {0.6, 0.04}}},
  };
  const std::string svg = tools::frontier_svg(series);
  EXPECT_EQ(svg.rfind("<svg xmlns=\"http://www.w3.org/2000/svg\"", 0), 0u);
  EXPECT_EQ(svg.substr(svg.size() - 7), "</svg>\n");
  EXPECT_EQ(count(svg, "<polyline"), 2u) << "no line through dense's single point";
  EXPECT_EQ(count(svg, "<g class=\"series\""), 3u);
  // One marker per point plus one per legend entry.
  EXPECT_EQ(count(svg, "<circle"), 6u + 3u);
  EXPECT_EQ(count(svg, "class=\"tick\""), 6u + 5u);  // x: 0..1 by 0.2; y: 0..0.4 by 0.1
  EXPECT_NE(svg.find(">a&lt;b</text>"), std::string::npos) << "names are escaped";
  EXPECT_EQ(svg.find("a<b"), std::string::npos);
  EXPECT_NE(svg.find("achieved density"), std::string::npos);
  EXPECT_NE(svg.find("relative L2 error"), std::string::npos);
  // Points are joined in order of density: x grows along the sparse polyline.
  const size_t at = svg.find("points=\"", svg.find("data-method=\"sparse\""));
  std::istringstream pts(svg.substr(at + 8, svg.find('"', at + 8) - at - 8));
  double last = -1, x = 0, y = 0;
  char comma = 0;
  int n = 0;
  while (pts >> x >> comma >> y) {
    EXPECT_GT(x, last);
    last = x;
    ++n;
  }
  EXPECT_EQ(n, 3);
}

}  // namespace
}  // namespace spaattn::testing
