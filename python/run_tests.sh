#!/usr/bin/env bash
# Builds the Python package into a virtual environment (build-python/venv) and runs python/tests;
# CI runs it after the C++ tests. Its packages come from PyPI: python/requirements-test.txt, and
# torch, diffusers and transformers from python/requirements-torch.txt (SPAATTN_NO_TORCH=1 leaves
# them out). The tests that need a CUDA device are reported as NOT RUN, never as passed;
# python/run_gpu_tests.sh runs them on a GPU machine.
# Usage: python/run_tests.sh [pytest arguments]; PYTHON selects the interpreter (python3).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=build-python/venv
mkdir -p build-python
"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r python/requirements-test.txt
if [[ ${SPAATTN_NO_TORCH:-0} != 1 ]]; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r python/requirements-torch.txt
fi
# CPU extension only: scripts/build.sh already compiles the CUDA kernels, and no GPU is here.
# Its own build folder, so that a later plain `pip install .` does not inherit SPAATTN_CUDA=OFF.
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-build-isolation . \
  -C build-dir=build-python/cpu-{wheel_tag} -C cmake.define.SPAATTN_CUDA=OFF
set +e
"$venv/bin/python" -m pytest python/tests -rs "$@" 2>&1 | tee build-python/pytest.log
status=${PIPESTATUS[0]}
set -e
skipped=$(grep -oE '[0-9]+ skipped' build-python/pytest.log | tail -n 1 || true)
if [[ -n $skipped ]]; then
  echo "python tests NOT RUN: $skipped (the SKIPPED lines above say why: no CUDA device, or" \
       "torch left out); python/run_gpu_tests.sh runs them on a GPU machine"
fi
exit "$status"
