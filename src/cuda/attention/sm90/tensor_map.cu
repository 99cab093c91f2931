// Tensor maps for the sm90 family's K and V copies, encoded through the driver entry point that
// the runtime hands out (no link against the driver library), and the build / device probe.
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <mutex>
#include <vector>

#include "cuda/attention/sm90/tensor_map.hpp"
#include "cuda/check.cuh"

namespace spaattn::cuda_detail::sm90 {
namespace {

PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult status{};
    SPAATTN_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000,
                                                        cudaEnableDefault, &status));
    if (status != cudaDriverEntryPointSuccess || !f)
      throw Error(Error::Kind::runtime, "cuTensorMapEncodeTiled: not provided by the driver");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

__global__ void probe_kernel() {}

}  // namespace

CUtensorMap make_kv_map(const void* data, const int64_t (&stride)[3], const FwdParams& p, int dim,
                        int rows, DType dtype, const char* name) {
  CUtensorMap map{};
  const cuuint64_t sizes[4] = {static_cast<cuuint64_t>(dim), static_cast<cuuint64_t>(p.seq_len),
                               static_cast<cuuint64_t>(p.heads), static_cast<cuuint64_t>(p.batch)};
  const cuuint64_t strides[3] = {static_cast<cuuint64_t>(stride[1]) * 2,
                                 static_cast<cuuint64_t>(stride[2]) * 2,
                                 static_cast<cuuint64_t>(stride[0]) * 2};
  const cuuint32_t box[4] = {64, static_cast<cuuint32_t>(rows), 1, 1};
  const cuuint32_t unit[4] = {1, 1, 1, 1};
  const CUresult r = encode_fn()(
      &map,
      dtype == DType::bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4,
      const_cast<void*>(data), sizes, strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE,
      CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  SPAATTN_CHECK_ARG(r == CUDA_SUCCESS, name,
                    "the copy engine cannot describe this tensor (cuTensorMapEncodeTiled error ",
                    static_cast<int>(r), "; strides ", stride[0], ", ", stride[1], ", ", stride[2],
                    ")");
  return map;
}

CUtensorMap make_fp8_map(const void* data, int64_t rows, int64_t bh, int row_bytes, int box_rows,
                         const char* name) {
  CUtensorMap map{};
  const cuuint64_t sizes[3] = {static_cast<cuuint64_t>(row_bytes), static_cast<cuuint64_t>(rows),
                               static_cast<cuuint64_t>(bh)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(row_bytes),
                                 static_cast<cuuint64_t>(rows) * row_bytes};
  const cuuint32_t box[3] = {static_cast<cuuint32_t>(row_bytes),
                             static_cast<cuuint32_t>(box_rows), 1};
  const cuuint32_t unit[3] = {1, 1, 1};
  const CUresult r = encode_fn()(&map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 3, const_cast<void*>(data),
                                 sizes, strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                 row_bytes == 128 ? CU_TENSOR_MAP_SWIZZLE_128B
                                                  : CU_TENSOR_MAP_SWIZZLE_64B,
                                 CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                 CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  SPAATTN_CHECK_ARG(r == CUDA_SUCCESS, name,
                    "the copy engine cannot describe this FP8 array (cuTensorMapEncodeTiled "
                    "error ",
                    static_cast<int>(r), "; ", rows, " rows, ", bh, " (batch, head) pairs)");
  return map;
}

int resident_ctas(int per_sm) {
  int device = 0, sms = 0;
  SPAATTN_CUDA_CHECK(cudaGetDevice(&device));
  SPAATTN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms * per_sm;
}

bool kernels_available() {
  int device = 0;
  SPAATTN_CUDA_CHECK(cudaGetDevice(&device));
  static std::mutex mutex;
  static std::vector<int> known;  // per device: -1 unknown, 0 no, 1 yes
  std::lock_guard<std::mutex> lock(mutex);
  if (static_cast<int>(known.size()) <= device) known.resize(device + 1, -1);
  if (known[device] < 0) {
    int major = 0, minor = 0;
    SPAATTN_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    SPAATTN_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
    // The code the runtime picks for this device: 90 only when the build holds sm_90a.
    cudaFuncAttributes attr{};
    SPAATTN_CUDA_CHECK(cudaFuncGetAttributes(&attr, probe_kernel));
    known[device] = major == 9 && minor == 0 && attr.binaryVersion == 90 ? 1 : 0;
  }
  return known[device] == 1;
}

}  // namespace spaattn::cuda_detail::sm90
