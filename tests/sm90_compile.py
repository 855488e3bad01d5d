"""Compile every Triton kernel for sm_90a (H100/H200) on a machine without a GPU, with the block
configuration clipkern would launch there, and report ptxas' register and spill counts.

    python tests/sm90_compile.py            # prints one line per kernel, exits 1 on failure

A kernel that the GPU compiler rejects (the CPU interpreter accepts more) or that spills registers
fails here. tests/test_sm90_compile.py runs this in a subprocess (TRITON_INTERPRET must be unset).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import clipkern.ops.base as base
from clipkern.ops.contrastive import triton_kernels as ck
from clipkern.ops.imsep import triton_kernels as ik
from clipkern.ops.pairdiff import triton_kernels as pk
from clipkern.ops.pairdiff.triton_launchers import GPU_BLOCKS as PAIRDIFF_BLOCKS
from clipkern.ops.sigmoid import triton_kernels as sk

TARGET = GPUTarget("cuda", 90, 32)
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
FEATURE_PTRS = {"x_ptr", "y_ptr", "dx_ptr", "u_ptr"}
DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}

# (name, kernel, backward?, extra constexprs, tile_config keyword arguments)
KERNELS = [
    ("contrastive_fwd", ck._contrastive_fwd_kernel, False, {}, {}),
    ("contrastive_bwd", ck._contrastive_bwd_kernel, True, dict(WITH_DSCALE=True, TRANSPOSED=False), {}),
    ("contrastive_bwd_t", ck._contrastive_bwd_kernel, True, dict(WITH_DSCALE=False, TRANSPOSED=True), {}),
    ("sigmoid_fwd", sk._sigmoid_fwd_kernel, False, {}, {}),
    ("sigmoid_bwd", sk._sigmoid_bwd_kernel, True, dict(LABELS_ON_OWN=True, WITH_DSCALE=True), {}),
    ("sigmoid_bwd_t", sk._sigmoid_bwd_kernel, True, dict(LABELS_ON_OWN=False, WITH_DSCALE=False), {}),
    ("imsep_fwd", ik._imsep_fwd_kernel, False, {}, dict(dots_per_tile=2)),
    ("imsep_bwd", ik._imsep_bwd_kernel, True, {}, dict(dots_per_tile=2)),
    # pairdiff: A and R are fp32 whatever the feature dtype; the launcher uses the fp32 forward's
    # warps/stages (the fp32 rows here); the 16-bit rows compile the same kernels at 8 warps as well.
    *[(f"pairdiff_{w}", getattr(pk, f"_pairdiff_{w}_kernel"), False,
       dict(zip(("BLOCK_M", "BLOCK_N", "BLOCK_K"), PAIRDIFF_BLOCKS[w])), {}) for w in ("fwd", "bwd_a", "bwd_r")],
]


def signature(fn, constexprs: dict, dtype: str) -> dict:
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in FEATURE_PTRS:
            sig[name] = f"*{dtype}"
        elif name == "labels_ptr":
            sig[name] = "*i64"
        elif name.endswith("_ptr"):
            sig[name] = "*fp32"
        else:
            sig[name] = "i32"
    return sig


def ptxas_report(ptx: str) -> tuple[int, int]:
    """(registers, spill-store bytes) as ptxas -v reports them for sm_90a."""
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        out = subprocess.run([PTXAS, "-arch=sm_90a", "-v", f.name, "-o", os.devnull],
                             capture_output=True, text=True, check=True)
    finally:
        os.unlink(f.name)
    text = out.stdout + out.stderr
    regs = int(re.search(r"Used (\d+) registers", text).group(1))
    spills = int(re.search(r"(\d+) bytes spill stores", text).group(1))
    return regs, spills


def main() -> int:
    base._sm_count = lambda device: 132  # an H100 SXM, without asking a driver
    failures = []
    for torch_dtype, dt in DTYPES.items():
        for name, fn, backward, extra, cfg_kw in KERNELS:
            cfg = base.tile_config(4096, 4096, 768, torch.device("cuda"), torch_dtype, **cfg_kw)
            args = cfg.kernel_args(torch_dtype, backward=backward)
            num_warps, num_stages = args.pop("num_warps"), args.pop("num_stages")
            constexprs = dict(args, INTERPRETED=False, **extra)
            try:
                kernel = triton.compile(ASTSource(fn, signature(fn, constexprs, dt), constexprs), target=TARGET,
                                        options=dict(num_warps=num_warps, num_stages=num_stages))
                regs, spills = ptxas_report(kernel.asm["ptx"])
            except Exception as exc:  # noqa: BLE001 - reported and counted
                failures.append(f"{name}[{dt}]: {type(exc).__name__}: {str(exc)[:500]}")
                print(f"FAIL {name:<18} {dt}: {type(exc).__name__}", flush=True)
                continue
            status = "ok" if spills == 0 else "SPILLS"
            if spills:
                failures.append(f"{name}[{dt}]: {spills} bytes of register spills")
            print(f"{status:<6} {name:<18} {dt}  tile={constexprs['BLOCK_M']} k={constexprs['BLOCK_K']} "
                  f"d={constexprs.get('BLOCK_D', '-')} warps={num_warps}  regs={regs} spill={spills}", flush=True)
    for f in failures:
        print(f, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
