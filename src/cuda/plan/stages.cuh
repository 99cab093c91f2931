// The GPU stages that run outside the attention kernel (docs/gpu.md, Plan stages): pooling with
// GAPR's deviations, IPAR block scores with the GAPR decisions, the selection written as the
// kernel's CSR lists, and the rectification terms R, C. Internal launch functions for the GPU
// pipeline: each kernel family has one params struct, filled by one host function and passed by
// value; launches run on the given stream, allocate nothing and never synchronise.
//
// Data flow (all fp32 unless noted, [bh] = batch * heads, NV video blocks, W = ceil(NV / 32)):
//   pool:    Q, K, V (through the token permutation) -> q̄, k̄, v̄, δq, δk [bh, NV, d]
//   scores:  q̄, k̄, δq, δk, text keys of K -> P [bh, NV, NV + 1], compensable bits [bh, NV, W]
//   select:  P (ipar) or nothing (band, local) -> critical bits [bh, NV, W], CSR lists
//   rectify: P, critical, compensable, v̄ -> R [bh, NV], C [bh, NV, d]
//   calibrate (Method::calibrated): Q, k̄, v̄, a mask's crit bits and the attention outputs ->
//            per (bh, video block) error terms, then per bh the choice and drift
//            (calibrate.cu); a sparse step's merge candidate from O_spa, lse_spa
// The layouts of q̄ .. δk, P, R and C are those of the CPU Pooled, BlockScores and Correction, so
// the CPU reference and the GPU can be compared array by array. Bit j % 32 of word j / 32 of a
// row's bitmask stands for video key block j.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "spaattn/config.hpp"
#include "spaattn/layout.hpp"
#include "spaattn/method.hpp"

namespace spaattn::cuda::stages {

// Sizes every stage derives from the call's shapes alone (all fit 32 bits; make_dims checks).
struct Dims {
  int batch = 0, heads = 0, dim = 0, block = 0;
  int num_video = 0, num_text = 0;        // N_v, N_t
  int video_offset = 0, text_offset = 0;  // sequence index of the first video / text token
  int nv = 0;                             // NV video blocks
  int nb = 0;                             // all logical blocks: NV video, then the text blocks
  int words = 0;                          // W: 32-bit words of one row's video-block bitmask
  __host__ __device__ int64_t bh() const { return static_cast<int64_t>(batch) * heads; }
  // Rows (b, h, i) over the video query blocks, and CSR rows over all logical query blocks.
  __host__ __device__ int64_t video_rows() const { return bh() * nv; }
  __host__ __device__ int64_t mask_rows() const { return bh() * nb; }
  // CSR capacity that any selection fits in: every row listing every key block.
  __host__ __device__ int64_t max_nnz() const { return mask_rows() * nb; }
};

// Throws spaattn::Error naming the argument for unsupported or too large shapes.
Dims make_dims(const Layout& layout, int64_t batch, int64_t heads, int64_t head_dim);

// Which stages a workspace serves (bit flags): the band and local selectors need no pooling or
// scores, plain sparse attention no correction. kCritical carves the crit bits too, for callers
// that keep no selection of their own (the GPU pipeline keeps them per (layer, entry)).
enum Part : unsigned {
  kPooled = 1u,
  kScores = 2u,
  kSelection = 4u,
  kCorrection = 8u,
  kCritical = 16u,
  kAll = 31u
};

// The device arrays the stages exchange. carve_workspace() points them into one allocation; a
// caller may point any of them elsewhere (e.g. the CSR lists into buffers it owns).
struct Buffers {
  float *q_mean = nullptr, *k_mean = nullptr, *v_mean = nullptr;  // q̄, k̄, v̄
  float *q_dev = nullptr, *k_dev = nullptr;                       // δq, δk
  float* P = nullptr;                                             // [bh, NV, NV + 1]
  float2* partial = nullptr;        // scores' per-tile row (max, sum of exp) [bh, NV, tiles]
  uint32_t* compensable = nullptr;  // [bh, NV, W]
  uint32_t* critical = nullptr;     // [bh, NV, W]
  int32_t* row_counts = nullptr;    // [mask_rows + 1]
  void* scan_temp = nullptr;        // CUB scan scratch of scan_temp_bytes
  size_t scan_temp_bytes = 0;
  int32_t* row_offsets = nullptr;  // CSR [mask_rows + 1]
  int32_t* col_indices = nullptr;  // CSR, room for max_nnz entries
  float* R = nullptr;              // [bh, NV]
  float* C = nullptr;              // [bh, NV, d]
};

// Bytes of one allocation that holds every array of `parts` (each 256-byte aligned).
size_t workspace_size(const Dims& dims, unsigned parts = kAll);
// Points the arrays of `parts` into `base` (workspace_size bytes, 256-byte aligned); the others
// stay null.
Buffers carve_workspace(const Dims& dims, void* base, unsigned parts = kAll);

// The block neighbour map as a device CSR: video block i's neighbours are
// cols[offsets[i] .. offsets[i + 1]), offsets has NV + 1 entries.
struct NeighbourMap {
  const int32_t* offsets = nullptr;
  const int32_t* cols = nullptr;
};
// Host side of the upload: the lists of spaattn::block_neighbours() flattened into offsets
// (first) and cols (second).
std::pair<std::vector<int32_t>, std::vector<int32_t>> flatten_neighbours(
    const std::vector<std::vector<int32_t>>& lists);

// Method::calibrated's sparse steps pool, score and rectify only for the (b, h) whose chosen
// candidate reads the result (the choice per bh, a Candidate value): pooling for affine, scale
// and merge, scores and R, C for affine and scale. A stage given such a choice array skips the
// other (b, h) (their arrays keep whatever they held).
__host__ __device__ inline bool reads_pooling(int32_t choice) {
  return choice == static_cast<int32_t>(Candidate::affine) ||
         choice == static_cast<int32_t>(Candidate::scale) ||
         choice == static_cast<int32_t>(Candidate::merge);
}
__host__ __device__ inline bool reads_scores(int32_t choice) {
  return choice == static_cast<int32_t>(Candidate::affine) ||
         choice == static_cast<int32_t>(Candidate::scale);
}

// ---- pooling --------------------------------------------------------------------------------
struct PoolParams {
  Dims dims;
  DType dtype = DType::bf16;
  const void *q = nullptr, *k = nullptr, *v = nullptr;
  int64_t q_stride[3] = {}, k_stride[3] = {}, v_stride[3] = {};  // elements, dims b, S, H
  const int32_t* perm = nullptr;  // ordered video token k sits at row video_offset + perm[k]
  float *q_mean = nullptr, *k_mean = nullptr, *v_mean = nullptr;
  float *q_dev = nullptr, *k_dev = nullptr;
  // FP8 (quant.cuh, fp8_pool_stats), or nullptr: per video block, K's column sums and |V|'s
  // column maxima into partial i of fp8_chunks per (batch item, head), [.., 2, d].
  float* fp8_part = nullptr;
  int fp8_chunks = 0;
  const int32_t* calibrated_choice = nullptr;  // or nullptr: every (b, h) (reads_pooling)
  // Or nullptr: the video rows of K and V, in the token order, into the gathered copies
  // (gather.cuh's [b, H, S, d] layout, S = num_video + num_text), from the tile the pass holds
  // anyway; every (b, h), including those calibrated_choice leaves unpooled.
  void *k_out = nullptr, *v_out = nullptr;
};
// args: device bf16/f16 q, k, v (16-byte aligned rows); perm: device int32 [N_v] or nullptr.
PoolParams make_pool_params(const AttentionArgs& args, const int32_t* perm, const Buffers& buf);
void launch_pool(const PoolParams& p, cudaStream_t stream);

// ---- IPAR scores and GAPR decisions -------------------------------------------------------------
struct ScoreParams {
  Dims dims;
  DType dtype = DType::bf16;
  const float *q_mean = nullptr, *k_mean = nullptr, *q_dev = nullptr, *k_dev = nullptr;
  const void* k = nullptr;  // the text keys are read from K itself
  int64_t k_stride[3] = {};
  const int32_t* text_lengths = nullptr;  // device int32 [b] or nullptr: all N_t valid
  int64_t text_lengths_stride = 1;
  float scale = 0.f;
  bool gapr = true;  // false: no compensable bits are computed or written
  float* P = nullptr;
  float2* partial = nullptr;
  uint32_t* compensable = nullptr;
  const int32_t* calibrated_choice = nullptr;  // or nullptr: every (b, h) (reads_scores)
};
// Tiles of the score grid along the key axis (video tiles, then text tiles): `partial` holds
// this many entries per row.
__host__ __device__ int score_tiles(const Dims& dims);
ScoreParams make_score_params(const AttentionArgs& args, bool gapr, const Buffers& buf);
void launch_scores(const ScoreParams& p, cudaStream_t stream);

// ---- selection ----------------------------------------------------------------------------------
struct SelectParams {
  Dims dims;
  Selector selector = Selector::ipar;  // ipar, band or local (automatic is resolved on the host)
  const float* P = nullptr;            // ipar only
  float p = 0.3f;
  int k = 0;                // kept_video_blocks(sparsity, NV)
  int first_frame = 0;      // F, clamped to NV
  NeighbourMap neighbours;  // null offsets: no neighbours added
  uint32_t* critical = nullptr;
  int32_t* row_counts = nullptr;
  void* scan_temp = nullptr;
  size_t scan_temp_bytes = 0;
  int32_t* row_offsets = nullptr;
  int32_t* col_indices = nullptr;
  bool complement = false;  // launch_csr_from_critical / _masks only
  const uint32_t* other = nullptr;  // launch_csr_from_masks only
  bool other_complement = false;
};
// neighbours: the device map, or null offsets; it is used as cpu::select_blocks uses its map
// (always for local, with config.select.neighbours for ipar and band).
SelectParams make_select_params(const Dims& dims, const Config& config,
                                const NeighbourMap& neighbours, const Buffers& buf);
void launch_select(const SelectParams& p, cudaStream_t stream);
// CSR lists (out's row_counts, scan_temp, row_offsets, col_indices) from stored crit bits
// [bh, NV, W] without a new selection: the mask that launch_select wrote for them (video rows:
// crit(i) and every text block; text rows: every block), every block with critical == nullptr,
// or with `complement` the video key blocks outside crit(i) alone (text query rows list none),
// which is what a reference step's second pass over the keys needs.
void launch_csr_from_critical(const Dims& dims, const uint32_t* critical, bool complement,
                              const Buffers& out, cudaStream_t stream);
// The same for the intersection of two sets of video key blocks: crit (or its complement) and
// `other` (or its complement), both [bh, NV, W]. Text key blocks (and text query rows) are
// listed only when both sets are the masks themselves, not complements: the four calls with
// (complement, other_complement) in {false, true}^2 split every key block of every row into
// four disjoint lists (the calibrated reference step's passes).
void launch_csr_from_masks(const Dims& dims, const uint32_t* critical, bool complement,
                           const uint32_t* other, bool other_complement, const Buffers& out,
                           cudaStream_t stream);

// ---- rectification terms ----------------------------------------------------------------------
struct RectifyParams {
  Dims dims;
  bool gapr = true;  // false: every non-critical block is compensated
  const float* P = nullptr;
  const uint32_t* critical = nullptr;
  const uint32_t* compensable = nullptr;  // read only with gapr
  const float* v_mean = nullptr;
  float* R = nullptr;
  float* C = nullptr;
  const int32_t* calibrated_choice = nullptr;  // or nullptr: every (b, h) (reads_scores)
};
RectifyParams make_rectify_params(const Dims& dims, bool gapr, const Buffers& buf);
void launch_rectify(const RectifyParams& p, cudaStream_t stream);

// ---- calibrated correction ----------------------------------------------------------------------
// Method::calibrated (docs/methods.md, Calibrated correction). The per-(bh, video block) error
// terms of a reference step, summed over the block's query rows in double:
//   [0, 4)  the squared error against O_full at distance 0 of none, affine, scale, merge;
//   [4, 9)  at distance k of each Candidate (index 4 + c), when the previous mask is given;
//   9       sum of exp(lse_then - lse_full) - rho_then (the drift fit's numerator).
inline constexpr int kCalibrationTerms = 10;

// Arrays "contiguous" are [b, S, H(, d)] in the caller's sequence order (row (b S + n) H + h),
// element type dtype for outputs and Delta, fp32 for lse and rho.
struct CalibrateParams {
  Dims dims;
  DType dtype = DType::bf16;
  float scale = 0.f;
  const int32_t* perm = nullptr;  // ordered video token k is row video_offset + perm[k]
  const void* q = nullptr;        // the call's Q (pooled complement of each query row)
  int64_t q_stride[3] = {};
  const float *k_mean = nullptr, *v_mean = nullptr;  // this step's pooling [bh, NV, d]
  // measure: O_full (read); merge: O_spa, rewritten with the merged rows. out's strides.
  void* out = nullptr;
  int64_t out_stride[3] = {};
  const float* lse_full = nullptr;  // contiguous (measure)
  // The mask the reference step selected (measure) or the sparse step runs (merge): its crit
  // bits and O_spa (contiguous; measure only: merge reads out), lse_spa (contiguous), R, C.
  const uint32_t* critical = nullptr;
  const void* o_spa = nullptr;
  const float* lse_spa = nullptr;
  const float *R = nullptr, *C = nullptr;
  // The previous reference step's mask on this step's inputs (measure; null o_then: none):
  // O_then, lse_then (contiguous), R, C of that mask, the previous rho, Delta (contiguous) and
  // the drift lambda per bh before this step; k = step - previous reference step.
  const void* o_then = nullptr;
  const float* lse_then = nullptr;
  const uint32_t* critical_then = nullptr;
  const float *R_then = nullptr, *C_then = nullptr;
  const float* rho_then = nullptr;
  const void* delta_then = nullptr;
  int k = 0;
  bool clamp = false;
  double* partial = nullptr;  // [bh, NV, kCalibrationTerms]
  // The calibration of the (layer, entry), per bh: the drift (read as the previous one, then
  // refitted in place; initial_drift without a previous reference step), the errors at
  // distances 0 and k [bh, kCandidates] (error_then NaN without a previous reference step), and
  // the choice (a Candidate value) of the sparse step at `distance`, which merge reads.
  float* drift = nullptr;
  float initial_drift = 0.f;
  double *error_ref = nullptr, *error_then = nullptr;
  int32_t* choice = nullptr;
  int distance = 0;
};
// Reference step, after both passes over the keys (and the pass over the previous mask): the
// error terms into partial, then the errors and drift from them (two launches).
void launch_calibrate_measure(const CalibrateParams& p, cudaStream_t stream);
// Sparse step, first: each bh's choice at p.distance from the errors and p.k (the interval of
// the reference step that measured them; 0: none).
void launch_calibrate_choose(const CalibrateParams& p, cudaStream_t stream);
// Sparse step, after the attention launch: the video query rows of every bh whose choice is
// merge, merged in place with the pooled attention of their block's non-critical video blocks.
void launch_calibrate_merge(const CalibrateParams& p, cudaStream_t stream);

}  // namespace spaattn::cuda::stages
