"""GPU lane: the CUDA kernels of the csrc extension (csrc/cuda/) op by op, through torch.ops.clipkern.*.

Each op is compared with a float64 oracle written here from the schema contract (csrc/ops.cpp), with
the "at most 2× torch's error in the same precision" rule (tests/helpers.py), and with its Triton twin
(clipkern::triton_*). Random upstream gradients, odd and rectangular shapes, scale up to 100, a large
bf16 case, a memory bound, and a compute-sanitizer memcheck run.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from helpers import FLOOR, assert_within_2x_torch, err

pytestmark = pytest.mark.gpu

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SCALES = (1.0, 14.3, 100.0)


@pytest.fixture(scope="module")
def ops():
    """torch.ops.clipkern with CUDA kernels registered (prebuilt clipkern._C or the JIT build)."""
    from clipkern import _extension

    if _extension.load() is None:
        pytest.fail(f"the clipkern extension did not load: {_extension.unavailable_reason()}")
    for name in ("contrastive_fwd", "contrastive_bwd", "pairdiff_fwd", "pairdiff_bwd", "listmle_fwd", "listmle_bwd"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"clipkern::{name}", "CUDA"), \
            f"clipkern::{name} has no CUDA kernel: was the extension built with csrc/cuda/?"
    return torch.ops.clipkern


def _triton_ops():
    """The Triton twins (registered on import of the families), or None."""
    try:
        import clipkern.ops.contrastive  # noqa: F401
        import clipkern.ops.pairdiff  # noqa: F401
        import clipkern.ops.ranking  # noqa: F401
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001 - the twin comparison is optional
        return None
    return torch.ops.clipkern


def _feat(rows, dim, dtype):
    x = torch.randn(rows, dim, dtype=torch.float64, device="cuda")
    return (x / x.norm(dim=1, keepdim=True)).to(dtype)


def _close_to_twin(name, cuda_val, twin_val, torch_val, ref64, dtype):
    """Kernel and Triton twin agree within the 2× rule's budget around the fp64 value."""
    budget = 2 * err(torch_val, ref64) + FLOOR[dtype] * (1 + ref64.abs().max().item())
    diff = (cuda_val.double() - twin_val.double()).abs().max().item()
    assert diff <= 2 * budget, f"{name}: cuda vs triton differ by {diff:.3e} > {2 * budget:.3e}"


# ------------------------------------------------------------------------------------------- contrastive
def _contrastive_torch(x, y, scale, g_row, g_col):
    """(lse_row, lse_col, row_max, col_max, dx, dy, dscale) by torch autograd in x's precision."""
    x = x.detach().clone().requires_grad_()
    y = y.detach().clone().requires_grad_()
    s = scale.detach().clone().to(x.dtype if x.dtype == torch.float64 else torch.float32).requires_grad_()
    raw = x @ y.T
    # scale applied in fp32 and rounded once to the features' dtype (torch's own bf16/fp16 logits)
    S = raw * s if x.dtype in (torch.float32, torch.float64) else (raw.float() * s).to(x.dtype)
    lse_r, lse_c = S.logsumexp(1), S.logsumexp(0)
    ((lse_r.to(g_row.dtype) * g_row).sum() + (lse_c.to(g_col.dtype) * g_col).sum()).backward()
    return (lse_r.detach(), lse_c.detach(), S.detach().amax(1), S.detach().amax(0), x.grad, y.grad, s.grad)


CONTRASTIVE_SHAPES = [(1, 1, 16), (7, 5, 16), (7, 257, 100), (257, 100, 100), (257, 257, 768), (64, 1000, 100),
                      (1000, 64, 768), (1000, 1000, 768), (130, 70, 33)]


@pytest.mark.parametrize("scale", SCALES, ids=lambda s: f"s{s}")
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("M,N,D", CONTRASTIVE_SHAPES, ids=lambda v: str(v))
def test_contrastive_matches_float64(ops, M, N, D, dtype, scale):
    x, y = _feat(M, D, dtype), _feat(N, D, dtype)
    sc = torch.tensor(scale, device="cuda")
    g_row = torch.randn(M, device="cuda")
    g_col = torch.randn(N, device="cuda")
    row_max, row_logsum, col_max, col_logsum = ops.contrastive_fwd(x, y, sc)
    dx, dy, dscale = ops.contrastive_bwd(x, y, sc, row_max, row_logsum, col_max, col_logsum, g_row, g_col)
    assert dx.dtype == dtype and dy.dtype == dtype and dscale.dtype == torch.float32 and dscale.dim() == 0
    ref = _contrastive_torch(x.double(), y.double(), sc.double(), g_row.double(), g_col.double())
    same = _contrastive_torch(x, y, sc, g_row, g_col)
    mine = (row_max + row_logsum, col_max + col_logsum, row_max, col_max, dx, dy, dscale)
    for name, k, t, r in zip(("lse_row", "lse_col", "row_max", "col_max", "dx", "dy", "dscale"), mine, same, ref):
        assert_within_2x_torch(name, k, t, r, dtype)
    twin = _triton_ops()
    if twin is not None:
        t_stats = twin.triton_contrastive_lse(x, y, sc)
        t_grads = twin.triton_contrastive_lse_bwd(x, y, sc, *t_stats, g_row, g_col)
        _close_to_twin("lse_row", mine[0], t_stats[0] + t_stats[1], same[0], ref[0], dtype)
        _close_to_twin("lse_col", mine[1], t_stats[2] + t_stats[3], same[1], ref[1], dtype)
        for name, k, t, s_, r in zip(("dx", "dy", "dscale"), mine[4:], t_grads, same[4:], ref[4:]):
            _close_to_twin(name, k, t, s_, r, dtype)


def test_contrastive_is_deterministic_and_strided(ops):
    x, y = _feat(300, 96, torch.bfloat16), _feat(2 * 290, 96, torch.bfloat16)[::2]  # non-contiguous y
    sc = torch.tensor(50.0, device="cuda")
    g_row, g_col = torch.randn(300, device="cuda"), torch.randn(290, device="cuda")
    a = ops.contrastive_fwd(x, y, sc)
    b = ops.contrastive_fwd(x, y.contiguous(), sc)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    ga = ops.contrastive_bwd(x, y, sc, *a, g_row, g_col)
    gb = ops.contrastive_bwd(x, y, sc, *a, g_row, g_col)
    for u, v in zip(ga, gb):
        assert torch.equal(u, v)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_contrastive_staging_paths_agree_bitwise(ops, dtype, monkeypatch):
    """A 2-byte-misaligned copy of the inputs takes the synchronous staging path instead of cp.async;
    the mma sequence is the same, so every output must be bit-identical. (The wmma kernels: on an
    H100 the aligned inputs would otherwise take the Hopper kernels, which are compared below.)"""
    monkeypatch.setenv("CLIPKERN_CUDA_HOPPER", "0")
    M, N, D = 200, 150, 256
    x, y = _feat(M, D, dtype), _feat(N, D, dtype)

    def misaligned(t):
        flat = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
        out = flat[1:].view(t.shape)
        out.copy_(t)
        return out

    xm, ym = misaligned(x), misaligned(y)
    assert xm.data_ptr() % 16 != 0 and xm.is_contiguous()
    sc = torch.tensor(100.0, device="cuda")
    g_row, g_col = torch.randn(M, device="cuda"), torch.randn(N, device="cuda")
    a, b = ops.contrastive_fwd(x, y, sc), ops.contrastive_fwd(xm, ym, sc)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    for u, v in zip(ops.contrastive_bwd(x, y, sc, *a, g_row, g_col), ops.contrastive_bwd(xm, ym, sc, *a, g_row, g_col)):
        assert torch.equal(u, v)


def test_contrastive_large_bf16_and_memory(ops, monkeypatch):
    monkeypatch.setenv("CLIPKERN_CUDA_HOPPER", "0")  # the wmma kernels (no workspace); Hopper: see below
    B, D, dtype = 16384, 768, torch.bfloat16
    x, y = _feat(B, D, dtype), _feat(B, D, dtype)
    sc = torch.tensor(100.0, device="cuda")
    g_row, g_col = torch.randn(B, device="cuda") / B, torch.randn(B, device="cuda") / B
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    stats = ops.contrastive_fwd(x, y, sc)
    dx, dy, dscale = ops.contrastive_bwd(x, y, sc, *stats, g_row, g_col)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    outputs = 2 * B * D * x.element_size()  # dx, dy
    bound = outputs + 1024 * 2 * B  # statistics, split partials (≤ 64 row splits), dscale partials
    assert extra <= bound, f"peak extra memory {extra / 2**20:.1f} MiB > O(B) bound {bound / 2**20:.1f} MiB"
    assert extra < B * B * 4 / 8, "extra memory is of the order of the B×B logits"
    ref = _contrastive_torch(x.double(), y.double(), sc.double(), g_row.double(), g_col.double())
    same = _contrastive_torch(x, y, sc, g_row, g_col)
    mine = (stats[0] + stats[1], stats[2] + stats[3], stats[0], stats[2], dx, dy, dscale)
    for name, k, t, r in zip(("lse_row", "lse_col", "row_max", "col_max", "dx", "dy", "dscale"), mine, same, ref):
        assert_within_2x_torch(name, k, t, r, dtype)


def test_contrastive_nan_input_gives_nan(ops):
    x, y = _feat(40, 32, torch.float16), _feat(50, 32, torch.float16)
    x[3, 5] = float("nan")
    row_max, row_logsum, col_max, col_logsum = ops.contrastive_fwd(x, y, torch.tensor(10.0, device="cuda"))
    assert torch.isnan(row_max[3] + row_logsum[3])
    assert torch.isnan(col_max + col_logsum).all()


def test_contrastive_bad_input(ops):
    x = _feat(8, 16, torch.float32)
    sc = torch.tensor(1.0, device="cuda")
    with pytest.raises(RuntimeError, match="y must have as many columns"):
        ops.contrastive_fwd(x, _feat(8, 17, torch.float32), sc)
    with pytest.raises(RuntimeError, match="y must have the dtype of x"):
        ops.contrastive_fwd(x, _feat(8, 16, torch.float16), sc)
    with pytest.raises(RuntimeError, match="x must be float32, float16 or bfloat16"):
        ops.contrastive_fwd(x.double(), x.double(), sc)
    with pytest.raises(RuntimeError, match="scale must be float32"):
        ops.contrastive_fwd(x, x, sc.double())
    stats = ops.contrastive_fwd(x, x, sc)
    with pytest.raises(RuntimeError, match="g_col must have shape"):
        ops.contrastive_bwd(x, x, sc, *stats, torch.randn(8, device="cuda"), torch.randn(9, device="cuda"))


# ------------------------------------------------------------- contrastive, Hopper (sm_90a) kernels
# csrc/cuda/hopper_contrastive.cu: TMA + wgmma tiles, taken for fp16/bf16 on a compute-capability 9.0
# GPU when D % 8 == 0 and the inputs are 16-byte aligned (CLIPKERN_CUDA_HOPPER=0: the wmma kernels).
def _hopper_or_skip():
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the Hopper kernels run on compute capability 9.0 only (H100/H200)")


def _kernel_names(fn) -> set:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return {e.name for e in prof.events() if e.device_type.name == "CUDA"}


def test_hopper_kernels_are_taken_on_sm90(ops, monkeypatch):
    _hopper_or_skip()
    x, y = _feat(300, 256, torch.bfloat16), _feat(200, 256, torch.bfloat16)
    sc = torch.tensor(14.3, device="cuda")
    g = torch.randn(300, device="cuda"), torch.randn(200, device="cuda")
    names = _kernel_names(lambda: ops.contrastive_bwd(x, y, sc, *ops.contrastive_fwd(x, y, sc), *g))
    assert any("contrastive_fwd_sm90_kernel" in n for n in names), \
        f"the Hopper forward did not run (was clipkern._C built with nvidia-cutlass and TORCH_CUDA_ARCH_LIST 9.0a?): {names}"
    assert any("contrastive_ds_sm90_kernel" in n for n in names), names
    monkeypatch.setenv("CLIPKERN_CUDA_HOPPER", "0")
    names = _kernel_names(lambda: ops.contrastive_fwd(x, y, sc))
    assert not any("sm90" in n for n in names), names


HOPPER_SHAPES = [(1, 1, 8), (7, 5, 16), (129, 65, 64), (257, 100, 104), (300, 1000, 520), (1000, 64, 768),
                 (1000, 1000, 768), (2048, 2048, 512)]


@pytest.mark.parametrize("scale", SCALES, ids=lambda s: f"s{s}")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("M,N,D", HOPPER_SHAPES, ids=lambda v: str(v))
def test_hopper_contrastive_matches_float64_triton_and_wmma(ops, M, N, D, dtype, scale, monkeypatch):
    """Edge tiles in M, N (128 × 64 tiles) and D (64-wide k-steps, TMA zero fill), every scale."""
    _hopper_or_skip()
    x, y = _feat(M, D, dtype), _feat(N, D, dtype)
    sc = torch.tensor(scale, device="cuda")
    g_row, g_col = torch.randn(M, device="cuda"), torch.randn(N, device="cuda")
    stats = ops.contrastive_fwd(x, y, sc)
    dx, dy, dscale = ops.contrastive_bwd(x, y, sc, *stats, g_row, g_col)
    ref = _contrastive_torch(x.double(), y.double(), sc.double(), g_row.double(), g_col.double())
    same = _contrastive_torch(x, y, sc, g_row, g_col)
    mine = (stats[0] + stats[1], stats[2] + stats[3], stats[0], stats[2], dx, dy, dscale)
    names = ("lse_row", "lse_col", "row_max", "col_max", "dx", "dy", "dscale")
    for name, k, t, r in zip(names, mine, same, ref):
        assert_within_2x_torch(name, k, t, r, dtype)
    twin = _triton_ops()
    if twin is not None:
        t_stats = twin.triton_contrastive_lse(x, y, sc)
        t_grads = twin.triton_contrastive_lse_bwd(x, y, sc, *t_stats, g_row, g_col)
        _close_to_twin("lse_row", mine[0], t_stats[0] + t_stats[1], same[0], ref[0], dtype)
        _close_to_twin("lse_col", mine[1], t_stats[2] + t_stats[3], same[1], ref[1], dtype)
        for name, k, t, s_, r in zip(("dx", "dy", "dscale"), mine[4:], t_grads, same[4:], ref[4:]):
            _close_to_twin(name, k, t, s_, r, dtype)
    monkeypatch.setenv("CLIPKERN_CUDA_HOPPER", "0")
    w_stats = ops.contrastive_fwd(x, y, sc)
    w_grads = ops.contrastive_bwd(x, y, sc, *w_stats, g_row, g_col)
    _close_to_twin("lse_row (wmma)", mine[0], w_stats[0] + w_stats[1], same[0], ref[0], dtype)
    _close_to_twin("lse_col (wmma)", mine[1], w_stats[2] + w_stats[3], same[1], ref[1], dtype)
    for name, k, w, s_, r in zip(("dx (wmma)", "dy (wmma)", "dscale (wmma)"), mine[4:], w_grads, same[4:], ref[4:]):
        _close_to_twin(name, k, w, s_, r, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_hopper_chunked_backward_and_determinism(ops, dtype, monkeypatch):
    """A 1 MiB workspace splits the backward into row chunks (dY accumulated in fp32 by addmm): the same
    result as one chunk within the 2× rule, and bit-identical reruns."""
    _hopper_or_skip()
    M, N, D = 1100, 900, 256
    x, y = _feat(M, D, dtype), _feat(N, D, dtype)
    sc = torch.tensor(100.0, device="cuda")
    g_row, g_col = torch.randn(M, device="cuda"), torch.randn(N, device="cuda")
    stats = ops.contrastive_fwd(x, y, sc)
    for u, v in zip(stats, ops.contrastive_fwd(x, y, sc)):
        assert torch.equal(u, v)
    one = ops.contrastive_bwd(x, y, sc, *stats, g_row, g_col)
    monkeypatch.setenv("CLIPKERN_WORKSPACE_MB", "1")  # 1 MiB / (900 · 2 bytes) → 512-row chunks: 3 chunks
    many = ops.contrastive_bwd(x, y, sc, *stats, g_row, g_col)
    for u, v in zip(many, ops.contrastive_bwd(x, y, sc, *stats, g_row, g_col)):
        assert torch.equal(u, v)
    ref = _contrastive_torch(x.double(), y.double(), sc.double(), g_row.double(), g_col.double())
    same = _contrastive_torch(x, y, sc, g_row, g_col)
    for name, a, b, t, r in zip(("dx", "dy", "dscale"), one, many, same[4:], ref[4:]):
        assert_within_2x_torch(name + " (1 chunk)", a, t, r, dtype)
        assert_within_2x_torch(name + " (3 chunks)", b, t, r, dtype)


def test_hopper_large_bf16_and_memory(ops):
    _hopper_or_skip()
    B, D, dtype = 16384, 768, torch.bfloat16
    x, y = _feat(B, D, dtype), _feat(B, D, dtype)
    sc = torch.tensor(100.0, device="cuda")
    g_row, g_col = torch.randn(B, device="cuda") / B, torch.randn(B, device="cuda") / B
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    stats = ops.contrastive_fwd(x, y, sc)
    dx, dy, dscale = ops.contrastive_bwd(x, y, sc, *stats, g_row, g_col)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    workspace = min(1 << 30, max(64 << 20, 4 * 2 * B * D * 2))  # ops/base.workspace_bytes: O(B·D)
    bound = 2 * B * D * 2 + workspace + 4 * B * D + 1024 * 2 * B  # dx, dy, ws, fp32 dY, statistics
    assert extra <= bound, f"peak extra memory {extra / 2**20:.1f} MiB > bound {bound / 2**20:.1f} MiB"
    ref = _contrastive_torch(x.double(), y.double(), sc.double(), g_row.double(), g_col.double())
    same = _contrastive_torch(x, y, sc, g_row, g_col)
    mine = (stats[0] + stats[1], stats[2] + stats[3], stats[0], stats[2], dx, dy, dscale)
    for name, k, t, r in zip(("lse_row", "lse_col", "row_max", "col_max", "dx", "dy", "dscale"), mine, same, ref):
        assert_within_2x_torch(name, k, t, r, dtype)


# ---------------------------------------------------------------------------------------------- pairdiff
def _pairdiff_oracle(a, r, scale, g):
    """(lse, u, t) of the schema in a's precision, by explicit P×N×N tensors."""
    P, N = a.shape
    diff = a[:, :, None] - a[:, None, :]
    eye = torch.eye(N, dtype=torch.bool, device=a.device)
    L = (scale * diff * r[None]).masked_fill(eye[None], float("-inf"))
    lse = L.flatten(1).logsumexp(1)
    pi = torch.exp(L - lse[:, None, None])
    u = g[:, None] * ((r[None] * pi).sum(2) - (r[None] * pi).sum(1))
    t = (g[:, None, None] * pi * diff).sum(0)
    return lse, u, t


def _pairdiff_inputs(P, N):
    a = torch.rand(P, N, device="cuda") * 2 - 1
    r = torch.rand(N, N, device="cuda") * 3 + 0.5  # not symmetric
    r[torch.rand(N, N, device="cuda") < 0.1] = 0.0  # degenerate pairs: logit-0 candidates
    return a, r


@pytest.mark.parametrize("scale", SCALES, ids=lambda s: f"s{s}")
@pytest.mark.parametrize("P,N", [(1, 2), (7, 5), (33, 64), (5, 129), (64, 33), (300, 200)], ids=lambda v: str(v))
def test_pairdiff_matches_float64(ops, P, N, scale):
    a, r = _pairdiff_inputs(P, N)
    sc = torch.tensor(scale, device="cuda")
    g = torch.randn(P, device="cuda")
    lse_max, lse_logsum = ops.pairdiff_fwd(a, r, sc)
    u, t = ops.pairdiff_bwd(a, r, sc, lse_max, lse_logsum, g)
    ref = _pairdiff_oracle(a.double(), r.double(), scale, g.double())
    same = _pairdiff_oracle(a, r, scale, g)
    for name, k, s_, rf in zip(("lse", "u", "t"), (lse_max + lse_logsum, u, t), same, ref):
        assert_within_2x_torch(name, k, s_, rf, torch.float32)
    assert torch.equal(lse_max, (scale * (a[:, :, None] - a[:, None, :]) * r[None])
                       .masked_fill(torch.eye(N, dtype=torch.bool, device="cuda")[None], float("-inf")).amax((1, 2)))
    twin = _triton_ops()
    if twin is not None:
        t_max, t_logsum = twin.triton_pairdiff_lse(a, r, sc)
        t_u, t_t = twin.triton_pairdiff_lse_bwd(a, r, sc, t_max, t_logsum, g)
        for name, k, tw, s_, rf in zip(("lse", "u", "t"), (lse_max + lse_logsum, u, t),
                                       (t_max + t_logsum, t_u, t_t), same, ref):
            _close_to_twin(name, k, tw, s_, rf, torch.float32)


def test_pairdiff_bad_input(ops):
    a, r = _pairdiff_inputs(3, 4)
    sc = torch.tensor(1.0, device="cuda")
    with pytest.raises(RuntimeError, match="r must have shape"):
        ops.pairdiff_fwd(a, r[:3], sc)
    with pytest.raises(RuntimeError, match="a must be float32"):
        ops.pairdiff_fwd(a.half(), r, sc)


# ----------------------------------------------------------------------------------------------- listmle
def _listmle_torch(scores, targets, g, decay_log):
    from clipkern.ops.ranking import reference

    s = scores.detach().clone().requires_grad_()
    rows = reference.listmle_rows(s, targets, "log" if decay_log else None)
    (rows.to(g.dtype) * g).sum().backward()
    return rows.detach(), s.grad


def _listmle_inputs(B, N, dtype, scale):
    scores = (scale * (torch.rand(B, N, device="cuda") * 2 - 1)).to(dtype)
    targets = torch.round(torch.randn(B, N, device="cuda") * 4) / 4  # many ties: exercises the tie-break
    targets[targets == 0] = -0.0 if N % 2 else 0.0
    if N > 3:
        targets[:, 1] = -0.0  # −0.0 ties with +0.0
        targets[:, 2] = 0.0
    return scores, targets.to(dtype)


@pytest.mark.parametrize("decay_log", [False, True], ids=["w1", "wlog"])
@pytest.mark.parametrize("scale", SCALES, ids=lambda s: f"s{s}")
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("B,N", [(1, 1), (7, 2), (33, 100), (5, 256), (4, 257), (3, 1000), (2, 1025), (2, 4097),
                                 (1, 8192)], ids=lambda v: str(v))
def test_listmle_matches_float64(ops, B, N, dtype, scale, decay_log):
    scores, targets = _listmle_inputs(B, N, dtype, scale)
    g = torch.randn(B, device="cuda")
    loss = ops.listmle_fwd(scores, targets, decay_log)
    grad = ops.listmle_bwd(scores, targets, g, decay_log)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    ref_l, ref_g = _listmle_torch(scores.double(), targets.double(), g.double(), decay_log)
    same_l, same_g = _listmle_torch(scores, targets, g, decay_log)
    assert_within_2x_torch("loss", loss, same_l, ref_l, dtype)
    assert_within_2x_torch("grad", grad, same_g, ref_g, dtype)
    twin = _triton_ops()
    from clipkern.ops.ranking import MATRIX_MAX_N

    if twin is not None and N <= MATRIX_MAX_N:
        _close_to_twin("loss", loss, twin.triton_listmle_rows(scores, targets, decay_log), same_l, ref_l, dtype)
        _close_to_twin("grad", grad, twin.triton_listmle_rows_bwd(scores, targets, g, decay_log), same_g, ref_g, dtype)


def test_listmle_transposed_view_and_nan_target(ops):
    scores, targets = _listmle_inputs(40, 30, torch.float32, 14.3)
    loss_t = ops.listmle_fwd(scores.T, targets.T, False)
    ref = _listmle_torch(scores.T.double(), targets.T.double(), torch.ones(30, device="cuda", dtype=torch.float64), False)[0]
    assert_within_2x_torch("loss", loss_t, _listmle_torch(scores.T, targets.T, torch.ones(30, device="cuda"), False)[0],
                           ref, torch.float32)
    targets[4, 7] = float("nan")
    targets[9, 0] = float("inf")
    loss = ops.listmle_fwd(scores, targets, False)
    assert torch.isnan(loss[4]) and torch.isnan(loss[9])
    assert torch.isfinite(loss[[0, 1, 2, 3, 5, 10]]).all()


def test_listmle_too_long_row_raises(ops):
    scores = torch.randn(2, 8193, device="cuda")
    with pytest.raises(RuntimeError, match="exceed the CUDA kernel's maximum of 8192"):
        ops.listmle_fwd(scores, scores, False)


# ------------------------------------------------------------------------------------------ memcheck
_SANITIZER_SCRIPT = r"""
import torch
from clipkern import _extension
assert _extension.load() is not None, _extension.unavailable_reason()
ops = torch.ops.clipkern
torch.manual_seed(0)
for dtype in (torch.float32, torch.bfloat16):
    x, y = torch.randn(37, 40, device="cuda").to(dtype), torch.randn(70, 40, device="cuda").to(dtype)
    s = torch.tensor(10.0, device="cuda")
    st = ops.contrastive_fwd(x, y, s)
    ops.contrastive_bwd(x, y, s, *st, torch.randn(37, device="cuda"), torch.randn(70, device="cuda"))
    sc, tg = torch.randn(5, 300, device="cuda").to(dtype), torch.randn(5, 300, device="cuda")
    ops.listmle_fwd(sc, tg, True)
    ops.listmle_bwd(sc, tg, torch.randn(5, device="cuda"), True)
a, r = torch.randn(9, 37, device="cuda"), torch.rand(37, 37, device="cuda")
m, l = ops.pairdiff_fwd(a, r, torch.tensor(3.0, device="cuda"))
ops.pairdiff_bwd(a, r, torch.tensor(3.0, device="cuda"), m, l, torch.randn(9, device="cuda"))
torch.cuda.synchronize()
print("ok")
"""


def _sanitizer() -> str | None:
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    fallback = os.path.join(home, "bin", "compute-sanitizer")
    return shutil.which("compute-sanitizer") or (fallback if os.path.isfile(fallback) else None)


@pytest.mark.skipif(_sanitizer() is None, reason="compute-sanitizer is not on PATH (nor in $CUDA_HOME/bin)")
def test_compute_sanitizer_memcheck(ops, tmp_path):
    script = tmp_path / "memcheck_case.py"
    script.write_text(_SANITIZER_SCRIPT)
    env = dict(os.environ, CLIPKERN_NAN_FILL="1")
    proc = subprocess.run([_sanitizer(), "--tool", "memcheck", "--error-exitcode", "3", sys.executable,
                           str(script)], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout[-4000:] + proc.stderr[-4000:]
