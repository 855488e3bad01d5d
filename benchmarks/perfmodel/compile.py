"""Compile Triton kernels for sm_90a (H100/H200) without a GPU, exactly as the JIT would at launch,
and read what the binary does: MMA kind, async copies, registers, spills, shared memory, CTAs/SM.

A *spec* is one distinct launch as recorded by benchmarks.perfmodel.count (JSON-safe dict):
    {"module", "name", "signature": {arg: type}, "constexprs": [[path, value]], "attrs": [[path, attrs]],
     "options": {"num_warps", "num_stages", ...}}
where signature/constexprs/attrs come from triton's own binder (runtime/jit.py
`create_function_from_signature` + `JITFunction._pack_args`), i.e. the runtime specialization the
JIT applies: 16-byte divisibility of pointers and integers (tt.divisibility = 16), and integers
equal to 1 turned into constexprs.

The compile must run without TRITON_INTERPRET (the kernels must be JITFunctions): `compile_specs`
runs in-process when the interpreter is off and in a subprocess (`python -m
benchmarks.perfmodel.compile`, specs on stdin, results on stdout) when it is on.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import tempfile

TARGET_ARCH = "sm_90a"
_BIN = None


def _bin(tool: str) -> str:
    global _BIN
    if _BIN is None:
        import triton

        _BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    return os.path.join(_BIN, tool)


def target():
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", 90, 32)  # capability 90 compiles for sm_90a (wgmma, TMA)


# ------------------------------------------------------------------ sm_90 limits (occupancy)
# CUDA C++ Programming Guide, "Technical Specifications per Compute Capability", compute capability 9.0;
# allocation granularities as in NVIDIA's CUDA Occupancy Calculator for cc 9.0.
SM90 = dict(regs_per_sm=65536, max_regs_per_thread=255, reg_alloc_unit=256, max_warps_per_sm=64,
            max_ctas_per_sm=32, smem_per_sm=228 * 1024, smem_per_block_max=227 * 1024,
            smem_reserved_per_block=1024)


def occupancy(registers: int, num_warps: int, smem_bytes: int) -> tuple[int, str]:
    """(resident CTAs per SM, the limiting resource) for one kernel on an sm_90 SM."""
    lim = SM90
    unit = lim["reg_alloc_unit"]
    regs_per_warp = -(-max(registers, 1) * 32 // unit) * unit
    by = {
        "registers": (lim["regs_per_sm"] // regs_per_warp) // num_warps,
        "warps": lim["max_warps_per_sm"] // num_warps,
        "blocks": lim["max_ctas_per_sm"],
        "shared_memory": (lim["smem_per_sm"] // (smem_bytes + lim["smem_reserved_per_block"])
                          if smem_bytes <= lim["smem_per_block_max"] else 0),
    }
    limiter = min(by, key=by.get)
    return by[limiter], limiter


# ------------------------------------------------------------------ ptxas / SASS
def ptxas_info(ptx: str) -> dict:
    """registers, spill stores/loads (bytes) and ptxas' static shared memory, from `ptxas -v`."""
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        out = subprocess.run([_bin("ptxas"), f"-arch={TARGET_ARCH}", "-v", f.name, "-o", os.devnull],
                             capture_output=True, text=True, check=True)
    finally:
        os.unlink(f.name)
    text = out.stdout + out.stderr
    num = lambda pat: int(m.group(1)) if (m := re.search(pat, text)) else 0  # noqa: E731
    return dict(registers=num(r"Used (\d+) registers"), spill_stores=num(r"(\d+) bytes spill stores"),
                spill_loads=num(r"(\d+) bytes spill loads"), ptxas_smem=num(r"(\d+) bytes smem"))


def ptxas_report(ptx: str) -> tuple[int, int]:
    """(registers, spill-store bytes) as `ptxas -arch=sm_90a -v` reports them."""
    info = ptxas_info(ptx)
    return info["registers"], info["spill_stores"]


# SASS opcodes: HGMMA = wgmma (warpgroup MMA, sm_90a); HMMA = mma.sync (the Ampere path; also used for
# 3xTF32 splits that Triton cannot feed to wgmma); LDGSTS = cp.async; UTMALDG = TMA tensor load
# (cp.async.bulk.tensor); UBLKCP = cp.async.bulk (non-tensor bulk copy).
SASS_OPS = ("HGMMA", "HMMA", "LDGSTS", "UTMALDG", "UBLKCP", "MUFU.EX2", "MUFU.LG2")


def sass_summary(cubin: bytes) -> dict:
    """Static counts of the opcodes in SASS_OPS in the cubin (cuobjdump -sass)."""
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        out = subprocess.run([_bin("cuobjdump"), "-sass", f.name], capture_output=True, text=True, check=True)
    finally:
        os.unlink(f.name)
    ops = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)", out.stdout)
    counts = {k: 0 for k in SASS_OPS}
    for op in ops:
        for k in SASS_OPS:
            if op == k or op.startswith(k + "."):
                counts[k] += 1
    return counts


def describe(counts: dict) -> tuple[str, str]:
    """(mma kind, async copy kind) from sass_summary counts."""
    mma = "wgmma" if counts["HGMMA"] else "mma.sync" if counts["HMMA"] else "none"
    copies = [name for name, op in (("tma", "UTMALDG"), ("bulk", "UBLKCP"), ("cp.async", "LDGSTS")) if counts[op]]
    return mma, "+".join(copies) if copies else "none"


# ------------------------------------------------------------------ compile
def _unkey(pairs):
    return {tuple(p): v for p, v in pairs}


def compile_one(spec: dict) -> dict:
    """Compile one spec for sm_90a and summarise the binary (TRITON_INTERPRET must be off)."""
    import triton
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend

    fn = getattr(importlib.import_module(spec["module"]), spec["name"])
    if not isinstance(fn, triton.runtime.jit.JITFunction):
        raise RuntimeError(f"{spec['name']} is {type(fn).__name__}, not a JITFunction: unset TRITON_INTERPRET")
    backend = make_backend(target())
    options = backend.parse_options(dict(spec["options"]))
    attrs = {k: [tuple(a) for a in v] for k, v in _unkey(spec["attrs"]).items()}
    src = ASTSource(fn, dict(spec["signature"]), _unkey(spec["constexprs"]), attrs)
    kernel = triton.compile(src, target=target(), options=options.__dict__)
    info = ptxas_info(kernel.asm["ptx"])
    counts = sass_summary(kernel.asm["cubin"])
    mma, async_copy = describe(counts)
    smem = int(getattr(kernel.metadata, "shared", 0) or 0)
    warps = options.num_warps
    ctas, limiter = occupancy(info["registers"], warps, smem)
    return dict(name=spec["name"], mma=mma, async_copy=async_copy, registers=info["registers"],
                spills=info["spill_stores"] + info["spill_loads"], spill_stores=info["spill_stores"],
                smem_bytes=smem, num_warps=warps, num_stages=options.num_stages, ctas_per_sm=ctas,
                occupancy_limiter=limiter, sass=counts)


def spec_key(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True, default=str)


_CACHE: dict[str, dict] = {}


def _guarded(spec):
    try:
        return compile_one(spec)
    except Exception as exc:  # noqa: BLE001 - a kernel the GPU compiler rejects is a reported result
        return dict(name=spec["name"], error=f"{type(exc).__name__}: {str(exc)[:800]}")


def compile_specs(specs: list[dict], timeout: float = 900) -> list[dict]:
    """Compile every spec (cached per process by its exact content); one result dict per spec."""
    todo = [s for s in {spec_key(s): s for s in specs}.values() if spec_key(s) not in _CACHE]
    if todo:
        if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
            results = [_guarded(s) for s in todo]
        else:
            env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "CLIPKERN_TARGET")}
            root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH", "")]))
            out = subprocess.run([sys.executable, "-m", "benchmarks.perfmodel.compile"], input=json.dumps(todo),
                                 capture_output=True, text=True, env=env, cwd=root, timeout=timeout)
            if out.returncode != 0:
                raise RuntimeError(f"sm_90a compile subprocess failed:\n{out.stderr[-4000:]}")
            results = json.loads(out.stdout.strip().splitlines()[-1])
        for s, r in zip(todo, results):
            _CACHE[spec_key(s)] = r
    return [_CACHE[spec_key(s)] for s in specs]


def main() -> int:
    specs = json.loads(sys.stdin.read())
    results = [_guarded(s) for s in specs]
    sys.stdout.write("\n" + json.dumps(results) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
