// Token orders with 3D locality and the block neighbour map (docs/methods.md, Token orders).
#pragma once
#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "spaattn/tensor.hpp"

namespace spaattn {

// The latent grid of the video tokens, raster index = (t * h + y) * w + x.
struct Grid {
  int64_t t = 0, h = 0, w = 0;
  int64_t size() const { return t * h * w; }  // of a validated grid (order.hpp validate)
  // No grid: all three zero. Any other value is a grid, checked by validate() before use.
  bool empty() const { return t == 0 && h == 0 && w == 0; }
};

enum class OrderKind : uint8_t { raster, gilbert, tiles };

struct TokenOrder {
  OrderKind kind = OrderKind::raster;
  Grid grid;
  // gilbert: axes from major to minor, a permutation of {'w','h','t'}.
  std::array<char, 3> axes = {'w', 'h', 't'};
  // tiles: tile extent along t, h, w (edge tiles are partial); tiles and the tokens inside a tile
  // are both visited in raster order.
  std::array<int64_t, 3> tile = {2, 8, 8};
};

// Throws spaattn::Error naming "order" for an empty grid, bad axes or bad tile sizes.
void validate(const TokenOrder& order);

// The generalized Hilbert curve over a t x h x w cuboid: element k is the raster index of the
// k-th point. A bijection on the grid whose consecutive points are grid neighbours.
// The curve starts at raster index 0 and ends at the far end of its major axis, axes[0]; where no
// neighbour-step curve can end there (odd extent and even cell count, or extent 1 on a larger
// grid) the first axis of `axes` that allows one is the major axis instead.
std::vector<int32_t> gilbert3d(const Grid& grid, std::array<char, 3> axes = {'w', 'h', 't'});

// perm[k] = raster index of the k-th token in the order. Gather: x_ord[k] = x_raster[perm[k]].
std::vector<int32_t> token_permutation(const TokenOrder& order);
// inv[perm[k]] = k.
std::vector<int32_t> invert_permutation(std::span<const int32_t> perm);

// For each video block i (blocks of `block_size` consecutive tokens in the order), the sorted
// list of video blocks j holding a token within one grid step (26-neighbourhood, Chebyshev
// distance 1) of a token of block i; always contains i.
std::vector<std::vector<int32_t>> block_neighbours(const TokenOrder& order, int block_size);

// Gathers (inverse=false) or scatters (inverse=true) the video tokens of a [b, S, H, d] tensor:
// dst[:, video_offset + k] = src[:, video_offset + perm[k]] (gather), or
// dst[:, video_offset + perm[k]] = src[:, video_offset + k] (scatter). Tokens outside the video
// range are copied unchanged. src and dst: same shape and dtype, host memory, must not alias.
void permute_tokens(const TensorView& src, TensorView dst, std::span<const int32_t> perm,
                    int64_t video_offset, bool inverse);

}  // namespace spaattn
