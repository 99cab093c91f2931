// SparseAttention: one attention call of a configured method on host tensors, with the state it
// keeps across denoising steps (docs/methods.md, Schedule and state). The stages themselves live in
// src/cpu; this file decides which of them run at a given (layer, step) and owns the caches.
#include "spaattn/method.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/device_pipeline.hpp"
#include "cpu/calibrate.hpp"
#include "cpu/parallel.hpp"
#include "spaattn/error.hpp"

namespace spaattn {
namespace {

// The methods that apply Re-ttention's rho and Delta to every sparse step.
bool uses_rettention(Method m) {
  return m == Method::rettention || m == Method::rectified_rettention;
}

// The methods scheduled as Re-ttention is: reference steps, and a mask that serves until the
// next one.
bool uses_reference_steps(Method m) { return uses_rettention(m) || m == Method::calibrated; }

// FP8 exists only as the Hopper kernel: a host call is an error, never a silent 16-bit one.
void check_precision(const Config& config, const AttentionArgs& args) {
  SPAATTN_CHECK_ARG(config.precision != Precision::fp8 || args.q.device == Device::cuda,
                    "config.precision", "fp8 needs CUDA tensors (the Hopper FP8 kernel), got ",
                    to_string(args.q.device), " tensors");
}

// Contiguous [b, S, H, d] host buffer of q's dtype holding the tokens in the configured order.
struct Permuted {
  std::vector<uint8_t> bytes;
  TensorView view;
};

Permuted gather(const TensorView& src, std::span<const int32_t> perm, int64_t video_offset) {
  Permuted p;
  p.bytes.resize(static_cast<size_t>(src.numel()) * element_size(src.dtype));
  p.view = TensorView::contiguous(p.bytes.data(), src.dtype,
                                  {src.shape[0], src.shape[1], src.shape[2], src.shape[3]});
  permute_tokens(src, p.view, perm, video_offset, /*inverse=*/false);
  return p;
}

// out[b, n] = o[b, pos(n)] converted to out's dtype, where pos maps a caller token to its place
// in the ordered sequence (identity when inv_perm is empty).
void write_output(const std::vector<float>& o, const TensorView& out, const Layout& layout,
                  std::span<const int32_t> inv_perm) {
  const int64_t B = out.shape[0], S = out.shape[1], H = out.shape[2], D = out.shape[3];
  const int64_t v0 = layout.video_offset();
  cpu::parallel_for(B * S, [&](int64_t bs) {
    const int64_t b = bs / S, n = bs % S;
    int64_t src = n;
    if (!inv_perm.empty() && n >= v0 && n < v0 + layout.num_video) src = v0 + inv_perm[n - v0];
    for (int64_t h = 0; h < H; ++h) {
      const float* row = o.data() + ((b * S + src) * H + h) * D;
      const int64_t base = out.offset({b, n, h});
      for (int64_t e = 0; e < D; ++e) store_from_float(out.data, out.dtype, base + e, row[e]);
    }
  }, 64);
}

}  // namespace

CallShape call_shape(const AttentionArgs& args) {
  const Layout& L = args.layout;
  return CallShape{.dims = {args.batch(), args.seq_len(), args.heads(), args.head_dim()},
                   .dtype = args.q.dtype,
                   .num_video = L.num_video,
                   .num_text = L.num_text,
                   .block_size = L.block_size,
                   .text_placement = L.text_placement};
}

StepPlan plan_step(const Config& config, const CallInfo& call, const AttentionArgs& args,
                   const StateSummary* prev) {
  const Schedule& sched = config.schedule;
  const bool dense_layer = std::find(sched.dense_layers.begin(), sched.dense_layers.end(),
                                     call.layer) != sched.dense_layers.end();
  StepPlan plan;
  if (config.method == Method::dense || dense_layer || call.step < sched.dense_steps) {
    plan.kind = CallStats::Kind::dense;
    plan.fresh_mask = false;
    return plan;
  }
  if (!uses_reference_steps(config.method)) {
    plan.kind = CallStats::Kind::sparse;
    plan.fresh_mask = !prev || prev->mask_step < 0 || call.step < prev->mask_step ||
                      call.step - prev->mask_step >= sched.mask_period ||
                      prev->mask_shape != call_shape(args);
    return plan;
  }
  // Re-ttention: references at w, w + r, ...; the mask of a reference step is kept until the
  // next one, so rho always describes the mask it corrects. A (layer, entry) whose state holds no
  // reference made since the last scheduled one (its call at that step was skipped, e.g. by a
  // step cache, or the state is new or from an earlier run) computes this call as a reference
  // step: a late reference rather than statistics of another mask or another run.
  const int since = call.step - sched.dense_steps;
  const int last_ref = call.step - since % config.rettention.ref_period;
  const bool has_ref = prev && prev->ref_step >= last_ref && prev->ref_step < call.step;
  plan.kind = has_ref ? CallStats::Kind::sparse : CallStats::Kind::reference;
  plan.k = has_ref ? call.step - prev->ref_step : 0;
  plan.fresh_mask = plan.kind == CallStats::Kind::reference;
  if (plan.kind == CallStats::Kind::sparse) {
    const CallShape& c = prev->cache_shape;
    const CallShape now = call_shape(args);
    SPAATTN_CHECK_ARG(c.dims == now.dims, "q", "expected the shape of the reference step [",
                      c.dims[0], ", ", c.dims[1], ", ", c.dims[2], ", ", c.dims[3], "]");
    SPAATTN_CHECK_ARG(c.dtype == now.dtype, "q", "expected the dtype of the reference step (",
                      to_string(c.dtype), "), got ", to_string(now.dtype));
    const auto place = [](const CallShape& x) {
      return x.text_placement == TextPlacement::prefix ? "prefix" : "suffix";
    };
    SPAATTN_CHECK_ARG(c == now, "layout", "expected the layout of the reference step (",
                      c.num_video, " video and ", c.num_text, " ", place(c),
                      " text tokens, blocks of ", c.block_size, "), got ", now.num_video, " and ",
                      now.num_text, " ", place(now), ", blocks of ", now.block_size);
  }
  return plan;
}

SparseAttention::SparseAttention(Config config, DeviceMemory memory)
    : config_(std::move(config)), memory_(std::move(memory)) {
  config_.validate();
  if (config_.order.kind != OrderKind::raster) {
    perm_ = token_permutation(config_.order);
    inv_perm_ = invert_permutation(perm_);
  }
  if (!config_.order.grid.empty()) neighbours_ = block_neighbours(config_.order, config_.block_size);
}

SparseAttention::~SparseAttention() = default;
SparseAttention::SparseAttention(SparseAttention&&) noexcept = default;
SparseAttention& SparseAttention::operator=(SparseAttention&&) noexcept = default;

void SparseAttention::reset() {
  std::lock_guard<std::mutex> lock(*mutex_);
  states_.clear();
  if (device_) device_->reset();
}

size_t SparseAttention::state_count() const {
  std::lock_guard<std::mutex> lock(*mutex_);
  return states_.size() + (device_ ? device_->state_count() : 0);
}

WorkspaceSize SparseAttention::workspace_size(const AttentionArgs& args) const {
  validate(args);
  SPAATTN_CHECK_ARG(args.layout.block_size == config_.block_size, "args.layout.block_size",
                    "expected config.block_size ", config_.block_size, ", got ",
                    args.layout.block_size);
  return detail::device_workspace_size(config_, args, perm_.size(), neighbours_);
}

AttentionArgs SparseAttention::checked(const CallInfo& call, const AttentionArgs& args_in,
                                       const TensorView& out) const {
  validate(args_in, &out, nullptr);
  // The config's softmax scale and kernel family apply where the call leaves them unset; a call
  // that sets another value is an error rather than one of the two silently winning.
  AttentionArgs args = args_in;
  if (config_.scale != 0.f) {
    SPAATTN_CHECK_ARG(args.scale == 0.f || args.scale == config_.scale, "args.scale",
                      "expected 0 or config.scale ", config_.scale, ", got ", args.scale);
    args.scale = config_.scale;
  }
  if (config_.kernel != KernelFamily::automatic) {
    SPAATTN_CHECK_ARG(args.kernel == KernelFamily::automatic || args.kernel == config_.kernel,
                      "args.kernel", "expected auto or config.kernel ", to_string(config_.kernel),
                      ", got ", to_string(args.kernel));
    args.kernel = config_.kernel;
  }
  SPAATTN_CHECK_ARG(call.layer >= 0 && call.entry >= 0 && call.step >= 0, "call",
                    "expected layer, entry and step >= 0, got ", call.layer, ", ", call.entry,
                    ", ", call.step);
  const Layout& layout = args.layout;
  SPAATTN_CHECK_ARG(layout.block_size == config_.block_size, "args.layout.block_size",
                    "expected config.block_size ", config_.block_size, ", got ",
                    layout.block_size);
  SPAATTN_CHECK_ARG(config_.order.grid.empty() || config_.order.grid.size() == layout.num_video,
                    "args.layout.num_video", "expected the grid's t*h*w = ",
                    config_.order.grid.size(), ", got ", layout.num_video);
  check_precision(config_, args);
  if (args.q.device == Device::cuda) validate_gpu_operands(args, out);
  return args;
}

void SparseAttention::check(const CallInfo& call, const AttentionArgs& args,
                            const TensorView& out) const {
  (void)checked(call, args, out);
}

CallStats SparseAttention::forward(const CallInfo& call, const AttentionArgs& args_in,
                                   TensorView out, void* stream) {
  // Everything is checked before any work and before any state changes.
  const AttentionArgs args = checked(call, args_in, out);
  std::lock_guard<std::mutex> lock(*mutex_);
  if (args.q.device == Device::cuda) {
    if (!device_) device_ = detail::make_device_pipeline(config_, memory_, perm_, neighbours_);
    const StepPlan plan =
        plan_step(config_, call, args, device_->summary(call.layer, call.entry));
    return device_->forward(call, args, out, plan, stream);
  }
  const auto it = states_.find(std::make_tuple(call.layer, call.entry));
  const StepPlan plan =
      plan_step(config_, call, args, it == states_.end() ? nullptr : &it->second.summary);
  return forward_host(call, args, out, plan);
}

CallStats SparseAttention::forward_host(const CallInfo& call, const AttentionArgs& args_in,
                                        TensorView out, const StepPlan& plan) {
  const Layout& layout = args_in.layout;
  const auto key = std::make_tuple(call.layer, call.entry);
  const auto found = states_.find(key);
  const LayerState* prev = found == states_.end() ? nullptr : &found->second;
  CallStats stats;
  stats.kind = plan.kind;

  AttentionArgs args = args_in;
  Permuted pq, pk, pv;
  if (!perm_.empty()) {
    pq = gather(args_in.q, perm_, layout.video_offset());
    pk = gather(args_in.k, perm_, layout.video_offset());
    pv = gather(args_in.v, perm_, layout.video_offset());
    args.q = pq.view;
    args.k = pk.view;
    args.v = pv.view;
  }
  const int64_t B = args.batch(), S = args.seq_len(), H = args.heads(), D = args.head_dim();
  std::vector<float> o(static_cast<size_t>(B * S * H * D));
  const TensorView o_view = TensorView::contiguous(o.data(), DType::f32, {B, S, H, D});

  if (stats.kind == CallStats::Kind::dense) {
    BlockMask full = BlockMask::full(B, H, layout.num_blocks(), layout.num_blocks());
    cpu::block_sparse_attention(args, full.view(), o_view, TensorView{});
    write_output(o, out, layout, inv_perm_);
    return stats;
  }

  if (config_.method == Method::calibrated) {
    LayerState next;
    calibrated_step(call, args, plan, prev, o, next);
    stats.mask_reused = !plan.fresh_mask;
    stats.density = stats.kind == CallStats::Kind::reference
                        ? 1.0
                        : prev->selection.mask.density(layout);
    write_output(o, out, layout, inv_perm_);
    if (stats.kind == CallStats::Kind::reference) {
      LayerState& state = states_[key];
      state.selection = std::move(next.selection);
      state.cache = std::move(next.cache);
      state.calibration = std::move(next.calibration);
      state.summary.mask_step = state.summary.ref_step = call.step;
      state.summary.mask_shape = state.summary.cache_shape = call_shape(args);
    }
    return stats;
  }

  // New state is built beside the old one and committed only once the call has succeeded.
  const Selector selector = config_.selector();
  Pooled pooled;
  BlockScores scores;
  const bool rectify = config_.method == Method::rectified;
  if (selector == Selector::ipar || rectify) {
    pooled = cpu::pool(args);
    scores = cpu::implicit_full_attention(args, pooled);
  }
  Selection fresh;
  if (plan.fresh_mask)
    fresh = cpu::select_blocks(args, config_, selector == Selector::ipar ? &scores : nullptr,
                               neighbours_.empty() ? nullptr : &neighbours_);
  const Selection& selection = plan.fresh_mask ? fresh : prev->selection;
  const BlockMaskView mask = selection.mask.view();
  stats.mask_reused = !plan.fresh_mask;
  stats.density = stats.kind == CallStats::Kind::reference ? 1.0 : selection.mask.density(layout);

  RettentionCache fresh_cache;
  if (stats.kind == CallStats::Kind::reference) {
    std::vector<float> lse_full(static_cast<size_t>(B * S * H)), lse_spa(lse_full.size());
    std::vector<float> o_spa(o.size());
    const TensorView lf = TensorView::contiguous(lse_full.data(), DType::f32, {B, S, H});
    const TensorView ls = TensorView::contiguous(lse_spa.data(), DType::f32, {B, S, H});
    const TensorView os = TensorView::contiguous(o_spa.data(), DType::f32, {B, S, H, D});
    cpu::reference_attention(args, mask, o_view, lf, os, ls);
    fresh_cache = cpu::rettention_statistics(o_view, lf, os, ls, config_.rettention.cache_delta);
  } else {
    cpu::block_sparse_attention(args, mask, o_view, TensorView{});
    if (rectify) {
      const Correction corr = cpu::rectification(pooled, scores, selection, config_.gapr);
      cpu::apply_correction(corr, layout, o_view, o_view);
    } else if (uses_rettention(config_.method)) {
      const Correction corr = cpu::rettention_correction(prev->cache, plan.k, config_.rettention);
      cpu::apply_correction(corr, layout, o_view, o_view);
    }
  }
  write_output(o, out, layout, inv_perm_);
  LayerState& state = states_[key];
  if (plan.fresh_mask) {
    state.selection = std::move(fresh);
    state.summary.mask_step = call.step;
    state.summary.mask_shape = call_shape(args);
  }
  if (stats.kind == CallStats::Kind::reference) {
    state.cache = std::move(fresh_cache);
    state.summary.ref_step = call.step;
    state.summary.cache_shape = call_shape(args);
  }
  return stats;
}

std::optional<Calibration> SparseAttention::calibration(int layer, int entry) const {
  std::lock_guard<std::mutex> lock(*mutex_);
  const auto it = states_.find(std::make_tuple(layer, entry));
  if (it != states_.end() && it->second.calibration.ref_step >= 0) return it->second.calibration;
  if (device_ && config_.method == Method::calibrated) return device_->calibration(layer, entry);
  return std::nullopt;
}

// Method::calibrated (docs/methods.md, Calibrated correction). A reference step outputs full
// attention and measures, per (b, h), the error of every candidate over the video query rows;
// a sparse step applies each (b, h)'s choice over the reference step's mask.
void SparseAttention::calibrated_step(const CallInfo& call, const AttentionArgs& args,
                                      const StepPlan& plan, const LayerState* prev,
                                      std::vector<float>& o, LayerState& next) const {
  const Layout& layout = args.layout;
  const int64_t B = args.batch(), S = args.seq_len(), H = args.heads(), D = args.head_dim();
  const TensorView o_view = TensorView::contiguous(o.data(), DType::f32, {B, S, H, D});
  std::vector<float> lse_spa(static_cast<size_t>(B * S * H));
  const TensorView ls = TensorView::contiguous(lse_spa.data(), DType::f32, {B, S, H});
  cpu::CandidateTerms terms{.layout = layout, .batch = B, .seq = S, .heads = H, .dim = D,
                            .lse_spa = lse_spa.data(), .clamp = config_.rettention.clamp};
  Pooled pooled;
  BlockScores scores;
  Correction rect;
  std::vector<float> o_pool, lse_pool;
  const auto* neighbours = neighbours_.empty() ? nullptr : &neighbours_;

  if (plan.kind == CallStats::Kind::sparse) {
    const Selection& sel = prev->selection;
    const Calibration& cal = prev->calibration;
    // Each (b, h)'s candidate at this step's distance from the reference step.
    std::vector<Candidate> choice(static_cast<size_t>(B * H));
    for (int64_t bh = 0; bh < B * H; ++bh) choice[bh] = cal.choice(bh, plan.k);
    cpu::block_sparse_attention(args, sel.mask.view(), o_view, ls);
    // Pooling, P, R and C, and the pooled complement only where some head's choice reads them.
    std::vector<uint8_t> merge(static_cast<size_t>(B * H), 0);
    bool rectify = false, any_merge = false;
    for (size_t bh = 0; bh < choice.size(); ++bh) {
      const Candidate c = choice[bh];
      rectify = rectify || c == Candidate::affine || c == Candidate::scale;
      merge[bh] = c == Candidate::merge;
      any_merge = any_merge || merge[bh];
    }
    if (rectify || any_merge) pooled = cpu::pool(args);
    if (rectify) {
      scores = cpu::implicit_full_attention(args, pooled);
      rect = cpu::rectification(pooled, scores, sel, config_.gapr);
    }
    if (any_merge) cpu::pooled_complement(args, pooled, sel, merge, o_pool, lse_pool);
    terms.o_spa = o.data();
    terms.rect = &rect;
    terms.cache = &prev->cache;
    terms.drift = cal.drift.data();
    terms.k = plan.k;
    terms.o_pool = o_pool.data();
    terms.lse_pool = lse_pool.data();
    cpu::apply_candidates(choice, terms, o.data());
    return;
  }

  // Reference step: the fresh selection and one pass for full and masked attention.
  pooled = cpu::pool(args);
  scores = cpu::implicit_full_attention(args, pooled);
  next.selection = cpu::select_blocks(args, config_,
                                      config_.selector() == Selector::ipar ? &scores : nullptr,
                                      neighbours);
  std::vector<float> lse_full(lse_spa.size()), o_spa(o.size());
  const TensorView lf = TensorView::contiguous(lse_full.data(), DType::f32, {B, S, H});
  const TensorView os = TensorView::contiguous(o_spa.data(), DType::f32, {B, S, H, D});
  cpu::reference_attention(args, next.selection.mask.view(), o_view, lf, os, ls);
  next.cache = cpu::rettention_statistics(o_view, lf, os, ls, /*cache_delta=*/true);

  // Each candidate's error is measured at two distances from a reference step; a sparse step
  // at distance d then applies the candidate with the least error expected at d
  // (Calibration::choice, the error's norm linear in the distance between the two):
  //  - distance 0: this step's fresh mask (O_spa, R_i and C_i, the pooled complement of that
  //    mask); Re-ttention's candidate is exact there (error 0, its rho and Delta are this step's);
  //  - distance k: as it would have served this step from the previous reference step, over
  //    that step's mask, Re-ttention with that step's rho, Delta and the drift fitted before.
  // Without a previous reference of this run and shape only distance 0 is measured (the choice
  // is then Re-ttention's correction with the configured drift).
  const bool has_prev = prev && prev->calibration.ref_step >= 0 &&
                        prev->summary.ref_step < call.step &&
                        prev->summary.cache_shape == call_shape(args);
  const size_t heads = static_cast<size_t>(B * H);
  std::vector<float> prev_drift(heads, config_.rettention.drift);
  if (has_prev) prev_drift = prev->calibration.drift;
  const int k = has_prev ? call.step - prev->summary.ref_step : 0;
  rect = cpu::rectification(pooled, scores, next.selection, config_.gapr);
  cpu::pooled_complement(args, pooled, next.selection, {}, o_pool, lse_pool);
  terms.o_spa = o_spa.data();
  terms.rect = &rect;
  terms.o_pool = o_pool.data();
  terms.lse_pool = lse_pool.data();
  std::vector<float> o_then, lse_then, o_pool_then, lse_pool_then;
  Correction rect_then;
  cpu::CandidateTerms then = terms;
  if (has_prev) {
    o_then.resize(o.size());
    lse_then.resize(lse_spa.size());
    cpu::block_sparse_attention(
        args, prev->selection.mask.view(),
        TensorView::contiguous(o_then.data(), DType::f32, {B, S, H, D}),
        TensorView::contiguous(lse_then.data(), DType::f32, {B, S, H}));
    rect_then = cpu::rectification(pooled, scores, prev->selection, config_.gapr);
    cpu::pooled_complement(args, pooled, prev->selection, {}, o_pool_then, lse_pool_then);
    then.o_spa = o_then.data();
    then.lse_spa = lse_then.data();
    then.rect = &rect_then;
    then.o_pool = o_pool_then.data();
    then.lse_pool = lse_pool_then.data();
    then.cache = &prev->cache;
    then.drift = prev_drift.data();
    then.k = k;
  }

  Calibration& cal = next.calibration;
  cal.batch = B;
  cal.heads = H;
  cal.ref_step = call.step;
  cal.interval = k;
  cal.drift = prev_drift;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  cal.error_ref.assign(heads * kCandidates, nan);
  cal.error_then.assign(heads * kCandidates, nan);
  const int64_t v0 = layout.video_offset(), nv = layout.num_video;
  cpu::parallel_for(B * H, [&](int64_t bh) {
    const int64_t b = bh / H, h = bh % H;
    for (int c = 0; c < kCandidates; ++c) {
      const Candidate cand = static_cast<Candidate>(c);
      cal.error_ref[bh * kCandidates + c] =
          cand == Candidate::rettention ? 0.0 : cpu::candidate_error(cand, terms, o.data(), b, h);
      if (has_prev)
        cal.error_then[bh * kCandidates + c] = cpu::candidate_error(cand, then, o.data(), b, h);
    }
    if (!has_prev) return;
    // The drift from the previous reference step to this one: rho of the previous mask then
    // against the share of the full mass the same mask holds now.
    std::vector<float> rho_then(nv), rho_now(nv);
    for (int64_t t = 0; t < nv; ++t) {
      const int64_t r = (b * S + v0 + t) * H + h;
      rho_then[t] = prev->cache.rho[r];
      rho_now[t] = std::exp(lse_then[r] - lse_full[r]);
    }
    if (const auto fitted = fit_drift(rho_then, rho_now, k)) cal.drift[bh] = *fitted;
  });
}

}  // namespace spaattn
