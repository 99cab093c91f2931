// Thread count of the CPU reference.
#include "cpu/parallel.hpp"

#include <cstdlib>

namespace spaattn::cpu {

int num_threads() {
  static const int n = [] {
    if (const char* env = std::getenv("SPAATTN_NUM_THREADS")) {
      const int v = std::atoi(env);
      if (v >= 1) return v;
    }
    const unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : static_cast<int>(hw);
  }();
  return n;
}

}  // namespace spaattn::cpu
