// Entry point of the GPU tests: without a CUDA device they report "not run" (exit code 77,
// which CTest maps to "Not Run") instead of passing. SPAATTN_KERNEL (auto, portable, hopper)
// picks the kernel family every call without an explicit one runs; the GPU check runs the suite
// once per family.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>

#include "cuda/attention/sm90/tensor_map.hpp"
#include "gpu_testing.hpp"

namespace spaattn::gpu_test {
bool hopper_available() { return cuda_detail::sm90::kernels_available(); }
}  // namespace spaattn::gpu_test

int main(int argc, char** argv) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("no CUDA device: GPU tests not run\n");
    return 77;
  }
  const char* env = std::getenv("SPAATTN_KERNEL");
  std::printf("kernel family: SPAATTN_KERNEL=%s, Hopper family %s\n", env ? env : "(unset)",
              spaattn::gpu_test::hopper_available() ? "available" : "not available");
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
