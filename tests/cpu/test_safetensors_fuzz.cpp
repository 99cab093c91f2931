// Seeded mutation tests of the safetensors reader and of load_captured: valid captures, written
// byte by byte here, are corrupted (bytes flipped, header numbers made huge, negative or
// fractional, truncation, extension, dtypes, offsets, shapes whose element count wraps 64 bits,
// metadata, text lengths). Every input must either throw spaattn::Error or load into a
// consistent workload, whose calls then run through SparseAttention; any other exception, a
// crash or a sanitizer report fails the test.
#include <gtest/gtest.h>

#include <unistd.h>

#include <bit>
#include <cctype>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "checked_math.hpp"
#include "safetensors.hpp"
#include "testing.hpp"
#include "workload.hpp"

namespace spaattn::testing {
namespace {

using tools::load_captured;
using tools::read_safetensors;

// One tensor of a capture as it will be written; the *_text fields, when set, replace what the
// header would say for it, so a header can lie about a tensor whose bytes are still written.
struct Entry {
  std::string name, dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
  std::string shape_text, offsets_text;
};

struct Capture {
  std::vector<std::pair<std::string, std::string>> metadata;
  std::vector<Entry> entries;
};

std::string join(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

// A valid capture: grid t x h x w, `text` text tokens, batch b, `heads` heads of dim d, one
// q/k/v/text_lengths group per (layer, step) pair, bf16 values drawn from `rng`.
Capture make_capture(std::mt19937_64& rng, int64_t t, int64_t h, int64_t w, int64_t text,
                     int64_t b, int64_t heads, int64_t d,
                     const std::vector<std::pair<int, int>>& pairs) {
  Capture c;
  const int64_t nv = t * h * w, S = nv + text;
  std::string pair_text = "[";
  for (size_t i = 0; i < pairs.size(); ++i)
    pair_text += (i ? ", [" : "[") + std::to_string(pairs[i].first) + ", " +
                 std::to_string(pairs[i].second) + "]";
  c.metadata = {{"grid", join({t, h, w})},
                {"n_video", std::to_string(nv)},
                {"n_text", std::to_string(text)},
                {"pairs", pair_text + "]"},
                {"model_step", "42"}};
  std::normal_distribution<float> normal;
  for (const auto& [layer, step] : pairs) {
    const std::string prefix = "layer" + std::to_string(layer) + ".step" + std::to_string(step);
    for (const char* name : {".q", ".k", ".v"}) {
      Entry e{prefix + name, "BF16", {b, S, heads, d}, {}, {}, {}};
      e.bytes.resize(static_cast<size_t>(b * S * heads * d * 2));
      for (size_t i = 0; i < e.bytes.size(); i += 2) {
        const uint32_t bits = std::bit_cast<uint32_t>(normal(rng));
        e.bytes[i] = static_cast<uint8_t>(bits >> 16);
        e.bytes[i + 1] = static_cast<uint8_t>(bits >> 24);
      }
      c.entries.push_back(std::move(e));
    }
    Entry len{prefix + ".text_lengths", "I32", {b}, {}, {}, {}};
    for (int64_t i = 0; i < b; ++i) {
      const int32_t l = static_cast<int32_t>(std::uniform_int_distribution<int64_t>(0, text)(rng));
      const auto* p = reinterpret_cast<const uint8_t*>(&l);
      len.bytes.insert(len.bytes.end(), p, p + 4);
    }
    c.entries.push_back(std::move(len));
  }
  return c;
}

std::string quote(const std::string& s) {
  std::string out = "\"";
  for (const char ch : s) {
    if (ch == '"' || ch == '\\') out += '\\';
    out += ch;
  }
  return out + "\"";
}

std::string with_length(const std::string& header) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  return out + header;
}

// The file's bytes: 8-byte header length, JSON header, data in entry order.
std::string serialize(const Capture& c) {
  std::string header = "{\"__metadata__\": {";
  for (size_t i = 0; i < c.metadata.size(); ++i)
    header += (i ? ", " : "") + quote(c.metadata[i].first) + ": " + quote(c.metadata[i].second);
  header += "}";
  std::string data;
  for (const Entry& e : c.entries) {
    const size_t begin = data.size();
    data.append(e.bytes.begin(), e.bytes.end());
    const std::string offsets =
        "[" + std::to_string(begin) + ", " + std::to_string(data.size()) + "]";
    header += ", " + quote(e.name) + ": {\"dtype\": " + quote(e.dtype) + ", \"shape\": " +
              (e.shape_text.empty() ? join(e.shape) : e.shape_text) +
              ", \"data_offsets\": " + (e.offsets_text.empty() ? offsets : e.offsets_text) + "}";
  }
  return with_length(header + "}") + data;
}

std::string write_temp(const std::string& bytes) {
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("spaattn_fuzz_" + std::to_string(::getpid()) + ".safetensors"))
                               .string();
  // A new file each time: rewriting a truncated file makes ext4 flush it to disk (auto_da_alloc).
  std::filesystem::remove(path);
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

// Adds 2^k to shape[dim] with 2^k * (the other dims) * (element size) a multiple of 2^64, so a
// product computed modulo 2^64 still matches the bytes written; 0 if no such k keeps the shape
// within int64.
int64_t wrapping_increment(const std::vector<int64_t>& shape, size_t dim, int64_t elem) {
  uint64_t rest = static_cast<uint64_t>(elem);
  for (size_t i = 0; i < shape.size(); ++i)
    if (i != dim) rest *= static_cast<uint64_t>(shape[i]);
  if (rest == 0) return 0;
  const int k = 64 - std::countr_zero(rest);
  if (k > 62) return 0;
  return int64_t{1} << k;
}

const char* const kNastyNumbers[] = {
    "0", "1", "-1", "7", "2147483647", "2147483648", "4294967299", "9223372036854775807",
    "9223372036854775808", "-9223372036854775808", "18446744073709551616", "288230376151711745",
    "4611686018427387905", "99999999999999999999999", "1e3", "0.5", "6.0", "1E400", "-0", "00",
    "[]", "[1]", "\"7\"", "null", "true", "{}"};

const char* const kDtypes[] = {"BF16", "F16", "F32", "F64", "I32", "I64", "U8", "BOOL", "Q8", "",
                               "bf16", "F8_E4M3"};

const std::map<std::string, std::vector<std::string>> kMetadataValues = {
    {"grid",
     {"[2147483648, 1, 1]", "[65536, 65536, 2]", "[1625, 1625, 1625]", "[0, 2, 2]", "[1, 2]",
      "[[1], [2], [2]]", "[-1, -2, 2]", "[1.5, 2, 2]", "", "[1, 2, 2", "[1, 4, 1]", "{}"}},
    {"n_video", {"4", "[4]", "4.0", "-4", "9223372036854775807", "99999999999999999999", "", "3",
                 "[]", "4 4"}},
    {"n_text", {"2", "-1", "2147483647", "2147483648", "9223372036854775807", "1", "0", "[2]",
                "2.5", "\"2\""}},
    {"pairs", {"[[3, 7], [3, 7]]", "[[4294967299, 7]]", "[]", "[3, 7]", "[[3, 7, 1]]",
               "[[-3, 7]]", "[[3, 9], [3, 7], [5, 7]]", "[[3, 7]]", "[[2147483648, 7]]", "[[]]",
               "[[3, 1e1]]"}}};

enum Mutation {
  kFlipBytes, kFlipHeaderBytes, kHeaderNumber, kTruncate, kExtend, kDtype, kWrappingShape,
  kShape, kOffsets, kMetadata, kDropEntry, kTextLengths, kHeaderLength, kMutationCount
};
const char* const kMutationNames[kMutationCount] = {
    "flip-bytes", "flip-header-bytes", "header-number", "truncate", "extend", "dtype",
    "wrapping-shape", "shape", "offsets", "metadata", "drop-entry", "text-lengths",
    "header-length"};

struct Fuzzer {
  std::mt19937_64 rng;
  int counts[kMutationCount] = {};

  int64_t uniform(int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  }
  template <class T, size_t N>
  const T& pick(const T (&items)[N]) {
    return items[uniform(0, N - 1)];
  }

  // Changes the capture before it is written (what the header claims, or the data itself).
  void mutate_capture(Capture& c, Mutation m) {
    if (c.entries.empty()) return;
    Entry& e = c.entries[static_cast<size_t>(uniform(0, c.entries.size() - 1))];
    switch (m) {
      case kDtype:
        e.dtype = pick(kDtypes);
        break;
      case kWrappingShape: {
        const size_t dim = static_cast<size_t>(uniform(0, e.shape.size() - 1));
        std::vector<int64_t> shape = e.shape;
        const int64_t elem = e.dtype == "I32" ? 4 : 2;
        const int64_t inc = wrapping_increment(shape, dim, elem);
        if (inc == 0) break;
        shape[dim] += inc * uniform(1, (INT64_MAX - shape[dim]) / inc);
        e.shape_text = join(shape);
        break;
      }
      case kShape: {
        std::vector<std::string> dims;
        for (int64_t d : e.shape) dims.push_back(std::to_string(d));
        const int op = static_cast<int>(uniform(0, 3));
        if (op == 0) dims[static_cast<size_t>(uniform(0, dims.size() - 1))] = pick(kNastyNumbers);
        if (op == 1) dims.push_back("1");
        if (op == 2 && !dims.empty()) dims.pop_back();
        if (op == 3) std::swap(dims.front(), dims.back());
        e.shape_text = "[";
        for (size_t i = 0; i < dims.size(); ++i) e.shape_text += (i ? ", " : "") + dims[i];
        e.shape_text += "]";
        break;
      }
      case kOffsets: {
        size_t begin = 0;
        for (const Entry& x : c.entries) {
          if (&x == &e) break;
          begin += x.bytes.size();
        }
        const int64_t b = static_cast<int64_t>(begin);
        const int64_t end = b + static_cast<int64_t>(e.bytes.size());
        const int64_t shift = uniform(-70, 70);
        switch (uniform(0, 5)) {
          case 0: e.offsets_text = join({b + shift, end + shift}); break;
          case 1: e.offsets_text = join({end, b}); break;
          case 2: e.offsets_text = join({b, b}); break;
          case 3:
            e.offsets_text = "[" + std::to_string(b) + ", " + pick(kNastyNumbers) + "]";
            break;
          case 4: e.offsets_text = join({b}); break;
          default: e.offsets_text = join({b, end + shift}); break;
        }
        break;
      }
      case kMetadata: {
        if (c.metadata.empty()) break;
        const auto i = static_cast<size_t>(uniform(0, c.metadata.size() - 1));
        const auto it = kMetadataValues.find(c.metadata[i].first);
        if (it == kMetadataValues.end() || uniform(0, 9) == 0)
          c.metadata.erase(c.metadata.begin() + static_cast<std::ptrdiff_t>(i));
        else
          c.metadata[i].second = it->second[static_cast<size_t>(uniform(0, it->second.size() - 1))];
        break;
      }
      case kDropEntry:
        c.entries.erase(c.entries.begin() + (&e - c.entries.data()));
        break;
      case kTextLengths: {
        for (Entry& x : c.entries) {
          if (x.dtype != "I32" || x.bytes.size() < 4) continue;
          const int32_t values[] = {-1, 3, 100, INT32_MIN, INT32_MAX};
          const int32_t v = pick(values);
          std::memcpy(x.bytes.data(), &v, 4);
          break;
        }
        break;
      }
      default:
        break;
    }
  }

  // Changes the written bytes.
  void mutate_bytes(std::string& f, Mutation m) {
    uint64_t header_len = 0;
    for (int i = 7; i >= 0 && f.size() >= 8; --i)
      header_len = header_len << 8 | static_cast<uint8_t>(f[static_cast<size_t>(i)]);
    const bool framed = f.size() >= 8 && header_len <= f.size() - 8;
    switch (m) {
      case kFlipBytes:
      case kFlipHeaderBytes: {
        const size_t lo = m == kFlipHeaderBytes && framed ? 8 : 0;
        const size_t hi = m == kFlipHeaderBytes && framed ? 8 + header_len : f.size();
        if (hi <= lo) break;
        for (int n = static_cast<int>(uniform(1, 8)); n > 0; --n)
          f[static_cast<size_t>(uniform(lo, hi - 1))] ^= static_cast<char>(uniform(1, 255));
        break;
      }
      case kHeaderNumber: {
        if (!framed) break;
        std::string header = f.substr(8, header_len);
        std::vector<std::pair<size_t, size_t>> runs;  // [start, end) of digit runs
        for (size_t i = 0; i < header.size();) {
          if (!std::isdigit(static_cast<unsigned char>(header[i]))) {
            ++i;
            continue;
          }
          size_t j = i;
          while (j < header.size() && std::isdigit(static_cast<unsigned char>(header[j]))) ++j;
          runs.emplace_back(i, j);
          i = j;
        }
        if (runs.empty()) break;
        const auto [start, end] = runs[static_cast<size_t>(uniform(0, runs.size() - 1))];
        header.replace(start, end - start, pick(kNastyNumbers));
        const std::string data = f.substr(8 + header_len);
        // Mostly keep the length field right, so that the header is parsed at all.
        f = uniform(0, 4) ? with_length(header) + data : f.substr(0, 8) + header + data;
        break;
      }
      case kTruncate:
        f.resize(static_cast<size_t>(uniform(0, f.size() - 1)));
        break;
      case kExtend:
        for (int n = static_cast<int>(uniform(1, 64)); n > 0; --n)
          f.push_back(static_cast<char>(uniform(0, 255)));
        break;
      case kHeaderLength: {
        if (f.size() < 8) break;
        const uint64_t values[] = {0, 1, header_len - 1, header_len + 1, f.size(), f.size() - 8,
                                   UINT64_MAX, uint64_t{1} << 63, 100u << 20};
        const uint64_t v = pick(values);
        for (int i = 0; i < 8; ++i) f[static_cast<size_t>(i)] = static_cast<char>(v >> (8 * i));
        break;
      }
      default:
        break;
    }
  }
};

uint64_t dtype_size(const std::string& dtype) {
  const std::map<std::string, uint64_t> sizes = {
      {"F64", 8}, {"I64", 8}, {"U64", 8}, {"F32", 4}, {"I32", 4}, {"U32", 4}, {"F16", 2},
      {"BF16", 2}, {"I16", 2}, {"U16", 2}, {"I8", 1}, {"U8", 1}, {"BOOL", 1}, {"F8_E4M3", 1},
      {"F8_E5M2", 1}};
  const auto it = sizes.find(dtype);
  return it == sizes.end() ? 0 : it->second;
}

bool is_byte_mutation(Mutation m) {
  return m == kFlipBytes || m == kFlipHeaderBytes || m == kHeaderNumber || m == kTruncate ||
         m == kExtend || m == kHeaderLength;
}

// What a file that loads must satisfy, then every call through three methods. Returns whether
// all calls ran; an spaattn::Error from the core (e.g. an unsupported head_dim) ends the run.
bool check_and_run(const tools::CapturedWorkload& w) {
  EXPECT_FALSE(w.calls.empty());
  EXPECT_EQ(w.grid.size() + w.num_text, w.seq_len());
  const auto elems = static_cast<size_t>(w.batch * w.seq_len() * w.heads * w.head_dim);
  for (const auto& c : w.calls) {
    EXPECT_EQ(c.q.size(), elems);
    EXPECT_EQ(c.k.size(), elems);
    EXPECT_EQ(c.v.size(), elems);
    EXPECT_EQ(c.text_lengths.size(), static_cast<size_t>(w.batch));
    for (const int32_t l : c.text_lengths) {
      EXPECT_GE(l, 0);
      EXPECT_LE(l, w.num_text);
    }
  }
  try {
    for (const Method method : {Method::dense, Method::rectified, Method::rettention}) {
      Config cfg;
      cfg.method = method;
      cfg.block_size = 64;
      cfg.order = TokenOrder{.kind = OrderKind::gilbert, .grid = w.grid};
      cfg.select.sparsity = 0.5;
      SparseAttention sa(cfg);
      for (size_t i = 0; i < w.calls.size(); ++i) {
        std::vector<float> out(elems);
        sa.forward(w.info(i), w.args(i, 64),
                   TensorView::contiguous(out.data(), DType::f32,
                                          {w.batch, w.seq_len(), w.heads, w.head_dim}));
      }
    }
  } catch (const Error&) {
    return false;
  }
  return true;
}

TEST(SafetensorsFuzz, EveryMutatedCaptureLoadsOrThrowsSpaattnError) {
  Fuzzer fz{std::mt19937_64(0x5a7e75u)};
  int loaded = 0, ran = 0, rejected = 0, failures = 0;
  constexpr int kIterations = 3000;
  std::string path;
  for (int it = 0; it < kIterations && failures < 5; ++it) {
    // Shapes that the core accepts (d 64) and one it rejects (d 2), 1 to 3 (layer, step) calls.
    Capture c = fz.uniform(0, 3) == 0
                    ? make_capture(fz.rng, 1, 1, 3, 1, 2, 2, 64, {{0, 0}})
                : fz.uniform(0, 4) == 0
                    ? make_capture(fz.rng, 1, 2, 2, 2, 1, 1, 2, {{3, 7}, {3, 9}})
                    : make_capture(fz.rng, 1, 2, 2, 2, 1, 1, 64, {{3, 7}, {3, 9}, {5, 7}});
    std::string applied;
    const int n = it % 20 == 0 ? 0 : static_cast<int>(fz.uniform(1, 3));  // some stay valid
    std::vector<Mutation> byte_mutations;
    for (int k = 0; k < n; ++k) {
      const auto m = static_cast<Mutation>(fz.uniform(0, kMutationCount - 1));
      ++fz.counts[m];
      applied += std::string(" ") + kMutationNames[m];
      if (is_byte_mutation(m))
        byte_mutations.push_back(m);
      else
        fz.mutate_capture(c, m);
    }
    std::string bytes = serialize(c);
    for (const Mutation m : byte_mutations) fz.mutate_bytes(bytes, m);
    path = write_temp(bytes);
    SCOPED_TRACE(::testing::Message() << "iteration " << it << ", mutations" << applied);
    try {
      const tools::SafeTensors st = read_safetensors(path);
      for (const auto& [name, t] : st.tensors) {
        const auto count = tools::checked_product<int64_t>(t.shape);
        ASSERT_TRUE(count.has_value()) << name;
        EXPECT_EQ(t.bytes.size(), static_cast<uint64_t>(*count) * dtype_size(t.dtype)) << name;
      }
      const tools::CapturedWorkload w = load_captured(path);
      ++loaded;
      ran += check_and_run(w);
    } catch (const Error& e) {
      ++rejected;
      EXPECT_EQ(std::string(e.what()).rfind("workload", 0), 0u) << e.what();
    } catch (const std::exception& e) {
      ++failures;
      ADD_FAILURE() << "not an spaattn::Error: " << e.what();
    }
  }
  std::filesystem::remove(path);
  EXPECT_EQ(failures, 0);
  // The inputs reach every stage: some load and run, most are rejected, every mutation is used.
  EXPECT_GT(ran, kIterations / 50);
  EXPECT_GT(rejected, kIterations / 2);
  for (int m = 0; m < kMutationCount; ++m) EXPECT_GT(fz.counts[m], 50) << kMutationNames[m];
}

// The heap overflow this guards against: heads = 2^58 + 1 makes the element count of a
// [1, 6, H, 64] bf16 tensor wrap modulo 2^64 to exactly the bytes of one head.
TEST(SafetensorsFuzz, ShapeWhoseElementCountWrapsIsRejected) {
  std::mt19937_64 rng(7);
  Capture c = make_capture(rng, 1, 2, 2, 2, 1, 1, 64, {{3, 7}});
  for (Entry& e : c.entries)
    if (e.dtype == "BF16") e.shape_text = "[1, 6, 288230376151711745, 64]";
  const std::string path = write_temp(serialize(c));
  expect_error([&] { read_safetensors(path); }, "workload",
               "tensor 'layer3.step7.q' shape [1, 6, 288230376151711745, 64]: the element count "
               "overflows");
  expect_error([&] { load_captured(path); }, "workload", "overflows");
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace spaattn::testing
