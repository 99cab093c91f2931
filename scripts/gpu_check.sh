#!/usr/bin/env bash
# The GPU check, run on the device machine from the repository root: builds from source (sm_90a
# only, to save time there), runs the GPU tests once per kernel family (SPAATTN_KERNEL=portable,
# then hopper where the device has it), the small GPU tests under compute-sanitizer (memcheck,
# racecheck, synccheck; each family), the PyTorch SDPA baseline, the kernel benchmark (each
# family; the Hopper family also at B = 64 and d = 64) and the pipeline benchmark; on request
# also the Python package's tests and the testbed evaluation. Logs, the JSON results and the
# tables go to $OUT (default ./gpu-check-out); the tables are printed last.
# Usage: scripts/gpu_check.sh [--quick] [--shape TEXT] [--densities LIST] [--bin DIR]
#                             [--compare-bin DIR] [--rounds N] [--sanitizer-filter PATTERN]
#                             [--no-tests] [--no-sanitizer] [--no-bench] [--no-pipeline]
#                             [--profile] [--power] [--python]
#                             [--testbed CKPT [--testbed-args "ARGS"]]
#   --quick: kernel benchmark and baseline on the first shape only.
#   --families LIST: kernel families to test and benchmark (default "portable hopper").
#   --shape, --densities: passed to the kernel benchmark (and --shape to the baseline).
#   --bin DIR: spaattn_gpu_tests, spaattn_bench and spaattn_bench_pipeline built elsewhere for
#              sm_90a (e.g. a machine without a GPU) instead of a build here; a build still runs
#              if they do not start.
#   --compare-bin DIR: spaattn_bench and spaattn_bench_pipeline of another build (e.g. the
#              previous commit, built for sm_90a), run right after each benchmark of this one on
#              the same machine, so that two kernels are compared within one run
#              (bench_compare_*.json, pipeline_compare.md; their tables follow this build's).
#   --rounds N: run the kernel benchmarks (and those of --compare-bin) N times, interleaved
#              (default 1); the JSON and tables of round r > 1 carry _rR in their names.
#   --profile: Nsight Compute on the Hopper kernel (d = 128, B = 128, S = 76,800, H = 40) at
#          densities 1.0 and 0.05: throughput, memory (DRAM, L2 hit rate), warp stalls and
#          scheduler statistics of one launch each (profile_density_*.txt, read back from the
#          report), and the SASS lines with the most warp-stall samples
#          (profile_density_*_lines.txt; the build gets -lineinfo).
#   --power: board power and SM clock (nvidia-smi, every 100 ms) during the benchmarks: the
#          median of each measurement of this build (each SDPA back-end and shape, each kernel
#          density, the pipeline benchmark as a whole; not --compare-bin's), in the order
#          measured, in power.md (scripts/power_summary.py).
#   --ulysses: with two or more GPUs, Ulysses sequence parallelism over 2 GPUs (NCCL):
#          bench/ulysses_bench.py at S = 76,800, H = 40, d = 128, sparsity 0.9 for rectified and
#          rettention (ulysses_*.json); needs the Python package (--python, which on a machine
#          with two GPUs also runs the distributed tests over NCCL).
#   --cli: also build the command-line tool and run `spaattn bench` at its default shape and at
#          S = 76,800, H = 40, there also with --precision fp8 (bench_cli*.json).
#   --sanitizer-tools LIST: the compute-sanitizer tools (default "memcheck racecheck synccheck
#          initcheck").
#   --sanitizer-filter PATTERN: the GPU tests run under the sanitizers (a --gtest_filter
#          pattern, default all of the small set), e.g. to keep racecheck within a time limit.
#   --python: build and install the Python package with its CUDA kernels, run its tests
#             (python/run_gpu_tests.sh; logs python_*.log).
#   --testbed CKPT: the testbed evaluation (spaattn_testbed.evaluate) of model CKPT into
#             $OUT/testbed, with --testbed-args added; needs the package (--python).
#   The C++ build runs only when tests, sanitizer, benchmarks, the profile or the CLI are on.
set -uo pipefail
cd "$(dirname "$0")/.."

compare="" rounds=1 families="portable hopper" profile=0 power=0 ulysses=0 cli=0 tools="memcheck racecheck synccheck initcheck" san_filter="" quick=0 tests=1 sanitizer=1 bench=1 pipeline=1 shape="" densities="" bin="" python=0 testbed=""
testbed_args=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) quick=1 ;;
    --families) families=$2; shift ;;
    --shape) shape=$2; shift ;;
    --densities) densities=$2; shift ;;
    --bin) bin=$2; shift ;;
    --compare-bin) compare=$2; shift ;;
    --rounds) rounds=$2; shift ;;
    --no-tests) tests=0 ;;
    --no-sanitizer) sanitizer=0 ;;
    --no-bench) bench=0 ;;
    --no-pipeline) pipeline=0 ;;
    --python) python=1 ;;
    --cli) cli=1 ;;
    --profile) profile=1 ;;
    --power) power=1 ;;
    --ulysses) ulysses=1 ;;
    --sanitizer-tools) tools=$2; shift ;;
    --sanitizer-filter) san_filter=$2; shift ;;
    --testbed) testbed=$2; shift ;;
    --testbed-args) testbed_args=$2; shift ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if ! [[ $rounds =~ ^[1-9][0-9]*$ ]]; then
  echo "gpu_check.sh: --rounds expects a positive whole number, got '$rounds'" >&2; exit 2
fi
if [[ -n $compare ]] && ! [[ -x $compare/spaattn_bench && -x $compare/spaattn_bench_pipeline ]]; then
  echo "gpu_check.sh: --compare-bin: expected executables spaattn_bench and spaattn_bench_pipeline in '$compare'" >&2
  exit 2
fi
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
TESTS=$BUILD/tests/spaattn_gpu_tests BENCH=$BUILD/bench/spaattn_bench
PIPE=$BUILD/bench/spaattn_bench_pipeline
if [[ $tests == 0 && $sanitizer == 0 && $bench == 0 && $pipeline == 0 && $profile == 0 &&
      $cli == 0 ]]; then
  echo "no C++ build: no tests, sanitizer, benchmarks, profile or CLI asked for" |
    tee -a "$OUT/build.log"
elif [[ -n $bin ]] && "$bin/spaattn_gpu_tests" --gtest_list_tests >/dev/null 2>&1; then
  TESTS=$bin/spaattn_gpu_tests BENCH=$bin/spaattn_bench PIPE=$bin/spaattn_bench_pipeline
  echo "prebuilt binaries from $bin" | tee -a "$OUT/build.log"
else
  if ! { cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
           -DCMAKE_CUDA_ARCHITECTURES=90a-real \
           -DCMAKE_CUDA_FLAGS="$([[ $profile == 1 ]] && echo -lineinfo)" &&
         cmake --build "$BUILD" --target spaattn_gpu_tests spaattn_bench spaattn_bench_pipeline \
           $([[ $cli == 1 ]] && echo spaattn_cli)
       } >>"$OUT/build.log" 2>&1; then
    tail -n 60 "$OUT/build.log"
    echo "gpu_check: build failed"
    exit 1
  fi
  grep -E "spill|error" "$OUT/build.log" | sort -u | tail -n 20
  echo "== kernel resources (registers, stack, local = spills, shared)" | tee -a "$OUT/build.log"
  cuobjdump --dump-resource-usage "$BUILD/src/libspaattn.a" 2>/dev/null |
    grep -E "Function|REG" | paste - - | sed 's/Resource usage://; s/TEXTURE.*//' |
    tee -a "$OUT/build.log"
fi

if [[ $tests == 1 ]]; then
  for fam in $families; do
    SPAATTN_KERNEL=$fam "$TESTS" 2>&1 | tee "$OUT/gpu_tests_$fam.log"
    rc=${PIPESTATUS[0]}
    note "GPU tests ($fam): $(grep -E '^\[  (PASSED|FAILED|SKIPPED)' "$OUT/gpu_tests_$fam.log" | tr '\n' ' ') (exit $rc)"
    note "GPU vs CPU ($fam): $(grep -E '^cross-check:' "$OUT/gpu_tests_$fam.log" || echo 'cross-check did not run')"
    [[ $rc == 0 ]] || status=1
  done
fi

if [[ $sanitizer == 1 ]]; then
  : >"$OUT/sanitizer.log"
  for fam in $families; do
    for tool in $tools; do
      echo "== compute-sanitizer --tool $tool (SPAATTN_GPU_TESTS_SMALL=1, SPAATTN_KERNEL=$fam${san_filter:+, tests $san_filter})" |
        tee -a "$OUT/sanitizer.log"
      SPAATTN_KERNEL=$fam SPAATTN_GPU_TESTS_SMALL=1 timeout "${SANITIZER_TIMEOUT:-1800}" \
        compute-sanitizer --tool "$tool" \
        --error-exitcode 3 "$TESTS" ${san_filter:+"--gtest_filter=$san_filter"} >>"$OUT/sanitizer.log" 2>&1
      rc=$?
      note "sanitizer $tool ($fam): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|SYNCCHECK SUMMARY|INITCHECK SUMMARY' "$OUT/sanitizer.log" | tail -n 1) (exit $rc)"
      [[ $rc == 0 ]] || status=1
    done
  done
fi

if [[ $profile == 1 ]]; then
  for density in 1.0 0.05; do
    # One launch after the benchmark's warm-up calls; clocks as the benchmark sees them.
    ncu --clock-control none -k regex:fwd_kernel_sm90 --launch-skip 3 --launch-count 1 \
      --section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
      --section WarpStateStats --section SchedulerStats --section Occupancy \
      --section SourceCounters --import-source yes \
      --export "/tmp/profile_density_$density" --force-overwrite \
      "$BENCH" --kernel hopper --head-dim 128 --block 128 --shape S=76800 --densities "$density" \
      --iters 10 >"$OUT/profile_density_$density.log" 2>&1
    rc=$?
    # A run that exports its report prints none of it: the sections' details are read back.
    ncu --import "/tmp/profile_density_$density.ncu-rep" --page details --print-details all \
      >"$OUT/profile_density_$density.txt" 2>&1
    # The source page as CSV, reduced to the 60 SASS lines with the most stall samples.
    ncu --import "/tmp/profile_density_$density.ncu-rep" --page source --csv \
      --print-source sass 2>&1 | python3 scripts/top_stalls.py 60 \
      >"$OUT/profile_density_${density}_lines.txt" 2>&1
    note "ncu, hopper kernel at density $density: exit $rc ($OUT/profile_density_$density.txt)"
    [[ $rc == 0 ]] || status=1
  done
fi

if [[ $cli == 1 ]]; then
  : >"$OUT/bench_cli.log"
  for shape in "" "--seq 76800 --heads 40 --grid 20x60x64" \
               "--seq 76800 --heads 40 --grid 20x60x64 --precision fp8"; do
    name=bench_cli${shape:+_76800}
    [[ $shape == *fp8* ]] && name+=_fp8
    # shellcheck disable=SC2086
    "$BUILD/spaattn" bench $shape --json "$OUT/$name.json" 2>&1 | tee -a "$OUT/bench_cli.log"
    rc=${PIPESTATUS[0]}
    note "spaattn bench ${shape:-(defaults)}: exit $rc"
    [[ $rc == 0 ]] || status=1
  done
fi

extra=()
[[ $quick == 1 ]] && extra+=(--quick)
[[ -n $shape ]] && extra+=(--shape "$shape")
pbase=$OUT/sdpa.json
sdpa() { PYTHONUNBUFFERED=1 python3 bench/sdpa_baseline.py "${marks[@]}" --json "$@" 2>&1 | tee -a "$OUT/bench.log"; }
marks=() power_pid=""
if [[ $power == 1 && ( $bench == 1 || $pipeline == 1 ) ]]; then
  : >"$OUT/power_marks.txt"
  nvidia-smi --query-gpu=timestamp,index,power.draw,clocks.sm --format=csv,noheader,nounits \
    -lms 100 >"$OUT/power.csv" 2>&1 &
  power_pid=$!
  marks=(--marks "$OUT/power_marks.txt")
fi
if [[ $bench == 1 || $pipeline == 1 ]]; then
  : >"$OUT/bench.log"
  if [[ $bench == 1 ]]; then
    dims=128
    [[ " $families " == *" hopper "* ]] && dims=128,64
    sdpa "$OUT/sdpa.json" --head-dim "$dims" "${extra[@]}"
    # The pipeline benchmark compares with cuDNN dense at S=76800, H=40.
    if [[ $pipeline == 1 ]] && ! grep -q '"S": 76800' "$OUT/sdpa.json"; then
      pbase=$OUT/sdpa_pipeline.json
      sdpa "$pbase" --shape S=76800
    fi
  else
    sdpa "$pbase" --shape S=76800
  fi
fi
if [[ $bench == 1 ]]; then
  [[ -n $densities ]] && extra+=(--densities "$densities")
  : >"$OUT/table.md"
  runs=()
  for fam in $families; do runs+=("$fam 128 128"); done
  [[ " $families " == *" hopper "* ]] && runs+=("hopper 128 64" "hopper 64 128")
  # One benchmark run: binary, label for the table (printed when there is more than one run of
  # a configuration), JSON name.
  kbench() {
    local m=()  # --power marks: this build's measurements only
    [[ $1 == "$BENCH" ]] && m=("${marks[@]}")
    [[ -n $compare || $rounds -gt 1 ]] && echo "$2" | tee -a "$OUT/table.md"
    "$1" --kernel "$fam" --head-dim "$dim" --block "$blk" --baseline "$OUT/sdpa.json" \
      --json "$OUT/$3.json" "${extra[@]}" "${m[@]}" 2>>"$OUT/bench.log" | tee -a "$OUT/table.md"
    [[ ${PIPESTATUS[0]} == 0 ]] || { status=1; tail -n 20 "$OUT/bench.log"; }
  }
  for ((round = 1; round <= rounds; ++round)); do
    sfx=$([[ $round -gt 1 ]] && echo "_r$round")
    for r in "${runs[@]}"; do
      read -r fam dim blk <<<"$r"
      kbench "$BENCH" "this build${sfx:+ (round $round)}:" "bench_${fam}_d${dim}_b${blk}$sfx"
      [[ -n $compare ]] &&
        kbench "$compare/spaattn_bench" "--compare-bin $compare${sfx:+ (round $round)}:" \
          "bench_compare_${fam}_d${dim}_b${blk}$sfx"
    done
  done
fi
# The pipeline benchmark as one --power measurement.
pmark() { [[ -n $power_pid ]] && echo "$(date +%s.%N) $1 $2" >>"$OUT/power_marks.txt"; }
if [[ $pipeline == 1 ]]; then
  pmark begin "spaattn_bench_pipeline (whole run)"
  "$PIPE" --baseline "$pbase" 2>>"$OUT/bench.log" | tee "$OUT/pipeline.md"
  [[ ${PIPESTATUS[0]} == 0 ]] || { status=1; tail -n 20 "$OUT/bench.log"; }
  pmark end "spaattn_bench_pipeline (whole run)"
  if [[ -n $compare ]]; then
    "$compare/spaattn_bench_pipeline" --baseline "$pbase" 2>>"$OUT/bench.log" |
      tee "$OUT/pipeline_compare.md"
    [[ ${PIPESTATUS[0]} == 0 ]] || { status=1; tail -n 20 "$OUT/bench.log"; }
  fi
fi

if [[ -n $power_pid ]]; then
  kill "$power_pid" 2>/dev/null
  wait "$power_pid" 2>/dev/null
  # The benchmarks' GPU: the first of CUDA_VISIBLE_DEVICES when it is an index, else 0.
  first=${CUDA_VISIBLE_DEVICES:-0}
  first=${first%%,*}
  [[ $first =~ ^[0-9]+$ ]] || first=0
  if python3 scripts/power_summary.py "$OUT/power.csv" "$OUT/power_marks.txt" --gpu "$first" \
       >"$OUT/power.md" 2>&1
  then
    note "power and SM clock during each measurement: $OUT/power.md"
  else
    note "power summary failed: $(tail -n 1 "$OUT/power.md")"
    status=1
  fi
fi

if [[ $python == 1 ]]; then
  OUT=$OUT python/run_gpu_tests.sh 2>&1 | tail -n 30
  rc=${PIPESTATUS[0]}
  note "Python package: build and tests exit $rc (python_build.log, python_tests.log)"
  [[ $rc == 0 ]] || status=1
fi
if [[ $ulysses == 1 ]]; then
  gpus=$(nvidia-smi --list-gpus 2>/dev/null | wc -l)
  if [[ $gpus -lt 2 ]]; then
    note "Ulysses: needs 2 GPUs, found $gpus (not run)"
    status=1
  elif [[ $python == 0 ]] && ! python3 -c "import spaattn" 2>/dev/null; then
    note "Ulysses: needs the Python package (--python)"
    status=1
  else
    for method in rectified rettention; do
      PYTHONUNBUFFERED=1 timeout 600 python3 -m torch.distributed.run --nproc-per-node 2 \
        bench/ulysses_bench.py --method "$method" --json "$OUT/ulysses_$method.json" \
        >"$OUT/ulysses_$method.log" 2>&1
      rc=$?
      note "Ulysses bench ($method, 2 GPUs): exit $rc, $(python3 -c "import json,sys
r=json.load(open(sys.argv[1]))
print(f\"{r['ms_parallel']:.1f} ms vs {r['ms_one']:.1f} ms on one GPU: {r['speedup']:.2f}x, rel L2 {r['rel_l2_vs_one']:.2e}\")" "$OUT/ulysses_$method.json" 2>/dev/null)"
      [[ $rc == 0 ]] || { status=1; tail -n 20 "$OUT/ulysses_$method.log"; }
    done
  fi
fi
if [[ -n $testbed ]]; then
  mkdir -p "$OUT/testbed"
  ckpt=$(realpath "$testbed")
  # shellcheck disable=SC2086  # testbed_args is a list of arguments
  (cd testbed && PYTHONUNBUFFERED=1 PYTHONPATH=. python3 -m spaattn_testbed.evaluate \
     --ckpt "$ckpt" --out "$OUT/testbed" $testbed_args) 2>&1 | tee "$OUT/testbed/evaluate.log"
  rc=${PIPESTATUS[0]}
  note "testbed evaluation: exit $rc"
  [[ $rc == 0 ]] || status=1
fi

echo
printf '%s\n' "${summary[@]}"
[[ -f "$OUT/table.md" ]] && cat "$OUT/table.md"
[[ -f "$OUT/pipeline.md" ]] && cat "$OUT/pipeline.md"
[[ -f "$OUT/pipeline_compare.md" ]] && { echo "--compare-bin $compare:"; cat "$OUT/pipeline_compare.md"; }
[[ -n $power_pid && -f "$OUT/power.md" ]] && cat "$OUT/power.md"
exit $status
