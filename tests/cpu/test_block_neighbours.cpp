// Tests of the block neighbour map (docs/methods.md): brute force on small grids for every
// order kind and awkward block sizes, hand-made cases, and the structure on a large video grid.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "cpu/order_test_util.hpp"
#include "spaattn/order.hpp"

namespace spaattn {
namespace {

using test::Cell;
using test::cell_of;
using test::make_order;
using Map = std::vector<std::vector<int32_t>>;

// Blocks i and j are neighbours iff some token pair (one in each) is within Chebyshev distance 1.
Map brute_force(const TokenOrder& order, int block_size) {
  const std::vector<int32_t> p = token_permutation(order);
  const int64_t n = static_cast<int64_t>(p.size());
  const int64_t blocks = (n + block_size - 1) / block_size;
  Map map(blocks);
  for (int64_t i = 0; i < blocks; ++i)
    for (int64_t j = 0; j < blocks; ++j) {
      bool touch = false;
      for (int64_t a = i * block_size; a < std::min(n, (i + 1) * block_size) && !touch; ++a)
        for (int64_t b = j * block_size; b < std::min(n, (j + 1) * block_size) && !touch; ++b) {
          const Cell u = cell_of(order.grid, p[a]), v = cell_of(order.grid, p[b]);
          touch = std::abs(u.x - v.x) <= 1 && std::abs(u.y - v.y) <= 1 && std::abs(u.t - v.t) <= 1;
        }
      if (touch) map[i].push_back(static_cast<int32_t>(j));
    }
  return map;
}

// Sorted, unique, contains i, and j in map[i] iff i in map[j].
testing::AssertionResult is_symmetric_sorted_map(const Map& map) {
  for (size_t i = 0; i < map.size(); ++i) {
    const auto& l = map[i];
    if (!std::is_sorted(l.begin(), l.end()) || std::adjacent_find(l.begin(), l.end()) != l.end())
      return testing::AssertionFailure() << "list " << i << " not sorted and unique";
    if (!std::binary_search(l.begin(), l.end(), static_cast<int32_t>(i)))
      return testing::AssertionFailure() << "list " << i << " misses its own block";
    for (int32_t j : l) {
      if (j < 0 || static_cast<size_t>(j) >= map.size())
        return testing::AssertionFailure() << "block " << j << " out of range";
      if (!std::binary_search(map[j].begin(), map[j].end(), static_cast<int32_t>(i)))
        return testing::AssertionFailure() << j << " in list " << i << " but not the reverse";
    }
  }
  return testing::AssertionSuccess();
}

TEST(BlockNeighbourTest, MatchesBruteForceOnSmallGrids) {
  for (const Grid& g : {Grid{1, 1, 1}, Grid{2, 3, 4}, Grid{3, 5, 7}, Grid{4, 4, 4}, Grid{1, 6, 10},
                        Grid{5, 1, 9}})
    for (OrderKind kind : {OrderKind::raster, OrderKind::gilbert, OrderKind::tiles})
      for (int block_size : {1, 3, 7, 16, 128}) {
        const TokenOrder order = make_order(kind, g, {2, 2, 3});
        const Map map = block_neighbours(order, block_size);
        ASSERT_EQ(map, brute_force(order, block_size))
            << g.t << "x" << g.h << "x" << g.w << " kind " << static_cast<int>(kind) << " B "
            << block_size;
        ASSERT_TRUE(is_symmetric_sorted_map(map));
      }
}

TEST(BlockNeighbourTest, HandMadeCases) {
  // A row of 8 tokens in blocks of 2: each block touches the blocks next to it only.
  EXPECT_EQ(block_neighbours(make_order(OrderKind::raster, {1, 1, 8}), 2),
            (Map{{0, 1}, {0, 1, 2}, {1, 2, 3}, {2, 3}}));
  // 5 tokens in blocks of 2: the last block holds one token.
  EXPECT_EQ(block_neighbours(make_order(OrderKind::raster, {1, 1, 5}), 2),
            (Map{{0, 1}, {0, 1, 2}, {1, 2}}));
  // Frames of a 4 x 2 x 2 video as blocks: a frame touches the frames before and after.
  EXPECT_EQ(block_neighbours(make_order(OrderKind::raster, {4, 2, 2}), 4),
            (Map{{0, 1}, {0, 1, 2}, {1, 2, 3}, {2, 3}}));
  // One token per block on a 2 x 2 square: diagonal cells count (26-neighbourhood), so the
  // two corners 0 and 3, which share no face, are neighbours.
  EXPECT_EQ(block_neighbours(make_order(OrderKind::raster, {1, 2, 2}), 1),
            (Map{{0, 1, 2, 3}, {0, 1, 2, 3}, {0, 1, 2, 3}, {0, 1, 2, 3}}));
  // A 3 x 3 square in raster order cut into 2-token blocks: block 2 = {(1,1), (2,1)} touches all,
  // block 1 = {(2,0), (0,1)} and block 4 = {(2,2)} do not touch each other.
  EXPECT_EQ(block_neighbours(make_order(OrderKind::raster, {1, 3, 3}), 2),
            (Map{{0, 1, 2}, {0, 1, 2, 3}, {0, 1, 2, 3, 4}, {1, 2, 3, 4}, {2, 3, 4}}));
}

TEST(BlockNeighbourTest, LargeGilbertGrid) {
  // Hunyuan-sized latent grid, B = 128: 929 blocks, the last one partial (118800 = 928*128 + 16).
  const TokenOrder order = make_order(OrderKind::gilbert, {33, 45, 80});
  const Map map = block_neighbours(order, 128);
  ASSERT_EQ(map.size(), 929u);
  ASSERT_TRUE(is_symmetric_sorted_map(map));
  // The curve is continuous, so consecutive blocks always touch.
  for (size_t i = 0; i + 1 < map.size(); ++i)
    EXPECT_TRUE(std::binary_search(map[i].begin(), map[i].end(), static_cast<int32_t>(i + 1)));
  // Compact blocks have few neighbours: a 128-token blob touches a few dozen blocks, never a
  // large share of the 929.
  for (const auto& l : map) EXPECT_LE(l.size(), 64u);
}

}  // namespace
}  // namespace spaattn
