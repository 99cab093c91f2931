// time_calls(): see timing.hpp.
#include <algorithm>
#include <vector>

#include "timing.hpp"

namespace spaattn::bench {

Timing time_calls(const std::function<void(cudaStream_t)>& fn, cudaStream_t stream, int warmup,
                  int iters) {
  iters = std::max(iters, 10);
  for (int i = 0; i < warmup; ++i) fn(stream);
  cuda_ok(cudaStreamSynchronize(stream), "warm-up");
  cudaEvent_t start, stop;
  cuda_ok(cudaEventCreate(&start), "cudaEventCreate");
  cuda_ok(cudaEventCreate(&stop), "cudaEventCreate");
  std::vector<double> ms;
  for (int i = 0; i < iters; ++i) {
    cuda_ok(cudaEventRecord(start, stream), "cudaEventRecord");
    fn(stream);
    cuda_ok(cudaEventRecord(stop, stream), "cudaEventRecord");
    cuda_ok(cudaEventSynchronize(stop), "timed call");
    float t = 0;
    cuda_ok(cudaEventElapsedTime(&t, start, stop), "cudaEventElapsedTime");
    ms.push_back(t);
  }
  cuda_ok(cudaEventDestroy(start), "cudaEventDestroy");
  cuda_ok(cudaEventDestroy(stop), "cudaEventDestroy");
  std::sort(ms.begin(), ms.end());
  const size_t n = ms.size();
  Timing r;
  r.median_ms = n % 2 ? ms[n / 2] : 0.5 * (ms[n / 2 - 1] + ms[n / 2]);
  r.min_ms = ms.front();
  r.max_ms = ms.back();
  r.calls = static_cast<int>(n);
  return r;
}

}  // namespace spaattn::bench
