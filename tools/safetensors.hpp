// A reader for safetensors files (the format of the testbed's q/k/v captures): an 8-byte
// little-endian header length, a JSON header naming each tensor's dtype, shape and byte range,
// then the raw little-endian data. Only what the format allows is accepted (known dtypes, shape
// products and byte counts that fit 64 bits, byte ranges that tile the data exactly, no repeated
// keys); every problem is an spaattn::Error naming the file, the tensor and the bad value.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace spaattn::tools {

struct StoredTensor {
  std::string dtype;           // as in the file: "BF16", "F16", "F32", "I32", ...
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;  // the tensor's data, little-endian, row-major
};

struct SafeTensors {
  std::string path;
  std::map<std::string, StoredTensor> tensors;
  std::map<std::string, std::string> metadata;  // the header's "__metadata__" (strings only)

  // The tensor `name` with the given dtype and rank; throws naming the file otherwise.
  const StoredTensor& get(const std::string& name, const std::string& dtype, size_t rank) const;
  // The metadata entry `key`; throws naming the file if absent.
  const std::string& meta(const std::string& key) const;
};

SafeTensors read_safetensors(const std::string& path);

// Parses a JSON array of integers, possibly nested ("[[5, 10], [5, 14]]" -> rows of numbers);
// throws spaattn::Error naming `what` for anything else.
std::vector<std::vector<int64_t>> parse_int_rows(const std::string& text, const std::string& what);
// Parses one JSON integer within int64 ("42"); throws spaattn::Error naming `what` for anything
// else (a fraction, an array, text after the number).
int64_t parse_int(const std::string& text, const std::string& what);

}  // namespace spaattn::tools
