// The stages of a sparse attention call as separate, replaceable parts (docs/methods.md):
// pooling -> block scores -> selection -> block-sparse kernel -> correction.
// These are the CPU reference implementations (fp32 arithmetic, host memory); the names follow
// docs/methods.md (q̄ = pooled.q, P, crit, R, C, rho, Delta).
#pragma once
#include <cstdint>
#include <vector>

#include "spaattn/config.hpp"
#include "spaattn/layout.hpp"

namespace spaattn {

// Per video block means of Q, K, V over its real tokens, and the mean absolute deviations of Q
// and K that GAPR needs. Arrays are [b, H, NV, d]; count[i] = n_i.
struct Pooled {
  int64_t batch = 0, heads = 0, blocks = 0, dim = 0;
  std::vector<float> q, k, v, dq, dk;
  std::vector<int32_t> count;
  int64_t at(int64_t b, int64_t h, int64_t i) const { return ((b * heads + h) * blocks + i) * dim; }
};

// Reallocated block-level attention P (IPAR): [b, H, NV, NV + 1]; column NV is P_i,text.
struct BlockScores {
  int64_t batch = 0, heads = 0, blocks = 0;
  std::vector<float> P;
  int64_t row(int64_t b, int64_t h, int64_t i) const { return ((b * heads + h) * blocks + i) * (blocks + 1); }
};

// The selection: the kernel's CSR mask over all logical blocks (text query rows are full), and
// crit(i) over the video key blocks as a dense [b, H, NV, NV] byte matrix.
struct Selection {
  BlockMask mask;
  std::vector<uint8_t> critical;
};

// A correction O[n] = a * O_spa[n] + c applied to the rows it covers; other rows keep O_spa.
//  - block granularity (Rectified SpaAttn): one (a, c) per video query block,
//    a[(b * H + h) * NV + i], c[((b * H + h) * NV + i) * d + e]; text rows are not corrected.
//  - row granularity (Re-ttention): one (a, c) per query token,
//    a[(b * S + n) * H + h], c[((b * S + n) * H + h) * d + e] (the [b, S, H(, d)] layout).
// c may be empty (c = 0).
struct Correction {
  enum class Granularity : uint8_t { block, row };
  Granularity granularity = Granularity::block;
  int64_t batch = 0, heads = 0, rows = 0, dim = 0;
  std::vector<float> a, c;
};

// Re-ttention statistics of one reference step: rho [b, S, H], Delta [b, S, H, d] (may be empty).
struct RettentionCache {
  int64_t batch = 0, seq = 0, heads = 0, dim = 0;
  std::vector<float> rho, delta;
};

// k = floor((1 - sparsity) * NV), the fewest video blocks a selection keeps (docs/methods.md,
// Selectors) and, halved, the band's half width. A tolerance of 1e-9 absorbs the representation
// error of the product ((1 - 0.9) * 10 is 0.9999999999999998 in doubles), so k is the intended
// integer.
int64_t kept_video_blocks(double sparsity, int64_t num_video_blocks);

namespace cpu {

// Block-sparse attention (docs/methods.md) over the mask's key blocks; out [b, S, H, d] (any
// float dtype), lse f32 [b, S, H] (may be empty). Padding text query rows and rows that select
// nothing give O = 0, lse = -inf.
void block_sparse_attention(const AttentionArgs& args, const BlockMaskView& mask, TensorView out,
                            TensorView lse);

// A reference step's single pass over the keys: full attention (out_full, lse_full) and, on the
// side, the masked sums (out_spa, lse_spa). Any of the four may be empty except out_full.
void reference_attention(const AttentionArgs& args, const BlockMaskView& mask, TensorView out_full,
                         TensorView lse_full, TensorView out_spa, TensorView lse_spa);

// Pooling (docs/methods.md), with GAPR's deviations.
Pooled pool(const AttentionArgs& args);
// P (docs/methods.md, Block-level attention P): IPAR with isolated text keys, fp32 in log space.
BlockScores implicit_full_attention(const AttentionArgs& args, const Pooled& pooled);
// Selection (docs/methods.md): crit(i) for the configured selector; `scores` is needed by
// Selector::ipar, `neighbours` (block_neighbours of the order) is used when
// config.select.neighbours is set.
Selection select_blocks(const AttentionArgs& args, const Config& config, const BlockScores* scores,
                        const std::vector<std::vector<int32_t>>* neighbours);
// GAPR decisions (docs/methods.md, GAPR), [b, H, NV, NV] (1 = compensable). Only meaningful off
// crit(i).
std::vector<uint8_t> compensable(const Pooled& pooled);
// R_i and C_i (docs/methods.md, Rectified SpaAttn), block granularity. With gapr off every
// non-critical block is compensated.
Correction rectification(const Pooled& pooled, const BlockScores& scores, const Selection& sel,
                         bool gapr);
// Re-ttention (docs/methods.md): rho and Delta from a reference step's outputs (f32 host views
// [b,S,H(,d)]).
RettentionCache rettention_statistics(const TensorView& out_full, const TensorView& lse_full,
                                      const TensorView& out_spa, const TensorView& lse_spa,
                                      bool cache_delta);
// Re-ttention (docs/methods.md): the correction at the k-th sparse step after the reference
// (k >= 1).
Correction rettention_correction(const RettentionCache& cache, int k, const RettentionConfig& cfg);
// out = a * o_spa + c on covered rows, o_spa elsewhere. o_spa and out: [b, S, H, d], host;
// they may be the same view.
void apply_correction(const Correction& corr, const Layout& layout, const TensorView& o_spa,
                      TensorView out);

}  // namespace cpu
}  // namespace spaattn
