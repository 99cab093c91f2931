// The spaattn command-line tool.
#include <cstdio>
#include <cstring>
#include <exception>

#include "bench.hpp"
#include "eval.hpp"
#include "spaattn/error.hpp"

namespace {
void usage(std::FILE* f) {
  std::fprintf(f,
               "usage: spaattn <command> [options]\n\n"
               "commands:\n"
               "  eval    compare dense, block-sparse, Rectified SpaAttn and Re-ttention on the\n"
               "          built-in video-like workload (spaattn eval --help for its options)\n"
               "  bench   time the GPU block-sparse kernel and a whole SparseAttention call on a\n"
               "          shape you give, against spaattn's dense call (CUDA builds with a GPU;\n"
               "          spaattn bench --help for its options)\n\n"
               "options:\n"
               "  --version   print the version of spaattn\n"
               "  --help      this text\n");
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (!std::strcmp(argv[1], "--version")) {
    std::printf("spaattn %s\n", SPAATTN_VERSION);
    return 0;
  }
  try {
    if (!std::strcmp(argv[1], "eval")) return spaattn::tools::run_eval(argc - 2, argv + 2);
    if (!std::strcmp(argv[1], "bench")) return spaattn::tools::run_bench(argc - 2, argv + 2);
    std::fprintf(stderr, "spaattn: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
  } catch (const spaattn::Error& e) {
    std::fprintf(stderr, "spaattn: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "spaattn: %s\n", e.what());
    return 1;
  }
}
