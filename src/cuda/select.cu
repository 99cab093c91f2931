// Selection of critical blocks (ALGORITHM.md 4.3 and 5) written directly as the attention
// kernel's CSR lists; the rules are those of cpu::select_blocks (src/cpu/select.cpp), reproduced
// exactly: the same P gives the same lists.
//
// select_rows: one CTA of 128 threads per CSR row; text query rows only record their count
// (every key block). For an ipar video row, sorting all NV + 1 entries would cost more than the
// whole rest of the stage, yet only a short prefix of the descending order matters: the entries
// up to where the cumulative sum passes p, and enough of them to hold k video blocks. So:
//  1. threshold search: the largest T (a float bit pattern with the low 16 bits zero, found bit by
//     bit in 15 block-wide count/sum reductions) such that the entries with P >= T number at least
//     k + 1 and sum (in any order) to at least p + 1e-4. Those entries are a prefix of the order.
//  2. they are sorted in shared memory by a bitonic sort on 64-bit keys (P's bits, then the
//     complement of the column index), descending: larger P first, equal P lower index first,
//     which is the CPU's tie-break (the text column, index NV, loses ties).
//  3. one thread adds the sorted values in fp32 in that order and counts cumsum <= p exactly as
//     the CPU loop does: keep = count + 1. Should the sum not pass p inside the candidates (the
//     margin makes that a rounding corner case), steps 2-3 are redone on the whole row.
//  4. the kept prefix has max(keep, m_k) entries, m_k being where the k-th video block falls
//     (k, or k + 1 when the text column ranks before it); its video blocks are marked.
// Band and local rows mark their static blocks; then the neighbour map (device CSR) and the
// first-frame square are added. The row's bitmask goes to `critical`, its count to row_counts.
// A CUB exclusive scan turns the counts into row offsets (row_counts[rows] = 0 gives the total),
// and write_cols, one warp per row, writes the sorted column lists: the marked video blocks in
// ascending order from the bitmask, then every text block; text query rows list every block.
#include <cub/device/device_scan.cuh>

#include <algorithm>

#include "check.cuh"
#include "spaattn/stages.hpp"
#include "stage_util.cuh"
#include "stages.cuh"

namespace spaattn::cuda::stages {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr float kSumMargin = 1e-4f;  // candidate sum beyond p that absorbs the order's rounding

__host__ __device__ int pow2_ceil(int n) {
  int x = 1;
  while (x < n) x *= 2;
  return x;
}

// Dynamic shared memory of select_rows: keys (ipar), values (ipar), the row's bitmask.
size_t select_smem_bytes(const Dims& d, Selector s) {
  const size_t n = s == Selector::ipar ? static_cast<size_t>(d.nv) + 1 : 0;
  const size_t keys = s == Selector::ipar ? pow2_ceil(static_cast<int>(n)) : 0;
  return keys * sizeof(uint64_t) + (n + 3) / 4 * 4 * sizeof(float) +
         static_cast<size_t>(d.words) * sizeof(uint32_t);
}

// Block-wide sum of (count, value), returned to every thread. Two parities of the scratch let
// consecutive calls run with a single barrier each.
struct Reducer {
  int counts[2][kWarps];
  float sums[2][kWarps];
};
__device__ void block_sum(Reducer& red, int parity, int& count, float& sum) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  count = __reduce_add_sync(0xffffffffu, count);
  sum = group_sum<32>(sum);
  if (lane == 0) {
    red.counts[parity][warp] = count;
    red.sums[parity][warp] = sum;
  }
  __syncthreads();
  count = 0;
  sum = 0.f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    count += red.counts[parity][w];
    sum += red.sums[parity][w];
  }
}

// Descending bitonic sort of keys[0 .. n2), n2 a power of two; ends with a barrier.
__device__ void bitonic_sort_desc(uint64_t* keys, int n2) {
  for (int size = 2; size <= n2; size *= 2)
    for (int stride = size / 2; stride > 0; stride /= 2) {
      for (int t = threadIdx.x; t < n2 / 2; t += kThreads) {
        const int lo = 2 * t - (t & (stride - 1)), hi = lo + stride;
        const uint64_t a = keys[lo], b = keys[hi];
        if ((a < b) == ((lo & size) == 0)) {
          keys[lo] = b;
          keys[hi] = a;
        }
      }
      __syncthreads();
    }
}

__device__ __forceinline__ float key_value(uint64_t key) {
  return __uint_as_float(static_cast<uint32_t>(key >> 32));
}
__device__ __forceinline__ int key_index(uint64_t key) {
  return static_cast<int>(~static_cast<uint32_t>(key));
}

// Marks crit(i) of IPAR in `crit` (shared bitmask) from row P (NV + 1 entries).
__device__ void ipar_row(const SelectParams& p, const float* P, uint64_t* keys, float* vals,
                         uint32_t* crit, Reducer& red) {
  __shared__ int s_count, s_keep, s_retry, s_text;
  const int nv = p.dims.nv, n = nv + 1, tid = threadIdx.x;
  for (int j = tid; j < n; j += kThreads) vals[j] = P[j];
  __syncthreads();

  // 1. The threshold: greedy on bits 30..16 keeps the largest T meeting both conditions.
  const int need = min(p.k + 1, n);
  const float target = p.p + kSumMargin;
  uint32_t T = 0;
  for (int bit = 30, parity = 0; bit >= 16; --bit, parity ^= 1) {
    const uint32_t cand = T | (1u << bit);
    int count = 0;
    float sum = 0.f;
    for (int j = tid; j < n; j += kThreads)
      if (__float_as_uint(vals[j]) >= cand) {
        ++count;
        sum += vals[j];
      }
    block_sum(red, parity, count, sum);
    if (count >= need && sum >= target) T = cand;
  }

  int c = 0;
  for (;;) {
    // 2. Candidates (P >= T) as keys, sorted descending.
    if (tid == 0) s_count = 0;
    __syncthreads();
    for (int j = tid; j < n; j += kThreads) {
      const uint32_t u = __float_as_uint(vals[j]);
      if (u >= T) keys[atomicAdd(&s_count, 1)] = (static_cast<uint64_t>(u) << 32) | ~static_cast<uint32_t>(j);
    }
    __syncthreads();
    c = s_count;
    const int n2 = pow2_ceil(c);
    for (int x = c + tid; x < n2; x += kThreads) keys[x] = 0;  // below every real key
    __syncthreads();
    bitonic_sort_desc(keys, n2);
    // 3. The CPU's fp32 cumulative sum, in order, 8 values per batch of independent loads.
    if (tid == 0) {
      float cumsum = 0.f;
      int count = 0;
      bool passed = false;
      for (int r0 = 0; r0 < c && !passed; r0 += 8) {
        float v[8];
#pragma unroll
        for (int q = 0; q < 8; ++q) v[q] = r0 + q < c ? key_value(keys[r0 + q]) : 0.f;
#pragma unroll
        for (int q = 0; q < 8; ++q) {
          if (passed || r0 + q >= c) break;
          cumsum = __fadd_rn(cumsum, v[q]);
          if (!(cumsum <= p.p)) passed = true;
          else ++count;
        }
      }
      s_keep = min(count + 1, n);
      s_retry = !passed && c < n;
      s_text = c;  // rank of the text column; c when it is not a candidate
    }
    __syncthreads();
    if (!s_retry) break;
    T = 0;
  }

  // 4. Where the text column ranks decides where the k-th video block falls.
  for (int r = tid; r < c; r += kThreads)
    if (key_index(keys[r]) == nv) s_text = r;
  __syncthreads();
  const int mk = p.k == 0 ? 0 : (s_text < p.k ? p.k + 1 : p.k);
  const int kept = max(s_keep, mk);
  for (int r = tid; r < kept; r += kThreads) {
    const int j = key_index(keys[r]);
    if (j < nv) atomicOr(&crit[j / 32], 1u << (j % 32));
  }
}

__global__ void __launch_bounds__(kThreads) select_rows(const __grid_constant__ SelectParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ Reducer red;
  const Dims& d = p.dims;
  const int64_t r = blockIdx.x;
  const int i = static_cast<int>(r % d.nb), tid = threadIdx.x;
  if (r == 0 && tid == 0) p.row_counts[d.mask_rows()] = 0;  // the scan's total
  if (i >= d.nv) {
    if (tid == 0) p.row_counts[r] = d.nb;
    return;
  }
  const int64_t vrow = r / d.nb * d.nv + i;
  const bool ipar = p.selector == Selector::ipar;
  const int n = ipar ? d.nv + 1 : 0;
  uint64_t* keys = reinterpret_cast<uint64_t*>(smem);
  float* vals = reinterpret_cast<float*>(keys + (ipar ? pow2_ceil(n) : 0));
  uint32_t* crit = reinterpret_cast<uint32_t*>(vals + (n + 3) / 4 * 4);
  for (int w = tid; w < d.words; w += kThreads) crit[w] = 0;
  __syncthreads();

  if (ipar) {
    ipar_row(p, p.P + vrow * n, keys, vals, crit, red);
  } else if (p.selector == Selector::band) {
    const int half = p.k / 2;
    for (int j = max(0, i - half) + tid; j <= min(d.nv - 1, i + half); j += kThreads)
      atomicOr(&crit[j / 32], 1u << (j % 32));
  }
  if (p.neighbours.offsets) {
    const int end = p.neighbours.offsets[i + 1];
    for (int x = p.neighbours.offsets[i] + tid; x < end; x += kThreads) {
      const int j = p.neighbours.cols[x];
      atomicOr(&crit[j / 32], 1u << (j % 32));
    }
  }
  if (i < p.first_frame)
    for (int j = tid; j < p.first_frame; j += kThreads) atomicOr(&crit[j / 32], 1u << (j % 32));
  __syncthreads();

  int count = 0;
  float unused = 0.f;
  for (int w = tid; w < d.words; w += kThreads) {
    const uint32_t bits = crit[w];
    p.critical[vrow * d.words + w] = bits;
    count += __popc(bits);
  }
  block_sum(red, 0, count, unused);
  if (tid == 0) p.row_counts[r] = count + (d.nb - d.nv);
}

// One warp per CSR row: the marked video blocks in ascending order, then the text blocks.
__global__ void __launch_bounds__(256) write_cols(const __grid_constant__ SelectParams p) {
  const Dims& d = p.dims;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * 8 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= d.mask_rows()) return;
  const int i = static_cast<int>(r % d.nb);
  int32_t* out = p.col_indices + p.row_offsets[r];
  if (i >= d.nv) {
    for (int j = lane; j < d.nb; j += 32) out[j] = j;
    return;
  }
  const uint32_t* crit = p.critical + (r / d.nb * d.nv + i) * d.words;
  int base = 0;
  for (int w0 = 0; w0 < d.words; w0 += 32) {
    const int w = w0 + lane;
    uint32_t bits = w < d.words ? crit[w] : 0u;
    const int count = __popc(bits);
    int incl = count;
#pragma unroll
    for (int o = 1; o < 32; o *= 2) {
      const int x = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += x;
    }
    int pos = base + incl - count;
    while (bits) {
      out[pos++] = w * 32 + __ffs(bits) - 1;
      bits &= bits - 1;
    }
    base += __shfl_sync(0xffffffffu, incl, 31);
  }
  for (int t = lane; t < d.nb - d.nv; t += 32) out[base + t] = d.nv + t;
}

}  // namespace

SelectParams make_select_params(const Dims& dims, const Config& config,
                                const NeighbourMap& neighbours, const Buffers& buf) {
  config.validate();
  SelectParams p;
  p.dims = dims;
  p.selector = config.selector();
  SPAATTN_CHECK_ARG(p.selector == Selector::ipar || p.selector == Selector::band ||
                        p.selector == Selector::local,
                    "config.select.selector", "expected ipar, band or local, got ",
                    to_string(p.selector));
  SPAATTN_CHECK_ARG(p.selector != Selector::local || neighbours.offsets, "neighbours",
                    "the local selector needs the block neighbour map");
  SPAATTN_CHECK_ARG(!neighbours.offsets || neighbours.cols, "neighbours",
                    "expected cols with the offsets, got a null pointer");
  if (p.selector == Selector::local || config.select.neighbours) p.neighbours = neighbours;
  p.p = static_cast<float>(config.select.p);
  p.k = static_cast<int>(kept_video_blocks(config.select.sparsity, dims.nv));
  p.first_frame = static_cast<int>(std::min<int64_t>(config.select.first_frame_blocks, dims.nv));
  if (p.selector == Selector::ipar) {
    SPAATTN_CHECK_ARG(buf.P != nullptr, "buffers", "the ipar selector needs P (kScores)");
    p.P = buf.P;
  }
  SPAATTN_CHECK_ARG(buf.critical && buf.row_counts && buf.scan_temp && buf.row_offsets &&
                        buf.col_indices,
                    "buffers", "expected the selection arrays (kSelection)");
  p.critical = buf.critical;
  p.row_counts = buf.row_counts;
  p.scan_temp = buf.scan_temp;
  p.scan_temp_bytes = buf.scan_temp_bytes;
  p.row_offsets = buf.row_offsets;
  p.col_indices = buf.col_indices;

  int device = 0, optin = 0;
  SPAATTN_CUDA_CHECK(cudaGetDevice(&device));
  SPAATTN_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const size_t smem = select_smem_bytes(dims, p.selector) + sizeof(Reducer) + 64;
  SPAATTN_CHECK_ARG(smem <= static_cast<size_t>(optin), "layout",
                    "too many video blocks for the ipar selection's shared memory: NV = ", dims.nv,
                    " needs ", smem, " bytes, the device has ", optin);
  return p;
}

void launch_select(const SelectParams& p, cudaStream_t stream) {
  const Dims& d = p.dims;
  const int64_t rows = d.mask_rows();
  const size_t smem = select_smem_bytes(d, p.selector);
  SPAATTN_CUDA_CHECK(cudaFuncSetAttribute(select_rows, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem)));
  select_rows<<<static_cast<unsigned>(rows), kThreads, smem, stream>>>(p);
  cuda_detail::check_launch("select_rows");
  size_t bytes = p.scan_temp_bytes;
  SPAATTN_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(p.scan_temp, bytes, p.row_counts,
                                                   p.row_offsets, static_cast<int>(rows + 1),
                                                   stream));
  write_cols<<<static_cast<unsigned>((rows + 7) / 8), 256, 0, stream>>>(p);
  cuda_detail::check_launch("write_cols");
}

}  // namespace spaattn::cuda::stages
