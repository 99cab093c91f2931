// The candidate corrections of Method::calibrated (docs/methods.md, Calibrated correction) as
// per-row formulas over fp32 buffers of the ordered token sequence, the pooled attention of the
// non-critical blocks that the merge candidate reads, and the errors that choose between them.
// Each candidate reads only its row's terms (and its block's R_i, C_i), so that it can become one
// epilogue of the attention kernel.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "spaattn/method.hpp"
#include "spaattn/stages.hpp"

namespace spaattn::cpu {

// What the candidates of one call read. Row r = (b * S + n) * H + h of the [b, S, H(, d)]
// buffers; a candidate that is not used may leave its terms null.
struct CandidateTerms {
  Layout layout;
  int64_t batch = 0, seq = 0, heads = 0, dim = 0;
  const float* o_spa = nullptr;            // [b, S, H, d], over the mask the terms belong to
  const float* lse_spa = nullptr;          // [b, S, H]                           (merge)
  const Correction* rect = nullptr;        // R_i, C_i, block granularity         (affine, scale)
  const RettentionCache* cache = nullptr;  // rho, Delta of the reference step    (rettention)
  const float* drift = nullptr;            // lambda per (b, h)                   (rettention)
  int k = 0;                               // distance to that reference step     (rettention)
  bool clamp = false;                      // min(rho', 1)                        (rettention)
  const float* o_pool = nullptr;           // [b, S, H, d] pooled complement      (merge)
  const float* lse_pool = nullptr;         // [b, S, H]                           (merge)
};

// Candidate c's output of video query row (b, n, h) (n a sequence index of a video token) into
// out[0 .. d).
void candidate_row(Candidate c, const CandidateTerms& t, int64_t b, int64_t n, int64_t h,
                   float* out);

// The pooled attention of each video query row over the non-critical video blocks of its block:
// m_j = s q_n.k̄_j + log n_j for the video blocks j not in crit(i),
// lse_pool[n] = log sum_j exp(m_j), o_pool[n] = sum_j exp(m_j - lse_pool[n]) v̄_j.
// Computed for the (b, h) with needed[b * H + h] set (all when `needed` is empty); every other
// row, and a row without non-critical blocks, gets o_pool = 0, lse_pool = -inf.
void pooled_complement(const AttentionArgs& args, const Pooled& pooled, const Selection& sel,
                       std::span<const uint8_t> needed, std::vector<float>& o_pool,
                       std::vector<float>& lse_pool);

// sum over the video query rows n of (b, h) of ||candidate_row(c, ...) - o_full[n]||^2, summed in
// double; o_full is [b, S, H, d].
double candidate_error(Candidate c, const CandidateTerms& t, const float* o_full, int64_t b,
                       int64_t h);

// o[video rows of (b, h)] = candidate_row(choice[b * H + h], ...); other rows are left as they
// are. o may be t.o_spa.
void apply_candidates(std::span<const Candidate> choice, const CandidateTerms& t, float* o);

}  // namespace spaattn::cpu
