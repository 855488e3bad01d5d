"""Multi-process (gloo, CPU) tests of clipkern.ClipLoss / SigLipLoss with world_size 2 and 4.

Each test launches `world_size` copies of this file as worker processes (`--worker`), which meet
through a file:// rendezvous in pytest's tmp_path (gloo is pinned to the loopback interface). Every
rank builds the same global batch from a fixed seed, keeps its slice, and asserts in-process; a
failing rank fails the test with every rank's output (tracebacks included) in the report.

What the ranks check, with c a random upstream gradient (the same on every rank), L the
single-process global loss `clipkern.ClipLoss()` / `SigLipLoss()` on the full batch, G = dL/d(full
features), B the global and b = B / W the local batch, and loss_r the loss rank r returns:

ClipLoss (open_clip semantics; all_gather's backward sums the gathered gradients over ranks):
- local_loss=True,  gather_with_grad=True:  mean_r loss_r = L. loss_r depends on rank r's features
  directly (its rows) and on every rank's through the gather (columns), so the gradient that reaches
  rank r's own features is ∂(Σ_r' c·loss_r')/∂x_r = c·W·G[slice r]; DDP's average over W ranks then
  gives c·dL/dθ. Each rank's logit_scale replica gets c·d loss_r/ds (open_clip's per-rank value), and
  mean_r of it = c·dL/ds (what DDP's averaging produces).
- local_loss=False, gather_with_grad=True:  loss_r = L on every rank, and again x_r.grad = c·W·G[slice r]
  (W identical losses, each backpropagating into every slice); s.grad = c·dL/ds on every rank.
- local_loss=False, gather_with_grad=False: loss_r = L; the other ranks' features are constants, so
  x_r.grad = c·G[slice r] exactly (open_clip's known 1/W gradient scale under DDP); s.grad = c·dL/ds.
- local_loss=True,  gather_with_grad=False: mean_r loss_r = L; gradients only against open_clip.
- In every combination: the loss and all gradients, d/d logit_scale included, equal open_clip's
  ClipLoss run by the same ranks per rank; with local_loss=True, gather_with_grad=True (each logit
  computed once) the scale gradient of a column's partials is routed to the rank that owns the
  column (see clipkern/distributed_contrastive.py).
- clipkern's modules print no FutureWarning (the functional collectives are not deprecated).
SigLipLoss (images stay local, texts travel): mean_r loss_r = L, x_r.grad = c·W·G[slice r] for
images and texts, mean_r s.grad = c·dL/ds (and the same for the bias), and per rank the loss and the
gradients equal open_clip's SigLipLoss with each dist_impl ('bidir', 'shift', 'reduce', 'gather').

Each module is called for two steps (fresh data, cache_labels=True: a label-cache miss then hit, with
the rank offset), the second with a logit_bias for ClipLoss.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
import torch

import clipkern

PKG_ROOT = Path(clipkern.__file__).resolve().parent.parent  # where the parent imports clipkern from
GLOBAL_B, DIM = 12, 16
TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (2e-5, 1e-6)}  # see tests/test_open_clip_parity.py
CLIP_MODES = [(True, True), (False, True), (False, False), (True, False)]  # (local_loss, gather_with_grad)
SIGLIP_IMPLS = ("bidir", "shift", "reduce", "gather")
LAUNCH_TIMEOUT_S = 240


def _has_open_clip() -> bool:
    return importlib.util.find_spec("open_clip") is not None


def _open_clip_loss_module():
    """open_clip 3.3's loss.py, loaded by path: importing the `open_clip` package pulls in its model
    zoo (seconds per process), while loss.py itself only needs torch."""
    spec = importlib.util.find_spec("open_clip")
    path = Path(next(iter(spec.submodule_search_locations))) / "loss.py"
    mod_spec = importlib.util.spec_from_file_location("_open_clip_loss", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def _triton_why_not() -> str | None:
    from clipkern._backend import triton_unavailable_reason

    return triton_unavailable_reason(torch.device("cpu"))


def _cuda_why_not() -> str | None:
    from clipkern._backend import cuda_unavailable_reason

    return cuda_unavailable_reason(torch.device("cpu"))


# =============================================================================================
# worker side (runs in the child processes)


class _Ctx:
    def __init__(self, rank, world_size, backend, dtype, oc):
        self.rank, self.world_size, self.backend, self.dtype, self.oc = rank, world_size, backend, dtype, oc
        self.b = GLOBAL_B // world_size
        self.sl = slice(rank * self.b, (rank + 1) * self.b)

    def close(self, actual, expected, what):
        tag = f"[rank {self.rank}/{self.world_size}, backend={self.backend}, {self.dtype}] {what}"
        assert actual is not None, f"{tag}: no gradient"
        assert expected is not None, f"{tag}: no expected gradient"
        assert actual.shape == expected.shape, f"{tag}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
        rtol, atol = TOL[self.dtype]
        a, e = actual.detach().double(), expected.detach().double()
        assert torch.isfinite(a).all(), f"{tag}: not finite: {a}"
        err, mag = (a - e).abs().max().item(), e.abs().max().item()
        tol = rtol * mag + atol
        assert err <= tol, f"{tag}: max abs error {err:.3e} > tolerance {tol:.3e} (max |expected| {mag:.3e})"

    def mean_over_ranks(self, t):
        import torch.distributed as dist

        t = t.detach().clone().double()
        dist.all_reduce(t)
        return t / self.world_size


def _data(step, dtype):
    """The global batch of one step: identical on every rank (fixed seed)."""
    g = torch.Generator().manual_seed(1234 + step)

    def unit():
        x = torch.randn(GLOBAL_B, DIM, generator=g, dtype=torch.float64)
        return (x / x.norm(dim=1, keepdim=True)).to(dtype)

    image, text = unit(), unit()
    coef = (0.5 + 1.5 * torch.rand((), generator=g, dtype=torch.float64).item()) * (-1) ** step
    return image, text, coef


def _leaves(*ts):
    return [t.detach().clone().requires_grad_(True) for t in ts]


def _single_process(module, image, text, scale, bias, coef, dtype):
    """Loss and gradients (times coef) of `module` on the full batch, in this process alone."""
    i, t = _leaves(image, text)
    s = torch.tensor(scale, dtype=dtype, requires_grad=True)
    b = None if bias is None else torch.tensor(bias, dtype=dtype, requires_grad=True)
    loss = module(i, t, s, b)
    (coef * loss).backward()
    return dict(loss=loss.detach(), image=i.grad, text=t.grad, scale=s.grad, bias=None if b is None else b.grad)


def _distributed(ctx, module, image, text, scale, bias, coef):
    """This rank's loss and gradients (times coef) of `module` on its slice."""
    i, t = _leaves(image[ctx.sl], text[ctx.sl])
    s = torch.tensor(scale, dtype=ctx.dtype, requires_grad=True)
    b = None if bias is None else torch.tensor(bias, dtype=ctx.dtype, requires_grad=True)
    loss = module(i, t, s, b)
    assert loss.shape == (), f"[rank {ctx.rank}] loss must be 0-d, got {tuple(loss.shape)}"
    (coef * loss).backward()
    return dict(loss=loss.detach(), image=i.grad, text=t.grad, scale=s.grad, bias=None if b is None else b.grad)


def _compare(ctx, got, ref, what, keys=("loss", "image", "text", "scale", "bias")):
    for k in keys:
        if k == "bias" and ref.get("bias") is None and got.get("bias") is None:
            continue
        ctx.close(got[k], ref[k], f"{what}: {k}")


def _check_clip(ctx):
    for local_loss, gwg in CLIP_MODES:
        kw = dict(local_loss=local_loss, gather_with_grad=gwg, cache_labels=True, rank=ctx.rank,
                  world_size=ctx.world_size)
        ours = clipkern.ClipLoss(**kw, backend=ctx.backend)
        theirs = ctx.oc.ClipLoss(**kw) if ctx.oc is not None else None
        glob = clipkern.ClipLoss(backend=ctx.backend)
        for step, (scale, bias) in enumerate([(1 / 0.07, None), (100.0, -2.5)]):
            what = f"ClipLoss(local_loss={local_loss}, gather_with_grad={gwg}) step {step}"
            image, text, coef = _data(step, ctx.dtype)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                got = _distributed(ctx, ours, image, text, scale, bias, coef)
            assert not [w for w in caught if issubclass(w.category, FutureWarning)], \
                f"[rank {ctx.rank}] {what}: FutureWarning: {[str(w.message) for w in caught]}"
            if theirs is not None:
                theirs_got = _distributed(ctx, theirs, image, text, scale, bias, coef)
                # each logit once (local_loss and gather_with_grad): the column partials' scale gradient
                # is routed to the column's owner (clipkern/distributed_contrastive.py), so every rank's
                # d/d logit_scale is open_clip's own, not only the mean over ranks
                once = local_loss and gwg
                keys = ("loss", "image", "text", "scale") + (() if once else ("bias",))
                _compare(ctx, got, theirs_got, f"{what} vs open_clip", keys)
                if once:
                    for k in ("bias",):
                        if theirs_got[k] is not None:
                            ctx.close(ctx.mean_over_ranks(got[k]), ctx.mean_over_ranks(theirs_got[k]),
                                      f"{what} vs open_clip: mean over ranks of d/d {k}")

            ref = _single_process(glob, image, text, scale, bias, coef, ctx.dtype)
            if local_loss:
                ctx.close(ctx.mean_over_ranks(got["loss"]), ref["loss"], f"{what}: mean over ranks of loss vs global loss")
            else:
                ctx.close(got["loss"], ref["loss"], f"{what}: loss vs global loss")
            if gwg:
                W = ctx.world_size
                ctx.close(got["image"], W * ref["image"][ctx.sl], f"{what}: d/d local image = W x global slice")
                ctx.close(got["text"], W * ref["text"][ctx.sl], f"{what}: d/d local text = W x global slice")
            elif not local_loss:
                ctx.close(got["image"], ref["image"][ctx.sl], f"{what}: d/d local image = global slice")
                ctx.close(got["text"], ref["text"][ctx.sl], f"{what}: d/d local text = global slice")
            if local_loss:
                ctx.close(ctx.mean_over_ranks(got["scale"]), ref["scale"], f"{what}: mean over ranks of d/d logit_scale")
            else:
                ctx.close(got["scale"], ref["scale"], f"{what}: d/d logit_scale vs global")
            if bias is not None:
                assert got["bias"] is not None, f"[rank {ctx.rank}] {what}: logit_bias got no gradient (DDP would see an unused parameter)"
                ctx.close(ctx.mean_over_ranks(got["bias"]), ref["bias"], f"{what}: mean over ranks of d/d logit_bias")


def _check_siglip(ctx):
    impls = SIGLIP_IMPLS if ctx.oc is not None else (None,)
    for impl in impls:
        kw = dict(cache_labels=True, rank=ctx.rank, world_size=ctx.world_size, dist_impl=impl)
        ours = clipkern.SigLipLoss(**kw, backend=ctx.backend)
        theirs = ctx.oc.SigLipLoss(**kw) if ctx.oc is not None else None
        glob = clipkern.SigLipLoss(backend=ctx.backend)
        for step, (scale, bias) in enumerate([(10.0, -10.0), (100.0, -10.0)]):
            what = f"SigLipLoss(dist_impl={impl!r}) step {step}"
            image, text, coef = _data(10 + step, ctx.dtype)
            got = _distributed(ctx, ours, image, text, scale, bias, coef)
            if theirs is not None:
                _compare(ctx, got, _distributed(ctx, theirs, image, text, scale, bias, coef), f"{what} vs open_clip")
            ref = _single_process(glob, image, text, scale, bias, coef, ctx.dtype)
            W = ctx.world_size
            ctx.close(ctx.mean_over_ranks(got["loss"]), ref["loss"], f"{what}: mean over ranks of loss vs global loss")
            ctx.close(got["image"], W * ref["image"][ctx.sl], f"{what}: d/d local image = W x global slice")
            ctx.close(got["text"], W * ref["text"][ctx.sl], f"{what}: d/d local text = W x global slice")
            ctx.close(ctx.mean_over_ranks(got["scale"]), ref["scale"], f"{what}: mean over ranks of d/d logit_scale")
            ctx.close(ctx.mean_over_ranks(got["bias"]), ref["bias"], f"{what}: mean over ranks of d/d logit_bias")


def _worker_main(argv) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", action="store_true")
    p.add_argument("rank", type=int)
    p.add_argument("world_size", type=int)
    p.add_argument("init_method")
    p.add_argument("backend")
    p.add_argument("dtype")
    p.add_argument("--open-clip", action="store_true")
    args = p.parse_args(argv)
    if args.rank < 0:  # launched by torchrun: it sets RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT
        args.rank, args.world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=args.init_method, rank=args.rank,
                            world_size=args.world_size, timeout=timedelta(seconds=90))
    try:
        ctx = _Ctx(args.rank, args.world_size, args.backend, getattr(torch, args.dtype),
                   _open_clip_loss_module() if args.open_clip else None)
        _check_clip(ctx)
        _check_siglip(ctx)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    print(f"rank {args.rank}: ok", flush=True)
    return 0


# =============================================================================================
# parent side (pytest)


def _launch(tmp_path: Path, world_size: int, backend: str, dtype: str, script: Path | None = None) -> None:
    """Run `script` (default: this file) as `world_size` gloo workers: SCRIPT --worker RANK WORLD_SIZE
    INIT BACKEND DTYPE [--open-clip]; fail the test with every rank's output if one fails."""
    script = Path(__file__).resolve() if script is None else script
    env = dict(os.environ)
    env.update(
        TRITON_INTERPRET="1",  # CPU tensors: the triton backend needs the interpreter
        GLOO_SOCKET_IFNAME="lo",  # loopback only
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(PKG_ROOT), env.get("PYTHONPATH", "")) if p),
    )
    env.pop("CLIPKERN_BACKEND", None)
    init = (tmp_path / "rendezvous").resolve().as_uri()
    extra = ["--open-clip"] if _has_open_clip() else []
    procs, logs = [], []
    for rank in range(world_size):
        log_path = tmp_path / f"rank{rank}.log"
        logs.append(log_path)
        with open(log_path, "w") as log:
            procs.append(subprocess.Popen(
                [sys.executable, str(script), "--worker", str(rank), str(world_size), init,
                 backend, dtype, *extra],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=str(PKG_ROOT)))
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    timed_out = False
    try:
        while any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                # One rank failed; the others are probably blocked in a collective. Give them a
                # moment to fail on their own (their tracebacks help), then stop them.
                grace = time.monotonic() + 3
                while time.monotonic() < grace and any(p.poll() is None for p in procs):
                    time.sleep(0.05)
                break
            if time.monotonic() > deadline:
                timed_out = True
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    codes = [p.returncode for p in procs]
    if not timed_out and all(c == 0 for c in codes):
        return
    # Report the failing ranks first, then the others.
    order = sorted(range(world_size), key=lambda r: (codes[r] in (0, -9), r))
    parts = [f"world_size={world_size} backend={backend} dtype={dtype}: "
             + (f"timed out after {LAUNCH_TIMEOUT_S}s; " if timed_out else "")
             + "exit codes " + ", ".join(f"rank {r}: {c}" for r, c in enumerate(codes))]
    for r in order:
        text = logs[r].read_text(errors="replace")
        if len(text) > 12000:
            text = "...\n" + text[-12000:]
        parts.append(f"----- rank {r} (exit {codes[r]}) output -----\n{text}")
    pytest.fail("\n".join(parts), pytrace=False)


_CUDA_MARK = pytest.mark.skipif(_cuda_why_not() is not None, reason=f"cuda backend: {_cuda_why_not()}")
_TRITON_MARK = pytest.mark.skipif(_triton_why_not() is not None, reason=f"triton backend: {_triton_why_not()}")


@pytest.mark.slow
@pytest.mark.parametrize("world_size,backend,dtype", [
    pytest.param(2, "reference", "float64", id="ws2-reference-fp64"),
    pytest.param(4, "reference", "float64", id="ws4-reference-fp64"),
    pytest.param(2, "triton", "float32", id="ws2-triton-fp32", marks=_TRITON_MARK),
    pytest.param(4, "triton", "float32", id="ws4-triton-fp32", marks=_TRITON_MARK),
    # the csrc C++ CPU op (auto's choice on a CPU); its column moment comes from the chunked torch pass
    pytest.param(2, "cuda", "float64", id="ws2-cuda-fp64", marks=_CUDA_MARK),
])
def test_distributed_losses(tmp_path, world_size, backend, dtype):
    _launch(tmp_path, world_size, backend, dtype)


@pytest.mark.parametrize("make", [
    pytest.param(lambda: clipkern.ClipLoss(world_size=2), id="ClipLoss"),
    pytest.param(lambda: clipkern.ClipLoss(world_size=2, rank=1, local_loss=True, gather_with_grad=True),
                 id="ClipLoss-local-gwg"),
    pytest.param(lambda: clipkern.SigLipLoss(world_size=2), id="SigLipLoss"),
])
def test_world_size_without_process_group_raises(make):
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is initialised in this process")
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(4, DIM, generator=g), dim=1)
    y = torch.nn.functional.normalize(torch.randn(4, DIM, generator=g), dim=1)
    scale, bias = torch.tensor(10.0, requires_grad=True), torch.tensor(-10.0, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"(?s)world_size=2.*not initiali[sz]ed.*init_process_group"):
        make()(x, y, scale, bias)


if __name__ == "__main__" and "--worker" in sys.argv[1:]:
    # An uncaught exception prints its traceback to stderr (the rank's log) and exits 1. After a
    # clean run, leave with os._exit: gloo's background threads sometimes abort the normal
    # interpreter teardown ("terminate called without an active exception", exit -6) after every
    # check has already passed.
    code = _worker_main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@pytest.mark.slow
def test_torchrun_launch(tmp_path):
    """The way users launch: torchrun (standalone rendezvous on loopback), 2 CPU processes, gloo."""
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(PKG_ROOT), os.environ.get("PYTHONPATH", "")) if p))
    env.pop("CLIPKERN_BACKEND", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).resolve()), "--worker", "-1", "-1", "env://", "reference", "float64"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S, env=env,
                         cwd=str(PKG_ROOT), stdin=subprocess.DEVNULL)
    assert out.returncode == 0, f"torchrun failed (exit {out.returncode}):\n{out.stdout[-6000:]}\n{out.stderr[-6000:]}"
    assert "rank 0: ok" in out.stdout and "rank 1: ok" in out.stdout
