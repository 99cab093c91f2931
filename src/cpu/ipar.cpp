// Implicit full attention (IPAR; docs/methods.md, Block-level attention P). Each pooled video
// block j stands for its n_j tokens, so row i is a softmax over z_ij + log n_j (video) and the
// isolated valid text keys z_it; P_i,text sums the text part. fp32, log space, max subtracted,
// rows sum to 1.
#include <algorithm>
#include <cmath>
#include <limits>

#include "cpu/access.hpp"
#include "cpu/parallel.hpp"
#include "spaattn/stages.hpp"

namespace spaattn::cpu {

BlockScores implicit_full_attention(const AttentionArgs& args, const Pooled& pooled) {
  validate(args);
  check_host(args);
  const Layout& layout = args.layout;
  const int64_t batch = args.batch(), heads = args.heads(), d = args.head_dim();
  const int64_t nv = layout.num_video_blocks(), nt = layout.num_text;
  SPAATTN_CHECK_ARG(
      pooled.batch == batch && pooled.heads == heads && pooled.blocks == nv && pooled.dim == d,
      "pooled", "expected [", batch, ", ", heads, ", ", nv, ", ", d, "], got [", pooled.batch, ", ",
      pooled.heads, ", ", pooled.blocks, ", ", pooled.dim, "]");
  BlockScores scores;
  scores.batch = batch;
  scores.heads = heads;
  scores.blocks = nv;
  scores.P.assign(static_cast<size_t>(batch * heads * nv * (nv + 1)), 0.f);
  if (nv == 0) return scores;

  // The valid text keys of every (b, h) as fp32 rows, read once: [b, H, L_t, d] with a stride of
  // N_t rows per (b, h).
  std::vector<int64_t> text_len(batch);
  for (int64_t b = 0; b < batch; ++b) text_len[b] = args.text_len(b);
  std::vector<float> text_k(static_cast<size_t>(batch * heads * nt * d));
  parallel_for(batch * heads, [&](int64_t bh) {
    const int64_t b = bh / heads, h = bh % heads;
    for (int64_t t = 0; t < text_len[b]; ++t)
      load_row(args.k, b, layout.text_offset() + t, h, d, text_k.data() + (bh * nt + t) * d);
  });

  std::vector<float> log_count(nv);
  for (int64_t j = 0; j < nv; ++j) log_count[j] = std::log(static_cast<float>(pooled.count[j]));
  const float scale = args.softmax_scale();

  parallel_for(batch * heads * nv, [&](int64_t task) {
    const int64_t i = task % nv, bh = task / nv, b = bh / heads, h = bh % heads;
    const int64_t lt = text_len[b];
    const float* q = pooled.q.data() + pooled.at(b, h, i);
    std::vector<float> z(nv + lt);
    float zmax = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < nv; ++j) {
      z[j] = scale * dot(q, pooled.k.data() + pooled.at(b, h, j), d) + log_count[j];
      zmax = std::max(zmax, z[j]);
    }
    for (int64_t t = 0; t < lt; ++t) {
      z[nv + t] = scale * dot(q, text_k.data() + (bh * nt + t) * d, d);
      zmax = std::max(zmax, z[nv + t]);
    }
    float* P = scores.P.data() + scores.row(b, h, i);
    float total = 0.f, text = 0.f;
    for (int64_t j = 0; j < nv; ++j) {
      P[j] = std::exp(z[j] - zmax);
      total += P[j];
    }
    for (int64_t t = 0; t < lt; ++t) text += std::exp(z[nv + t] - zmax);
    total += text;
    const float inv = 1.f / total;  // total >= 1: the max term contributes exp(0)
    for (int64_t j = 0; j < nv; ++j) P[j] *= inv;
    P[nv] = text * inv;
  });
  return scores;
}

}  // namespace spaattn::cpu
