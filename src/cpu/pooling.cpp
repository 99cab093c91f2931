// Pooling (docs/methods.md): per video block means q̄, k̄, v̄ over the block's real tokens (a
// partial last block divides by its true count n_i, never by B), and the per-dimension mean
// absolute deviations δq, δk that GAPR (docs/methods.md, GAPR) weighs against the gain. Text
// tokens are not pooled.
#include <cmath>

#include "cpu/access.hpp"
#include "cpu/parallel.hpp"
#include "spaattn/stages.hpp"

namespace spaattn::cpu {

namespace {

// mean[0 .. d) and dev[0 .. d) (dev may be null) of the n rows of t starting at token `first`.
// rows is scratch of n * d floats.
void pool_rows(const TensorView& t, int64_t b, int64_t h, int64_t first, int64_t n, int64_t d,
               std::vector<float>& rows, float* mean, float* dev) {
  rows.resize(n * d);
  for (int64_t m = 0; m < n; ++m) load_row(t, b, first + m, h, d, rows.data() + m * d);
  for (int64_t e = 0; e < d; ++e) mean[e] = 0.f;
  for (int64_t m = 0; m < n; ++m)
    for (int64_t e = 0; e < d; ++e) mean[e] += rows[m * d + e];
  const float inv = 1.f / static_cast<float>(n);
  for (int64_t e = 0; e < d; ++e) mean[e] *= inv;
  if (dev == nullptr) return;
  // Second pass around the final mean: the deviation of a block is measured from q̄ itself.
  for (int64_t e = 0; e < d; ++e) dev[e] = 0.f;
  for (int64_t m = 0; m < n; ++m)
    for (int64_t e = 0; e < d; ++e) dev[e] += std::fabs(rows[m * d + e] - mean[e]);
  for (int64_t e = 0; e < d; ++e) dev[e] *= inv;
}

}  // namespace

Pooled pool(const AttentionArgs& args) {
  validate(args);
  check_host(args);
  const Layout& layout = args.layout;
  Pooled pooled;
  pooled.batch = args.batch();
  pooled.heads = args.heads();
  pooled.blocks = layout.num_video_blocks();
  pooled.dim = args.head_dim();
  const int64_t d = pooled.dim, nv = pooled.blocks;
  const size_t size = static_cast<size_t>(pooled.batch * pooled.heads * nv * d);
  pooled.q.assign(size, 0.f);
  pooled.k.assign(size, 0.f);
  pooled.v.assign(size, 0.f);
  pooled.dq.assign(size, 0.f);
  pooled.dk.assign(size, 0.f);
  pooled.count.resize(nv);
  for (int64_t i = 0; i < nv; ++i) pooled.count[i] = static_cast<int32_t>(layout.block_count(i));

  parallel_for(pooled.batch * pooled.heads * nv, [&](int64_t t) {
    const int64_t i = t % nv, bh = t / nv, b = bh / pooled.heads, h = bh % pooled.heads;
    const int64_t first = layout.block_begin(i), n = layout.block_count(i);
    const int64_t at = pooled.at(b, h, i);
    std::vector<float> rows;
    pool_rows(args.q, b, h, first, n, d, rows, pooled.q.data() + at, pooled.dq.data() + at);
    pool_rows(args.k, b, h, first, n, d, rows, pooled.k.data() + at, pooled.dk.data() + at);
    pool_rows(args.v, b, h, first, n, d, rows, pooled.v.data() + at, nullptr);
  });
  return pooled;
}

}  // namespace spaattn::cpu
