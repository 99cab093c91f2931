// One GPU attention check: seeded inputs and mask, the kernel on its own stream with NaN-poisoned
// outputs, then the CPU reference (fp32) on the same rounded inputs and a float64 computation
// of sampled rows. Shared by the sweep of awkward shapes and the larger multi-wave cases.
#pragma once
#include <ostream>
#include <string>
#include <vector>

#include "cpu/reference.hpp"
#include "spaattn/spaattn.hpp"

namespace spaattn::gpu_test {

struct Case {
  std::string name;
  DType dtype = DType::bf16;
  int64_t batch = 1, heads = 1, dim = 128;
  Layout layout;
  std::vector<int32_t> text_len;  // L_t per batch item; empty: all valid
  test::Strides strides = test::Strides::bshd;
  bool gapped_out = false;    // out and lse with gaps that must stay untouched
  double density = 0.5;       // chance that a block is selected
  double empty_rows = 0.1;    // share of mask rows that select nothing
  double qk_scale = 1.0;      // q, k uniform in [-qk_scale, qk_scale)
  bool equal_keys = false;    // every key of a (batch, head) the same
  bool cpu_reference = true;  // false: float64 sampled rows only (large cases)
  bool small = false;         // part of the small set (sanitizer runs)
  // Largest |lse - reference|. With |s q.k| near 1e4 the fp32 dot products of two correct
  // implementations differ by a few ulps of 1e4 (1e-3 each), so huge-logit cases allow more.
  double lse_tol = 1e-2;
  uint64_t seed = 1;
  KernelFamily kernel = KernelFamily::automatic;  // AttentionArgs::kernel of the call
  bool fp8 = false;     // quantize_fp8 + block_sparse_attention_fp8 instead of the 16-bit call
  double k_mean = 0.0;  // added to every key: k_mean * (1 + channel % 5), a shared offset
};

// gtest prints a parameter by its name.
inline void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

// Measured errors of one run (tests assert on them).
struct CaseResult {
  double rel_l2_cpu = 0, lse_err_cpu = 0;  // against the CPU reference
  double rel_l2_f64 = 0, lse_err_f64 = 0;  // against float64 on sampled rows
  int64_t sampled_rows = 0;
  int64_t unwritten_out = 0, outside_out = 0, unwritten_lse = 0, outside_lse = 0;
  int64_t nonzero_empty_rows = 0;  // rows that must be exactly zero but are not
  bool csr_matches = false;        // dense_to_csr == BlockMask::from_dense
  std::vector<float> out, lse;     // the GPU's outputs, [b, S, H, d] and [b, S, H]
};

CaseResult run_case(const Case& c);

// gtest expectations on what a run wrote: every output and lse element inside the views and
// finite, nothing outside them, rows without keys exactly zero.
void expect_clean_writes(const CaseResult& r);

// How far one run's outputs lie from another's on the same case: the relative L2 distance of
// out from ref.out, and the largest |lse - ref.lse| (infinite where exactly one is infinite).
struct Difference {
  double rel_l2 = 0, lse = 0;
};
Difference difference(const CaseResult& r, const CaseResult& ref);

}  // namespace spaattn::gpu_test
