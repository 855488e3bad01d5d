"""RankCLIP (docs/design.md §1.4): RankClipLoss against an independent float64 oracle of the whole objective
(epoch ramp included), the fused-from-features path against the matrix path and the reference for
both ranking terms, the long-batch fallback, the module API, bad input, opcheck and torch.compile."""
import pytest
import torch
import torch.nn.functional as F

import clipkern
import clipkern.functional as CF
import clipkern.ops.ranking as ranking
from clipkern.ops.ranking import rankclip_terms, triton_listmle_features
from helpers import (assert_compile_matches_eager, assert_within_2x_torch, check_against_reference, features,
                     run_with_grads)

F32, F16 = torch.float32, torch.float16
GRADS = ["image_features", "text_features", "logit_scale"]


# ------------------------------------------------------------------------ the float64 oracle
def oracle_listmle(scores, targets, decay=None):
    """Order by sorted(key=(−target, column)); suffix log-sum-exp through a triangular mask."""
    B, N = scores.shape
    rows = []
    for r in range(B):
        t = targets[r].tolist()
        order = torch.tensor(sorted(range(N), key=lambda j: (-t[j], j)))
        q = scores[r, order]
        upper = torch.ones(N, N, dtype=torch.bool).triu()
        lse = torch.where(upper, q[None, :], float("-inf")).logsumexp(dim=1)
        k = torch.arange(1, N + 1, dtype=q.dtype)
        w = torch.ones_like(q) if decay is None else 1 / torch.log2(k + 1)
        rows.append((w * (lse - q)).sum())
    return torch.stack(rows).mean()


def oracle_rankclip(V, T, s, epoch, total_epochs, decay=None):
    """CLIP(L) + w(e)·(R_cross + R_in)/B with w(e) = clamp(3(e−1)/(E−1), 0, 2), written out."""
    B = V.shape[0]
    L = s * V @ T.T
    labels = torch.arange(B)
    clip = (F.cross_entropy(L, labels) + F.cross_entropy(L.T, labels)) / 2
    Gv, Gt = s * V @ V.T, s * T @ T.T
    r_cross = (oracle_listmle(L, L.T.detach(), decay) + oracle_listmle(L.T, L.detach(), decay)) / 32
    r_in = (oracle_listmle(Gv, Gt.detach(), decay) + oracle_listmle(Gt, Gv.detach(), decay)) / 32
    w = min(max(3 * (epoch - 1) / (total_epochs - 1), 0.0), 2.0)
    return clip + w * (r_cross + r_in) / B


def _inputs(B, D, scale, dtype=torch.float64):
    return dict(image_features=features(B, D, dtype), text_features=features(B, D, dtype),
                logit_scale=torch.tensor(scale, dtype=torch.float64 if dtype == torch.float64 else torch.float32))


@pytest.mark.parametrize("decay", [None, "log"])
@pytest.mark.parametrize("epoch", [1, 1.5, 4, 7, 12])
@pytest.mark.parametrize("B", [1, 7, 24])
def test_reference_matches_the_oracle(B, epoch, decay):
    """The whole objective in float64, including both ends of the ramp (w = 0 at e = 1, w = 2 from
    e = 5 with E = 7)."""
    inputs = _inputs(B, 16, 30.0)
    module = clipkern.RankClipLoss(7, decay=decay, backend="reference")
    upstream = 0.7
    got, g_got = run_with_grads(lambda **kw: module(**kw, epoch=epoch), inputs, upstream)
    want, g_want = run_with_grads(
        lambda image_features, text_features, logit_scale:
        oracle_rankclip(image_features, text_features, logit_scale, epoch, 7, decay), inputs, upstream)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for name in GRADS:
        torch.testing.assert_close(g_got[name], g_want[name], rtol=1e-9, atol=1e-12)


def _module_fn(fused, decay=None, epoch=4):
    def fn(image_features, text_features, logit_scale, backend):
        module = clipkern.RankClipLoss(6, decay=decay, backend=backend,
                                       fused=fused if backend == "triton" else None)
        return module(image_features, text_features, logit_scale, epoch=epoch)
    return fn


def _case_id(c):
    B, D, s, dtype, decay, fused = c
    return f"B{B}-D{D}-s{s}-{str(dtype)[6:]}-{decay or 'nodecay'}-{'fused' if fused else 'matrix'}"


CASES = (
    [(B, 16, 14.3, F32, None, fused) for B in (1, 2, 7, 64) for fused in (True, False)]
    + [(40, 100, 100.0, dt, decay, fused) for dt in (F32, F16) for decay in (None, "log") for fused in (True, False)]
    + [(100, 24, 100.0, F32, "log", True), (33, 512, 50.0, F16, None, True)]
)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_rankclip_matches_float64_reference(case):
    B, D, scale, dtype, decay, fused = case
    check_against_reference(_module_fn(fused, decay), _inputs(B, D, scale, dtype), dtype, GRADS)


@pytest.mark.parametrize("term", ["cross", "inner"])
@pytest.mark.parametrize("dtype", [F32, F16], ids=["fp32", "fp16"])
def test_fused_path_matches_matrix_path_and_reference(term, dtype):
    """Each ranking term on its own: fused-from-features against the matrix kernels (same fp32
    math, different order of operations), and both against the float64 reference (2× rule)."""
    idx = 0 if term == "cross" else 1
    inputs = _inputs(50, 40, 60.0, dtype)

    def fn(fused):
        def term_fn(image_features, text_features, logit_scale, backend):
            return rankclip_terms(image_features, text_features, logit_scale, "log", backend,
                                  fused if backend == "triton" else None)[idx]
        return term_fn

    check_against_reference(fn(True), inputs, dtype, GRADS)
    check_against_reference(fn(False), inputs, dtype, GRADS)
    fused_loss, fused_grads = run_with_grads(lambda **kw: fn(True)(**kw, backend="triton"), inputs, -1.3)
    matrix_loss, matrix_grads = run_with_grads(lambda **kw: fn(False)(**kw, backend="triton"), inputs, -1.3)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == F32 else dict(rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(fused_loss, matrix_loss, **tol)
    for name in GRADS:
        torch.testing.assert_close(fused_grads[name], matrix_grads[name], **tol)


def test_fused_backward_in_row_chunks(monkeypatch):
    """The fused backward forms dS a bounded chunk of rows at a time; several chunks (the last one
    short) give the same gradients as one."""
    from clipkern.ops.ranking import triton_launchers as triton_ops

    inputs = _inputs(100, 24, 40.0, F32)
    fn = _module_fn(True)
    one_loss, one = run_with_grads(lambda **kw: fn(**kw, backend="triton"), inputs, 1.3)
    monkeypatch.setattr(triton_ops, "BWD_CHUNK_ELEMS", 64 * 128)  # 64-row chunks: 64 + 36 rows
    many_loss, many = run_with_grads(lambda **kw: fn(**kw, backend="triton"), inputs, 1.3)
    torch.testing.assert_close(many_loss, one_loss, rtol=0, atol=0)
    for name in GRADS:
        torch.testing.assert_close(many[name], one[name], rtol=1e-6, atol=1e-7)


def test_batches_above_the_fused_limit_use_the_matrix_path(monkeypatch):
    monkeypatch.setattr(ranking, "FUSED_MAX_N", 8)

    def no_kernel(*args, **kwargs):
        raise AssertionError("the fused kernel must not run above FUSED_MAX_N")

    monkeypatch.setattr(ranking, "triton_listmle_features", no_kernel)
    inputs = _inputs(12, 16, 20.0, F32)
    check_against_reference(_module_fn(None), inputs, F32, GRADS)
    with pytest.raises(ValueError, match=r"fused=True cannot run: batch 12 > FUSED_MAX_N = 8"):
        clipkern.RankClipLoss(5, fused=True, backend="triton")(*inputs.values(), epoch=3)
    with pytest.raises(AssertionError, match="must not run"):  # at the limit the fused path is taken
        clipkern.RankClipLoss(5, backend="triton")(*_inputs(8, 16, 20.0, F32).values(), epoch=3)


def test_fused_true_needs_the_triton_backend():
    with pytest.raises(ValueError, match="fused=True cannot run: backend 'reference' has no fused kernel"):
        clipkern.RankClipLoss(5, fused=True, backend="reference")(*_inputs(4, 8, 10.0, F32).values(), epoch=3)


def test_output_dict_terms_and_epoch_ramp():
    V, T, s = _inputs(9, 16, 20.0, F32).values()
    module = clipkern.RankClipLoss(11, backend="triton")
    out = module(V, T, s, output_dict=True, epoch=6)  # w = 3·5/10 = 1.5
    assert set(out) == {"contrastive_loss", "rank_cross_loss", "rank_in_loss"}
    assert all(k.endswith("_loss") for k in out)
    torch.testing.assert_close(sum(out.values()), module(V, T, s, epoch=6))
    torch.testing.assert_close(out["contrastive_loss"], CF.clip_loss(V, T, s, backend="triton"))
    cross, inner = rankclip_terms(V, T, s, None, "triton")
    torch.testing.assert_close(out["rank_cross_loss"], 1.5 * cross / 32 / 9)
    torch.testing.assert_close(out["rank_in_loss"], 1.5 * inner / 32 / 9)
    first = module(V, T, s, output_dict=True, epoch=1)
    assert first["rank_cross_loss"].item() == 0.0 and first["rank_in_loss"].item() == 0.0
    assert module.ramp_weight(1) == 0.0 and module.ramp_weight(6) == 1.5 and module.ramp_weight(11) == 2.0
    # every weight is a constructor argument
    custom = clipkern.RankClipLoss(11, cross_weight=0.5, in_weight=0.0, ramp_slope=1.0, ramp_max=10.0,
                                   clip_weight=2.0, normalize_by_batch=False, backend="triton")
    got = custom(V, T, s, output_dict=True, epoch=6)  # w = 0.5
    torch.testing.assert_close(got["contrastive_loss"], 2 * out["contrastive_loss"])
    torch.testing.assert_close(got["rank_cross_loss"], 0.5 * 0.5 * cross)
    assert got["rank_in_loss"].item() == 0.0


def test_epoch_comes_from_set_epoch_or_forward():
    V, T, s = _inputs(6, 8, 10.0, F32).values()
    module = clipkern.RankClipLoss(5, backend="reference")
    with pytest.raises(ValueError, match="needs the current epoch"):
        module(V, T, s)
    module.set_epoch(3)
    torch.testing.assert_close(module(V, T, s), module(V, T, s, epoch=3))
    assert not torch.allclose(module(V, T, s), module(V, T, s, epoch=1))
    with pytest.raises(TypeError, match="epoch must be a number"):
        module(V, T, s, epoch="3")
    with pytest.raises(TypeError, match="epoch must be a number"):
        module.set_epoch(None)


@pytest.mark.parametrize("kwargs,exc,words", [
    (dict(total_epochs=1), ValueError, "total_epochs must be an integer >= 2"),
    (dict(total_epochs=10.0), ValueError, "total_epochs must be an integer >= 2"),
    (dict(total_epochs=10, decay="linear"), ValueError, "decay must be None or 'log'"),
    (dict(total_epochs=10, fused="yes"), ValueError, "fused must be None, True or False"),
    (dict(total_epochs=10, backend="tpu"), ValueError, "backend must be one of"),
    (dict(total_epochs=10, cross_weight="1/32"), TypeError, "cross_weight must be a number"),
], ids=["epochs1", "epochs-float", "decay", "fused", "backend", "weight"])
def test_bad_constructor_arguments(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        clipkern.RankClipLoss(**kwargs)


@pytest.mark.parametrize("v,t,exc,words", [
    (torch.randn(4), torch.randn(4, 8), ValueError, "image_features must be 2-D"),
    (torch.randn(4, 8), torch.randn(4, 8, 1), ValueError, "text_features must be 2-D"),
    (torch.randn(4, 8), torch.randn(5, 8), ValueError, "image_features has batch 4 but text_features has batch 5"),
    (torch.randn(4, 8), torch.randn(4, 9), ValueError, "text_features has feature width 9"),
    (torch.randn(0, 8), torch.randn(0, 8), ValueError, "image_features is an empty batch"),
], ids=["rank1", "rank3", "batch", "width", "empty"])
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_bad_input_names_the_argument(backend, v, t, exc, words):
    with pytest.raises(exc, match=words):
        clipkern.RankClipLoss(5, backend=backend)(v, t, torch.tensor(10.0), epoch=3)


@pytest.mark.parametrize("dtype", [F32, F16], ids=["fp32", "fp16"])
def test_opcheck_listmle_features(dtype):
    v = features(20, 24, dtype).requires_grad_()
    t = features(20, 24, dtype).requires_grad_()
    s = torch.tensor(30.0, requires_grad=True)
    torch.library.opcheck(triton_listmle_features, (v, t, t.detach(), v.detach(), s, True))
    torch.library.opcheck(triton_listmle_features, (v, v, t.detach(), t.detach(), s, False))


@pytest.mark.slow
def test_fullgraph_compile_matches_eager(tmp_path, monkeypatch):
    """RankClipLoss (fused ListMLE ops + the contrastive ops) and listmle_loss (matrix ops) in one
    fullgraph torch.compile, forward and backward."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    module = clipkern.RankClipLoss(8, decay="log", backend="triton")

    def step(v, t, s, scores):
        out = module(v, t, s, output_dict=True, epoch=3)
        return sum(out.values()) + CF.listmle_loss(scores, scores.T.detach(), backend="triton")

    assert_compile_matches_eager(step, [features(20, 24), features(20, 24), torch.tensor(30.0),
                                        10 * torch.randn(20, 20)])


def test_kernel_precision_at_s100_against_torch():
    """The fused path in fp32 at s = 100 on unnormalised features: ListMLE gradients stay within
    2× torch's own fp32 error (the (max, sum) scans, not fp32 log values)."""
    V, T = 2 * features(64, 32, normalise=False), features(64, 32, normalise=False)
    s = torch.tensor(100.0)
    inputs = dict(image_features=V, text_features=T, logit_scale=s)
    fn = _module_fn(True, "log", epoch=6)
    loss_k, g_k = run_with_grads(lambda **kw: fn(**kw, backend="triton"), inputs, -1.1)
    loss_t, g_t = run_with_grads(lambda **kw: fn(**kw, backend="reference"), inputs, -1.1)
    loss_r, g_r = run_with_grads(lambda **kw: fn(**kw, backend="reference"),
                                 {k: v.double() for k, v in inputs.items()}, -1.1)
    assert_within_2x_torch("loss", loss_k, loss_t, loss_r, F32)
    for name in GRADS:
        assert_within_2x_torch(f"d{name}", g_k[name], g_t[name], g_r[name], F32)


SM90_SCRIPT = r'''
import sys
import torch
import triton
from triton.compiler import ASTSource

sys.path.insert(0, "tests")
from sm90_compile import TARGET, ptxas_report  # noqa: E402
from clipkern.ops.ranking import FUSED_MAX_N, triton_kernels as rk  # noqa: E402
from clipkern.ops.ranking.triton_launchers import ranking_blocks  # noqa: E402

DTYPES = {torch.bfloat16: "bf16", torch.float32: "fp32"}
CASES = [("matrix", 1024, torch.bfloat16), ("fused", FUSED_MAX_N, torch.bfloat16),
         ("fused", FUSED_MAX_N, torch.float32)]
for path, n, dtype in CASES:
    fused = path == "fused"
    cfg = ranking_blocks(n, n, 768, torch.device("cuda"), dtype, fused=fused)
    kernels = ((rk._listmle_fused_fwd_kernel, rk._listmle_fused_bwd_kernel) if fused
               else (rk._listmle_rows_fwd_kernel, rk._listmle_rows_bwd_kernel))
    for fn in kernels:
        args = cfg.kernel_args(dtype, fused=fused)
        warps = args.pop("num_warps")
        constexprs = dict(args, DECAY_LOG=True, **({"INTERPRETED": False} if fused else {}))
        sig = {a: "constexpr" if a in constexprs else
               (f"*{DTYPES[dtype]}" if a in ("a_ptr", "c_ptr", "a2_ptr", "c2_ptr", "scores_ptr", "targets_ptr",
                                             "dscores_ptr") and not (fused and a == "dscores_ptr")
                else "*fp32" if a.endswith("_ptr") else "i32") for a in fn.arg_names}
        kernel = triton.compile(ASTSource(fn, sig, constexprs), target=TARGET,
                                options=dict(num_warps=warps, num_stages=1))
        regs, spills = ptxas_report(kernel.asm["ptx"])
        print(f"{path} N={n} {DTYPES[dtype]} {fn.__name__} block_m={cfg.block_m} warps={warps} regs={regs} "
              f"spill={spills}", flush=True)
'''


@pytest.mark.slow
def test_kernels_compile_for_sm90_without_spills():
    """The GPU compiler rejects things the interpreter accepts: compile the ListMLE kernels for
    sm_90a (no GPU needed) with the blocks clipkern launches there, at the largest spill-free sizes
    claimed in triton_launchers.ranking_blocks, and require ptxas to report no register spills."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).parents[1]
    out = subprocess.run([sys.executable, "-c", SM90_SCRIPT], capture_output=True, text=True, env=env,
                         timeout=600, cwd=str(root))
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    lines = [line for line in out.stdout.splitlines() if " regs=" in line]
    assert len(lines) == 6, out.stdout
    assert all(line.endswith("spill=0") for line in lines), out.stdout
