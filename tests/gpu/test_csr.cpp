// cuda::dense_to_csr against BlockMask::from_dense: random densities, row widths that are and are
// not multiples of a warp, empty and full rows, many rows; and its argument checks.
#include <gtest/gtest.h>

#include <random>

#include "cpu/testing.hpp"
#include "gpu_testing.hpp"

namespace spaattn::gpu_test {
namespace {

struct Dims {
  int64_t b, h, nq, nk;
  double density;
};

TEST(DenseToCsr, MatchesHost) {
  std::vector<Dims> dims = {{1, 1, 1, 1, 1.0},     {1, 1, 1, 1, 0.0},  {2, 3, 5, 33, 0.5},
                            {1, 2, 9, 32, 0.9},    {1, 1, 7, 64, 0.0}, {2, 2, 17, 1000, 0.05},
                            {1, 1, 600, 600, 0.11}};
  if (!small_mode()) dims.push_back({1, 40, 600, 600, 0.25});
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<double> u(0, 1);
  for (const Dims& d : dims) {
    std::vector<uint8_t> dense(static_cast<size_t>(d.b * d.h * d.nq * d.nk));
    for (auto& x : dense) x = u(rng) < d.density ? static_cast<uint8_t>(1 + rng() % 255) : 0;
    const BlockMask want = BlockMask::from_dense(dense.data(), d.b, d.h, d.nq, d.nk);
    DeviceMask mask(dense, d.b, d.h, d.nq, d.nk);
    cuda_ok(cudaDeviceSynchronize(), "dense_to_csr");
    const BlockMask got = mask.download();
    EXPECT_EQ(got.row_offsets, want.row_offsets) << d.b << "x" << d.h << "x" << d.nq << "x" << d.nk;
    EXPECT_EQ(got.col_indices, want.col_indices) << d.b << "x" << d.h << "x" << d.nq << "x" << d.nk;
  }
}

TEST(DenseToCsr, RejectsBadArguments) {
  DeviceBuffer dense(2 * 3 * 4), offsets(sizeof(int32_t) * 7), cols(sizeof(int32_t) * 24),
      ws(cuda::dense_to_csr_workspace_size(6));
  BlockMaskView out;
  out.batch = 1;
  out.heads = 2;
  out.num_q_blocks = 3;
  out.num_k_blocks = 4;
  out.row_offsets = TensorView::contiguous(offsets.get(), DType::i32, {7}, Device::cuda);
  out.col_indices = TensorView::contiguous(cols.get(), DType::i32, {24}, Device::cuda);
  cuda_ok(cudaMemset(dense.get(), 1, dense.bytes()), "cudaMemset");  // initcheck: a defined mask
  const TensorView d = TensorView::contiguous(dense.get(), DType::u8, {1, 2, 3, 4}, Device::cuda);
  EXPECT_NO_THROW(cuda::dense_to_csr(d, out, ws.get(), nullptr));
  TensorView bad = d;
  bad.dtype = DType::i32;
  testing::expect_error([&] { cuda::dense_to_csr(bad, out, ws.get(), nullptr); }, "dense", "uint8");
  bad = d;
  bad.stride = {48, 24, 8, 2};
  testing::expect_error([&] { cuda::dense_to_csr(bad, out, ws.get(), nullptr); }, "dense",
                        "contiguous");
  BlockMaskView small = out;
  small.col_indices.shape[0] = 23;
  testing::expect_error([&] { cuda::dense_to_csr(d, small, ws.get(), nullptr); },
                        "out.col_indices");
  small = out;
  small.num_k_blocks = 5;
  testing::expect_error([&] { cuda::dense_to_csr(d, small, ws.get(), nullptr); }, "out");
  testing::expect_error([&] { cuda::dense_to_csr(d, out, nullptr, nullptr); }, "workspace");
  cuda_ok(cudaDeviceSynchronize(), "dense_to_csr");
}

}  // namespace
}  // namespace spaattn::gpu_test
