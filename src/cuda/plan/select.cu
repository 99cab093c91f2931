// Selection of critical blocks (docs/methods.md, Selection) written directly as the attention
// kernel's CSR lists; the rules are those of cpu::select_blocks (src/cpu/select.cpp), reproduced
// exactly: the same P gives the same lists.
//
// select_rows: one warp (a CTA of 32 threads) per CSR row; text query rows only record their
// count (every key block). For an ipar video row, sorting all NV + 1 entries would cost more than
// the rest of the stage, yet only a short prefix of the descending order matters: the entries up
// to where the cumulative sum passes p, and enough of them to hold k video blocks. So:
//  1. threshold search: the largest T (a float bit pattern, found bit by bit with warp-wide
//     count/sum reductions) such that the entries with P >= T number at least k + 1 and sum (in
//     any order) to at least p + 1e-4; those entries are a prefix of the order. The search stops
//     early once at most 256 entries remain: the smallest register sort below takes up to 256
//     keys at one cost.
//  2. the candidates are compacted (ballots) and sorted on 64-bit keys (P's bits, then the
//     complement of the column index), descending: larger P first, equal P lower index first,
//     which is the CPU's tie-break (the text column, index NV, loses ties). Up to 512 keys are
//     sorted by a bitonic network in registers (8 or 16 keys a lane, partners in other lanes by
//     shuffles), so the sort costs no shared-memory bandwidth (a shared-memory bitonic sort of
//     ~1000 keys per row, the first version, was bound by shared-memory bandwidth and made this
//     stage 0.7 ms at NV = 600). More candidates (only possible with NV >= 512: diffuse rows with
//     p * NV > 512, or k > 511) fall back to a bitonic sort in shared memory; 32 keys a lane would
//     need 168 registers and cut the occupancy of every row for that case.
//  3. one lane adds the sorted values in fp32 in that order and counts cumsum <= p exactly as the
//     CPU loop does: keep = count + 1. Should the sum not pass p inside the candidates (the margin
//     makes that a rounding corner case), steps 2-3 are redone on the whole row.
//  4. the kept prefix has max(keep, m_k) entries, m_k being where the k-th video block falls
//     (k, or k + 1 when the text column ranks before it); its video blocks are marked.
// Band and local rows mark their static blocks; then the neighbour map (device CSR) and the
// first-frame square are added. The row's bitmask goes to `critical`, its count to row_counts.
// A CUB exclusive scan turns the counts into row offsets (row_counts[rows] = 0 gives the total),
// and write_cols, one warp per row, writes the sorted column lists: the marked video blocks in
// ascending order from the bitmask, then every text block; text query rows list every block.
#include <cub/device/device_scan.cuh>

#include <algorithm>

#include "cuda/check.cuh"
#include "spaattn/stages.hpp"
#include "cuda/plan/stage_util.cuh"
#include "cuda/plan/stages.cuh"

namespace spaattn::cuda::stages {
namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr float kSumMargin = 1e-4f;  // candidate sum beyond p that absorbs the order's rounding
constexpr int kSmallSort = 256;      // candidates the threshold search settles for

__host__ __device__ int pow2_ceil(int n) {
  int x = 1;
  while (x < n) x *= 2;
  return x;
}

// Keys of one ipar row: room for the register sorts and for a shared-memory sort of all n.
__host__ __device__ int key_capacity(int n) { return max(pow2_ceil(n), kSmallSort); }

// Dynamic shared memory of select_rows: keys and values (ipar), the row's bitmask.
size_t select_smem_bytes(const Dims& d, Selector s) {
  const int n = s == Selector::ipar ? d.nv + 1 : 0;
  const size_t keys = s == Selector::ipar ? key_capacity(n) : 0;
  return keys * sizeof(uint64_t) + static_cast<size_t>((n + 3) / 4 * 4) * sizeof(float) +
         static_cast<size_t>(d.words) * sizeof(uint32_t);
}

__device__ __forceinline__ float key_value(uint64_t key) {
  return __uint_as_float(static_cast<uint32_t>(key >> 32));
}
__device__ __forceinline__ int key_index(uint64_t key) {
  return static_cast<int>(~static_cast<uint32_t>(key));
}

// Descending bitonic sort of keys[0 .. 32 * K) in registers, K keys a lane (lane l holds
// positions l * K .. l * K + K - 1); partners closer than K sit in the same lane, farther ones in
// lane l ^ (stride / K). The loops unroll completely, so every register index is a constant.
template <int K>
__device__ void sort_registers(uint64_t* keys, int count) {
  constexpr int kLog = __builtin_ctz(32 * K);
  const int lane = threadIdx.x % 32;
  uint64_t v[K];
#pragma unroll
  for (int x = 0; x < K; ++x) v[x] = lane * K + x < count ? keys[lane * K + x] : 0;  // 0: last
#pragma unroll
  for (int ls = 1; ls <= kLog; ++ls) {
#pragma unroll
    for (int lt = ls - 1; lt >= 0; --lt) {
      const int size = 1 << ls, stride = 1 << lt;
      if (stride < K) {
#pragma unroll
        for (int x = 0; x < K; ++x) {
          if (x & stride) continue;
          const bool desc = ((lane * K + x) & size) == 0;
          const uint64_t a = v[x], b = v[x + stride];
          if ((a < b) == desc) {
            v[x] = b;
            v[x + stride] = a;
          }
        }
      } else {
        const bool lo = (lane & (stride / K)) == 0;
#pragma unroll
        for (int x = 0; x < K; ++x) {
          const uint64_t b = __shfl_xor_sync(kFull, v[x], stride / K);
          const bool desc = ((lane * K + x) & size) == 0;
          v[x] = (lo == desc) ? max(v[x], b) : min(v[x], b);
        }
      }
    }
  }
#pragma unroll
  for (int x = 0; x < K; ++x) keys[lane * K + x] = v[x];
  __syncwarp();
}

// Descending bitonic sort of keys[0 .. count) in shared memory by one warp (the rare case of more
// than 512 candidates).
__device__ void sort_shared(uint64_t* keys, int count) {
  const int n2 = pow2_ceil(count), lane = threadIdx.x % 32;
  for (int x = count + lane; x < n2; x += 32) keys[x] = 0;
  __syncwarp();
  for (int size = 2; size <= n2; size *= 2)
    for (int stride = size / 2; stride > 0; stride /= 2) {
      for (int t = lane; t < n2 / 2; t += 32) {
        const int lo = 2 * t - (t & (stride - 1)), hi = lo + stride;
        const uint64_t a = keys[lo], b = keys[hi];
        if ((a < b) == ((lo & size) == 0)) {
          keys[lo] = b;
          keys[hi] = a;
        }
      }
      __syncwarp();
    }
}

// Marks crit(i) of IPAR in `crit` (shared bitmask) from row P (NV + 1 entries). One warp.
__device__ void ipar_row(const SelectParams& p, const float* P, uint64_t* keys, float* vals,
                         uint32_t* crit) {
  const int nv = p.dims.nv, n = nv + 1, lane = threadIdx.x % 32;
  for (int j = lane; j < n; j += 32) vals[j] = P[j];
  __syncwarp();

  // 1. The threshold: greedy from bit 30 down keeps the largest T meeting both conditions.
  const int need = min(p.k + 1, n);
  const float target = p.p + kSumMargin;
  uint32_t T = 0;
  int count_T = n;
  for (int bit = 30; bit >= 0 && count_T > kSmallSort; --bit) {
    const uint32_t cand = T | (1u << bit);
    int count = 0;
    float sum = 0.f;
#pragma unroll 4
    for (int j = lane; j < n; j += 32) {
      const float x = vals[j];
      if (__float_as_uint(x) >= cand) {
        ++count;
        sum += x;
      }
    }
    count = __reduce_add_sync(kFull, count);
    if (count < need) continue;  // warp-uniform: the sum is not needed
    sum = group_sum<32>(sum);
    if (sum >= target) {
      T = cand;
      count_T = count;
    }
  }

  int c = 0, keep = 0;
  for (;;) {
    // 2. The candidates (P >= T) as keys, compacted in column order, then sorted.
    c = 0;
    for (int j0 = 0; j0 < n; j0 += 32) {
      const int j = j0 + lane;
      const uint32_t u = j < n ? __float_as_uint(vals[j]) : 0u;
      const bool take = j < n && u >= T;
      const unsigned ballot = __ballot_sync(kFull, take);
      if (take)
        keys[c + __popc(ballot & ((1u << lane) - 1u))] =
            (static_cast<uint64_t>(u) << 32) | ~static_cast<uint32_t>(j);
      c += __popc(ballot);
    }
    __syncwarp();
    if (c <= kSmallSort)
      sort_registers<8>(keys, c);
    else if (c <= 512)
      sort_registers<16>(keys, c);
    else
      sort_shared(keys, c);
    // 3. The CPU's fp32 cumulative sum, in order, by lane 0, 8 values per step without branches:
    //    the sum never decreases, so counting every prefix with cumsum <= p counts the CPU's
    //    prefix; padding past c adds 0 and is not counted.
    int counted = 0, passed = 0;
    if (lane == 0) {
      float cumsum = 0.f;
      for (int r0 = 0; r0 < c && !passed; r0 += 8) {
        float v[8];
#pragma unroll
        for (int q = 0; q < 8; ++q) v[q] = r0 + q < c ? key_value(keys[r0 + q]) : 0.f;
#pragma unroll
        for (int q = 0; q < 8; ++q) {
          cumsum = __fadd_rn(cumsum, v[q]);
          counted += (cumsum <= p.p) & (r0 + q < c);
        }
        passed = !(cumsum <= p.p);
      }
    }
    counted = __shfl_sync(kFull, counted, 0);
    passed = __shfl_sync(kFull, passed, 0);
    keep = min(counted + 1, n);
    if (passed || c == n) break;
    T = 0;  // a rounding corner case: the whole row
  }

  // 4. Where the text column ranks decides where the k-th video block falls.
  unsigned text = static_cast<unsigned>(c);
  for (int r = lane; r < c; r += 32)
    if (key_index(keys[r]) == nv) text = static_cast<unsigned>(r);
  text = __reduce_min_sync(kFull, text);
  const int mk = p.k == 0 ? 0 : (static_cast<int>(text) < p.k ? p.k + 1 : p.k);
  const int kept = max(keep, mk);
  for (int r = lane; r < kept; r += 32) {
    const int j = key_index(keys[r]);
    if (j < nv) atomicOr(&crit[j / 32], 1u << (j % 32));
  }
}

__global__ void __launch_bounds__(32) select_rows(const __grid_constant__ SelectParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const Dims& d = p.dims;
  const int64_t r = blockIdx.x;
  const int i = static_cast<int>(r % d.nb), lane = threadIdx.x;
  if (r == 0 && lane == 0) p.row_counts[d.mask_rows()] = 0;  // the scan's total
  if (i >= d.nv) {
    if (lane == 0) p.row_counts[r] = d.nb;
    return;
  }
  const int64_t vrow = r / d.nb * d.nv + i;
  const bool ipar = p.selector == Selector::ipar;
  const int n = ipar ? d.nv + 1 : 0;
  uint64_t* keys = reinterpret_cast<uint64_t*>(smem);
  float* vals = reinterpret_cast<float*>(keys + (ipar ? key_capacity(n) : 0));
  uint32_t* crit = reinterpret_cast<uint32_t*>(vals + (n + 3) / 4 * 4);
  for (int w = lane; w < d.words; w += 32) crit[w] = 0;
  __syncwarp();

  if (ipar) {
    ipar_row(p, p.P + vrow * n, keys, vals, crit);
  } else if (p.selector == Selector::band) {
    const int half = p.k / 2;
    for (int j = max(0, i - half) + lane; j <= min(d.nv - 1, i + half); j += 32)
      atomicOr(&crit[j / 32], 1u << (j % 32));
  }
  if (p.neighbours.offsets) {
    const int end = p.neighbours.offsets[i + 1];
    for (int x = p.neighbours.offsets[i] + lane; x < end; x += 32) {
      const int j = p.neighbours.cols[x];
      atomicOr(&crit[j / 32], 1u << (j % 32));
    }
  }
  if (i < p.first_frame)
    for (int j = lane; j < p.first_frame; j += 32) atomicOr(&crit[j / 32], 1u << (j % 32));
  __syncwarp();

  int count = 0;
  for (int w = lane; w < d.words; w += 32) {
    const uint32_t bits = crit[w];
    p.critical[vrow * d.words + w] = bits;
    count += __popc(bits);
  }
  count = __reduce_add_sync(kFull, count);
  if (lane == 0) p.row_counts[r] = count + (d.nb - d.nv);
}

// Word w of video row `vrow`'s listed blocks: its crit bits (all video blocks when critical is
// null), or their complement over the NV video blocks; with a second bitmask, intersected with
// it (or with its complement).
__device__ __forceinline__ uint32_t listed_bits(const SelectParams& p, int64_t vrow, int w) {
  const Dims& d = p.dims;
  if (w >= d.words) return 0u;
  const uint32_t valid = w == d.words - 1 && d.nv % 32 ? (1u << (d.nv % 32)) - 1u : kFull;
  const uint32_t crit = p.critical ? p.critical[vrow * d.words + w] : kFull;
  uint32_t bits = (p.complement ? ~crit : crit) & valid;
  if (p.other) {
    const uint32_t other = p.other[vrow * d.words + w];
    bits &= p.other_complement ? ~other : other;
  }
  return bits;
}

// Whether the lists hold the text blocks (of video rows) and text query rows at all: both masks
// list them, their complements do not.
__device__ __forceinline__ bool lists_text(const SelectParams& p) {
  return !p.complement && !(p.other && p.other_complement);
}

// One warp per CSR row: its count, for CSR lists made from stored crit bits.
__global__ void __launch_bounds__(256) count_cols(const __grid_constant__ SelectParams p) {
  const Dims& d = p.dims;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * 8 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r > d.mask_rows()) return;
  if (r == d.mask_rows()) {  // the scan's total
    if (lane == 0) p.row_counts[r] = 0;
    return;
  }
  const int i = static_cast<int>(r % d.nb);
  int count = 0;
  if (i < d.nv) {
    for (int w = lane; w < d.words; w += 32)
      count += __popc(listed_bits(p, r / d.nb * d.nv + i, w));
    count = __reduce_add_sync(kFull, count);
  }
  const bool text = lists_text(p);
  const int text_blocks = text ? d.nb - d.nv : 0;
  if (lane == 0) p.row_counts[r] = i < d.nv ? count + text_blocks : (text ? d.nb : 0);
}

// One warp per CSR row: the listed video blocks in ascending order, then (unless complement) the
// text blocks; a text query row lists every block (complement: none).
__global__ void __launch_bounds__(256) write_cols(const __grid_constant__ SelectParams p) {
  const Dims& d = p.dims;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * 8 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= d.mask_rows()) return;
  const int i = static_cast<int>(r % d.nb);
  int32_t* out = p.col_indices + p.row_offsets[r];
  if (i >= d.nv) {
    if (lists_text(p))
      for (int j = lane; j < d.nb; j += 32) out[j] = j;
    return;
  }
  const int64_t vrow = r / d.nb * d.nv + i;
  int base = 0;
  for (int w0 = 0; w0 < d.words; w0 += 32) {
    const int w = w0 + lane;
    uint32_t bits = listed_bits(p, vrow, w);
    const int count = __popc(bits);
    int incl = count;
#pragma unroll
    for (int o = 1; o < 32; o *= 2) {
      const int x = __shfl_up_sync(kFull, incl, o);
      if (lane >= o) incl += x;
    }
    int pos = base + incl - count;
    while (bits) {
      out[pos++] = w * 32 + __ffs(bits) - 1;
      bits &= bits - 1;
    }
    base += __shfl_sync(kFull, incl, 31);
  }
  if (lists_text(p))
    for (int t = lane; t < d.nb - d.nv; t += 32) out[base + t] = d.nv + t;
}

// Row offsets from row_counts (CUB scan), then the column lists.
void scan_and_write(const SelectParams& p, cudaStream_t stream) {
  const int64_t rows = p.dims.mask_rows();
  size_t bytes = p.scan_temp_bytes;
  SPAATTN_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(p.scan_temp, bytes, p.row_counts, p.row_offsets,
                                                   static_cast<int>(rows + 1), stream));
  write_cols<<<static_cast<unsigned>((rows + 7) / 8), 256, 0, stream>>>(p);
  cuda_detail::check_launch("write_cols");
}

}  // namespace

SelectParams make_select_params(const Dims& dims, const Config& config,
                                const NeighbourMap& neighbours, const Buffers& buf) {
  config.validate();
  SelectParams p;
  p.dims = dims;
  p.selector = config.selector();
  SPAATTN_CHECK_ARG(
      p.selector == Selector::ipar || p.selector == Selector::band || p.selector == Selector::local,
      "config.select.selector", "expected ipar, band or local, got ", to_string(p.selector));
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
  SPAATTN_CHECK_ARG(
      buf.critical && buf.row_counts && buf.scan_temp && buf.row_offsets && buf.col_indices,
      "buffers", "expected the selection arrays (kSelection)");
  p.critical = buf.critical;
  p.row_counts = buf.row_counts;
  p.scan_temp = buf.scan_temp;
  p.scan_temp_bytes = buf.scan_temp_bytes;
  p.row_offsets = buf.row_offsets;
  p.col_indices = buf.col_indices;

  int device = 0, optin = 0;
  SPAATTN_CUDA_CHECK(cudaGetDevice(&device));
  SPAATTN_CUDA_CHECK(
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const size_t smem = select_smem_bytes(dims, p.selector);
  SPAATTN_CHECK_ARG(smem <= static_cast<size_t>(optin), "layout",
                    "too many video blocks for the ipar selection's shared memory: NV = ", dims.nv,
                    " needs ", smem, " bytes, the device has ", optin);
  return p;
}

void launch_select(const SelectParams& p, cudaStream_t stream) {
  const Dims& d = p.dims;
  const int64_t rows = d.mask_rows();
  const size_t smem = select_smem_bytes(d, p.selector);
  // Opted in once per device to the most the device allows (make_select_params checked that
  // `smem` fits in it), so that calls of any size skip the driver call.
  static cuda_detail::OncePerDevice smem_opt_in;
  smem_opt_in([] {
    int device = 0, optin = 0;
    SPAATTN_CUDA_CHECK(cudaGetDevice(&device));
    SPAATTN_CUDA_CHECK(
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    SPAATTN_CUDA_CHECK(
        cudaFuncSetAttribute(select_rows, cudaFuncAttributeMaxDynamicSharedMemorySize, optin));
  });
  select_rows<<<static_cast<unsigned>(rows), 32, smem, stream>>>(p);
  cuda_detail::check_launch("select_rows");
  scan_and_write(p, stream);
}

void launch_csr_from_critical(const Dims& dims, const uint32_t* critical, bool complement,
                              const Buffers& out, cudaStream_t stream) {
  launch_csr_from_masks(dims, critical, complement, nullptr, false, out, stream);
}

void launch_csr_from_masks(const Dims& dims, const uint32_t* critical, bool complement,
                           const uint32_t* other, bool other_complement, const Buffers& out,
                           cudaStream_t stream) {
  SPAATTN_CHECK_ARG(out.row_counts && out.scan_temp && out.row_offsets && out.col_indices, "out",
                    "expected the selection arrays (kSelection)");
  SelectParams p;
  p.dims = dims;
  p.critical = const_cast<uint32_t*>(critical);  // count_cols and write_cols only read it
  p.complement = complement;
  p.other = other;
  p.other_complement = other_complement;
  p.row_counts = out.row_counts;
  p.scan_temp = out.scan_temp;
  p.scan_temp_bytes = out.scan_temp_bytes;
  p.row_offsets = out.row_offsets;
  p.col_indices = out.col_indices;
  const int64_t rows = dims.mask_rows();
  count_cols<<<static_cast<unsigned>((rows + 1 + 7) / 8), 256, 0, stream>>>(p);
  cuda_detail::check_launch("count_cols");
  scan_and_write(p, stream);
}

}  // namespace spaattn::cuda::stages
