#!/usr/bin/env bash
# Compiles every dev/cuda/*.cu into a standalone program (SASS for sm_80 and sm_90) in the
# directory $1 (default target/dev-cuda). Run from the repository root; the programs need a GPU.
# NVCC names the compiler (default: nvcc on PATH). The CUDA runtime is linked statically, from
# the lib/ beside nvcc's bin/ (a toolkit's lib64/, or the pip wheel's nvidia/cu13/lib/).
set -euo pipefail

[[ -d dev/cuda && -d kernels ]] || { echo "build.sh: run it from the repository root" >&2; exit 1; }
out=${1:-target/dev-cuda}
nvcc=${NVCC:-nvcc}
nvcc_path=$(command -v "$nvcc") || { echo "build.sh: $nvcc not found (set NVCC)" >&2; exit 1; }
bin=$(dirname "$nvcc_path")

cudart=""
for dir in "$bin/../lib64" "$bin/../lib"; do
    if [[ -e $dir/libcudart_static.a ]]; then
        cudart=$dir
        break
    fi
done
if [[ -z $cudart ]]; then
    echo "build.sh: no libcudart_static.a in $bin/../lib64 or $bin/../lib" >&2
    exit 1
fi

mkdir -p "$out"
for src in dev/cuda/*.cu; do
    name=$(basename "$src" .cu)
    echo "nvcc $src -> $out/$name"
    "$nvcc" -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
        -O3 -std=c++17 -lineinfo -I kernels -cudart static -L "$cudart" "$src" -o "$out/$name"
done
