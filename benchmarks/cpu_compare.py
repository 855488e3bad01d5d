"""The CPU comparison: clipkern against open_clip on CPU tensors, fwd+bwd, time and peak extra memory.

    python -m benchmarks.run --cpu-compare --out benchmarks/results [--batch-sizes 8192] [--dim 512]
                             [--cpu-threads 2] [--providers open_clip clipkern reference]

Everything runs in fresh subprocesses, one after the other, in one run, with
torch.set_num_threads(--cpu-threads):
- memory: `python -m benchmarks.cpu_compare --child memory ...`. glibc's malloc is told to serve every
  allocation above 64 KiB by mmap (MALLOC_MMAP_THRESHOLD_=65536, which also switches off its dynamic
  threshold) and to return freed memory at once (MALLOC_TRIM_THRESHOLD_=0), so the process's resident
  set follows what torch holds (torch's CPU allocator has no cache). One warm-up step (lazy loading,
  thread pools), then the resident set (VmRSS) is read, the kernel's high-water mark is reset
  (`echo 5 > /proc/self/clear_refs`), one step runs, and the peak extra memory is VmHWM − that
  VmRSS. The inputs are not counted; their gradients and everything the loss allocates are.
  (tracemalloc would not see torch's allocations.)
- time: one `--child time` subprocess for all providers of a loss, default malloc settings: a warm-up
  step of each, then --reps rounds that time one step of every provider in turn (time.perf_counter),
  so that a change in the machine's load hits every provider alike; median and 20/80 % quantiles.
Rows have the schema of benchmarks/run.py (metric "time_ms" / "peak_mem_mib"), device "cpu", plus
"threads" and "memory_method"; they are written to OUT/cpu/<loss>_cpu_compare.json, and the table
prints each provider's ratios to open_clip.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

MEMORY_METHOD = ("process RSS high-water mark (VmHWM after clear_refs 5, minus VmRSS before the step), fresh "
                 "subprocess per provider, MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0")
CPU_PROVIDERS = {"clip": ("open_clip", "clipkern", "reference", "torch"),
                 "siglip": ("open_clip", "clipkern", "reference", "torch")}
DEFAULT_PROVIDERS = ("open_clip", "clipkern", "reference")


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def provider_fn(name: str, loss: str):
    """(fn(image, text, scale, bias) -> loss, backend label) of a CPU provider."""
    import torch

    if name == "open_clip":
        from .providers import build_provider

        p = build_provider("open_clip", loss, torch.device("cpu"), torch.float32, 0)
        return p.fn, "eager"
    if name == "torch":
        from .providers import reference_fn

        return reference_fn(loss), "plain torch (unchunked)"
    import clipkern.functional as CF
    from clipkern import _backend

    asked = "auto" if name == "clipkern" else "reference"
    family = "contrastive" if loss == "clip" else "sigmoid"
    used = _backend.resolve(asked, torch.device("cpu"), torch.float32, family=family)
    f = CF.clip_loss if loss == "clip" else CF.siglip_loss
    return (lambda i, t, s, b: f(i, t, s, b, backend=asked)), used


def child(args) -> dict:
    """One provider, one metric, in this (fresh) process."""
    import torch

    from . import common as C

    torch.set_num_threads(args.threads)
    inputs = C.make_inputs(args.loss, args.batch, args.dim, torch.float32, torch.device("cpu"), seed=args.batch)
    if args.child == "time":
        return _time_round_robin(args.provider.split(","), args.loss, inputs, args.reps)
    fn, backend = provider_fn(args.provider, args.loss)
    value = C.step(fn, inputs).double().item()  # warm-up
    if args.child == "memory":
        inputs.zero_grad()
        C.free_memory(torch.device("cpu"))
        before = _status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # reset VmHWM to the current resident set
        C.step(fn, inputs)
        return {"backend": backend, "loss_value": value, "median": (_status_kib("VmHWM") - before) / 1024}
    raise ValueError(f"unknown child mode {args.child!r}")


def _time_round_robin(names, loss, inputs, reps) -> dict:
    """{provider: timing} of `reps` rounds, each timing one step of every provider in turn."""
    import torch

    from . import common as C

    fns = {name: provider_fn(name, loss) for name in names}
    values = {name: C.step(fn, inputs).double().item() for name, (fn, _) in fns.items()}  # warm-up
    times: dict = {name: [] for name in names}
    for _ in range(reps):
        for name, (fn, _) in fns.items():
            t0 = time.perf_counter()
            C.step(fn, inputs)
            times[name].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for name, ts in times.items():
        q = torch.tensor(ts, dtype=torch.float64)
        med, q20, q80 = torch.quantile(q, torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64)).tolist()
        out[name] = {"backend": fns[name][1], "loss_value": values[name], "median": med, "q20": q20, "q80": q80,
                     "reps": len(ts)}
    return out


def _run_child(metric, provider, loss, B, D, threads, reps) -> dict:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the CPU rows compare the real CPU paths, never the interpreter
    if metric == "memory":
        env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, "-m", "benchmarks.cpu_compare", "--child", metric, "--provider", provider, "--loss", loss,
           "--batch", str(B), "--dim", str(D), "--threads", str(threads), "--reps", str(reps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parent.parent)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
        raise RuntimeError(f"{provider} ({metric}) failed: {lines[-1][:300]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _result_row(env, loss, D, B, name, key, out, threads, error=None) -> dict:
    from .run import _row

    if error is not None:
        return _row(env, loss, D, "fp32", name, None, B, key, "error", error, threads=threads)
    vals = dict(median=out["median"], q20=out.get("q20", out["median"]), q80=out.get("q80", out["median"]),
                reps=out.get("reps"), loss_value=out["loss_value"], threads=threads)
    if key == "peak_mem_mib":
        vals["memory_method"] = MEMORY_METHOD
    return _row(env, loss, D, "fp32", name, out["backend"], B, key, "ok", **vals)


def compare(loss, sizes, D, threads, providers, env, reps=3) -> list[dict]:
    """Rows (benchmarks/run.py's schema) for every provider × B: memory from one subprocess per provider,
    time from one subprocess that times all providers in turn."""
    rows = []
    for B in sizes:
        for name in providers:
            print(f"[{loss} cpu] B={B:>6} {name:<10} memory", end=" ", file=sys.stderr, flush=True)
            try:
                out = _run_child("memory", name, loss, B, D, threads, reps)
                print(f"{out['median']:10.1f} MiB", file=sys.stderr)
                rows.append(_result_row(env, loss, D, B, name, "peak_mem_mib", out, threads))
            except RuntimeError as exc:
                print("error", exc, file=sys.stderr)
                rows.append(_result_row(env, loss, D, B, name, "peak_mem_mib", None, threads, str(exc)))
        print(f"[{loss} cpu] B={B:>6} time of {','.join(providers)}", end=" ", file=sys.stderr, flush=True)
        try:
            timed = _run_child("time", ",".join(providers), loss, B, D, threads, reps)
            print(" ".join(f"{n}={t['median']:.0f} ms" for n, t in timed.items()), file=sys.stderr)
            rows += [_result_row(env, loss, D, B, n, "time_ms", t, threads) for n, t in timed.items()]
        except RuntimeError as exc:
            print("error", exc, file=sys.stderr)
            rows += [_result_row(env, loss, D, B, n, "time_ms", None, threads, str(exc)) for n in providers]
    return rows


def ratio_table(rows) -> str:
    """One line per provider × B: time and peak extra memory, and both as a ratio to open_clip's."""
    get = {(r["provider"], r["B"], r["metric"]): r for r in rows}
    lines = [f"{'B':>6}  {'provider':<10} {'backend':<24} {'time ms [q20-q80]':<26} {'x open_clip':>11} "
             f"{'peak MiB':>9} {'x open_clip':>11}"]
    for (name, B, metric), r in get.items():
        if metric != "time_ms":
            continue
        m, ot, om = get.get((name, B, "peak_mem_mib"), {}), get.get(("open_clip", B, "time_ms"), {}), \
            get.get(("open_clip", B, "peak_mem_mib"), {})
        if r["status"] != "ok":
            lines.append(f"{B:>6}  {name:<10} {'-':<24} {r['status']}: {r['note'][:80]}")
            continue
        tr = f"{r['median'] / ot['median']:.2f}" if ot.get("median") else "-"
        mr = f"{m['median'] / om['median']:.2f}" if om.get("median") and m.get("median") is not None else "-"
        pk = "-" if m.get("median") is None else f"{m['median']:.0f}"
        tm = f"{r['median']:.0f} [{r['q20']:.0f}-{r['q80']:.0f}]"
        lines.append(f"{B:>6}  {name:<10} {str(r['backend']):<24} {tm:<26} {tr:>11} {pk:>9} {mr:>11}")
    return "\n".join(lines)


def run(args, env) -> int:
    """run.py --cpu-compare: every loss of args.loss (clip, siglip), JSON + table."""
    sizes = args.batch_sizes or [8192]
    D = args.dim or 512
    out = Path(args.out) / "cpu"
    out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    tables = []
    for loss in [name for name in args.loss if name in CPU_PROVIDERS]:
        providers = [p for p in (args.providers or DEFAULT_PROVIDERS) if p in CPU_PROVIDERS[loss]]
        rows = compare(loss, sizes, D, args.cpu_threads, providers, env)
        for r in rows:
            r["load_avg_before"] = list(load)
        path = out / f"{loss}_cpu_compare.json"
        path.write_text(json.dumps(rows, indent=1) + "\n")
        print(f"wrote {path}", file=sys.stderr)
        tables.append(f"== {loss} loss on CPU, fwd+bwd, D={D}, fp32, {args.cpu_threads} threads "
                      f"(load average before: {load[0]:.2f})\n{ratio_table(rows)}")
    print("\n\n".join(tables))
    return 0


def _parse_child(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.cpu_compare")
    p.add_argument("--child", choices=("memory", "time"), required=True)
    p.add_argument("--provider", required=True)
    p.add_argument("--loss", choices=tuple(CPU_PROVIDERS), required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--dim", type=int, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    return p.parse_args(argv)


if __name__ == "__main__":
    print(json.dumps(child(_parse_child(sys.argv[1:]))))
