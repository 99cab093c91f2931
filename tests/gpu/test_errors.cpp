// Invalid arguments of cuda::block_sparse_attention throw spaattn::Error naming the argument,
// before anything is launched (the poisoned output stays untouched).
#include <gtest/gtest.h>

#include <cstdlib>
#include <functional>
#include <memory>

#include "cpu/testing.hpp"
#include "cuda/attention/api.hpp"
#include "gpu_testing.hpp"

namespace spaattn::gpu_test {
namespace {

struct ErrorCase {
  test::Problem p;
  test::HostTensor out_h = test::make_tensor(DType::bf16, 1, 130, 2, 64);
  std::unique_ptr<DeviceTensor> q, k, v, out, lse;
  std::unique_ptr<DeviceMask> mask;
  AttentionArgs args;
  ErrorCase() {
    const Layout L{.num_video = 130, .num_text = 0, .block_size = 64};
    test::make_problem(p, DType::bf16, 1, 2, 64, L, 3);
    q = std::make_unique<DeviceTensor>(p.q);
    k = std::make_unique<DeviceTensor>(p.k);
    v = std::make_unique<DeviceTensor>(p.v);
    out_h.poison();
    out = std::make_unique<DeviceTensor>(out_h);
    lse = std::make_unique<DeviceTensor>(test::make_lse(1, 130, 2));
    mask = std::make_unique<DeviceMask>(std::vector<uint8_t>(2 * 3 * 3, 1), 1, 2, 3, 3);
    args = p.args;
    args.q = q->view;
    args.k = k->view;
    args.v = v->view;
  }
  void call(const AttentionArgs& a, const BlockMaskView& m, TensorView o, TensorView l) {
    cuda::block_sparse_attention(a, m, o, l, nullptr);
  }
};

TEST(AttentionErrors, NameTheArgument) {
  ErrorCase s;
  const TensorView out = s.out->view, lse = s.lse->view;
  const BlockMaskView mask = s.mask->view;
  auto expect =
      [&](std::function<void(AttentionArgs&, BlockMaskView&, TensorView&, TensorView&)> mutate,
          const std::string& arg, const std::string& detail) {
        AttentionArgs a = s.args;
        BlockMaskView m = mask;
        TensorView o = out, l = lse;
        mutate(a, m, o, l);
        testing::expect_error([&] { s.call(a, m, o, l); }, arg, detail);
      };
  expect([](auto& a, auto&, auto&, auto&) { a.q.shape[3] = a.k.shape[3] = a.v.shape[3] = 96; }, "q",
         "96");
  expect([](auto& a, auto&, auto&, auto&) { a.k.dtype = DType::f16; }, "k", "dtype");
  expect([](auto& a, auto&, auto& o,
            auto&) { a.q.dtype = a.k.dtype = a.v.dtype = o.dtype = DType::f32; },
         "q", "bfloat16 or float16");
  expect([](auto&, auto&, auto& o, auto&) { o.dtype = DType::f16; }, "out", "dtype");
  expect([](auto& a, auto&, auto&, auto&) { a.v.data = static_cast<char*>(a.v.data) + 2; }, "v",
         "16-byte");
  expect(
      [](auto& a, auto&, auto&, auto&) {
        a.k.stride[2] = 68;
        a.k.stride[1] = 136;
      },
      "k", "multiples of 8");
  expect([&](auto& a, auto&, auto&, auto&) { a.q.data = s.p.q.view.data; }, "q", "device memory");
  expect([](auto&, auto&, auto&, auto& l) { l.dtype = DType::bf16; }, "lse", "float32");
  expect([](auto&, auto& m, auto&, auto&) { m.num_q_blocks = 2; }, "mask", "blocks");
  expect([](auto& a, auto&, auto&, auto&) { a.layout.block_size = 32; }, "layout.block_size", "32");
  expect([](auto& a, auto&, auto&, auto&) { a.q.device = a.k.device = a.v.device = Device::cpu; },
         "out", "device");
  cuda_ok(cudaDeviceSynchronize(), "no launch");
  s.out->to_host(s.out_h);
  EXPECT_EQ(check_writes(s.out_h).unwritten, s.out_h.view.numel())
      << "a rejected call wrote to out";
  EXPECT_NO_THROW(s.call(s.args, mask, out, lse));
  cuda_ok(cudaDeviceSynchronize(), "valid call");
}

// The kernel family: an unknown SPAATTN_KERNEL and a forced Hopper family that cannot serve the
// call are errors naming the variable / the field, before any launch; an explicit family wins
// over the variable.
TEST(AttentionErrors, KernelFamilyChoice) {
  ErrorCase s;
  const TensorView out = s.out->view, lse = s.lse->view;
  const BlockMaskView mask = s.mask->view;
  struct Env {
    explicit Env(const char* v) { setenv("SPAATTN_KERNEL", v, 1); }
    ~Env() { unsetenv("SPAATTN_KERNEL"); }
  };
  {
    Env env("sm90");
    testing::expect_error([&] { s.call(s.args, mask, out, lse); }, "SPAATTN_KERNEL", "'sm90'");
    AttentionArgs a = s.args;
    a.kernel = KernelFamily::portable;
    EXPECT_NO_THROW(s.call(a, mask, out, lse));
  }
  // K and V read through a token order inside the kernel: the portable family only.
  std::vector<int32_t> perm(130);
  for (int i = 0; i < 130; ++i) perm[i] = 129 - i;
  DeviceBuffer d_perm(perm.size() * 4);
  d_perm.upload(perm.data(), d_perm.bytes());
  cuda_detail::FwdParams fp = cuda_detail::make_fwd_params(s.args, mask, out, lse);
  fp.video_perm = static_cast<const int32_t*>(d_perm.get());
  testing::expect_error(
      [&] { cuda_detail::launch_fwd(fp, DType::bf16, 64, 64, nullptr, KernelFamily::hopper); },
      "kernel", hopper_available() ? "token order" : "compute capability 9.0");
  EXPECT_EQ(cuda_detail::resolve_family(KernelFamily::automatic, fp), KernelFamily::portable);
  fp.kv_ordered = true;
  EXPECT_EQ(cuda_detail::resolve_family(KernelFamily::automatic, fp),
            hopper_available() ? KernelFamily::hopper : KernelFamily::portable);
  cuda_ok(cudaDeviceSynchronize(), "calls");
}

}  // namespace
}  // namespace spaattn::gpu_test
