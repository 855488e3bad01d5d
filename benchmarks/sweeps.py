"""The measuring loop every benchmark script shares (`sweep`), the comparison tables and the FLOP
rates. Re-exported by benchmarks/common.py."""
from __future__ import annotations

import sys

import torch

from .common import (INTERPRETED_NOTE, SEMANTIC_WIDTH, free_memory, is_oom, peak_extra_mib, step, table_footer,
                     time_fwd_bwd)


METRICS = ("time_ms", "peak_mem_mib")  # the rows of one provider at one size


def sweep(providers, sizes, make_inputs, make_row, *, label: str, device: torch.device, time_kw, skipped=(),
          also=(), note_fn=None, time_vals=None, value_dtype=torch.float64,
          first_failure_skips=False) -> list[dict]:
    """The measuring loop every benchmark script shares: result rows for each provider at each size.

    providers   built Providers; `skipped`: (name, reason) of those that could not be built, one
                "skipped" row each (size and metric None), first
    sizes       every provider runs at each, in this order; `also`: extra (size, [providers]) steps
                after them (run.py's --huge)
    make_inputs (size) -> Inputs, made once per size and shared by the providers of that size
    make_row    (name, backend, size, metric, status, note="", **vals) -> dict: the script's row
    label       the progress line's prefix on stderr: a format string with {size} and {name}
    time_kw     time_fwd_bwd's keyword arguments, or a function of the size that gives them
    note_fn     (provider, size) -> the note of its ok rows; default provider.note
    time_vals   (size, Timing) -> extra values for the time_ms row
    value_dtype the dtype the step's loss is read in (loss_value)

    Per provider and size: one step (loss_value), time_fwd_bwd, peak_extra_mib -> a time_ms and a
    peak_mem_mib row. An exception there is recorded, never swallowed: status "OOM" or "error" and
    the first line of its message, in a row for each metric, and the provider is not run at larger
    sizes. With first_failure_skips, a provider whose very first run fails gets one "skipped" row
    (size None) instead: it never ran here, so that is not a result at this size.
    """
    rows = [make_row(name, None, None, None, "skipped", why) for name, why in skipped]
    done, ran = set(), set()  # providers stopped by an OOM / error; providers that ran at least once
    for size, provs in [(size, providers) for size in sizes] + list(also):
        provs = [p for p in provs if p.name not in done]
        if not provs:
            continue
        inputs = make_inputs(size)
        for p in provs:
            print(label.format(size=size, name=p.name), end=" ", file=sys.stderr, flush=True)
            try:
                value = step(p.fn, inputs).to(value_dtype).item()
                t = time_fwd_bwd(p.fn, inputs, **(time_kw(size) if callable(time_kw) else time_kw))
                mem = peak_extra_mib(p.fn, inputs)
            except Exception as exc:  # noqa: BLE001 - recorded, never swallowed
                why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
                status = "OOM" if is_oom(exc) else (
                    "skipped" if first_failure_skips and p.name not in ran else "error")
                print(status, why, file=sys.stderr)
                if status == "skipped":
                    rows.append(make_row(p.name, p.backend, None, None, "skipped", why))
                else:
                    rows += [make_row(p.name, p.backend, size, m, status, why) for m in METRICS]
                done.add(p.name)
            if p.name in done:  # free outside the except block: its traceback holds tensors
                free_memory(device)
                continue
            ran.add(p.name)
            print(f"{t.median:10.3f} ms", file=sys.stderr)
            note = p.note if note_fn is None else note_fn(p, size)
            rows.append(make_row(p.name, p.backend, size, "time_ms", "ok", note, median=t.median, q20=t.q20,
                                 q80=t.q80, reps=t.reps, loss_value=value,
                                 **(time_vals(size, t) if time_vals else {})))
            rows.append(make_row(p.name, p.backend, size, "peak_mem_mib",
                                 "ok" if mem is not None else "not measured",
                                 note if mem is not None else "not measured on CPU", median=mem, q20=mem, q80=mem))
        del inputs
        free_memory(device)
    return rows


def rel_diff_vs_torch(rows, size_key: str, exclude=()) -> list[dict]:
    """Sets each row's rel_diff_vs_torch = |loss_value − torch's| / |torch's|, against the torch
    provider's loss at the same size (rows[size_key]); not for the providers in `exclude`."""
    naive = {r[size_key]: r["loss_value"] for r in rows if r["provider"] == "torch" and r["loss_value"] is not None}
    for r in rows:
        if r["loss_value"] is not None and r[size_key] in naive and r["provider"] not in exclude:
            r["rel_diff_vs_torch"] = abs(r["loss_value"] - naive[r[size_key]]) / max(abs(naive[r[size_key]]), 1e-30)
    return rows


def ratio_table(rows, size_key: str, size_header: str, show_note: bool = False) -> str:
    """A per-family script's table: one line per provider × size, with the speed and peak-memory
    ratios against the torch provider and rel_diff_vs_torch; show_note appends the ok rows' notes
    (less the interpreter note, which is the star)."""
    times = {(r["provider"], r[size_key]): r for r in rows if r["metric"] == "time_ms"}
    mems = {(r["provider"], r[size_key]): r for r in rows if r["metric"] == "peak_mem_mib"}
    lines = [f"{size_header:>6}  {'provider':<16} {'backend':<22} {'median ms [q20-q80]':<26} {'x torch':>8} "
             f"{'peak MiB':>9} {'/ torch':>8}  {'rel.diff':>8}  status"]
    for (name, n), r in sorted(times.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if r["status"] != "ok":
            lines.append(f"{n:>6}  {name:<16} {str(r['backend']):<22} {'-':<26} {'-':>8} {'-':>9} {'-':>8}  "
                         f"{'-':>8}  {r['status']}: {r['note'][:60]}")
            continue
        m, bt, bm = mems.get((name, n), {}), times.get(("torch", n), {}), mems.get(("torch", n), {})
        tm = f"{r['median']:.3f} [{r['q20']:.3f}-{r['q80']:.3f}]"
        speed = f"{bt['median'] / r['median']:.2f}" if bt.get("median") else "-"
        pk = "n/a" if m.get("median") is None else f"{m['median']:.1f}"
        ratio = f"{bm['median'] / m['median']:.2f}" if bm.get("median") and m.get("median") else "-"
        diff = "-" if r["rel_diff_vs_torch"] is None else f"{r['rel_diff_vs_torch']:.1e}"
        star = " *" if INTERPRETED_NOTE in r["note"] else ""
        note = f" {r['note'].replace(INTERPRETED_NOTE, '').strip('; ')}" if show_note else ""
        lines.append(f"{n:>6}  {name:<16} {str(r['backend']):<22} {tm:<26} {speed:>8} {pk:>9} {ratio:>8}  "
                     f"{diff:>8}  ok{star}{note}")
    return "\n".join(lines + table_footer(rows, times, mems))


def useful_flops(loss: str, B: int, N: int, D: int) -> float:
    """Useful fwd+bwd FLOPs. CLIP/SigLIP: 6·B·N·D (S, dI, dT; docs/design.md §5). IMSep (B = N): the
    Gram X Xᵀ and the semantic Gram Û Ûᵀ in the forward, and dX = E·X in the backward."""
    if loss == "imsep":
        return 2.0 * B * B * (2 * D + SEMANTIC_WIDTH)
    return 6.0 * B * N * D


def loss_tflops(loss: str, B: int, N: int, D: int, ms: float) -> float:
    """Achieved rate: useful_flops / time."""
    return useful_flops(loss, B, N, D) / (ms * 1e-3) / 1e12


def matmul_tflops(B: int, D: int, device: torch.device, cap: int = 32768) -> tuple[float | None, int | None]:
    """(TFLOP/s, n) of a bf16 n×D @ D×n matmul, n = min(B, cap), on CUDA; (None, None) on CPU."""
    if device.type != "cuda":
        return None, None
    n = min(B, cap)
    a = torch.randn(n, D, device=device, dtype=torch.bfloat16)
    b = torch.randn(D, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        torch.matmul(a, b)
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.matmul(a, b)
        end.record()
        torch.cuda.synchronize(device)
        times.append(start.elapsed_time(end))
    ms = sorted(times)[len(times) // 2]
    del a, b
    free_memory(device)
    return 2.0 * n * n * D / (ms * 1e-3) / 1e12, n
