// Sequence, block and mask structure shared by every stage (docs/methods.md, Sequence and
// blocks, Block-sparse attention).
#pragma once
#include <cstdint>
#include <string_view>
#include <vector>

#include "spaattn/tensor.hpp"

namespace spaattn {

enum class TextPlacement : uint8_t { suffix, prefix };  // HunyuanVideo/MMDiT: suffix; CogVideoX: prefix

// Where the video and text tokens sit in the sequence, and how they are cut into blocks.
// Logical block ids put the video blocks first (0 .. NV-1) and the text blocks after them
// (NV .. NV+NT-1) whatever the placement; block_begin() maps a block to its tokens.
struct Layout {
  int64_t num_video = 0;  // N_v
  int64_t num_text = 0;   // N_t
  TextPlacement text_placement = TextPlacement::suffix;
  int block_size = 128;   // B

  int64_t seq_len() const { return num_video + num_text; }
  int64_t num_video_blocks() const { return (num_video + block_size - 1) / block_size; }  // NV
  int64_t num_text_blocks() const { return (num_text + block_size - 1) / block_size; }
  int64_t num_blocks() const { return num_video_blocks() + num_text_blocks(); }
  int64_t video_offset() const { return text_placement == TextPlacement::prefix ? num_text : 0; }
  int64_t text_offset() const { return text_placement == TextPlacement::prefix ? 0 : num_video; }
  bool is_text_block(int64_t j) const { return j >= num_video_blocks(); }
  // Sequence index of the first token of logical block j.
  int64_t block_begin(int64_t j) const {
    return is_text_block(j) ? text_offset() + (j - num_video_blocks()) * block_size
                            : video_offset() + j * block_size;
  }
  // Real token count n_j of block j (the last video / text block may be partial). For a text
  // block, padding tokens beyond L_t are still counted here; see valid_count().
  int64_t block_count(int64_t j) const {
    const int64_t first = is_text_block(j) ? (j - num_video_blocks()) * block_size : j * block_size;
    const int64_t total = is_text_block(j) ? num_text : num_video;
    const int64_t n = total - first;
    return n < block_size ? n : block_size;
  }
  // Tokens of block j that may be attended to given L_t valid text tokens.
  int64_t valid_count(int64_t j, int64_t text_len) const {
    if (!is_text_block(j)) return block_count(j);
    const int64_t first = (j - num_video_blocks()) * block_size;
    const int64_t n = text_len - first;
    return n <= 0 ? 0 : (n < block_count(j) ? n : block_count(j));
  }
};

// Arguments of one attention call. q, k, v: [b, S, H, d], any strides on the first three dims,
// unit stride on d, all of one dtype and device.
// Which kernel family computes the block-sparse attention on the GPU.
//   automatic: hopper where it applies (a compute capability 9.0 device, a build with sm_90a code,
//              K and V rows not read through a token order inside the kernel), portable
//              otherwise; the environment variable SPAATTN_KERNEL (auto, portable, hopper) may
//              force one instead.
//   portable:  the mma.sync kernel (sm_80 and later).
//   hopper:    the wgmma / TMA kernel (sm_90a); a call it cannot serve throws, naming why.
// An explicit portable / hopper wins over SPAATTN_KERNEL.
enum class KernelFamily : uint8_t { automatic, portable, hopper };
const char* to_string(KernelFamily f);
// Parses "auto", "portable", "hopper"; throws naming `arg`.
KernelFamily parse_kernel_family(std::string_view name, const char* arg = "kernel");

struct AttentionArgs {
  TensorView q, k, v;
  // Optional contiguous int32 [b], L_t per batch item; empty: all N_t valid. Host values outside
  // [0, N_t] are errors; device values are not read on the host (no synchronisation) and are
  // clamped to [0, N_t] by the GPU stages.
  TensorView text_lengths;
  Layout layout;
  float scale = 0.f;        // 0: 1/sqrt(d)
  KernelFamily kernel = KernelFamily::automatic;  // GPU only

  int64_t batch() const { return q.shape[0]; }
  int64_t seq_len() const { return q.shape[1]; }
  int64_t heads() const { return q.shape[2]; }
  int64_t head_dim() const { return q.shape[3]; }
  float softmax_scale() const;
  // L_t of batch item b (reads text_lengths, which must then be host memory).
  int64_t text_len(int64_t b) const;
};

// Validates q/k/v/text_lengths/layout (docs/choices.md, Arguments and errors); throws
// spaattn::Error naming the argument. `out` / `lse`, when given, are checked against q
// ([b,S,H,d] and f32 [b,S,H]).
void validate(const AttentionArgs& args, const TensorView* out = nullptr,
              const TensorView* lse = nullptr);

// What the GPU path asks of q, k, v and out beyond validate(), from their metadata alone: CUDA
// tensors of one dtype, bfloat16 or float16, with batch, sequence and head strides that are
// multiples of 8 elements (16-byte rows for the kernels' vector loads). Where the memory lies and
// the alignment of the base pointers are checked when the call runs.
void validate_gpu_operands(const AttentionArgs& args, const TensorView& out);

// The most entries a CSR block mask can hold: its offsets are int32.
inline constexpr int64_t kMaxMaskEntries = (int64_t{1} << 31) - 1;

// Block mask as per-row index lists (CSR). Row r = (batch * heads + head) * num_q_blocks + i
// lists the key blocks of query block i in ascending order in
// col_indices[row_offsets[r] .. row_offsets[r + 1]). Blocks are logical ids (Layout).
struct BlockMaskView {
  int64_t batch = 0, heads = 0, num_q_blocks = 0, num_k_blocks = 0;
  TensorView row_offsets;  // int32 [batch * heads * num_q_blocks + 1]
  TensorView col_indices;  // int32 [nnz]
};

// Host-owned CSR block mask.
struct BlockMask {
  int64_t batch = 0, heads = 0, num_q_blocks = 0, num_k_blocks = 0;
  std::vector<int32_t> row_offsets;  // size rows() + 1
  std::vector<int32_t> col_indices;

  int64_t rows() const { return batch * heads * num_q_blocks; }
  int64_t row(int64_t b, int64_t h, int64_t i) const { return (b * heads + h) * num_q_blocks + i; }
  // A view of this mask (the kernels only read it).
  BlockMaskView view() const;
  // Every key block for every query block.
  static BlockMask full(int64_t batch, int64_t heads, int64_t num_q_blocks, int64_t num_k_blocks);
  // From a dense boolean matrix [batch, heads, num_q_blocks, num_k_blocks] (nonzero = selected).
  static BlockMask from_dense(const uint8_t* dense, int64_t batch, int64_t heads,
                              int64_t num_q_blocks, int64_t num_k_blocks);
  std::vector<uint8_t> to_dense() const;
  // Share of (query token, key token) pairs the mask computes, counting real tokens per block
  // (n_i * n_j), over all rows; 1.0 for a full mask.
  double density(const Layout& layout) const;
};

// Validates a mask against the call it is used with (dims, sorted in-range unique indices on the
// host); throws spaattn::Error naming "mask".
void validate(const BlockMaskView& mask, const AttentionArgs& args);

}  // namespace spaattn
