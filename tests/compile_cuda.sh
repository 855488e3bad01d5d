#!/usr/bin/env bash
# Compiles csrc/cuda/kernels.cu standalone (no GPU needed) for sm_80 and sm_90 with torch's extension
# flags, and prints ptxas's register / shared-memory / spill report for every kernel.
#   tests/compile_cuda.sh [output.o]        (default: a temp file)
# Environment: CLIPKERN_NVCC (default: the toolkit nvcc behind CUDA_HOME, else `nvcc` on PATH),
# PYTHON (default: .venv/bin/python, for the torch include folders), CLIPKERN_ARCHS (default "80 90").
# Exit status: nvcc's. A line "SPILLS: n" summarises the spill stores/loads ptxas reported.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
NVCC="${CLIPKERN_NVCC:-}"
if [[ -z "$NVCC" ]]; then
  if [[ -n "${CUDA_HOME:-}" && -x "$CUDA_HOME/bin/nvcc" ]]; then NVCC="$CUDA_HOME/bin/nvcc";
  elif [[ -x /usr/local/cuda-13.0/bin/nvcc ]]; then NVCC=/usr/local/cuda-13.0/bin/nvcc;
  else NVCC="$(command -v nvcc)"; fi
fi
read -r TORCH_INC PIP_CUDA_INC < <("$PYTHON" - <<'PY'
import glob, os, torch
inc = os.path.join(os.path.dirname(torch.__file__), "include")
site = os.path.dirname(os.path.dirname(torch.__file__))
cu = sorted(glob.glob(os.path.join(site, "nvidia", "cu[0-9]*", "include")))
print(inc, cu[-1] if cu else "")
PY
)
OUT="${1:-$(mktemp --suffix=.o)}"
GENCODE=()
for a in ${CLIPKERN_ARCHS:-80 90}; do GENCODE+=(-gencode "arch=compute_$a,code=sm_$a"); done
# the flags torch.utils.cpp_extension.BuildExtension passes to nvcc for a CUDAExtension (torch 2.13: -std=c++20)
FLAGS=(-std=c++20 -O3 -lineinfo -Xcompiler -fPIC --expt-relaxed-constexpr
       -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__
       -D__CUDA_NO_HALF2_OPERATORS__ -DCLIPKERN_WITH_CUDA -DTORCH_API_INCLUDE_EXTENSION_H
       -DTORCH_EXTENSION_NAME=_C -D_GLIBCXX_USE_CXX11_ABI=1)
INCS=(-I"$TORCH_INC" -I"$TORCH_INC/torch/csrc/api/include")
[[ -n "$PIP_CUDA_INC" ]] && INCS+=(-I"$PIP_CUDA_INC")
LOG="$(mktemp)"
set +e
"$NVCC" -c "$ROOT/csrc/cuda/kernels.cu" -o "$OUT" "${GENCODE[@]}" "${FLAGS[@]}" "${INCS[@]}" -Xptxas -v >"$LOG" 2>&1
rc=$?
set -e
# ptxas -v: "Compiling entry function 'X' for 'sm_90'" then "Used N registers, ... bytes smem"
grep -E "error|warning|Compiling entry|Used [0-9]+ registers|spill" "$LOG" | grep -v "0 bytes spill stores, 0 bytes spill loads" || true
spills=$(grep -Eo "[1-9][0-9]* bytes spill (stores|loads)" "$LOG" | wc -l || true)
echo "SPILLS: $spills"
[[ $rc -ne 0 ]] && tail -50 "$LOG"
rm -f "$LOG"
echo "nvcc exit status: $rc ($NVCC -> $OUT)"
exit $rc
