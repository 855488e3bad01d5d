"""Property-based suite (hypothesis): every loss family on every backend available here, against
float64 oracles, under drawn shapes (B, N or D = 1, D not a multiple of 16, rectangular), layouts
(transposed, sliced, column-strided, expanded rows), dtypes, scales from 1e-6 to 1e3, biases,
labels, ties and near-duplicate images.

The rule is docs/design.md §5's "at most 2× torch's error", measured on norms: for the loss and every
gradient, ‖kernel − fp64‖ ≤ 2·‖torch − fp64‖ + FLOOR[dtype]·‖fp64‖ + 8·eps[dtype]·logits, where
"torch" is the reference backend on the same (same-dtype) inputs, fp64 the reference on those inputs
upcast, and `logits` the size of the largest logit (max(1, |s|), for SigLIP max(1, |s| + |b|)). The
last term is the round-off of a quantity that cancels to ~0 (a one-row CLIP loss lse − pos, a
gradient Σ_j P_ij y_j − y_i over identical columns); it is left out for the SigLIP loss, a sum of
positive terms that must be accurate relative to its own value however small. CI runs a fixed, derandomised example budget
(EXAMPLES below, a minute or two on 2 cores); CLIPKERN_HYPOTHESIS_EXAMPLES=<n> runs n random examples
per family instead.
"""
import os

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import clipkern  # noqa: E402
import clipkern.functional as F  # noqa: E402
from clipkern import _backend  # noqa: E402

F16, F32, F64 = torch.float16, torch.float32, torch.float64
FLOOR = {F16: 2e-4, F32: 1e-6, F64: 1e-12}
BACKENDS = {"contrastive": ("triton", "cuda"), "sigmoid": ("triton",), "imsep": ("triton",),
            "ranking": ("triton", "cuda"), "pairdiff": ("triton", "cuda")}
EXAMPLES = {"contrastive": 14, "sigmoid": 10, "imsep": 8, "ranking": 10, "pairdiff": 12, "rankclip": 4}
FLAG = os.environ.get("CLIPKERN_HYPOTHESIS_EXAMPLES")


def budget(family: str):
    n = int(FLAG) if FLAG else EXAMPLES[family]
    return settings(max_examples=n, deadline=None, derandomize=not FLAG, database=None, print_blob=True,
                    suppress_health_check=list(HealthCheck))


def runnable(backend: str, dtype) -> bool:
    if backend == "triton" and dtype not in (F16, F32):
        return False
    return _backend.unavailable_reason(backend, torch.device("cpu")) is None


# ------------------------------------------------------------------------------ drawn inputs
DTYPES = st.sampled_from([F32, F32, F16, F64])
DIMS = st.sampled_from([1, 2, 3, 5, 16, 17, 33, 70])
LAYOUTS = st.sampled_from(["contiguous", "transposed", "sliced", "column_strided", "expanded"])
SCALES = st.floats(-6, 3).map(lambda e: 10.0 ** e)


def with_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as x (for "expanded", x's first row repeated) in another memory layout; a
    differentiable view, so gradients reach the leaf x."""
    rows, dim = x.shape
    if layout == "transposed":
        return x.T.contiguous().T
    if layout == "sliced":  # storage offset and a row stride wider than the row
        return torch.cat([x[:1], x], 0).repeat(1, 2)[1:, dim // 2: dim // 2 + dim]
    if layout == "column_strided":
        return torch.stack([x, x], dim=2).reshape(rows, 2 * dim)[:, ::2]
    if layout == "expanded":
        return x[:1].expand(rows, dim)
    return x


@st.composite
def unit_rows(draw, rows: int, dim: int, dtype, norm=1.0):
    seed = draw(st.integers(0, 2 ** 31 - 1))
    x = torch.randn(rows, dim, dtype=F64, generator=torch.Generator().manual_seed(seed))
    return (norm * x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)).to(dtype)


def scalar(value: float, dtype, as_tensor: bool):
    return torch.tensor(value, dtype=dtype) if as_tensor else value


def size(value) -> float:
    return 0.0 if value is None else abs(float(value))


# ------------------------------------------------------------------------------ the 2× rule
def run(fn, leaves: dict, backend: str):
    """fn(**leaves, backend) and the gradients of every floating tensor leaf (float64 copies)."""
    fresh = {k: (v.detach().clone().requires_grad_() if isinstance(v, torch.Tensor) and v.is_floating_point()
                 else v) for k, v in leaves.items()}
    loss = fn(backend=backend, **fresh)
    names = [k for k, v in fresh.items() if isinstance(v, torch.Tensor) and v.requires_grad]
    grads = torch.autograd.grad(loss, [fresh[k] for k in names], allow_unused=True)
    out = {"loss": loss.detach().double()}
    out.update({k: g.double() for k, g in zip(names, grads) if g is not None})
    return out


def upcast(leaves: dict) -> dict:
    return {k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in leaves.items()}


def check_all_backends(family: str, fn, leaves: dict, dtype, logits: float = 1.0) -> None:
    oracle = run(fn, upcast(leaves), "reference")
    same = run(fn, leaves, "reference")
    for backend in BACKENDS[family]:
        if not runnable(backend, dtype):
            continue
        got = run(fn, leaves, backend)
        assert got.keys() == oracle.keys(), f"{backend}: gradients for {sorted(got)} vs {sorted(oracle)}"
        for name, ref in oracle.items():
            k = got[name]
            assert torch.isfinite(k).all() or not torch.isfinite(ref).all(), f"{backend} {name}: non-finite"
            e_k, e_t = (k - ref).norm().item(), (same[name] - ref).norm().item()
            cancel = 0.0 if (family, name) == ("sigmoid", "loss") else 8 * torch.finfo(dtype).eps * max(1.0, logits)
            bound = 2 * e_t + FLOOR[dtype] * ref.norm().item() + cancel + 1e-30
            assert e_k <= bound, (f"{backend} {name} ({dtype}): error {e_k:.3e} > bound {bound:.3e} "
                                  f"(torch {e_t:.3e}, |ref| {ref.norm().item():.3e})")


# ------------------------------------------------------------------------------ the families
@st.composite
def contrastive_case(draw):
    dtype, dim = draw(DTYPES), draw(DIMS)
    rows, cols = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    labelled = rows > cols or draw(st.booleans())
    leaves = {"a": draw(unit_rows(rows, dim, dtype)), "c": draw(unit_rows(cols, dim, dtype))}
    leaves["scale"] = scalar(draw(SCALES), F32, draw(st.booleans()))
    if draw(st.booleans()):
        leaves["bias"] = scalar(draw(st.floats(-20, 20)), F32, draw(st.booleans()))
    if labelled:  # repeats allowed: several rows may share a positive column
        leaves["labels"] = torch.tensor(draw(st.lists(st.integers(0, cols - 1), min_size=rows, max_size=rows)))
    return dtype, leaves, draw(LAYOUTS), draw(LAYOUTS), draw(st.booleans())


@budget("contrastive")
@given(contrastive_case())
def test_contrastive_property(case):
    dtype, leaves, la, lc, symmetric = case
    loss = F.clip_loss if symmetric else F.clip_loss_rows

    def fn(a, c, scale, backend, bias=None, labels=None):
        return loss(with_layout(a, la), with_layout(c, lc), scale, bias, labels=labels, backend=backend)
    check_all_backends("contrastive", fn, leaves, dtype, size(leaves["scale"]))


@budget("sigmoid")
@given(contrastive_case())
def test_sigmoid_property(case):
    dtype, leaves, la, lc, _ = case
    leaves.setdefault("bias", None)

    def fn(a, c, scale, bias, backend, labels=None):
        return F.siglip_loss(with_layout(a, la), with_layout(c, lc), scale, bias, labels=labels, backend=backend)
    check_all_backends("sigmoid", fn, leaves, dtype, size(leaves["scale"]) + size(leaves["bias"]))


@st.composite
def imsep_case(draw):
    dtype, dim, rows = draw(DTYPES), draw(DIMS), draw(st.integers(1, 9))
    leaves = {"image": draw(unit_rows(rows, dim, dtype)), "text": draw(unit_rows(rows, dim, dtype)),
              "scale": scalar(draw(SCALES), F32, draw(st.booleans()))}
    semantic = draw(unit_rows(rows, draw(st.integers(1, 6)), dtype))
    modalities = draw(st.sampled_from([("image",), ("text",), ("image", "text")]))
    return dtype, leaves, semantic, modalities, draw(LAYOUTS)


@budget("imsep")
@given(imsep_case())
def test_imsep_property(case):
    dtype, leaves, semantic, modalities, layout = case

    def fn(image, text, scale, backend):
        return F.imsep_loss(with_layout(image, layout), text, semantic.to(image.dtype), scale,
                            modalities=modalities, backend=backend)
    check_all_backends("imsep", fn, leaves, dtype, size(leaves["scale"]))


@st.composite
def ranking_case(draw):
    dtype, rows, cols = draw(DTYPES), draw(st.integers(1, 8)), draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    gen = torch.Generator().manual_seed(seed)
    scores = (draw(SCALES) * torch.randn(rows, cols, dtype=F64, generator=gen)).to(dtype)
    levels = draw(st.integers(1, 6))  # few target levels: many ties, broken by column index
    targets = torch.randint(0, levels, (rows, cols), generator=gen).to(dtype)
    return dtype, {"scores": scores}, targets, draw(st.sampled_from([None, "log"])), draw(LAYOUTS)


@budget("ranking")
@given(ranking_case())
def test_ranking_property(case):
    dtype, leaves, targets, decay, layout = case

    def fn(scores, backend):
        return F.listmle_loss(with_layout(scores, layout), targets.to(scores.dtype), decay=decay, backend=backend)
    check_all_backends("ranking", fn, leaves, dtype, leaves["scores"].abs().max().item())


@st.composite
def pairdiff_case(draw):
    dtype, dim = draw(DTYPES), draw(st.sampled_from([2, 3, 5, 16, 17, 33]))
    texts, images = draw(st.integers(1, 8)), draw(st.integers(2, 8))
    image = draw(unit_rows(images, dim, F64))
    for _ in range(draw(st.integers(0, 2))):  # near-duplicate (or identical) images
        i, j = draw(st.integers(0, images - 1)), draw(st.integers(0, images - 1))
        eps = draw(st.sampled_from([0.0, 1e-4, 3e-3, 1e-2, 1e-1]))
        image[i] = image[j] + eps * torch.randn(dim, dtype=F64, generator=torch.Generator().manual_seed(i))
    pairs = torch.tensor(draw(st.lists(st.tuples(st.integers(0, images - 1), st.integers(0, images - 1)),
                                       min_size=texts, max_size=texts)))
    leaves = {"text": draw(unit_rows(texts, dim, dtype)), "image": image.to(dtype),
              "scale": scalar(draw(st.floats(-2, 2).map(lambda e: 10.0 ** e)), F32, draw(st.booleans()))}
    return dtype, leaves, pairs, draw(st.booleans()), draw(LAYOUTS)


@budget("pairdiff")
@given(pairdiff_case())
def test_pairdiff_property(case):
    dtype, leaves, pairs, all_pairs, layout = case

    def fn(text, image, scale, backend):
        return F.pairwise_difference_loss(with_layout(text, layout), image, pairs, scale, all_pairs=all_pairs,
                                          backend=backend)
    check_all_backends("pairdiff", fn, leaves, dtype, size(leaves["scale"]))


@budget("rankclip")
@given(st.integers(1, 7), DIMS, SCALES, st.sampled_from([None, "log"]), st.integers(0, 2 ** 31 - 1))
def test_rankclip_property(batch, dim, scale, decay, seed):
    gen = torch.Generator().manual_seed(seed)
    leaves = {k: torch.nn.functional.normalize(torch.randn(batch, dim, dtype=F64, generator=gen), dim=1).float()
              for k in ("image", "text")}
    leaves["scale"] = torch.tensor(min(scale, 100.0))

    def fn(image, text, scale, backend):
        return clipkern.RankClipLoss(4, decay=decay, backend=backend)(image, text, scale, epoch=3.5)
    check_all_backends("ranking", fn, leaves, F32, leaves["scale"].item())
