// Re-ttention (docs/methods.md): the statistics of a reference step (rho = share of the full
// softmax mass inside the sparse mask, Delta = the residual O_full - rho O_spa) and the
// row-granularity correction they give at a later sparse step, rho' = rho + (k - 1) lambda.
#include <algorithm>
#include <cmath>

#include "cpu/access.hpp"
#include "cpu/parallel.hpp"
#include "spaattn/stages.hpp"

namespace spaattn::cpu {

namespace {

void check_rows(const TensorView& t, const char* name, int rank, const TensorView& like) {
  SPAATTN_CHECK_ARG(!t.empty(), name, "expected a tensor, got none");
  SPAATTN_CHECK_ARG(t.device == Device::cpu, name, "expected a host tensor");
  SPAATTN_CHECK_ARG(is_float(t.dtype), name, "expected a floating dtype, got ", to_string(t.dtype));
  SPAATTN_CHECK_ARG(t.rank == rank, name, "expected rank ", rank, ", got ", t.rank);
  for (int a = 0; a < 3; ++a)
    SPAATTN_CHECK_ARG(t.shape[a] == like.shape[a], name, "expected dim ", a, " = ", like.shape[a],
                      ", got ", t.shape[a]);
  if (rank == 4) {
    SPAATTN_CHECK_ARG(t.shape[3] == like.shape[3], name, "expected head_dim ", like.shape[3],
                      ", got ", t.shape[3]);
    SPAATTN_CHECK_ARG(t.stride[3] == 1, name, "expected unit stride on d, got ", t.stride[3]);
  }
}

}  // namespace

RettentionCache rettention_statistics(const TensorView& out_full, const TensorView& lse_full,
                                      const TensorView& out_spa, const TensorView& lse_spa,
                                      bool cache_delta) {
  SPAATTN_CHECK_ARG(out_full.rank == 4, "out_full", "expected [b, S, H, d], got rank ",
                    out_full.rank);
  check_rows(out_full, "out_full", 4, out_full);
  check_rows(lse_full, "lse_full", 3, out_full);
  check_rows(out_spa, "out_spa", 4, out_full);
  check_rows(lse_spa, "lse_spa", 3, out_full);
  RettentionCache cache;
  cache.batch = out_full.shape[0];
  cache.seq = out_full.shape[1];
  cache.heads = out_full.shape[2];
  cache.dim = out_full.shape[3];
  const int64_t seq = cache.seq, heads = cache.heads, d = cache.dim;
  cache.rho.assign(static_cast<size_t>(cache.batch * seq * heads), 0.f);
  if (cache_delta) cache.delta.assign(cache.rho.size() * d, 0.f);

  parallel_for(cache.batch * seq, [&](int64_t t) {
    const int64_t b = t / seq, n = t % seq;
    std::vector<float> full(d), spa(d);
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t r = t * heads + h;
      const float lf = load_scalar(lse_full, b, n, h), ls = load_scalar(lse_spa, b, n, h);
      // A row without keys (padding text, lse_full = -inf) keeps rho = 0 and Delta = 0; a row
      // whose mask selects nothing has lse_spa = -inf and so rho = 0, Delta = O_full.
      if (std::isinf(lf) && lf < 0.f) continue;
      const float rho = std::exp(ls - lf);
      cache.rho[r] = rho;
      if (!cache_delta) continue;
      load_row(out_full, b, n, h, d, full.data());
      load_row(out_spa, b, n, h, d, spa.data());
      float* delta = cache.delta.data() + r * d;
      for (int64_t e = 0; e < d; ++e) delta[e] = full[e] - rho * spa[e];
    }
  });
  return cache;
}

Correction rettention_correction(const RettentionCache& cache, int k, const RettentionConfig& cfg) {
  SPAATTN_CHECK_ARG(k >= 1, "k",
                    "expected the index of a sparse step after the reference (>= 1), got ", k);
  const size_t rows = static_cast<size_t>(cache.batch * cache.seq * cache.heads);
  SPAATTN_CHECK_ARG(cache.rho.size() == rows, "cache.rho", "expected ", rows, " values, got ",
                    cache.rho.size());
  SPAATTN_CHECK_ARG(cache.delta.empty() || cache.delta.size() == rows * cache.dim, "cache.delta",
                    "expected ", rows * cache.dim, " values or none, got ", cache.delta.size());
  Correction corr;
  corr.granularity = Correction::Granularity::row;
  corr.batch = cache.batch;
  corr.heads = cache.heads;
  corr.rows = cache.seq;
  corr.dim = cache.dim;
  // The published drift: rho' = rho + (k - 1) lambda, unclamped unless asked.
  const float drift = static_cast<float>(k - 1) * cfg.drift;
  corr.a.resize(rows);
  for (size_t r = 0; r < rows; ++r) {
    const float a = cache.rho[r] + drift;
    corr.a[r] = cfg.clamp ? std::min(a, 1.f) : a;
  }
  if (cfg.cache_delta) corr.c = cache.delta;
  return corr;
}

}  // namespace spaattn::cpu
