// The built-in video-like workload of `spaattn eval`: Q/K/V of one attention layer of a joint
// video + text DiT, made deterministically from a seed (see workload.cpp for how).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "spaattn/layout.hpp"
#include "spaattn/method.hpp"
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

// Q/K/V captured from the testbed model (testbed/: spaattn_testbed.evaluate --capture-layers ...):
// a safetensors file with `layer{L}.step{S}.{q,k,v}` (bf16 [b, S, H, d], video tokens in raster
// order, then the text tokens) and `layer{L}.step{S}.text_lengths` (int32 [b]); its metadata
// holds "grid" ([T, H, W]), "n_video", "n_text" and "pairs" ([[L, S], ...]).
struct CapturedCall {
  int layer = 0, step = 0;  // as captured: the model's layer and sampler step
  int run_step = 0;         // position in its layer's calls (0: the layer's first captured step)
  std::vector<uint16_t> q, k, v;  // bf16 bits
  std::vector<int32_t> text_lengths;
};

struct CapturedWorkload {
  std::string path;
  Grid grid;
  int64_t num_text = 0, batch = 0, heads = 0, head_dim = 0;
  std::vector<CapturedCall> calls;  // sorted by (layer, step)
  std::map<std::string, std::string> metadata;

  // Views of call `i` (host bf16 tensors [b, S, H, d]) with its text lengths.
  AttentionArgs args(size_t i, int block_size) const;
  // Call `i` as one step of its layer's denoising run: {layer, entry 0, run_step}.
  CallInfo info(size_t i) const {
    return CallInfo{.layer = calls.at(i).layer, .entry = 0, .step = calls.at(i).run_step};
  }
  int64_t seq_len() const { return grid.size() + num_text; }
};

// Reads and checks the whole file (shapes agree with the metadata and with each other, text
// lengths within [0, n_text], every size, layer and step within int32, T*H*W + n_text within
// int32, no (layer, step) pair twice); throws spaattn::Error naming "workload" and the file.
CapturedWorkload load_captured(const std::string& path);

}  // namespace spaattn::tools
