// read_baseline(): a reader for the flat JSON that sdpa_baseline.py writes: a "results" array
// of objects with numeric "S", "H", "d", "ms" and a string "backend". Not a general JSON parser.
#include "baseline.hpp"

#include <fstream>
#include <sstream>
#include <stdexcept>

namespace spaattn::bench {
namespace {

std::string field(const std::string& obj, const std::string& key) {
  const size_t k = obj.find("\"" + key + "\"");
  if (k == std::string::npos) return {};
  size_t p = obj.find(':', k) + 1;
  while (p < obj.size() && (obj[p] == ' ' || obj[p] == '"')) ++p;
  size_t e = p;
  while (e < obj.size() && obj[e] != ',' && obj[e] != '"' && obj[e] != '}') ++e;
  return obj.substr(p, e - p);
}

}  // namespace

std::vector<BaselineEntry> read_baseline(const std::string& path) {
  std::vector<BaselineEntry> out;
  if (path.empty()) return out;
  std::ifstream in(path);
  if (!in) throw std::runtime_error("--baseline: cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  size_t pos = text.find("\"results\"");
  if (pos == std::string::npos) throw std::runtime_error("--baseline: no \"results\" in " + path);
  while ((pos = text.find('{', pos)) != std::string::npos) {
    const size_t end = text.find('}', pos);
    if (end == std::string::npos) break;
    const std::string obj = text.substr(pos, end - pos + 1);
    BaselineEntry e;
    e.seq = std::stoll(field(obj, "S"));
    e.heads = std::stoll(field(obj, "H"));
    e.dim = std::stoll(field(obj, "d"));
    e.backend = field(obj, "backend");
    e.ms = std::stod(field(obj, "ms"));
    out.push_back(e);
    pos = end;
  }
  return out;
}

double baseline_ms(const std::vector<BaselineEntry>& b, int64_t seq, int64_t heads, int64_t dim,
                   const std::string& backend) {
  for (const auto& e : b)
    if (e.seq == seq && e.heads == heads && e.dim == dim && e.backend == backend) return e.ms;
  return 0;
}

}  // namespace spaattn::bench
