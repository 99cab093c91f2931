// Tile shapes, shared-memory layout and the global <-> shared copies of the portable kernel.
//
// Shared memory holds Q (B x d) once and K, V (64 x d each) in two stages. Rows are d 16-bit
// values = d/8 chunks of 16 bytes; chunk c of row r is stored at c ^ (r % 8), so the eight rows
// an ldmatrix phase reads (same logical chunk) fall into eight different bank groups and the
// 16-byte cp.async writes stay whole.
#pragma once
#include <cstdint>

#include "cuda/attention/ptx.cuh"

namespace spaattn::cuda_detail {

template <int D, int B>
struct FwdTraits {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  // 64 keys per tile: a 128 x 64 fp32 score tile is 64 registers per thread next to the
  // 128-register output accumulator (d = 128), which still fits 255 without spills.
  static constexpr int kTileN = 64;
  // Each warp owns B / 4 query rows (32 for B = 128): every K / V fragment read from shared
  // memory feeds two m16 tiles, which halves shared-memory traffic per mma compared to 16 rows.
  static constexpr int kMTiles = B / (16 * kWarps);
  // Keys per softmax step (sm80/step.cuh): 32 keeps d = 128 under 255 registers without spills;
  // d = 64 has registers to spare and halves its per-key softmax overhead with 64.
  static constexpr int kStepN = D == 128 ? 32 : 64;
  static constexpr int kDTiles = D / 8;  // output n8 tiles
  static constexpr int kChunks = D / 8;  // 16-byte chunks per row
  static constexpr int kQBytes = B * D * 2;
  static constexpr int kKVBytes = kTileN * D * 2;
  static constexpr int kSmemBytes = kQBytes + 4 * kKVBytes;  // Q + 2 stages x (K + V)
  // CTAs per SM the register budget must allow: 2 (d = 128 needs its 255 registers); d = 64 with
  // B = 64 (40 KiB of shared memory) fits 4 if it keeps to 128 registers, which the row tables of
  // the token order would otherwise push to 129 (3 CTAs).
  static constexpr int kMinBlocks = D == 64 && B == 64 ? 4 : 2;
  static_assert(kMTiles >= 1, "block size must be at least 64");
};

// Per-lane ldmatrix rows and chunks of the mma fragments: A (Q) and trans-B (V) fragments take
// rows lane % 16 and chunk lane / 16; B (K) fragments take rows (lane % 8) + 8 * (lane / 16),
// chunk (lane / 8) % 2. The swizzle XOR with (row % 8) = lane % 8 is folded into one per-lane
// constant each (xa, xb); a_row, b_row are the rows' byte offsets in a tile of D columns.
template <int D>
struct LaneRows {
  uint32_t a_row, b_row;
  int xa, xb;
  __device__ __forceinline__ explicit LaneRows(int lane) {
    const int r7 = lane & 7;
    a_row = static_cast<uint32_t>((r7 + ((lane >> 3) & 1) * 8) * D * 2);
    b_row = static_cast<uint32_t>((r7 + (lane >> 4) * 8) * D * 2);
    xa = (lane >> 4) ^ r7;
    xb = ((lane >> 3) & 1) ^ r7;
  }
};

// Byte offset of (row, chunk) in a swizzled tile of D 16-bit columns.
template <int D>
__device__ __forceinline__ uint32_t swizzled(int row, int chunk) {
  return static_cast<uint32_t>(row * D * 2 + ((chunk ^ (row & 7)) << 4));
}

// Copies ROWS rows starting at `src` (row stride in elements) into a swizzled tile; rows at or
// beyond `valid` are zero-filled without reading global memory.
template <class T, int ROWS, int D, int kThreads>
__device__ __forceinline__ void load_rows(uint32_t dst, const T* src, int64_t row_stride,
                                          int valid) {
  constexpr int kChunks = D / 8;
  constexpr int kRowsPerPass = kThreads / kChunks;
  static_assert(ROWS % kRowsPerPass == 0, "tile rows must be a multiple of a pass");
  const int tid = fresh_tid();
  const int chunk = tid % kChunks;
  const int row0 = tid / kChunks;
  const T* p = src + row0 * row_stride + chunk * 8;
#pragma unroll
  for (int pass = 0; pass < ROWS / kRowsPerPass; ++pass) {
    const int row = row0 + pass * kRowsPerPass;
    const bool ok = row < valid;
    cp_async_16(dst + swizzled<D>(row, chunk), ok ? static_cast<const void*>(p) : src, ok ? 16 : 0);
    p += kRowsPerPass * row_stride;
  }
}

// Copies ROWS rows into a swizzled tile like load_rows, row r being base + rows[r] * row_stride
// (rows: a shared-memory table, read only for rows below `valid`). Rows are moved one 16-byte
// chunk a thread anyway, so the indirection costs one shared load per row and pass.
template <class T, int ROWS, int D, int kThreads>
__device__ __forceinline__ void load_rows_indexed(uint32_t dst, const T* base, int64_t row_stride,
                                                  const int32_t* rows, int row_offset, int valid) {
  constexpr int kChunks = D / 8;
  constexpr int kRowsPerPass = kThreads / kChunks;
  static_assert(ROWS % kRowsPerPass == 0, "tile rows must be a multiple of a pass");
  const int tid = fresh_tid();
  const int chunk = tid % kChunks;
  const int row0 = tid / kChunks;
#pragma unroll
  for (int pass = 0; pass < ROWS / kRowsPerPass; ++pass) {
    const int row = row0 + pass * kRowsPerPass;
    const bool ok = row < valid;
    const T* src = base + chunk * 8;
    if (ok) src += static_cast<int64_t>(row_offset + rows[row]) * row_stride;
    cp_async_16(dst + swizzled<D>(row, chunk), src, ok ? 16 : 0);
  }
}

// Row `begin` of (batch b, head h) of a [b, S, H, d] tensor.
template <class T>
__device__ __forceinline__ const T* head_rows(const void* base, const int64_t (&stride)[3], int b,
                                              int h, int begin) {
  return static_cast<const T*>(base) + b * stride[0] + h * stride[2] + begin * stride[1];
}

// Stores rows [0, count) of a swizzled shared tile (`rows` rows starting at `first`) to global
// memory with 16-byte stores, row r going to dst + seq_rows[r] * row_stride (dst: sequence row 0
// of the head); a warp covers two 256-byte rows per instruction for d = 128.
template <class T, int D>
__device__ __forceinline__ void store_rows(T* dst, int64_t row_stride, const int32_t* seq_rows,
                                           uint32_t smem_tile, int first, int rows, int count,
                                           int lane) {
  constexpr int kChunks = D / 8;
  for (int c = lane; c < rows * kChunks; c += 32) {
    const int row = first + c / kChunks;
    const int chunk = c % kChunks;
    if (row >= count) break;  // rows grow with c: every later chunk is past the block too
    uint4 v;
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "r"(smem_tile + swizzled<D>(row, chunk))
                 : "memory");
    *reinterpret_cast<uint4*>(dst + seq_rows[row] * row_stride + chunk * 8) = v;
  }
}

}  // namespace spaattn::cuda_detail
