// Token orders of the video grid and the block neighbour map (docs/methods.md, Token orders): the
// raster and tiles permutations, their inverse, validation, and which blocks touch which.
// The gilbert curve lives in gilbert.cpp, the gather/scatter of tensors in permute_tokens.cpp.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "cpu/order_checks.hpp"
#include "spaattn/error.hpp"
#include "spaattn/order.hpp"

namespace spaattn {

namespace cpu {

void check_grid(const Grid& grid, const char* arg) {
  SPAATTN_CHECK_ARG(grid.t >= 1 && grid.h >= 1 && grid.w >= 1, arg, "expected t, h, w >= 1, got ",
                    grid.t, "x", grid.h, "x", grid.w);
  // Token indices are int32 (they index GPU gathers); divide instead of multiplying to avoid
  // overflowing int64 on absurd sizes.
  constexpr int64_t max_tokens = std::numeric_limits<int32_t>::max();
  SPAATTN_CHECK_ARG(grid.t <= max_tokens / grid.h && grid.t * grid.h <= max_tokens / grid.w, arg,
                    "expected at most ", max_tokens, " tokens, got ", grid.t, "x", grid.h, "x",
                    grid.w);
}

void check_axes(const std::array<char, 3>& axes, const char* arg) {
  auto count = [&](char c) { return std::count(axes.begin(), axes.end(), c); };
  SPAATTN_CHECK_ARG(count('w') == 1 && count('h') == 1 && count('t') == 1, arg,
                    "expected a permutation of w, h, t, got ", axes[0], ", ", axes[1], ", ",
                    axes[2]);
}

void check_permutation(std::span<const int32_t> perm, const char* arg) {
  const int64_t n = static_cast<int64_t>(perm.size());
  std::vector<uint8_t> seen(perm.size(), 0);
  for (int64_t k = 0; k < n; ++k) {
    const int32_t v = perm[k];
    SPAATTN_CHECK_ARG(v >= 0 && v < n, arg, "expected values in [0, ", n, "), got ", arg, "[", k,
                      "] = ", v);
    SPAATTN_CHECK_ARG(!seen[v], arg, "expected a permutation, got ", arg, "[", k, "] = ", v,
                      " a second time");
    seen[v] = 1;
  }
}

}  // namespace cpu

namespace {

// Tiles in raster order of tiles, tokens of a tile in raster order; edge tiles are clipped.
std::vector<int32_t> tiles_permutation(const Grid& g, const std::array<int64_t, 3>& tile) {
  std::vector<int32_t> perm;
  perm.reserve(static_cast<size_t>(g.size()));
  for (int64_t t0 = 0; t0 < g.t; t0 += tile[0])
    for (int64_t y0 = 0; y0 < g.h; y0 += tile[1])
      for (int64_t x0 = 0; x0 < g.w; x0 += tile[2])
        for (int64_t t = t0; t < std::min(g.t, t0 + tile[0]); ++t)
          for (int64_t y = y0; y < std::min(g.h, y0 + tile[1]); ++y)
            for (int64_t x = x0; x < std::min(g.w, x0 + tile[2]); ++x)
              perm.push_back(static_cast<int32_t>((t * g.h + y) * g.w + x));
  return perm;
}

}  // namespace

void validate(const TokenOrder& order) {
  cpu::check_grid(order.grid, "order.grid");
  // Only the fields the kind uses are checked: a raster order with default-constructed or
  // leftover tile sizes is still a valid raster order.
  switch (order.kind) {
    case OrderKind::raster:
      return;
    case OrderKind::gilbert:
      cpu::check_axes(order.axes, "order.axes");
      return;
    case OrderKind::tiles:
      SPAATTN_CHECK_ARG(order.tile[0] >= 1 && order.tile[1] >= 1 && order.tile[2] >= 1,
                        "order.tile", "expected tile extents t, h, w >= 1, got ", order.tile[0],
                        "x", order.tile[1], "x", order.tile[2]);
      return;
  }
  SPAATTN_CHECK_ARG(false, "order.kind", "expected raster, gilbert or tiles, got ",
                    static_cast<int>(order.kind));
}

std::vector<int32_t> token_permutation(const TokenOrder& order) {
  validate(order);
  switch (order.kind) {
    case OrderKind::gilbert:
      return gilbert3d(order.grid, order.axes);
    case OrderKind::tiles:
      return tiles_permutation(order.grid, order.tile);
    case OrderKind::raster:
      break;
  }
  std::vector<int32_t> perm(static_cast<size_t>(order.grid.size()));
  for (size_t k = 0; k < perm.size(); ++k) perm[k] = static_cast<int32_t>(k);
  return perm;
}

std::vector<int32_t> invert_permutation(std::span<const int32_t> perm) {
  cpu::check_permutation(perm, "perm");
  std::vector<int32_t> inv(perm.size());
  for (size_t k = 0; k < perm.size(); ++k) inv[static_cast<size_t>(perm[k])] = static_cast<int32_t>(k);
  return inv;
}

std::vector<std::vector<int32_t>> block_neighbours(const TokenOrder& order, int block_size) {
  validate(order);
  SPAATTN_CHECK_ARG(block_size >= 1, "block_size", "expected >= 1, got ", block_size);
  const Grid g = order.grid;
  const std::vector<int32_t> perm = token_permutation(order);
  const int64_t n = static_cast<int64_t>(perm.size());
  const int64_t num_blocks = (n + block_size - 1) / block_size;

  // Block of every raster cell, so each of the 27 neighbour lookups is one table read.
  std::vector<int32_t> block_of(perm.size());
  for (int64_t k = 0; k < n; ++k) block_of[perm[k]] = static_cast<int32_t>(k / block_size);

  // One pass over the tokens, O(27 N): `last` marks blocks already listed for the current block,
  // which deduplicates without a set. Serial: tens of milliseconds even for 10^5 tokens.
  std::vector<std::vector<int32_t>> out(static_cast<size_t>(num_blocks));
  std::vector<int32_t> last(static_cast<size_t>(num_blocks), -1);
  for (int64_t i = 0; i < num_blocks; ++i) {
    auto& list = out[i];
    for (int64_t k = i * block_size; k < std::min(n, (i + 1) * block_size); ++k) {
      const int64_t r = perm[k];
      const int64_t x = r % g.w, y = (r / g.w) % g.h, t = r / (g.w * g.h);
      for (int64_t nt = std::max<int64_t>(t - 1, 0); nt <= std::min(t + 1, g.t - 1); ++nt)
        for (int64_t ny = std::max<int64_t>(y - 1, 0); ny <= std::min(y + 1, g.h - 1); ++ny)
          for (int64_t nx = std::max<int64_t>(x - 1, 0); nx <= std::min(x + 1, g.w - 1); ++nx) {
            const int32_t j = block_of[(nt * g.h + ny) * g.w + nx];
            if (last[j] != i) {
              last[j] = static_cast<int32_t>(i);
              list.push_back(j);
            }
          }
    }
    std::sort(list.begin(), list.end());
  }
  return out;
}

}  // namespace spaattn
