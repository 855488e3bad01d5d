"""Benchmark the PC-CLIP pairwise-difference loss: clipkern against the naive torch reference, fwd+bwd.

    python -m benchmarks.bench_pcclip --out benchmarks/results [--sizes 512 4096] [--dim 768]
                                      [--dtype bf16] [--providers clipkern torch]

One step (every provider, same inputs): image features G (N×D) and text features E (P×D, P = N),
leaves, logit_scale s (leaf, 1/0.07), and P fixed random listed pairs (i ≠ j); the all-pairs loss
of docs/design.md §1.3 (each text against all N(N−1) ordered image pairs), then backward to E, G and s.
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
import functools
import sys

import torch

from . import common as C

PROVIDERS = ("clipkern", "clipkern-listed", "cuda", "torch", "torch.compile")
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


def _row(env, D, dtype, name, backend, N, metric, status, note="", **vals):
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

    providers, skipped = C.build_each(names, lambda name: build(name, device, dtype, pairs_of))
    rows = C.sweep(providers, sizes, lambda N: C.make_inputs("clip", N, D, dtype, device, seed=N),
                   functools.partial(_row, env, D, dtype_name), skipped=skipped, device=device,
                   label=f"[{LOSS}] N=P={{size:>6}} {{name:<16}}",
                   time_kw=dict(warmup_ms=rep_ms / 4, rep_ms=rep_ms, min_reps=3, max_reps=100))
    # clipkern-listed computes a different (listed-pairs) loss: its value is not comparable
    return C.rel_diff_vs_torch(rows, "N", exclude=("clipkern-listed",))


def table(rows) -> str:
    return C.ratio_table(rows, "N", "N=P")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_pcclip", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", type=int, help="N = P; default 256..4096 on CUDA, 16 32 64 on CPU")
    C.add_script_args(p, PROVIDERS)
    args = p.parse_args(argv)
    return C.run_script(args, args.sizes, [256, 512, 1024, 2048, 4096], [16, 32, 64],
                        run, table, "pcclip_pairdiff.json",
                        "PC-CLIP all-pairs loss, fwd+bwd, P = N, D={D}, {dtype}, {device}")


if __name__ == "__main__":
    sys.exit(main())
