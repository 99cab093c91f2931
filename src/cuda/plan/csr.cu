// dense_to_csr on the GPU: a dense u8 block mask [batch, heads, nq, nk] becomes the CSR lists
// the kernel iterates. One warp per mask row counts its selected blocks (ballot + popc), CUB's
// exclusive scan turns counts into row offsets, and a second pass writes the column indices in
// ascending order, so the result equals BlockMask::from_dense on the host.
#include <cub/device/device_scan.cuh>
#include <limits>

#include "cuda/check.cuh"
#include "spaattn/cuda.hpp"

namespace spaattn::cuda {
namespace {

constexpr int kWarpsPerCta = 8;
constexpr size_t kAlign = 256;

size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// counts[rows] = 0 so that the scan over rows + 1 entries ends with the total nnz.
__global__ void count_rows(const uint8_t* dense, int rows, int nk, int* counts) {
  const int row = blockIdx.x * kWarpsPerCta + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row > rows) return;
  int n = 0;
  if (row < rows) {
    const uint8_t* d = dense + static_cast<int64_t>(row) * nk;
    for (int j = lane; j < nk; j += 32) n += d[j] != 0;
  }
  n = __reduce_add_sync(0xffffffffu, n);
  if (lane == 0) counts[row] = n;
}

__global__ void write_rows(const uint8_t* dense, int rows, int nk, const int* offsets, int* cols) {
  const int row = blockIdx.x * kWarpsPerCta + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const uint8_t* d = dense + static_cast<int64_t>(row) * nk;
  int pos = offsets[row];
  for (int j0 = 0; j0 < nk; j0 += 32) {
    const int j = j0 + lane;
    const bool on = j < nk && d[j] != 0;
    const unsigned ballot = __ballot_sync(0xffffffffu, on);
    if (on) cols[pos + __popc(ballot & ((1u << lane) - 1u))] = j;
    pos += __popc(ballot);
  }
}

size_t scan_temp_bytes(int items) {
  size_t bytes = 0;
  SPAATTN_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, bytes, static_cast<int*>(nullptr),
                                                   static_cast<int*>(nullptr), items));
  return bytes;
}

}  // namespace

size_t dense_to_csr_workspace_size(int64_t rows) {
  SPAATTN_CHECK_ARG(rows >= 0 && rows < std::numeric_limits<int32_t>::max() - 1, "rows",
                    "expected 0 <= rows < 2^31 - 1, got ", rows);
  const int items = static_cast<int>(rows + 1);
  return align_up(sizeof(int) * static_cast<size_t>(items)) + scan_temp_bytes(items);
}

void dense_to_csr(const TensorView& dense, BlockMaskView out, void* workspace, void* stream) {
  SPAATTN_CHECK_ARG(dense.data != nullptr && dense.rank == 4, "dense",
                    "expected a [batch, heads, num_q_blocks, num_k_blocks] tensor");
  SPAATTN_CHECK_ARG(dense.dtype == DType::u8, "dense", "expected dtype uint8, got ",
                    to_string(dense.dtype));
  SPAATTN_CHECK_ARG(dense.device == Device::cuda, "dense", "expected a CUDA tensor");
  SPAATTN_CHECK_ARG(dense.is_contiguous(), "dense", "expected a contiguous tensor");
  SPAATTN_CHECK_ARG(out.batch == dense.shape[0] && out.heads == dense.shape[1] &&
                        out.num_q_blocks == dense.shape[2] && out.num_k_blocks == dense.shape[3],
                    "out", "expected the dims of dense [", dense.shape[0], ", ", dense.shape[1],
                    ", ", dense.shape[2], ", ", dense.shape[3], "], got [", out.batch, ", ",
                    out.heads, ", ", out.num_q_blocks, ", ", out.num_k_blocks, "]");
  const int64_t rows = out.batch * out.heads * out.num_q_blocks;
  const int64_t nk = out.num_k_blocks;
  SPAATTN_CHECK_ARG(rows * nk < std::numeric_limits<int32_t>::max(), "dense",
                    "expected fewer than 2^31 entries, got ", rows * nk);
  const TensorView& ro = out.row_offsets;
  const TensorView& ci = out.col_indices;
  SPAATTN_CHECK_ARG(ro.data && ro.dtype == DType::i32 && ro.device == Device::cuda &&
                        ro.rank == 1 && ro.shape[0] == rows + 1 && ro.stride[0] == 1,
                    "out.row_offsets", "expected contiguous CUDA int32 [", rows + 1, "]");
  SPAATTN_CHECK_ARG(ci.dtype == DType::i32 && ci.device == Device::cuda && ci.rank == 1 &&
                        ci.shape[0] >= rows * nk && ci.stride[0] == 1 &&
                        (ci.data || rows * nk == 0),
                    "out.col_indices", "expected contiguous CUDA int32 with room for ", rows * nk,
                    " entries, got ", ci.shape[0]);
  SPAATTN_CHECK_ARG(workspace != nullptr, "workspace",
                    "expected dense_to_csr_workspace_size(rows) bytes, got a null pointer");

  const int items = static_cast<int>(rows + 1);
  int* counts = static_cast<int*>(workspace);
  void* scan_temp = static_cast<char*>(workspace) + align_up(sizeof(int) * items);
  size_t scan_bytes = scan_temp_bytes(items);
  const auto s = static_cast<cudaStream_t>(stream);
  const auto* d = dense.ptr<const uint8_t>();
  const int ctas = (items + kWarpsPerCta - 1) / kWarpsPerCta;
  count_rows<<<ctas, kWarpsPerCta * 32, 0, s>>>(d, static_cast<int>(rows), static_cast<int>(nk),
                                                counts);
  cuda_detail::check_launch("count_rows");
  SPAATTN_CUDA_CHECK(
      cub::DeviceScan::ExclusiveSum(scan_temp, scan_bytes, counts, ro.ptr<int>(), items, s));
  if (rows == 0) return;
  write_rows<<<(rows + kWarpsPerCta - 1) / kWarpsPerCta, kWarpsPerCta * 32, 0, s>>>(
      d, static_cast<int>(rows), static_cast<int>(nk), ro.ptr<const int>(), ci.ptr<int>());
  cuda_detail::check_launch("write_rows");
}

}  // namespace spaattn::cuda
