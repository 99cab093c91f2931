// The GPU part of `spaattn bench` in a build without CUDA: the options were checked; there is
// nothing to time.
#include <cstdio>

#include "bench.hpp"

namespace spaattn::tools {

int run_bench_device(const BenchOptions&, OutputFile&) {
  std::fprintf(stderr,
               "spaattn bench: this build has no CUDA kernels (configured without nvcc or with "
               "-DSPAATTN_CUDA=OFF); build spaattn with CUDA to time them on a GPU\n");
  return 1;
}

}  // namespace spaattn::tools
