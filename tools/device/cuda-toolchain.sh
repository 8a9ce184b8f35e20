#!/usr/bin/env bash
# A CUDA 13.0 toolchain for `cargo build --features cuda` on a machine with neither a GPU nor a CUDA
# install (the binary then runs on a GPU machine whose driver is CUDA 13.0 or newer):
#
#   cargo fetch                                  # cudarc's source: the driver stub is made from it
#   eval "$(tools/device/cuda-toolchain.sh)"     # first run: ~1 GB of PyPI wheels; then only prints
#   cargo build --release -p moshi-rs --features cuda
#
# NVIDIA publishes nvcc, the runtime headers and cuBLAS/cuRAND/NVRTC as PyPI wheels; they go into a
# virtual environment (CUDA_VENV, default ~/.cache/moshi-rs-cuda13). The linker wants unversioned
# library names, which the wheels lack, and a libcuda.so, which only a driver brings: we add the
# names, and compile a stub libcuda.so whose functions only exist to be linked against (never carry
# it to the GPU machine: there the driver's own libcuda is found). nvcc is pinned to 13.0, since
# PTX from a newer nvcc may not load on a 13.0 driver.
set -euo pipefail
venv=${CUDA_VENV:-$HOME/.cache/moshi-rs-cuda13}
log() { echo "cuda-toolchain: $*" >&2; }

if [ ! -e "$venv/.done" ]; then
  log "installing the CUDA 13.0 wheels into $venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96 \
    "nvidia-cuda-cccl==13.0.*" "nvidia-cuda-nvrtc==13.0.*" "nvidia-cublas==13.0.*" "nvidia-curand<10.5" >&2
  touch "$venv/.done"
fi

cuda=$("$venv/bin/python" -c 'import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
lib=$cuda/lib
for name in cublas cublasLt cudart nvrtc; do
  [ -e "$lib/lib$name.so" ] || ln -sf "lib$name.so.13" "$lib/lib$name.so"
done
[ -e "$lib/libcurand.so" ] || ln -sf libcurand.so.10 "$lib/libcurand.so"

stub=$lib/stubs/libcuda.so
if [ ! -e "$stub" ]; then
  sys=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-*/src/driver/sys 2>/dev/null | tail -n 1 || true)
  [ -n "$sys" ] || { log "cudarc's source is not in the cargo registry: run 'cargo fetch' first"; exit 1; }
  mkdir -p "$lib/stubs"
  # One C function per driver entry point cudarc declares; the values never run.
  grep -rhoE 'pub unsafe fn cu[A-Za-z0-9_]+' "$sys" | awk '{print $4}' | sort -u |
    awk '{print "int " $1 "(void) { return 999; }"}' > "$lib/stubs/cuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub" "$lib/stubs/cuda_stub.c"
  log "link-only driver stub: $stub"
fi

echo "export CUDA_HOME='$cuda'"
echo "export PATH='$cuda/bin':\"\$PATH\""
echo "export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}"
