// Overflow-checked arithmetic on sizes the tools read from files and flags: a sum or product of
// non-negative integers that would exceed `limit` (or the type) is std::nullopt instead of a
// wrapped value, so callers reject the input before any size is used. A negative operand, or one
// above `limit`, is std::nullopt too, even where the result (a product with 0) would fit.
#pragma once
#include <concepts>
#include <limits>
#include <optional>
#include <span>

namespace spaattn::tools {

template <std::integral T>
std::optional<T> checked_add(T a, T b, T limit = std::numeric_limits<T>::max()) {
  if (a < 0 || b < 0 || a > limit || b > limit - a) return std::nullopt;
  return a + b;
}

template <std::integral T>
std::optional<T> checked_mul(T a, T b, T limit = std::numeric_limits<T>::max()) {
  if (a < 0 || b < 0 || a > limit || b > limit) return std::nullopt;
  if (a != 0 && b > limit / a) return std::nullopt;
  return a * b;
}

// The product of `dims` (1 for none); std::nullopt as soon as a partial product exceeds `limit`,
// so a zero after an overflowing prefix does not hide the overflow.
template <std::integral T>
std::optional<T> checked_product(std::span<const T> dims, T limit = std::numeric_limits<T>::max()) {
  T n = 1;
  for (const T d : dims) {
    const auto next = checked_mul(n, d, limit);
    if (!next) return std::nullopt;
    n = *next;
  }
  return n;
}

}  // namespace spaattn::tools
