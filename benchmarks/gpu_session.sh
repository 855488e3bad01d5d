#!/usr/bin/env bash
# One device-tool call on a lent GPU machine (see ../shared/gpu/README.md): installs the wheels that
# image lacks (carried in .whl/), runs the GPU test lane and the benchmark sweep, and leaves the
# logs, JSON and plots under $OUT. Prepare once here: ../shared/gpu/fetch-wheels.sh
# Usage (device tool, carry [".whl"]): bash benchmarks/gpu_session.sh
set -uo pipefail
: "${OUT:?OUT must point at the folder whose files come back}"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$HOME/site" .whl/*.whl || exit 1
export PYTHONPATH="$HOME/site:$PWD" PYTHONUNBUFFERED=1
# The CUDA extension (csrc/): built in place here, so the GPU lane does not wait for a JIT build.
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" PATH="$PATH:${CUDA_HOME:-/usr/local/cuda}/bin"
CLIPKERN_BUILD_CUDA=1 python3 setup.py build_ext --inplace > "$OUT/build-ext.log" 2>&1 || tail -n 30 "$OUT/build-ext.log"
python3 -m clipkern.info | tee "$OUT/info.txt"
python3 -m pytest -m gpu -q -x tests 2>&1 | tee "$OUT/gpu-tests.log" | tail -n 25
python3 -m benchmarks.run --out "$OUT" 2>&1 | tee "$OUT/bench.log" | tail -n 40
python3 -m benchmarks.bench_ranking --out "$OUT" 2>&1 | tee "$OUT/bench_ranking.log" | tail -n 15
python3 -m benchmarks.bench_pcclip --out "$OUT" 2>&1 | tee "$OUT/bench_pcclip.log" | tail -n 15
