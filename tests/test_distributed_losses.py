"""Multi-process (gloo, CPU) tests of the papers' losses across ranks, unequal batches, a fullgraph-
compiled loss, the per-rank FLOP count of each-logit-once ClipLoss, and the distributed benchmark.

Workers are launched like tests/test_distributed.py's (file rendezvous, `_launch`) or through
`torchrun --standalone`. Every rank builds the same global batch (fixed seed) and keeps its slice
J_r; with c a random upstream gradient, L the single-process loss of the same module on the
concatenated batch and G = dL/d(all features), each rank checks (docs/design.md §6):
- mean_r loss_r = L, and the gradient of its own features is c·W·G[J_r] (features gathered with
  autograd: all ranks' losses reach them), mean_r d/d logit_scale = c·dL/ds;
  for ParaClipLoss, AlignClipLoss (local_loss=True, gather_with_grad=True), RankClipLoss (both
  decays, ranking terms on) and PairwiseDifferenceLoss (listed pairs, one degenerate pair);
- a rank with one row fewer makes every rank raise a ValueError naming image_features and the
  sizes (ClipLoss in two modes, SigLipLoss), instead of a hang;
- (2 ranks) torch.compile(fullgraph=True, backend="aot_eager") of ClipLoss(local_loss=True,
  gather_with_grad=True) and of SigLipLoss gives the eager loss and gradients (Dynamo traces the
  functional collectives; inductor works too but costs a C++ compile per rank);
- (triton only) executed MMA FLOPs per rank of ClipLoss(local_loss=True, gather_with_grad=True)
  at b = 64, D = 32 on the sm_90 launch configuration are ≤ 1.40 × 6·b·B·D.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import clipkern

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_distributed as TD  # noqa: E402  (the launcher and the per-rank comparison helpers)

FLOP_B_LOCAL, FLOP_D, FLOP_LIMIT = 64, 32, 1.40


def _grads_check(ctx, what, got, ref, leaves=("image", "text")):
    W = ctx.world_size
    ctx.close(ctx.mean_over_ranks(got["loss"]), ref["loss"], f"{what}: mean over ranks of loss vs global loss")
    for k in leaves:
        ctx.close(got[k], W * ref[k][ctx.sl], f"{what}: d/d local {k} = W x global slice")
    ctx.close(ctx.mean_over_ranks(got["scale"]), ref["scale"], f"{what}: mean over ranks of d/d logit_scale")


def _run(module, feats, scale, coef, *extra, dtype, **kw):
    leaves = TD._leaves(*feats)
    s = torch.tensor(scale, dtype=dtype, requires_grad=True)
    loss = module(*leaves, *extra, s, **kw)
    (coef * loss).backward()
    return dict(loss=loss.detach(), scale=s.grad, **{f"f{i}": t.grad for i, t in enumerate(leaves)})


def _check_papers_losses(ctx):
    image, text, coef = TD._data(20, ctx.dtype)
    g = torch.Generator().manual_seed(21)
    semantic = torch.randn(TD.GLOBAL_B, 8, generator=g, dtype=ctx.dtype)
    para = [TD._data(22 + k, ctx.dtype)[0] for k in range(2)]
    kw = dict(rank=ctx.rank, world_size=ctx.world_size)
    gwg = dict(local_loss=True, gather_with_grad=True, **kw)
    sl, be = ctx.sl, ctx.backend
    cases = [
        ("ParaClipLoss", clipkern.ParaClipLoss(**gwg, backend=be), clipkern.ParaClipLoss(backend=be),
         (image, text, *para), (), {}),
        ("AlignClipLoss", clipkern.AlignClipLoss(modalities=("image", "text"), **gwg, backend=be),
         clipkern.AlignClipLoss(modalities=("image", "text"), backend=be), (image, text), (semantic,), {}),
    ]
    for decay in (None, "log"):
        cases.append((f"RankClipLoss(decay={decay})", clipkern.RankClipLoss(3, decay=decay, backend=be, **kw),
                      clipkern.RankClipLoss(3, decay=decay, backend=be), (image, text), (), dict(epoch=2.5)))
    for name, ours, glob, feats, extra, fkw in cases:
        got = _run(ours, [f[sl] for f in feats], 10.0, coef, *[e[sl] for e in extra], dtype=ctx.dtype, **fkw)
        ref = _run(glob, feats, 10.0, coef, *extra, dtype=ctx.dtype, **fkw)
        _grads_check(ctx, name, got, ref, leaves=[f"f{i}" for i in range(len(feats))])

    # PC-CLIP listed pairs: each rank's pairs index its own images; rank 0 lists one degenerate pair
    b = TD.GLOBAL_B // ctx.world_size
    pairs = torch.stack([torch.arange(TD.GLOBAL_B) % b, (torch.arange(TD.GLOBAL_B) * 5 + 1) % b], dim=1)
    pairs[0] = torch.tensor([2 % b, 2 % b])
    offsets = (torch.arange(TD.GLOBAL_B) // b * b).unsqueeze(1)
    ours = clipkern.PairwiseDifferenceLoss(backend=be, **kw)
    glob = clipkern.PairwiseDifferenceLoss(backend=be)
    got = _run(ours, [text[sl], image[sl]], 3.0, coef, pairs[sl], dtype=ctx.dtype)
    ref = _run(glob, [text, image], 3.0, coef, pairs + offsets, dtype=ctx.dtype)
    _grads_check(ctx, "PairwiseDifferenceLoss", got, ref, leaves=("f0", "f1"))


def _check_unequal_batches(ctx):
    image, text, _ = TD._data(30, ctx.dtype)
    rows = ctx.b - 1 if ctx.rank == ctx.world_size - 1 else ctx.b  # the last rank has one row fewer
    i, t = image[ctx.sl][:rows], text[ctx.sl][:rows]
    s, bias = torch.tensor(10.0, dtype=ctx.dtype), torch.tensor(-1.0, dtype=ctx.dtype)
    kw = dict(rank=ctx.rank, world_size=ctx.world_size, backend=ctx.backend)
    for module in (clipkern.ClipLoss(local_loss=True, gather_with_grad=True, **kw), clipkern.ClipLoss(**kw),
                   clipkern.SigLipLoss(**kw)):
        with pytest.raises(ValueError, match=r"image_features has a different batch size on each rank") as err:
            module(i, t, s, bias)
        sizes = [ctx.b] * (ctx.world_size - 1) + [ctx.b - 1]
        assert str(sizes) in str(err.value), f"[rank {ctx.rank}] sizes missing from: {err.value}"


def _check_compiled(ctx):
    image, text, coef = TD._data(40, ctx.dtype)
    kw = dict(rank=ctx.rank, world_size=ctx.world_size, backend=ctx.backend)
    for module in (clipkern.ClipLoss(local_loss=True, gather_with_grad=True, **kw), clipkern.SigLipLoss(**kw)):
        torch._dynamo.reset()
        compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
        what = f"compiled {type(module).__name__}"
        eager = TD._distributed(ctx, module, image, text, 10.0, -2.0, coef)
        got = TD._distributed(ctx, compiled, image, text, 10.0, -2.0, coef)
        TD._compare(ctx, got, eager, what)


def _check_flops(ctx):
    from benchmarks.distributed import per_rank_mma_flops

    g = torch.Generator().manual_seed(50 + ctx.rank)
    b, D, W = FLOP_B_LOCAL, FLOP_D, ctx.world_size
    i, t = (torch.nn.functional.normalize(torch.randn(b, D, generator=g), dim=1).requires_grad_() for _ in range(2))
    s = torch.tensor(14.0, requires_grad=True)
    module = clipkern.ClipLoss(local_loss=True, gather_with_grad=True, rank=ctx.rank, world_size=W, backend="triton")
    executed = per_rank_mma_flops(lambda: module(i, t, s))
    ratio = executed / (6 * b * (W * b) * D)
    print(f"rank {ctx.rank}: executed MMA FLOPs {executed} = {ratio:.4f} x 6·b·B·D", flush=True)
    assert 1.0 <= ratio <= FLOP_LIMIT, f"[rank {ctx.rank}] per-rank MMA FLOPs {ratio:.4f} x useful > {FLOP_LIMIT}"


def _worker_main(argv) -> int:
    import argparse
    from datetime import timedelta

    import torch.distributed as dist

    p = argparse.ArgumentParser()
    p.add_argument("--worker", action="store_true")
    for name in ("rank", "world_size"):
        p.add_argument(name, type=int)
    for name in ("init_method", "backend", "dtype"):
        p.add_argument(name)
    p.add_argument("--open-clip", action="store_true")
    args = p.parse_args(argv)
    if args.rank < 0:  # launched by torchrun
        args.rank, args.world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=args.init_method, rank=args.rank, world_size=args.world_size,
                            timeout=timedelta(seconds=90))
    try:
        ctx = TD._Ctx(args.rank, args.world_size, args.backend, getattr(torch, args.dtype), None)
        checks = [_check_papers_losses, _check_unequal_batches]
        checks += [_check_compiled] if args.world_size == 2 else []  # ~30 s per rank at 4 ranks on 2 cores
        checks += [_check_flops] if args.backend == "triton" else []
        for check in checks:
            start = time.perf_counter()
            check(ctx)
            print(f"rank {args.rank}: {check.__name__} {time.perf_counter() - start:.1f}s", flush=True)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    print(f"rank {args.rank}: ok", flush=True)
    return 0


if __name__ == "__main__" and "--worker" in sys.argv[1:]:
    code = _worker_main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # see tests/test_distributed.py: gloo's threads can abort a normal teardown


def _env():
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", TRITON_INTERPRET="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(TD.PKG_ROOT), os.environ.get("PYTHONPATH", "")) if p))
    env.pop("CLIPKERN_BACKEND", None)
    return env


def _torchrun(args, timeout=TD.LAUNCH_TIMEOUT_S):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=str(TD.PKG_ROOT),
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, f"torchrun failed (exit {out.returncode}):\n{out.stdout[-6000:]}\n{out.stderr[-6000:]}"
    return out


@pytest.mark.slow
@pytest.mark.skipif(TD._triton_why_not() is not None, reason=f"triton backend: {TD._triton_why_not()}")
def test_losses_torchrun_2_triton(tmp_path):
    """torchrun, 2 ranks, the fused kernels (interpreted): papers' losses, unequal batches, compile, FLOPs."""
    out = _torchrun([str(Path(__file__).resolve()), "--worker", "-1", "-1", "env://", "triton", "float32"])
    assert "rank 0: ok" in out.stdout and "rank 1: ok" in out.stdout
    assert "executed MMA FLOPs" in out.stdout


@pytest.mark.slow
def test_losses_4_ranks_reference(tmp_path):
    TD._launch(tmp_path, 4, "reference", "float64", script=Path(__file__).resolve())


@pytest.mark.slow
def test_distributed_benchmark_torchrun(tmp_path):
    """`torchrun -m benchmarks.run --distributed` at tiny sizes: one row per rank × provider, and
    clipkern sends less than open_clip (only the texts travel, plus O(B) statistics)."""
    import json

    _torchrun(["-m", "benchmarks.run", "--distributed", "--out", str(tmp_path), "--batch-sizes", "8", "--dim", "16",
               "--reps", "1"])
    rows = json.loads((tmp_path / "cpu" / "clip_distributed.json").read_text())
    by = {(r["provider"], r["rank"]): r for r in rows}
    assert {k[1] for k in by} == {0, 1} and all(r["median_ms"] > 0 for r in rows)
    b, D = 8, 16
    ours = by[("clipkern", 0)]
    # texts in (all_gather), their gradients out (reduce-scatter), column statistics both ways
    # fp32: all_gather sends b·D, reduce-scatter half of 2b·D, two all_to_alls half of 2b × 2 each
    # (each column's partial lse and its scale moment, which routes d/d logit_scale to the column's
    # owner); plus the batch-size check's one int64
    expected = 4 * (b * D + b * D + 2 * 2 * b) + 8
    assert ours["comm_bytes_sent"] == expected, ours["comm_by_op"]
    if ("open_clip", 0) in by:
        assert by[("open_clip", 0)]["loss_value"] == pytest.approx(ours["loss_value"], rel=1e-5)
        assert ours["comm_bytes_sent"] < by[("open_clip", 0)]["comm_bytes_sent"]
