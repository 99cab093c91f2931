// Tests of permute_tokens (docs/methods.md): gather and scatter follow their definitions
// for every dtype and for strided layouts, scatter(gather(x)) == x bit for bit, nothing outside
// the destination view is written, and bad arguments are rejected before any write.
#include <gtest/gtest.h>

#include <array>
#include <cstddef>
#include <cstring>
#include <random>
#include <vector>

#include "cpu/order_test_util.hpp"
#include "spaattn/order.hpp"

namespace spaattn {
namespace {

using test::expect_arg_error;
using test::make_order;

constexpr std::byte kCanary{0xA5};

// bshd: [b, S, H, d] contiguous; bhsd: [b, H, S, d] memory seen as [b, S, H, d]; gappy: rows of
// d elements at stride 2 inside rows of 2d + 3, so the view skips bytes inside and between rows.
enum class Layout { bshd, bhsd, gappy };

struct Buffer {
  std::vector<std::byte> bytes;
  TensorView view;
};

Buffer make_buffer(DType dt, std::array<int64_t, 4> shape, Layout layout) {
  const auto [b, S, H, d] = shape;
  Buffer buf;
  int64_t elems = b * S * H * d;
  std::array<int64_t, 4> stride{S * H * d, H * d, d, 1};
  if (layout == Layout::bhsd) stride = {H * S * d, d, S * d, 1};
  if (layout == Layout::gappy) {
    const int64_t row = 2 * d + 3;
    stride = {S * H * row, H * row, row, 2};
    elems = b * S * H * row;
  }
  buf.bytes.assign(static_cast<size_t>(elems) * element_size(dt), kCanary);
  buf.view.data = buf.bytes.data();
  buf.view.dtype = dt;
  buf.view.rank = 4;
  buf.view.shape = shape;
  buf.view.stride = stride;
  return buf;
}

const std::byte* element(const TensorView& v, int64_t bi, int64_t s, int64_t h, int64_t k) {
  const int64_t off = bi * v.stride[0] + s * v.stride[1] + h * v.stride[2] + k * v.stride[3];
  return static_cast<const std::byte*>(v.data) + off * static_cast<int64_t>(element_size(v.dtype));
}

// Token s of a equals token map(s) of b, byte for byte, for every batch entry, head and channel.
template <class Map>
testing::AssertionResult tokens_match(const TensorView& a, const TensorView& b, Map map) {
  const size_t es = element_size(a.dtype);
  for (int64_t bi = 0; bi < a.shape[0]; ++bi)
    for (int64_t s = 0; s < a.shape[1]; ++s)
      for (int64_t h = 0; h < a.shape[2]; ++h)
        for (int64_t k = 0; k < a.shape[3]; ++k)
          if (std::memcmp(element(a, bi, s, h, k), element(b, bi, map(s), h, k), es) != 0)
            return testing::AssertionFailure() << "b " << bi << " token " << s << " head " << h;
  return testing::AssertionSuccess();
}

// Bytes of the buffer that the view does not cover still hold the canary.
testing::AssertionResult outside_untouched(const Buffer& buf) {
  std::vector<char> covered(buf.bytes.size(), 0);
  const auto& v = buf.view;
  const size_t es = element_size(v.dtype);
  for (int64_t bi = 0; bi < v.shape[0]; ++bi)
    for (int64_t s = 0; s < v.shape[1]; ++s)
      for (int64_t h = 0; h < v.shape[2]; ++h)
        for (int64_t k = 0; k < v.shape[3]; ++k) {
          const size_t at = static_cast<size_t>(element(v, bi, s, h, k) - buf.bytes.data());
          std::fill_n(covered.begin() + at, es, 1);
        }
  for (size_t i = 0; i < covered.size(); ++i)
    if (!covered[i] && buf.bytes[i] != kCanary)
      return testing::AssertionFailure() << "byte " << i << " outside the view was written";
  return testing::AssertionSuccess();
}

void fill_random(Buffer& buf, std::mt19937& rng) {
  for (auto& x : buf.bytes) x = static_cast<std::byte>(rng() & 0xff);
}

struct Case {
  TokenOrder order;
  int64_t b, video_offset, after, H, d;  // after: tokens past the video range
};

void check_round_trip(const Case& c, DType dt, Layout src_layout, Layout dst_layout,
                      std::mt19937& rng) {
  const std::vector<int32_t> perm = token_permutation(c.order);
  const std::vector<int32_t> inv = invert_permutation(perm);
  const int64_t n = static_cast<int64_t>(perm.size()), vo = c.video_offset;
  const std::array<int64_t, 4> shape{c.b, vo + n + c.after, c.H, c.d};
  Buffer src = make_buffer(dt, shape, src_layout);
  Buffer mid = make_buffer(dt, shape, dst_layout);
  Buffer back = make_buffer(dt, shape, src_layout);
  Buffer scattered = make_buffer(dt, shape, dst_layout);
  fill_random(src, rng);
  auto in_video = [&](int64_t s) { return s >= vo && s < vo + n; };

  permute_tokens(src.view, mid.view, perm, vo, false);
  // Gather: mid[vo + k] = src[vo + perm[k]], other tokens copied in place.
  EXPECT_TRUE(tokens_match(mid.view, src.view,
                           [&](int64_t s) { return in_video(s) ? vo + perm[s - vo] : s; }));
  EXPECT_TRUE(outside_untouched(mid));

  permute_tokens(mid.view, back.view, perm, vo, true);
  EXPECT_TRUE(tokens_match(back.view, src.view, [](int64_t s) { return s; }));
  EXPECT_TRUE(outside_untouched(back));

  // Scatter on its own: scattered[vo + perm[k]] = src[vo + k].
  permute_tokens(src.view, scattered.view, perm, vo, true);
  EXPECT_TRUE(tokens_match(scattered.view, src.view,
                           [&](int64_t s) { return in_video(s) ? vo + inv[s - vo] : s; }));
}

TEST(PermuteTokensTest, GatherScatterRoundTripAllDtypesAndLayouts) {
  std::mt19937 rng(20251122);
  const Grid g{3, 5, 7};  // 105 video tokens, not a multiple of anything convenient
  const std::vector<Case> cases = {
      {make_order(OrderKind::gilbert, g), 2, 0, 6, 3, 5},   // video, then text
      {make_order(OrderKind::gilbert, g), 2, 6, 0, 3, 5},   // text prefix
      {make_order(OrderKind::tiles, g, {2, 2, 3}), 1, 2, 4, 2, 3},  // tokens on both sides
  };
  const std::array<std::array<Layout, 2>, 5> layouts = {{{Layout::bshd, Layout::bshd},
                                                         {Layout::bhsd, Layout::bshd},
                                                         {Layout::bshd, Layout::bhsd},
                                                         {Layout::gappy, Layout::bhsd},
                                                         {Layout::bhsd, Layout::gappy}}};
  for (DType dt : {DType::f32, DType::f16, DType::bf16, DType::i32, DType::u8})
    for (const auto& [src_layout, dst_layout] : layouts)
      for (const Case& c : cases) {
        SCOPED_TRACE(testing::Message() << "dtype " << to_string(dt) << " layouts "
                                        << static_cast<int>(src_layout) << "->"
                                        << static_cast<int>(dst_layout) << " offset "
                                        << c.video_offset);
        check_round_trip(c, dt, src_layout, dst_layout, rng);
      }
}

TEST(PermuteTokensTest, LargerTensorAcrossThreads) {
  // 2 x 266 tokens of 4 x 64 f16 values: enough work that the copy is split over threads.
  std::mt19937 rng(7);
  const Case c{make_order(OrderKind::gilbert, {4, 8, 8}), 2, 0, 10, 4, 64};
  check_round_trip(c, DType::f16, Layout::bhsd, Layout::bshd, rng);
  check_round_trip(c, DType::bf16, Layout::gappy, Layout::gappy, rng);
}

TEST(PermuteTokensTest, EmptyPermutationCopiesEveryToken) {
  std::mt19937 rng(3);
  Buffer src = make_buffer(DType::f32, {2, 9, 2, 4}, Layout::bshd);
  Buffer dst = make_buffer(DType::f32, {2, 9, 2, 4}, Layout::bhsd);
  fill_random(src, rng);
  for (int64_t vo : {0, 4, 9}) {
    permute_tokens(src.view, dst.view, {}, vo, false);
    EXPECT_TRUE(tokens_match(dst.view, src.view, [](int64_t s) { return s; }));
  }
}

TEST(PermuteTokensTest, RejectsBadArgumentsBeforeWriting) {
  const std::array<int64_t, 4> shape{2, 20, 2, 4};
  std::mt19937 rng(11);
  Buffer src = make_buffer(DType::f32, shape, Layout::bshd);
  Buffer dst = make_buffer(DType::f32, shape, Layout::bshd);
  fill_random(src, rng);
  const std::vector<int32_t> perm = token_permutation(make_order(OrderKind::gilbert, {1, 3, 4}));
  auto run = [&](TensorView s, TensorView d, std::vector<int32_t> p, int64_t vo) {
    return [=] { permute_tokens(s, d, p, vo, false); };
  };
  TensorView other = dst.view;
  other.dtype = DType::f16;
  expect_arg_error(run(src.view, other, perm, 4), "dst");
  other = dst.view;
  other.shape[1] = 19;
  expect_arg_error(run(src.view, other, perm, 4), "dst");
  other = dst.view;
  other.device = Device::cuda;
  expect_arg_error(run(src.view, other, perm, 4), "dst");
  other = src.view;
  other.rank = 3;
  expect_arg_error(run(other, dst.view, perm, 4), "src");
  expect_arg_error(run(src.view, src.view, perm, 4), "dst");  // in place
  other = src.view;
  other.data = src.bytes.data() + 4;  // overlapping src, shifted by one element
  expect_arg_error(run(src.view, other, perm, 4), "dst");
  expect_arg_error(run(src.view, dst.view, perm, -1), "video_offset");
  expect_arg_error(run(src.view, dst.view, perm, 21), "video_offset");
  expect_arg_error(run(src.view, dst.view, perm, 9), "perm");  // 12 tokens after 9 exceed 20
  std::vector<int32_t> bad = perm;
  bad[3] = 12;
  expect_arg_error(run(src.view, dst.view, bad, 4), "perm");
  bad[3] = bad[4];
  expect_arg_error(run(src.view, dst.view, bad, 4), "perm");
  for (std::byte x : dst.bytes) ASSERT_EQ(x, kCanary) << "an error left a partial write";
}

}  // namespace
}  // namespace spaattn
