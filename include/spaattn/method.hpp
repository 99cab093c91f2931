// A whole sparse attention call with its state across denoising steps (docs/methods.md,
// Schedule and state).
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
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

// How the GPU path obtains device memory for its workspace and per-layer state. Empty functions
// mean cudaMallocAsync / cudaFreeAsync. Memory is taken when a shape or a (layer, entry) is first
// seen (and when a larger workspace is needed) on the call's stream, never per call, and is given
// back by reset(), the destructor or a workspace that grows: `release` then receives a stream
// that waits for every call queued so far (nullptr when none was queued), on which the memory
// may be reused.
struct DeviceMemory {
  std::function<void*(size_t bytes, void* stream)> allocate;
  std::function<void(void* ptr, size_t bytes, void* stream)> release;
};

// Device memory the GPU path takes through DeviceMemory for calls shaped like given arguments
// (SparseAttention::workspace_size), so that a caller can reserve it once, for example as one
// pool that DeviceMemory.allocate hands out in pieces: `workspace` once per shape, reused by every
// call; `constants` once (token permutation, block neighbour map); `per_state` for each
// (layer, entry) on its first call that is not dense. Each piece is asked for as blocks whose
// sizes are multiples of 256 bytes, each 256-byte aligned, so total() is exact for such a pool.
struct WorkspaceSize {
  size_t workspace = 0, constants = 0, per_state = 0;
  size_t total(size_t states) const { return workspace + constants + states * per_state; }
};

// What decides a call: the kind of step, whether the selection is recomputed, and for Re-ttention
// sparse steps k (the k-th sparse step after the reference). Shared by the host and GPU paths.
struct StepPlan {
  CallStats::Kind kind = CallStats::Kind::dense;
  bool fresh_mask = true;
  int k = 0;
};

// What a stored selection or Re-ttention cache was made for: the tensor shape and dtype and the
// layout of the sequence (a selection lists logical blocks, so another split into video and text
// blocks makes it another mask even when the tensors keep their shape; the GPU path keeps Delta
// in the inputs' dtype).
struct CallShape {
  std::array<int64_t, 4> dims{};  // [b, S, H, d]
  DType dtype = DType::f32;       // of q, k and v
  int64_t num_video = 0, num_text = 0, block_size = 0;
  TextPlacement text_placement = TextPlacement::suffix;
  bool operator==(const CallShape&) const = default;
};
CallShape call_shape(const AttentionArgs& args);

// The state of one (layer, entry) that decides the next call's plan.
struct StateSummary {
  int mask_step = -1;     // step whose selection the state holds
  int ref_step = -1;      // last Re-ttention reference step
  CallShape mask_shape;   // the call that made the selection
  CallShape cache_shape;  // the reference step
};

// Decides the plan of `call` from the config and the state of its (layer, entry) (nullptr: none
// yet). A Re-ttention step whose state holds no reference since the last scheduled one is planned
// as a (late) reference step; throws spaattn::Error when the call cannot be served (a Re-ttention
// sparse step with another shape or layout than its reference step).
StepPlan plan_step(const Config& config, const CallInfo& call, const AttentionArgs& args,
                   const StateSummary* state);

// The candidate corrections of Method::calibrated (docs/methods.md, Calibrated correction). Each
// is one formula per video query row n of block i of a (b, h):
//   none:       O = O_spa[n]
//   affine:     O = R_i O_spa[n] + C_i                      (Rectified SpaAttn)
//   scale:      O = R_i O_spa[n]
//   rettention: O = rho'[n] O_spa[n] + Delta[n], rho' = rho + (k - 1) lambda_(b, h)
//   merge:      O_spa merged through the log-sum-exps with the pooled attention of the row's
//               non-critical video blocks
enum class Candidate : uint8_t { none, affine, scale, rettention, merge };
inline constexpr int kCandidates = 5;
const char* to_string(Candidate c);

// What the last reference step of one (layer, entry) of Method::calibrated measured
// (SparseAttention::calibration). Arrays are per (b, h), index bh = b * heads + h.
struct Calibration {
  int64_t batch = 0, heads = 0;
  int ref_step = -1;  // the reference step that measured the errors
  // k: the distance from the previous reference step of the run (same shape) to ref_step; 0 when
  // there was none, and then Re-ttention's correction serves every (b, h) until the next one.
  int interval = 0;
  std::vector<float> drift;  // lambda fitted so far (RettentionConfig::drift before two references)
  // Squared L2 error against full attention over the video query rows of (b, h), per candidate,
  // index bh * kCandidates + c: error_ref at distance 0 (ref_step's own mask; 0 for rettention,
  // exact there) and error_then at distance `interval` (as the candidate would have served
  // ref_step from the previous reference step; NaN when interval is 0).
  std::vector<double> error_ref, error_then;

  // The error expected of candidate c of (b, h) at a sparse step `distance` >= 1 steps after
  // ref_step (expected_error of its two errors); NaN when interval is 0.
  double expected(int64_t bh, Candidate c, int distance) const;
  // What a sparse step `distance` >= 1 steps after ref_step applies to (b, h): the candidate with
  // the least expected error (the lower index on a tie), Re-ttention's when interval is 0.
  Candidate choice(int64_t bh, int distance) const;
};

// Least-squares drift of Re-ttention's rho from one reference step to a later one at distance k,
// in the form rettention applies it (rho at the k-th step = rho + (k - 1) lambda): over the rows,
// lambda = sum_n (now[n] - prev[n]) / (rows (k - 1)). No fit (nullopt) for k <= 1 or no rows.
std::optional<float> fit_drift(std::span<const float> prev, std::span<const float> now, int k);

// The error Method::calibrated expects of a candidate at distance d >= 1 from a reference step,
// from its squared errors e0 >= 0 at distance 0 and ek >= 0 at distance k >= 1: the error's norm
// taken as linear in the distance through sqrt(e0) and sqrt(ek) (extrapolated past k, never
// below 0), squared.
double expected_error(double e0, double ek, int k, int d);

namespace detail {
class DevicePipeline;  // the GPU path, src/cuda/pipeline.cu
}

// Runs the configured method and keeps its state (masks reused across steps, Re-ttention caches),
// keyed by (layer, entry). Host tensors run on the CPU reference; CUDA tensors run on the GPU on
// `stream` without synchronising with the host. Call reset() between diffusion runs.
// Every method runs on both; Method::calibrated keeps its measured errors and drifts in device
// memory on the GPU path, and calibration() copies them back (waiting for the queued calls).
//
// Threads: an object may be shared by threads. forward(), reset() and state_count() take the
// object's own mutex, so its calls run one at a time (a GPU call holds it only while it enqueues
// work); separate objects run concurrently. A moved-from object may only be destroyed or
// assigned to.
class SparseAttention {
 public:
  explicit SparseAttention(Config config, DeviceMemory memory = {});  // validates the config
  ~SparseAttention();
  SparseAttention(SparseAttention&&) noexcept;
  SparseAttention& operator=(SparseAttention&&) noexcept;
  const Config& config() const { return config_; }
  // Drops every cached mask and Re-ttention statistic (and frees the GPU state).
  void reset();
  // out: [b, S, H, d] like q (host: any float dtype; GPU: q's dtype). Inputs and output are in
  // the caller's token order (raster for the video tokens); config.order is applied inside the
  // call. All arguments are validated before any work and before any state changes.
  // On the GPU path CallStats::density is NaN unless config.measure_density is set (it then
  // synchronises `stream` once per call to read the mask back). config.scale and config.kernel
  // apply where args leaves them unset (0, automatic); args setting another value is an error.
  CallStats forward(const CallInfo& call, const AttentionArgs& args, TensorView out,
                    void* stream = nullptr);
  // The checks forward() makes before any work, from the arguments' metadata alone: shapes,
  // dtypes, strides, the layout against the config, and (for CUDA tensors) what the GPU path
  // asks of them (validate_gpu_operands). Reads no tensor data but host text lengths, and no
  // state: a Re-ttention step that its state cannot serve is reported by forward().
  void check(const CallInfo& call, const AttentionArgs& args, const TensorView& out) const;
  // Number of (layer, entry) states held.
  size_t state_count() const;
  // The device memory of the GPU path for calls shaped like `args` (see WorkspaceSize): host
  // arithmetic only, nothing is allocated or launched; throws spaattn::Error for arguments the
  // GPU path cannot serve, or in a build without CUDA.
  WorkspaceSize workspace_size(const AttentionArgs& args) const;
  // Method::calibrated: what (layer, entry)'s last reference step measured (Calibration::choice
  // gives each sparse step's choices from it); nullopt when it has none (no reference step yet,
  // or another method).
  std::optional<Calibration> calibration(int layer, int entry) const;

 private:
  struct LayerState {
    StateSummary summary;
    Selection selection;
    RettentionCache cache;
    Calibration calibration;  // Method::calibrated only
  };
  // args with the config's scale and kernel family applied, after check().
  AttentionArgs checked(const CallInfo& call, const AttentionArgs& args,
                        const TensorView& out) const;
  CallStats forward_host(const CallInfo& call, const AttentionArgs& args, TensorView out,
                         const StepPlan& plan);
  // Method::calibrated on the ordered host tensors `args`: writes the call's output to `o`
  // ([b, S, H, d] fp32) and, at a reference step, the new selection, cache and calibration to
  // `next`.
  void calibrated_step(const CallInfo& call, const AttentionArgs& args, const StepPlan& plan,
                       const LayerState* prev, std::vector<float>& o, LayerState& next) const;
  Config config_;
  DeviceMemory memory_;
  std::vector<int32_t> perm_, inv_perm_;
  std::vector<std::vector<int32_t>> neighbours_;
  std::map<std::tuple<int, int>, LayerState> states_;
  std::unique_ptr<detail::DevicePipeline> device_;
  std::unique_ptr<std::mutex> mutex_ = std::make_unique<std::mutex>();  // movable object
};

}  // namespace spaattn
