// Tests of the token orders (docs/methods.md): the gilbert curve, the raster and tiles
// orders, the permutation inverse and validation errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <string>
#include <vector>

#include "cpu/order_test_util.hpp"
#include "spaattn/error.hpp"
#include "spaattn/order.hpp"

namespace spaattn {
namespace {

using test::Cell;
using test::cell_of;
using test::expect_arg_error;
using test::make_order;

const std::array<std::array<char, 3>, 6> kAllAxes = {{{'w', 'h', 't'}, {'w', 't', 'h'},
                                                      {'h', 'w', 't'}, {'h', 't', 'w'},
                                                      {'t', 'w', 'h'}, {'t', 'h', 'w'}}};

std::string name(const Grid& g, std::array<char, 3> axes) {
  return std::to_string(g.t) + "x" + std::to_string(g.h) + "x" + std::to_string(g.w) + " axes " +
         std::string(axes.begin(), axes.end());
}

// Every cell exactly once, starting at the origin, each step to a face neighbour.
testing::AssertionResult is_unit_step_walk(const Grid& g, const std::vector<int32_t>& p) {
  if (static_cast<int64_t>(p.size()) != g.size())
    return testing::AssertionFailure() << "size " << p.size();
  std::vector<char> seen(p.size(), 0);
  for (size_t k = 0; k < p.size(); ++k) {
    if (p[k] < 0 || p[k] >= g.size() || seen[p[k]])
      return testing::AssertionFailure() << "not a bijection at k = " << k;
    seen[p[k]] = 1;
  }
  if (p[0] != 0) return testing::AssertionFailure() << "starts at " << p[0];
  for (size_t k = 1; k < p.size(); ++k) {
    const Cell a = cell_of(g, p[k - 1]), b = cell_of(g, p[k]);
    if (std::abs(a.x - b.x) + std::abs(a.y - b.y) + std::abs(a.t - b.t) != 1)
      return testing::AssertionFailure() << "step " << k << " is not to a face neighbour";
  }
  return testing::AssertionSuccess();
}

TEST(GilbertTest, UnitStepBijectionOnAllSmallGrids) {
  for (int64_t t = 1; t <= 12; ++t)
    for (int64_t h = 1; h <= 12; ++h)
      for (int64_t w = 1; w <= 12; ++w)
        for (const auto& axes : kAllAxes) {
          const Grid g{t, h, w};
          ASSERT_TRUE(is_unit_step_walk(g, gilbert3d(g, axes))) << name(g, axes);
        }
}

TEST(GilbertTest, UnitStepBijectionOnVideoGrids) {
  for (const Grid& g : {Grid{13, 45, 80}, Grid{16, 30, 52}, Grid{33, 45, 80}, Grid{21, 30, 52},
                        Grid{31, 45, 81}, Grid{1, 45, 80}, Grid{1, 1, 113}, Grid{2, 1, 97}})
    for (const auto& axes : kAllAxes)
      ASSERT_TRUE(is_unit_step_walk(g, gilbert3d(g, axes))) << name(g, axes);
}

TEST(GilbertTest, EndsAtTheFarEndOfTheMajorAxis) {
  auto last = [](Grid g, std::array<char, 3> axes) {
    const Cell c = cell_of(g, gilbert3d(g, axes).back());
    return std::array<int64_t, 3>{c.t, c.y, c.x};
  };
  const Grid even{4, 6, 8};
  EXPECT_EQ(last(even, {'w', 'h', 't'}), (std::array<int64_t, 3>{0, 0, 7}));
  EXPECT_EQ(last(even, {'h', 'w', 't'}), (std::array<int64_t, 3>{0, 5, 0}));
  EXPECT_EQ(last(even, {'t', 'h', 'w'}), (std::array<int64_t, 3>{3, 0, 0}));
  // All sides odd: any side of 3 or more cells can be the major one.
  EXPECT_EQ(last({3, 5, 7}, {'w', 'h', 't'}), (std::array<int64_t, 3>{0, 0, 6}));
  EXPECT_EQ(last({3, 5, 7}, {'t', 'w', 'h'}), (std::array<int64_t, 3>{2, 0, 0}));
  // w = 7 is odd and the cell count 140 even: no unit-step curve ends at x = 6, so the first
  // even axis of `axes` (h = 5 is odd, t = 4) takes the major role.
  EXPECT_EQ(last({4, 5, 7}, {'w', 'h', 't'}), (std::array<int64_t, 3>{3, 0, 0}));
  // A major axis of one cell cannot end away from the start.
  EXPECT_EQ(last({1, 1, 5}, {'t', 'h', 'w'}), (std::array<int64_t, 3>{0, 0, 4}));
}

// Hilbert index -> (x, y) on an n x n square, n a power of two (the classic iterative form).
std::array<int64_t, 2> hilbert_d2xy(int64_t n, int64_t d) {
  int64_t x = 0, y = 0;
  for (int64_t s = 1, t = d; s < n; s *= 2, t /= 4) {
    const int64_t rx = 1 & (t / 2), ry = 1 & (t ^ rx);
    if (ry == 0) {
      if (rx == 1) {
        x = s - 1 - x;
        y = s - 1 - y;
      }
      std::swap(x, y);
    }
    x += s * rx;
    y += s * ry;
  }
  return {x, y};
}

TEST(GilbertTest, IsTheHilbertCurveOnPowerOfTwoSquares) {
  // Both start at (0, 0). The gilbert curve ends at (n - 1, 0); the d2xy form ends there or at
  // (0, n - 1) depending on the parity of log2(n), and is then mirrored in the diagonal.
  for (int64_t n : {2, 4, 8, 16, 32}) {
    const std::vector<int32_t> p = gilbert3d({1, n, n});
    const bool mirror = hilbert_d2xy(n, n * n - 1)[0] == 0;
    for (int64_t k = 0; k < n * n; ++k) {
      const auto [x, y] = hilbert_d2xy(n, k);
      ASSERT_EQ(p[k], mirror ? x * n + y : y * n + x) << "n " << n << " k " << k;
    }
  }
}

TEST(GilbertTest, AlignedRunsOfPowerOfTwoCubesAreSubcubes) {
  for (int64_t n : {8, 16}) {
    const Grid g{n, n, n};
    const std::vector<int32_t> p = gilbert3d(g);
    for (int64_t side = 2; side < n; side *= 2) {
      const int64_t run = side * side * side;
      for (int64_t k0 = 0; k0 < g.size(); k0 += run) {
        const Cell c0 = cell_of(g, p[k0]);
        const Cell corner{c0.x / side * side, c0.y / side * side, c0.t / side * side};
        for (int64_t k = k0; k < k0 + run; ++k) {
          const Cell c = cell_of(g, p[k]);
          ASSERT_TRUE(c.x / side * side == corner.x && c.y / side * side == corner.y &&
                      c.t / side * side == corner.t)
              << "n " << n << " side " << side << " k " << k;
        }
      }
    }
  }
}

TEST(GilbertTest, RejectsBadArguments) {
  expect_arg_error([] { gilbert3d({0, 4, 4}); }, "grid");
  expect_arg_error([] { gilbert3d({4, 4, 4}, {'w', 'w', 't'}); }, "axes");
  expect_arg_error([] { gilbert3d({4, 4, 4}, {'x', 'h', 't'}); }, "axes");
}

TEST(TokenOrderTest, RasterIsTheIdentity) {
  const std::vector<int32_t> p = token_permutation(make_order(OrderKind::raster, {3, 4, 5}));
  ASSERT_EQ(p.size(), 60u);
  for (int32_t k = 0; k < 60; ++k) EXPECT_EQ(p[k], k);
}

TEST(TokenOrderTest, TilesSmallExamples) {
  EXPECT_EQ(token_permutation(make_order(OrderKind::tiles, {1, 2, 4}, {1, 2, 2})),
            (std::vector<int32_t>{0, 1, 4, 5, 2, 3, 6, 7}));
  // Partial tiles along t and w: tiles {t 0-1, x 0-1}, {t 0-1, x 2}, {t 2, x 0-1}, {t 2, x 2}.
  EXPECT_EQ(token_permutation(make_order(OrderKind::tiles, {3, 1, 3}, {2, 1, 2})),
            (std::vector<int32_t>{0, 1, 3, 4, 2, 5, 6, 7, 8}));
  // One tile covering the grid is the raster order.
  const std::vector<int32_t> p = token_permutation(make_order(OrderKind::tiles, {2, 3, 4}, {5, 5, 5}));
  for (int32_t k = 0; k < 24; ++k) EXPECT_EQ(p[k], k);
}

TEST(TokenOrderTest, TilesAreConsecutiveRunsInTileRasterOrder) {
  struct Case {
    Grid grid;
    std::array<int64_t, 3> tile;
  };
  for (const Case& c : {Case{{16, 30, 52}, {2, 8, 8}}, Case{{7, 11, 13}, {3, 5, 4}}}) {
    const Grid g = c.grid;
    const std::vector<int32_t> p = token_permutation(make_order(OrderKind::tiles, g, c.tile));
    const int64_t tiles_h = (g.h + c.tile[1] - 1) / c.tile[1];
    const int64_t tiles_w = (g.w + c.tile[2] - 1) / c.tile[2];
    auto tile_of = [&](int64_t r) {
      const Cell x = cell_of(g, r);
      return (x.t / c.tile[0] * tiles_h + x.y / c.tile[1]) * tiles_w + x.x / c.tile[2];
    };
    ASSERT_EQ(p.size(), static_cast<size_t>(g.size()));
    std::vector<char> seen(p.size(), 0);
    std::vector<int64_t> run_length;
    for (size_t k = 0; k < p.size(); ++k) {
      ASSERT_TRUE(p[k] >= 0 && p[k] < g.size() && !seen[p[k]]) << "not a bijection at " << k;
      seen[p[k]] = 1;
      if (k == 0 || tile_of(p[k]) != tile_of(p[k - 1])) {
        // A new tile starts: the next one in raster order of tiles.
        ASSERT_EQ(tile_of(p[k]), static_cast<int64_t>(run_length.size()));
        run_length.push_back(0);
      } else {
        ASSERT_GT(p[k], p[k - 1]) << "tokens of a tile must be in raster order";
      }
      ++run_length.back();
    }
    // Full tiles are whole runs of tT * tH * tW tokens (128 for 2x8x8).
    EXPECT_EQ(run_length.front(), c.tile[0] * c.tile[1] * c.tile[2]);
  }
}

TEST(TokenOrderTest, InvertPermutation) {
  TokenOrder o = make_order(OrderKind::gilbert, {5, 6, 7});
  const std::vector<int32_t> p = token_permutation(o);
  const std::vector<int32_t> inv = invert_permutation(p);
  ASSERT_EQ(inv.size(), p.size());
  for (size_t k = 0; k < p.size(); ++k) {
    EXPECT_EQ(inv[p[k]], static_cast<int32_t>(k));
    EXPECT_EQ(p[inv[k]], static_cast<int32_t>(k));
  }
  expect_arg_error([] { invert_permutation(std::vector<int32_t>{0, 2}); }, "perm");
  expect_arg_error([] { invert_permutation(std::vector<int32_t>{1, 1}); }, "perm");
  expect_arg_error([] { invert_permutation(std::vector<int32_t>{-1, 0}); }, "perm");
}

TEST(TokenOrderTest, ValidateNamesTheField) {
  expect_arg_error([] { validate(make_order(OrderKind::raster, {0, 4, 4})); }, "order.grid");
  expect_arg_error([] { validate(make_order(OrderKind::gilbert, {4, -1, 4})); }, "order.grid");
  expect_arg_error([] { validate(make_order(OrderKind::raster, {2048, 2048, 2048})); },
                   "order.grid");
  TokenOrder bad_axes = make_order(OrderKind::gilbert, {2, 4, 4});
  bad_axes.axes = {'w', 'w', 't'};
  expect_arg_error([&] { validate(bad_axes); }, "order.axes");
  expect_arg_error([&] { token_permutation(bad_axes); }, "order.axes");
  expect_arg_error([] { validate(make_order(OrderKind::tiles, {2, 4, 4}, {2, 0, 8})); },
                   "order.tile");
  expect_arg_error([] { validate(make_order(static_cast<OrderKind>(7), {2, 4, 4})); },
                   "order.kind");
  // Only the fields a kind uses are checked.
  EXPECT_NO_THROW(validate(make_order(OrderKind::raster, {2, 4, 4}, {0, 0, 0})));
  expect_arg_error([] { block_neighbours(make_order(OrderKind::raster, {1, 1, 0}), 128); },
                   "order.grid");
  expect_arg_error([] { block_neighbours(make_order(OrderKind::raster, {1, 2, 2}), 0); },
                   "block_size");
}

}  // namespace
}  // namespace spaattn
