"""Compile every Triton kernel that clip/siglip/imsep/pairdiff launch for sm_90a (H100/H200) on a machine
without a GPU, exactly as the JIT would compile it there: the launch configuration an sm_90 GPU
gets (CLIPKERN_TARGET=sm90 under the interpreter) and the JIT's runtime specialization of the
actual launch arguments (16-byte divisibility of pointers and integers, integers equal to 1).

    python tests/sm90_compile.py [--batch 4096] [--dim 768]   # one line per kernel; exit 1 on failure

A kernel that the GPU compiler rejects or that spills registers fails. The work is done by
benchmarks/perfmodel (count.py records the launches, compile.py compiles them); this file is a
thin CLI over it. TARGET and ptxas_report stay importable for other tests (tests/test_rankclip.py).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.perfmodel.compile import ptxas_report, target  # noqa: E402

TARGET = target()
LOSSES = ("clip", "siglip", "imsep", "pairdiff")
DTYPES = ("bfloat16", "float16", "float32")
__all__ = ["TARGET", "ptxas_report", "compile_losses"]


def compile_losses(losses=LOSSES, dtypes=DTYPES, batch: int = 4096, dim: int = 768) -> list[dict]:
    """One row per distinct kernel launched by one fwd+bwd of each loss (structural pass: launches
    recorded at `batch`, not run), with its sm_90a compile result. Needs TRITON_INTERPRET=1."""
    from benchmarks.perfmodel import model

    rows = []
    for dtype in dtypes:
        for loss in losses:
            rec = model.structural_pass(loss, batch, dim, model.DTYPES[dtype])
            for key, res in model.compile_launches(rec).items():
                rows.append(dict(res, loss=loss, dtype=dtype, key=key))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--loss", action="append", choices=LOSSES, help="default: all")
    args = ap.parse_args(argv)
    os.environ["TRITON_INTERPRET"] = "1"  # launches are recorded through the interpreter's launch path
    failures = []
    for r in compile_losses(tuple(args.loss or LOSSES), DTYPES, args.batch, args.dim):
        if "error" in r:
            failures.append(f"{r['key']}[{r['dtype']}]: {r['error']}")
            print(f"FAIL   {r['loss']:<8} {r['dtype']:<8} {r['key']}", flush=True)
            continue
        status = "ok" if r["spills"] == 0 else "SPILLS"
        if r["spills"]:
            failures.append(f"{r['key']}[{r['dtype']}]: {r['spills']} bytes of register spills")
        print(f"{status:<6} {r['loss']:<8} {r['dtype']:<8} {r['name']:<28} mma={r['mma']} copy={r['async_copy']} "
              f"regs={r['registers']} spill={r['spills']} smem={r['smem_bytes']} ctas/sm={r['ctas_per_sm']} "
              f"warps={r['num_warps']}  {r['key']}", flush=True)
    for f in failures:
        print(f, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
