// Test fixtures shared by the CPU tests: a seeded host call and an error-message matcher.
#pragma once
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "spaattn/spaattn.hpp"

namespace spaattn::testing {

// Host tensors of one call, [b, S, H, d], filled with seeded normals.
struct Call {
  // Block size 64; q, k, v, out filled with seeded standard normals (out too, as poison).
  int64_t B, S, H, D;
  std::vector<float> q, k, v, out;
  AttentionArgs args;
  Call(int64_t b, int64_t nv, int64_t nt, int64_t h, int64_t d, uint32_t seed = 1)
      : B(b), S(nv + nt), H(h), D(d) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> n;
    for (auto* t : {&q, &k, &v, &out}) {
      t->resize(static_cast<size_t>(B * S * H * D));
      for (auto& x : *t) x = n(rng);
    }
    args.q = TensorView::contiguous(q.data(), DType::f32, {B, S, H, D});
    args.k = TensorView::contiguous(k.data(), DType::f32, {B, S, H, D});
    args.v = TensorView::contiguous(v.data(), DType::f32, {B, S, H, D});
    args.layout = Layout{.num_video = nv, .num_text = nt, .block_size = 64};
  }
  TensorView out_view() { return TensorView::contiguous(out.data(), DType::f32, {B, S, H, D}); }
};

// Expects `fn` to throw spaattn::Error whose message starts with "arg:" and contains `detail`.
template <class Fn>
void expect_error(Fn&& fn, const std::string& arg, const std::string& detail = "") {
  try {
    fn();
    ADD_FAILURE() << "no error for " << arg;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind(arg + ":", 0), 0u) << msg;
    EXPECT_NE(msg.find(detail), std::string::npos) << msg;
    EXPECT_EQ(e.kind(), Error::Kind::invalid_argument);
  }
}

}  // namespace spaattn::testing
