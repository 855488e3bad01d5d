"""The CUDA (csrc) path of the CLIP loss in the performance model: the Hopper kernels of
csrc/cuda/hopper_contrastive.cu as an H100/H200 runs them for `backend="cuda"` (fp16/bf16, D % 8 == 0).

Nothing is interpreted here (the kernels are CUDA C++): the work is counted *structurally* from the same
numbers the host code launches with, and the binary facts come from the sm_90a cubin.

* Launch plan: csrc/cuda/hopper_plan.h (tile sizes, the forward's split grid, the backward's workspace
  chunk, shared memory per CTA). Its constants are read from the header; `forward_plan` and
  `workspace_rows` mirror its functions line by line, and tests/test_hopper_compile.py checks the mirror
  against the header compiled on the host (tests/hopper_plan_check.cpp).
* MMA FLOPs: each tile is ⌈D / kTileK⌉ k-steps of 2·kTileRows·kTileCols·kTileK (edge tiles count in
  full: the TMA zero-fills them and the wgmma runs anyway), summed over the tiles the grid walks.
* Exps / logs (MUFU lane operations), per tile, as the epilogues of hopper_contrastive.cu issue them:
    forward  kTileRows·kTileCols (row exps p) + kTileRows (row rescale: lane q of a quad does row q)
             + kTileRows (the column weights w_i) + kWarps·kTileCols (merge of the warps' column
             partials) + 2·kTileCols (merge into the split's column partial, every row block but the first)
    dS       kTileRows·kTileCols (P_r) + kTileRows (a_i) + kTileCols (b_j)
    merge    per element: 2 per split partial + 1 log (lse_split_merge_kernel of kernels.cu)
  The data-dependent exact fallbacks (a column sum below the flush floor; some b_j > e^30) are not
  counted: they do not occur on the model's inputs (unit features, s = 14.3), as for the Triton count.
* Torch work: the extension's GEMMs (dX = ws·Y, dY = wsᵀ·X, fp32 accumulation across chunks), its
  sum and cast, exactly as hopper_dispatch.cuh issues them; the ATen ops of the loss op pair
  (csrc/composite/contrastive_loss.cpp: positives, means, their backward), listed as that file issues
  them; and whatever the public API itself adds around the op, recorded by running
  `clipkern.functional.clip_loss(backend="cuda")` on fake tensors (FakeTensorMode: shapes only).
* Binary facts (registers, spills, MMA kind, async copies) come from the sm_90a code in the built
  extension (clipkern/_C*.so); without one, from a compile of hopper_contrastive.cu alone, cached
  under build/perfmodel-cuda/ by the sources' hash.
The time model and the bound are bound.py's, unchanged: a modelled bound, never a measurement.
"""
from __future__ import annotations

import glob
import hashlib
import os
import re
import subprocess

import torch

from . import bound as bd
from . import compile as cc
from . import workloads

from .cuda_plan import CUDA_DIR, ROOT, cdiv, env_budget_mb, forward_plan, plan_constants, workspace_rows
from .cuda_torch_ops import api_torch_ops, extension_torch_ops, loss_op_torch_ops
SOURCES = ("hopper_contrastive.cu", "hopper_mainloop.cuh", "hopper_plan.h", "hopper_contrastive.h", "common.cuh")
KERNELS = {"fwd": "contrastive_fwd_sm90_kernel", "ds": "contrastive_ds_sm90_kernel", "merge": "lse_split_merge_kernel"}
WARPS = 4


def kernel_groups(M: int, N: int, D: int, elem_bytes: int) -> list[dict]:
    """One group per kernel (all its launches) in bound.kernel_time's terms, counted from the plan."""
    k = plan_constants()
    BM, BN, BK = k["kTileRows"], k["kTileCols"], k["kTileK"]
    k_steps = cdiv(D, BK)
    step_flops = 2 * BM * BN * BK
    p = forward_plan(M, N)
    tiles = p["row_blocks"] * p["col_blocks"]
    # tiles in the first row block of their row split store their column partials without a merge
    first_row_block_tiles = p["row_splits"] * p["col_blocks"]
    fwd_exps = tiles * (BM * BN + 2 * BM + WARPS * BN) + (tiles - first_row_block_tiles) * 2 * BN
    feat = (M + N) * D * elem_bytes
    part = 2 * 4 * (p["col_splits"] * M + p["row_splits"] * N)
    fwd = dict(name=KERNELS["fwd"], phase="fwd", dot_flops=tiles * k_steps * step_flops, exps_logs=fwd_exps,
               dot_shapes={(1, BM, BN, BK): tiles * k_steps}, launches=1, programs=p["row_splits"] * p["col_splits"],
               footprint_bytes=feat + part + 4, sixteen_bit=True, precision="", tiles=tiles)
    merges = []
    for count_, splits in ((M, p["col_splits"]), (N, p["row_splits"])):
        merges.append(dict(exps=count_ * 2 * splits, logs=count_, programs=cdiv(count_, 256),
                           bytes=4 * count_ * (2 * splits + 2)))
    merge = dict(name=KERNELS["merge"], phase="fwd", dot_flops=0, exps_logs=sum(m["exps"] + m["logs"] for m in merges),
                 dot_shapes={}, launches=2, programs=max(m["programs"] for m in merges),
                 footprint_bytes=sum(m["bytes"] for m in merges), sixteen_bit=True, precision="")
    chunk = workspace_rows(M, N, D, elem_bytes, env_budget_mb())
    chunks = [min(chunk, M - r0) for r0 in range(0, M, chunk)]
    col_tiles = cdiv(N, BN)
    ds_tiles = sum(cdiv(rows, BM) * col_tiles for rows in chunks)
    stats = 4 * (3 * M + 3 * N) + 4 * cdiv(M, BM) * col_tiles
    ds = dict(name=KERNELS["ds"], phase="bwd", dot_flops=ds_tiles * k_steps * step_flops,
              exps_logs=ds_tiles * (BM * BN + BM + BN), dot_shapes={(1, BM, BN, BK): ds_tiles * k_steps},
              launches=len(chunks), programs=max(cdiv(rows, BM) * col_tiles for rows in chunks),
              footprint_bytes=sum(feat + rows * N * elem_bytes + stats for rows in chunks), sixteen_bit=True,
              precision="", tiles=ds_tiles)
    return [fwd, merge, ds]


# ---------------------------------------------------------------- binary facts (sm_90a)
def _cuobjdump(args: list, path: str) -> str:
    return subprocess.run([cc._bin("cuobjdump"), *args, path], capture_output=True, text=True, check=True).stdout


_FACTS: dict = {}


def binary_facts(path: str) -> dict:
    """{kernel: facts} for the KERNELS' sm_90a code in a cubin / object / shared library: registers,
    local memory (spills), static shared memory, SASS opcode counts (cached per file and mtime)."""
    key = (os.path.abspath(path), os.path.getmtime(path))
    if key not in _FACTS:
        _FACTS[key] = _read_binary_facts(path)
    return _FACTS[key]


def _read_binary_facts(path: str) -> dict:
    facts: dict = {}
    arch, current = None, None
    for line in _cuobjdump(["-res-usage"], path).splitlines():
        if m := re.search(r"arch = (sm_\w+)", line):
            arch = m.group(1)
        elif m := re.search(r"Function (\S+):", line):
            current = next((k for k, n in KERNELS.items() if n in m.group(1)), None) if arch == "sm_90a" else None
        elif current and (m := re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", line)):
            regs, stack, shared, local = map(int, m.groups())
            f = facts.setdefault(current, dict(registers=0, stack=0, static_smem=0, local=0))
            f.update(registers=max(f["registers"], regs), stack=max(f["stack"], stack),
                     static_smem=max(f["static_smem"], shared), local=max(f["local"], local))
    arch, current = None, None
    for line in _cuobjdump(["-sass"], path).splitlines():
        if m := re.search(r"arch = (sm_\w+)", line):
            arch = m.group(1)
        elif m := re.search(r"Function : (\S+)", line):
            current = next((k for k, n in KERNELS.items() if n in m.group(1)), None) if arch == "sm_90a" else None
        elif current and (m := re.search(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)", line)):
            sass = facts.setdefault(current, {}).setdefault("sass", {k: 0 for k in cc.SASS_OPS + ("LDL", "STL")})
            for k in sass:
                if m.group(1) == k or m.group(1).startswith(k + "."):
                    sass[k] += 1
    return facts


def declared_static_smem(facts: dict) -> int:
    """The kernel's own static shared memory: cuobjdump's SHARED for sm_90 includes the 1 KB the SM
    reserves per CTA (a kernel with no shared memory at all reports 1024), which compile.occupancy
    already adds."""
    return max(0, facts.get("static_smem", 0) - cc.SM90["smem_reserved_per_block"])


def _source_hash() -> str:
    h = hashlib.sha256()
    for name in SOURCES:
        with open(os.path.join(CUDA_DIR, name), "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def nvcc() -> str | None:
    """The CUDA toolkit's nvcc: $CUDA_HOME/bin/nvcc, /usr/local/cuda-13.0 (behind this machine's wrapper), PATH."""
    import shutil

    home = os.environ.get("CUDA_HOME")
    for candidate in ([os.path.join(home, "bin", "nvcc")] if home else []) + ["/usr/local/cuda-13.0/bin/nvcc"]:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("nvcc")


def cutlass_include() -> str | None:
    """The CuTe/CUTLASS headers of pip nvidia-cutlass (as setup.py finds them)."""
    import importlib.util

    spec = importlib.util.find_spec("cutlass_library")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "source", "include")
    return path if os.path.isfile(os.path.join(path, "cute", "tensor.hpp")) else None


# torch.utils.cpp_extension's nvcc flags for a CUDAExtension (as tests/compile_cuda.sh) + the Hopper define
NVCC_FLAGS = ("-std=c++20", "-O3", "-lineinfo", "-Xcompiler", "-fPIC", "--expt-relaxed-constexpr",
              "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
              "-D__CUDA_NO_HALF2_OPERATORS__", "-DCLIPKERN_WITH_CUDA", "-DCLIPKERN_HOPPER_SM90A")


def compile_standalone(out: str, timeout: float = 900) -> tuple[int, str]:
    """nvcc -c hopper_contrastive.cu for sm_90a with `-Xptxas -v`: (exit status, nvcc + ptxas report)."""
    tool, include = nvcc(), cutlass_include()
    if tool is None or include is None:
        return 127, f"cannot compile: nvcc {'found' if tool else 'missing'}, nvidia-cutlass headers " \
                    f"{'found' if include else 'missing'}"
    incs = ["-I", include]
    site = os.path.dirname(os.path.dirname(torch.__file__))
    incs += [a for d in sorted(glob.glob(os.path.join(site, "nvidia", "cu[0-9]*", "include")))[-1:] for a in ("-I", d)]
    cmd = [tool, "-c", os.path.join(CUDA_DIR, "hopper_contrastive.cu"), "-o", out,
           "-gencode", "arch=compute_90a,code=sm_90a", *NVCC_FLAGS, *incs, "-Xptxas", "-v"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def standalone_object() -> str:
    """hopper_contrastive.cu compiled alone for sm_90a, cached as build/perfmodel-cuda/<sources hash>.o."""
    folder = os.path.join(ROOT, "build", "perfmodel-cuda")
    out = os.path.join(folder, f"hopper_contrastive-{_source_hash()}.o")
    if not os.path.isfile(out):
        os.makedirs(folder, exist_ok=True)
        rc, report = compile_standalone(out + ".tmp")
        if rc != 0:
            raise RuntimeError(f"sm_90a compile of hopper_contrastive.cu failed:\n{report[-3000:]}")
        os.replace(out + ".tmp", out)
    return out


def built_extension() -> str | None:
    """The built clipkern._C, if it holds sm_90a code for the Hopper kernels."""
    for path in sorted(glob.glob(os.path.join(ROOT, "clipkern", "_C*.so"))):
        try:
            if "fwd" in binary_facts(path):
                return path
        except subprocess.CalledProcessError:  # no device code at all (a CPU-only build)
            continue
    return None


def compiled_kernels() -> tuple[dict, str]:
    """({"fwd" | "ds" | "merge": compile facts in compile.compile_one's terms}, where they come from)."""
    path = built_extension()
    source = f"built extension {os.path.relpath(path, ROOT)}" if path else None
    if path is None:
        path = standalone_object()
        source = f"standalone sm_90a compile {os.path.relpath(path, ROOT)}"
    k = plan_constants()
    out = {}
    for kind, f in binary_facts(path).items():
        dynamic = {"fwd": k["kFwdSmemBytes"], "ds": k["kDsSmemBytes"]}.get(kind, 0)
        smem = dynamic + declared_static_smem(f)
        warps = WARPS if kind != "merge" else 8  # lse_split_merge_kernel: 256 threads
        ctas, limiter = cc.occupancy(f.get("registers", 0), warps, smem)
        mma, async_copy = cc.describe(f["sass"])
        out[kind] = dict(name=KERNELS[kind], mma=mma, async_copy=async_copy, registers=f.get("registers"),
                         spills=f.get("local", 0) + f["sass"]["LDL"] + f["sass"]["STL"], smem_bytes=smem,
                         num_warps=warps, num_stages={"fwd": k["kFwdStages"], "ds": k["kDsStages"]}.get(kind), ctas_per_sm=ctas,
                         occupancy_limiter=limiter, sass=f["sass"])
    if "merge" not in out:  # a standalone compile has no kernels.cu: no MMA; one CTA per SM assumed (a bound)
        out["merge"] = dict(name=KERNELS["merge"], mma="none", async_copy="none", registers=None, spills=None,
                            smem_bytes=0, num_warps=8, num_stages=None, ctas_per_sm=1,
                            occupancy_limiter="assumed (not compiled here)", sass={})
    return out, source


def run(batch: int, dim: int, dtype_name: str, *, compile_kernels: bool = True) -> dict:
    """One CLIP fwd+bwd (B = N = batch, D = dim) on the CUDA path, in model.run's terms."""
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype_name)
    if dtype is None:
        return dict(path="cuda", bound=None, reason=f"{dtype_name}: the Hopper kernels take fp16/bf16 only "
                    "(fp32 runs the SIMT kernels of contrastive.cuh, not modelled)")
    M = N = batch
    e = torch.tensor([], dtype=dtype).element_size()
    groups = kernel_groups(M, N, dim, e)
    ext_ops = extension_torch_ops(M, N, dim, dtype) + loss_op_torch_ops(M, N, dim, dtype)
    api_ops, custom = api_torch_ops(M, N, dim, dtype)
    compiled, source = compiled_kernels() if compile_kernels else ({}, None)
    kernels, times = [], []
    for g in groups:
        kind = next(k for k, n in KERNELS.items() if n == g["name"])
        c = compiled.get(kind, {})
        t = bd.kernel_time(g, c) if c else None
        if t:
            times.append(t)
        kernels.append(dict(name=g["name"], phase=g["phase"], mma=c.get("mma"), async_copy=c.get("async_copy"),
                            registers=c.get("registers"), spills=c.get("spills"), smem_bytes=c.get("smem_bytes"),
                            ctas_per_sm=c.get("ctas_per_sm"), occupancy_limiter=c.get("occupancy_limiter"),
                            launches_at_batch=g["launches"], programs_per_launch=g["programs"],
                            dot_flops_at_batch=g["dot_flops"], exps_at_batch=g["exps_logs"], model=t))
    useful = workloads.useful_flops("clip", batch, dim)
    gemm = sum(o.flops for o in ext_ops if o.kind == "gemm")
    dots = {p: sum(g["dot_flops"] for g in groups if g["phase"] == p) for p in ("fwd", "bwd")}
    exps = {p: sum(g["exps_logs"] for g in groups if g["phase"] == p) for p in ("fwd", "bwd")}
    all_ops = ext_ops + api_ops
    result = dict(
        path="cuda: csrc Hopper kernels (hopper_contrastive.cu) + cuBLAS, through clip_loss(backend='cuda')",
        loss="clip", batch=batch, dim=dim, dtype=dtype_name, counted="structurally from hopper_plan.h (no interpreter)",
        executed_over_useful=(dots["fwd"] + dots["bwd"] + gemm) / useful["total"],
        exps_per_logit={p: exps[p] / (M * N) for p in exps},
        launches=sum(g["launches"] for g in groups), csrc_ops_called=custom,
        torch_ops=sum(o.kind in ("op", "gemm") for o in all_ops),
        torch_op_names=[f"{o.phase}:{o.name}" for o in all_ops if o.kind != "free"],
        host_syncs=sum(o.kind == "sync" for o in all_ops), compile_source=source, kernels=kernels,
        assumptions=bd.ASSUMPTIONS)
    ok = compile_kernels and len(times) == len(groups)
    detail = bd.bound(useful["total"], times, all_ops) if ok else None
    csrc_only = bd.bound(useful["total"], times, ext_ops) if ok else None
    result["bound"] = detail["fraction_of_bf16_peak"] if detail else None
    result["bound_detail"] = detail or dict(kind="not modelled", reason="compile skipped or failed")
    result["bound_csrc_ops_only"] = csrc_only["fraction_of_bf16_peak"] if csrc_only else None
    return result


def render(r: dict) -> str:
    if r.get("bound") is None and "kernels" not in r:
        return f"  CUDA path: not modelled ({r.get('reason')})"
    lines = [f"  CUDA path ({r['path']}); {r['counted']}",
             f"  executed / useful MMA FLOPs: {r['executed_over_useful']:.3f}   exps per logit: fwd "
             f"{r['exps_per_logit']['fwd']:.3f}  bwd {r['exps_per_logit']['bwd']:.3f}   kernel launches "
             f"{r['launches']}, torch ops {r['torch_ops']}, host syncs {r['host_syncs']}",
             f"  binary: {r['compile_source']}",
             f"  {'kernel':<30} {'phase':<4} {'mma':<9} {'async':<9} {'regs':>4} {'spill':>5} {'smem':>7} "
             f"{'CTA/SM':>6} {'launch':>6} {'T_model ms':>10}"]
    fmt = lambda x, spec: "-" if x is None else format(x, spec)  # noqa: E731
    for k in r["kernels"]:
        t = k["model"]["t_s"] * 1e3 if k.get("model") else None
        lines.append(f"  {k['name'][:30]:<30} {k['phase']:<4} {str(k['mma']):<9} {str(k['async_copy']):<9} "
                     f"{fmt(k['registers'], 'd'):>4} {fmt(k['spills'], 'd'):>5} {fmt(k['smem_bytes'], 'd'):>7} "
                     f"{fmt(k['ctas_per_sm'], 'd'):>6} {k['launches_at_batch']:>6} {fmt(t, '.3f'):>10}")
    b = r["bound_detail"]
    if r["bound"] is not None:
        lines.append(f"  MODELLED BOUND, CUDA path (not a measurement): T_model = {b['t_model_s'] * 1e3:.3f} ms "
                     f"(kernels {b['t_kernels_s'] * 1e3:.3f}, torch ops {b['t_torch_ops_s'] * 1e3:.3f}); "
                     f"useful / (989.4 TFLOP/s · T_model) = {r['bound']:.3f}  "
                     f"[csrc op alone, without the API's torch ops: {r['bound_csrc_ops_only']:.3f}]")
    else:
        lines.append(f"  MODELLED BOUND, CUDA path: none ({b.get('reason')})")
    return "\n".join(lines)
