// `spaattn bench`: the options first (bench_options.cpp), every one of them checked before the GPU
// part (bench_device.cu, or the message of a build without CUDA) is reached.
#include "bench.hpp"

#include <cstdio>
#include <string>
#include <vector>

namespace spaattn::tools {

int run_bench(int argc, char** argv) {
  const BenchOptions opt = parse_bench_args(std::vector<std::string>(argv, argv + argc));
  if (opt.help) {
    std::fputs(bench_help(), stdout);
    return 0;
  }
  if (opt.version) {
    std::printf("spaattn %s\n", SPAATTN_VERSION);
    return 0;
  }
  OutputFile json = check_bench_files(opt);
  return run_bench_device(opt, json);
}

}  // namespace spaattn::tools
