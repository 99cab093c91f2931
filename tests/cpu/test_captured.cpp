// The captured workload: the safetensors reader (round trip, every malformed-file error) and the
// Q/K/V captured from the testbed model (data/testbed_qkv.safetensors), on which the CPU path
// is checked against a float64 reference and the methods are compared.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "reference.hpp"
#include "safetensors.hpp"
#include "testing.hpp"
#include "workload.hpp"

namespace spaattn::testing {
namespace {

using tools::load_captured;
using tools::read_safetensors;

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          ("spaattn_test_" + std::to_string(::getpid()) + "_" + name))
      .string();
}

// Writes a safetensors file: header length, `header`, then `data`.
std::string write_file(const std::string& name, const std::string& header,
                       const std::vector<uint8_t>& data) {
  const std::string path = temp_path(name);
  std::ofstream f(path, std::ios::binary);
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) f.put(static_cast<char>((n >> (8 * i)) & 0xff));
  f << header;
  f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  return path;
}

// A capture of one (layer, step) pair: grid 1x2x2, 2 text tokens, batch 1, 1 head, d 2.
struct TinyCapture {
  std::string meta = R"("__metadata__": {"grid": "[1, 2, 2]", "n_video": "4", "n_text": "2",
                        "pairs": "[[3, 7]]", "model_step": "42"})";
  std::string q_shape = "[1, 6, 1, 2]";
  int32_t text_len = 1;
  std::string header() const {
    return "{" + meta + R"(, "layer3.step7.q": {"dtype": "BF16", "shape": )" + q_shape +
           R"(, "data_offsets": [0, 24]},
      "layer3.step7.k": {"dtype": "BF16", "shape": [1, 6, 1, 2], "data_offsets": [24, 48]},
      "layer3.step7.v": {"dtype": "BF16", "shape": [1, 6, 1, 2], "data_offsets": [48, 72]},
      "layer3.step7.text_lengths": {"dtype": "I32", "shape": [1], "data_offsets": [72, 76]}})";
  }
  std::vector<uint8_t> data() const {
    std::vector<uint8_t> d(76);
    for (int i = 0; i < 36; ++i) {
      const uint16_t b = bf16(0.25f * static_cast<float>(i) - 3.0f).bits;
      std::memcpy(&d[2 * i], &b, 2);
    }
    std::memcpy(&d[72], &text_len, 4);
    return d;
  }
};

TEST(Safetensors, RoundTrip) {
  const TinyCapture c;
  const std::string path = write_file("ok.safetensors", c.header(), c.data());
  const auto st = read_safetensors(path);
  EXPECT_EQ(st.metadata.at("model_step"), "42");
  EXPECT_EQ(st.tensors.size(), 4u);
  const auto w = load_captured(path);
  EXPECT_EQ(w.grid.t, 1);
  EXPECT_EQ(w.grid.h, 2);
  EXPECT_EQ(w.num_text, 2);
  EXPECT_EQ(w.batch, 1);
  EXPECT_EQ(w.heads, 1);
  EXPECT_EQ(w.head_dim, 2);
  ASSERT_EQ(w.calls.size(), 1u);
  EXPECT_EQ(w.calls[0].layer, 3);
  EXPECT_EQ(w.calls[0].step, 7);
  EXPECT_EQ(w.calls[0].text_lengths, std::vector<int32_t>{1});
  EXPECT_EQ(w.calls[0].k[0], bf16(0.25f * 12 - 3.0f).bits);  // k's data starts at element 12
  const AttentionArgs a = w.args(0, 64);
  EXPECT_EQ(a.seq_len(), 6);
  EXPECT_EQ(a.q.dtype, DType::bf16);
  std::filesystem::remove(path);
}

// Writes a capture with this header and these bytes and expects load_captured to refuse it,
// naming `detail`.
void expect_bad(const std::string& header, const std::string& detail,
                const std::vector<uint8_t>& bytes) {
  const std::string path = write_file("bad.safetensors", header, bytes);
  expect_error([&] { load_captured(path); }, "workload", detail);
  std::filesystem::remove(path);
}

TEST(Safetensors, MalformedFilesAreRejectedNamingTheProblem) {
  const std::vector<uint8_t> data = TinyCapture{}.data();
  expect_error([] { load_captured(temp_path("missing.safetensors")); }, "workload", "cannot open");
  {
    const std::string path = temp_path("short.safetensors");
    std::ofstream(path, std::ios::binary) << "abc";
    expect_error([&] { read_safetensors(path); }, "workload", "8-byte header length");
    std::filesystem::remove(path);
  }
  TinyCapture c;
  expect_bad(c.header().substr(0, 40), "invalid JSON", data);
  expect_bad(c.header(), "do not hold", std::vector<uint8_t>(data.begin(), data.begin() + 70));
  c.q_shape = "[1, 6, 1, 3]";
  expect_bad(c.header(), "do not hold", data);
  c = TinyCapture{};
  c.meta = R"("__metadata__": {"grid": "[1, 2, 2]", "n_video": "4", "n_text": "2"})";
  expect_bad(c.header(), "no metadata entry 'pairs'", data);
  c.meta = R"("__metadata__": {"grid": "[1, 2, 3]", "n_video": "4", "n_text": "2", "pairs": "[[3, 7]]"})";
  expect_bad(c.header(), "n_video", data);
  c.meta = R"("__metadata__": {"grid": "[1, 2, 2]", "n_video": "4", "n_text": "2", "pairs": "[[3, 8]]"})";
  expect_bad(c.header(), "no tensor 'layer3.step8.q'", data);
  c = TinyCapture{};
  c.text_len = 3;
  expect_bad(c.header(), "expected values in [0, 2], got 3", c.data());
  c = TinyCapture{};
  std::string h = c.header();
  h.replace(h.find("\"I32\""), 5, "\"F32\"");
  expect_bad(h, "expected I32 of rank 1, got F32", data);
}

// Every number from the file is checked before it is used: shape products, byte counts and
// offsets in 64 bits, and what load_captured later narrows to int / int32 against that range.
TEST(Safetensors, SizesAndNumbersAreCheckedBeforeUse) {
  const std::vector<uint8_t> data = TinyCapture{}.data();
  auto replaced = [](std::string h, const std::string& from, const std::string& to) {
    const size_t at = h.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return h.replace(at, from.size(), to);
  };
  const std::string h = TinyCapture{}.header();
  auto with_meta = [&](const std::string& key, const std::string& value) {
    TinyCapture c;
    std::string meta = R"("__metadata__": {"grid": "[1, 2, 2]", "n_video": "4", "n_text": "2",
                          "pairs": "[[3, 7]]"})";
    const size_t at = meta.find("\"" + key + "\": \"") + key.size() + 5;
    meta.replace(at, meta.find('"', at) - at, value);
    c.meta = meta;
    return c.header();
  };

  // 6 * (2^62 + 1) * 2 elements of 2 bytes wrap modulo 2^64 to the 24 bytes written for q.
  TinyCapture wrap;
  wrap.q_shape = "[1, 6, 4611686018427387905, 2]";
  expect_bad(wrap.header(),
             "tensor 'layer3.step7.q' shape [1, 6, 4611686018427387905, 2]: the element count "
             "overflows 64-bit integers",
             data);
  // 2^61 elements fit, their 2^64 bytes do not.
  expect_bad(replaced(h, R"("shape": [1], "data_offsets": [72, 76]})",
                      R"("shape": [1], "data_offsets": [72, 76]},
                         "big": {"dtype": "F64", "shape": [2305843009213693952],
                                 "data_offsets": [76, 76]})"),
             "tensor 'big' shape [2305843009213693952]: 2305843009213693952 elements of F64 "
             "overflow 64-bit byte counts",
             data);
  expect_bad(replaced(h, "[72, 76]", "[72, 99999999999999999999]"),
             "tensor 'layer3.step7.text_lengths': data_offsets must be integers >= 0, got "
             "99999999999999999999",
             data);
  expect_bad(replaced(h, "[72, 76]", "[-4, 76]"), "data_offsets must be integers >= 0, got -4",
             data);
  expect_bad(replaced(h, "[72, 76]", "[72, 76.0]"),
             "data_offsets must be integers >= 0, got 76.0", data);
  expect_bad(replaced(h, "[72, 76]", "[72]"),
             "data_offsets must be [begin, end], got an array of 1", data);
  const std::string k_shape = R"([1, 6, 1, 2], "data_offsets": [24)";
  expect_bad(replaced(h, k_shape, R"([1, 6, 1e0, 2], "data_offsets": [24)"),
             "tensor 'layer3.step7.k': shape entries must be integers >= 0, got 1e0", data);
  expect_bad(replaced(h, k_shape, R"([1, 6, -1, 2], "data_offsets": [24)"),
             "shape entries must be integers >= 0, got -1", data);
  expect_bad(replaced(h, "\"I32\"", "\"Q7\""),
             "tensor 'layer3.step7.text_lengths': unknown dtype 'Q7'", data);
  expect_bad(replaced(h, "\"I32\"", "7"), "unknown dtype 7", data);
  // The byte ranges must tile the data: no shared bytes, none left over.
  expect_bad(replaced(h, "[24, 48]", "[20, 44]"),
             "tensor 'layer3.step7.k': data_offsets [20, 44) overlap the data of another tensor",
             data);
  std::vector<uint8_t> longer = data;
  longer.resize(80);
  expect_bad(h, "data bytes [76, 80) belong to no tensor", longer);
  expect_bad(replaced(h, "\"layer3.step7.v\"", "\"layer3.step7.k\""),
             "key 'layer3.step7.k' appears twice", data);
  expect_bad(replaced(h, "\"layer3.step7.v\"", "\"layer3.step7.\\uZZZZ\""),
             "expected four hex digits after \\u", data);

  // Metadata: sizes within int32, single integers, (layer, step) pairs in int and unique.
  expect_bad(with_meta("grid", "[2147483648, 1, 1]"),
             "metadata 'grid': expected [T, H, W] with sizes in [1, 2147483647], got "
             "[2147483648, 1, 1]",
             data);
  expect_bad(with_meta("grid", "[65536, 65536, 2]"),
             "metadata 'grid' [65536, 65536, 2]: T*H*W exceeds 2147483647 tokens", data);
  expect_bad(with_meta("n_video", "[4]"), "metadata 'n_video': expected an integer, got '[4]'",
             data);
  expect_bad(with_meta("n_video", "[]"), "metadata 'n_video': expected an integer, got '[]'",
             data);
  expect_bad(with_meta("n_text", "2147483647"),
             "n_video + n_text = 4 + 2147483647 exceeds 2147483647 tokens", data);
  expect_bad(with_meta("n_text", "-1"),
             "metadata 'n_text': expected an integer in [0, 2147483647], got -1", data);
  // 4294967299 = 2^32 + 3 would name layer 3 once narrowed to int.
  expect_bad(with_meta("pairs", "[[4294967299, 7]]"),
             "metadata 'pairs': expected [[layer, step], ...] in [0, 2147483647], got "
             "[[4294967299, 7]]",
             data);
  expect_bad(with_meta("pairs", "[[3, 7], [3, 7]]"), "metadata 'pairs': [3, 7] appears twice",
             data);
  // Every q/k/v dimension is checked, not only the ones compared with the metadata.
  TinyCapture no_heads;
  no_heads.meta = R"("__metadata__": {"grid": "[1, 2, 2]", "n_video": "4", "n_text": "2",
                     "pairs": "[[3, 7]]"})";
  const std::string zero_heads = "{" + no_heads.meta + R"(,
      "layer3.step7.q": {"dtype": "BF16", "shape": [1, 6, 0, 2], "data_offsets": [0, 0]},
      "layer3.step7.k": {"dtype": "BF16", "shape": [1, 6, 1, 2], "data_offsets": [0, 24]},
      "layer3.step7.v": {"dtype": "BF16", "shape": [1, 6, 1, 2], "data_offsets": [24, 48]},
      "layer3.step7.text_lengths": {"dtype": "I32", "shape": [1], "data_offsets": [48, 52]}})";
  expect_bad(zero_heads,
             "tensor 'layer3.step7.q' shape [1, 6, 0, 2]: expected heads in [1, 2147483647], "
             "got 0",
             std::vector<uint8_t>(data.begin() + 24, data.end()));
}

// The captured testbed workload shipped with the repository (it must be there: no skip).
const tools::CapturedWorkload& testbed() {
  static const tools::CapturedWorkload w = load_captured(SPAATTN_DEFAULT_WORKLOAD);
  return w;
}

TEST(TestbedWorkload, HasTheTestbedShapes) {
  const auto& w = testbed();
  EXPECT_EQ(w.grid.t, 32);
  EXPECT_EQ(w.grid.h, 16);
  EXPECT_EQ(w.grid.w, 16);
  EXPECT_GE(w.grid.size(), 8192);
  EXPECT_EQ(w.num_text, 32);
  EXPECT_EQ(w.head_dim, 64);
  EXPECT_GE(w.heads, 1);
  ASSERT_GE(w.calls.size(), 2u);
  for (const auto& c : w.calls) {
    for (int32_t l : c.text_lengths) {
      EXPECT_GE(l, 1);  // captured from conditional items: a caption is there
      EXPECT_LE(l, 32);
    }
    double sum = 0, sq = 0;
    for (size_t e = 0; e < c.q.size(); ++e) {
      const float x = load_as_float(c.q.data(), DType::bf16, static_cast<int64_t>(e));
      ASSERT_TRUE(std::isfinite(x));
      sum += x;
      sq += static_cast<double>(x) * x;
    }
    const double n = static_cast<double>(c.q.size());
    EXPECT_GT(sq / n - (sum / n) * (sum / n), 1e-3);  // not constant
  }
}

// Output of `method` on every call, each layer's calls run in order as one denoising run.
std::vector<std::vector<float>> run_method(Method method, double sparsity,
                                           std::vector<CallStats>* stats = nullptr,
                                           Selector selector = Selector::automatic) {
  const auto& w = testbed();
  Config cfg;
  cfg.method = method;
  cfg.block_size = 128;
  cfg.order = TokenOrder{.kind = OrderKind::gilbert, .grid = w.grid};
  cfg.select.sparsity = sparsity;
  cfg.select.neighbours = false;
  cfg.select.selector = selector;
  SparseAttention sa(cfg);
  std::vector<std::vector<float>> outs;
  for (size_t i = 0; i < w.calls.size(); ++i) {
    std::vector<float> out(w.calls[i].q.size(), std::nanf(""));
    const CallStats st = sa.forward(
        w.info(i), w.args(i, 128),
        TensorView::contiguous(out.data(), DType::f32, {w.batch, w.seq_len(), w.heads, w.head_dim}));
    if (stats) stats->push_back(st);
    outs.push_back(std::move(out));
  }
  return outs;
}

double rel_error(const std::vector<float>& x, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    num += (static_cast<double>(x[i]) - ref[i]) * (static_cast<double>(x[i]) - ref[i]);
    den += static_cast<double>(ref[i]) * ref[i];
  }
  return std::sqrt(num / den);
}

TEST(TestbedWorkload, DenseMatchesFloat64OnSampledRows) {
  const auto& w = testbed();
  const auto dense = run_method(Method::dense, 0.0);
  const int64_t S = w.seq_len(), H = w.heads, D = w.head_dim, NV = w.grid.size();
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  for (size_t i = 0; i < w.calls.size(); ++i) {
    const auto& c = w.calls[i];
    double worst = 0;
    for (int64_t b = 0; b < w.batch; ++b) {
      const int64_t valid = NV + c.text_lengths[static_cast<size_t>(b)];
      auto at = [&](const std::vector<uint16_t>& t, int64_t n, int64_t h, int64_t e) {
        return static_cast<double>(load_as_float(t.data(), DType::bf16, ((b * S + n) * H + h) * D + e));
      };
      for (int64_t h = 0; h < H; ++h) {
        for (int64_t n = 0; n < S; n += 37) {  // rows of every block kind: video, text, padding
          std::vector<double> o(static_cast<size_t>(D), 0.0), logits(static_cast<size_t>(valid));
          if (n < valid) {
            double mx = -1e300, sum = 0;
            for (int64_t m = 0; m < valid; ++m) {
              double dot = 0;
              for (int64_t e = 0; e < D; ++e) dot += at(c.q, n, h, e) * at(c.k, m, h, e);
              logits[static_cast<size_t>(m)] = scale * dot;
              mx = std::max(mx, logits[static_cast<size_t>(m)]);
            }
            for (int64_t m = 0; m < valid; ++m) {
              const double p = std::exp(logits[static_cast<size_t>(m)] - mx);
              sum += p;
              for (int64_t e = 0; e < D; ++e) o[static_cast<size_t>(e)] += p * at(c.v, m, h, e);
            }
            for (auto& x : o) x /= sum;
          }
          for (int64_t e = 0; e < D; ++e) {
            const double got = dense[i][static_cast<size_t>(((b * S + n) * H + h) * D + e)];
            worst = std::max(worst, std::fabs(got - o[static_cast<size_t>(e)]));
          }
        }
      }
    }
    EXPECT_LT(worst, 1e-4) << "call " << i;  // fp32 sums over 8,224 keys against float64
  }
}

// On learned attention the corrections do what they are for: with the same selection, Rectified
// SpaAttn's R, C lower the error of plain block-sparse attention (IPAR selection), and
// Re-ttention's cached statistics lower the error of plain block-sparse attention over the same
// band mask; Re-ttention's reference step is full attention.
TEST(TestbedWorkload, CorrectionsLowerTheErrorOfBlockSparseAttention) {
  const auto& w = testbed();
  const auto dense = run_method(Method::dense, 0.0);
  for (const double sparsity : {0.75, 0.9}) {
    std::vector<CallStats> sparse_stats, rett_stats;
    const auto sparse = run_method(Method::sparse, sparsity, &sparse_stats);
    const auto rectified = run_method(Method::rectified, sparsity);
    const auto band = run_method(Method::sparse, sparsity, nullptr, Selector::band);
    const auto rett = run_method(Method::rettention, sparsity, &rett_stats);
    for (size_t i = 0; i < w.calls.size(); ++i) {
      const double e_sparse = rel_error(sparse[i], dense[i]);
      const double e_rect = rel_error(rectified[i], dense[i]);
      const double e_band = rel_error(band[i], dense[i]);
      const double e_rett = rel_error(rett[i], dense[i]);
      SCOPED_TRACE(::testing::Message() << "sparsity " << sparsity << ", layer " << w.calls[i].layer
                                        << ", step " << w.calls[i].step);
      EXPECT_LT(sparse_stats[i].density, 1.0 - sparsity + 0.05);
      EXPECT_GT(e_sparse, 0.01);
      EXPECT_LT(e_rect, e_sparse);
      if (rett_stats[i].kind == CallStats::Kind::reference) {
        EXPECT_LT(e_rett, 1e-5);
      } else {
        EXPECT_EQ(rett_stats[i].kind, CallStats::Kind::sparse);
        EXPECT_LT(e_rett, e_band);
      }
    }
  }
}

}  // namespace
}  // namespace spaattn::testing
