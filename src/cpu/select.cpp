// Selection (docs/methods.md, Selection; docs/choices.md, Selection (ipar)): which key blocks are
// critical, crit(i), for each video query block, and the kernel's CSR mask built from it. The
// rules the GPU selection must reproduce exactly:
//  - ipar: row i of P (NV video columns, then the text column, index NV) is sorted by descending
//    P; equal P puts the lower index first (so the text column loses ties). The cumulative sum
//    runs in fp32 in that order and is compared with p as an fp32 value; the first
//    count(cumsum <= p) + 1 entries are kept (the official rule). The text column takes a place in
//    that prefix but does not count toward k: entries are then taken further down the sorted
//    order until k = kept_video_blocks(sparsity, NV) video blocks are kept.
//  - band: video blocks with |i - j| <= floor(k / 2); the diagonal is always in.
//  - local: the block neighbour map alone (needs `neighbours`).
//  Then, for ipar and band, the neighbour map when config.select.neighbours is set and a map is
//  given; for every selector the dense square of the first F video blocks (query blocks i < F see
//  key blocks j < F; nothing else is added for them or for the other rows).
// Every video query row also sees all text key blocks, and text query rows see every key block.
// The mask does not depend on L_t: padding text keys and rows are handled by the kernel.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "cpu/parallel.hpp"
#include "spaattn/error.hpp"
#include "spaattn/stages.hpp"

namespace spaattn {

int64_t kept_video_blocks(double sparsity, int64_t num_video_blocks) {
  const double k = std::floor((1.0 - sparsity) * static_cast<double>(num_video_blocks) + 1e-9);
  return std::clamp<int64_t>(static_cast<int64_t>(k), 0, num_video_blocks);
}

namespace cpu {

namespace {

// crit(i) of IPAR from row i of P (nv + 1 entries); order is scratch.
void ipar_row(const float* P, int64_t nv, float p, int64_t k, std::vector<int32_t>& order,
              uint8_t* crit) {
  order.resize(nv + 1);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [P](int32_t a, int32_t b) { return P[a] > P[b] || (P[a] == P[b] && a < b); });
  int64_t keep = 0;
  float cumsum = 0.f;
  for (int32_t j : order) {
    cumsum += P[j];
    if (!(cumsum <= p)) break;  // P >= 0: the cumsum only grows, so this counts cumsum <= p
    ++keep;
  }
  keep = std::min(keep + 1, nv + 1);
  int64_t video = 0;
  for (int64_t r = 0; r <= nv && (r < keep || video < k); ++r) {
    const int32_t j = order[r];
    if (j < nv) {
      crit[j] = 1;
      ++video;
    }
  }
}

}  // namespace

Selection select_blocks(const AttentionArgs& args, const Config& config, const BlockScores* scores,
                        const std::vector<std::vector<int32_t>>* neighbours) {
  validate(args);  // reads no tensor data: device arguments are fine
  config.validate();
  const Layout& layout = args.layout;
  const int64_t batch = args.batch(), heads = args.heads();
  const int64_t nv = layout.num_video_blocks(), nb = layout.num_blocks(), nt = nb - nv;
  const Selector selector = config.selector();
  if (selector == Selector::ipar) {
    SPAATTN_CHECK_ARG(scores != nullptr, "scores", "the ipar selector needs block scores");
    SPAATTN_CHECK_ARG(scores->batch == batch && scores->heads == heads && scores->blocks == nv,
                      "scores", "expected [", batch, ", ", heads, ", ", nv, "] blocks, got [",
                      scores->batch, ", ", scores->heads, ", ", scores->blocks, "]");
  }
  SPAATTN_CHECK_ARG(selector != Selector::local || neighbours != nullptr, "neighbours",
                    "the local selector needs the block neighbour map");
  const bool add_neighbours =
      neighbours != nullptr && (selector == Selector::local || config.select.neighbours);
  if (add_neighbours) {
    SPAATTN_CHECK_ARG(static_cast<int64_t>(neighbours->size()) == nv, "neighbours",
                      "expected one list per video block (", nv, "), got ", neighbours->size());
    for (const auto& list : *neighbours)
      for (int32_t j : list)
        SPAATTN_CHECK_ARG(j >= 0 && j < nv, "neighbours", "block index out of range: ", j);
  }
  const int64_t k = kept_video_blocks(config.select.sparsity, nv);
  const int64_t first = std::min<int64_t>(config.select.first_frame_blocks, nv);
  const float p = static_cast<float>(config.select.p);

  Selection sel;
  sel.critical.assign(static_cast<size_t>(batch * heads * nv * nv), 0);
  parallel_for(batch * heads * nv, [&](int64_t t) {
    const int64_t i = t % nv, bh = t / nv;
    uint8_t* crit = sel.critical.data() + t * nv;
    if (selector == Selector::ipar) {
      std::vector<int32_t> order;
      ipar_row(scores->P.data() + scores->row(bh / heads, bh % heads, i), nv, p, k, order, crit);
    } else if (selector == Selector::band) {
      const int64_t w = k / 2;
      for (int64_t j = std::max<int64_t>(0, i - w); j <= std::min(nv - 1, i + w); ++j) crit[j] = 1;
    }
    if (add_neighbours)
      for (int32_t j : (*neighbours)[i]) crit[j] = 1;
    if (i < first) std::fill(crit, crit + first, uint8_t{1});
  });

  // CSR over all logical blocks: video rows list crit(i) then every text block, text rows list
  // every key block.
  BlockMask& mask = sel.mask;
  mask.batch = batch;
  mask.heads = heads;
  mask.num_q_blocks = nb;
  mask.num_k_blocks = nb;
  // Offsets are int32 (the kernels' CSR format): the total is counted in 64 bits and refused,
  // before any list is written, when it does not fit.
  mask.row_offsets.assign(static_cast<size_t>(mask.rows() + 1), 0);
  int64_t total = 0;
  for (int64_t bh = 0; bh < batch * heads; ++bh) {
    for (int64_t i = 0; i < nb; ++i) {
      const int64_t r = bh * nb + i;
      int64_t size = nb;
      if (i < nv) {
        const uint8_t* crit = sel.critical.data() + (bh * nv + i) * nv;
        size = std::count(crit, crit + nv, uint8_t{1}) + nt;
      }
      total += size;
      SPAATTN_CHECK_ARG(total <= kMaxMaskEntries, "mask",
                        "the selection lists more than 2^31 - 1 blocks in all (int32 offsets): "
                        "split the call over batch or heads");
      mask.row_offsets[r + 1] = static_cast<int32_t>(total);
    }
  }
  mask.col_indices.resize(mask.row_offsets.back());
  parallel_for(mask.rows(), [&](int64_t r) {
    const int64_t bh = r / nb, i = r % nb;
    int32_t* cols = mask.col_indices.data() + mask.row_offsets[r];
    if (i < nv) {
      const uint8_t* crit = sel.critical.data() + (bh * nv + i) * nv;
      for (int64_t j = 0; j < nv; ++j)
        if (crit[j]) *cols++ = static_cast<int32_t>(j);
      for (int64_t j = nv; j < nb; ++j) *cols++ = static_cast<int32_t>(j);
    } else {
      std::iota(cols, cols + nb, 0);
    }
  });
  return sel;
}

}  // namespace cpu
}  // namespace spaattn
