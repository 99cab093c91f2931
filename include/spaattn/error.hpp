// spaattn::Error and the argument checks every public call runs before doing any work.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace spaattn {

// Thrown for invalid arguments ("q: expected head_dim 64 or 128, got 96") and for failures of
// the runtime (CUDA errors). The message always names the argument or the failing call.
class Error : public std::runtime_error {
 public:
  enum class Kind { invalid_argument, runtime };
  Error(Kind kind, const std::string& what) : std::runtime_error(what), kind_(kind) {}
  Kind kind() const noexcept { return kind_; }

 private:
  Kind kind_;
};

namespace detail {
template <class... Ts>
std::string concat(const Ts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}
}  // namespace detail

// Build "arg: expected X, got Y" style messages: SPAATTN_CHECK_ARG(cond, "q", "expected ...", v).
#define SPAATTN_CHECK_ARG(cond, arg, ...)                                                   \
  do {                                                                                      \
    if (!(cond))                                                                            \
      throw ::spaattn::Error(::spaattn::Error::Kind::invalid_argument,                      \
                             ::spaattn::detail::concat(arg, ": ", __VA_ARGS__));            \
  } while (0)

}  // namespace spaattn
