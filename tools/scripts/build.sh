#!/usr/bin/env bash
# Configures and builds into build/ (CUDA backend too when nvcc is on this machine).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tools/scripts/install_deps.sh
[ -d /usr/local/cuda/bin ] && export PATH=/usr/local/cuda/bin:$PATH
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build build -j"$(nproc)"
