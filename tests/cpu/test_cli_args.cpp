// Strict parsing of the numeric flags of `spaattn eval` (tools/cli_args.hpp) and the overflow-
// checked size arithmetic behind it (tools/checked_math.hpp). The flags themselves, run through
// the built tool, are tested by the cli_* CTest cases in tests/CMakeLists.txt.
#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <limits>
#include <random>
#include <string>

#include "checked_math.hpp"
#include "cli_args.hpp"
#include "testing.hpp"

namespace spaattn::testing {
namespace {

using tools::parse_choice_flag;
using tools::parse_grid_flag;
using tools::parse_integer_flag;
using tools::parse_real_flag;

constexpr int kMaxInt = std::numeric_limits<int>::max();
constexpr uint64_t kMaxU64 = std::numeric_limits<uint64_t>::max();

TEST(CliArgs, IntegersAreParsedWholeAndInRange) {
  EXPECT_EQ(parse_integer_flag<int>("5", "--ref-period", 1, kMaxInt), 5);
  EXPECT_EQ(parse_integer_flag<int>("2147483647", "--ref-period", 1, kMaxInt), kMaxInt);
  EXPECT_EQ(parse_integer_flag<uint64_t>("18446744073709551615", "--seed", 0, kMaxU64), kMaxU64);
  EXPECT_EQ(parse_integer_flag<uint64_t>("0", "--seed", 0, kMaxU64), 0u);
  EXPECT_EQ(parse_integer_flag<int64_t>("-3", "--x", -5, 5), -3);

  const std::string ref_range = "expected an integer in [1, 2147483647], got ";
  for (const char* bad : {"1e10", "2147483648", "0", "-1", "2.0", "2.5", "", " 5", "5 ", "+5",
                          "0x10", "5abc", "nan", "inf", "99999999999999999999999"})
    expect_error([&] { parse_integer_flag<int>(bad, "--ref-period", 1, kMaxInt); },
                 "--ref-period", ref_range + "'" + bad + "'");
  const std::string seed_range = "expected an integer in [0, 18446744073709551615], got ";
  for (const char* bad : {"1e300", "18446744073709551616", "-1", "-0", "2026.5", "1e3"})
    expect_error([&] { parse_integer_flag<uint64_t>(bad, "--seed", 0, kMaxU64); }, "--seed",
                 seed_range + "'" + bad + "'");
}

TEST(CliArgs, RealsAreFiniteAndInRange) {
  EXPECT_EQ(parse_real_flag("0.3", "--p", 0.0, 1.0), 0.3);
  EXPECT_EQ(parse_real_flag("1", "--p", 0.0, 1.0), 1.0);
  EXPECT_EQ(parse_real_flag("0", "--sparsity", 0.0, 1.0, true), 0.0);
  EXPECT_EQ(parse_real_flag("9.5e-1", "--sparsity", 0.0, 1.0, true), 0.95);
  for (const char* bad : {"nan", "NaN", "inf", "-inf", "1e400", "1.5", "-0.1", "", "0.5x", " 0.5",
                          "+0.5", "0x1p-1", "0.5,"})
    expect_error([&] { parse_real_flag(bad, "--p", 0.0, 1.0); }, "--p",
                 std::string("expected a number in [0, 1], got '") + bad + "'");
  expect_error([] { parse_real_flag("1", "--sparsity", 0.0, 1.0, true); }, "--sparsity",
               "expected a number in [0, 1), got '1'");
}

TEST(CliArgs, ChoicesAndGrids) {
  EXPECT_EQ(parse_choice_flag("64", "--block", {64, 128}), 64);
  EXPECT_EQ(parse_choice_flag("128", "--dim", {64, 128}), 128);
  for (const char* bad : {"96", "64.0", "6.4e1", "4294967360", "-64", ""})
    expect_error([&] { parse_choice_flag(bad, "--block", {64, 128}); }, "--block",
                 std::string("expected 64 or 128, got '") + bad + "'");

  const Grid g = parse_grid_flag("8x16x24", "--grid");
  EXPECT_EQ(g.t, 8);
  EXPECT_EQ(g.h, 16);
  EXPECT_EQ(g.w, 24);
  EXPECT_EQ(parse_grid_flag("1x1x2147483647", "--grid").w, 2147483647);
  for (const char* bad : {"8x16", "8x16x24x2", "8x16x24x", "8x16x", "x8x16", "8x0x24",
                          "8x-1x24", "8x16x2.5", "8 x16x24", "8X16X24", "1e1x2x2",
                          "9223372036854775808x1x1", ""})
    expect_error([&] { parse_grid_flag(bad, "--grid"); }, "--grid", std::string("'") + bad + "'");
  expect_error([] { parse_grid_flag("65536x65536x2", "--grid"); }, "--grid",
               "expected at most 2147483647 video tokens, got '65536x65536x2'");
  expect_error([] { parse_grid_flag("8x16x24x2", "--grid"); }, "--grid",
               "expected TxHxW, got '8x16x24x2'");
}

// Against 128-bit arithmetic on seeded values around the overflow boundaries.
TEST(CheckedMath, MatchesWideArithmetic) {
  std::mt19937_64 rng(11);
  const int64_t max = std::numeric_limits<int64_t>::max();
  // Magnitudes of every bit length, so that products land on both sides of the limits.
  auto magnitude = [&] { return static_cast<int64_t>(rng() >> (1 + rng() % 63)); };
  auto draw = [&] {
    const int64_t v = magnitude();
    return rng() % 8 == 0 ? -v - 1 : v;
  };
  for (int i = 0; i < 20000; ++i) {
    const int64_t a = draw(), b = draw();
    const int64_t limit = rng() % 2 ? max : magnitude();
    const __int128 prod = static_cast<__int128>(a) * b, sum = static_cast<__int128>(a) + b;
    const bool mul_ok = a >= 0 && b >= 0 && a <= limit && b <= limit && prod <= limit;
    const bool add_ok = a >= 0 && b >= 0 && a <= limit && b <= limit && sum <= limit;
    const auto m = tools::checked_mul(a, b, limit);
    const auto s = tools::checked_add(a, b, limit);
    ASSERT_EQ(m.has_value(), mul_ok) << a << " * " << b << " within " << limit;
    ASSERT_EQ(s.has_value(), add_ok) << a << " + " << b << " within " << limit;
    if (m) {
      ASSERT_TRUE(*m == prod) << a << " * " << b;
    }
    if (s) {
      ASSERT_TRUE(*s == sum) << a << " + " << b;
    }
  }
  // A zero after an overflowing prefix does not hide the overflow.
  const std::array<int64_t, 3> wraps = {int64_t{1} << 62, 4, 0};
  EXPECT_FALSE(tools::checked_product<int64_t>(wraps).has_value());
  const std::array<int64_t, 3> zero = {0, int64_t{1} << 62, 4};
  EXPECT_EQ(tools::checked_product<int64_t>(zero), 0);
  const std::array<int64_t, 4> heads = {1, 6, (int64_t{1} << 58) + 1, 64};
  EXPECT_FALSE(tools::checked_product<int64_t>(heads).has_value());
  EXPECT_EQ(tools::checked_product<int64_t>(std::array<int64_t, 0>{}), 1);
}

}  // namespace
}  // namespace spaattn::testing
