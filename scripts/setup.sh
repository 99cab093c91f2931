#!/usr/bin/env bash
# Installs what building and testing spaattn needs on Debian/Ubuntu: a C++20 compiler, CMake,
# Ninja, GoogleTest and Google Benchmark. The CUDA toolkit (nvcc) is optional: when it is on the
# PATH or in /usr/local/cuda the kernels are built too.
set -euo pipefail
packages=(g++ cmake ninja-build libgtest-dev libbenchmark-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
