"""Benchmark the four ListMLE calls of one RankCLIP step: clipkern against naive torch, fwd+bwd.

    python -m benchmarks.bench_ranking --out benchmarks/results [--batch-sizes 1024 8192] [--dim 768]
                                       [--dtype bf16] [--providers clipkern torch]

What one step is (every provider, same inputs): from image and text features V, T (B×D, leaves) and
logit_scale s (leaf), compute R_cross + R_in of DESIGN §1.4 without the weights,
    listmle(L, Lᵀ) + listmle(Lᵀ, L) + listmle(s·V Vᵀ, s·T Tᵀ) + listmle(s·T Tᵀ, s·V Vᵀ),  L = s·V Tᵀ,
then backward to V, T and s. Providers:
  clipkern         clipkern.ops.ranking.rankclip_terms, fused=None: the from-features kernels for
                   B ≤ FUSED_MAX_N, the ListMLE matrix kernels above (on CPU: the reference, or the
                   Triton kernels interpreted if TRITON_INTERPRET=1 is set: their time means nothing)
  clipkern-matrix  the same with fused=False: L and the Gram matrices in fp32 + the matrix kernels
  cuda             the matrix path with backend="cuda": the csrc CUDA ListMLE kernels (CUB block
                   radix sort + scans; rows up to 8192); skipped with the reason without a GPU or a
                   built extension
  torch            the naive torch reference (clipkern.ops.ranking.reference.rankclip_terms: sort,
                   gather, flip + logcumsumexp per call), eager
  torch.compile    the same, torch.compile(dynamic=False)
Timing, warm-up and peak memory come from benchmarks/common.py (median and 20/80 % quantiles in ms;
peak extra CUDA memory over the step, None on CPU). Each row also records the step's loss value and
its relative difference to the torch provider's on the same inputs.

Writes DIR/<gpu-slug or 'cpu'>/rankclip_listmle.json (a flat list of rows with versions, device and
date) and prints a table. Defaults: on CUDA B = 1024, 2048, 4096, 8192, D = 768, bf16 (the issue's
target: at B = 8192 on an H100, ≥ 5× faster and ≥ 5× less peak memory than naive torch); on CPU
B = 32, 64, 128, D = 64, fp32, one thread.
"""
from __future__ import annotations

import argparse
import sys

import torch

from . import common as C

PROVIDERS = ("clipkern", "clipkern-matrix", "cuda", "torch", "torch.compile")
METRICS = ("time_ms", "peak_mem_mib")


def _terms_fn(backend: str, fused):
    from clipkern.ops.ranking import rankclip_terms

    def fn(i, t, s, b):
        cross, inner = rankclip_terms(i, t, s, None, backend, fused)
        return cross + inner

    return fn


def _naive(i, t, s, b):
    from clipkern.ops.ranking.reference import rankclip_terms

    cross, inner = rankclip_terms(i, t, s)
    return cross + inner


def build(name: str, device: torch.device, dtype: torch.dtype) -> C.Provider:
    """One provider, or ProviderUnavailable with the reason."""
    try:
        if name in ("clipkern", "clipkern-matrix"):
            from clipkern import _backend

            asked = C.clipkern_backend(device)
            used = _backend.resolve(asked, device, dtype)
            if name == "clipkern-matrix" and used != "triton":
                raise C.ProviderUnavailable(
                    f"the matrix kernels need the triton backend; {asked!r} resolved to {used!r}")
            note = C.INTERPRETED_NOTE if used == "triton" and device.type == "cpu" else ""
            fused = None if name == "clipkern" else False
            return C.Provider(name, "rankclip-listmle", _terms_fn(used, fused),
                              used + (" (interpreted)" if note else ""), note)
        if name == "cuda":  # the matrix path with the csrc CUDA ListMLE kernels (CUB sort + scans)
            used = C.cuda_backend(device, dtype)
            return C.Provider(name, "rankclip-listmle", _terms_fn(used, False), used)
        if name == "torch":
            return C.Provider(name, "rankclip-listmle", _naive, "eager")
        if name == "torch.compile":
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            return C.Provider(name, "rankclip-listmle", torch.compile(_naive, dynamic=False), "inductor")
        raise C.ProviderUnavailable(f"unknown provider {name!r}; choose from {PROVIDERS}")
    except C.ProviderUnavailable:
        raise
    except Exception as exc:  # ImportError, BackendUnavailable, ...
        raise C.ProviderUnavailable(f"{type(exc).__name__}: {exc}") from exc


def _path(name: str, backend: str, B: int) -> str:
    """Which clipkern path ran at this B."""
    from clipkern.ops.ranking import FUSED_MAX_N, MATRIX_MAX_N

    if not name.startswith("clipkern"):
        return ""
    if not backend.startswith("triton"):
        return "torch reference"
    if name == "clipkern-matrix" or (name == "clipkern" and B > FUSED_MAX_N):
        return "matrix" if B <= MATRIX_MAX_N else "reference fallback (rows > MATRIX_MAX_N)"
    return "fused"


def _row(env, name, backend, B, D, dtype, metric, status, note="", **vals):
    row = {"provider": name, "loss": "rankclip-listmle", "mode": "fwd+bwd", "metric": metric, "B": B, "N": B,
           "D": D, "dtype": dtype, "backend": backend, "status": status, "note": note, "median": None,
           "q20": None, "q80": None, "reps": None, "loss_value": None, "rel_diff_vs_torch": None}
    row.update(vals)
    row.update(env)
    return row


def run(sizes, D, dtype_name, device, env, names, rep_ms):
    dtype = C.DTYPES[dtype_name]
    providers, rows = [], []
    for name in names:
        try:
            providers.append(build(name, device, dtype))
        except C.ProviderUnavailable as exc:
            rows.append(_row(env, name, None, None, D, dtype_name, None, "skipped", str(exc)))
    done = {}
    for B in sizes:
        inputs = C.make_inputs("clip", B, D, dtype, device, seed=B)
        for p in providers:
            if p.name in done:
                continue
            print(f"[rankclip-listmle] B={B:>6} {p.name:<16}", end=" ", file=sys.stderr, flush=True)
            base = dict(env=env, name=p.name, backend=p.backend, B=B, D=D, dtype=dtype_name)
            try:
                value = C.step(p.fn, inputs).double().item()
                t = C.time_fwd_bwd(p.fn, inputs, warmup_ms=rep_ms / 4, rep_ms=rep_ms, min_reps=3, max_reps=100)
                mem = C.peak_extra_mib(p.fn, inputs)
            except Exception as exc:  # noqa: BLE001 - recorded, never swallowed
                why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
                status = "OOM" if C.is_oom(exc) else "error"
                print(status, why, file=sys.stderr)
                rows += [_row(**base, metric=m, status=status, note=why) for m in METRICS]
                done[p.name] = f"{status} at B={B}"
            if p.name in done:
                C.free_memory(device)
                continue
            print(f"{t.median:10.3f} ms", file=sys.stderr)
            note = "; ".join(x for x in (p.note, _path(p.name, p.backend, B)) if x)
            rows.append(_row(**base, metric="time_ms", status="ok", note=note, median=t.median, q20=t.q20,
                             q80=t.q80, reps=t.reps, loss_value=value))
            rows.append(_row(**base, metric="peak_mem_mib", status="ok" if mem is not None else "not measured",
                             note=note if mem is not None else "not measured on CPU", median=mem, q20=mem, q80=mem))
        del inputs
        C.free_memory(device)
    naive = {r["B"]: r["loss_value"] for r in rows if r["provider"] == "torch" and r["loss_value"] is not None}
    for r in rows:
        if r["loss_value"] is not None and r["B"] in naive:
            r["rel_diff_vs_torch"] = abs(r["loss_value"] - naive[r["B"]]) / max(abs(naive[r["B"]]), 1e-30)
    return rows


def table(rows) -> str:
    """One line per provider × B, with the speed and memory ratios against naive torch."""
    times = {(r["provider"], r["B"]): r for r in rows if r["metric"] == "time_ms"}
    mems = {(r["provider"], r["B"]): r for r in rows if r["metric"] == "peak_mem_mib"}
    lines = [f"{'B':>6}  {'provider':<16} {'backend':<22} {'median ms [q20-q80]':<26} {'x torch':>8} "
             f"{'peak MiB':>9} {'/ torch':>8}  {'rel.diff':>8}  status"]
    for (name, B), r in sorted(times.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        m = mems.get((name, B), {})
        base_t, base_m = times.get(("torch", B), {}), mems.get(("torch", B), {})
        if r["status"] != "ok":
            lines.append(f"{B:>6}  {name:<16} {str(r['backend']):<22} {'-':<26} {'-':>8} {'-':>9} {'-':>8}  {'-':>8}  "
                         f"{r['status']}: {r['note'][:60]}")
            continue
        tm = f"{r['median']:.3f} [{r['q20']:.3f}-{r['q80']:.3f}]"
        speed = f"{base_t['median'] / r['median']:.2f}" if base_t.get("median") else "-"
        pk = "n/a" if m.get("median") is None else f"{m['median']:.1f}"
        mem_ratio = (f"{base_m['median'] / m['median']:.2f}" if base_m.get("median") and m.get("median") else "-")
        diff = "-" if r["rel_diff_vs_torch"] is None else f"{r['rel_diff_vs_torch']:.1e}"
        star = " *" if C.INTERPRETED_NOTE in r["note"] else ""
        lines.append(f"{B:>6}  {name:<16} {str(r['backend']):<22} {tm:<26} {speed:>8} {pk:>9} {mem_ratio:>8}  "
                     f"{diff:>8}  ok{star} {r['note'].replace(C.INTERPRETED_NOTE, '').strip('; ')}")
    return "\n".join(lines + C.table_footer(rows, times, mems))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_ranking", description=__doc__.split("\n")[0])
    p.add_argument("--batch-sizes", nargs="+", type=int, help="default: 1024..8192 on CUDA, 32 64 128 on CPU")
    C.add_script_args(p, PROVIDERS)
    args = p.parse_args(argv)
    device = C.pick_device()
    cuda = device.type == "cuda"
    sizes = sorted(args.batch_sizes or ([1024, 2048, 4096, 8192] if cuda else [32, 64, 128]))
    D, dtype, rep_ms = C.script_settings(device, args.dim, args.dtype, args.rep_ms, args.cpu_threads)
    env = C.environment(device)
    C.print_header(env)
    rows = run(sizes, D, dtype, device, env, args.providers, rep_ms)
    C.write_json(args.out, device, "rankclip_listmle.json", rows)
    print(f"== four ListMLE calls of a RankCLIP step, fwd+bwd, D={D}, {dtype}, {env['device']}\n{table(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
