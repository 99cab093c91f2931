// The fp32 inner loops of the CPU attention (ALGORITHM.md section 3): K and V of one (batch,
// head) packed by logical key block, and an online softmax over the query rows of one query
// block. Shared by block_sparse_attention and reference_attention, which differ only in which
// key blocks feed which accumulator.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "spaattn/layout.hpp"

namespace spaattn::cpu {

// fp32 copy of the K and V of one (b, h), by logical key block j: kt is [d][B] per block
// (transposed, so that the scores of one query row against a block are axpys over the keys,
// which vectorise without reassociating a dot product), v is [B][d] per block. Only the keys a
// query may attend to are counted: padding text keys (index >= L_t) get count 0.
struct PackedKV {
  int64_t dim = 0, block = 0;
  std::vector<float> kt, v;
  std::vector<int32_t> count;

  const float* kt_block(int64_t j) const { return kt.data() + j * dim * block; }
  const float* v_block(int64_t j) const { return v.data() + j * block * dim; }
};

// Packs K and V of (b, h) with L_t = text_len valid text tokens.
void pack_kv(const AttentionArgs& args, int64_t b, int64_t h, int64_t text_len, PackedKV& kv);

// Online softmax state of the rows of one query block: running max m, running sum l and the
// unnormalised output acc per row. A row that never sees a key keeps l = 0.
class OnlineSoftmax {
 public:
  void reset(int64_t rows, int64_t dim) {
    dim_ = dim;
    m_.assign(rows, -std::numeric_limits<float>::infinity());
    l_.assign(rows, 0.f);
    acc_.assign(rows * dim, 0.f);
  }

  // Adds the n keys of a block to row r, given that row's logits s[0 .. n) (already scaled) and
  // the block's values v ([n][d]). The running max moves only upwards, so every exponent is <= 0
  // and logits of any magnitude stay finite.
  void add(int64_t r, const float* s, int64_t n, const float* v) {
    float bmax = s[0];
    for (int64_t m = 1; m < n; ++m) bmax = s[m] > bmax ? s[m] : bmax;
    float* acc = acc_.data() + r * dim_;
    if (bmax > m_[r]) {
      const float factor = std::exp(m_[r] - bmax);  // exp(-inf) = 0 for the first block
      l_[r] *= factor;
      for (int64_t e = 0; e < dim_; ++e) acc[e] *= factor;
      m_[r] = bmax;
    }
    const float mr = m_[r];
    float l = l_[r];
    for (int64_t m = 0; m < n; ++m) {
      const float p = std::exp(s[m] - mr);
      l += p;
      const float* vm = v + m * dim_;
      for (int64_t e = 0; e < dim_; ++e) acc[e] += p * vm[e];
    }
    l_[r] = l;
  }

  // out[0 .. d) = O of row r; returns its lse (-inf and O = 0 when the row saw no key).
  float finish(int64_t r, float* out) const {
    if (l_[r] <= 0.f) {
      for (int64_t e = 0; e < dim_; ++e) out[e] = 0.f;
      return -std::numeric_limits<float>::infinity();
    }
    const float inv = 1.f / l_[r];
    const float* acc = acc_.data() + r * dim_;
    for (int64_t e = 0; e < dim_; ++e) out[e] = acc[e] * inv;
    return m_[r] + std::log(l_[r]);
  }

 private:
  int64_t dim_ = 0;
  std::vector<float> m_, l_, acc_;
};

// s[0 .. n) = q . k_m for the n keys of a packed block (q already multiplied by the scale).
inline void block_logits(const float* q, const PackedKV& kv, int64_t j, float* s) {
  const int64_t n = kv.count[j], B = kv.block;
  const float* kt = kv.kt_block(j);
  for (int64_t m = 0; m < n; ++m) s[m] = 0.f;
  for (int64_t e = 0; e < kv.dim; ++e) {
    const float qe = q[e];
    const float* ke = kt + e * B;
    for (int64_t m = 0; m < n; ++m) s[m] += qe * ke[m];
  }
}

}  // namespace spaattn::cpu
