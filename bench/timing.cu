// time_calls(): see timing.hpp.
#include <algorithm>
#include <vector>

#include "timing.hpp"

namespace spaattn::bench {

Timing time_calls(const std::function<void(cudaStream_t)>& fn, cudaStream_t stream, int warmup,
                  int iters, double warmup_ms) {
  iters = std::max(iters, 10);
  std::vector<cudaEvent_t> ev(2 * static_cast<size_t>(iters));
  for (auto& e : ev) cuda_ok(cudaEventCreate(&e), "cudaEventCreate");
  // Warm-up: at least `warmup` calls and `warmup_ms` of GPU time.
  float spent = 0;
  for (int done = 0; done < warmup || spent < warmup_ms; ++done) {
    cuda_ok(cudaEventRecord(ev[0], stream), "cudaEventRecord");
    fn(stream);
    cuda_ok(cudaEventRecord(ev[1], stream), "cudaEventRecord");
    cuda_ok(cudaEventSynchronize(ev[1]), "warm-up");
    float t = 0;
    cuda_ok(cudaEventElapsedTime(&t, ev[0], ev[1]), "cudaEventElapsedTime");
    spent += t;
  }
  for (int i = 0; i < iters; ++i) {
    cuda_ok(cudaEventRecord(ev[2 * i], stream), "cudaEventRecord");
    fn(stream);
    cuda_ok(cudaEventRecord(ev[2 * i + 1], stream), "cudaEventRecord");
  }
  cuda_ok(cudaStreamSynchronize(stream), "timed calls");
  std::vector<double> ms;
  for (int i = 0; i < iters; ++i) {
    float t = 0;
    cuda_ok(cudaEventElapsedTime(&t, ev[2 * i], ev[2 * i + 1]), "cudaEventElapsedTime");
    ms.push_back(t);
  }
  for (auto& e : ev) cuda_ok(cudaEventDestroy(e), "cudaEventDestroy");
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
