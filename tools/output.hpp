// What the tool's commands write: output files checked before any work, and the pieces of their
// JSON. Shared by `spaattn eval` and `spaattn bench`.
#pragma once
#include <cstdio>
#include <string>

namespace spaattn::tools {

// `s` as a JSON string literal, quotes included.
std::string json_string(const std::string& s);

// The shortest decimal text that reads back as `v` ("0.3", not "0.29999999999999999").
std::string json_number(double v);

// An output file opened for writing when the options are checked, before the evaluation, so that
// an uncreatable path fails at once. If it is not committed (the run failed), a file that this
// run created is removed again rather than left empty.
class OutputFile {
 public:
  OutputFile() = default;
  // Opens `path` for writing; throws spaattn::Error "<flag>: cannot create '<path>' (<reason>)".
  OutputFile(const std::string& path, const char* flag);
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;
  OutputFile(OutputFile&& other) noexcept;
  OutputFile& operator=(OutputFile&& other) noexcept;
  ~OutputFile();

  bool is_open() const { return file_ != nullptr; }
  // Writes `text`, closes the file and keeps it; throws spaattn::Error naming the flag on failure.
  void commit(const std::string& text);

 private:
  void discard();
  std::string path_;
  const char* flag_ = "";
  std::FILE* file_ = nullptr;
  bool created_ = false;
};

}  // namespace spaattn::tools
