// The generalized Hilbert ("gilbert") curve over a t x h x w cuboid (docs/methods.md, Token
// orders; docs/choices.md, Gilbert order).
//
// The construction is J. Červený's gilbert3d: a box is an origin and three signed edge vectors
// a (major), b, c; its curve starts at the origin, ends at the far end of a, and is the chain of
// the curves of 2, 3 or 5 sub-boxes, each starting next to where the previous one ended. The box's
// aspect ratio picks the cut (a long box is cut across its long side only) and the cut points sit
// near the halves, so runs of consecutive curve points stay compact in all three dimensions.
//
// With odd sides the classic cut points can leave a sub-box that no unit-step path crosses from
// its start to its end corner, which shows up as a diagonal step. Colour the cells like a 3D
// chessboard: start and end of a box's curve are w - 1 steps apart, so for odd w they share a
// colour, and a path through all cells can do that only when the cell count is odd. A box is
// thus traversable iff w is even, or w, h, d are all odd (with w >= 3 unless it is one cell).
// Here each cut is taken among the classic cut points and their neighbours of the other parity
// so that every sub-box stays traversable. The classic choice comes first, so a cut differs from
// the classic one only where that would leave a sub-box without a unit-step path; the spread of
// 128-token blocks stays within a few percent of the classic curve's. Such a cut always exists
// for a traversable box that is not a line (so w >= 2): a b cut at an even h2 when h >= 3, a c
// cut at an even d2 when d >= 3, otherwise (w even, h, d <= 2) the even halves of a, or for
// w = 2 a cut into lines and single cells. At the top level the end corner is free, so the major
// axis is the first axis of `axes` that makes the whole grid traversable. Together: unit steps
// for every grid size.
#include <array>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "cpu/order_checks.hpp"
#include "spaattn/error.hpp"
#include "spaattn/order.hpp"

namespace spaattn {
namespace {

// Grid coordinates (x, y, t). Edge vectors have exactly one non-zero component.
using Vec = std::array<int64_t, 3>;

Vec operator+(Vec u, const Vec& v) {
  for (int i = 0; i < 3; ++i) u[i] += v[i];
  return u;
}
Vec operator-(Vec u, const Vec& v) {
  for (int i = 0; i < 3; ++i) u[i] -= v[i];
  return u;
}
Vec operator-(Vec u) {
  for (auto& x : u) x = -x;
  return u;
}

int64_t length(const Vec& v) { return std::abs(v[0] + v[1] + v[2]); }
Vec unit(const Vec& v) {
  Vec u;
  for (int i = 0; i < 3; ++i) u[i] = (v[i] > 0) - (v[i] < 0);
  return u;
}
// The first n cells of edge v, as an edge vector.
Vec head(const Vec& v, int64_t n) {
  Vec u = unit(v);
  for (auto& x : u) x *= n;
  return u;
}

struct Box {
  Vec origin, a, b, c;
};

// Whether a unit-step path through every cell runs from the origin to the far end of a.
bool traversable(const Box& box) {
  const int64_t w = length(box.a), h = length(box.b), d = length(box.c);
  if (w % 2 == 0) return true;
  return h % 2 == 1 && d % 2 == 1 && (w >= 3 || h * d == 1);
}

enum class Cut { a, b, c, abc };

// Sub-boxes of `x` in curve order for a cut at w2, h2, d2 cells along a, b, c (a cut ignores
// the points it does not use). Returns their count.
int cut(const Box& x, Cut kind, int64_t w2, int64_t h2, int64_t d2, std::array<Box, 5>& out) {
  const Vec& o = x.origin;
  const Vec a2 = head(x.a, w2), b2 = head(x.b, h2), c2 = head(x.c, d2);
  const Vec db = unit(x.b), dc = unit(x.c);
  const Vec a_last = x.a - unit(x.a);  // origin -> last cell along a
  switch (kind) {
    case Cut::a:  // the two halves along a
      out[0] = {o, a2, x.b, x.c};
      out[1] = {o + a2, x.a - a2, x.b, x.c};
      return 2;
    case Cut::b:  // up the near half of b, along a through the far half of b, back down
      out[0] = {o, b2, x.c, a2};
      out[1] = {o + b2, x.a, x.b - b2, x.c};
      out[2] = {o + a_last + (b2 - db), -b2, x.c, -(x.a - a2)};
      return 3;
    case Cut::c:  // the same with c in the role of b
      out[0] = {o, c2, a2, x.b};
      out[1] = {o + c2, x.a, x.b, x.c - c2};
      out[2] = {o + a_last + (c2 - dc), -c2, -(x.a - a2), x.b};
      return 3;
    case Cut::abc:  // all three sides halved: five sub-boxes, two of them two octants long
      out[0] = {o, b2, c2, a2};
      out[1] = {o + b2, x.c, a2, x.b - b2};
      out[2] = {o + (b2 - db) + (x.c - dc), x.a, -b2, -(x.c - c2)};
      out[3] = {o + a_last + b2 + (x.c - dc), -x.c, -(x.a - a2), x.b - b2};
      out[4] = {o + a_last + (b2 - db), -b2, c2, -(x.a - a2)};
      return 5;
  }
  return 0;
}

// Cut points along a side of n cells: the classic one (the half, moved up to an even count when
// n > 2) first, then its neighbours, which have the other parity. Empty when n < 2.
int cut_points(int64_t n, std::array<int64_t, 3>& out) {
  int64_t half = n / 2;
  if (half % 2 == 1 && n > 2) ++half;
  int count = 0;
  for (int64_t p : {half, half - 1, half + 1})
    if (p >= 1 && p <= n - 1) out[count++] = p;
  return count;
}

// The classic choice of cut from the aspect ratio of the box.
Cut classic_cut(int64_t w, int64_t h, int64_t d) {
  if (2 * w > 3 * h && 2 * w > 3 * d) return Cut::a;
  if (3 * h > 4 * d) return Cut::b;
  if (3 * d > 4 * h) return Cut::c;
  return Cut::abc;
}

class Walker {
 public:
  Walker(const Grid& grid, std::vector<int32_t>& out) : grid_(grid), out_(out) {}

  void walk(const Box& box) {
    const int64_t w = length(box.a), h = length(box.b), d = length(box.c);
    if (h == 1 && d == 1) {
      const Vec step = unit(box.a);
      Vec p = box.origin;
      for (int64_t i = 0; i < w; ++i, p = p + step) emit(p);
      return;
    }
    std::array<Box, 5> parts;
    const int count = plan(box, w, h, d, parts);
    for (int i = 0; i < count; ++i) walk(parts[i]);
  }

 private:
  // Finds a cut whose sub-boxes are all traversable, trying the classic cut kind first.
  static int plan(const Box& box, int64_t w, int64_t h, int64_t d, std::array<Box, 5>& parts) {
    const Cut first = classic_cut(w, h, d);
    std::array<int64_t, 3> ws{}, hs{}, ds{};
    const int nw = cut_points(w, ws), nh = cut_points(h, hs), nd = cut_points(d, ds);
    const std::array<Cut, 5> kinds = {first, Cut::abc, Cut::b, Cut::c, Cut::a};
    for (size_t n = 0; n < kinds.size(); ++n) {
      const Cut kind = kinds[n];
      if (n > 0 && kind == first) continue;
      const bool use_h = kind == Cut::b || kind == Cut::abc;
      const bool use_d = kind == Cut::c || kind == Cut::abc;
      for (int i = 0; i < nw; ++i)
        for (int j = 0; j < (use_h ? nh : 1); ++j)
          for (int k = 0; k < (use_d ? nd : 1); ++k) {
            const int count = cut(box, kind, ws[i], use_h ? hs[j] : 0, use_d ? ds[k] : 0, parts);
            bool ok = true;
            for (int p = 0; p < count; ++p) ok = ok && traversable(parts[p]);
            if (ok) return count;
          }
    }
    // Unreachable for traversable boxes (see the file comment), which are the only ones walked.
    throw Error(Error::Kind::runtime,
                detail::concat("gilbert3d: no traversable cut of a ", w, "x", h, "x", d, " box"));
  }

  void emit(const Vec& p) {
    out_.push_back(static_cast<int32_t>((p[2] * grid_.h + p[1]) * grid_.w + p[0]));
  }

  Grid grid_;
  std::vector<int32_t>& out_;
};

int axis_index(char axis) { return axis == 'w' ? 0 : axis == 'h' ? 1 : 2; }

}  // namespace

std::vector<int32_t> gilbert3d(const Grid& grid, std::array<char, 3> axes) {
  cpu::check_grid(grid, "grid");
  cpu::check_axes(axes, "axes");
  const Vec extent = {grid.w, grid.h, grid.t};
  auto edge = [&](char axis) {
    Vec v{0, 0, 0};
    v[axis_index(axis)] = extent[axis_index(axis)];
    return v;
  };
  // The requested major axis unless no unit-step curve ends at its far end (odd extent and even
  // cell count, or one cell on a larger grid); then the first axis in `axes` order that has one,
  // the other two keeping their order.
  Box top{};
  for (int m = 0; m < 3; ++m) {
    const char second = axes[m == 0 ? 1 : 0], third = axes[m == 2 ? 1 : 2];
    top = Box{{0, 0, 0}, edge(axes[m]), edge(second), edge(third)};
    if (traversable(top)) break;
  }
  std::vector<int32_t> out;
  out.reserve(static_cast<size_t>(grid.size()));
  Walker(grid, out).walk(top);
  return out;
}

}  // namespace spaattn
