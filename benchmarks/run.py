"""Benchmark every provider of each loss, fwd+bwd, at several batch sizes, in one process.

    python -m benchmarks.run --out benchmarks/results [--loss clip siglip] [--batch-sizes 1024 4096]
                             [--dim 768] [--dtype bf16] [--providers clipkern torch] [--huge]

Writes DIR/<gpu-name-slug or 'cpu'>/<loss>.json (a flat list of rows, one per provider × B × metric,
each row carrying versions, device and date) and <loss>.png (time and peak memory vs B, log-log),
then prints a short table. What is measured: see benchmarks/common.py.

    python -m benchmarks.run --cpu-compare --out DIR [--batch-sizes 8192] [--dim 512] [--cpu-threads 2]

runs the CPU comparison instead (benchmarks/cpu_compare.py): clipkern's CPU paths against open_clip,
time and peak extra memory, each provider in fresh subprocesses; writes DIR/cpu/<loss>_cpu_compare.json.

    torchrun --nproc_per_node N -m benchmarks.run --distributed --out DIR [--batch-sizes b ...]

runs the multi-process mode instead (benchmarks/distributed.py): per rank time, memory and bytes
sent through collectives of ClipLoss(local_loss=True, gather_with_grad=True) against open_clip's.

- A provider that cannot be built, or whose first run fails, is recorded as status "skipped" with
  the reason. A provider that runs out of memory at some B gets an "OOM" row there and is not run at
  larger B; any other error gets an "error" row and the same treatment.
- Defaults: on CUDA B = 1024..65536 (powers of 2), D = 768, bf16; `--huge` adds clipkern alone at
  B = 1,048,576. On CPU, tiny sizes (B = 64, 128, 256, D = 64, fp32): the clipkern provider runs the
  reference backend there, or the Triton kernels interpreted if TRITON_INTERPRET=1 is set (rows are
  labelled; interpreted timings are meaningless). CPU timings are not what clipkern is for; they
  run on one thread unless --cpu-threads says otherwise.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import torch

from . import common as C

HUGE_B = 1 << 20


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="results folder; files go to OUT/<gpu-slug>/")
    p.add_argument("--loss", nargs="+", choices=C.BENCH_LOSSES, default=list(C.BENCH_LOSSES))
    p.add_argument("--batch-sizes", nargs="+", type=int, help="default: 1024..65536 on CUDA, 64 128 256 on CPU")
    p.add_argument("--dim", type=int, help="D; default 768 on CUDA, 64 on CPU")
    p.add_argument("--dtype", choices=sorted(C.DTYPES), help="default bf16 on CUDA, fp32 on CPU")
    p.add_argument("--providers", nargs="+", help="subset of providers (default: all for each loss)")
    p.add_argument("--huge", action="store_true", help=f"also run clipkern alone at B={HUGE_B:,} (CUDA)")
    p.add_argument("--rep-ms", type=float, default=None, help="time budget per measurement (ms)")
    p.add_argument("--distributed", action="store_true",
                   help="under torchrun: ClipLoss(local_loss, gather_with_grad) per rank vs open_clip "
                        "(benchmarks/distributed.py); --batch-sizes are per rank")
    p.add_argument("--reps", type=int, help="--distributed: timed steps per size (default 20 CUDA, 3 CPU)")
    p.add_argument("--cpu-threads", type=int, default=None,
                   help="torch threads on CPU (default 1: the CPU sizes are tiny, and with 2 OpenMP threads "
                        "on a 2-vCPU VM fwd+bwd steps stalled ~90 ms each; 2 with --cpu-compare)")
    p.add_argument("--cpu-compare", action="store_true",
                   help="CPU: clipkern vs open_clip, time and peak extra memory, one subprocess per provider "
                        "(default B=8192, D=512; benchmarks/cpu_compare.py)")
    return p.parse_args(argv)


def _row(env, loss, D, dtype, prov_name, backend, B, metric, status, note="", **vals):
    row = {"provider": prov_name, "loss": loss, "mode": "fwd+bwd", "metric": metric, "B": B, "N": B, "D": D,
           "dtype": dtype, "backend": backend, "status": status, "note": note,
           "median": None, "q20": None, "q80": None, "reps": None, "tflops": None,
           "matmul_tflops": None, "matmul_n": None, "loss_value": None}
    row.update(vals)
    row.update(env)
    return row


def run_loss(loss, sizes, D, dtype_name, device, env, names=None, huge=False, rep_ms=500.0):
    """All rows for one loss (the loop: common.sweep). Progress goes to stderr."""
    dtype = C.DTYPES[dtype_name]
    providers, skipped = C.build_providers(loss, device, dtype, D, names)
    matmul = {}  # B -> (TFLOP/s, n) of the bf16 matmul, measured beside the inputs of that B

    def make_inputs(B):
        inputs = C.make_inputs(loss, B, D, dtype, device, seed=B)
        matmul[B] = C.matmul_tflops(B, D, device)
        return inputs

    def time_vals(B, t):
        mm, mm_n = matmul[B]
        return dict(tflops=C.loss_tflops(loss, B, B, D, t.median), matmul_tflops=mm, matmul_n=mm_n)

    also = [(HUGE_B, [p for p in providers if p.name == "clipkern"])] if huge else []
    return C.sweep(providers, sizes, make_inputs, functools.partial(_row, env, loss, D, dtype_name),
                   skipped=skipped, also=also, device=device, label=f"[{loss}] B={{size:>8}} {{name:<14}}",
                   time_kw=lambda B: dict(rep_ms=rep_ms, min_reps=3 if B >= HUGE_B else 5), time_vals=time_vals,
                   value_dtype=torch.float32, first_failure_skips=True)


def plot(rows, path, title):
    """Time and peak memory vs B, log-log, one line per provider; OOM shown in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, ylabel in ((axes[0], "time_ms", "fwd+bwd time (ms, median; band 20-80 %)"),
                               (axes[1], "peak_mem_mib", "peak extra memory (MiB)")):
        names = dict.fromkeys(r["provider"] for r in rows if r["metric"] == metric)
        drawn = False
        for name in names:
            ok = [r for r in rows if r["provider"] == name and r["metric"] == metric and r["median"] is not None]
            bad = [r for r in rows if r["provider"] == name and r["metric"] == metric and r["status"] in ("OOM", "error")]
            if not ok:
                continue
            label = name + (" (Triton interpreted: time meaningless)" if ok[0]["note"] == C.INTERPRETED_NOTE else "")
            label += f" ({bad[0]['status']} at B={bad[0]['B']})" if bad else ""
            xs = [r["B"] for r in ok]
            line, = ax.plot(xs, [r["median"] for r in ok], marker="o", label=label)
            if metric == "time_ms":
                ax.fill_between(xs, [r["q20"] for r in ok], [r["q80"] for r in ok], alpha=0.2, color=line.get_color())
            drawn = True
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size B (= N)")
        ax.set_ylabel(ylabel)
        if drawn:
            ax.set_yscale("log")
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not measured on CPU" if metric == "peak_mem_mib" else "no data",
                    ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(rows) -> str:
    """A short text table: one line per provider × B."""
    time_rows = [r for r in rows if r["metric"] == "time_ms"]
    mem = {(r["provider"], r["B"]): r for r in rows if r["metric"] == "peak_mem_mib"}
    lines = [f"{'B':>8}  {'provider':<14} {'backend':<22} {'median ms [q20-q80]':<26} {'TFLOP/s':>8} "
             f"{'mm TFLOP/s':>10} {'peak MiB':>9}  status"]
    for r in sorted(time_rows, key=lambda r: (r["B"], r["provider"])):
        m = mem.get((r["provider"], r["B"]), {})
        if r["status"] == "ok":
            tm = f"{r['median']:.3f} [{r['q20']:.3f}-{r['q80']:.3f}]"
            tf = f"{r['tflops']:.3g}"
            mm = "-" if r["matmul_tflops"] is None else f"{r['matmul_tflops']:.0f}"
            pk = "n/a" if m.get("median") is None else f"{m['median']:.0f}"
            st = "ok" + (" *" if r["note"] == C.INTERPRETED_NOTE else "")
        else:
            tm, tf, mm, pk, st = "-", "-", "-", "-", f"{r['status']}: {r['note'][:60]}"
        lines.append(f"{r['B']:>8}  {r['provider']:<14} {str(r['backend']):<22} {tm:<26} {tf:>8} {mm:>10} {pk:>9}  {st}")
    for r in rows:
        if r["status"] == "skipped":
            lines.append(f"skipped {r['provider']}: {r['note']}")
    if any(r["note"] == C.INTERPRETED_NOTE for r in time_rows):
        lines.append(f"* {C.INTERPRETED_NOTE}")
    if any(r["metric"] == "peak_mem_mib" and r["status"] == "not measured" for r in rows):
        lines.append("peak memory: not measured on CPU (CUDA only)")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = _parse(argv)
    if args.cpu_compare:
        from . import cpu_compare

        args.cpu_threads = args.cpu_threads or 2
        return cpu_compare.run(args, C.environment(torch.device("cpu")))
    args.cpu_threads = args.cpu_threads or 1
    if args.distributed:
        from . import distributed

        return distributed.main(args)
    device = C.pick_device()
    cuda = device.type == "cuda"
    if args.huge and not cuda:
        sys.exit("--huge needs a CUDA GPU (on CPU the reference would need a B×B matrix of ~4 TiB)")
    sizes = sorted(args.batch_sizes or ([1 << k for k in range(10, 17)] if cuda else [64, 128, 256]))
    D = args.dim or (768 if cuda else 64)
    dtype = args.dtype or ("bf16" if cuda else "fp32")
    rep_ms = args.rep_ms or (500.0 if cuda else 200.0)
    if not cuda:
        torch.set_num_threads(args.cpu_threads)
    env = C.environment(device)
    out = Path(args.out) / C.device_slug(device)
    out.mkdir(parents=True, exist_ok=True)
    print(f"device: {env['device']} | torch {env['torch']} | triton {env['triton']} | open_clip "
          f"{env['open_clip']} | clipkern {env['clipkern']} | TRITON_INTERPRET={int(env['triton_interpret'])}",
          file=sys.stderr)

    tables = []
    for loss in args.loss:
        rows = run_loss(loss, sizes, D, dtype, device, env, args.providers, args.huge, rep_ms)
        jpath, ppath = out / f"{loss}.json", out / f"{loss}.png"
        jpath.write_text(json.dumps(rows, indent=1) + "\n")
        plot(rows, ppath, f"{loss} loss, fwd+bwd, D={D}, {dtype}, {env['device']}")
        print(f"wrote {jpath} and {ppath}", file=sys.stderr)
        tables.append(f"== {loss} loss, fwd+bwd, D={D}, {dtype}, {env['device']}\n{table(rows)}")
    sys.stderr.flush()
    print("\n\n".join(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
