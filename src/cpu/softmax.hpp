// The fp32 inner loops of the CPU attention (docs/methods.md): K and V of one (batch,
// head) packed by logical key block, and an online softmax over the query rows of one query
// block. Shared by block_sparse_attention and reference_attention, which differ only in which
// key blocks feed which accumulator.
//
// Rows are processed kRows at a time against one key block, so that each load of K and V serves
// kRows rows; the tiles use the GCC/Clang vector extension rather than intrinsics, so the
// reference builds for any target those compilers support.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "spaattn/layout.hpp"

namespace spaattn::cpu {

constexpr int64_t kRows = 4;   // query rows per tile
constexpr int64_t kLanes = 8;  // keys (logits) or dims (P V) per tile; divides B and d

// Four floats as one SSE-sized value (GCC/Clang vector extension): the tiles below are written
// with it so that their accumulators stay in registers whatever the auto-vectoriser decides.
using f32x4 = float __attribute__((vector_size(16)));
using i32x4 = int32_t __attribute__((vector_size(16)));

inline f32x4 load4(const float* p) {
  f32x4 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store4(float* p, f32x4 v) { std::memcpy(p, &v, sizeof v); }

// fp32 copy of the K and V of one (b, h), by logical key block j: kt is [d][B] per block
// (transposed, so that logits are axpys over the keys rather than dot-product reductions), v is
// [B][d] per block. Keys a query may not attend to (padding text, index >= L_t) are left out of
// count[j]; slots past count[j] hold zeros.
struct PackedKV {
  int64_t dim = 0, block = 0;
  std::vector<float> kt, v;
  std::vector<int32_t> count;

  const float* kt_block(int64_t j) const { return kt.data() + j * dim * block; }
  const float* v_block(int64_t j) const { return v.data() + j * block * dim; }
};

// Packs K and V of (b, h) with L_t = text_len valid text tokens.
void pack_kv(const AttentionArgs& args, int64_t b, int64_t h, int64_t text_len, PackedKV& kv);

// e^x for x <= 0, four at a time: x = k ln2 + r with |r| <= ln2 / 2, e^r by its degree-7 Taylor
// polynomial (truncation below 6e-9 relative), 2^k through the exponent bits. Inputs below -87
// (including -inf) give e^-87 ~ 1.6e-38 instead of 0; next to the row max, which contributes 1,
// that is below fp32 resolution.
inline f32x4 exp_nonpositive(f32x4 x) {
  const f32x4 lo = f32x4{} - 87.f;
  x = x < lo ? lo : x;
  constexpr float kLog2e = 1.44269504f, kLn2Hi = 0.693145752f, kLn2Lo = 1.42860677e-6f;
  constexpr float kRound = 12582912.f;  // 1.5 * 2^23: adding it rounds to an integer
  const f32x4 k = (x * kLog2e + kRound) - kRound;
  const f32x4 r = (x - k * kLn2Hi) - k * kLn2Lo;
  f32x4 p = f32x4{} + 1.f / 5040.f;
  p = p * r + 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const i32x4 bits = (__builtin_convertvector(k, i32x4) + 127) << 23;
  f32x4 scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// s[r * B + m] = q_r . k_m for kRows rows q (row stride d, already scaled) and the keys of
// packed block j, for every m < count[j] rounded up to kLanes.
inline void block_logits(const float* q, const PackedKV& kv, int64_t j, float* s) {
  const int64_t n = kv.count[j], B = kv.block, d = kv.dim;
  const float* kt = kv.kt_block(j);
  for (int64_t m0 = 0; m0 < n; m0 += kLanes) {
    f32x4 acc[kRows][2] = {};
    for (int64_t e = 0; e < d; ++e) {
      const f32x4 k0 = load4(kt + e * B + m0), k1 = load4(kt + e * B + m0 + 4);
      for (int64_t r = 0; r < kRows; ++r) {
        const f32x4 qe = f32x4{} + q[r * d + e];
        acc[r][0] += qe * k0;
        acc[r][1] += qe * k1;
      }
    }
    for (int64_t r = 0; r < kRows; ++r) {
      store4(s + r * B + m0, acc[r][0]);
      store4(s + r * B + m0 + 4, acc[r][1]);
    }
  }
}

// Online softmax state of the rows of one query block: running max m, running sum l and the
// unnormalised output acc per row. A row that never sees a key keeps l = 0.
class OnlineSoftmax {
 public:
  // rows is rounded up to kRows; the extra rows compute on whatever q holds and are never read.
  void reset(int64_t rows, int64_t dim, int64_t block) {
    const int64_t padded = (rows + kRows - 1) / kRows * kRows;
    dim_ = dim;
    block_ = block;
    m_.assign(padded, -std::numeric_limits<float>::infinity());
    l_.assign(padded, 0.f);
    acc_.assign(padded * dim, 0.f);
    p_.assign(kRows * block, 0.f);
  }

  // Adds the n keys of a block to rows r0 .. r0 + kRows, given their logits s (row stride B) and
  // the block's values v ([B][d]). The running max only moves up, so every exponent is <= 0 and
  // logits of any magnitude stay finite.
  void add(int64_t r0, const float* s, int64_t n, const float* v) {
    const int64_t B = block_, d = dim_, n_up = (n + kLanes - 1) / kLanes * kLanes;
    for (int64_t r = 0; r < kRows; ++r) {
      const float* sr = s + r * B;
      float* pr = p_.data() + r * B;
      float bmax = sr[0];
      if (n >= 4) {
        f32x4 vmax = load4(sr);
        for (int64_t m = 4; m + 4 <= n; m += 4) {
          const f32x4 x = load4(sr + m);
          vmax = x > vmax ? x : vmax;
        }
        for (int u = 0; u < 4; ++u) bmax = vmax[u] > bmax ? vmax[u] : bmax;
      }
      for (int64_t m = n & ~int64_t{3}; m < n; ++m) bmax = sr[m] > bmax ? sr[m] : bmax;
      if (bmax > m_[r0 + r]) {
        const float factor = std::exp(m_[r0 + r] - bmax);  // exp(-inf) = 0 for the first block
        l_[r0 + r] *= factor;
        float* acc = acc_.data() + (r0 + r) * d;
        for (int64_t e = 0; e < d; ++e) acc[e] *= factor;
        m_[r0 + r] = bmax;
      }
      const float mx = m_[r0 + r];
      f32x4 sum = {};
      int64_t m = 0;
      for (; m + 4 <= n; m += 4) {
        const f32x4 p = exp_nonpositive(load4(sr + m) - mx);
        store4(pr + m, p);
        sum += p;
      }
      for (; m < n_up; m += 4) {  // the last keys and the lanes past them, which count 0
        f32x4 p = exp_nonpositive(load4(sr + m) - mx);
        for (int u = 0; u < 4; ++u) p[u] = m + u < n ? p[u] : 0.f;
        store4(pr + m, p);
        sum += p;
      }
      l_[r0 + r] += (sum[0] + sum[1]) + (sum[2] + sum[3]);
    }
    for (int64_t e0 = 0; e0 < d; e0 += kLanes) {
      f32x4 acc[kRows][2];
      for (int64_t r = 0; r < kRows; ++r) {
        acc[r][0] = load4(acc_.data() + (r0 + r) * d + e0);
        acc[r][1] = load4(acc_.data() + (r0 + r) * d + e0 + 4);
      }
      for (int64_t m = 0; m < n; ++m) {
        const f32x4 v0 = load4(v + m * d + e0), v1 = load4(v + m * d + e0 + 4);
        for (int64_t r = 0; r < kRows; ++r) {
          const f32x4 p = f32x4{} + p_[r * B + m];
          acc[r][0] += p * v0;
          acc[r][1] += p * v1;
        }
      }
      for (int64_t r = 0; r < kRows; ++r) {
        store4(acc_.data() + (r0 + r) * d + e0, acc[r][0]);
        store4(acc_.data() + (r0 + r) * d + e0 + 4, acc[r][1]);
      }
    }
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
  int64_t dim_ = 0, block_ = 0;
  std::vector<float> m_, l_, acc_, p_;
};

}  // namespace spaattn::cpu
