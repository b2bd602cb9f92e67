#!/usr/bin/env bash
# The test command: install deps, build, run every test.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tools/scripts/build.sh
cd build && ctest --output-on-failure -j"$(nproc)"
