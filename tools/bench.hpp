// `spaattn bench`: times the GPU block-sparse kernel and a whole SparseAttention call on a shape
// the user gives (docs/benchmarks.md, 'spaattn bench').
#pragma once

#include "bench_options.hpp"

namespace spaattn::tools {

// The command: parses and checks the options (a bad one throws spaattn::Error naming it), then
// runs the GPU part.
int run_bench(int argc, char** argv);

// The GPU part, on checked options: bench_device.cu in a CUDA build; in a build without CUDA it
// reports that and returns 1. Without a CUDA device it reports that and returns 1.
int run_bench_device(const BenchOptions& o, OutputFile& json);

}  // namespace spaattn::tools
