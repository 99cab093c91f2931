// Method::calibrated (docs/methods.md, Calibrated correction): the candidate corrections as
// per-row formulas, the pooled attention of the non-critical blocks (merge), the error of a
// candidate against full attention, and the least-squares drift of rho.
#include "cpu/calibrate.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/expected_error.hpp"
#include "cpu/access.hpp"
#include "cpu/parallel.hpp"

namespace spaattn {

const char* to_string(Candidate c) {
  switch (c) {
    case Candidate::none: return "none";
    case Candidate::affine: return "affine";
    case Candidate::scale: return "scale";
    case Candidate::rettention: return "rettention";
    case Candidate::merge: return "merge";
  }
  return "unknown";
}

std::optional<float> fit_drift(std::span<const float> prev, std::span<const float> now, int k) {
  SPAATTN_CHECK_ARG(prev.size() == now.size(), "now", "expected ", prev.size(),
                    " values (as prev), got ", now.size());
  if (k <= 1 || prev.empty()) return std::nullopt;
  // Least squares of now - prev = (k - 1) lambda over the rows: the slope through the origin,
  // sum (k - 1)(now - prev) / sum (k - 1)^2, which is the mean difference over (k - 1).
  double sum = 0;
  for (size_t n = 0; n < prev.size(); ++n) sum += static_cast<double>(now[n]) - prev[n];
  return static_cast<float>(sum / (static_cast<double>(prev.size()) * (k - 1)));
}

double expected_error(double e0, double ek, int k, int d) {
  SPAATTN_CHECK_ARG(e0 >= 0.0 && std::isfinite(e0), "e0",
                    "expected a finite squared error >= 0, got ", e0);
  SPAATTN_CHECK_ARG(ek >= 0.0 && std::isfinite(ek), "ek",
                    "expected a finite squared error >= 0, got ", ek);
  SPAATTN_CHECK_ARG(k >= 1, "k", "expected a distance >= 1, got ", k);
  SPAATTN_CHECK_ARG(d >= 1, "d", "expected a distance >= 1, got ", d);
  return detail::expected_error_at(e0, ek, k, d);
}

namespace {
// The two error arrays' entries of bh, after checking bh and the distance.
void check_query(const Calibration& cal, int64_t bh, int distance) {
  SPAATTN_CHECK_ARG(bh >= 0 && bh < cal.batch * cal.heads, "bh", "expected 0 <= bh < ",
                    cal.batch * cal.heads, ", got ", bh);
  SPAATTN_CHECK_ARG(distance >= 1, "distance", "expected a distance >= 1, got ", distance);
  SPAATTN_CHECK_ARG(cal.interval >= 0, "calibration", "expected interval >= 0, got ", cal.interval);
  const size_t n = static_cast<size_t>(cal.batch * cal.heads) * kCandidates;
  SPAATTN_CHECK_ARG(cal.error_ref.size() == n && cal.error_then.size() == n, "calibration",
                    "expected ", n, " errors at each distance, got ", cal.error_ref.size(),
                    " and ", cal.error_then.size());
}
}  // namespace

double Calibration::expected(int64_t bh, Candidate c, int distance) const {
  check_query(*this, bh, distance);
  SPAATTN_CHECK_ARG(static_cast<int>(c) < kCandidates, "c", "expected a Candidate, got ",
                    static_cast<int>(c));
  const size_t at = static_cast<size_t>(bh) * kCandidates + static_cast<size_t>(c);
  if (interval < 1 || !(error_ref[at] >= 0.0) || !(error_then[at] >= 0.0))
    return std::numeric_limits<double>::quiet_NaN();
  return detail::expected_error_at(error_ref[at], error_then[at], interval, distance);
}

Candidate Calibration::choice(int64_t bh, int distance) const {
  check_query(*this, bh, distance);
  const size_t at = static_cast<size_t>(bh) * kCandidates;
  return static_cast<Candidate>(
      detail::choose_at(error_ref.data() + at, error_then.data() + at, interval, distance));
}

namespace cpu {

void candidate_row(Candidate c, const CandidateTerms& t, int64_t b, int64_t n, int64_t h,
                   float* out) {
  const int64_t d = t.dim, r = (b * t.seq + n) * t.heads + h;
  const float* spa = t.o_spa + r * d;
  switch (c) {
    case Candidate::none:
      for (int64_t e = 0; e < d; ++e) out[e] = spa[e];
      return;
    case Candidate::affine:
    case Candidate::scale: {
      const int64_t i = (n - t.layout.video_offset()) / t.layout.block_size;
      const int64_t entry = (b * t.heads + h) * t.rect->rows + i;
      const float R = t.rect->a[entry];
      const float* C = t.rect->c.data() + entry * d;
      if (c == Candidate::affine)
        for (int64_t e = 0; e < d; ++e) out[e] = R * spa[e] + C[e];
      else
        for (int64_t e = 0; e < d; ++e) out[e] = R * spa[e];
      return;
    }
    case Candidate::rettention: {
      float rho = t.cache->rho[r] + static_cast<float>(t.k - 1) * t.drift[b * t.heads + h];
      if (t.clamp) rho = std::min(rho, 1.f);
      const float* delta = t.cache->delta.data() + r * d;
      for (int64_t e = 0; e < d; ++e) out[e] = rho * spa[e] + delta[e];
      return;
    }
    case Candidate::merge: {
      // Two partial softmaxes over disjoint key sets, merged through their log-sum-exps. Both
      // empty (-inf) gives 0, as an attention row without keys does.
      const float ls = t.lse_spa[r], lp = t.lse_pool[r];
      const float m = std::max(ls, lp);
      if (std::isinf(m) && m < 0.f) {
        for (int64_t e = 0; e < d; ++e) out[e] = 0.f;
        return;
      }
      const float ws = std::exp(ls - m), wp = std::exp(lp - m), inv = 1.f / (ws + wp);
      const float* pool = t.o_pool + r * d;
      for (int64_t e = 0; e < d; ++e) out[e] = (ws * spa[e] + wp * pool[e]) * inv;
      return;
    }
  }
}

void pooled_complement(const AttentionArgs& args, const Pooled& pooled, const Selection& sel,
                       std::span<const uint8_t> needed, std::vector<float>& o_pool,
                       std::vector<float>& lse_pool) {
  const Layout& layout = args.layout;
  const int64_t B = args.batch(), S = args.seq_len(), H = args.heads(), d = args.head_dim();
  const int64_t nv = layout.num_video_blocks();
  SPAATTN_CHECK_ARG(pooled.batch == B && pooled.heads == H && pooled.blocks == nv &&
                        pooled.dim == d,
                    "pooled", "expected [", B, ", ", H, ", ", nv, ", ", d, "]");
  SPAATTN_CHECK_ARG(sel.critical.size() == static_cast<size_t>(B * H * nv * nv), "selection",
                    "expected ", B * H * nv * nv, " critical flags, got ", sel.critical.size());
  o_pool.assign(static_cast<size_t>(B * S * H * d), 0.f);
  lse_pool.assign(static_cast<size_t>(B * S * H), -std::numeric_limits<float>::infinity());
  std::vector<float> log_count(nv);
  for (int64_t j = 0; j < nv; ++j) log_count[j] = std::log(static_cast<float>(pooled.count[j]));
  const float scale = args.softmax_scale();
  parallel_for(B * H * nv, [&](int64_t task) {
    const int64_t i = task % nv, bh = task / nv, b = bh / H, h = bh % H;
    if (!needed.empty() && !needed[bh]) return;
    const uint8_t* crit = sel.critical.data() + task * nv;
    std::vector<int64_t> cols;
    for (int64_t j = 0; j < nv; ++j)
      if (!crit[j]) cols.push_back(j);
    if (cols.empty()) return;
    std::vector<float> q(d), m(cols.size());
    const int64_t first = layout.block_begin(i), rows = layout.block_count(i);
    for (int64_t t = 0; t < rows; ++t) {
      const int64_t n = first + t, r = (b * S + n) * H + h;
      load_row(args.q, b, n, h, d, q.data());
      float mx = -std::numeric_limits<float>::infinity();
      for (size_t c = 0; c < cols.size(); ++c) {
        m[c] = scale * dot(q.data(), pooled.k.data() + pooled.at(b, h, cols[c]), d) +
               log_count[cols[c]];
        mx = std::max(mx, m[c]);
      }
      float sum = 0.f;
      float* o = o_pool.data() + r * d;
      for (size_t c = 0; c < cols.size(); ++c) {
        const float p = std::exp(m[c] - mx);
        sum += p;
        const float* v = pooled.v.data() + pooled.at(b, h, cols[c]);
        for (int64_t e = 0; e < d; ++e) o[e] += p * v[e];
      }
      const float inv = 1.f / sum;  // sum >= 1: the max term contributes exp(0)
      for (int64_t e = 0; e < d; ++e) o[e] *= inv;
      lse_pool[r] = mx + std::log(sum);
    }
  });
}

double candidate_error(Candidate c, const CandidateTerms& t, const float* o_full, int64_t b,
                       int64_t h) {
  const int64_t d = t.dim, v0 = t.layout.video_offset();
  std::vector<float> row(d);
  double err = 0;
  for (int64_t n = v0; n < v0 + t.layout.num_video; ++n) {
    candidate_row(c, t, b, n, h, row.data());
    const float* ref = o_full + ((b * t.seq + n) * t.heads + h) * d;
    for (int64_t e = 0; e < d; ++e) {
      const double diff = static_cast<double>(row[e]) - ref[e];
      err += diff * diff;
    }
  }
  return err;
}

void apply_candidates(std::span<const Candidate> choice, const CandidateTerms& t, float* o) {
  SPAATTN_CHECK_ARG(choice.size() == static_cast<size_t>(t.batch * t.heads), "choice",
                    "expected ", t.batch * t.heads, " entries, got ", choice.size());
  const int64_t d = t.dim, v0 = t.layout.video_offset(), nv = t.layout.num_video;
  parallel_for(t.batch * nv, [&](int64_t task) {
    const int64_t b = task / nv, n = v0 + task % nv;
    std::vector<float> row(d);
    for (int64_t h = 0; h < t.heads; ++h) {
      const Candidate c = choice[b * t.heads + h];
      if (c == Candidate::none && o == t.o_spa) continue;
      candidate_row(c, t, b, n, h, row.data());
      std::copy(row.begin(), row.end(), o + ((b * t.seq + n) * t.heads + h) * d);
    }
  }, 64);
}

}  // namespace cpu
}  // namespace spaattn
