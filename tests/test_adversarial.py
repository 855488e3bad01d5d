"""Adversarial inputs (issue 15): second-order gradients, near-duplicate images in PC-CLIP, float64
kept float64, float16 on a CPU, and clear errors. Each test failed before its fix. Errors are measured
against the norm of the float64 reference quantity, not element by element."""
import math

import pytest
import torch

import clipkern
import clipkern.functional as F
from clipkern import _backend
from clipkern.ops.pairdiff.reference import PAIR_EPS

F32, F64 = torch.float32, torch.float64
FAMILY_BACKENDS = {"contrastive": ("reference", "triton", "cuda"), "sigmoid": ("reference", "triton", "cuda"),
                   "imsep": ("reference", "triton"), "ranking": ("reference", "triton", "cuda"),
                   "pairdiff": ("reference", "triton", "cuda")}


def runnable(backend: str, dtype=F32) -> bool:
    if backend == "triton" and dtype == F64:
        return False
    return _backend.unavailable_reason(backend, torch.device("cpu")) is None


def unit(rows: int, dim: int, dtype=F64) -> torch.Tensor:
    x = torch.randn(rows, dim, dtype=F64)
    return (x / x.norm(dim=1, keepdim=True)).to(dtype)


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-300)).item()


PAIRS = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 0], [4, 1]])
SEMANTIC = torch.randn(6, 5, generator=torch.Generator().manual_seed(1), dtype=F64) + 2  # constants
TARGETS = torch.randn(6, 6, generator=torch.Generator().manual_seed(2), dtype=F64)
# (name, family, fn(x, y, backend) -> loss); x, y are the differentiated inputs (6×8, 5×8 or 5×5)
LOSSES = [
    ("clip_loss", "contrastive", lambda x, y, be: F.clip_loss(x, y[:6], 3.0, backend=be)),
    ("clip_loss_rows", "contrastive", lambda x, y, be: F.clip_loss_rows(x, y[:6], 3.0, backend=be)),
    ("siglip_loss", "sigmoid", lambda x, y, be: F.siglip_loss(x, y[:6], 3.0, -1.0, backend=be)),
    ("imsep_loss", "imsep", lambda x, y, be: F.imsep_loss(x, y[:6], SEMANTIC.to(x.dtype), 3.0,
                                                          modalities=("image", "text"), backend=be)),
    ("listmle_loss", "ranking", lambda x, y, be: F.listmle_loss(x[:5, :5] + y[:5, :5], TARGETS[:5, :5].to(x.dtype),
                                                                         backend=be)),
    ("pairdiff_listed", "pairdiff", lambda x, y, be: F.pairwise_difference_loss(x[:5], y, PAIRS, 2.0,
                                                                                backend=be)),
    ("pairdiff_all", "pairdiff", lambda x, y, be: F.pairwise_difference_loss(x[:5], y, PAIRS, 2.0, all_pairs=True,
                                                                             backend=be)),
]
CASES = [(name, fn, be) for name, fam, fn in LOSSES for be in FAMILY_BACKENDS[fam]]


# ------------------------------------------------------------------ item 1: second-order gradients
@pytest.mark.parametrize("name,fn,backend", CASES, ids=[f"{n}-{b}" for n, _, b in CASES])
def test_double_backward_is_correct_or_a_clear_error(name, fn, backend):
    if not runnable(backend):
        pytest.skip(f"backend {backend!r} unavailable")
    dtype = F64 if backend == "reference" else F32
    x, y = unit(6, 8, dtype).requires_grad_(), unit(6, 8, dtype).requires_grad_()
    loss = fn(x, y, backend)
    plain = torch.autograd.grad(loss, (x, y), retain_graph=True)
    gx, gy = torch.autograd.grad(loss, (x, y), create_graph=True)  # first order still works
    torch.testing.assert_close((gx, gy), plain)
    wx, wy = torch.randn_like(gx), torch.randn_like(gy)
    if backend == "reference":  # plain torch: the second derivative is right (checked numerically)
        assert torch.autograd.gradgradcheck(lambda a, b: fn(a, b, backend), (x, y))
        return
    # the fused ops: a clear error, never a silently wrong (constant-backward) second derivative.
    # The SigLIP kernels (ops/sigmoid, owned by the kernel rework) still give torch's own message.
    words = "double backward" if name != "siglip_loss" else "double backward|no autograd formula"
    with pytest.raises(RuntimeError, match=words):
        torch.autograd.grad((gx * wx).sum() + (gy * wy).sum(), (x, y), allow_unused=True)


def test_double_backward_of_rankclip_fused_is_a_clear_error():
    x, y = unit(5, 8, F32).requires_grad_(), unit(5, 8, F32).requires_grad_()
    loss = clipkern.RankClipLoss(3, fused=True, backend="triton")(x, y, torch.tensor(3.0), epoch=3)
    gx, = torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(gx.pow(2).sum(), x, allow_unused=True)


# ------------------------------------------------------- item 2: near-duplicate images in PC-CLIP
def near_duplicate_images(sq: float, n: int = 8, dim: int = 64) -> torch.Tensor:
    """n unit rows (exactly representable in fp32) whose rows 3 and 4 lie ‖Ĝ_3 − Ĝ_4‖² = sq apart."""
    g = unit(n, dim)
    d = torch.randn(dim, dtype=F64)
    d = d - (d @ g[3]) * g[3]
    theta = 2 * math.asin(math.sqrt(sq) / 2)
    g[4] = math.cos(theta) * g[3] + math.sin(theta) * d / d.norm()
    return g.float().double()


def pairdiff_with_grads(text, image, pairs, backend, dtype, all_pairs=True, scale=1.0):
    t, g = text.to(dtype).requires_grad_(), image.to(dtype).requires_grad_()
    loss = F.pairwise_difference_loss(t, g, pairs, scale, all_pairs=all_pairs, backend=backend)
    return (loss, *torch.autograd.grad(loss, (t, g)))


NEAR_PAIRS = torch.tensor([[3, 4], [4, 3], [0, 1], [1, 2], [2, 5], [5, 6], [6, 7], [7, 0]])


@pytest.mark.parametrize("sq", [1.1e-5, 2e-5, 1e-4, 1e-3])
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_all_pairs_near_duplicates_are_accurate(backend, sq):
    if not runnable(backend):
        pytest.skip(f"backend {backend!r} unavailable")
    image, text = near_duplicate_images(sq), unit(8, 64, F32).double()
    ref = pairdiff_with_grads(text, image, NEAR_PAIRS, "reference", F64)
    torch32 = pairdiff_with_grads(text, image, NEAR_PAIRS, "reference", F32)
    fused = pairdiff_with_grads(text, image, NEAR_PAIRS, backend, F32)
    for what, k, t, r in zip(("loss", "d_text", "d_image"), fused, torch32, ref):
        e_k, e_t = rel(k, r), rel(t, r)
        assert e_k <= 2 * e_t + 2e-7, f"{what}: relative error {e_k:.2e} > 2 × torch's {e_t:.2e} + 2e-7"


@pytest.mark.parametrize("all_pairs", [True, False])
def test_degeneracy_rule_is_identical_on_every_backend(all_pairs):
    """Pairs a hair above and below PAIR_EPS: every backend drops exactly the same ones, so the
    fp32 losses agree to round-off (a pair classified differently moves the loss by ~1e-1)."""
    text = unit(8, 64, F32).double()
    backends = [b for b in FAMILY_BACKENDS["pairdiff"] if runnable(b)]
    for k in range(-6, 7):
        image = near_duplicate_images(PAIR_EPS * (1 + 4e-4 * k))
        losses = {b: pairdiff_with_grads(text, image, NEAR_PAIRS, b, F32, all_pairs)[0].item() for b in backends}
        ref = losses["reference"]
        for b, v in losses.items():
            assert abs(v - ref) <= 1e-5 * abs(ref), f"k={k}: {b} loss {v} vs reference {ref}"


# ------------------------------------------------------------------ item 4: float64 stays float64
@pytest.mark.parametrize("backend", ["reference", "cuda"])
def test_python_number_scale_keeps_float64(backend):
    if not runnable(backend, F64):
        pytest.skip(f"backend {backend!r} unavailable")
    a, c = unit(6, 16), unit(6, 16)
    s64 = torch.tensor(14.3, dtype=F64)
    cases = [(lambda s, be: F.clip_loss(a, c, s, backend=be)),
             (lambda s, be: F.pairwise_difference_loss(a[:5], c, PAIRS, s, all_pairs=True, backend=be)),
             (lambda s, be: F.pairwise_difference_loss(a[:5], c, PAIRS, s, backend=be))]
    if backend == "reference":
        cases += [(lambda s, be: F.siglip_loss(a, c, s, -0.7, backend=be)),
                  (lambda s, be: F.imsep_loss(a, c, c[:, :5] + 2, s, backend=be))]
    for fn in cases:
        out, oracle = fn(14.3, backend), fn(s64, "reference")
        assert out.dtype == F64
        assert abs(out.item() - oracle.item()) <= 1e-13 * abs(oracle.item())


@pytest.mark.parametrize("dim", [1, 7, 64, 300])
def test_single_row_loss_is_zero_to_float64_round_off(dim):
    """One row: S = s·x·x has a one-element softmax, the loss is exactly 0. The reference gets 0; the
    extension's positive logit is a separate dot product from its kernel's (a different summation
    order), so there the bound is fp64 round-off; it used to be ~5e-8 (the kernel's scale was rounded
    to fp32 while the positives used the fp64 one)."""
    x = unit(1, dim)
    for backend in [b for b in ("reference", "cuda") if runnable(b, F64)]:
        for scale in (3.3, torch.tensor(3.3, dtype=F64), torch.tensor(3.3, dtype=F32)):
            loss = F.clip_loss(x, x, scale, backend=backend).item()
            assert abs(loss) <= 8 * torch.finfo(F64).eps * 3.3, (backend, scale, loss)
            if backend == "reference":
                assert loss == 0.0


def test_all_pairs_cuda_float64_is_float64_throughout():
    if not runnable("cuda", F64):
        pytest.skip("backend 'cuda' unavailable")
    text, image = unit(5, 16), unit(6, 16)
    ref = pairdiff_with_grads(text, image, PAIRS, "reference", F64)
    out = pairdiff_with_grads(text, image, PAIRS, "cuda", F64)
    assert all(t.dtype == F64 for t in out)
    for k, r in zip(out, ref):
        assert rel(k, r) <= 1e-12


# ------------------------------------------------------------------------ item 5: float16 on a CPU
FP16_LOSSES = {
    "clip_loss": lambda x, y: F.clip_loss(x, y, 100.0),
    "clip_loss_rows": lambda x, y: F.clip_loss_rows(x, y, 100.0),
    "imsep_loss": lambda x, y: F.imsep_loss(x, y, SEMANTIC.half().to(x.dtype), 100.0),
    # scores up to ±6e4 (fp16 holds them, exactly: ×2¹¹); lse_k − q_k reaches 1.2e5 (fp16 does not)
    "listmle_loss": lambda x, y: F.listmle_loss(2048 * x[:, :6], TARGETS.to(x.dtype)),
    "pairdiff_listed": lambda x, y: F.pairwise_difference_loss(x[:5], y, PAIRS, 100.0),
    "pairdiff_all": lambda x, y: F.pairwise_difference_loss(x[:5], y, PAIRS, 100.0, all_pairs=True),
}


@pytest.mark.parametrize("name", list(FP16_LOSSES))
def test_float16_cpu_features_accumulate_in_float32(name):
    """backend='auto' sends fp16 CPU features to the reference; logits of 100·30·30 overflow fp16
    (max 65504), so the reference must compute in fp32, as the fused kernels do. The oracle gets the
    same fp16 values in fp64."""
    fn = FP16_LOSSES[name]
    x, y = (30 * unit(6, 16)).half(), (30 * unit(6, 16)).half()
    xr, yr = x.double().requires_grad_(), y.double().requires_grad_()
    oracle = fn(xr, yr)
    oracle_grads = torch.autograd.grad(oracle, (xr, yr), allow_unused=True)
    x.requires_grad_(), y.requires_grad_()
    loss = fn(x, y)
    grads = torch.autograd.grad(loss, (x, y), allow_unused=True)
    assert loss.dtype == F32 and torch.isfinite(loss)
    assert rel(loss, oracle) <= 1e-5
    for g, r in zip(grads, oracle_grads):
        if r is not None:
            assert torch.isfinite(g).all() and rel(g, r) <= 2e-3


# ------------------------------------------------------------------------- item 6: clear errors
def test_imsep_modalities_none_names_the_argument():
    a, c = unit(4, 8, F32), unit(4, 8, F32)
    for bad in (None, 3, {"image"}):
        with pytest.raises(TypeError, match="modalities"):
            F.imsep_loss(a, c, c, 1.0, modalities=bad)


@pytest.mark.parametrize("epoch", [float("nan"), float("inf"), -float("inf")])
def test_rankclip_refuses_a_non_finite_epoch(epoch):
    loss = clipkern.RankClipLoss(5, backend="reference")
    a, c = unit(4, 8, F32), unit(4, 8, F32)
    with pytest.raises(ValueError, match="epoch"):
        loss(a, c, torch.tensor(3.0), epoch=epoch)
    with pytest.raises(ValueError, match="epoch"):
        loss.set_epoch(epoch)


SPARSE_CALLS = [
    ("image_features", lambda a, c: F.clip_loss(a.to_sparse(), c, 1.0)),
    ("text_features", lambda a, c: F.clip_loss(a, c.to_sparse(), 1.0)),
    ("features", lambda a, c: F.clip_loss_rows(a.to_sparse_csr(), c, 1.0)),
    ("text_features", lambda a, c: F.siglip_loss(a, c.to_sparse(), 1.0, 0.0)),
    ("semantic_features", lambda a, c: F.imsep_loss(a, c, c.to_sparse(), 1.0)),
    ("scores", lambda a, c: F.listmle_loss(a.to_sparse(), c)),
    ("targets", lambda a, c: F.listmle_loss(a, c.to_sparse())),
    ("text_features", lambda a, c: F.pairwise_difference_loss(a.to_sparse(), c, PAIRS[:4], 1.0)),
    ("pairs", lambda a, c: F.pairwise_difference_loss(a, c, PAIRS[:4].to_sparse(), 1.0)),
    ("logit_scale", lambda a, c: F.clip_loss(a, c, torch.tensor([2.0]).to_sparse())),
    ("labels", lambda a, c: F.clip_loss(a, c, 1.0, labels=torch.arange(4).to_sparse())),
]


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("backend", ["reference", "triton", "cuda"])
@pytest.mark.parametrize("name,call", SPARSE_CALLS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SPARSE_CALLS)])
def test_sparse_tensors_are_refused_by_name(monkeypatch, backend, name, call):
    monkeypatch.setenv("CLIPKERN_BACKEND", backend)  # auto's preference: each family its nearest backend
    a, c = unit(4, 8, F32), unit(4, 8, F32)
    with pytest.raises(TypeError, match=f"{name} must be a dense"):
        call(a, c)


def test_nan_in_an_unlisted_image_leaves_the_listed_loss_finite():
    """Documented (functional.pairwise_difference_loss): the listed form reads only the listed pairs'
    images, so it does not depend on image 5 at all; a NaN there changes nothing. A NaN in a listed
    image, and any NaN image in the all-pairs form, gives NaN."""
    text, image = unit(4, 8, F32), unit(6, 8, F32)
    bad = image.clone()
    bad[5] = float("nan")
    for backend in [b for b in FAMILY_BACKENDS["pairdiff"] if runnable(b)]:
        clean = F.pairwise_difference_loss(text, image, PAIRS[:4], 2.0, backend=backend)
        g = bad.clone().requires_grad_()
        loss = F.pairwise_difference_loss(text, g, PAIRS[:4], 2.0, backend=backend)
        loss.backward()
        assert torch.isfinite(loss) and torch.allclose(loss, clean, rtol=1e-6, atol=0), backend
        assert (g.grad[5] == 0).all() and torch.isfinite(g.grad).all(), backend
        used = image.clone()
        used[0] = float("nan")
        assert torch.isnan(F.pairwise_difference_loss(text, used, PAIRS[:4], 2.0, backend=backend)), backend
        assert torch.isnan(F.pairwise_difference_loss(text, bad, PAIRS[:4], 2.0, all_pairs=True,
                                                      backend=backend)), backend
