"""T_model: a modelled time for one forward+backward on an H100 SXM from the counted work, and the
roofline bound useful / (peak · T_model). A bound, never a measurement. Every constant below is an
assumption stated (with its source) in benchmarks/ROOFLINE.md; none is tuned to reach a target."""
from __future__ import annotations

import math

PEAK_BF16 = 989.4e12          # H100 SXM dense bf16/fp16 tensor-core FLOP/s (NVIDIA H100 datasheet)
PEAK_TF32 = 494.7e12          # dense TF32 FLOP/s (datasheet); 3xTF32 runs three TF32 MMAs per product
PEAK_FP32_SIMT = 66.9e12      # FP32 CUDA-core FLOP/s (datasheet): cuBLAS fp32 GEMMs without TF32
SMS = 132
MMA_FLOPS_PER_CLK_SM = 4096   # dense 16-bit: 4 tensor cores × 1024 FLOP/clk (Hopper whitepaper)
CLOCK_HZ = PEAK_BF16 / (SMS * MMA_FLOPS_PER_CLK_SM)  # 1.83 GHz, the clock the datasheet peak implies
MUFU_PER_CLK_SM = 16          # ex2/lg2 results per clock per SM, cc 9.0 (CUDA Programming Guide throughput table)
DRAM_BYTES_PER_S = 3.35e12    # HBM3, H100 SXM datasheet
MMA_EFFICIENCY = {"wgmma": 0.75, "mma.sync": 0.35, "none": 0.35}  # sustained fraction of peak (FlashAttention-3)
CUBLAS_EFFICIENCY = 0.75      # cuBLAS GEMM sustained fraction: its sm_90 kernels are wgmma+TMA kernels, taken at the
                              # same sustained fraction as a wgmma kernel (assumption; sensitivity in ROOFLINE.md)
KSTEP_SYNC_CYCLES = 64        # per k-step barrier/wait cost not hidden by another CTA on the SM (assumption)
FIXED_COST_S = 5e-6           # per kernel launch or torch op (launch latency, tail, sync gaps; assumption)

ASSUMPTIONS = dict(
    peak_bf16_flops=PEAK_BF16, peak_tf32_flops=PEAK_TF32, peak_fp32_simt_flops=PEAK_FP32_SIMT, sms=SMS,
    clock_hz=CLOCK_HZ, mufu_per_clk_per_sm=MUFU_PER_CLK_SM, dram_bytes_per_s=DRAM_BYTES_PER_S,
    mma_efficiency=MMA_EFFICIENCY, cublas_efficiency=CUBLAS_EFFICIENCY, kstep_sync_cycles=KSTEP_SYNC_CYCLES,
    fixed_cost_per_launch_or_op_s=FIXED_COST_S,
    overlap=("per kernel T = max((T_mma + T_mufu / CTAs per SM) × wave quantization, T_dram) + fixed cost: "
             "within a CTA the softmax follows the tile's MMAs; another resident CTA's MMAs run under it"),
)


def kstep_efficiency(dot_shapes: dict, ctas_per_sm: int, passes: int) -> float:
    """MMA cycles per k-step ÷ (those + an unhidden barrier cost), weighted by the dots' counts.
    dot_shapes: {(batch, m, n, k): calls}; a tl.dot of one program's tile is one k-step."""
    total = cycles = 0.0
    for (batch, m, n, k), calls in dot_shapes.items():
        mma = passes * 2 * batch * m * n * k / MMA_FLOPS_PER_CLK_SM * (2 if passes > 1 else 1)
        total += calls * mma
        cycles += calls * (mma + KSTEP_SYNC_CYCLES / max(1, ctas_per_sm))
    return total / cycles if cycles else 1.0


def wave_factor(programs: int, ctas_per_sm: int) -> float:
    """≥ 1: the last wave's idle SMs, if programs do equal work."""
    slots = SMS * max(1, ctas_per_sm)
    return math.ceil(programs / slots) * slots / programs if programs else 1.0


def kernel_time(group: dict, compiled: dict) -> dict:
    """group: dot_flops, exps_logs (at the modelled batch), dot_shapes, programs (per launch),
    launches, footprint_bytes (all launches), precision. compiled: compile.compile_one's result."""
    mma_kind = compiled.get("mma", "none")
    ctas = max(1, compiled.get("ctas_per_sm", 1) or 1)
    passes = 3 if group["precision"] == "tf32x3" else 1
    rate = PEAK_BF16 if passes == 1 and group["sixteen_bit"] else PEAK_TF32
    eff = MMA_EFFICIENCY.get(mma_kind, 0.35) * kstep_efficiency(group["dot_shapes"], ctas, passes)
    t_mma = passes * group["dot_flops"] / (rate * eff) if group["dot_flops"] else 0.0
    t_mufu = group["exps_logs"] / (MUFU_PER_CLK_SM * SMS * CLOCK_HZ)
    waves = wave_factor(group["programs"], ctas)
    t_dram = group["footprint_bytes"] / DRAM_BYTES_PER_S
    t_mufu_exposed = t_mufu / ctas
    t = max((t_mma + t_mufu_exposed) * waves, t_dram) + FIXED_COST_S * group["launches"]
    return dict(t_s=t, t_mma_s=t_mma, t_mufu_s=t_mufu, t_mufu_exposed_s=t_mufu_exposed, t_dram_s=t_dram, wave_factor=waves, mma_efficiency=eff,
                mma_passes=passes)


def torch_op_time(op) -> float:
    """One torch op (structural pass, real dtypes, full batch)."""
    if op.kind == "gemm":
        sixteen = op.dtype in ("torch.bfloat16", "torch.float16")
        rate = (PEAK_BF16 if sixteen else PEAK_FP32_SIMT) * CUBLAS_EFFICIENCY
        return max(op.flops / rate, op.bytes / DRAM_BYTES_PER_S) + FIXED_COST_S
    return op.bytes / DRAM_BYTES_PER_S + FIXED_COST_S


def bound(useful_flops: float, kernel_times: list[dict], torch_ops: list) -> dict:
    t_k = sum(k["t_s"] for k in kernel_times)
    t_ops = sum(torch_op_time(op) for op in torch_ops if op.kind in ("op", "gemm"))
    t = t_k + t_ops
    return dict(kind="modelled upper bound (not a measurement)", t_model_s=t, t_kernels_s=t_k, t_torch_ops_s=t_ops,
                fraction_of_bf16_peak=(useful_flops / (PEAK_BF16 * t)) if useful_flops and t else None)
