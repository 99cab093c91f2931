// CPU reference of the block-sparse attention kernel (docs/methods.md, Block-sparse attention)
// and of the reference step's single pass that yields full and masked attention together
// (docs/methods.md, Re-ttention).
// Work is split over (batch, head, query block); the K/V of a (batch, head) are converted to
// fp32 once and shared by all its query blocks.
#include <algorithm>
#include <limits>

#include "cpu/access.hpp"
#include "cpu/parallel.hpp"
#include "cpu/softmax.hpp"
#include "spaattn/stages.hpp"

namespace spaattn::cpu {

void pack_kv(const AttentionArgs& args, int64_t b, int64_t h, int64_t text_len, PackedKV& kv) {
  const Layout& layout = args.layout;
  const int64_t nb = layout.num_blocks(), B = layout.block_size, d = args.head_dim();
  kv.dim = d;
  kv.block = B;
  kv.kt.assign(nb * d * B, 0.f);  // zeros past count[j]: whole lanes of logits stay finite
  kv.v.assign(nb * B * d, 0.f);
  kv.count.resize(nb);
  std::vector<float> row(d);
  for (int64_t j = 0; j < nb; ++j) {
    const int64_t n = layout.valid_count(j, text_len), first = layout.block_begin(j);
    kv.count[j] = static_cast<int32_t>(n);
    float* kt = kv.kt.data() + j * d * B;
    for (int64_t m = 0; m < n; ++m) {
      load_row(args.k, b, first + m, h, d, row.data());
      for (int64_t e = 0; e < d; ++e) kt[e * B + m] = row[e];
      load_row(args.v, b, first + m, h, d, kv.v.data() + (j * B + m) * d);
    }
  }
}

namespace {

// Packed K/V held at once, in floats (256 MiB): (batch, head) pairs are processed in groups of
// this size so that long sequences with many heads do not double their memory.
constexpr int64_t kPackBudget = int64_t{1} << 26;

// The key blocks query block i of (b, h) selects.
struct MaskRow {
  const int32_t* cols;
  int64_t size;
};
MaskRow mask_row(const BlockMaskView& mask, int64_t b, int64_t h, int64_t i) {
  const int64_t r = (b * mask.heads + h) * mask.num_q_blocks + i;
  const int32_t* offsets = mask.row_offsets.ptr<const int32_t>();
  return {mask.col_indices.ptr<const int32_t>() + offsets[r], offsets[r + 1] - offsets[r]};
}

// The rows of query block i of (b, h), multiplied by the scale, into q, zero-padded to a
// multiple of kRows rows; returns how many of them are real queries (padding text rows, index
// >= L_t, come last in a text block).
int64_t load_queries(const AttentionArgs& args, int64_t b, int64_t h, int64_t i, int64_t text_len,
                     float scale, std::vector<float>& q) {
  const int64_t d = args.head_dim(), first = args.layout.block_begin(i);
  const int64_t valid = args.layout.valid_count(i, text_len);
  q.assign((valid + kRows - 1) / kRows * kRows * d, 0.f);
  for (int64_t r = 0; r < valid; ++r) {
    float* qr = q.data() + r * d;
    load_row(args.q, b, first + r, h, d, qr);
    for (int64_t e = 0; e < d; ++e) qr[e] *= scale;
  }
  return valid;
}

// Writes every row of query block i: O and lse of the real rows, zeros and -inf for padding.
void store_block(const AttentionArgs& args, int64_t b, int64_t h, int64_t i, int64_t valid,
                 const OnlineSoftmax& state, const TensorView& out, const TensorView& lse) {
  if (out.empty() && lse.empty()) return;
  const int64_t d = args.head_dim(), first = args.layout.block_begin(i);
  const int64_t rows = args.layout.block_count(i);
  std::vector<float> o(d, 0.f);
  for (int64_t r = 0; r < rows; ++r) {
    float row_lse = -std::numeric_limits<float>::infinity();
    if (r < valid) {
      row_lse = state.finish(r, o.data());
    } else {
      std::fill(o.begin(), o.end(), 0.f);
    }
    if (!out.empty()) store_row(out, b, first + r, h, d, o.data());
    if (!lse.empty()) store_scalar(lse, b, first + r, h, row_lse);
  }
}

// Calls task(b, h, i, text_len, kv) for every (batch, head, query block) in parallel, with kv the
// packed K/V of (b, h).
template <class Task>
void for_each_query_block(const AttentionArgs& args, Task&& task) {
  const int64_t heads = args.heads(), pairs = args.batch() * heads;
  const int64_t nq = args.layout.num_blocks();
  std::vector<int64_t> text_len(args.batch());
  for (int64_t b = 0; b < args.batch(); ++b) text_len[b] = args.text_len(b);
  const int64_t pair_floats =
      std::max<int64_t>(1, 2 * nq * args.layout.block_size * args.head_dim());
  const int64_t group =
      std::clamp<int64_t>(kPackBudget / pair_floats, 1, std::max<int64_t>(pairs, 1));
  std::vector<PackedKV> packs(group);
  for (int64_t first = 0; first < pairs; first += group) {
    const int64_t count = std::min(group, pairs - first);
    parallel_for(count, [&](int64_t g) {
      const int64_t pair = first + g;
      pack_kv(args, pair / heads, pair % heads, text_len[pair / heads], packs[g]);
    });
    parallel_for(count * nq, [&](int64_t t) {
      const int64_t pair = first + t / nq, b = pair / heads;
      task(b, pair % heads, t % nq, text_len[b], packs[t / nq]);
    });
  }
}

}  // namespace

void block_sparse_attention(const AttentionArgs& args, const BlockMaskView& mask, TensorView out,
                            TensorView lse) {
  validate(args, &out, lse.empty() ? nullptr : &lse);
  validate(mask, args);
  check_host(args);
  const float scale = args.softmax_scale();
  const int64_t d = args.head_dim();
  auto task = [&](int64_t b, int64_t h, int64_t i, int64_t text_len, const PackedKV& kv) {
    std::vector<float> q, s(kRows * kv.block);
    const int64_t valid = load_queries(args, b, h, i, text_len, scale, q);
    OnlineSoftmax state;
    state.reset(valid, d, kv.block);
    const MaskRow row = mask_row(mask, b, h, i);
    // Key block outermost: its K/V stay in cache while every query row of the block uses them.
    for (int64_t c = 0; c < row.size; ++c) {
      const int64_t j = row.cols[c], n = kv.count[j];
      if (n == 0) continue;
      for (int64_t r0 = 0; r0 < valid; r0 += kRows) {
        block_logits(q.data() + r0 * d, kv, j, s.data());
        state.add(r0, s.data(), n, kv.v_block(j));
      }
    }
    store_block(args, b, h, i, valid, state, out, lse);
  };
  for_each_query_block(args, task);
}

void reference_attention(const AttentionArgs& args, const BlockMaskView& mask, TensorView out_full,
                         TensorView lse_full, TensorView out_spa, TensorView lse_spa) {
  validate(args, &out_full, lse_full.empty() ? nullptr : &lse_full);
  if (!out_spa.empty() || !lse_spa.empty())
    validate(args, out_spa.empty() ? nullptr : &out_spa, lse_spa.empty() ? nullptr : &lse_spa);
  validate(mask, args);
  check_host(args);
  const bool side = !out_spa.empty() || !lse_spa.empty();
  const float scale = args.softmax_scale();
  const int64_t d = args.head_dim(), nk = args.layout.num_blocks();
  auto task = [&](int64_t b, int64_t h, int64_t i, int64_t text_len, const PackedKV& kv) {
    std::vector<float> q, s(kRows * kv.block);
    const int64_t valid = load_queries(args, b, h, i, text_len, scale, q);
    std::vector<uint8_t> selected(nk, 0);
    const MaskRow row = mask_row(mask, b, h, i);
    for (int64_t c = 0; c < row.size; ++c) selected[row.cols[c]] = 1;
    OnlineSoftmax full, spa;
    full.reset(valid, d, kv.block);
    if (side) spa.reset(valid, d, kv.block);
    // One pass over every key: the logits feed the full state and, for selected blocks, the
    // masked one, so a reference step costs one dense pass.
    for (int64_t j = 0; j < nk; ++j) {
      const int64_t n = kv.count[j];
      if (n == 0) continue;
      for (int64_t r0 = 0; r0 < valid; r0 += kRows) {
        block_logits(q.data() + r0 * d, kv, j, s.data());
        full.add(r0, s.data(), n, kv.v_block(j));
        if (side && selected[j]) spa.add(r0, s.data(), n, kv.v_block(j));
      }
    }
    store_block(args, b, h, i, valid, full, out_full, lse_full);
    if (side) store_block(args, b, h, i, valid, spa, out_spa, lse_spa);
  };
  for_each_query_block(args, task);
}

}  // namespace spaattn::cpu
