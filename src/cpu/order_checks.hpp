// Argument checks shared by the token-order files (order.cpp, gilbert.cpp, permute_tokens.cpp).
#pragma once
#include <array>
#include <cstdint>
#include <span>

#include "spaattn/order.hpp"

namespace spaattn::cpu {

// t, h, w >= 1 and t * h * w fits the int32 token indices; `arg` names the argument in errors.
void check_grid(const Grid& grid, const char* arg);
// A permutation of {'w', 'h', 't'}.
void check_axes(const std::array<char, 3>& axes, const char* arg);
// Every value in [0, perm.size()) exactly once.
void check_permutation(std::span<const int32_t> perm, const char* arg);

}  // namespace spaattn::cpu
