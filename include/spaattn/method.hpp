// A whole sparse attention call with its state across denoising steps (ALGORITHM.md section 6).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include "spaattn/config.hpp"
#include "spaattn/layout.hpp"
#include "spaattn/stages.hpp"

namespace spaattn {

// Which call this is: one attention layer at one denoising step, for one batch entry (with
// classifier-free guidance run as separate calls, cond and uncond are different entries).
struct CallInfo {
  int layer = 0;
  int entry = 0;
  int step = 0;
};

// What a call did.
struct CallStats {
  enum class Kind : uint8_t { dense, sparse, reference };
  Kind kind = Kind::dense;
  double density = 1.0;    // share of (query, key) token pairs computed by the sparse kernel
  bool mask_reused = false;
};

// Runs the configured method on host tensors and keeps its state (masks reused across steps,
// Re-ttention caches), keyed by (layer, entry). Call reset() between diffusion runs.
class SparseAttention {
 public:
  explicit SparseAttention(Config config);  // validates the config
  const Config& config() const { return config_; }
  // Drops every cached mask and Re-ttention statistic.
  void reset();
  // out: [b, S, H, d] like q (any float dtype). Inputs and output are in the caller's token order
  // (raster for the video tokens); config.order is applied inside the call. All arguments are
  // validated before any work and before any state changes.
  CallStats forward(const CallInfo& call, const AttentionArgs& args, TensorView out);
  // Number of (layer, entry) states held.
  size_t state_count() const { return states_.size(); }

 private:
  struct LayerState {
    int mask_step = -1;           // step whose selection `selection` holds
    Selection selection;
    int ref_step = -1;            // last Re-ttention reference step
    RettentionCache cache;
  };
  Config config_;
  std::vector<int32_t> perm_, inv_perm_;
  std::vector<std::vector<int32_t>> neighbours_;
  int64_t planned_video_ = -1;
  std::map<std::tuple<int, int>, LayerState> states_;
};

}  // namespace spaattn
