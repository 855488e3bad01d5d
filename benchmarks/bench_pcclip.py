"""Benchmark the PC-CLIP pairwise-difference loss: clipkern against the naive torch reference, fwd+bwd.

    python -m benchmarks.bench_pcclip --out benchmarks/results [--sizes 512 4096] [--dim 768]
                                      [--dtype bf16] [--providers clipkern torch]

One step (every provider, same inputs): image features G (N×D) and text features E (P×D, P = N),
leaves, logit_scale s (leaf, 1/0.07), and P fixed random listed pairs (i ≠ j); the all-pairs loss
of DESIGN §1.3 (each text against all N(N−1) ordered image pairs), then backward to E, G and s.
Providers:
  clipkern         clipkern.functional.pairwise_difference_loss(all_pairs=True): the fused kernel
                   (on CPU: the reference, or the kernels interpreted if TRITON_INTERPRET=1 is set:
                   their time means nothing)
  clipkern-listed  the paper's listed-pairs form (P×P) on the fused contrastive kernel: a different,
                   much smaller loss, shown for scale only (its loss value is not comparable)
  cuda             pairwise_difference_loss(all_pairs=True, backend="cuda"): the csrc CUDA pairdiff
                   kernels (skipped with the reason without a GPU or a built extension)
  torch            clipkern.ops.pairdiff.reference.all_pairs_loss, eager: builds the N×N×D
                   differences and the P×N×N logits
  torch.compile    the same, torch.compile(dynamic=False)
Timing, warm-up and peak memory come from benchmarks/common.py. The issue's H100 targets: at
N = P = 512, ≥ 20× faster and ≥ 50× less peak memory than naive torch; N = P = 4096 in < 100 ms.

Writes DIR/<gpu-slug or 'cpu'>/pcclip_pairdiff.json (flat rows with versions, device and date) and
prints a table. Defaults: on CUDA N = 256 … 4096, D = 768, bf16; on CPU N = 16, 32, 64, D = 64, fp32.
"""
from __future__ import annotations

import argparse
import sys

import torch

from . import common as C

PROVIDERS = ("clipkern", "clipkern-listed", "cuda", "torch", "torch.compile")
METRICS = ("time_ms", "peak_mem_mib")
LOSS = "pcclip-all-pairs"


def _pairs(N: int, device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(N)
    i = torch.randint(0, N, (N,), generator=gen)
    j = (i + torch.randint(1, N, (N,), generator=gen)) % N
    return torch.stack([i, j], dim=1).to(device)


def build(name: str, device: torch.device, dtype: torch.dtype, pairs_of) -> C.Provider:
    """One provider (fn(image, text, s, b) with the pairs bound per size), or ProviderUnavailable."""
    import clipkern.functional as CF
    from clipkern.ops.pairdiff.reference import all_pairs_loss

    try:
        if name.startswith("clipkern"):
            from clipkern import _backend

            used = _backend.resolve(C.clipkern_backend(device), device, dtype)
            note = C.INTERPRETED_NOTE if used == "triton" and device.type == "cpu" else ""
            all_pairs = name == "clipkern"

            def fn(i, t, s, b):
                return CF.pairwise_difference_loss(t, i, pairs_of(i), s, all_pairs=all_pairs, backend=used)

            return C.Provider(name, LOSS, fn, used + (" (interpreted)" if note else ""), note)

        if name == "cuda":  # all-pairs form with the csrc CUDA pairdiff kernels
            used = C.cuda_backend(device, dtype)

            def cuda_fn(i, t, s, b):
                return CF.pairwise_difference_loss(t, i, pairs_of(i), s, all_pairs=True, backend=used)

            return C.Provider(name, LOSS, cuda_fn, used)

        def naive(i, t, s, b):
            return all_pairs_loss(t, i, pairs_of(i), s.to(t.dtype))

        if name == "torch":
            return C.Provider(name, LOSS, naive, "eager")
        if name == "torch.compile":
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            return C.Provider(name, LOSS, torch.compile(naive, dynamic=False), "inductor")
        raise C.ProviderUnavailable(f"unknown provider {name!r}; choose from {PROVIDERS}")
    except C.ProviderUnavailable:
        raise
    except Exception as exc:  # ImportError, BackendUnavailable, ...
        raise C.ProviderUnavailable(f"{type(exc).__name__}: {exc}") from exc


def _row(env, name, backend, N, D, dtype, metric, status, note="", **vals):
    row = {"provider": name, "loss": LOSS, "mode": "fwd+bwd", "metric": metric, "B": N, "N": N, "P": N, "D": D,
           "dtype": dtype, "backend": backend, "status": status, "note": note, "median": None, "q20": None,
           "q80": None, "reps": None, "loss_value": None, "rel_diff_vs_torch": None}
    row.update(vals)
    row.update(env)
    return row


def run(sizes, D, dtype_name, device, env, names, rep_ms):
    dtype = C.DTYPES[dtype_name]
    cache: dict[int, torch.Tensor] = {}

    def pairs_of(image):
        N = image.shape[0]
        if N not in cache:
            cache[N] = _pairs(N, device)
        return cache[N]

    providers, rows, done = [], [], {}
    for name in names:
        try:
            providers.append(build(name, device, dtype, pairs_of))
        except C.ProviderUnavailable as exc:
            rows.append(_row(env, name, None, None, D, dtype_name, None, "skipped", str(exc)))
    for N in sizes:
        inputs = C.make_inputs("clip", N, D, dtype, device, seed=N)
        for p in providers:
            if p.name in done:
                continue
            print(f"[{LOSS}] N=P={N:>6} {p.name:<16}", end=" ", file=sys.stderr, flush=True)
            base = dict(env=env, name=p.name, backend=p.backend, N=N, D=D, dtype=dtype_name)
            try:
                value = C.step(p.fn, inputs).double().item()
                t = C.time_fwd_bwd(p.fn, inputs, warmup_ms=rep_ms / 4, rep_ms=rep_ms, min_reps=3, max_reps=100)
                mem = C.peak_extra_mib(p.fn, inputs)
            except Exception as exc:  # noqa: BLE001 - recorded, never swallowed
                why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
                status = "OOM" if C.is_oom(exc) else "error"
                print(status, why, file=sys.stderr)
                rows += [_row(**base, metric=m, status=status, note=why) for m in METRICS]
                done[p.name] = f"{status} at N={N}"
                C.free_memory(device)
                continue
            print(f"{t.median:10.3f} ms", file=sys.stderr)
            rows.append(_row(**base, metric="time_ms", status="ok", note=p.note, median=t.median, q20=t.q20,
                             q80=t.q80, reps=t.reps, loss_value=value))
            rows.append(_row(**base, metric="peak_mem_mib", status="ok" if mem is not None else "not measured",
                             note=p.note if mem is not None else "not measured on CPU", median=mem, q20=mem,
                             q80=mem))
        del inputs
        C.free_memory(device)
    naive = {r["N"]: r["loss_value"] for r in rows if r["provider"] == "torch" and r["loss_value"] is not None}
    for r in rows:
        if r["loss_value"] is not None and r["N"] in naive and r["provider"] != "clipkern-listed":
            r["rel_diff_vs_torch"] = abs(r["loss_value"] - naive[r["N"]]) / max(abs(naive[r["N"]]), 1e-30)
    return rows


def table(rows) -> str:
    times = {(r["provider"], r["N"]): r for r in rows if r["metric"] == "time_ms"}
    mems = {(r["provider"], r["N"]): r for r in rows if r["metric"] == "peak_mem_mib"}
    lines = [f"{'N=P':>6}  {'provider':<16} {'backend':<22} {'median ms [q20-q80]':<26} {'x torch':>8} "
             f"{'peak MiB':>9} {'/ torch':>8}  {'rel.diff':>8}  status"]
    for (name, N), r in sorted(times.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if r["status"] != "ok":
            lines.append(f"{N:>6}  {name:<16} {str(r['backend']):<22} {'-':<26} {'-':>8} {'-':>9} {'-':>8}  "
                         f"{'-':>8}  {r['status']}: {r['note'][:60]}")
            continue
        m, bt, bm = mems.get((name, N), {}), times.get(("torch", N), {}), mems.get(("torch", N), {})
        tm = f"{r['median']:.3f} [{r['q20']:.3f}-{r['q80']:.3f}]"
        speed = f"{bt['median'] / r['median']:.2f}" if bt.get("median") else "-"
        pk = "n/a" if m.get("median") is None else f"{m['median']:.1f}"
        ratio = f"{bm['median'] / m['median']:.2f}" if bm.get("median") and m.get("median") else "-"
        diff = "-" if r["rel_diff_vs_torch"] is None else f"{r['rel_diff_vs_torch']:.1e}"
        star = " *" if C.INTERPRETED_NOTE in r["note"] else ""
        lines.append(f"{N:>6}  {name:<16} {str(r['backend']):<22} {tm:<26} {speed:>8} {pk:>9} {ratio:>8}  "
                     f"{diff:>8}  ok{star}")
    return "\n".join(lines + C.table_footer(rows, times, mems))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_pcclip", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", type=int, help="N = P; default 256..4096 on CUDA, 16 32 64 on CPU")
    C.add_script_args(p, PROVIDERS)
    args = p.parse_args(argv)
    device = C.pick_device()
    cuda = device.type == "cuda"
    sizes = sorted(args.sizes or ([256, 512, 1024, 2048, 4096] if cuda else [16, 32, 64]))
    D, dtype, rep_ms = C.script_settings(device, args.dim, args.dtype, args.rep_ms, args.cpu_threads)
    env = C.environment(device)
    C.print_header(env)
    rows = run(sizes, D, dtype, device, env, args.providers, rep_ms)
    C.write_json(args.out, device, "pcclip_pairdiff.json", rows)
    print(f"== PC-CLIP all-pairs loss, fwd+bwd, P = N, D={D}, {dtype}, {env['device']}\n{table(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
