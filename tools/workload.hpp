// The built-in video-like workload of `spaattn eval`: Q/K/V of one attention layer of a joint
// video + text DiT, made deterministically from a seed (see workload.cpp for how).
#pragma once
#include <cstdint>
#include <vector>

#include "spaattn/layout.hpp"
#include "spaattn/order.hpp"

namespace spaattn::tools {

struct WorkloadSpec {
  Grid grid{8, 16, 24};       // latent frames x height x width: 3,072 video tokens
  int64_t num_text = 128;     // N_t text tokens after the video tokens
  int64_t text_len = 77;      // L_t valid text tokens (the rest is padding)
  int64_t heads = 4;
  int64_t head_dim = 64;
  uint64_t seed = 2026;
};

// Host f32 tensors [1, S, H, d] in raster token order.
struct Workload {
  WorkloadSpec spec;
  Layout layout;
  std::vector<float> q, k, v;
  int32_t text_len = 0;
  AttentionArgs args();  // views of q, k, v with text_lengths set
};

// The inputs of denoising step `step`: a base drawn from the seed, plus a small step-dependent
// drift, so that steps are correlated the way consecutive denoising steps are.
Workload make_workload(const WorkloadSpec& spec, int step, int block_size);

}  // namespace spaattn::tools
