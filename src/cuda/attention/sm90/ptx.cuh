// Thin wrappers over the Hopper PTX the sm90 kernel family is built from: mbarriers, the tensor
// copy engine (TMA, cp.async.bulk.tensor), warpgroup matrix products (wgmma, sm_90a) with their
// shared-memory descriptors, named barriers and register reallocation (setmaxnreg).
//
// Shared-memory tiles use the 128-byte swizzle of the copy engine: a tile of R rows and 64 16-bit
// columns (128 bytes a row) stores 16-byte unit u of row r at r * 128 + 16 * (u ^ (r % 8)); a
// wider row is split into such 64-column chunks, each R * 128 bytes, one after the other. Tiles
// start on 1024-byte boundaries (the swizzle repeats every 8 rows).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

namespace spaattn::cuda_detail::sm90 {

// ---- mbarriers ---------------------------------------------------------------------------------

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// Makes the initialised barriers visible to the copy engine (the async proxy).
__device__ __forceinline__ void fence_barrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Arrives and announces `bytes` that copies will complete on this barrier in this phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}
// Waits until the phase of the given parity has completed. A fresh barrier is in phase 0, so a
// wait for parity 1 returns at once (how a producer starts on empty buffers).
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}

// ---- copies ------------------------------------------------------------------------------------

// One box of a 4-D tensor map (coordinates innermost first) into shared memory, completing
// on `bar`. Rows outside the tensor are zero-filled (and still counted in the bytes).
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const void* tensor_map, uint32_t bar,
                                            int c0, int c1, int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(tensor_map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
      : "memory");
}
__device__ __forceinline__ void tma_load_3d(uint32_t dst, const void* tensor_map, uint32_t bar,
                                            int c0, int c1, int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(tensor_map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
      : "memory");
}
__device__ __forceinline__ void prefetch_tensor_map(const void* tensor_map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(tensor_map))
               : "memory");
}
// Orders this thread's ordinary shared-memory writes (cp.async included) before later reads by
// the async proxy (wgmma operands, the copy engine).
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_all;\n" ::: "memory");
}

// ---- warpgroups --------------------------------------------------------------------------------

template <int N>
__device__ __forceinline__ void reg_dealloc() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void reg_alloc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// ---- wgmma -------------------------------------------------------------------------------------

// Shared-memory matrix descriptor of a 128-byte-swizzled operand. K-major (rows of 64 elements
// along the reduction): consecutive 8-row groups `sbo` bytes apart, lbo unused. MN-major
// (transposed B: rows along the reduction, 64 output columns each): `lbo` bytes from one
// 64-column chunk to the next, `sbo` bytes from one group of 8 reduction rows to the next.
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) |
         (static_cast<uint64_t>(lbo >> 4) << 16) | (static_cast<uint64_t>(sbo >> 4) << 32) |
         (1ull << 62);  // layout type 1: 128-byte swizzle
}

// A descriptor moved `bytes` (a multiple of 16) further into shared memory: one add instead of
// building it again. The start address field holds bits 4-17 of the address, and shared
// addresses stay below 2^18, so the sum never carries out of the field.
__device__ __forceinline__ uint64_t desc_add(uint64_t desc, uint32_t bytes) {
  return desc + (bytes >> 4);
}

// The same for a K-major operand in the 64-byte swizzle (rows of 64 bytes, 8-row groups 512
// bytes apart), as the copy engine writes it with CU_TENSOR_MAP_SWIZZLE_64B.
__device__ __forceinline__ uint64_t smem_desc_sw64(uint32_t addr) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>(1) << 16) |
         (static_cast<uint64_t>(512 >> 4) << 32) | (2ull << 62);  // layout type 2: 64-byte
}

__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving accesses of accumulator registers across the asynchronous
// matrix product (wgmma_fence / wgmma_wait are not tied to those registers).
template <int NT>
__device__ __forceinline__ void fence_operands(float (&d)[NT][4]) {
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+f"(d[t][j])::"memory");
}

template <int NT>
__device__ __forceinline__ void fence_operands(int32_t (&d)[NT][4]) {
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(d[t][j])::"memory");
}

template <int N>
__device__ __forceinline__ void fence_operands(uint32_t (&a)[N][4]) {
#pragma unroll
  for (int t = 0; t < N; ++t)
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(a[t][j])::"memory");
}

#define SPAATTN_ACC8(d, t) "+f"(d[t][0]), "+f"(d[t][1]), "+f"(d[t][2]), "+f"(d[t][3])
#define SPAATTN_ACC_N64(d)                                                                  \
  SPAATTN_ACC8(d, 0), SPAATTN_ACC8(d, 1), SPAATTN_ACC8(d, 2), SPAATTN_ACC8(d, 3),           \
      SPAATTN_ACC8(d, 4), SPAATTN_ACC8(d, 5), SPAATTN_ACC8(d, 6), SPAATTN_ACC8(d, 7)
#define SPAATTN_ACC_N128(d)                                                                 \
  SPAATTN_ACC_N64(d), SPAATTN_ACC8(d, 8), SPAATTN_ACC8(d, 9), SPAATTN_ACC8(d, 10),          \
      SPAATTN_ACC8(d, 11), SPAATTN_ACC8(d, 12), SPAATTN_ACC8(d, 13), SPAATTN_ACC8(d, 14),   \
      SPAATTN_ACC8(d, 15)
#define SPAATTN_IACC8(d, t) "+r"(d[t][0]), "+r"(d[t][1]), "+r"(d[t][2]), "+r"(d[t][3])
#define SPAATTN_IACC_N128(d)                                                                \
  SPAATTN_IACC8(d, 0), SPAATTN_IACC8(d, 1), SPAATTN_IACC8(d, 2), SPAATTN_IACC8(d, 3),       \
      SPAATTN_IACC8(d, 4), SPAATTN_IACC8(d, 5), SPAATTN_IACC8(d, 6), SPAATTN_IACC8(d, 7),   \
      SPAATTN_IACC8(d, 8), SPAATTN_IACC8(d, 9), SPAATTN_IACC8(d, 10), SPAATTN_IACC8(d, 11), \
      SPAATTN_IACC8(d, 12), SPAATTN_IACC8(d, 13), SPAATTN_IACC8(d, 14), SPAATTN_IACC8(d, 15)
#define SPAATTN_REGS32                                                                      \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, "  \
  "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define SPAATTN_REGS64                                                                      \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, "  \
  "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, "   \
  "%36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, "   \
  "%53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

// D[64 x N] (+)= A[64 x K] B[K x N] for one warpgroup, K = 16 for bf16 / f16 and 32 for FP8
// e4m3 (__nv_fp8_e4m3), fp32 accumulators in the mma fragment layout (d[t][0..1]: row lane / 4
// of the warp's 16, columns 8 t + 2 (lane % 4) + {0, 1}; d[t][2..3]: the row 8 below).
// ss: A and B from shared memory, both K-major. rs: A from registers, four 32-bit registers per
// thread, B from shared memory. 16-bit: A is the mma.sync m16n8k16 A fragment of the warp's 16
// rows and B is MN-major for rs, K-major for rs_kb. e4m3 (no transposed form for 8-bit
// types): B is K-major and A holds four values per register, {row lane / 4, row lane / 4 + 8}
// x {columns 4 (lane % 4) .. + 3, the same + 16}, in the order (row, columns) = (0, lo),
// (8, lo), (0, hi), (8, hi).
// accumulate = 0 overwrites D.
template <class T, int N>
struct Wgmma;

// One register-A form (NAME) of Wgmma<CPP_T, N>, TAIL the immediates after the predicate.
#define SPAATTN_WGMMA_RS(NAME, PTX_T, K, N, REGS, ACC, RS_A, RS_B, RS_S, TAIL)                 \
  static __device__ __forceinline__ void NAME(float (&d)[N / 8][4], const uint32_t (&a)[4],    \
                                              uint64_t b, int accumulate) {                    \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" RS_S ", 0;\n"                           \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k" #K ".f32." PTX_T "." PTX_T " "     \
                 REGS ", {%" RS_A "}, %" RS_B ", p" TAIL ";\n}\n"                              \
                 : ACC(d)                                                                      \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate));       \
  }
#define SPAATTN_WGMMA(CPP_T, PTX_T, K, N, REGS, ACC, SS_A, SS_B, SS_S, RS_A, RS_B, RS_S,       \
                      SS_TAIL, RS_TAIL, RSK_TAIL)                                              \
  template <>                                                                                  \
  struct Wgmma<CPP_T, N> {                                                                     \
    static __device__ __forceinline__ void ss(float (&d)[N / 8][4], uint64_t a, uint64_t b,    \
                                              int accumulate) {                                \
      asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" SS_S ", 0;\n"                         \
                   "wgmma.mma_async.sync.aligned.m64n" #N "k" #K ".f32." PTX_T "." PTX_T " "   \
                   REGS ", %" SS_A ", %" SS_B ", p" SS_TAIL ";\n}\n"                           \
                   : ACC(d)                                                                    \
                   : "l"(a), "l"(b), "r"(accumulate));                                         \
    }                                                                                          \
    SPAATTN_WGMMA_RS(rs, PTX_T, K, N, REGS, ACC, RS_A, RS_B, RS_S, RS_TAIL)                    \
    SPAATTN_WGMMA_RS(rs_kb, PTX_T, K, N, REGS, ACC, RS_A, RS_B, RS_S, RSK_TAIL)                \
  };
// Operand lists per N, and the immediates after the predicate: scales of A and B (1), and for
// 16-bit types the transposition of A (0) and B (0 for ss and rs_kb, 1 for rs: V is MN-major).
#define SPAATTN_WGMMA_N64 SPAATTN_REGS32, SPAATTN_ACC_N64, "32", "33", "34", "32, %33, %34, %35", \
                          "36", "37"
#define SPAATTN_WGMMA_N128 SPAATTN_REGS64, SPAATTN_ACC_N128, "64", "65", "66", \
                           "64, %65, %66, %67", "68", "69"
#define SPAATTN_WGMMA_CALL(...) SPAATTN_WGMMA(__VA_ARGS__)

SPAATTN_WGMMA_CALL(__nv_bfloat16, "bf16", 16, 64, SPAATTN_WGMMA_N64, ", 1, 1, 0, 0", ", 1, 1, 1",
                   ", 1, 1, 0")
SPAATTN_WGMMA_CALL(__half, "f16", 16, 64, SPAATTN_WGMMA_N64, ", 1, 1, 0, 0", ", 1, 1, 1",
                   ", 1, 1, 0")
SPAATTN_WGMMA_CALL(__nv_bfloat16, "bf16", 16, 128, SPAATTN_WGMMA_N128, ", 1, 1, 0, 0",
                   ", 1, 1, 1", ", 1, 1, 0")
SPAATTN_WGMMA_CALL(__half, "f16", 16, 128, SPAATTN_WGMMA_N128, ", 1, 1, 0, 0", ", 1, 1, 1",
                   ", 1, 1, 0")
SPAATTN_WGMMA_CALL(__nv_fp8_e4m3, "e4m3", 32, 64, SPAATTN_WGMMA_N64, ", 1, 1", ", 1, 1", ", 1, 1")
SPAATTN_WGMMA_CALL(__nv_fp8_e4m3, "e4m3", 32, 128, SPAATTN_WGMMA_N128, ", 1, 1", ", 1, 1",
                   ", 1, 1")

#undef SPAATTN_WGMMA_CALL
#undef SPAATTN_WGMMA_N128
#undef SPAATTN_WGMMA_N64
#undef SPAATTN_WGMMA
#undef SPAATTN_WGMMA_RS

// S[64 x 128] = A[64 x 32] B[32 x 128] on int8 operands, int32 accumulators (the fp32 layout),
// both from shared memory, K-major.
struct WgmmaS8 {
  static __device__ __forceinline__ void ss(int32_t (&d)[16][4], uint64_t a, uint64_t b,
                                            int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 " SPAATTN_REGS64
                 ", %64, %65, p;\n}\n"
                 : SPAATTN_IACC_N128(d)
                 : "l"(a), "l"(b), "r"(accumulate));
  }
};

// Four floats to four e4m3 bytes (round to nearest, saturating at +-448), a in the lowest byte.
__device__ __forceinline__ uint32_t pack_e4m3(float a, float b, float c, float d) {
  const uint32_t lo = __nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, __NV_E4M3);
  const uint32_t hi = __nv_cvt_float2_to_fp8x2(make_float2(c, d), __NV_SATFINITE, __NV_E4M3);
  return lo | (hi << 16);
}

#undef SPAATTN_REGS64
#undef SPAATTN_REGS32
#undef SPAATTN_ACC_N128
#undef SPAATTN_ACC_N64
#undef SPAATTN_ACC8
#undef SPAATTN_IACC_N128
#undef SPAATTN_IACC8

}  // namespace spaattn::cuda_detail::sm90
