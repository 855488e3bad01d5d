"""CPU performance model of one fused-loss forward+backward on an H100/H200 (sm_90a, 132 SMs).

    python -m benchmarks.roofline --loss clip --batch 32768 --dim 768 --dtype bfloat16 [--json out.json]

Counts the work on the CPU with the GPU's launch configuration (Triton interpreter, CLIPKERN_TARGET=sm90),
compiles every launched kernel for sm_90a with the JIT's runtime specialization, and prints a
MODELLED bound (not a measurement); see benchmarks/ROOFLINE.md for the rules and assumptions.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton or clipkern is imported

LOSSES = ("clip", "siglip", "imsep", "pairdiff", "listmle")


def _fmt(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


def render(r: dict) -> str:
    s = r["scaling"]
    lines = [
        f"{r['loss']}  B={r['batch']} D={r['dim']} {r['dtype']}  on {r['gpu']}",
        f"  counted at batch {r['counted_at_batch']}; quadratic counts scaled × {s['factor']:.1f} ({s['rule']})",
        f"  executed / useful MMA FLOPs (counted): {_fmt(r['executed_over_useful'])}   "
        f"[triton dots {r['executed_flops_counted']['triton_dots']:.3e}, torch GEMMs "
        f"{r['executed_flops_counted']['torch_gemms']:.3e}, useful {r['useful_flops_counted']:.3e}]",
        f"  exps per logit: fwd {r['exps_per_logit']['fwd']:.3f}  bwd {r['exps_per_logit']['bwd']:.3f}",
        f"  per call at B={r['batch']}: {r['launches']} kernel launches, {r['torch_ops']} torch ops, "
        f"{r['host_syncs']} host syncs   (at B={r['counted_at_batch']}: {r['launches_counted']}, "
        f"{r['torch_ops_counted']}, {r['host_syncs_counted']})",
        "",
        f"  {'kernel':<30} {'phase':<4} {'mma':<9} {'async':<9} {'regs':>4} {'spill':>5} {'smem':>7} "
        f"{'CTA/SM':>6} {'launch':>6} {'T_model ms':>10}",
    ]
    for k in r["kernels"]:
        t = k["model"]["t_s"] * 1e3 if k.get("model") else None
        lines.append(f"  {k['name'][:30]:<30} {k['phase']:<4} {str(k['mma']):<9} {str(k['async_copy']):<9} "
                     f"{_fmt(k['registers'], 'd'):>4} {_fmt(k['spills'], 'd'):>5} {_fmt(k['smem_bytes'], 'd'):>7} "
                     f"{_fmt(k['ctas_per_sm'], 'd'):>6} {k['launches_at_batch']:>6} {_fmt(t, '.3f'):>10}")
        if k.get("compile_error"):
            lines.append(f"    COMPILE ERROR: {k['compile_error'][:200]}")
    b = r["bound_detail"]
    if r["bound"] is not None:
        lines += ["", f"  MODELLED BOUND (not a measurement): T_model = {b['t_model_s'] * 1e3:.3f} ms "
                      f"(kernels {b['t_kernels_s'] * 1e3:.3f}, torch ops {b['t_torch_ops_s'] * 1e3:.3f}); "
                      f"useful / (989.4 TFLOP/s · T_model) = {r['bound']:.3f}"]
    else:
        lines += ["", f"  MODELLED BOUND: none ({b.get('reason', 'no useful MMA FLOPs')})"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loss", choices=LOSSES, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--dim", type=int, required=True, help="feature width (listmle: the list length N)")
    ap.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    ap.add_argument("--count-batch", type=int, default=None, help="batch interpreted for the counts (default min(B, 2048))")
    ap.add_argument("--json", default=None, help="write the full result here")
    ap.add_argument("--no-compile", action="store_true", help="skip the sm_90a compile (no per-kernel data, no bound)")
    ap.add_argument("--no-cuda", action="store_true",
                    help="clip only: skip the CUDA path (csrc Hopper kernels, benchmarks/perfmodel/cuda_path.py)")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        print("benchmarks.roofline needs TRITON_INTERPRET=1 (unset it nowhere: it is set by default)", file=sys.stderr)
        return 2
    from benchmarks.perfmodel import model

    r = model.run(args.loss, args.batch, args.dim, args.dtype, args.count_batch, compile_kernels=not args.no_compile)
    print(render(r))
    if args.loss == "clip" and not args.no_cuda:
        from benchmarks.perfmodel import cuda_path

        try:
            r["cuda_path"] = cuda_path.run(args.batch, args.dim, args.dtype, compile_kernels=not args.no_compile)
        except Exception as exc:  # noqa: BLE001 - no extension / no sm_90a binary: say why, keep Triton's result
            r["cuda_path"] = dict(path="cuda", bound=None, reason=f"{type(exc).__name__}: {str(exc)[:300]}")
        print("")
        print(cuda_path.render(r["cuda_path"]))
        cb = r["cuda_path"].get("bound")
        if cb is not None and r["bound"] is not None:
            print(f"\n  MODELLED BOUNDS (not measurements), fraction of the bf16 matmul rate: triton {r['bound']:.3f}, "
                  f"cuda {cb:.3f} (csrc op alone {r['cuda_path']['bound_csrc_ops_only']:.3f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
