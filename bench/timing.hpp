// The one timing helper of the benchmarks and of `spaattn bench` (tools/bench_device.cu), built
// with inputs.cu as the library spaattn_bench_support: warm-up calls, then CUDA events around
// each timed call on the given stream, and the median. The timed calls are queued back to back (one
// synchronisation at the end), so each event pair measures the GPU time of its call and not
// the host work of enqueueing it (argument checks), which overlaps the previous call.
#pragma once
#include <cuda_runtime.h>

#include <functional>
#include <stdexcept>
#include <string>

namespace spaattn::bench {

inline void cuda_ok(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

// One device allocation for the benchmarks' inputs and outputs (at least one byte).
struct DeviceMem {
  void* p = nullptr;
  explicit DeviceMem(size_t bytes) { cuda_ok(cudaMalloc(&p, bytes > 0 ? bytes : 1), "cudaMalloc"); }
  ~DeviceMem() { cudaFree(p); }
  DeviceMem(const DeviceMem&) = delete;
  DeviceMem& operator=(const DeviceMem&) = delete;
};

// Reads argv[1..] as "--flag value" pairs: set(flag, value) stores one, or returns false for a
// flag it does not know ("unknown argument"); a flag without a value is an error.
inline void parse_flags(int argc, char** argv,
                        const std::function<bool(const std::string&, const std::string&)>& set) {
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) throw std::runtime_error(flag + ": expected a value");
    if (!set(flag, argv[++i])) throw std::runtime_error("unknown argument " + flag);
  }
}

struct Timing {
  double median_ms = 0, min_ms = 0, max_ms = 0;
  int calls = 0;
};

// Runs fn(stream) untimed for at least `warmup` calls and `warmup_ms` (clocks settle), then
// `iters` (>= 10) times, each between two events.
Timing time_calls(const std::function<void(cudaStream_t)>& fn, cudaStream_t stream, int warmup = 3,
                  int iters = 10, double warmup_ms = 300);

}  // namespace spaattn::bench
