// `spaattn eval`: compares the methods against dense attention on the built-in workload.
#pragma once

namespace spaattn::tools {
int run_eval(int argc, char** argv);
}
