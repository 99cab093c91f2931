// Benchmark inputs: see inputs.hpp.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "inputs.hpp"
#include "timing.hpp"

namespace spaattn::bench {
namespace {

__device__ float hash_uniform(uint64_t i, uint64_t seed) {
  uint64_t x = i * 0x9E3779B97F4A7C15ull + seed;
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 31;
  return static_cast<float>(x >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

template <class T>
__global__ void fill_kernel(T* data, int64_t n, uint64_t seed) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float u = hash_uniform(static_cast<uint64_t>(i), seed);
    if constexpr (std::is_same_v<T, __half>)
      data[i] = __float2half_rn(u);
    else
      data[i] = __float2bfloat16_rn(u);
  }
}

}  // namespace

void fill_random(void* data, DType dtype, int64_t n, uint64_t seed) {
  if (dtype == DType::f16)
    fill_kernel<<<4096, 256>>>(static_cast<__half*>(data), n, seed);
  else
    fill_kernel<<<4096, 256>>>(static_cast<__nv_bfloat16*>(data), n, seed);
  cuda_ok(cudaGetLastError(), "fill_kernel");
}

std::vector<uint8_t> random_block_mask(int64_t heads, int64_t nb, double density, uint64_t seed,
                                       bool text_dense, int64_t nv) {
  std::vector<uint8_t> dense(static_cast<size_t>(heads * nb * nb), 0);
  const int64_t pool = text_dense ? nv : nb;  // blocks drawn at random
  const int64_t keep = std::max<int64_t>(1, std::llround(density * static_cast<double>(pool)));
  std::mt19937_64 rng(seed);
  std::vector<int32_t> ids(static_cast<size_t>(pool));
  for (int64_t r = 0; r < heads * nb; ++r) {
    uint8_t* row = dense.data() + r * nb;
    if (text_dense) {
      std::fill(row + nv, row + nb, 1);  // every text block
      if (r % nb >= nv) {                // text query row: dense
        std::fill(row, row + nv, 1);
        continue;
      }
    }
    std::iota(ids.begin(), ids.end(), 0);
    for (int64_t i = 0; i < keep; ++i) {  // partial Fisher-Yates: the first `keep` are a sample
      const int64_t j = i + static_cast<int64_t>(rng() % static_cast<uint64_t>(pool - i));
      std::swap(ids[i], ids[j]);
      row[ids[i]] = 1;
    }
  }
  return dense;
}

}  // namespace spaattn::bench
