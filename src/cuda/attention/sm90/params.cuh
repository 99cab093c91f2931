// Parameters and shape traits of the sm90 (Hopper) kernel family: the shared FwdParams plus the
// tensor maps through which the copy engine reads K and V.
#pragma once
#include <cuda.h>

#include "cuda/attention/params.cuh"

namespace spaattn::cuda_detail::sm90 {

struct Params {
  FwdParams base;
  // K and V as 4-D tensors (d, S, H, b), boxes of 64 columns x B rows, 128-byte swizzle.
  CUtensorMap k_map, v_map;
};

// A persistent CTA computes query blocks of B rows one after the other: a producer warpgroup
// (warp 0 issues the K / V copies, warps 1-3 load Q) and B / 64 consumer warpgroups of 64 query
// rows each. A key tile is one key block (B keys); K and V tiles have their own full barriers so
// that S = Q K^T can start before V has landed. Q has one buffer: the loaders fill it for the
// next query block once every consumer thread has taken the current one's Q rows into registers
// (short items at d = 128, B = 128) or seen its last S = Q K^T complete (the others). A stage
// is released one key block late (a consumer waits for O += P V of block n together with
// S = Q K^T of block n + 1), so B = 128 keeps three stages; B = 64, two CTAs to an SM, has
// shared memory for two.
template <int D, int B>
struct Traits {
  static constexpr int kConsumers = B / 64;
  static constexpr int kThreads = 128 * (kConsumers + 1);
  static constexpr int kStages = B == 128 ? 3 : 2;
  static constexpr int kChunks = D / 64;           // 64-column swizzle chunks per row
  static constexpr int kQBytes = B * D * 2;        // Q tile
  static constexpr int kTileBytes = B * D * 2;     // one K or one V tile
  static constexpr int kChunkBytes = B * 128;      // one 64-column chunk of a Q / K / V tile
  static constexpr int kBarriers = 2 + 3 * kStages;  // Q full / empty; K full, V full, empty
  // Where S = Q K^T reads Q from (sm90/kernel.cuh consume): at d = 128, B = 128 an item with
  // fewer CSR entries than kQRegsBelow takes Q into registers, a longer one reads the Q tile;
  // the other shapes always read the Q tile (0). Measured at S = 76,800, H = 40 on H200s
  // (bench/results/2026-12-01-h200-q-registers.md).
  static constexpr int kQRegsBelow = D == 128 && B == 128 ? 96 : 0;
  // Tables of the query rows' sequence indices, one per item in use: when an item's epilogue is
  // carried into the next item (Q in registers, sm90/kernel.cuh consume), the loaders may fill
  // the next-but-one item's table before it runs.
  static constexpr int kRowTables = kQRegsBelow > 0 ? 3 : 2;
  // Dynamic shared memory, all of the CTA's: up to 1 KB to align the tiles (128-byte swizzle),
  // Q, the K / V stages, the barriers, the tables of the query rows' sequence indices and the
  // walks' period (kernel.cuh mean_row_length). Not in static shared memory: with 4 static
  // bytes next to this, the d = 128, B = 128 kernel failed to launch on an H200 (the opt-in to
  // this much dynamic shared memory was refused as an invalid argument).
  static constexpr int kSmemBytes =
      1024 + kQBytes + 2 * kStages * kTileBytes + 8 * kBarriers + kRowTables * B * 4 + 16;
  // B = 128: one CTA per SM, 384 threads; B = 64: two CTAs of 256 threads. The producer gives
  // registers back to the consumers (setmaxnreg), within the SM's 64K.
  static constexpr int kMinBlocks = B == 128 ? 1 : 2;
  static constexpr int kProducerRegs = 40;
  static constexpr int kConsumerRegs = B == 128 ? 232 : 216;
  // An SM has 228 KB of shared memory and keeps 1 KB of it per CTA (227 KB for one CTA).
  static_assert(kSmemBytes <= 228 * 1024 / kMinBlocks - 1024, "shared memory of an SM");
  static_assert(D == 64 || D == 128, "head dim 64 or 128");
  static_assert(B == 64 || B == 128, "block size 64 or 128");
};

}  // namespace spaattn::cuda_detail::sm90
