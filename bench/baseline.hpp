// Reads the JSON written by bench/sdpa_baseline.py: PyTorch SDPA dense timings per shape and
// back-end ("cudnn", "flash"), measured in the same run as the kernel.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace spaattn::bench {

struct BaselineEntry {
  int64_t seq = 0, heads = 0, dim = 0;
  std::string backend;
  double ms = 0;
};

// Empty when path is empty; throws std::runtime_error if the file cannot be read.
std::vector<BaselineEntry> read_baseline(const std::string& path);

// Median ms of `backend` for the shape, or 0 when not measured.
double baseline_ms(const std::vector<BaselineEntry>& b, int64_t seq, int64_t heads, int64_t dim,
                   const std::string& backend);

}  // namespace spaattn::bench
