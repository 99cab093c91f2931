// Conversions between the Python side and spaattn's C++ types: DLPack arrays (numpy, torch, any
// framework that exports DLPack) become TensorViews without copying, strings become enums.
// Every conversion error is a spaattn::Error naming the Python argument, so it reaches Python
// as a ValueError with the same wording as the library's own checks.
#pragma once
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "spaattn/spaattn.hpp"

namespace spaattn::python {

namespace nb = nanobind;

// Inputs are only read; outputs must be writable.
using In = nb::ndarray<nb::ro>;
using Out = nb::ndarray<>;
using Int32Array = nb::ndarray<nb::numpy, int32_t, nb::ndim<1>>;

// Moves a vector into a numpy array that owns it.
Int32Array to_numpy(std::vector<int32_t>&& values);

// A view of `array` (1 to 4 dims, dtype f32/f16/bf16/i32/u8/bool, cpu or cuda memory). DLPack
// strides are already in elements, as TensorView wants them.
TensorView to_view(const In& array, const char* name);
TensorView to_view(const Out& array, const char* name);
// An empty view for None.
TensorView to_view(const std::optional<In>& array, const char* name);
TensorView to_view(const std::optional<Out>& array, const char* name);

// A tensor's metadata as torch's fake (meta) tensors have it: shape, strides in elements, dtype
// and device by torch's names.
using Meta = std::tuple<std::vector<int64_t>, std::vector<int64_t>, std::string, std::string>;

// The TensorView of a tensor known by its metadata alone, at a placeholder address that is never
// read; host text lengths read zeros (a valid length) from `zeros`, sized here.
TensorView meta_view(const Meta& meta, const char* name, std::vector<int32_t>* zeros = nullptr);

// The arguments of a call known by the metadata of q, k, v and the text lengths (whose host
// values read as zeros from `zeros`), with the sequence layout.
AttentionArgs meta_args(const Meta& q, const Meta& k, const Meta& v,
                        const std::optional<Meta>& text_lengths, std::vector<int32_t>& zeros,
                        int64_t num_text, const std::string& placement, int block_size);

TextPlacement parse_placement(const std::string& name);
OrderKind parse_order(const std::string& name);
Selector parse_selector(const std::string& name);
// "wht" -> {'w', 'h', 't'}; the letters themselves are checked by the library.
std::array<char, 3> parse_axes(const std::string& axes);

// Sequence layout of a call: q's seq_len minus num_text video tokens.
Layout make_layout(const TensorView& q, int64_t num_text, const std::string& placement,
                   int block_size);

// Attention arguments; `text_lengths_host`, when given, is the host copy of device text lengths
// and is checked as the library checks host text lengths (device values are never read).
AttentionArgs make_args(const In& q, const In& k, const In& v,
                        const std::optional<In>& text_lengths,
                        const std::optional<In>& text_lengths_host, int64_t num_text,
                        const std::string& placement, int block_size, float scale);

inline void* to_stream(uintptr_t stream) { return reinterpret_cast<void*>(stream); }

}  // namespace spaattn::python
