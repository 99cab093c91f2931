// What the attention kernels' epilogue does with a row's normalised output O_spa and its lse
// (docs/gpu.md, Epilogues). Every correction is affine per row, so it is applied
// where O already sits in registers, never as an extra pass over O. Each one is a compile-time
// functor (EpiNone, EpiBlockAffine, EpiRowAffine, EpiMergeReference, EpiCalibrated of
// finish.cuh) that both kernel
// families instantiate; a new estimator is one new functor, one EpilogueKind and one line in
// dispatch_epilogue.
//   none:            O = O_spa
//   block_affine:    Rectified SpaAttn, O = R_i O_spa + C_i for the rows of video query block i
//                    (a = R [b*H, NV], c = C [b*H, NV, d], fp32); text query rows: O = O_spa
//   row_affine:      Re-ttention sparse step, O = a O_spa + Delta with a = rho + drift
//                    (min(a, 1) when clamp), rho f32 [b, S, H] and Delta (the kernel's element
//                    type, [b, S, H, d], may be null) indexed by the token's sequence position
//   calibrated:      Method::calibrated's sparse step: per (b, h) the candidate choice[b * H + h]
//                    chose (docs/methods.md, Calibrated correction) on the video query rows:
//                    none and merge O = O_spa (merge is finished by a later pass that reads
//                    this launch's lse), affine O = R_i O_spa + C_i, scale O = R_i O_spa,
//                    rettention O = a O_spa + Delta with a = rho + steps * head_drift[b * H + h]
//                    (min(a, 1) when clamp); text query rows keep O_spa
//   merge_reference: the second launch of a Re-ttention reference step. The first launch wrote
//                    (O_spa, lse_spa) of the mask into prev_out / prev_lse; this launch covers the
//                    complement keys (O_c, lse_c) and writes, per row,
//                      lse_full = logaddexp(lse_spa, lse_c), rho = exp(lse_spa - lse_full),
//                      O_full = rho O_spa + (1 - rho) O_c  -> out (and lse_full -> lse),
//                      Delta  = (1 - rho) O_c              -> delta_out, rho -> rho_out;
//                    rows with lse_full = -inf get O = 0, rho = 0, Delta = 0. 1 - rho is taken as
//                    exp(lse_c - lse_full) (no cancellation near rho = 1). The launch needs lse:
//                    prev_lse shares lse's strides (it must be another array); prev_out has
//                    prev_stride and may be out itself (each row is read before the thread that
//                    read it writes it).
//   partial_merge:   the passes of Method::calibrated's reference step over four disjoint key
//                    sets (pipeline.cu), each launch one partial (O, lse) of a row, merged
//                    through the lse (1 - weight taken from the other lse, as above):
//                    into:   O = merge(prev, this) -> out, lse;
//                    side:   out, lse = this; side = merge(side, this) in place;
//                    finish: O_spa = merge(prev, this) -> out, lse (prev may be out and lse
//                            itself), then with side = (O_c, lse_c) in place: side = O_full,
//                            side_lse = lse_full, rho -> rho_out, Delta -> delta_out as
//                            merge_reference writes them.
//                    prev_lse and side_lse have lse's strides; a row's lse that the epilogue
//                    rewrites is read by the lane that writes it only.
// Rows whose mask row is empty or holds no valid key still go through the epilogue, with
// O_spa = 0 and lse = -inf (so block_affine gives C_i, merge_reference gives O_spa's row).
// Padding query rows (text beyond L_t) are always written as O = 0, lse = -inf.
#pragma once
#include <cstdint>

namespace spaattn::cuda_detail {

enum class EpilogueKind : uint8_t {
  none,
  block_affine,
  row_affine,
  merge_reference,
  calibrated,
  partial_merge
};

// partial_merge's modes (FwdEpilogue::merge_mode).
enum class MergeMode : uint8_t { into = 1, side = 2, finish = 3 };

struct FwdEpilogue {
  EpilogueKind kind = EpilogueKind::none;
  // block_affine
  const float* R = nullptr;
  const float* C = nullptr;
  // row_affine: rho and Delta of the layer's cache
  const float* rho = nullptr;
  const void* delta = nullptr;
  int64_t rho_stride[3] = {};    // elements, dims b, S, H
  int64_t delta_stride[3] = {};  // elements, dims b, S, H (unit stride on d)
  float drift = 0.f;             // (k - 1) * lambda
  bool clamp = false;
  // calibrated: block_affine's R, C and row_affine's rho, Delta, strides and clamp, and per
  // (b, h) the candidate (a Candidate value) and the fitted lambda, applied as steps * lambda
  const int32_t* choice = nullptr;
  const float* head_drift = nullptr;
  float steps = 0.f;  // k - 1
  // merge_reference: inputs from the masked launch (same strides as out / lse) and the cache
  // written by this launch (strides as rho_stride / delta_stride)
  const void* prev_out = nullptr;
  int64_t prev_stride[3] = {};  // elements, dims b, S, H (unit stride on d)
  const float* prev_lse = nullptr;
  float* rho_out = nullptr;
  void* delta_out = nullptr;
  // partial_merge: the mode, prev_out / prev_lse / rho_out / delta_out above, and the side
  // partial (strides of side_out as prev_stride's)
  MergeMode merge_mode = MergeMode::into;
  void* side_out = nullptr;
  int64_t side_stride[3] = {};
  float* side_lse = nullptr;
};

}  // namespace spaattn::cuda_detail
