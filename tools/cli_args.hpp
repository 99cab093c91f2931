// Strict parsing of the numeric values of command-line flags: the whole text must be one number of
// the expected kind and range, else spaattn::Error names the flag, the range and the text as
// given. Nothing is rounded, truncated or narrowed on the way to the target type.
#pragma once
#include <algorithm>
#include <charconv>
#include <cmath>
#include <concepts>
#include <initializer_list>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "checked_math.hpp"
#include "spaattn/error.hpp"
#include "spaattn/order.hpp"

namespace spaattn::tools {

// A decimal integer in [lo, hi]: digits with an optional leading '-' (no '+', spaces, exponent,
// fraction or hex), parsed in T itself so values beyond T are rejected rather than wrapped.
template <std::integral T>
T parse_integer_flag(std::string_view text, const char* flag, T lo, T hi) {
  T value{};
  const char* first = text.data();
  const char* last = first + text.size();
  const auto [ptr, ec] = std::from_chars(first, last, value);
  SPAATTN_CHECK_ARG(!text.empty() && ec == std::errc() && ptr == last && value >= lo &&
                        value <= hi,
                    flag, "expected an integer in [", +lo, ", ", +hi, "], got '", text, "'");
  return value;
}

// One of `choices` (e.g. the block sizes 64 and 128), written as a decimal integer.
inline int parse_choice_flag(std::string_view text, const char* flag,
                             std::initializer_list<int> choices) {
  int value = 0;
  const char* first = text.data();
  const char* last = first + text.size();
  const auto [ptr, ec] = std::from_chars(first, last, value);
  bool ok = !text.empty() && ec == std::errc() && ptr == last;
  ok = ok && std::find(choices.begin(), choices.end(), value) != choices.end();
  std::string list;
  for (const int c : choices) list += detail::concat(list.empty() ? "" : " or ", c);
  SPAATTN_CHECK_ARG(ok, flag, "expected ", list, ", got '", text, "'");
  return value;
}

// A finite decimal number in [lo, hi] (hi_open: [lo, hi)).
inline double parse_real_flag(std::string_view text, const char* flag, double lo, double hi,
                              bool hi_open = false) {
  double value = 0;
  const char* first = text.data();
  const char* last = first + text.size();
  const auto [ptr, ec] = std::from_chars(first, last, value);
  SPAATTN_CHECK_ARG(!text.empty() && ec == std::errc() && ptr == last && std::isfinite(value) &&
                        value >= lo && (hi_open ? value < hi : value <= hi),
                    flag, "expected a number in [", lo, ", ", hi, hi_open ? ")" : "]", ", got '",
                    text, "'");
  return value;
}

// "TxHxW": three integers in [1, max_tokens] separated by 'x' whose product is at most
// max_tokens (token indices are 32-bit).
inline Grid parse_grid_flag(std::string_view text, const char* flag,
                            int64_t max_tokens = std::numeric_limits<int32_t>::max()) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  while (parts.size() < 4) {
    const size_t end = text.find('x', start);
    parts.push_back(text.substr(start, end == std::string_view::npos ? end : end - start));
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  SPAATTN_CHECK_ARG(parts.size() == 3, flag, "expected TxHxW, got '", text, "'");
  int64_t dims[3] = {};
  for (int i = 0; i < 3; ++i) {
    const std::string_view p = parts[static_cast<size_t>(i)];
    const auto [ptr, ec] = std::from_chars(p.data(), p.data() + p.size(), dims[i]);
    SPAATTN_CHECK_ARG(!p.empty() && ec == std::errc() && ptr == p.data() + p.size() &&
                          dims[i] >= 1 && dims[i] <= max_tokens,
                      flag, "expected TxHxW with sizes in [1, ", max_tokens, "], got '", text,
                      "'");
  }
  const auto tokens = checked_product<int64_t>(dims, max_tokens);
  SPAATTN_CHECK_ARG(tokens.has_value(), flag, "expected at most ", max_tokens,
                    " video tokens, got '", text, "'");
  return Grid{dims[0], dims[1], dims[2]};
}

}  // namespace spaattn::tools
