#include "safetensors.hpp"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <fstream>
#include <memory>
#include <set>
#include <utility>

#include "checked_math.hpp"
#include "spaattn/error.hpp"

namespace spaattn::tools {
namespace {

// A JSON value: just enough of JSON for safetensors headers (objects, arrays, strings, integers).
struct Json {
  enum class Kind { object, array, string, number, boolean, null } kind = Kind::null;
  std::vector<std::pair<std::string, Json>> members;  // object, in file order
  std::vector<Json> items;                            // array
  std::string text;                                   // string; a number's text as written
  double number = 0;
  bool is_integer = false;                            // written as an integer that fits int64
  int64_t integer = 0;
};

class Parser {
 public:
  Parser(const std::string& text, std::string what) : s_(text), what_(std::move(what)) {}

  Json document() {
    Json v = value(0);
    skip_space();
    fail_if(pos_ != s_.size(), "unexpected text after the JSON value");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw Error(Error::Kind::invalid_argument,
                detail::concat(what_, ": invalid JSON at byte ", pos_, ": ", why));
  }
  void fail_if(bool bad, const char* why) const {
    if (bad) fail(why);
  }
  void skip_space() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\r' ||
                                s_[pos_] == '\t'))
      ++pos_;
  }
  char peek() {
    skip_space();
    fail_if(pos_ >= s_.size(), "unexpected end");
    return s_[pos_];
  }
  void expect(char c) {
    if (peek() != c) fail(detail::concat("expected '", c, "'"));
    ++pos_;
  }

  Json value(int depth) {
    fail_if(depth > 32, "nested too deeply");
    const char c = peek();
    Json v;
    if (c == '{') {
      v.kind = Json::Kind::object;
      ++pos_;
      if (peek() == '}') {
        ++pos_;
        return v;
      }
      std::set<std::string> keys;  // a repeated key would make the entry ambiguous
      while (true) {
        std::string key = string();
        if (!keys.insert(key).second) fail(detail::concat("key '", key, "' appears twice"));
        expect(':');
        v.members.emplace_back(std::move(key), value(depth + 1));
        if (peek() == ',') {
          ++pos_;
          continue;
        }
        expect('}');
        return v;
      }
    }
    if (c == '[') {
      v.kind = Json::Kind::array;
      ++pos_;
      if (peek() == ']') {
        ++pos_;
        return v;
      }
      while (true) {
        v.items.push_back(value(depth + 1));
        if (peek() == ',') {
          ++pos_;
          continue;
        }
        expect(']');
        return v;
      }
    }
    if (c == '"') {
      v.kind = Json::Kind::string;
      v.text = string();
      return v;
    }
    for (const char* word : {"true", "false", "null"}) {
      const size_t n = std::strlen(word);
      if (s_.compare(pos_, n, word) == 0) {
        pos_ += n;
        v.kind = word[0] == 'n' ? Json::Kind::null : Json::Kind::boolean;
        v.number = word[0] == 't';
        return v;
      }
    }
    return number();
  }

  Json number() {
    const size_t start = pos_;
    bool integer = true;
    if (pos_ < s_.size() && s_[pos_] == '-') ++pos_;
    while (pos_ < s_.size()) {
      const char c = s_[pos_];
      if (c >= '0' && c <= '9') {
        ++pos_;
      } else if (c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-') {
        integer = false;
        ++pos_;
      } else {
        break;
      }
    }
    fail_if(pos_ == start || (pos_ == start + 1 && s_[start] == '-'), "expected a value");
    Json v;
    v.kind = Json::Kind::number;
    v.text = s_.substr(start, pos_ - start);
    const char* first = v.text.data();
    const char* last = first + v.text.size();
    char* end = nullptr;
    v.number = std::strtod(first, &end);
    fail_if(end != last, "malformed number");
    if (integer) {  // integers beyond int64 stay numbers that are not integers
      const auto [ptr, ec] = std::from_chars(first, last, v.integer);
      v.is_integer = ec == std::errc() && ptr == last;
    }
    return v;
  }

  unsigned hex4() {
    fail_if(pos_ + 4 > s_.size(), "short \\u escape");
    unsigned cp = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = s_[pos_++];
      const int digit = c >= '0' && c <= '9'   ? c - '0'
                        : c >= 'a' && c <= 'f' ? c - 'a' + 10
                        : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                               : -1;
      fail_if(digit < 0, "expected four hex digits after \\u");
      cp = cp << 4 | static_cast<unsigned>(digit);
    }
    return cp;
  }

  std::string string() {
    expect('"');
    std::string out;
    while (true) {
      fail_if(pos_ >= s_.size(), "unterminated string");
      const char c = s_[pos_++];
      if (c == '"') return out;
      if (c != '\\') {
        out.push_back(c);
        continue;
      }
      fail_if(pos_ >= s_.size(), "unterminated escape");
      const char e = s_[pos_++];
      switch (e) {
        case '"': case '\\': case '/': out.push_back(e); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'u': {
          const unsigned cp = hex4();
          if (cp < 0x80) {
            out.push_back(static_cast<char>(cp));
          } else if (cp < 0x800) {  // UTF-8; surrogate pairs are kept as two code units
            out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
            out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
          } else {
            out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
            out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
            out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
          }
          break;
        }
        default: fail("unknown escape");
      }
    }
  }

  const std::string& s_;
  std::string what_;
  size_t pos_ = 0;
};

size_t dtype_size(const std::string& dtype) {
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL" || dtype == "F8_E4M3" || dtype == "F8_E5M2")
    return 1;
  return 0;
}

// How a JSON value reads in an error message: numbers as written, strings quoted.
std::string describe(const Json& v) {
  switch (v.kind) {
    case Json::Kind::number: return v.text;
    case Json::Kind::string: return "'" + v.text + "'";
    case Json::Kind::array: return detail::concat("an array of ", v.items.size());
    case Json::Kind::object: return "an object";
    case Json::Kind::boolean: return v.number != 0 ? "true" : "false";
    case Json::Kind::null: return "null";
  }
  return "a value";
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += detail::concat(i ? ", " : "", shape[i]);
  return s + "]";
}

}  // namespace

const StoredTensor& SafeTensors::get(const std::string& name, const std::string& dtype,
                                     size_t rank) const {
  const auto it = tensors.find(name);
  SPAATTN_CHECK_ARG(it != tensors.end(), "workload", path, ": no tensor '", name, "'");
  SPAATTN_CHECK_ARG(it->second.dtype == dtype && it->second.shape.size() == rank, "workload", path,
                    ": tensor '", name, "': expected ", dtype, " of rank ", rank, ", got ",
                    it->second.dtype, " of rank ", it->second.shape.size());
  return it->second;
}

const std::string& SafeTensors::meta(const std::string& key) const {
  const auto it = metadata.find(key);
  SPAATTN_CHECK_ARG(it != metadata.end(), "workload", path, ": no metadata entry '", key, "'");
  return it->second;
}

SafeTensors read_safetensors(const std::string& path) {
  SafeTensors st;
  st.path = path;
  std::ifstream f(path, std::ios::binary);
  SPAATTN_CHECK_ARG(f.good(), "workload", "cannot open '", path, "'");
  f.seekg(0, std::ios::end);
  const std::streamoff end_pos = f.tellg();
  SPAATTN_CHECK_ARG(f.good() && end_pos >= 0, "workload", path, ": cannot read the file size");
  const auto file_size = static_cast<uint64_t>(end_pos);
  f.seekg(0);
  uint8_t len_bytes[8] = {};
  f.read(reinterpret_cast<char*>(len_bytes), 8);
  SPAATTN_CHECK_ARG(f.good() && file_size >= 8, "workload", path,
                    ": not a safetensors file (shorter than its 8-byte header length)");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = header_len << 8 | len_bytes[i];
  SPAATTN_CHECK_ARG(header_len >= 2 && header_len <= file_size - 8 && header_len < (100u << 20),
                    "workload", path, ": header length ", header_len, " does not fit a file of ",
                    file_size, " bytes");
  std::string header(static_cast<size_t>(header_len), '\0');
  f.read(header.data(), static_cast<std::streamsize>(header_len));
  SPAATTN_CHECK_ARG(f.good(), "workload", path, ": cannot read the header");
  // Below 2^63: the file size came from a (signed) stream offset.
  const auto data_size = static_cast<int64_t>(file_size - 8 - header_len);

  const Json doc = Parser(header, "workload: " + path).document();
  SPAATTN_CHECK_ARG(doc.kind == Json::Kind::object, "workload", path,
                    ": the header is not a JSON object");
  struct Range {
    int64_t begin, end;
    const std::string* name;
  };
  std::vector<Range> ranges;
  for (const auto& [name, entry] : doc.members) {
    SPAATTN_CHECK_ARG(entry.kind == Json::Kind::object, "workload", path, ": entry '", name,
                      "' is not an object");
    if (name == "__metadata__") {
      for (const auto& [key, value] : entry.members) {
        SPAATTN_CHECK_ARG(value.kind == Json::Kind::string, "workload", path, ": metadata '", key,
                          "' is not a string, got ", describe(value));
        st.metadata[key] = value.text;
      }
      continue;
    }
    StoredTensor t;
    const Json* dtype = nullptr;
    const Json* shape = nullptr;
    const Json* offsets = nullptr;
    for (const auto& [key, value] : entry.members) {
      if (key == "dtype") dtype = &value;
      if (key == "shape") shape = &value;
      if (key == "data_offsets") offsets = &value;
    }
    SPAATTN_CHECK_ARG(dtype && shape && offsets, "workload", path, ": tensor '", name,
                      "' needs a dtype, a shape and data_offsets");
    SPAATTN_CHECK_ARG(dtype->kind == Json::Kind::string && dtype_size(dtype->text) > 0, "workload",
                      path, ": tensor '", name, "': unknown dtype ", describe(*dtype));
    t.dtype = dtype->text;
    const auto elem = static_cast<int64_t>(dtype_size(t.dtype));
    SPAATTN_CHECK_ARG(shape->kind == Json::Kind::array, "workload", path, ": tensor '", name,
                      "': shape must be an array, got ", describe(*shape));
    for (const Json& d : shape->items) {
      SPAATTN_CHECK_ARG(d.kind == Json::Kind::number && d.is_integer && d.integer >= 0, "workload",
                        path, ": tensor '", name, "': shape entries must be integers >= 0, got ",
                        describe(d));
      t.shape.push_back(d.integer);
    }
    const std::string shape_text = detail::concat("tensor '", name, "' shape ", shape_str(t.shape));
    const auto count = checked_product<int64_t>(t.shape);
    SPAATTN_CHECK_ARG(count.has_value(), "workload", path, ": ", shape_text,
                      ": the element count overflows 64-bit integers");
    const auto bytes = checked_mul(*count, elem);
    SPAATTN_CHECK_ARG(bytes.has_value(), "workload", path, ": ", shape_text, ": ", *count,
                      " elements of ", t.dtype, " overflow 64-bit byte counts");
    SPAATTN_CHECK_ARG(offsets->kind == Json::Kind::array && offsets->items.size() == 2, "workload",
                      path, ": tensor '", name, "': data_offsets must be [begin, end], got ",
                      describe(*offsets));
    for (const Json& o : offsets->items)
      SPAATTN_CHECK_ARG(o.kind == Json::Kind::number && o.is_integer && o.integer >= 0, "workload",
                        path, ": tensor '", name, "': data_offsets must be integers >= 0, got ",
                        describe(o));
    const int64_t begin = offsets->items[0].integer;
    const int64_t end = offsets->items[1].integer;
    SPAATTN_CHECK_ARG(begin <= end && end <= data_size && end - begin == *bytes, "workload", path,
                      ": ", shape_text, ": data_offsets [", begin, ", ", end, ") do not hold ",
                      *count, " elements of ", t.dtype, " (", *bytes, " bytes) within ",
                      data_size, " data bytes");
    t.bytes.resize(static_cast<size_t>(*bytes));
    f.seekg(static_cast<std::streamoff>(8 + header_len) + begin);
    f.read(reinterpret_cast<char*>(t.bytes.data()), static_cast<std::streamsize>(t.bytes.size()));
    SPAATTN_CHECK_ARG(f.good() || t.bytes.empty(), "workload", path, ": cannot read tensor '",
                      name, "'");
    ranges.push_back(Range{begin, end, &name});
    st.tensors.emplace(name, std::move(t));
  }
  // As the format requires, the tensors' byte ranges tile the data exactly: no byte is shared
  // and none belongs to no tensor.
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  int64_t covered = 0;
  for (const Range& r : ranges) {
    SPAATTN_CHECK_ARG(r.begin >= covered, "workload", path, ": tensor '", *r.name,
                      "': data_offsets [", r.begin, ", ", r.end,
                      ") overlap the data of another tensor");
    SPAATTN_CHECK_ARG(r.begin == covered, "workload", path, ": data bytes [", covered, ", ",
                      r.begin, ") belong to no tensor");
    covered = r.end;
  }
  SPAATTN_CHECK_ARG(covered == data_size, "workload", path, ": data bytes [", covered, ", ",
                    data_size, ") belong to no tensor");
  return st;
}

std::vector<std::vector<int64_t>> parse_int_rows(const std::string& text, const std::string& what) {
  const Json doc = Parser(text, what).document();
  SPAATTN_CHECK_ARG(doc.kind == Json::Kind::array, what, "expected a JSON array, got '", text, "'");
  std::vector<std::vector<int64_t>> rows;
  auto integer = [&](const Json& v) {
    SPAATTN_CHECK_ARG(v.kind == Json::Kind::number && v.is_integer, what,
                      "expected integers, got '", text, "'");
    return v.integer;
  };
  for (const Json& item : doc.items) {
    std::vector<int64_t> row;
    if (item.kind == Json::Kind::array)
      for (const Json& x : item.items) row.push_back(integer(x));
    else
      row.push_back(integer(item));
    rows.push_back(std::move(row));
  }
  return rows;
}

int64_t parse_int(const std::string& text, const std::string& what) {
  const Json doc = Parser(text, what).document();
  SPAATTN_CHECK_ARG(doc.kind == Json::Kind::number && doc.is_integer, what,
                    "expected an integer, got '", text, "'");
  return doc.integer;
}

}  // namespace spaattn::tools
