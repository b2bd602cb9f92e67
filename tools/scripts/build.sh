#!/usr/bin/env bash
# Configures and builds into build/ (CUDA backend too when nvcc is on this machine).
#   bash tools/scripts/build.sh [TARGET...]   all targets when none is named
# Extra configure options: SONO_CMAKE_ARGS="-DSONO_BUILD_BENCH=OFF" bash tools/scripts/build.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tools/scripts/install_deps.sh
[ -d /usr/local/cuda/bin ] && export PATH=/usr/local/cuda/bin:$PATH
# shellcheck disable=SC2086
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release ${SONO_CMAKE_ARGS:-} >/dev/null
targets=()
for t in "$@"; do targets+=(--target "$t"); done
cmake --build build -j"$(nproc)" "${targets[@]}"
