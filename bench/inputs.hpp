// Benchmark inputs: seeded random device tensors (never zeros) and random block masks with a
// fixed number of key blocks per row, as the published kernel's benchmark draws them. Shared by
// the benchmarks and `spaattn bench` (library spaattn_bench_support, bench/CMakeLists.txt).
#pragma once
#include <cstdint>
#include <vector>

#include "spaattn/layout.hpp"

namespace spaattn::bench {

// Fills n 16-bit values (bf16 or f16) with uniform values in [-1, 1).
void fill_random(void* data, DType dtype, int64_t n, uint64_t seed);

// Dense [1, heads, nb, nb] mask: every row keeps max(1, round(density * nb)) random blocks.
// With text_dense, shaped like Rectified SpaAttn's selection instead: text query rows (blocks
// nv and up) keep every block, video rows keep round(density * nv) random video blocks plus
// every text block.
std::vector<uint8_t> random_block_mask(int64_t heads, int64_t nb, double density, uint64_t seed,
                                       bool text_dense = false, int64_t nv = 0);

}  // namespace spaattn::bench
