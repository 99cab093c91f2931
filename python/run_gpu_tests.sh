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
# SPAATTN_PY_BUILD_DIR: a build folder kept between runs (a second build is incremental).
if ! python3 -m pip install --no-build-isolation --no-deps -v . \
       -C cmake.define.CMAKE_CUDA_ARCHITECTURES="$archs" \
       ${SPAATTN_PY_BUILD_DIR:+-C build-dir="$SPAATTN_PY_BUILD_DIR"} \
       >"$OUT/python_build.log" 2>&1; then
  tail -n 40 "$OUT/python_build.log"
  echo "run_gpu_tests: build failed"
  exit 1
fi
# A C++ error must arrive as a ValueError, alone and next to torch and diffusers.
for imports in "" "import torch, diffusers;"; do
  if python3 -c "${imports}import spaattn
try:
    spaattn.SparseAttention(sparsity=1.5)
except ValueError:
    pass" >/dev/null 2>&1; then
    echo "C++ errors through the extension (${imports:-spaattn alone}): ok"
  else
    echo "C++ errors through the extension (${imports:-spaattn alone}): FAILED (exit $?)"
  fi
done
# One process per test file, so that a crash in one leaves the others' results.
status=0
summary=()
: >"$OUT/python_tests.log"
for file in python/tests/test_*.py; do
  python3 -m pytest "$file" -rs "$@" 2>&1 | tee "$OUT/last.log"
  rc=${PIPESTATUS[0]}
  cat "$OUT/last.log" >>"$OUT/python_tests.log"
  [[ $rc == 0 || $rc == 5 ]] || status=1
  counts=$(grep -E "[0-9]+ (passed|failed|skipped|error)" "$OUT/last.log" | tail -n 1)
  summary+=("$file: exit $rc, ${counts:-no summary (crashed?)}")
done
# With two GPUs, the distributed tests again over NCCL in bfloat16 (the measured values of the
# whole-pipeline cases go to dist_report.jsonl).
if [[ $(python3 -c "import torch; print(torch.cuda.device_count())") -ge 2 ]]; then
  : >"$OUT/dist_report.jsonl"
  SPAATTN_DIST_BACKEND=nccl SPAATTN_DIST_REPORT="$OUT/dist_report.jsonl" \
    python3 -m pytest python/tests/test_distributed.py -rs "$@" 2>&1 | tee "$OUT/last.log"
  rc=${PIPESTATUS[0]}
  cat "$OUT/last.log" >>"$OUT/python_tests.log"
  [[ $rc == 0 || $rc == 5 ]] || status=1
  counts=$(grep -E "[0-9]+ (passed|failed|skipped|error)" "$OUT/last.log" | tail -n 1)
  summary+=("python/tests/test_distributed.py (NCCL, 2 GPUs): exit $rc, ${counts:-no summary (crashed?)}")
fi
rm -f "$OUT/last.log"
echo
printf '%s\n' "${summary[@]}"
exit "$status"
