#!/usr/bin/env bash
# Uses spaattn from another CMake project, both ways a user would: installs the library built
# in ./build (scripts/build.sh) into build/install and builds examples/consumer against the
# installed package; then builds examples/consumer with the source tree added through
# add_subdirectory (CPU only, for speed). Each time the README's C++ example is run.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvcc >/dev/null 2>&1 && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
prefix=$PWD/build/install
rm -rf "$prefix" build-consumer build-consumer-subdir
cmake --install build --prefix "$prefix" >/dev/null
cmake -S examples/consumer -B build-consumer -G Ninja -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build build-consumer
echo "== consumer of the installed package"
build-consumer/readme_example
cmake -S examples/consumer -B build-consumer-subdir -G Ninja -DSPAATTN_SOURCE_DIR="$PWD" \
  -DSPAATTN_CUDA=OFF >/dev/null
cmake --build build-consumer-subdir
echo "== consumer adding the source tree"
build-consumer-subdir/readme_example
