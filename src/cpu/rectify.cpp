// Rectified SpaAttn (docs/methods.md): gain-aware pooling rectification (which non-critical
// blocks are worth replacing by their pooled pair), the per-block correction R_i, C_i, and
// applying a correction O = a O_spa + c to an output (shared with Re-ttention).
#include <cmath>

#include "cpu/access.hpp"
#include "cpu/parallel.hpp"
#include "spaattn/stages.hpp"

namespace spaattn::cpu {

std::vector<uint8_t> compensable(const Pooled& pooled) {
  const int64_t nv = pooled.blocks, d = pooled.dim;
  std::vector<uint8_t> result(static_cast<size_t>(pooled.batch * pooled.heads * nv * nv), 0);
  parallel_for(pooled.batch * pooled.heads * nv, [&](int64_t t) {
    const int64_t i = t % nv, bh = t / nv, b = bh / pooled.heads, h = bh % pooled.heads;
    const float* q = pooled.q.data() + pooled.at(b, h, i);
    const float* dq = pooled.dq.data() + pooled.at(b, h, i);
    uint8_t* row = result.data() + t * nv;
    for (int64_t j = 0; j < nv; ++j) {
      const float* k = pooled.k.data() + pooled.at(b, h, j);
      const float* dk = pooled.dk.data() + pooled.at(b, h, j);
      // G_ij > E_ij with the common factor n_i n_j > 0 divided out of both sides: raw dot
      // products, each summed in fp32 over e in order (the GPU must compare the same way).
      const float gain = std::fabs(dot(q, k, d));
      const float error = std::fabs(dot(dq, k, d)) + std::fabs(dot(q, dk, d));
      row[j] = gain > error ? 1 : 0;
    }
  });
  return result;
}

Correction rectification(const Pooled& pooled, const BlockScores& scores, const Selection& sel,
                         bool gapr) {
  const int64_t batch = pooled.batch, heads = pooled.heads, nv = pooled.blocks, d = pooled.dim;
  SPAATTN_CHECK_ARG(scores.batch == batch && scores.heads == heads && scores.blocks == nv, "scores",
                    "expected [", batch, ", ", heads, ", ", nv, "] blocks, got [", scores.batch,
                    ", ", scores.heads, ", ", scores.blocks, "]");
  SPAATTN_CHECK_ARG(sel.critical.size() == static_cast<size_t>(batch * heads * nv * nv),
                    "selection", "expected ", batch * heads * nv * nv, " critical flags, got ",
                    sel.critical.size());
  // Without GAPR every non-critical block is compensated.
  const std::vector<uint8_t> comp = gapr ? compensable(pooled) : std::vector<uint8_t>{};
  Correction corr;
  corr.granularity = Correction::Granularity::block;
  corr.batch = batch;
  corr.heads = heads;
  corr.rows = nv;
  corr.dim = d;
  corr.a.assign(static_cast<size_t>(batch * heads * nv), 0.f);
  corr.c.assign(static_cast<size_t>(batch * heads * nv * d), 0.f);
  parallel_for(batch * heads * nv, [&](int64_t t) {
    const int64_t i = t % nv, bh = t / nv, b = bh / heads, h = bh % heads;
    const float* P = scores.P.data() + scores.row(b, h, i);
    const uint8_t* crit = sel.critical.data() + t * nv;
    float R = P[nv];  // text keys are always in crit(i)
    float* C = corr.c.data() + t * d;
    for (int64_t j = 0; j < nv; ++j) {
      if (crit[j] || (gapr && !comp[t * nv + j])) {
        R += P[j];
      } else {
        const float* v = pooled.v.data() + pooled.at(b, h, j);
        for (int64_t e = 0; e < d; ++e) C[e] += P[j] * v[e];
      }
    }
    corr.a[t] = R;
  });
  return corr;
}

void apply_correction(const Correction& corr, const Layout& layout, const TensorView& o_spa,
                      TensorView out) {
  SPAATTN_CHECK_ARG(o_spa.rank == 4, "o_spa", "expected [b, S, H, d], got rank ", o_spa.rank);
  SPAATTN_CHECK_ARG(out.rank == 4 && out.shape == o_spa.shape, "out",
                    "expected the shape of o_spa");
  SPAATTN_CHECK_ARG(o_spa.device == Device::cpu && out.device == Device::cpu, "out",
                    "expected host tensors");
  SPAATTN_CHECK_ARG(o_spa.stride[3] == 1 && out.stride[3] == 1, "out", "expected unit stride on d");
  SPAATTN_CHECK_ARG(is_float(o_spa.dtype), "o_spa", "expected a floating dtype, got ",
                    to_string(o_spa.dtype));
  SPAATTN_CHECK_ARG(is_float(out.dtype), "out", "expected a floating dtype, got ",
                    to_string(out.dtype));
  const int64_t batch = o_spa.shape[0], seq = o_spa.shape[1], heads = o_spa.shape[2];
  const int64_t d = o_spa.shape[3];
  const bool block = corr.granularity == Correction::Granularity::block;
  const int64_t rows = block ? layout.num_video_blocks() : seq;
  SPAATTN_CHECK_ARG(seq == layout.seq_len(), "o_spa", "expected ", layout.seq_len(),
                    " tokens, got ", seq);
  SPAATTN_CHECK_ARG(
      corr.batch == batch && corr.heads == heads && corr.rows == rows && corr.dim == d,
      "correction", "expected [", batch, ", ", heads, ", ", rows, ", ", d, "], got [", corr.batch,
      ", ", corr.heads, ", ", corr.rows, ", ", corr.dim, "]");
  const size_t entries = static_cast<size_t>(batch * heads * rows);
  SPAATTN_CHECK_ARG(corr.a.size() == entries, "correction.a", "expected ", entries, " values, got ",
                    corr.a.size());
  SPAATTN_CHECK_ARG(corr.c.empty() || corr.c.size() == entries * d, "correction.c", "expected ",
                    entries * d, " values or none, got ", corr.c.size());

  parallel_for(batch * seq, [&](int64_t t) {
    const int64_t b = t / seq, n = t % seq;
    // The correction entry of token n: its video block (block granularity; text and padding
    // rows are not covered) or the token itself (row granularity).
    int64_t index = n;
    if (block) {
      const int64_t v = n - layout.video_offset();
      index = (v >= 0 && v < layout.num_video) ? v / layout.block_size : -1;
    }
    std::vector<float> row(d);
    for (int64_t h = 0; h < heads; ++h) {
      load_row(o_spa, b, n, h, d, row.data());
      if (index >= 0) {
        const int64_t e0 = block ? (b * heads + h) * rows + index : (b * seq + n) * heads + h;
        const float a = corr.a[e0];
        const float* c = corr.c.empty() ? nullptr : corr.c.data() + e0 * d;
        for (int64_t e = 0; e < d; ++e) row[e] = a * row[e] + (c ? c[e] : 0.f);
      }
      store_row(out, b, n, h, d, row.data());
    }
  });
}

}  // namespace spaattn::cpu
