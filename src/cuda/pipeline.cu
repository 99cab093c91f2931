// The GPU path of SparseAttention (docs/gpu.md): the stages of stages.cuh and the
// attention kernel, on the caller's stream, with no host synchronisation (unless
// config.measure_density asks for the mask's density). A call is planned, then run. The plan
// enqueues everything that depends on the selection (the mask as the kernel's CSR lists and
// Rectified SpaAttn's R, C); the run enqueues the kernel launches:
//   dense:      plan: a full CSR; run: one launch (attention is order-equivariant: no permutation).
//   sparse / rectified:  plan: pool -> scores -> select (or the (layer, entry)'s stored crit bits)
//               -> [R, C]; run: K and V gathered into the token order (gather.cuh), then the
//               kernel with Q and O permuted in place and the block-affine epilogue
//               (O = R_i O_spa + C_i in registers).
//   reference:  plan: select; run: the kernel over the mask (O_spa into out, lse_spa into the
//               workspace), then, with the complement's CSR written over the mask's, the kernel
//               over the complement whose merge epilogue turns out into O_full and writes rho and
//               Delta: each key is visited once, as in one dense pass.
//   Re-ttention sparse step: plan: CSR of the stored crit bits; run: the kernel with the
//               row-affine epilogue (O = (rho + drift) O_spa + Delta).
//   calibrated: plan: pool -> scores -> select (reference) or the stored crit bits, R, C (and at
//               a reference step R, C of the previous reference's mask too); reference: four
//               launches over the keys split by the fresh and the previous mask (each key once:
//               O_spa, O_then, O_full, rho, Delta; the first reference: the two passes above),
//               then the calibration pass (plan/calibrate.cu) measures every candidate at
//               distances 0 and k and writes the errors and drift per (b, h); sparse step:
//               each (b, h)'s choice at the step's distance, the kernel with the calibrated
//               epilogue (that candidate), then the merge pass for the heads that chose merge.
// Every kernel launch of a non-dense call with a token order reads the gathered K and V.
// Memory comes from DeviceMemory: a workspace per shape (stage arrays, Re-ttention's lse_spa and
// lse_full, the gathered K and V), constants (permutation, neighbour map) once, and per
// (layer, entry) the crit bits and the Re-ttention cache on first use; sizes() gives all of them
// without a device, for SparseAttention::workspace_size.
#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <tuple>

#include "cuda/check.cuh"
#include "core/device_pipeline.hpp"
#include "cuda/attention/api.hpp"
#include "cuda/plan/gather.cuh"
#include "cuda/plan/quant.cuh"
#include "cuda/plan/stages.cuh"

namespace spaattn::detail {
namespace {

namespace st = cuda::stages;
using cuda_detail::EpilogueKind;
using cuda_detail::FwdEpilogue;
using cuda_detail::FwdParams;
using cuda_detail::MergeMode;

bool uses_rettention(Method m) {
  return m == Method::rettention || m == Method::rectified_rettention;
}
// The methods with reference steps (rho, Delta and the two lse arrays).
bool uses_reference_steps(Method m) { return uses_rettention(m) || m == Method::calibrated; }

size_t align256(size_t n) { return (n + 255) / 256 * 256; }

// The stage arrays a method needs: none for dense attention (the kernel walks every key block),
// pooling and scores only for an IPAR selection or Rectified SpaAttn's R, C, the selection's
// lists for every other method; the crit bits live in the (layer, entry) states.
unsigned workspace_parts(const Config& c) {
  if (c.method == Method::dense) return 0;
  unsigned parts = st::kSelection;
  const bool rectify = c.method == Method::rectified || c.method == Method::calibrated;
  if (rectify || c.selector() == Selector::ipar) parts |= st::kPooled | st::kScores;
  if (rectify) parts |= st::kCorrection;
  return parts;
}

// Every allocation of the GPU path for one shape, each a multiple of 256 bytes.
struct Sizes {
  size_t stages = 0, lse = 0;  // the workspace: stage arrays, lse_spa and lse_full,
  size_t gathered = 0;         // and K, V in the token order (16-bit precision)
  st::Fp8Layout fp8;           // or Q, K, V quantised in the token order (quant.cuh)
  // Method::calibrated's workspace (CalibrationSpace) and its per-(layer, entry) arrays.
  size_t calib_work = 0, calib_state = 0;
  size_t perm = 0, neighbours = 0;
  size_t critical = 0, rho = 0, delta = 0;  // per (layer, entry)
  size_t workspace() const { return stages + lse + gathered + fp8.total + calib_work; }
  // Per (layer, entry); calibrated keeps a second crit bitmask, rho and Delta (the previous
  // reference step's, read while the new ones are written).
  size_t per_state(Method m) const {
    const size_t one = critical + rho + delta;
    return m == Method::calibrated ? 2 * one + calib_state : one;
  }
};

// Method::calibrated's part of the workspace, each array 256-byte aligned: O_spa and O_then
// (q's dtype, contiguous [b, S, H, d]), lse_then, R and C of the previous mask, and the
// calibration pass's per-block error terms; per (layer, entry): the errors at distances 0 and
// k, the drift and the choice per (b, h).
struct CalibrationSpace {
  size_t o = 0, lse = 0, R = 0, C = 0, partial = 0;
  size_t errors = 0, drift = 0, choice = 0;  // errors: one of the two arrays
  size_t work() const { return 2 * o + lse + R + C + partial; }
  size_t state() const { return 2 * errors + drift + choice; }
};

CalibrationSpace calibration_space(const st::Dims& dims, DType dtype) {
  const size_t rows = static_cast<size_t>(dims.batch) * (dims.num_video + dims.num_text) *
                      dims.heads;
  const size_t bh = static_cast<size_t>(dims.bh());
  CalibrationSpace c;
  c.o = align256(rows * dims.dim * element_size(dtype));
  c.lse = align256(rows * 4);
  c.R = align256(static_cast<size_t>(dims.video_rows()) * 4);
  c.C = align256(static_cast<size_t>(dims.video_rows()) * dims.dim * 4);
  c.partial = align256(static_cast<size_t>(dims.video_rows()) * st::kCalibrationTerms * 8);
  c.errors = align256(bh * kCandidates * 8);
  c.drift = align256(bh * 4);
  c.choice = align256(bh * 4);
  return c;
}

Sizes sizes(const Config& config, const st::Dims& dims, DType dtype, size_t perm_entries,
            size_t neighbour_entries) {
  Sizes s;
  s.stages = st::workspace_size(dims, workspace_parts(config));
  s.perm = align256(perm_entries * 4);
  s.neighbours = align256(neighbour_entries * 4);
  if (config.precision == Precision::fp8)
    s.fp8 = st::fp8_layout(static_cast<int64_t>(dims.batch) * dims.heads, dims.nb, dims.dim);
  if (config.method == Method::dense) return s;
  if (perm_entries > 0 && config.precision != Precision::fp8)
    s.gathered = 2 * align256(static_cast<size_t>(dims.batch) * (dims.num_video + dims.num_text) *
                              dims.heads * dims.dim * element_size(dtype));
  s.critical = align256(static_cast<size_t>(dims.video_rows()) * dims.words * 4);
  if (uses_reference_steps(config.method)) {
    const size_t rows =
        static_cast<size_t>(dims.batch) * (dims.num_video + dims.num_text) * dims.heads;
    s.lse = 2 * align256(rows * 4);
    s.rho = align256(rows * 4);
    if (config.rettention.cache_delta) s.delta = align256(rows * dims.dim * element_size(dtype));
  }
  if (config.method == Method::calibrated) {
    const CalibrationSpace c = calibration_space(dims, dtype);
    s.calib_work = c.work();
    s.calib_state = c.state();
  }
  return s;
}

// Orders the pipeline's calls and the return of its memory. Every call waits for the previous
// one (they share the workspace and the state, and may come on different streams) and records
// `done` when its launches are queued; memory goes back on a stream of the pipeline's own that
// first waits for `done`, so neither a later call on another stream nor the caller's allocator
// (which may hand the memory to other work at once) can reuse memory that queued work still
// reads. A stream that is being captured into a CUDA graph neither waits nor records: the
// capture's own dependencies order it, and the memory must outlive the graph's replays.
class StreamOrder {
 public:
  StreamOrder() = default;
  StreamOrder(const StreamOrder&) = delete;
  StreamOrder& operator=(const StreamOrder&) = delete;
  ~StreamOrder() {
    if (stream_) cudaStreamDestroy(stream_);  // pending frees still complete
    if (done_) cudaEventDestroy(done_);
  }
  // Before a call's first launch on `stream`.
  void begin(cudaStream_t stream) {
    if (!done_) SPAATTN_CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
    const bool captured = capturing(stream);
    if (recorded_ && !captured) SPAATTN_CUDA_CHECK(cudaStreamWaitEvent(stream, done_, 0));
    call_ = {stream, captured, true};
  }
  // After the call's last launch.
  void end() {
    call_.open = false;
    SPAATTN_CUDA_CHECK(record());
  }
  // When a call throws after begin(), before it gives back any memory: what it queued before the
  // error is ordered like a finished call's launches, before later calls and before the memory
  // goes back (never throws: the call's own error is the one reported).
  void abandon() noexcept {
    if (!call_.open) return;
    call_.open = false;
    if (record() != cudaSuccess) cudaGetLastError();
  }
  // Blocks the host until every call queued so far has finished.
  void wait() const {
    if (recorded_) SPAATTN_CUDA_CHECK(cudaEventSynchronize(done_));
  }
  // The stream memory is given back on, after every queued call (never throws: destructors).
  cudaStream_t release_stream() noexcept {
    if (!recorded_) return nullptr;  // nothing queued yet: any stream will do
    if (!stream_ && cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking) != cudaSuccess) {
      stream_ = nullptr;
      cudaGetLastError();
      cudaEventSynchronize(done_);  // no stream of our own: wait on the host instead
      return nullptr;
    }
    if (!waited_) waited_ = cudaStreamWaitEvent(stream_, done_, 0) == cudaSuccess;
    if (!waited_) cudaEventSynchronize(done_);
    return stream_;
  }

 private:
  // `done` on the call's stream, unless that stream is being captured.
  cudaError_t record() noexcept {
    if (call_.captured) return cudaSuccess;
    const cudaError_t e = cudaEventRecord(done_, call_.stream);
    if (e == cudaSuccess) {
      recorded_ = true;
      waited_ = false;
    }
    return e;
  }
  static bool capturing(cudaStream_t stream) {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    SPAATTN_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
    return status != cudaStreamCaptureStatusNone;
  }
  cudaEvent_t done_ = nullptr;
  cudaStream_t stream_ = nullptr;
  bool recorded_ = false, waited_ = false;
  struct {
    cudaStream_t stream = nullptr;
    bool captured = false, open = false;  // open: between begin() and end() / abandon()
  } call_;
};

// One device allocation taken from DeviceMemory (default: stream-ordered cudaMallocAsync) and
// given back by the destructor, stream-ordered after every call queued so far (StreamOrder).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceMemory& mem, size_t bytes, cudaStream_t stream, StreamOrder& order)
      : mem_(&mem), order_(&order), bytes_(bytes) {
    if (mem.allocate) {
      ptr_ = mem.allocate(bytes, stream);
    } else {
      SPAATTN_CUDA_CHECK(cudaMallocAsync(&ptr_, bytes, stream));
    }
    if (ptr_ == nullptr || reinterpret_cast<uintptr_t>(ptr_) % 256 != 0)
      throw Error(Error::Kind::runtime,
                  detail::concat("DeviceMemory.allocate: expected a 256-byte aligned block of ",
                                 bytes, " bytes, got ", ptr_));
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept { *this = std::move(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(mem_, o.mem_);
    std::swap(order_, o.order_);
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  ~DeviceBuffer() {
    if (!ptr_) return;
    const cudaStream_t stream = order_->release_stream();
    if (mem_->release)
      mem_->release(ptr_, bytes_, stream);
    else
      cudaFreeAsync(ptr_, stream);
  }
  void* get() const { return ptr_; }
  size_t size() const { return bytes_; }
  template <class T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  const DeviceMemory* mem_ = nullptr;
  StreamOrder* order_ = nullptr;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

BlockMaskView mask_view(const st::Dims& dims, const st::Buffers& buf) {
  BlockMaskView m;
  m.batch = dims.batch;
  m.heads = dims.heads;
  m.num_q_blocks = m.num_k_blocks = dims.nb;
  m.row_offsets =
      TensorView::contiguous(buf.row_offsets, DType::i32, {dims.mask_rows() + 1}, Device::cuda);
  m.col_indices =
      TensorView::contiguous(buf.col_indices, DType::i32, {dims.max_nnz()}, Device::cuda);
  return m;
}

bool same_dims(const st::Dims& a, const st::Dims& b) {
  return a.batch == b.batch && a.heads == b.heads && a.dim == b.dim && a.block == b.block &&
         a.num_video == b.num_video && a.num_text == b.num_text && a.video_offset == b.video_offset;
}

class GpuPipeline final : public DevicePipeline {
 public:
  GpuPipeline(const Config& config, const DeviceMemory& memory, std::span<const int32_t> perm,
              const std::vector<std::vector<int32_t>>& neighbours)
      : config_(config), memory_(memory), perm_(perm.begin(), perm.end()) {
    if (!neighbours.empty()) neighbour_csr_ = st::flatten_neighbours(neighbours);
  }

  CallStats forward(const CallInfo& call, const AttentionArgs& args, TensorView out,
                    const StepPlan& plan, void* stream_ptr) override {
    cuda_detail::check_gpu_call(args, out, TensorView{});
    if (config_.precision == Precision::fp8) {
      cuda_detail::check_fp8_runs(args.kernel, "config.precision", "config.precision");
      (void)st::fp8_layout(args);  // its checks
    }
    const st::Dims dims = st::make_dims(args.layout, args.batch(), args.heads(), args.head_dim());
    // The plan writes CSR lists with int32 offsets into room for every block pair.
    SPAATTN_CHECK_ARG(dims.max_nnz() <= kMaxMaskEntries, "q",
                      "expected batch * heads * blocks^2 < 2^31 (int32 mask offsets), got ",
                      dims.max_nnz(), ": split the call over batch or heads");
    const auto stream = static_cast<cudaStream_t>(stream_ptr);
    order_.begin(stream);
    CallStats stats;
    try {
      stats = run(call, args, out, plan, dims, stream);
    } catch (...) {
      order_.abandon();
      throw;
    }
    order_.end();
    if (config_.measure_density && plan.kind == CallStats::Kind::sparse)
      stats.density = read_density(args, dims, stream);
    return stats;
  }

  void reset() override { states_.clear(); }

  // The density of the mask the last sparse call ran (in buf_), read back: synchronises `stream`.
  double read_density(const AttentionArgs& args, const st::Dims& dims, cudaStream_t stream) const {
    BlockMask mask;
    mask.batch = dims.batch;
    mask.heads = dims.heads;
    mask.num_q_blocks = mask.num_k_blocks = dims.nb;
    mask.row_offsets.resize(static_cast<size_t>(dims.mask_rows() + 1));
    SPAATTN_CUDA_CHECK(cudaMemcpyAsync(mask.row_offsets.data(), buf_.row_offsets,
                                       mask.row_offsets.size() * sizeof(int32_t),
                                       cudaMemcpyDeviceToHost, stream));
    SPAATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
    mask.col_indices.resize(static_cast<size_t>(mask.row_offsets.back()));
    if (!mask.col_indices.empty()) {
      SPAATTN_CUDA_CHECK(cudaMemcpyAsync(mask.col_indices.data(), buf_.col_indices,
                                         mask.col_indices.size() * sizeof(int32_t),
                                         cudaMemcpyDeviceToHost, stream));
      SPAATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
    }
    return mask.density(args.layout);
  }
  size_t state_count() const override { return states_.size(); }
  const StateSummary* summary(int layer, int entry) const override {
    const auto it = states_.find(std::make_tuple(layer, entry));
    return it == states_.end() ? nullptr : &it->second.summary;
  }


 private:
  struct LayerState {
    StateSummary summary;
    DeviceBuffer critical;    // crit bits of the stored selection [b*H, NV, W]
    DeviceBuffer rho, delta;  // Re-ttention cache: f32 [b, S, H], q's dtype [b, S, H, d]
    // Method::calibrated: what a reference step writes while it still reads the previous
    // reference's crit bits, rho and Delta (swapped in when the call is queued), and the
    // calibration (CalibrationSpace: errors at distances 0 and k, drift, choice per (b, h)).
    DeviceBuffer critical_next, rho_next, delta_next, calibration;
    // The arrays inside `calibration`, per (b, h) of summary.cache_shape; the choice is the one
    // of the last sparse step.
    double *error_ref = nullptr, *error_then = nullptr;
    float* drift = nullptr;
    int32_t* choice = nullptr;
    int interval = 0;  // k of the last reference step (0: no previous one)
  };

  // The call's launches. The (layer, entry) state changes all or nothing: a new state is kept
  // only when every launch is queued, and a found one that a failing call may have written to
  // part way is dropped (its next call then starts afresh: a fresh selection, a late reference).
  CallStats run(const CallInfo& call, const AttentionArgs& args, const TensorView& out,
                const StepPlan& plan, const st::Dims& dims, cudaStream_t stream) {
    prepare(dims, args.q.dtype, stream);

    CallStats stats;
    stats.kind = plan.kind;
    stats.density = std::numeric_limits<double>::quiet_NaN();
    stats.mask_reused = plan.kind != CallStats::Kind::dense && !plan.fresh_mask;
    if (plan.kind == CallStats::Kind::dense) {
      // Full attention: the kernel walks every key block, no CSR lists are written.
      quantize(args, /*permute=*/false, /*pooled=*/false, stream);
      launch(args, mask_view(dims, buf_), out, {}, {}, /*permute=*/false, stream,
             /*every_block=*/true);
      if (config_.measure_density) stats.density = 1.0;
      return stats;
    }

    const auto key = std::make_tuple(call.layer, call.entry);
    auto found = states_.find(key);
    LayerState created;
    LayerState& state = found != states_.end() ? found->second : created;
    const bool calibrated = config_.method == Method::calibrated;
    // Calibrated reference step: the previous reference of this run and shape, if any, is
    // measured as it would have served this step (methods.md).
    const int prev_ref = calibrated && plan.kind == CallStats::Kind::reference &&
                                 state.calibration.get() && state.summary.ref_step >= 0 &&
                                 state.summary.ref_step < call.step &&
                                 state.summary.cache_shape == call_shape(args)
                             ? state.summary.ref_step
                             : -1;
    try {
      allocate_state(state, plan, stream);
      const bool pooled = plan_masks(args, dims, plan, state, prev_ref >= 0, stream);
      const BlockMaskView mask = mask_view(dims, buf_);
      const AttentionArgs ordered = gather(args, pooled, stream);
      if (plan.kind == CallStats::Kind::reference && calibrated)
        run_calibrated_reference(ordered, dims, mask, out, state,
                                 prev_ref >= 0 ? call.step - prev_ref : 0, stream);
      else if (plan.kind == CallStats::Kind::reference)
        run_reference(ordered, dims, mask, out, state, stream);
      else
        run_sparse(ordered, dims, mask, out, plan, state, stream);
    } catch (...) {
      order_.abandon();  // before the dropped state's memory goes back
      if (found != states_.end()) states_.erase(found);
      throw;
    }
    if (calibrated && plan.kind == CallStats::Kind::reference) {
      state.interval = prev_ref >= 0 ? call.step - prev_ref : 0;
      std::swap(state.critical, state.critical_next);
      std::swap(state.rho, state.rho_next);
      std::swap(state.delta, state.delta_next);
    }

    if (plan.fresh_mask) {
      state.summary.mask_step = call.step;
      state.summary.mask_shape = call_shape(args);
    }
    if (plan.kind == CallStats::Kind::reference) {
      state.summary.ref_step = call.step;
      state.summary.cache_shape = call_shape(args);
    }
    if (found == states_.end()) states_.emplace(key, std::move(created));
    if (config_.measure_density && plan.kind == CallStats::Kind::reference) stats.density = 1.0;
    return stats;
  }

  // Constants once; the workspace whenever the shape or dtype changes (reallocated only when it
  // must grow).
  void prepare(const st::Dims& dims, DType dtype, cudaStream_t stream) {
    if (!perm_.empty() && !perm_mem_.get()) {
      perm_mem_ = DeviceBuffer(memory_, align256(perm_.size() * 4), stream, order_);
      SPAATTN_CUDA_CHECK(cudaMemcpyAsync(perm_mem_.get(), perm_.data(), perm_.size() * 4,
                                         cudaMemcpyHostToDevice, stream));
    }
    const auto& [offsets, cols] = neighbour_csr_;
    if (!offsets.empty() && !neighbour_mem_.get()) {
      neighbour_mem_ = DeviceBuffer(memory_, align256((offsets.size() + cols.size()) * 4), stream, order_);
      SPAATTN_CUDA_CHECK(cudaMemcpyAsync(neighbour_mem_.get(), offsets.data(), offsets.size() * 4,
                                         cudaMemcpyHostToDevice, stream));
      if (!cols.empty())
        SPAATTN_CUDA_CHECK(cudaMemcpyAsync(neighbour_mem_.as<int32_t>() + offsets.size(),
                                           cols.data(), cols.size() * 4, cudaMemcpyHostToDevice,
                                           stream));
    }
    if (workspace_.get() && same_dims(dims, dims_) && dtype == dtype_) return;
    // Sizes, shape and dtype change together, after the allocation: a failed one leaves them
    // describing the workspace that is still there.
    const Sizes next = sizes(config_, dims, dtype, perm_.size(), offsets.size() + cols.size());
    const size_t bytes = next.workspace();
    if (workspace_.size() < bytes) workspace_ = DeviceBuffer(memory_, bytes, stream, order_);
    sizes_ = next;
    dims_ = dims;
    dtype_ = dtype;
    char* base = workspace_.as<char>();
    // Dense attention without a token order needs no workspace at all.
    buf_ = sizes_.stages ? st::carve_workspace(dims, base, workspace_parts(config_)) : st::Buffers{};
    lse_spa_ = reinterpret_cast<float*>(base + sizes_.stages);
    lse_full_ = lse_spa_ + sizes_.lse / 8;  // two arrays of sizes_.lse / 2 bytes
    k_ordered_ = sizes_.gathered ? base + sizes_.stages + sizes_.lse : nullptr;
    v_ordered_ = sizes_.gathered ? static_cast<char*>(k_ordered_) + sizes_.gathered / 2 : nullptr;
    fp8_ = sizes_.fp8.total ? base + sizes_.stages + sizes_.lse + sizes_.gathered : nullptr;
    calib_ = CalibrationWork{};
    if (sizes_.calib_work) {
      const CalibrationSpace c = calibration_space(dims, dtype);
      char* at = base + sizes_.stages + sizes_.lse + sizes_.gathered + sizes_.fp8.total;
      calib_.o_spa = at;
      calib_.o_then = at + c.o;
      at += 2 * c.o;
      calib_.lse_then = reinterpret_cast<float*>(at);
      calib_.R_then = reinterpret_cast<float*>(at + c.lse);
      calib_.C_then = reinterpret_cast<float*>(at + c.lse + c.R);
      calib_.partial = reinterpret_cast<double*>(at + c.lse + c.R + c.C);
    }
  }

  void allocate_state(LayerState& state, const StepPlan& plan, cudaStream_t stream) {
    const auto sized = [&](DeviceBuffer& buf, size_t bytes) {
      if (bytes && buf.size() != bytes) buf = DeviceBuffer(memory_, bytes, stream, order_);
    };
    sized(state.critical, sizes_.critical);
    if (plan.kind != CallStats::Kind::reference) return;
    sized(state.rho, sizes_.rho);
    sized(state.delta, sizes_.delta);
    if (config_.method != Method::calibrated) return;
    sized(state.critical_next, sizes_.critical);
    sized(state.rho_next, sizes_.rho);
    sized(state.delta_next, sizes_.delta);
    if (state.calibration.size() != sizes_.calib_state) {
      state.calibration = DeviceBuffer(memory_, sizes_.calib_state, stream, order_);
      const CalibrationSpace c = calibration_space(dims_, dtype_);
      char* base = state.calibration.as<char>();
      state.error_ref = reinterpret_cast<double*>(base);
      state.error_then = reinterpret_cast<double*>(base + c.errors);
      state.drift = reinterpret_cast<float*>(base + 2 * c.errors);
      state.choice = reinterpret_cast<int32_t*>(base + 2 * c.errors + c.drift);
    }
  }

  const int32_t* perm_device() const { return perm_.empty() ? nullptr : perm_mem_.as<int32_t>(); }

  st::NeighbourMap neighbour_map() const {
    st::NeighbourMap m;
    if (neighbour_mem_.get()) {
      m.offsets = neighbour_mem_.as<int32_t>();
      m.cols = m.offsets + neighbour_csr_.first.size();
    }
    return m;
  }

  // The plan: the mask's CSR lists in buf_ and, for Rectified SpaAttn, R and C. A fresh
  // selection writes its crit bits straight into the state; a reused one lists the stored bits.
  // Returns whether pooling ran (with FP8, it then wrote the video rows' statistics).
  // Calibrated: R, C every step (some head may apply them), the fresh selection of a reference
  // step into critical_next, and with a previous reference (prev_ref) also R, C of its mask.
  bool plan_masks(const AttentionArgs& args, const st::Dims& dims, const StepPlan& plan,
                  LayerState& state, bool prev_ref, cudaStream_t stream) {
    st::Buffers b = buf_;
    const bool calibrated = config_.method == Method::calibrated;
    b.critical = calibrated && plan.kind == CallStats::Kind::reference
                     ? state.critical_next.as<uint32_t>()
                     : state.critical.as<uint32_t>();
    const bool rectify = config_.method == Method::rectified || calibrated;
    // Pooling and scores feed a fresh IPAR selection and, every step, Rectified SpaAttn's R, C.
    const bool pool = rectify || (plan.fresh_mask && config_.selector() == Selector::ipar);
    // A calibrated sparse step chooses each head's candidate at its distance first, and
    // computes the terms only for the heads whose choice reads them.
    const int32_t* choice =
        calibrated && plan.kind == CallStats::Kind::sparse ? state.choice : nullptr;
    if (choice) {
      st::CalibrateParams c;
      c.dims = dims;
      c.error_ref = state.error_ref;
      c.error_then = state.error_then;
      c.choice = state.choice;
      c.k = state.interval;
      c.distance = plan.k;
      st::launch_calibrate_choose(c, stream);
    }
    if (pool) {
      st::PoolParams pp = st::make_pool_params(args, perm_device(), b);
      if (fp8_) {
        const st::Fp8PoolStats stats = st::fp8_pool_stats(args, sizes_.fp8, fp8_);
        pp.fp8_part = stats.part;
        pp.fp8_chunks = stats.chunks;
      } else {
        pp.calibrated_choice = choice;  // (FP8: the pass writes every head's statistics)
        // The video rows of K and V into the kernel's copies in the token order, from the
        // rows the pass reads anyway; gather() then copies the text rows.
        pp.k_out = k_ordered_;
        pp.v_out = v_ordered_;
      }
      st::launch_pool(pp, stream);
      st::ScoreParams sp = st::make_score_params(args, rectify && config_.gapr, b);
      sp.calibrated_choice = choice;
      st::launch_scores(sp, stream);
    }
    if (plan.fresh_mask)
      st::launch_select(st::make_select_params(dims, config_, neighbour_map(), b), stream);
    else
      st::launch_csr_from_critical(dims, b.critical, /*complement=*/false, b, stream);
    if (rectify) {
      st::RectifyParams rp = st::make_rectify_params(dims, config_.gapr, b);
      rp.calibrated_choice = choice;
      st::launch_rectify(rp, stream);
    }
    if (calibrated && prev_ref) {
      st::RectifyParams rp = st::make_rectify_params(dims, config_.gapr, b);
      rp.critical = state.critical.as<uint32_t>();
      rp.R = calib_.R_then;
      rp.C = calib_.C_then;
      st::launch_rectify(rp, stream);
    }
    return pool;
  }

  // FP8: Q, K, V quantised into fp8_ (in the token order when the launches permute), once per
  // call: a reference step's two launches read the same copy. pooled: plan_masks pooled this
  // call, so the video rows' statistics are already written.
  void quantize(const AttentionArgs& args, bool permute, bool pooled, cudaStream_t stream) const {
    if (fp8_)
      st::launch_quantize_fp8(args, sizes_.fp8, permute ? perm_device() : nullptr, fp8_, stream,
                              pooled);
  }

  // The arguments the kernel runs on: K and V replaced by their copies in the token order
  // (unchanged without a token order); FP8: the quantised copies made instead.
  AttentionArgs gather(const AttentionArgs& args, bool pooled, cudaStream_t stream) const {
    if (fp8_) quantize(args, /*permute=*/true, pooled, stream);
    if (!k_ordered_) return args;
    st::GatherParams gp = st::make_gather_params(args, perm_device(), k_ordered_, v_ordered_);
    gp.text_only = pooled && !fp8_;  // plan_masks' 16-bit pooling pass wrote the video rows
    st::launch_gather_kv(gp, stream);
    AttentionArgs a = args;
    a.k = st::gathered_view(args, k_ordered_);
    a.v = st::gathered_view(args, v_ordered_);
    return a;
  }

  // rho / Delta of the (layer, entry)'s cache as the epilogue reads or writes them: contiguous
  // [b, S, H(, d)] indexed by the caller's sequence row.
  void cache_view(FwdEpilogue& epi, const AttentionArgs& args, const DeviceBuffer& rho,
                  const DeviceBuffer& delta_buf, bool write) const {
    const int64_t S = args.seq_len(), H = args.heads(), D = args.head_dim();
    const int64_t rho_stride[3] = {S * H, H, 1}, delta_stride[3] = {S * H * D, H * D, D};
    for (int d = 0; d < 3; ++d) {
      epi.rho_stride[d] = rho_stride[d];
      epi.delta_stride[d] = delta_stride[d];
    }
    void* delta = config_.rettention.cache_delta ? delta_buf.get() : nullptr;
    if (write) {
      epi.rho_out = rho.as<float>();
      epi.delta_out = delta;
    } else {
      epi.rho = rho.as<float>();
      epi.delta = delta;
    }
  }

  void run_sparse(const AttentionArgs& args, const st::Dims& dims, const BlockMaskView& mask,
                  TensorView out, const StepPlan& plan, const LayerState& state,
                  cudaStream_t stream) {
    FwdEpilogue epi;
    if (config_.method == Method::calibrated) {
      run_calibrated_sparse(args, dims, mask, out, plan, state, stream);
      return;
    }
    if (config_.method == Method::rectified) {
      epi.kind = EpilogueKind::block_affine;
      epi.R = buf_.R;
      epi.C = buf_.C;
    } else if (uses_rettention(config_.method)) {
      epi.kind = EpilogueKind::row_affine;
      cache_view(epi, args, state.rho, state.delta, /*write=*/false);
      epi.drift = static_cast<float>(plan.k - 1) * config_.rettention.drift;
      epi.clamp = config_.rettention.clamp;
    }
    launch(args, mask, out, {}, epi, /*permute=*/true, stream);
  }

  void run_reference(const AttentionArgs& args, const st::Dims& dims, const BlockMaskView& mask,
                     TensorView out, LayerState& state, cudaStream_t stream) {
    reference_passes(args, dims, mask, out, out, state.critical.as<uint32_t>(), state.rho,
                     state.delta, stream);
  }

  // A reference step's two passes over the keys of the mask `critical`. Pass 1: the mask's keys
  // -> O_spa into o_spa (out itself, or a buffer of the same shape), lse_spa into the workspace.
  // Pass 2: the complement's keys, merged with pass 1 in the epilogue into O_full (out), lse_full,
  // and the cache rho, Delta. Its CSR lists replace the mask's, which pass 1 (earlier on the
  // stream) no longer reads. Each row of o_spa is read and then the row of out written by the
  // same warp.
  void reference_passes(const AttentionArgs& args, const st::Dims& dims, const BlockMaskView& mask,
                        TensorView out, const TensorView& o_spa, const uint32_t* critical,
                        const DeviceBuffer& rho, const DeviceBuffer& delta, cudaStream_t stream) {
    const int64_t B = args.batch(), S = args.seq_len(), H = args.heads();
    const TensorView lse_spa =
        TensorView::contiguous(lse_spa_, DType::f32, {B, S, H}, Device::cuda);
    const TensorView lse_full =
        TensorView::contiguous(lse_full_, DType::f32, {B, S, H}, Device::cuda);
    launch(args, mask, o_spa, lse_spa, {}, /*permute=*/true, stream);
    st::launch_csr_from_critical(dims, critical, /*complement=*/true, buf_, stream);
    FwdEpilogue epi;
    epi.kind = EpilogueKind::merge_reference;
    epi.prev_out = o_spa.data;
    for (int d = 0; d < 3; ++d) epi.prev_stride[d] = o_spa.stride[d];
    epi.prev_lse = lse_spa_;
    cache_view(epi, args, rho, delta, /*write=*/true);
    launch(args, mask, out, lse_full, epi, /*permute=*/true, stream);
  }

  // What the calibration kernels read of every call: Q, the pooling, out.
  st::CalibrateParams calibrate_params(const AttentionArgs& args, const st::Dims& dims,
                                       const TensorView& out) const {
    st::CalibrateParams c;
    c.dims = dims;
    c.dtype = args.q.dtype;
    c.scale = args.softmax_scale();
    c.perm = perm_device();
    c.q = args.q.data;
    c.out = out.data;
    for (int d = 0; d < 3; ++d) {
      c.q_stride[d] = args.q.stride[d];
      c.out_stride[d] = out.stride[d];
    }
    c.k_mean = buf_.k_mean;
    c.v_mean = buf_.v_mean;
    return c;
  }

  // Method::calibrated's reference step. After a previous reference step (k > 0), the keys of
  // every row are split by the fresh mask (now) and the previous one (prev) into four disjoint
  // sets, one launch each, so that every key is still visited once (docs/gpu.md, Calibrated
  // correction): C = prev \ now -> O_then; D = neither, merged with C -> the complement of now
  // in out; A = now & prev -> O_spa's first part, also merged into O_then; B = now \ prev,
  // merged with A -> O_spa, then with the complement -> O_full in out, rho and Delta. Without one,
  // the two passes of run_reference (O_spa kept in the workspace). Then the calibration pass.
  void run_calibrated_reference(const AttentionArgs& args, const st::Dims& dims,
                                const BlockMaskView& mask, TensorView out, LayerState& state,
                                int k, cudaStream_t stream) {
    const int64_t B = args.batch(), S = args.seq_len(), H = args.heads(), D = args.head_dim();
    const DType dt = args.q.dtype;
    const auto rows = [&](float* p) {
      return TensorView::contiguous(p, DType::f32, {B, S, H}, Device::cuda);
    };
    const TensorView o_spa = TensorView::contiguous(calib_.o_spa, dt, {B, S, H, D}, Device::cuda);
    const TensorView o_then =
        TensorView::contiguous(calib_.o_then, dt, {B, S, H, D}, Device::cuda);
    const uint32_t* now = state.critical_next.as<uint32_t>();
    const uint32_t* prev = state.critical.as<uint32_t>();
    const auto partial = [&](MergeMode mode, const TensorView& from, float* from_lse,
                             const TensorView& side, float* side_lse) {
      FwdEpilogue epi;
      epi.kind = EpilogueKind::partial_merge;
      epi.merge_mode = mode;
      epi.prev_out = from.data;
      epi.prev_lse = from_lse;
      epi.side_out = side.data;
      epi.side_lse = side_lse;
      for (int d = 0; d < 3; ++d) {
        epi.prev_stride[d] = from.stride[d];
        epi.side_stride[d] = side.stride[d];
      }
      return epi;
    };
    if (k > 0) {
      st::launch_csr_from_masks(dims, now, true, prev, false, buf_, stream);  // C
      launch(args, mask, o_then, rows(calib_.lse_then), {}, /*permute=*/true, stream);
      st::launch_csr_from_masks(dims, now, true, prev, true, buf_, stream);  // D
      launch(args, mask, out, rows(lse_full_),
             partial(MergeMode::into, o_then, calib_.lse_then, {}, nullptr), true, stream);
      st::launch_csr_from_masks(dims, now, false, prev, false, buf_, stream);  // A
      launch(args, mask, o_spa, rows(lse_spa_),
             partial(MergeMode::side, {}, nullptr, o_then, calib_.lse_then), true, stream);
      st::launch_csr_from_masks(dims, now, false, prev, true, buf_, stream);  // B
      FwdEpilogue epi = partial(MergeMode::finish, o_spa, lse_spa_, out, lse_full_);
      cache_view(epi, args, state.rho_next, state.delta_next, /*write=*/true);
      launch(args, mask, o_spa, rows(lse_spa_), epi, /*permute=*/true, stream);
    } else {
      reference_passes(args, dims, mask, out, o_spa, now, state.rho_next, state.delta_next,
                       stream);
    }

    st::CalibrateParams c = calibrate_params(args, dims, out);
    c.lse_full = lse_full_;
    c.critical = now;
    c.o_spa = o_spa.data;
    c.lse_spa = lse_spa_;
    c.R = buf_.R;
    c.C = buf_.C;
    if (k > 0) {
      c.o_then = o_then.data;
      c.lse_then = calib_.lse_then;
      c.critical_then = prev;
      c.R_then = calib_.R_then;
      c.C_then = calib_.C_then;
      c.rho_then = state.rho.as<float>();
      c.delta_then = state.delta.get();
      c.k = k;
    }
    c.clamp = config_.rettention.clamp;
    c.partial = calib_.partial;
    c.drift = state.drift;
    c.initial_drift = config_.rettention.drift;
    c.error_ref = state.error_ref;
    c.error_then = state.error_then;
    st::launch_calibrate_measure(c, stream);
  }

  // Method::calibrated's sparse step: the kernel applies each (b, h)'s candidate (its lse, which
  // the merge pass reads, into the workspace), then the merge pass.
  void run_calibrated_sparse(const AttentionArgs& args, const st::Dims& dims,
                             const BlockMaskView& mask, TensorView out, const StepPlan& plan,
                             const LayerState& state, cudaStream_t stream) {
    FwdEpilogue epi;
    epi.kind = EpilogueKind::calibrated;
    epi.R = buf_.R;
    epi.C = buf_.C;
    cache_view(epi, args, state.rho, state.delta, /*write=*/false);
    epi.clamp = config_.rettention.clamp;
    epi.choice = state.choice;
    epi.head_drift = state.drift;
    epi.steps = static_cast<float>(plan.k - 1);
    const TensorView lse_spa = TensorView::contiguous(
        lse_spa_, DType::f32, {args.batch(), args.seq_len(), args.heads()}, Device::cuda);
    launch(args, mask, out, lse_spa, epi, /*permute=*/true, stream);
    st::CalibrateParams c = calibrate_params(args, dims, out);
    c.critical = state.critical.as<uint32_t>();
    c.lse_spa = lse_spa_;
    c.choice = state.choice;
    st::launch_calibrate_merge(c, stream);
  }

  // The calibration of (layer, entry) read back after every call queued so far.
  std::optional<Calibration> calibration(int layer, int entry) const override {
    const auto it = states_.find(std::make_tuple(layer, entry));
    if (it == states_.end() || !it->second.calibration.get() || it->second.summary.ref_step < 0)
      return std::nullopt;
    const LayerState& state = it->second;
    order_.wait();
    Calibration cal;
    cal.batch = state.summary.cache_shape.dims[0];
    cal.heads = state.summary.cache_shape.dims[2];
    const size_t bh = static_cast<size_t>(cal.batch * cal.heads);
    cal.ref_step = state.summary.ref_step;
    cal.interval = state.interval;
    cal.error_ref.resize(bh * kCandidates);
    cal.error_then.resize(bh * kCandidates);
    cal.drift.resize(bh);
    SPAATTN_CUDA_CHECK(cudaMemcpy(cal.error_ref.data(), state.error_ref, bh * kCandidates * 8,
                                  cudaMemcpyDeviceToHost));
    SPAATTN_CUDA_CHECK(cudaMemcpy(cal.error_then.data(), state.error_then, bh * kCandidates * 8,
                                  cudaMemcpyDeviceToHost));
    SPAATTN_CUDA_CHECK(cudaMemcpy(cal.drift.data(), state.drift, bh * 4, cudaMemcpyDeviceToHost));
    return cal;
  }

  void launch(const AttentionArgs& args, const BlockMaskView& mask, const TensorView& out,
              const TensorView& lse, const FwdEpilogue& epi, bool permute, cudaStream_t stream,
              bool every_block = false) {
    FwdParams p = cuda_detail::make_fwd_params(args, mask, out, lse);
    if (every_block) p.row_offsets = p.col_indices = nullptr;
    p.epi = epi;
    p.video_perm = permute ? perm_device() : nullptr;
    p.kv_ordered = permute && k_ordered_ != nullptr;
    if (fp8_) p.fp8 = st::fp8_operands(sizes_.fp8, fp8_);
    cuda_detail::launch_fwd(p, args.q.dtype, args.head_dim(), args.layout.block_size, stream,
                            args.kernel);
  }

  Config config_;
  DeviceMemory memory_;
  StreamOrder order_;  // before every DeviceBuffer: they give their memory back through it
  std::vector<int32_t> perm_;
  std::pair<std::vector<int32_t>, std::vector<int32_t>> neighbour_csr_;
  DeviceBuffer perm_mem_, neighbour_mem_, workspace_;
  st::Dims dims_;
  DType dtype_ = DType::bf16;
  Sizes sizes_;
  st::Buffers buf_;
  float *lse_spa_ = nullptr, *lse_full_ = nullptr;
  void *k_ordered_ = nullptr, *v_ordered_ = nullptr;
  void* fp8_ = nullptr;
  struct CalibrationWork {
    void *o_spa = nullptr, *o_then = nullptr;
    float *lse_then = nullptr, *R_then = nullptr, *C_then = nullptr;
    double* partial = nullptr;
  } calib_;
  std::map<std::tuple<int, int>, LayerState> states_;
};

}  // namespace

std::unique_ptr<DevicePipeline> make_device_pipeline(
    const Config& config, const DeviceMemory& memory, std::span<const int32_t> perm,
    const std::vector<std::vector<int32_t>>& neighbours) {
  return std::make_unique<GpuPipeline>(config, memory, perm, neighbours);
}

WorkspaceSize device_workspace_size(const Config& config, const AttentionArgs& args,
                                    size_t perm_entries,
                                    const std::vector<std::vector<int32_t>>& neighbours) {
  const st::Dims dims = st::make_dims(args.layout, args.batch(), args.heads(), args.head_dim());
  size_t neighbour_entries = neighbours.empty() ? 0 : neighbours.size() + 1;
  for (const auto& list : neighbours) neighbour_entries += list.size();
  const Sizes s = sizes(config, dims, args.q.dtype, perm_entries, neighbour_entries);
  WorkspaceSize w;
  if (config.precision == Precision::fp8) (void)st::fp8_layout(args);  // its checks
  w.workspace = s.workspace();
  w.constants = s.perm + s.neighbours;
  w.per_state = s.per_state(config.method);
  return w;
}

}  // namespace spaattn::detail
