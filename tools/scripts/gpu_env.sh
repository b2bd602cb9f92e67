# Sourced by the scripts in gpu/ (tools/scripts/gpu_pack.sh fills it) on a GPU machine: unpacks
# the binaries into $B and sets LD_LIBRARY_PATH for them (carried: libgomp, cudart, libdeflate; the
# machine's: cuBLAS, and cuDNN and NCCL from PyTorch's wheels where no other). machine_libs keeps the
# machine's own LD_LIBRARY_PATH, the one PyTorch runs with. Expects $here, the gpu/ folder.
B=/tmp/sono-gpu
rm -rf "$B" && mkdir -p "$B"
tar -xJf "$here/bins.tar.xz" -C "$B" || return 1
# PyTorch's own cuDNN first (under /opt): ours then runs on the same version as PyTorch, which
# refuses an older one ahead of its bundled one on LD_LIBRARY_PATH.
cudnn=$(find /opt /usr/local/cuda* /usr/lib /usr/local/lib -name 'libcudnn.so.9*' 2>/dev/null | head -1)
cublas=$(find /usr/local/cuda* /usr/lib /usr/local/lib /opt -name 'libcublas.so.1[23]*' 2>/dev/null | head -1)
# NCCL (opened by test_nccl and data-parallel runs on GPUs when first used; without it they say so)
nccl=$(find /usr/local/cuda* /usr/lib /usr/local/lib /opt -name 'libnccl.so.2*' 2>/dev/null | head -1)
libs="$here/lib:$(dirname "${cudnn:-/x/x}"):$(dirname "${cublas:-/x/x}"):$(dirname "${nccl:-/x/x}"):/usr/local/cuda/lib64:/usr/local/cuda/lib"
machine_libs=${LD_LIBRARY_PATH:-}  # what PyTorch runs with (the driver's folder, say)
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[ -d /usr/local/cuda/bin ] && export PATH="$PATH:/usr/local/cuda/bin"  # ncu, compute-sanitizer
