#!/usr/bin/env bash
# The GPU check, run on the device machine from the repository root: builds from source (sm_90a
# only, to save time there), runs the GPU tests, the small GPU tests under compute-sanitizer
# (memcheck, racecheck), the PyTorch SDPA baseline and the benchmark. Logs, the JSON results and
# the table go to $OUT (default ./gpu-check-out); the table is printed last.
# Usage: scripts/gpu_check.sh [--quick] [--no-tests] [--no-sanitizer] [--no-bench]
#   --quick: benchmark and baseline on the first shape only.
set -uo pipefail
cd "$(dirname "$0")/.."

quick=0 tests=1 sanitizer=1 bench=1
for a in "$@"; do
  case "$a" in
    --quick) quick=1 ;;
    --no-tests) tests=0 ;;
    --no-sanitizer) sanitizer=0 ;;
    --no-bench) bench=0 ;;
    *) echo "gpu_check.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
BUILD=build-gpu-check
status=0
summary=()
note() { summary+=("$1"); }

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu \
  --format=csv 2>&1 | tee "$OUT/build.log"
echo "commit ${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}" \
  | tee -a "$OUT/build.log"
if ! { cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
         -DCMAKE_CUDA_ARCHITECTURES=90a-real &&
       cmake --build "$BUILD" --target spaattn_gpu_tests spaattn_bench; } >>"$OUT/build.log" 2>&1; then
  tail -n 60 "$OUT/build.log"
  echo "gpu_check: build failed"
  exit 1
fi
grep -E "spill|error" "$OUT/build.log" | sort -u | tail -n 20
echo "== kernel resources (registers, stack, local = spills, shared)" | tee -a "$OUT/build.log"
cuobjdump --dump-resource-usage "$BUILD/src/libspaattn.a" 2>/dev/null |
  grep -E "Function|REG" | paste - - | sed 's/Resource usage://; s/TEXTURE.*//' |
  tee -a "$OUT/build.log"

if [[ $tests == 1 ]]; then
  "$BUILD/tests/spaattn_gpu_tests" 2>&1 | tee "$OUT/gpu_tests.log"
  rc=${PIPESTATUS[0]}
  note "GPU tests: $(grep -E '^\[  (PASSED|FAILED)' "$OUT/gpu_tests.log" | tr '\n' ' ') (exit $rc)"
  [[ $rc == 0 ]] || status=1
fi

if [[ $sanitizer == 1 ]]; then
  : >"$OUT/sanitizer.log"
  for tool in memcheck racecheck; do
    echo "== compute-sanitizer --tool $tool (SPAATTN_GPU_TESTS_SMALL=1)" | tee -a "$OUT/sanitizer.log"
    SPAATTN_GPU_TESTS_SMALL=1 compute-sanitizer --tool "$tool" --error-exitcode 3 \
      "$BUILD/tests/spaattn_gpu_tests" >>"$OUT/sanitizer.log" 2>&1
    rc=$?
    note "sanitizer $tool: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer.log" | tail -n 1) (exit $rc)"
    [[ $rc == 0 ]] || status=1
  done
fi

if [[ $bench == 1 ]]; then
  extra=()
  [[ $quick == 1 ]] && extra+=(--quick)
  PYTHONUNBUFFERED=1 python3 bench/sdpa_baseline.py --json "$OUT/sdpa.json" "${extra[@]}" \
    2>&1 | tee "$OUT/bench.log"
  "$BUILD/bench/spaattn_bench" --baseline "$OUT/sdpa.json" --json "$OUT/bench.json" \
    "${extra[@]}" 2>>"$OUT/bench.log" | tee "$OUT/table.md"
  [[ ${PIPESTATUS[0]} == 0 ]] || { status=1; tail -n 20 "$OUT/bench.log"; }
fi

echo
printf '%s\n' "${summary[@]}"
[[ -f "$OUT/table.md" ]] && cat "$OUT/table.md"
exit $status
