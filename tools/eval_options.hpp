// The options of `spaattn eval`: parsing and every check that needs no evaluation, so that a bad
// flag, an unknown method or an output file that cannot be created fails before any work.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "output.hpp"
#include "spaattn/order.hpp"
#include "workload.hpp"

#ifndef SPAATTN_DEFAULT_WORKLOAD
#define SPAATTN_DEFAULT_WORKLOAD "data/testbed_qkv.safetensors"
#endif
#ifndef SPAATTN_VERSION
#error "SPAATTN_VERSION (the CMake PROJECT_VERSION) must be defined by the build"
#endif

namespace spaattn::tools {

enum class ProgressMode { automatic, on, off };  // automatic: only when stderr is a terminal

struct EvalOptions {
  std::string workload = SPAATTN_DEFAULT_WORKLOAD;  // a captured file, or "synthetic"
  std::vector<std::string> synthetic_flags;         // synthetic-only flags given
  WorkloadSpec spec;
  int block = 128;
  int steps = 5;
  int ref_period = 5;
  double p = 0.3;
  bool neighbours = false;
  OrderKind order = OrderKind::gilbert;
  std::vector<double> sparsities = {0.75, 0.85, 0.9, 0.95};
  // The non-dense rows per sparsity; dense, the reference of every error, is always computed.
  // calibrated is asked for by name (--methods).
  std::vector<std::string> methods = {"sparse", "rectified", "rectified-nogapr", "rettention",
                                      "rectified_rettention"};
  std::string json;
  std::string plot;
  ProgressMode progress = ProgressMode::automatic;
  bool help = false;
  bool version = false;
};

// Parses the arguments after `eval`. Flags with a value take it as the next argument or after
// '=' (--sparsity=0.9). Throws spaattn::Error naming the flag. Touches no file.
EvalOptions parse_eval_args(const std::vector<std::string>& args);

// The text of `spaattn eval --help`.
const char* eval_help();

const char* order_name(OrderKind kind);

// The settings as a JSON object: every option's value, defaults included.
std::string settings_json(const EvalOptions& o);

// Checks the input file (--workload readable, unless synthetic) and opens the output files
// (--json, --plot); throws spaattn::Error naming the flag.
struct EvalOutputs {
  OutputFile json, plot;
};
EvalOutputs check_eval_files(const EvalOptions& o);

}  // namespace spaattn::tools
