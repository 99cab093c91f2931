// DLPack arrays to TensorViews, and the string options of the Python API.
#include "views.hpp"

#include <algorithm>
#include <iterator>
#include <string_view>
#include <utility>

namespace spaattn::python {
namespace {

namespace dl = nb::dlpack;

// DLPack dtype -> spaattn dtype; bool (one byte per element) reads as u8.
DType to_dtype(dl::dtype dt, const char* name) {
  const auto code = static_cast<dl::dtype_code>(dt.code);
  if (dt.lanes == 1) {
    if (code == dl::dtype_code::Float && dt.bits == 32) return DType::f32;
    if (code == dl::dtype_code::Float && dt.bits == 16) return DType::f16;
    if (code == dl::dtype_code::Bfloat && dt.bits == 16) return DType::bf16;
    if (code == dl::dtype_code::Int && dt.bits == 32) return DType::i32;
    if (code == dl::dtype_code::UInt && dt.bits == 8) return DType::u8;
    if (code == dl::dtype_code::Bool && dt.bits == 8) return DType::u8;
  }
  static constexpr const char* kCodes[] = {"int", "uint", "float", "opaque", "bfloat", "complex",
                                           "bool"};
  const std::string kind = dt.code < 7 ? kCodes[dt.code] : "code " + std::to_string(dt.code);
  // The dtypes the argument may have: q, k, v, out and lse are floating point, indices int32.
  const std::string_view arg(name);
  const char* allowed = arg == "q" || arg == "k" || arg == "v" || arg == "out" || arg == "lse"
                            ? "float32, bfloat16 or float16"
                        : arg == "src" || arg == "dst"
                            ? "float32, bfloat16, float16, int32, uint8 or bool"
                        : arg == "mask" ? "bool, uint8 or int32"
                                        : "int32";
  SPAATTN_CHECK_ARG(false, name, "expected dtype ", allowed, ", got ", kind,
                    static_cast<int>(dt.bits));
  return DType::f32;
}

Device to_device(int device_type, const char* name) {
  if (device_type == nb::device::cpu::value) return Device::cpu;
  if (device_type == nb::device::cuda::value) return Device::cuda;
  SPAATTN_CHECK_ARG(false, name, "expected a cpu or cuda tensor, got DLPack device type ",
                    device_type);
  return Device::cpu;
}

template <class Array>
TensorView view_of(const Array& a, const char* name) {
  SPAATTN_CHECK_ARG(a.ndim() >= 1 && a.ndim() <= 4, name, "expected 1 to 4 dimensions, got ",
                    a.ndim());
  // Frameworks may give empty arrays no memory; a placeholder address (never read) lets the
  // library's shape checks report the empty dimension instead of a null pointer.
  alignas(16) static char empty_placeholder[16];
  TensorView t;
  t.data = const_cast<void*>(static_cast<const void*>(a.data()));
  if (t.data == nullptr && a.size() == 0) t.data = empty_placeholder;
  t.dtype = to_dtype(a.dtype(), name);
  t.device = to_device(a.device_type(), name);
  t.rank = static_cast<int>(a.ndim());
  // Frameworks report arbitrary strides for dims of extent 1, and for every dim of an array
  // with no elements (numpy gives those zero strides); such strides never move to an element,
  // so they are replaced by the contiguous ones rather than failing the stride checks.
  const bool no_elements = a.size() == 0;
  int64_t contiguous = 1;
  for (int d = t.rank - 1; d >= 0; --d) {
    t.shape[d] = static_cast<int64_t>(a.shape(d));
    t.stride[d] = t.shape[d] == 1 || no_elements || !a.stride_ptr() ? contiguous : a.stride(d);
    contiguous *= t.shape[d];
  }
  return t;
}

}  // namespace

TensorView to_view(const In& array, const char* name) { return view_of(array, name); }
TensorView to_view(const Out& array, const char* name) { return view_of(array, name); }
TensorView to_view(const std::optional<In>& array, const char* name) {
  return array ? view_of(*array, name) : TensorView{};
}
TensorView to_view(const std::optional<Out>& array, const char* name) {
  return array ? view_of(*array, name) : TensorView{};
}

Int32Array to_numpy(std::vector<int32_t>&& values) {
  auto* owned = new std::vector<int32_t>(std::move(values));
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<std::vector<int32_t>*>(p); });
  return Int32Array(owned->data(), {owned->size()}, owner);
}

TensorView meta_view(const Meta& meta, const char* name, std::vector<int32_t>* zeros) {
  const auto& [shape, strides, dtype, device] = meta;
  SPAATTN_CHECK_ARG(shape.size() >= 1 && shape.size() <= 4 && strides.size() == shape.size(), name,
                    "expected 1 to 4 dimensions, got ", shape.size());
  static const std::pair<const char*, DType> kDtypes[] = {
      {"float32", DType::f32}, {"bfloat16", DType::bf16}, {"float16", DType::f16},
      {"int32", DType::i32},   {"uint8", DType::u8},      {"bool", DType::u8}};
  TensorView t;
  const auto found = std::find_if(std::begin(kDtypes), std::end(kDtypes),
                                  [&](const auto& d) { return dtype == d.first; });
  const bool lengths = std::string_view(name) == "text_lengths";
  SPAATTN_CHECK_ARG(found != std::end(kDtypes), name, "expected dtype ",
                    lengths ? "int32" : "float32, bfloat16 or float16", ", got ", dtype);
  t.dtype = found->second;
  SPAATTN_CHECK_ARG(device == "cpu" || device == "cuda", name,
                    "expected a cpu or cuda tensor, got device ", device);
  t.device = device == "cuda" ? Device::cuda : Device::cpu;
  t.rank = static_cast<int>(shape.size());
  alignas(256) static char placeholder[256];
  t.data = placeholder;
  if (zeros && t.device == Device::cpu) {
    const int64_t n = shape[0];
    SPAATTN_CHECK_ARG(n >= 0 && n <= (int64_t{1} << 24), name, "expected at most 2^24 entries, got ",
                      n);
    zeros->assign(static_cast<size_t>(std::max<int64_t>(n, 1)), 0);
    t.data = zeros->data();
  }
  for (int d = 0; d < t.rank; ++d) {
    t.shape[d] = shape[d];
    t.stride[d] = strides[d];
  }
  // As for DLPack arrays: strides of extent-1 dims and of empty tensors never move.
  int64_t contiguous = 1;
  for (int d = t.rank - 1; d >= 0; --d) {
    if (t.shape[d] == 1 || t.numel() == 0) t.stride[d] = contiguous;
    contiguous *= t.shape[d];
  }
  return t;
}

AttentionArgs meta_args(const Meta& q, const Meta& k, const Meta& v,
                        const std::optional<Meta>& text_lengths, std::vector<int32_t>& zeros,
                        int64_t num_text, const std::string& placement, int block_size) {
  AttentionArgs args;
  args.q = meta_view(q, "q");
  args.k = meta_view(k, "k");
  args.v = meta_view(v, "v");
  if (text_lengths) args.text_lengths = meta_view(*text_lengths, "text_lengths", &zeros);
  args.layout = make_layout(args.q, num_text, placement, block_size);
  return args;
}

TextPlacement parse_placement(const std::string& name) {
  if (name == "suffix") return TextPlacement::suffix;
  if (name == "prefix") return TextPlacement::prefix;
  SPAATTN_CHECK_ARG(false, "text_placement", "expected 'suffix' or 'prefix', got '", name, "'");
  return TextPlacement::suffix;
}

OrderKind parse_order(const std::string& name) {
  if (name == "raster") return OrderKind::raster;
  if (name == "gilbert") return OrderKind::gilbert;
  if (name == "tiles") return OrderKind::tiles;
  SPAATTN_CHECK_ARG(false, "order", "expected 'raster', 'gilbert' or 'tiles', got '", name, "'");
  return OrderKind::raster;
}

Selector parse_selector(const std::string& name) {
  for (Selector s : {Selector::automatic, Selector::ipar, Selector::band, Selector::local})
    if (name == to_string(s)) return s;
  SPAATTN_CHECK_ARG(false, "selector", "expected 'automatic', 'ipar', 'band' or 'local', got '",
                    name, "'");
  return Selector::automatic;
}

std::array<char, 3> parse_axes(const std::string& axes) {
  SPAATTN_CHECK_ARG(axes.size() == 3, "axes",
                    "expected three letters, a permutation of 'w', 'h' and 't', got '", axes, "'");
  return {axes[0], axes[1], axes[2]};
}

Layout make_layout(const TensorView& q, int64_t num_text, const std::string& placement,
                   int block_size) {
  // Checked before num_video = seq_len - num_text can overflow.
  SPAATTN_CHECK_ARG(num_text >= 0, "num_text", "expected a value >= 0, got ", num_text);
  Layout layout;
  layout.num_text = num_text;
  layout.num_video = (q.rank >= 2 ? q.shape[1] : 0) - num_text;
  layout.text_placement = parse_placement(placement);
  layout.block_size = block_size;
  return layout;
}

AttentionArgs make_args(const In& q, const In& k, const In& v,
                        const std::optional<In>& text_lengths,
                        const std::optional<In>& text_lengths_host, int64_t num_text,
                        const std::string& placement, int block_size, float scale) {
  AttentionArgs args;
  args.q = to_view(q, "q");
  args.k = to_view(k, "k");
  args.v = to_view(v, "v");
  args.text_lengths = to_view(text_lengths, "text_lengths");
  args.layout = make_layout(args.q, num_text, placement, block_size);
  args.scale = scale;
  if (text_lengths_host) {
    AttentionArgs host = args;
    host.q.device = host.k.device = host.v.device = Device::cpu;
    host.text_lengths = to_view(*text_lengths_host, "text_lengths");
    validate(host);  // reads only the shapes of q, k, v and the host text lengths
  }
  return args;
}

}  // namespace spaattn::python
