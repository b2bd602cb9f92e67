#!/usr/bin/env bash
# Installs the build dependencies from Debian's packages (skips what is already there).
set -euo pipefail
pkgs=(cmake g++ make ccache libeigen3-dev doctest-dev libstb-dev nlohmann-json3-dev libbenchmark-dev libomp-dev
      zlib1g-dev libdeflate-dev  # PNG writing (tools/data/deflate.h) and reading (png_decode.h)
      libdcmtk-dev pkg-config  # DICOM input; pkg-config for test_package's sono.pc check
      openmpi-bin libopenmpi-dev  # MPI: data-parallel training (mpirun -np N seg_train)
      chromium)  # the headless-browser check of predict's HTML report
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
