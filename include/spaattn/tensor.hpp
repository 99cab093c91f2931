// Non-owning views over caller memory (host or CUDA device), and the small numeric types.
#pragma once
#include <array>
#include <cstdint>
#include <cstring>
#include <initializer_list>

namespace spaattn {

enum class DType : uint8_t { f32, f16, bf16, i32, u8 };
enum class Device : uint8_t { cpu, cuda };

const char* to_string(DType dt);
const char* to_string(Device dev);
size_t element_size(DType dt);

// A strided view of up to 4 dimensions. Strides are in elements, not bytes.
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::f32;
  Device device = Device::cpu;
  int rank = 0;
  std::array<int64_t, 4> shape{};
  std::array<int64_t, 4> stride{};

  // Row-major contiguous view.
  static TensorView contiguous(void* data, DType dtype, std::initializer_list<int64_t> shape,
                               Device device = Device::cpu);
  bool empty() const { return data == nullptr; }
  int64_t numel() const;
  bool is_contiguous() const;
  // Offset (in elements) of the element with the given indices (missing trailing indices = 0).
  int64_t offset(std::initializer_list<int64_t> idx) const;
  template <class T>
  T* ptr() const { return static_cast<T*>(data); }
};

// IEEE half and bfloat16 storage types with round-to-nearest-even conversion (host side).
struct bf16 {
  uint16_t bits = 0;
  bf16() = default;
  explicit bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
      bits = static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
    } else {
      u += 0x7fffu + ((u >> 16) & 1u);
      bits = static_cast<uint16_t>(u >> 16);
    }
  }
  explicit operator float() const {
    uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

struct f16 {
  uint16_t bits = 0;
  f16() = default;
  explicit f16(float f);
  explicit operator float() const;
};

// Read element i (a flat element offset) of a view of any floating dtype as float.
float load_as_float(const void* base, DType dt, int64_t i);
// Write a float into element i of a floating-point buffer, rounding to the buffer's dtype.
void store_from_float(void* base, DType dt, int64_t i, float value);

}  // namespace spaattn
