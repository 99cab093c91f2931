// Configuration of the methods (docs/methods.md).
#pragma once
#include <cstdint>
#include <string_view>
#include <vector>

#include "spaattn/layout.hpp"
#include "spaattn/order.hpp"

namespace spaattn {

enum class Method : uint8_t {
  dense,                 // full attention
  sparse,                // selection + block-sparse attention, no correction (Jenga-style baseline)
  rectified,             // Rectified SpaAttn: IPAR selection, GAPR, O = R O_spa + C
  rettention,            // Re-ttention: cached rho and Delta from reference steps
  rectified_rettention,  // IPAR selection with Re-ttention's cached correction
  calibrated,            // IPAR selection; Re-ttention reference steps measure, per (b, head),
                         // every candidate correction (none included) against full attention;
                         // each sparse step applies the one expected to be best at its distance
};
const char* to_string(Method m);
// Parses "dense", "sparse", "rectified", "rettention", "rectified_rettention", "calibrated";
// throws naming `arg`.
Method parse_method(std::string_view name, const char* arg = "method");

// The operands of the attention kernel (GPU path): `input` computes in q's dtype (bf16 / f16);
// `fp8` quantises Q, K (int8) and V (e4m3) once per call (cuda.hpp quantize_fp8 describes the
// scheme) and runs the Hopper FP8 kernel: faster, with a relative error of 1-2% on learned
// attention (docs/gpu.md, FP8). fp8 needs CUDA tensors on a compute capability 9.0 device and
// block size 128.
enum class Precision : uint8_t { input, fp8 };
const char* to_string(Precision p);
// Parses "input", "fp8"; throws naming `arg`.
Precision parse_precision(std::string_view name, const char* arg = "precision");

// Which key blocks are critical.
enum class Selector : uint8_t {
  automatic,  // the method's published choice: band for rettention, ipar otherwise
  ipar,       // Rectified SpaAttn: top-k / cumulative-p over pooled implicit full attention
  band,       // static band over video blocks, |i - j| <= floor(keep * NV) / 2, keep = 1 - sparsity
  local,      // the block neighbour map alone (3D-local), needs a grid
};
const char* to_string(Selector s);

struct SelectConfig {
  Selector selector = Selector::automatic;
  double sparsity = 0.9;       // target; k = floor((1 - sparsity) * NV) video blocks at least
  double p = 0.3;              // ipar: keep the smallest prefix whose cumulative P exceeds p
  bool neighbours = true;      // add the block neighbour map (needs order.grid); ignored if no grid
  int64_t first_frame_blocks = 0;  // F: dense square of the first F video blocks in token order
};

// Re-ttention's schedule and correction; `calibrated` uses ref_period and clamp, `drift` until
// it can fit its own per head (from its second reference step), and needs cache_delta.
struct RettentionConfig {
  int ref_period = 5;          // r: a reference step every r steps after the dense warm-up
  float drift = 0.04f;         // lambda: rho' = rho + (k - 1) lambda at the k-th sparse step
  bool clamp = false;          // clamp rho' to 1
  bool cache_delta = true;     // cache and add Delta; off: O = rho' O_spa
};

struct Schedule {
  int dense_steps = 0;            // w: full attention for steps < w (Re-ttention: then references)
  std::vector<int> dense_layers;  // layers always computed with full attention
  int mask_period = 1;            // recompute the selection every r steps (1: every step)
};

struct Config {
  Method method = Method::rectified;
  int block_size = 128;        // B: 64 or 128
  TokenOrder order;            // applied to the video tokens inside the call; raster = none
  SelectConfig select;
  bool gapr = true;            // rectified (and calibrated's R, C): compensate only blocks
                               // with gain > error
  RettentionConfig rettention;
  Schedule schedule;
  float scale = 0.f;           // 0: 1/sqrt(d)
  // GPU path: read the block mask back after each sparse call to fill CallStats::density. This
  // synchronises the stream once per call (the host path always reports the density).
  bool measure_density = false;
  // GPU path: the attention kernel family (layout.hpp KernelFamily).
  KernelFamily kernel = KernelFamily::automatic;
  // GPU path: the kernel's operands (Precision above).
  Precision precision = Precision::input;

  // The selector the method actually uses (resolves Selector::automatic).
  Selector selector() const;
  // Throws spaattn::Error naming the field ("config.select.sparsity: expected ...").
  void validate() const;
};

}  // namespace spaattn
