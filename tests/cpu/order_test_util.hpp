// Helpers shared by the token-order tests (test_order, test_block_neighbours, test_permute_tokens).
#pragma once
#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <string>

#include "spaattn/error.hpp"
#include "spaattn/order.hpp"

namespace spaattn::test {

struct Cell {
  int64_t x, y, t;
};
inline Cell cell_of(const Grid& g, int64_t r) {
  return {r % g.w, (r / g.w) % g.h, r / (g.w * g.h)};
}

inline TokenOrder make_order(OrderKind kind, Grid grid, std::array<int64_t, 3> tile = {2, 8, 8}) {
  TokenOrder o;
  o.kind = kind;
  o.grid = grid;
  o.tile = tile;
  return o;
}

// Runs f, which must throw an invalid-argument spaattn::Error whose message starts with "<arg>:".
template <class F>
void expect_arg_error(F&& f, const std::string& arg) {
  try {
    f();
    ADD_FAILURE() << "no error, expected one naming " << arg;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), Error::Kind::invalid_argument);
    EXPECT_EQ(std::string(e.what()).rfind(arg + ":", 0), 0u) << e.what();
  }
}

}  // namespace spaattn::test
