"""Bad input gets a clear error naming the argument; non-finite input never gives a finite loss."""
import warnings

import pytest
import torch

import clipkern
import clipkern.functional as CF
from helpers import features

# the interpreter's numpy warns about the inf/nan arithmetic these tests provoke on purpose
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

LOSSES = {"clip": CF.clip_loss, "siglip": CF.siglip_loss}
BACKENDS = ["reference", "triton"]


def _call(loss, backend, a, c, scale=torch.tensor(10.0), bias=torch.tensor(-1.0), **kw):
    return LOSSES[loss](a, c, scale, bias, backend=backend, **kw)


@pytest.fixture(params=[(l, b) for l in LOSSES for b in BACKENDS], ids=lambda p: f"{p[0]}-{p[1]}")
def loss_backend(request):
    return request.param


@pytest.mark.parametrize("a,c,exc,words", [
    (torch.randn(4), torch.randn(4, 8), ValueError, "image_features must be 2-D"),
    (torch.randn(4, 8), torch.randn(4, 8, 1), ValueError, "text_features must be 2-D"),
    (torch.randn(4, 8), torch.randn(4, 9), ValueError, "text_features has feature width 9"),
    (torch.randn(0, 8), torch.randn(4, 8), ValueError, "image_features is an empty batch"),
    (torch.randn(4, 8), torch.randn(0, 8), ValueError, "text_features is an empty batch"),
    (torch.randn(4, 8), torch.randn(4, 8, dtype=torch.float64), TypeError, "cast them to one dtype"),
    (torch.randint(0, 3, (4, 8)), torch.randn(4, 8), TypeError, "image_features must be a floating tensor"),
    ([[1.0]], torch.randn(4, 8), TypeError, "image_features must be a torch.Tensor"),
], ids=["rank1", "rank3", "width", "empty-a", "empty-c", "dtypes", "int", "list"])
def test_bad_features(loss_backend, a, c, exc, words):
    loss, backend = loss_backend
    with pytest.raises(exc, match=words):
        _call(loss, backend, a, c)


@pytest.mark.parametrize("scale,exc,words", [
    ("10", TypeError, "logit_scale must be a 0-d tensor or a number"),
    (None, TypeError, "logit_scale is required"),
    (torch.ones(3), ValueError, "logit_scale must hold a single value"),
    (torch.tensor(3), TypeError, "logit_scale must be a floating tensor"),
], ids=["str", "none", "vector", "int-tensor"])
def test_bad_logit_scale(loss_backend, scale, exc, words):
    loss, backend = loss_backend
    with pytest.raises(exc, match=words):
        _call(loss, backend, features(4, 8), features(4, 8), scale=scale)


def test_bad_logit_bias(loss_backend):
    loss, backend = loss_backend
    with pytest.raises(TypeError, match="logit_bias must be a 0-d tensor or a number"):
        _call(loss, backend, features(4, 8), features(4, 8), bias="x")


@pytest.mark.parametrize("labels,exc,words", [
    (torch.tensor([0, 1, 2, 9]), ValueError, r"labels must lie in \[0, 4\)"),
    (torch.tensor([0, 1, -1, 2]), ValueError, r"labels must lie in \[0, 4\)"),
    (torch.tensor([0, 1, 2]), ValueError, r"labels must have shape \(4,\)"),
    (torch.tensor([0.0, 1, 2, 3]), TypeError, "labels must be an integer tensor"),
], ids=["too-big", "negative", "short", "float"])
def test_bad_labels(loss_backend, labels, exc, words):
    loss, backend = loss_backend
    with pytest.raises(exc, match=words):
        _call(loss, backend, features(4, 8), features(4, 8), labels=labels)


def test_more_rows_than_columns_needs_labels(loss_backend):
    loss, backend = loss_backend
    with pytest.raises(ValueError, match="labels is required"):
        _call(loss, backend, features(6, 8), features(4, 8))


def _extension_missing(monkeypatch):
    """Simulate a clipkern without its C++/CUDA extension (the real one may be built here)."""
    from clipkern import _extension

    monkeypatch.setattr(_extension, "unavailable_reason", lambda: "clipkern._C is not built")


def test_unknown_or_unavailable_backend(monkeypatch):
    a, c = features(4, 8), features(4, 8)
    with pytest.raises(ValueError, match="backend must be one of"):
        CF.clip_loss(a, c, torch.tensor(1.0), backend="tpu")
    _extension_missing(monkeypatch)
    with pytest.raises(clipkern.BackendUnavailable, match="backend='cuda' is unavailable: the CUDA extension"):
        CF.clip_loss(a, c, torch.tensor(1.0), backend="cuda")
    with pytest.raises(TypeError, match="float64"):
        CF.clip_loss(a.double(), c.double(), torch.tensor(1.0), backend="triton")


def test_env_override_of_auto(monkeypatch):
    """CLIPKERN_BACKEND is a preference: a family that cannot honour it (here: the extension is
    missing) falls back to the next backend with one warning per family, never an error."""
    from clipkern.ops import dispatch

    monkeypatch.setattr(dispatch, "_WARNED", set())
    monkeypatch.setenv("CLIPKERN_BACKEND", "cuda")
    _extension_missing(monkeypatch)
    a, c, s = features(4, 8), features(4, 8), torch.tensor(3.0)
    with pytest.warns(UserWarning, match="CLIPKERN_BACKEND='cuda': the contrastive loss cannot run"):
        got = CF.clip_loss(a, c, s)
    torch.testing.assert_close(got, CF.clip_loss(a, c, s, backend="reference"))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per family
        CF.clip_loss(a, c, s)
    monkeypatch.setenv("CLIPKERN_BACKEND", "bogus")
    with pytest.raises(ValueError, match="CLIPKERN_BACKEND must be one of"):
        CF.clip_loss(features(4, 8), features(4, 8), torch.tensor(1.0))


def test_env_preference_falls_back_for_families_without_it(monkeypatch):
    """CLIPKERN_BACKEND=cuda set to speed up CLIP must not break IMSep (no csrc twin): it runs on the
    next backend, with one warning, and gives the reference's loss. SigLIP has a C++ op on CPU tensors
    (csrc/cpu/sigmoid.cpp): it honours the preference there, without a warning (on CUDA tensors it
    has no csrc kernel and falls back like IMSep: ops/dispatch.CPU_ONLY)."""
    from clipkern.ops import dispatch

    monkeypatch.setattr(dispatch, "_WARNED", set())
    monkeypatch.setenv("CLIPKERN_BACKEND", "cuda")
    a, c, s, b, sem = features(6, 8), features(6, 8), torch.tensor(5.0), torch.tensor(-1.0), features(6, 5)
    with pytest.warns(UserWarning, match="the imsep loss has no 'cuda' implementation"):
        got = CF.imsep_loss(a, c, sem, s)
    torch.testing.assert_close(got, CF.imsep_loss(a, c, sem, s, backend="reference"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the C++ op honours the preference
        got = CF.siglip_loss(a, c, s, b)
    torch.testing.assert_close(got, CF.siglip_loss(a, c, s, b, backend="reference"))
    torch.testing.assert_close(got, CF.siglip_loss(a, c, s, b, backend="cuda"), rtol=0, atol=0)
    with pytest.raises(clipkern.BackendUnavailable, match="no imsep implementation"):
        CF.imsep_loss(a, c, sem, s, backend="cuda")  # named explicitly: a clear error


def test_modules_check_batch_match():
    with pytest.raises(ValueError, match="image_features has batch 4 but text_features has batch 5"):
        clipkern.ClipLoss()(features(4, 8), features(5, 8), torch.tensor(1.0))
    with pytest.raises(ValueError, match="image_features has batch 4 but text_features has batch 5"):
        clipkern.SigLipLoss()(features(4, 8), features(5, 8), torch.tensor(1.0), torch.tensor(0.0))
    with pytest.raises(ValueError, match="dist_impl must be one of"):
        clipkern.SigLipLoss(dist_impl="ring")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["image", "text", "text-unlabelled", "scale", "bias"])
def test_non_finite_input_never_gives_a_finite_loss(loss_backend, bad, where):
    loss, backend = loss_backend
    a, c = features(70, 16), features(75, 16)  # column 74 is nobody's positive
    scale, bias = torch.tensor(10.0), torch.tensor(-1.0)
    if where == "image":
        a[33, 5] = bad
    elif where == "text":
        c[3, 0] = bad
    elif where == "text-unlabelled":
        c[74, 7] = bad
    elif where == "scale":
        scale = torch.tensor(bad)
    else:
        bias = torch.tensor(bad)
    out = _call(loss, backend, a, c, scale, bias, labels=torch.arange(70))
    assert not torch.isfinite(out), f"finite loss {out.item()} from a non-finite {where}"
