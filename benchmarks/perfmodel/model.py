"""One roofline result: the counted pass (interpreted at the count batch), the structural pass (full
batch, kernels recorded not run), the sm_90a compile of every distinct launch, and the bound."""
from __future__ import annotations

import torch

from . import bound as bd
from . import compile as cc
from . import count, workloads

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def count_pass(loss: str, batch: int, dim: int, dtype: torch.dtype) -> count.Recorder:
    """Kernels interpreted on fp32 tensors with the `dtype` launch configuration."""
    return count.record_step(workloads.make(loss, batch, dim, torch.float32), dtype)


def structural_pass(loss: str, batch: int, dim: int, dtype: torch.dtype) -> count.Recorder:
    """Real dtype, full batch: launches, torch ops, syncs and GEMM shapes; no kernel runs."""
    return count.record_step(workloads.make(loss, batch, dim, dtype), dtype, stub=True)


def compile_launches(rec: count.Recorder) -> dict:
    """{launch key: compile result} for every distinct launch of a pass (one compile each)."""
    specs = {}
    for launch in rec.launches:
        specs.setdefault(launch.key, launch.spec)
    results = cc.compile_specs(list(specs.values()))
    return dict(zip(specs, results))


def _groups(counted: count.Recorder, structural: count.Recorder, scale: float, sixteen: bool) -> dict:
    groups = {}
    for launch in counted.launches:
        g = groups.setdefault(launch.key, dict(name=launch.name, phase=launch.phase, dot_flops=0, exps=0, logs=0,
                                               dot_shapes={}, launches=0, footprint_bytes=0, programs=0,
                                               sixteen_bit=sixteen, precision="",
                                               spec=launch.spec))
        g["dot_flops"] += launch.dot_flops * scale
        g["exps"] += launch.exps * scale
        g["logs"] += launch.logs * scale
        for shp, calls in launch.dot_shapes.items():
            g["dot_shapes"][shp] = g["dot_shapes"].get(shp, 0) + calls * scale
    for g in groups.values():
        g["exps_logs"] = g["exps"] + g["logs"]
        g["precision"] = next((v for p, v in g["spec"]["constexprs"] if isinstance(v, str)
                               and v in ("tf32", "tf32x3", "ieee")), "")
    for launch in structural.launches:  # launches, DRAM footprint and grid at the full batch
        g = groups.get(launch.key) or next((x for x in groups.values() if x["name"] == launch.name), None)
        if g is None:
            continue
        g["launches"] += 1
        g["footprint_bytes"] += launch.footprint_bytes
        g["programs"] = max(g["programs"], launch.programs)
        g.setdefault("full_spec", launch.spec)
    return groups


def run(loss: str, batch: int, dim: int, dtype_name: str, count_batch: int | None = None,
        *, compile_kernels: bool = True) -> dict:
    dtype = DTYPES[dtype_name]
    bc = min(batch, count_batch or 2048)
    shp, shp_c = workloads.shape(loss, batch, dim), workloads.shape(loss, bc, dim)
    logits, logits_c = shp["rows"] * shp["cols"], shp_c["rows"] * shp_c["cols"]
    scale = logits / logits_c
    counted = count_pass(loss, bc, dim, dtype)
    structural = structural_pass(loss, batch, dim, dtype)
    useful_c = workloads.useful_flops(loss, bc, dim)
    useful = workloads.useful_flops(loss, batch, dim)
    tc, tf, tb = counted.totals(), counted.totals("fwd"), counted.totals("bwd")
    executed_c = tc["dot_flops"] + tc["gemm_flops"]
    groups = _groups(counted, structural, scale, dtype != torch.float32)
    compiled = {}
    if compile_kernels:
        specs = {k: g.get("full_spec", g["spec"]) for k, g in groups.items()}
        compiled = dict(zip(specs, cc.compile_specs(list(specs.values()))))
    kernels, times = [], []
    for key, g in groups.items():
        c = compiled.get(key, {})
        t = bd.kernel_time(g, c) if compile_kernels and "error" not in c else None
        if t:
            times.append(t)
        kernels.append(dict(name=g["name"], key=key, phase=g["phase"], mma=c.get("mma"), async_copy=c.get("async_copy"),
                            registers=c.get("registers"), spills=c.get("spills"), smem_bytes=c.get("smem_bytes"),
                            ctas_per_sm=c.get("ctas_per_sm"), occupancy_limiter=c.get("occupancy_limiter"),
                            num_warps=c.get("num_warps"), num_stages=c.get("num_stages"), compile_error=c.get("error"),
                            launches_at_batch=g["launches"], programs_per_launch=g["programs"],
                            dot_flops_at_batch=g["dot_flops"], exps_at_batch=g["exps"], precision=g["precision"],
                            model=t))
    ts = structural.totals()
    gemm_ops = [o for o in structural.torch_ops if o.kind == "gemm"]
    per_logit = lambda n: n / logits_c  # noqa: E731
    result = dict(
        loss=loss, batch=batch, dim=dim, dtype=dtype_name, gpu="H100/H200 SXM (sm_90a, 132 SMs)",
        counted_at_batch=bc, scaling=dict(factor=scale, rule="quadratic counts × (B·N)/(Bc·Nc)",
                                          logits=logits, logits_counted=logits_c),
        useful_flops=useful["total"], useful_flops_counted=useful_c["total"],
        executed_flops_counted=dict(triton_dots=tc["dot_flops"], torch_gemms=tc["gemm_flops"],
                                    fwd=tf["dot_flops"] + tf["gemm_flops"], bwd=tb["dot_flops"] + tb["gemm_flops"]),
        executed_over_useful=executed_c / useful_c["total"] if useful_c["total"] else None,
        executed_over_useful_fwd=((tf["dot_flops"] + tf["gemm_flops"]) / useful_c["fwd"]) if useful_c["fwd"] else None,
        exps_per_logit=dict(fwd=per_logit(tf["exps"]), bwd=per_logit(tb["exps"]), total=per_logit(tc["exps"])),
        logs_per_logit=dict(fwd=per_logit(tf["logs"]), bwd=per_logit(tb["logs"])),
        launches=ts["launches"], torch_ops=ts["torch_ops"], host_syncs=ts["host_syncs"],
        launches_counted=tc["launches"], torch_ops_counted=tc["torch_ops"], host_syncs_counted=tc["host_syncs"],
        torch_op_names=[f"{o.phase}:{o.name}" for o in structural.torch_ops if o.kind != "free"],
        torch_gemm_flops_at_batch=sum(o.flops for o in gemm_ops),
        kernels=kernels,
        assumptions=bd.ASSUMPTIONS,
    )
    ok = compile_kernels and not any(k["compile_error"] for k in kernels)
    detail = bd.bound(useful["total"], times, structural.torch_ops) if ok else None
    result["bound"] = detail["fraction_of_bf16_peak"] if detail else None
    result["bound_detail"] = detail or dict(kind="not modelled", reason="compile skipped or failed")
    return result
