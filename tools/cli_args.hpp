// Strict parsing of the numeric values of command-line flags: the whole text must be one number of
// the expected kind and range, else spaattn::Error names the flag, the range and the text as
// given. Nothing is rounded, truncated or narrowed on the way to the target type. Also the split
// of a command's arguments into options, shared by `spaattn eval` and `spaattn bench`.
#pragma once
#include <algorithm>
#include <charconv>
#include <cmath>
#include <concepts>
#include <initializer_list>
#include <limits>
#include <span>
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

// A finite decimal number in [lo, hi] (hi_open: [lo, hi); lo_open: (lo, hi]).
inline double parse_real_flag(std::string_view text, const char* flag, double lo, double hi,
                              bool hi_open = false, bool lo_open = false) {
  double value = 0;
  const char* first = text.data();
  const char* last = first + text.size();
  const auto [ptr, ec] = std::from_chars(first, last, value);
  SPAATTN_CHECK_ARG(!text.empty() && ec == std::errc() && ptr == last && std::isfinite(value) &&
                        (lo_open ? value > lo : value >= lo) &&
                        (hi_open ? value < hi : value <= hi),
                    flag, "expected a number in ", lo_open ? "(" : "[", lo, ", ", hi,
                    hi_open ? ")" : "]", ", got '", text, "'");
  return value;
}

// The comma-separated entries of a list value, empty ones included ("0.5,,0.9" has three), so
// that a stray comma is reported as an empty entry rather than skipped.
inline std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t end = s.find(',', start);
    out.push_back(s.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return out;
}

// One option of a command line: a switch ("--help") or a flag with its value ("--seq 4096" or
// "--seq=4096").
struct CommandOption {
  std::string flag, value;
  bool is_switch = false;
};

// Splits the arguments after a command ("eval", "bench") into options. A flag in `value_flags`
// takes the next argument or the text after its first '=' as its value; one in `switches` takes
// none. Throws spaattn::Error naming the flag for a value given to a switch ("takes no value"),
// an unknown flag ("unknown option (see spaattn <command> --help)") or a missing value.
inline std::vector<CommandOption> split_options(const std::vector<std::string>& args,
                                                std::span<const std::string_view> value_flags,
                                                std::span<const std::string_view> switches,
                                                const char* command) {
  auto listed = [](std::span<const std::string_view> list, std::string_view s) {
    return std::find(list.begin(), list.end(), s) != list.end();
  };
  std::vector<CommandOption> out;
  for (size_t i = 0; i < args.size(); ++i) {
    CommandOption o{args[i], "", false};
    bool inline_value = false;
    if (o.flag.starts_with("--")) {
      const size_t eq = o.flag.find('=');
      if (eq != std::string::npos) {
        o.value = o.flag.substr(eq + 1);
        o.flag.resize(eq);
        inline_value = true;
      }
    }
    const char* f = o.flag.c_str();
    if (listed(switches, o.flag)) {
      SPAATTN_CHECK_ARG(!inline_value, f, "takes no value, got '", o.value, "'");
      o.is_switch = true;
    } else {
      SPAATTN_CHECK_ARG(listed(value_flags, o.flag), f, "unknown option (see spaattn ", command,
                        " --help)");
      if (!inline_value) {
        SPAATTN_CHECK_ARG(i + 1 < args.size(), f, "expected a value");
        o.value = args[++i];
      }
    }
    out.push_back(std::move(o));
  }
  return out;
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
