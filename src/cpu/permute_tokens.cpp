// Host gather/scatter of the video tokens of a [b, S, H, d] tensor into or out of a token order
// (docs/methods.md): the CPU counterpart of the GPU permutation, exact for every dtype
// since it moves element bytes and never converts.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "cpu/order_checks.hpp"
#include "cpu/parallel.hpp"
#include "spaattn/error.hpp"
#include "spaattn/order.hpp"

namespace spaattn {
namespace {

void check_view(const TensorView& v, const char* arg) {
  SPAATTN_CHECK_ARG(v.rank == 4, arg, "expected rank 4 [b, S, H, d], got rank ", v.rank);
  SPAATTN_CHECK_ARG(v.device == Device::cpu, arg, "expected host memory, got ",
                    to_string(v.device));
  for (int i = 0; i < 4; ++i)
    SPAATTN_CHECK_ARG(v.shape[i] >= 0, arg, "expected non-negative shape, got dim ", i, " = ",
                      v.shape[i]);
}

// Byte range [lo, hi) spanned by the elements of a non-empty view, for any stride signs.
std::pair<uintptr_t, uintptr_t> byte_range(const TensorView& v) {
  int64_t lo = 0, hi = 0;
  for (int i = 0; i < 4; ++i) {
    const int64_t reach = (v.shape[i] - 1) * v.stride[i];
    (reach < 0 ? lo : hi) += reach;
  }
  const auto es = static_cast<int64_t>(element_size(v.dtype));
  const auto base = reinterpret_cast<uintptr_t>(v.data);
  return {base + lo * es, base + (hi + 1) * es};
}

// Copies `count` elements of one dtype width between strided rows.
template <class T>
void copy_row(const std::byte* src, int64_t src_stride, std::byte* dst, int64_t dst_stride,
              int64_t count) {
  for (int64_t k = 0; k < count; ++k)
    std::memcpy(dst + k * dst_stride * sizeof(T), src + k * src_stride * sizeof(T), sizeof(T));
}

}  // namespace

void permute_tokens(const TensorView& src, TensorView dst, std::span<const int32_t> perm,
                    int64_t video_offset, bool inverse) {
  check_view(src, "src");
  check_view(dst, "dst");
  SPAATTN_CHECK_ARG(dst.dtype == src.dtype, "dst", "expected dtype ", to_string(src.dtype),
                    " like src, got ", to_string(dst.dtype));
  SPAATTN_CHECK_ARG(dst.shape == src.shape, "dst", "expected shape [", src.shape[0], ", ",
                    src.shape[1], ", ", src.shape[2], ", ", src.shape[3], "] like src, got [",
                    dst.shape[0], ", ", dst.shape[1], ", ", dst.shape[2], ", ", dst.shape[3], "]");
  const int64_t S = src.shape[1];
  SPAATTN_CHECK_ARG(video_offset >= 0 && video_offset <= S, "video_offset",
                    "expected 0 <= video_offset <= S = ", S, ", got ", video_offset);
  const auto n = static_cast<int64_t>(perm.size());
  SPAATTN_CHECK_ARG(n <= S - video_offset, "perm", "expected at most S - video_offset = ",
                    S - video_offset, " entries, got ", n);
  cpu::check_permutation(perm, "perm");
  const int64_t tokens = src.shape[0] * S, row = src.shape[2] * src.shape[3];
  if (tokens == 0 || row == 0) return;
  SPAATTN_CHECK_ARG(src.data != nullptr, "src", "expected data for ", tokens * row, " elements");
  SPAATTN_CHECK_ARG(dst.data != nullptr, "dst", "expected data for ", tokens * row, " elements");
  const auto [src_lo, src_hi] = byte_range(src);
  const auto [dst_lo, dst_hi] = byte_range(dst);
  SPAATTN_CHECK_ARG(dst_hi <= src_lo || src_hi <= dst_lo, "dst",
                    "expected memory disjoint from src (the copy is out of place)");

  // from[s]: the src token that lands in dst token s. A scatter is the gather by the inverse,
  // so both run as one loop over dst tokens, whose writes never collide across threads.
  std::vector<int64_t> from(static_cast<size_t>(S));
  for (int64_t s = 0; s < S; ++s) from[s] = s;
  for (int64_t k = 0; k < n; ++k) {
    if (inverse)
      from[video_offset + perm[k]] = video_offset + k;
    else
      from[video_offset + k] = video_offset + perm[k];
  }

  const size_t es = element_size(src.dtype);
  const auto* src_base = static_cast<const std::byte*>(src.data);
  auto* dst_base = static_cast<std::byte*>(dst.data);
  const int64_t H = src.shape[2], d = src.shape[3];
  const bool dense_rows = src.stride[3] == 1 && dst.stride[3] == 1;
  auto copy_token = [&](int64_t i) {
    const int64_t bi = i / S, s = i % S;
    for (int64_t h = 0; h < H; ++h) {
      const std::byte* from_row =
          src_base + (bi * src.stride[0] + from[s] * src.stride[1] + h * src.stride[2]) * es;
      std::byte* to_row = dst_base + (bi * dst.stride[0] + s * dst.stride[1] + h * dst.stride[2]) * es;
      if (dense_rows) {
        std::memcpy(to_row, from_row, static_cast<size_t>(d) * es);
      } else if (es == 1) {
        copy_row<uint8_t>(from_row, src.stride[3], to_row, dst.stride[3], d);
      } else if (es == 2) {
        copy_row<uint16_t>(from_row, src.stride[3], to_row, dst.stride[3], d);
      } else if (es == 4) {
        copy_row<uint32_t>(from_row, src.stride[3], to_row, dst.stride[3], d);
      } else {
        for (int64_t k = 0; k < d; ++k)
          std::memcpy(to_row + k * dst.stride[3] * es, from_row + k * src.stride[3] * es, es);
      }
    }
  };
  // Threads only pay off past a few thousand elements per worker.
  cpu::parallel_for(tokens, copy_token, std::max<int64_t>(1, 16384 / row));
}

}  // namespace spaattn
