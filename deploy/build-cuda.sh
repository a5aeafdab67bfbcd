#!/usr/bin/env bash
# Builds kvsweep's worker, benchmarks and engine tests against a CUDA libtorch: the one on the
# accelerator machine (PyTorch 2.11, CUDA 13, sm_90), with gRPC/Abseil/SQLite/... from the
# Debian packages carried in .debs (shared/device/fetch-debs.sh). Run from the repository root.
#
#   deploy/build-cuda.sh [BUILD_DIR]          # default build-cuda
#
# Needs: python3 with torch (for its CMake prefix), cmake, a CUDA toolkit, and either .debs/ or
# the -dev packages installed system-wide.
set -euo pipefail
build=${1:-build-cuda}
if [ -d .debs ] && [ -z "${KVSWEEP_DEBS_UNPACKED:-}" ]; then
  # shellcheck disable=SC1091
  source .debs/unpack-debs.sh .debs
  export KVSWEEP_DEBS_UNPACKED=1
fi
torch_prefix=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
gen=""
command -v ninja >/dev/null && gen="-G Ninja"
cmake -S . -B "$build" $gen -DCMAKE_BUILD_TYPE=Release -DKVSWEEP_CUDA=ON \
  -DCMAKE_PREFIX_PATH="${CMAKE_PREFIX_PATH:-}:$torch_prefix" \
  -DTORCH_CUDA_ARCH_LIST=9.0 -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DKVSWEEP_BUILD_TESTS=${KVSWEEP_BUILD_TESTS:-OFF} >"$build.configure.log" 2>&1 || { tail -40 "$build.configure.log"; exit 1; }
targets=${KVSWEEP_TARGETS:-kvsweep-worker kvsweep-engine-bench}
cmake --build "$build" -j "$(nproc)" --target $targets 2>&1 | tail -5
# The worker's binary, when it was among the targets (KVSWEEP_TARGETS may name others only).
if [[ " $targets " == *" kvsweep-worker "* ]]; then ls -la "$build/worker/kvsweep-worker"; fi
