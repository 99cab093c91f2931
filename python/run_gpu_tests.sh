#!/usr/bin/env bash
# The Python package on a GPU machine, for scripts/gpu_check.sh: builds it with the CUDA kernels
# (sm_90a unless CMAKE_CUDA_ARCHITECTURES says otherwise) into the current python3, which must
# hold torch, numpy, pytest, scikit-build-core and nanobind (no network is needed), and runs all
# of python/tests, the CUDA and diffusers tests included. Wheels of packages missing there
# (diffusers) may be carried in .whl/: they are installed into a private folder first.
# Logs go to $OUT (default ./python-gpu-out). Usage: python/run_gpu_tests.sh [pytest arguments]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/python-gpu-out}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/spaattn-wheels .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/spaattn-wheels${PYTHONPATH:+:$PYTHONPATH}
fi
archs=${CMAKE_CUDA_ARCHITECTURES:-90a-real}
if ! python3 -m pip install --no-build-isolation --no-deps -v . \
       -C cmake.define.CMAKE_CUDA_ARCHITECTURES="$archs" >"$OUT/python_build.log" 2>&1; then
  tail -n 40 "$OUT/python_build.log"
  echo "run_gpu_tests: build failed"
  exit 1
fi
python3 -m pytest python/tests -rs "$@" 2>&1 | tee "$OUT/python_tests.log"
status=${PIPESTATUS[0]}
skipped=$(grep -oE '[0-9]+ skipped' "$OUT/python_tests.log" | tail -n 1)
[[ -n $skipped ]] && echo "python tests NOT RUN: $skipped (see the SKIPPED lines above)"
exit "$status"
