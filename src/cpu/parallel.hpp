// A small fork-join helper for the CPU reference: splits [0, n) over the hardware threads.
#pragma once
#include <algorithm>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace spaattn::cpu {

// Number of worker threads (hardware concurrency, at least 1; SPAATTN_NUM_THREADS overrides).
int num_threads();

// Calls fn(i) for every i in [0, n), spread over num_threads() threads in contiguous chunks of
// at least `grain` items. The first exception thrown by fn is rethrown after all threads join.
template <class Fn>
void parallel_for(int64_t n, Fn&& fn, int64_t grain = 1) {
  if (n <= 0) return;
  const int64_t max_workers = (n + grain - 1) / grain;
  const int workers = static_cast<int>(std::min<int64_t>(num_threads(), max_workers));
  if (workers <= 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::exception_ptr error;
  std::mutex error_mutex;
  auto run = [&](int64_t begin, int64_t end) {
    try {
      for (int64_t i = begin; i < end; ++i) fn(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(workers - 1);
  const int64_t chunk = (n + workers - 1) / workers;
  for (int w = 1; w < workers; ++w) {
    const int64_t begin = w * chunk, end = std::min(n, begin + chunk);
    if (begin < end) threads.emplace_back(run, begin, end);
  }
  run(0, std::min(n, chunk));
  for (auto& t : threads) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace spaattn::cpu
