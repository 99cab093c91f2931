// TensorView helpers and the host-side f16 conversion.
#include "spaattn/tensor.hpp"

#include <bit>

#include "spaattn/error.hpp"

namespace spaattn {

const char* to_string(DType dt) {
  switch (dt) {
    case DType::f32: return "float32";
    case DType::f16: return "float16";
    case DType::bf16: return "bfloat16";
    case DType::i32: return "int32";
    case DType::u8: return "uint8";
  }
  return "unknown";
}

const char* to_string(Device dev) { return dev == Device::cpu ? "cpu" : "cuda"; }

size_t element_size(DType dt) {
  switch (dt) {
    case DType::f32: case DType::i32: return 4;
    case DType::f16: case DType::bf16: return 2;
    case DType::u8: return 1;
  }
  return 0;
}

TensorView TensorView::contiguous(void* data, DType dtype, std::initializer_list<int64_t> shape,
                                  Device device) {
  SPAATTN_CHECK_ARG(shape.size() >= 1 && shape.size() <= 4, "shape",
                    "expected 1 to 4 dimensions, got ", shape.size());
  TensorView t;
  t.data = data;
  t.dtype = dtype;
  t.device = device;
  t.rank = static_cast<int>(shape.size());
  int i = 0;
  for (int64_t s : shape) t.shape[i++] = s;
  int64_t stride = 1;
  for (int d = t.rank - 1; d >= 0; --d) {
    t.stride[d] = stride;
    stride *= t.shape[d];
  }
  return t;
}

int64_t TensorView::numel() const {
  int64_t n = rank > 0 ? 1 : 0;
  for (int d = 0; d < rank; ++d) n *= shape[d];
  return n;
}

bool TensorView::is_contiguous() const {
  int64_t expected = 1;
  for (int d = rank - 1; d >= 0; --d) {
    if (shape[d] != 1 && stride[d] != expected) return false;
    expected *= shape[d];
  }
  return true;
}

int64_t TensorView::offset(std::initializer_list<int64_t> idx) const {
  int64_t off = 0;
  int d = 0;
  for (int64_t i : idx) off += i * stride[d++];
  return off;
}

// f16 <-> f32 by bit manipulation, round to nearest even, with subnormals, inf and NaN.
f16::f16(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) { bits = static_cast<uint16_t>(sign | 0x7e00u); return; }
  if (abs >= 0x477ff000u) { bits = static_cast<uint16_t>(sign | 0x7c00u); return; }  // rounds to inf
  if (abs < 0x38800000u) {  // subnormal or zero in half: scale into the integer mantissa
    const float scaled = std::bit_cast<float>(abs) * 16777216.0f;  // * 2^24
    uint32_t m = static_cast<uint32_t>(scaled);
    const float rem = scaled - static_cast<float>(m);
    if (rem > 0.5f || (rem == 0.5f && (m & 1u))) ++m;
    bits = static_cast<uint16_t>(sign | m);
    return;
  }
  uint32_t h = ((abs - 0x38000000u) >> 13);
  const uint32_t rest = abs & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  bits = static_cast<uint16_t>(sign | h);
}

f16::operator float() const {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exp = (bits >> 10) & 0x1fu;
  const uint32_t mant = bits & 0x3ffu;
  if (exp == 0) {
    const float f = static_cast<float>(mant) * 5.9604644775390625e-8f;  // 2^-24
    return sign ? -f : f;
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));
  return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (mant << 13));
}

float load_as_float(const void* base, DType dt, int64_t i) {
  switch (dt) {
    case DType::f32: return static_cast<const float*>(base)[i];
    case DType::bf16: return static_cast<float>(static_cast<const bf16*>(base)[i]);
    case DType::f16: return static_cast<float>(static_cast<const f16*>(base)[i]);
    default:
      throw Error(Error::Kind::invalid_argument,
                  detail::concat("dtype: expected a floating type, got ", to_string(dt)));
  }
}

void store_from_float(void* base, DType dt, int64_t i, float value) {
  switch (dt) {
    case DType::f32: static_cast<float*>(base)[i] = value; return;
    case DType::bf16: static_cast<bf16*>(base)[i] = bf16(value); return;
    case DType::f16: static_cast<f16*>(base)[i] = f16(value); return;
    default:
      throw Error(Error::Kind::invalid_argument,
                  detail::concat("dtype: expected a floating type, got ", to_string(dt)));
  }
}

}  // namespace spaattn
