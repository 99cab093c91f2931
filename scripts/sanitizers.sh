#!/usr/bin/env bash
# Builds the CPU library and its tests (no CUDA) under AddressSanitizer + UndefinedBehavior-
# Sanitizer (build-asan) and under ThreadSanitizer (build-tsan) and runs the CPU tests in each;
# any sanitizer report fails the run. CI runs it after the README's test command.
# Usage: scripts/sanitizers.sh [asan|tsan]...   (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
kinds=("$@")
((${#kinds[@]})) || kinds=(asan tsan)
for kind in "${kinds[@]}"; do
  case "$kind" in
    asan) flags="-fsanitize=address,undefined -fno-sanitize-recover=all" ;;
    tsan) flags="-fsanitize=thread" ;;
    *) echo "sanitizers.sh: unknown kind $kind (asan or tsan)" >&2; exit 2 ;;
  esac
  dir=build-$kind
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSPAATTN_CUDA=OFF \
    -DCMAKE_CXX_FLAGS="$flags -fno-omit-frame-pointer" \
    -DCMAKE_EXE_LINKER_FLAGS="$flags" -DCMAKE_SHARED_LINKER_FLAGS="$flags" >/dev/null
  cmake --build "$dir"
  echo "== CPU tests under $kind"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
    TSAN_OPTIONS=halt_on_error=1 ctest --test-dir "$dir" -L cpu --output-on-failure -j "$(nproc)"
done
