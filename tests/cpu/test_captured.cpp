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

uint16_t to_bf16(float x) {
  uint32_t u = 0;
  std::memcpy(&u, &x, 4);
  return static_cast<uint16_t>((u + 0x7fff + ((u >> 16) & 1)) >> 16);
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
      const uint16_t b = to_bf16(0.25f * static_cast<float>(i) - 3.0f);
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
  EXPECT_EQ(w.calls[0].k[0], to_bf16(0.25f * 12 - 3.0f));  // k's data starts at element 12
  const AttentionArgs a = w.args(0, 64);
  EXPECT_EQ(a.seq_len(), 6);
  EXPECT_EQ(a.q.dtype, DType::bf16);
  std::filesystem::remove(path);
}

TEST(Safetensors, MalformedFilesAreRejectedNamingTheProblem) {
  const std::vector<uint8_t> data = TinyCapture{}.data();
  auto expect_bad = [&](const std::string& header, const std::string& detail,
                        const std::vector<uint8_t>& bytes) {
    const std::string path = write_file("bad.safetensors", header, bytes);
    expect_error([&] { load_captured(path); }, "workload", detail);
    std::filesystem::remove(path);
  };
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

}  // namespace
}  // namespace spaattn::testing
