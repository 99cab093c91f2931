// Host side shared by the stages: the dimensions derived from a call's shapes, the one-allocation
// workspace (every size follows from Dims alone, so a caller can allocate once per shape and reuse
// it across calls) and the flattening of the block neighbour map for its upload.
#include <cub/device/device_scan.cuh>

#include <limits>

#include "cuda/check.cuh"
#include "cuda/plan/stages.cuh"

namespace spaattn::cuda::stages {
namespace {

constexpr size_t kAlign = 256;

size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

size_t scan_bytes(int64_t items) {
  size_t bytes = 0;
  SPAATTN_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, bytes, static_cast<int32_t*>(nullptr),
                                                   static_cast<int32_t*>(nullptr),
                                                   static_cast<int>(items)));
  return bytes;
}

// Walks the arrays of `parts` in a fixed order; with base == nullptr it only adds up the sizes.
struct Carver {
  char* base;
  size_t used = 0;
  template <class T>
  T* take(size_t count) {
    T* p = base ? reinterpret_cast<T*>(base + used) : nullptr;
    used += align_up(count * sizeof(T));
    return p;
  }
};

Buffers carve(const Dims& dims, char* base, unsigned parts, size_t* total) {
  Carver c{base};
  Buffers b;
  const size_t rows = static_cast<size_t>(dims.video_rows());
  const size_t pooled = rows * dims.dim;
  const size_t bits = rows * dims.words;
  if (parts & kPooled) {
    b.q_mean = c.take<float>(pooled);
    b.k_mean = c.take<float>(pooled);
    b.v_mean = c.take<float>(pooled);
    b.q_dev = c.take<float>(pooled);
    b.k_dev = c.take<float>(pooled);
  }
  if (parts & kScores) {
    b.P = c.take<float>(rows * (dims.nv + 1));
    b.partial = c.take<float2>(rows * score_tiles(dims));
    b.compensable = c.take<uint32_t>(bits);
  }
  if (parts & kSelection) {
    const size_t items = static_cast<size_t>(dims.mask_rows()) + 1;
    if (parts & kCritical) b.critical = c.take<uint32_t>(bits);
    b.row_counts = c.take<int32_t>(items);
    b.scan_temp_bytes = scan_bytes(static_cast<int64_t>(items));
    b.scan_temp = c.take<char>(b.scan_temp_bytes);
    b.row_offsets = c.take<int32_t>(items);
    b.col_indices = c.take<int32_t>(static_cast<size_t>(dims.max_nnz()));
  }
  if (parts & kCorrection) {
    b.R = c.take<float>(rows);
    b.C = c.take<float>(pooled);
  }
  *total = c.used;
  return b;
}

}  // namespace

Dims make_dims(const Layout& layout, int64_t batch, int64_t heads, int64_t head_dim) {
  SPAATTN_CHECK_ARG(layout.block_size == 64 || layout.block_size == 128, "layout.block_size",
                    "expected 64 or 128, got ", layout.block_size);
  SPAATTN_CHECK_ARG(head_dim == 64 || head_dim == 128, "q", "expected head_dim 64 or 128, got ",
                    head_dim);
  SPAATTN_CHECK_ARG(batch >= 1 && batch <= 65535, "q", "expected 1 <= batch <= 65535, got ", batch);
  SPAATTN_CHECK_ARG(heads >= 1 && heads <= 65535, "q", "expected 1 <= heads <= 65535, got ", heads);
  // The scores and rectification stages put batch * heads on one grid axis (y or z).
  SPAATTN_CHECK_ARG(batch * heads <= 65535, "q", "expected batch * heads <= 65535, got ",
                    batch * heads, ": split the call over batch or heads");
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  SPAATTN_CHECK_ARG(layout.num_video >= 0 && layout.num_text >= 0 && layout.seq_len() >= 1 &&
                        layout.seq_len() < kMax,
                    "layout", "expected 1 <= num_video + num_text < 2^31, got ", layout.num_video,
                    " + ", layout.num_text);
  Dims d;
  d.batch = static_cast<int>(batch);
  d.heads = static_cast<int>(heads);
  d.dim = static_cast<int>(head_dim);
  d.block = layout.block_size;
  d.num_video = static_cast<int>(layout.num_video);
  d.num_text = static_cast<int>(layout.num_text);
  d.video_offset = static_cast<int>(layout.video_offset());
  d.text_offset = static_cast<int>(layout.text_offset());
  d.nv = static_cast<int>(layout.num_video_blocks());
  d.nb = static_cast<int>(layout.num_blocks());
  d.words = (d.nv + 31) / 32;
  // The CSR offsets are int32 and a row may list every key block.
  SPAATTN_CHECK_ARG(d.max_nnz() < kMax, "layout", "expected batch * heads * num_blocks^2 < 2^31 ",
                    "(int32 mask offsets), got ", d.max_nnz());
  return d;
}

size_t workspace_size(const Dims& dims, unsigned parts) {
  size_t total = 0;
  carve(dims, nullptr, parts, &total);
  return total;
}

Buffers carve_workspace(const Dims& dims, void* base, unsigned parts) {
  SPAATTN_CHECK_ARG(base != nullptr, "workspace", "expected workspace_size() bytes, got null");
  SPAATTN_CHECK_ARG(reinterpret_cast<uintptr_t>(base) % kAlign == 0, "workspace",
                    "expected a 256-byte aligned pointer, got ", base);
  size_t total = 0;
  return carve(dims, static_cast<char*>(base), parts, &total);
}

std::pair<std::vector<int32_t>, std::vector<int32_t>> flatten_neighbours(
    const std::vector<std::vector<int32_t>>& lists) {
  std::pair<std::vector<int32_t>, std::vector<int32_t>> csr;
  csr.first.reserve(lists.size() + 1);
  csr.first.push_back(0);
  for (const auto& list : lists) {
    csr.second.insert(csr.second.end(), list.begin(), list.end());
    csr.first.push_back(static_cast<int32_t>(csr.second.size()));
  }
  return csr;
}

}  // namespace spaattn::cuda::stages
