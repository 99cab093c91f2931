// The options of `spaattn bench`: parsing and every check that needs no GPU, so that a bad flag,
// a shape whose sizes overflow or an output file that cannot be created fails before any GPU
// work (and in a build without CUDA, before the message that says so).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "output.hpp"
#include "spaattn/config.hpp"
#include "spaattn/layout.hpp"
#include "spaattn/order.hpp"

#ifndef SPAATTN_VERSION
#error "SPAATTN_VERSION (the CMake PROJECT_VERSION) must be defined by the build"
#endif

namespace spaattn::tools {

// Device memory the benchmark's own buffers take, in bytes (computed from the shape with
// overflow checks when the options are parsed).
struct BenchSizes {
  uint64_t tensor = 0;  // one of q, k, v, out: batch * S * heads * head_dim elements
  uint64_t lse = 0;     // the kernel's f32 lse output: batch * S * heads
  uint64_t mask = 0;    // CSR lists of a full mask: (rows + 1) + rows * blocks int32
};

struct BenchOptions {
  int64_t batch = 1;
  int64_t seq = 16384;     // video tokens N_v (the whole sequence is seq + text)
  Grid grid{16, 32, 32};   // the video latent grid; empty: none (raster order)
  int64_t text = 0;        // text tokens after the video tokens, all valid
  int64_t heads = 8;
  int head_dim = 128;
  int block = 128;
  DType dtype = DType::bf16;
  std::vector<double> densities = {1.0, 0.5, 0.25, 0.11, 0.05};
  Method method = Method::rectified;
  double sparsity = 0.9;
  KernelFamily kernel = KernelFamily::automatic;
  Precision precision = Precision::input;  // the kernel table's and the method's operands
  int iters = 20;
  int warmup = 3;
  std::string json;
  bool help = false;
  bool version = false;
  BenchSizes sizes;

  // The layout of the benchmark's calls: seq video tokens, then text tokens.
  Layout layout() const;
  // The SparseAttention config of the pipeline part for `method` (dense for the reference):
  // block size, kernel family, sparsity, precision (the dense reference keeps the tensors'
  // 16-bit operands), and with a grid the gilbert order and the block neighbour map.
  Config config(Method method) const;
};

// Parses the arguments after `bench`. Flags with a value take it as the next argument or after
// '=' (--seq=4096). Throws spaattn::Error naming the flag. Touches no file and no GPU.
BenchOptions parse_bench_args(const std::vector<std::string>& args);

// The text of `spaattn bench --help`.
const char* bench_help();

// The settings as a JSON object: every option's value, defaults included.
std::string bench_settings_json(const BenchOptions& o);

// Opens the --json output (if any); throws spaattn::Error naming the flag.
OutputFile check_bench_files(const BenchOptions& o);

// Device memory the whole run needs: q, k, v and out throughout, then the larger of the kernel
// part (lse, the mask's CSR lists and, with --precision fp8, the quantised operands'
// `kernel_workspace`) and the pipeline part (`pipeline_bytes`, the largest SparseAttention
// workspace), plus kBenchReserveBytes for the CUDA runtime's pools and allocation rounding.
inline constexpr uint64_t kBenchReserveBytes = uint64_t{256} << 20;
uint64_t bench_device_bytes(const BenchOptions& o, uint64_t pipeline_bytes,
                            uint64_t kernel_workspace = 0);

}  // namespace spaattn::tools
