"""Benchmark the four ListMLE calls of one RankCLIP step: clipkern against naive torch, fwd+bwd.

    python -m benchmarks.bench_ranking --out benchmarks/results [--batch-sizes 1024 8192] [--dim 768]
                                       [--dtype bf16] [--providers clipkern torch]
    python -m benchmarks.bench_ranking --model [--batch-sizes 8192 32768] [--dim 768] [--dtype bf16]

What one step is (every provider, same inputs): from image and text features V, T (B×D, leaves) and
logit_scale s (leaf), compute R_cross + R_in of docs/design.md §1.4 without the weights,
    listmle(L, Lᵀ) + listmle(Lᵀ, L) + listmle(s·V Vᵀ, s·T Tᵀ) + listmle(s·T Tᵀ, s·V Vᵀ),  L = s·V Tᵀ,
then backward to V, T and s. Providers:
  clipkern         clipkern.ops.ranking.rankclip_terms, fused=None: the from-features kernels for
                   B ≤ FUSED_MAX_N, the ListMLE matrix kernels above (on CPU: the reference, or the
                   Triton kernels interpreted if TRITON_INTERPRET=1 is set: their time means nothing)
                   for B ≤ MATRIX_PATH_MAX_B (4096), the row-chunked torch path above
  clipkern-matrix  the same with fused=False: L and the Gram matrices in fp32 + the matrix kernels
  clipkern-chunked the row-chunked path at every B (chunk_rows = chunked.chunk_rows(B, B)): R rows of
                   the four products by GEMMs, torch.sort + logcumsumexp, closed-form backward; no B×B
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
B = 32, 64, 128, D = 64, fp32, one thread. For RankCLIP at any batch on a GPU:
`--batch-sizes 16384 32768 --providers clipkern-chunked` (naive torch needs ~128 B² bytes there).

--model prints, without running anything, the row-chunked path's memory bound as the code computes it
(clipkern.ops.ranking.chunked.peak_extra_bytes from the chunk it picks) and its work, beside the three
fp32 B×B matrices the matrix path forms. Defaults: B = 4096 … 32768, D = 768, bf16. Computed, not
measured: tests/test_ranking_large.py measures the bound at B = 2048 on CPU.
"""
from __future__ import annotations

import argparse
import functools
import sys

import torch

from . import common as C

PROVIDERS = ("clipkern", "clipkern-matrix", "clipkern-chunked", "cuda", "torch", "torch.compile")


def _terms_fn(backend: str, fused):
    from clipkern.ops.ranking import rankclip_terms

    def fn(i, t, s, b):
        cross, inner = rankclip_terms(i, t, s, None, backend, fused)
        return cross + inner

    return fn


def _chunked_fn(backend: str):
    from clipkern.ops.ranking import chunked, rankclip_terms

    def fn(i, t, s, b):
        cross, inner = rankclip_terms(i, t, s, None, backend, chunk_rows=chunked.chunk_rows(i.shape[0], i.shape[0]))
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
        if name == "clipkern-chunked":  # torch ops only: the same on every backend
            return C.Provider(name, "rankclip-listmle", _chunked_fn("reference"), "torch (row-chunked)")
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
    from clipkern.ops.ranking import FUSED_MAX_N, MATRIX_MAX_N, MATRIX_PATH_MAX_B

    if not name.startswith("clipkern"):
        return ""
    if name == "clipkern-chunked" or (name == "clipkern" and B > MATRIX_PATH_MAX_B):
        return "row-chunked"
    if not backend.startswith("triton"):
        return "torch reference"
    if name == "clipkern-matrix" or (name == "clipkern" and B > FUSED_MAX_N):
        return "matrix" if B <= MATRIX_MAX_N else "matrix, row-chunked ListMLE (rows > MATRIX_MAX_N)"
    return "fused"


def _row(env, D, dtype, name, backend, B, metric, status, note="", **vals):
    row = {"provider": name, "loss": "rankclip-listmle", "mode": "fwd+bwd", "metric": metric, "B": B, "N": B,
           "D": D, "dtype": dtype, "backend": backend, "status": status, "note": note, "median": None,
           "q20": None, "q80": None, "reps": None, "loss_value": None, "rel_diff_vs_torch": None}
    row.update(vals)
    row.update(env)
    return row


def run(sizes, D, dtype_name, device, env, names, rep_ms):
    dtype = C.DTYPES[dtype_name]
    providers, skipped = C.build_each(names, lambda name: build(name, device, dtype))
    rows = C.sweep(providers, sizes, lambda B: C.make_inputs("clip", B, D, dtype, device, seed=B),
                   functools.partial(_row, env, D, dtype_name), skipped=skipped, device=device,
                   label="[rankclip-listmle] B={size:>6} {name:<16}",
                   time_kw=dict(warmup_ms=rep_ms / 4, rep_ms=rep_ms, min_reps=3, max_reps=100),
                   note_fn=lambda p, B: "; ".join(x for x in (p.note, _path(p.name, p.backend, B)) if x))
    return C.rel_diff_vs_torch(rows, "B")


def table(rows) -> str:
    """One line per provider × B, with the speed and memory ratios against naive torch."""
    return C.ratio_table(rows, "B", "B", show_note=True)


def model_rows(sizes, D: int, dtype_name: str) -> list[dict]:
    """The row-chunked path's computed memory bound and work per B (nothing runs)."""
    from clipkern.ops.ranking import chunked

    dtype = C.DTYPES[dtype_name]
    acc_bytes = 8 if dtype == torch.float64 else 4
    rows = []
    for B in sizes:
        R = chunked.chunk_rows(B, B)
        rows.append(dict(B=B, D=D, dtype=dtype_name, rows_per_chunk=R, tile_mib=R * B * acc_bytes / 2**20,
                         live_tiles=chunked.LIVE_TILES, bound_mib=chunked.peak_extra_bytes(B, D, dtype) / 2**20,
                         matrix_path_mib=3 * B * B * acc_bytes / 2**20, gemm_tflop=16 * 2 * B * B * D / 1e12,
                         sorted_pairs_g=8 * B * B / 1e9))
    return rows


def model_table(rows) -> str:
    head = (f"{'B':>6} {'D':>5} {'dtype':>5} {'R':>5} {'tile MiB':>9} {'bound MiB':>10} {'≤1GiB':>6} "
            f"{'3·B² MiB':>9} {'GEMM TFLOP':>11} {'sort Gpairs':>12}")
    lines = [head]
    for r in rows:
        lines.append(f"{r['B']:>6} {r['D']:>5} {r['dtype']:>5} {r['rows_per_chunk']:>5} {r['tile_mib']:>9.1f} "
                     f"{r['bound_mib']:>10.1f} {'yes' if r['bound_mib'] <= 1024 else 'NO':>6} "
                     f"{r['matrix_path_mib']:>9.0f} {r['gemm_tflop']:>11.2f} {r['sorted_pairs_g']:>12.2f}")
    lines.append("computed from the code's chunk choice (chunked.peak_extra_bytes: LIVE_TILES R×B tiles + the "
                 "O(B·D) buffers), not measured; 3·B² = the matrix path's three fp32 B×B matrices alone")
    return "\n".join(lines)


def main(argv=None) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model", action="store_true")
    known, rest = pre.parse_known_args(argv)
    if known.model:
        mp = argparse.ArgumentParser(prog="python -m benchmarks.bench_ranking --model")
        mp.add_argument("--batch-sizes", nargs="+", type=int, default=[4096, 8192, 16384, 32768])
        mp.add_argument("--dim", type=int, default=768)
        mp.add_argument("--dtype", choices=sorted(C.DTYPES), default="bf16")
        margs = mp.parse_args(rest)
        print(model_table(model_rows(sorted(margs.batch_sizes), margs.dim, margs.dtype)))
        return 0
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_ranking", description=__doc__.split("\n")[0])
    p.add_argument("--batch-sizes", nargs="+", type=int, help="default: 1024..8192 on CUDA, 32 64 128 on CPU")
    C.add_script_args(p, PROVIDERS)
    args = p.parse_args(rest)
    return C.run_script(args, args.batch_sizes, [1024, 2048, 4096, 8192], [32, 64, 128],
                        run, table, "rankclip_listmle.json",
                        "four ListMLE calls of a RankCLIP step, fwd+bwd, D={D}, {dtype}, {device}")


if __name__ == "__main__":
    sys.exit(main())
