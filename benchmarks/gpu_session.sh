#!/usr/bin/env bash
# One device-tool call on a lent GPU machine (see ../shared/gpu/README.md), finished inside 8 minutes
# on an H200: installs the wheels that image lacks (carried in .whl/), then runs, in priority order,
# each step time-boxed and writing its log/JSON under $OUT as it goes:
#   1. the GPU test lane for the CLIP and SigLIP losses (fp32/fp16/bf16 against float64);
#   2. the CLIP benchmark at B ∈ {4096, 16384, 32768, 65536}, D = 768, bf16, against open_clip,
#      torch.compile and Inf-CL, with the bf16 matmul rate measured in the same process;
#   3. the rest as time allows: the whole GPU lane, the SigLIP benchmark, the CUDA extension build
#      and the ranking / PC-CLIP benchmarks.
# It ends with a short table (the device tool returns only the tail of the output).
# Prepare once here: ../shared/gpu/fetch-wheels.sh; usage (device tool, carry [".whl"], timeout_s
# about 540): bash benchmarks/gpu_session.sh. Commit what comes back under benchmarks/results/<gpu>/.
set -uo pipefail
: "${OUT:?OUT must point at the folder whose files come back}"
BUDGET_S=${BUDGET_S:-470}       # whole script, seconds (8 minutes minus the tool's start and transfers)
START=$SECONDS
python3 -m pip install -q --no-index --no-deps --no-compile --target "$HOME/site" .whl/*.whl \
    > "$OUT/pip.log" 2>&1 || { tail -n 20 "$OUT/pip.log"; exit 1; }
export PYTHONPATH="$HOME/site:$PWD" PYTHONUNBUFFERED=1

# step NAME MAX_SECONDS COMMAND...: runs COMMAND with a timeout of min(MAX, what is left), logs to
# $OUT/NAME.log and records "NAME rc seconds" in $OUT/steps.txt.
step() {
    local name=$1 max=$2; shift 2
    local left=$((BUDGET_S - (SECONDS - START)))
    if (( left < 20 )); then echo "$name skipped (budget spent)" | tee -a "$OUT/steps.txt"; return; fi
    local limit=$(( max < left ? max : left )) t0=$SECONDS
    timeout --signal=INT --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc ${limit}s-box took=$((SECONDS - t0))s" | tee -a "$OUT/steps.txt"
}

python3 -m clipkern.info > "$OUT/info.txt" 2>&1
step gpu-lane-clip-siglip 150 python3 -m pytest -m gpu -q -x tests/test_gpu.py -k "clip or siglip or memory"
step bench-clip 200 python3 -m benchmarks.run --out "$OUT" --loss clip --batch-sizes 4096 16384 32768 65536 \
    --dim 768 --dtype bf16
step gpu-lane-rest 90 python3 -m pytest -m gpu -q tests --deselect tests/test_gpu.py
step bench-siglip 60 python3 -m benchmarks.run --out "$OUT" --loss siglip --batch-sizes 4096 16384 32768 \
    --dim 768 --dtype bf16
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" PATH="$PATH:${CUDA_HOME:-/usr/local/cuda}/bin"
step build-ext 120 env CLIPKERN_BUILD_CUDA=1 python3 setup.py build_ext --inplace
step bench-ranking 40 python3 -m benchmarks.bench_ranking --out "$OUT"
step bench-pcclip 40 python3 -m benchmarks.bench_pcclip --out "$OUT"

echo "== steps (seconds of $BUDGET_S) =="; cat "$OUT/steps.txt"
echo "== GPU lane =="; tail -n 3 "$OUT/gpu-lane-clip-siglip.log"
echo "== CLIP benchmark =="; tail -n 25 "$OUT/bench-clip.log"
