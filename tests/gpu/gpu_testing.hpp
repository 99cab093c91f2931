// Helpers of the GPU tests: device copies of the host tensors of tests/cpu/reference.hpp (same
// bytes, same strides), a device CSR mask made by cuda::dense_to_csr, NaN poisoning and the
// check that a kernel wrote every element of its output and nothing else.
#pragma once
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/reference.hpp"
#include "spaattn/spaattn.hpp"

namespace spaattn::gpu_test {

inline void cuda_ok(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

// SPAATTN_GPU_TESTS_SMALL=1 keeps only the small cases (for compute-sanitizer runs).
inline bool small_mode() {
  const char* s = std::getenv("SPAATTN_GPU_TESTS_SMALL");
  return s && *s && *s != '0';
}

// Whether the Hopper kernel family can run here (a compute capability 9.0 device, sm_90a code).
bool hopper_available();

class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes) cuda_ok(cudaMalloc(&ptr_, bytes), "cudaMalloc");
  }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  void upload(const void* src, size_t n) {
    cuda_ok(cudaMemcpy(ptr_, src, n, cudaMemcpyHostToDevice), "upload");
  }
  void download(void* dst, size_t n) const {
    cuda_ok(cudaMemcpy(dst, ptr_, n, cudaMemcpyDeviceToHost), "download");
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// A device tensor holding the same bytes as a host tensor, viewed with the same strides.
struct DeviceTensor {
  DeviceBuffer buf;
  TensorView view;
  explicit DeviceTensor(const test::HostTensor& h) : buf(h.storage.size() * 8), view(h.view) {
    buf.upload(h.storage.data(), buf.bytes());
    view.data = buf.get();
    view.device = Device::cuda;
  }
  void to_host(test::HostTensor& h) const { buf.download(h.storage.data(), buf.bytes()); }
};

// A host problem's q, k, v and text lengths copied to the device, and the call's arguments
// pointing at those copies (the text lengths as device memory).
struct DeviceProblem {
  DeviceTensor q, k, v;
  DeviceBuffer text_len;
  AttentionArgs args;
  explicit DeviceProblem(const test::Problem& p)
      : q(p.q),
        k(p.k),
        v(p.v),
        text_len(p.text_len.size() * sizeof(int32_t)),
        args(test::with_qkv(p.args, q.view, k.view, v.view)) {
    if (!p.text_len.empty()) {
      text_len.upload(p.text_len.data(), text_len.bytes());
      args.text_lengths.data = text_len.get();
      args.text_lengths.device = Device::cuda;
    }
  }
};

// Relative L2 distance of a [b, S, H, d] output from a reference. NaN elements (never written
// over the poison) are counted in `unwritten` and left out; without a counter any NaN makes the
// distance infinite.
inline double rel_l2(const test::HostTensor& x, const test::HostTensor& ref,
                     int64_t* unwritten = nullptr) {
  double err = 0, norm = 0;
  const auto& s = ref.view.shape;
  for (int64_t b = 0; b < s[0]; ++b)
    for (int64_t n = 0; n < s[1]; ++n)
      for (int64_t h = 0; h < s[2]; ++h)
        for (int64_t e = 0; e < s[3]; ++e) {
          const double a = x.get(b, n, h, e), r = ref.get(b, n, h, e);
          if (std::isnan(a)) {
            if (!unwritten) return INFINITY;
            ++*unwritten;
            continue;
          }
          err += (a - r) * (a - r);
          norm += r * r;
        }
  return norm == 0 ? std::sqrt(err) : std::sqrt(err / norm);
}

// A [b, S, H, d] tensor (d = 0: f32 [b, S, H]) whose rows, heads and batch items are separated
// by gaps that keep every row start 16-byte aligned (what the kernel needs).
inline test::HostTensor make_gapped(DType dt, int64_t b, int64_t s, int64_t h, int64_t d) {
  test::HostTensor t = test::make_tensor(dt, b, s, h, d);
  const int64_t dd = d == 0 ? 1 : d, gap = d == 0 ? 3 : 8;
  const int64_t head = dd + gap, row = h * head + gap, batch = s * row + gap;
  t.storage.assign(static_cast<size_t>((b * batch * element_size(dt) + 7) / 8), 0);
  t.view.data = t.storage.data();
  t.view.stride = {batch, row, head, d == 0 ? 0 : 1};
  return t;
}

// Offsets (in elements) of the storage that the view covers.
inline std::vector<uint8_t> covered(const test::HostTensor& t) {
  const size_t n = t.storage.size() * 8 / element_size(t.view.dtype);
  std::vector<uint8_t> in(n, 0);
  const int64_t D = t.view.rank == 3 ? 1 : t.view.shape[3];
  for (int64_t b = 0; b < t.view.shape[0]; ++b)
    for (int64_t s = 0; s < t.view.shape[1]; ++s)
      for (int64_t h = 0; h < t.view.shape[2]; ++h)
        for (int64_t e = 0; e < D; ++e) in[static_cast<size_t>(t.at(b, s, h, e))] = 1;
  return in;
}

// Counts covered elements that are still NaN (never written) or not finite, and uncovered
// elements that are no longer the NaN poison (written outside the view).
struct WriteCheck {
  int64_t unwritten = 0, outside = 0;
};
inline WriteCheck check_writes(const test::HostTensor& t) {
  WriteCheck w;
  const std::vector<uint8_t> in = covered(t);
  for (size_t i = 0; i < in.size(); ++i) {
    const float x = load_as_float(t.view.data, t.view.dtype, static_cast<int64_t>(i));
    if (in[i]) {
      if (std::isnan(x) || (std::isinf(x) && t.view.rank == 4)) ++w.unwritten;
    } else if (!std::isnan(x)) {
      ++w.outside;
    }
  }
  return w;
}

// CSR mask in device memory, converted on the GPU from a dense [b, H, nq, nk] byte matrix.
struct DeviceMask {
  DeviceBuffer dense, offsets, cols, workspace;
  BlockMaskView view;
  DeviceMask(const std::vector<uint8_t>& host, int64_t b, int64_t h, int64_t nq, int64_t nk,
             cudaStream_t stream = nullptr)
      : dense(host.size()),
        offsets(sizeof(int32_t) * (b * h * nq + 1)),
        cols(sizeof(int32_t) * b * h * nq * nk),
        workspace(cuda::dense_to_csr_workspace_size(b * h * nq)) {
    dense.upload(host.data(), host.size());
    view.batch = b;
    view.heads = h;
    view.num_q_blocks = nq;
    view.num_k_blocks = nk;
    view.row_offsets =
        TensorView::contiguous(offsets.get(), DType::i32, {b * h * nq + 1}, Device::cuda);
    view.col_indices =
        TensorView::contiguous(cols.get(), DType::i32, {b * h * nq * nk}, Device::cuda);
    const TensorView d =
        TensorView::contiguous(dense.get(), DType::u8, {b, h, nq, nk}, Device::cuda);
    cuda::dense_to_csr(d, view, workspace.get(), stream);
  }
  // The CSR lists as the host sees them (nnz entries of col_indices).
  BlockMask download() const {
    BlockMask m;
    m.batch = view.batch;
    m.heads = view.heads;
    m.num_q_blocks = view.num_q_blocks;
    m.num_k_blocks = view.num_k_blocks;
    m.row_offsets.resize(static_cast<size_t>(m.rows() + 1));
    offsets.download(m.row_offsets.data(), m.row_offsets.size() * sizeof(int32_t));
    m.col_indices.resize(static_cast<size_t>(m.row_offsets.back()));
    if (!m.col_indices.empty())
      cols.download(m.col_indices.data(), m.col_indices.size() * sizeof(int32_t));
    return m;
  }
};

}  // namespace spaattn::gpu_test
