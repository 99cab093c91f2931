// Output files and JSON pieces of the tool: see output.hpp.
#include "output.hpp"

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <utility>

#include "spaattn/error.hpp"

namespace spaattn::tools {

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (const char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string json_number(double v) {
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, res.ptr);
}

OutputFile::OutputFile(const std::string& path, const char* flag) : path_(path), flag_(flag) {
  std::error_code ec;
  created_ = !std::filesystem::exists(path, ec);
  // Append mode creates a missing file and proves that an existing one is writable without
  // truncating it: its old contents stay if the run fails.
  file_ = std::fopen(path.c_str(), "a");
  const int err = errno;
  SPAATTN_CHECK_ARG(file_ != nullptr, flag, "cannot create '", path, "' (", std::strerror(err),
                    ")");
}

OutputFile::OutputFile(OutputFile&& other) noexcept
    : path_(std::move(other.path_)),
      flag_(other.flag_),
      file_(std::exchange(other.file_, nullptr)),
      created_(other.created_) {}

OutputFile& OutputFile::operator=(OutputFile&& other) noexcept {
  if (this != &other) {
    discard();
    path_ = std::move(other.path_);
    flag_ = other.flag_;
    file_ = std::exchange(other.file_, nullptr);
    created_ = other.created_;
  }
  return *this;
}

OutputFile::~OutputFile() { discard(); }

void OutputFile::discard() {
  if (!file_) return;
  std::fclose(file_);
  file_ = nullptr;
  if (created_) std::remove(path_.c_str());
}

void OutputFile::commit(const std::string& text) {
  SPAATTN_CHECK_ARG(file_ != nullptr, flag_, "no file open");
  std::FILE* f = std::freopen(path_.c_str(), "w", file_);
  file_ = nullptr;
  int err = errno;
  bool ok = f != nullptr;
  if (ok) {
    ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
    err = errno;
    ok = (std::fclose(f) == 0) && ok;
    if (ok)
      err = 0;
    else if (err == 0)
      err = errno;
  }
  SPAATTN_CHECK_ARG(ok, flag_, "cannot write '", path_, "' (", std::strerror(err), ")");
}

}  // namespace spaattn::tools
