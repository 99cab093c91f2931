// Token orders with 3D locality (order.hpp): permutations as int32 numpy arrays, the block
// neighbour map as lists, and the host gather/scatter of video tokens.
#include <nanobind/stl/array.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <span>
#include <vector>

#include "bindings.hpp"
#include "views.hpp"

namespace spaattn::python {
namespace {

TokenOrder make_order(const std::string& kind, std::array<int64_t, 3> grid,
                      const std::string& axes, std::array<int64_t, 3> tile) {
  TokenOrder order;
  order.kind = parse_order(kind);
  order.grid = Grid{grid[0], grid[1], grid[2]};
  order.axes = parse_axes(axes);
  order.tile = tile;
  return order;
}

// A host int32 vector as a span (the permutations the functions below take).
std::span<const int32_t> int32_span(const In& array, const char* name) {
  const TensorView t = to_view(array, name);
  SPAATTN_CHECK_ARG(t.rank == 1 && t.dtype == DType::i32 && t.device == Device::cpu &&
                        t.stride[0] == 1,
                    name, "expected a contiguous host int32 vector, got ", to_string(t.dtype),
                    " of rank ", t.rank, " on ", to_string(t.device));
  return {t.ptr<const int32_t>(), static_cast<size_t>(t.shape[0])};
}

}  // namespace

void bind_orders(nb::module_& m) {
  using namespace nb::literals;
  m.def(
      "token_permutation",
      [](const std::string& kind, std::array<int64_t, 3> grid, const std::string& axes,
         std::array<int64_t, 3> tile) {
        return to_numpy(token_permutation(make_order(kind, grid, axes, tile)));
      },
      "kind"_a, "grid"_a, "axes"_a, "tile"_a);
  m.def(
      "invert_permutation",
      [](const In& perm) { return to_numpy(invert_permutation(int32_span(perm, "perm"))); },
      "perm"_a);
  m.def(
      "block_neighbours",
      [](const std::string& kind, std::array<int64_t, 3> grid, const std::string& axes,
         std::array<int64_t, 3> tile, int block_size) {
        return block_neighbours(make_order(kind, grid, axes, tile), block_size);
      },
      "kind"_a, "grid"_a, "axes"_a, "tile"_a, "block_size"_a);
  m.def(
      "permute_tokens",
      [](const In& src, const Out& dst, const In& perm, int64_t video_offset, bool inverse) {
        const TensorView s = to_view(src, "src");
        const TensorView d = to_view(dst, "dst");
        const std::span<const int32_t> p = int32_span(perm, "perm");
        nb::gil_scoped_release release;
        permute_tokens(s, d, p, video_offset, inverse);
      },
      "src"_a, "dst"_a, "perm"_a, "video_offset"_a, "inverse"_a);
}

}  // namespace spaattn::python
