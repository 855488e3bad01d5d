"""clipkern.ClipLoss / clipkern.SigLipLoss against open_clip 3.3's own losses, single process.

Same inputs go to both modules; the losses and the gradients w.r.t. image features, text
features, logit_scale and logit_bias (where given) must match, with a random upstream gradient
(the loss is multiplied by a random scalar before backward). Covered: backend reference/triton,
fp32 (and fp64 for the reference), odd batch sizes, logit_scale near 1/0.07 and at its clamp 100,
output_dict, cache_labels, and several calls per optimiser step (open_clip's --accum-freq).

Tolerances are "max abs error <= rtol * max|expected| + atol" per tensor:
- fp64: rtol 1e-10. Both sides are exact up to fp64 rounding.
- fp32: rtol 2e-5. With logit_scale = 100 a logit carries an absolute rounding error of about
  100 · 2^-24 · sqrt(D) ≈ 1e-5 in *either* implementation, which moves the softmax/sigmoid
  probabilities by the same relative amount; the observed differences are ≤ 4e-6 relative, open_clip's
  own fp32 result is ~1e-6 away from fp64. atol 1e-6 only matters for tensors whose exact value is 0:
  ClipLoss's logit_bias gradient (the bias cancels in every softmax; open_clip returns rounding noise
  of ~1e-7, clipkern's fused backend an exact 0).
"""
from __future__ import annotations

import zlib

import pytest
import torch

import clipkern
from clipkern import _backend

ocl = pytest.importorskip("open_clip.loss", reason="open_clip_torch is not installed (pip install open_clip_torch)")

CPU = torch.device("cpu")
_TRITON_WHY = _backend.unavailable_reason("triton", CPU)

BACKEND_DTYPES = [
    pytest.param("reference", torch.float64, id="reference-fp64"),
    pytest.param("reference", torch.float32, id="reference-fp32"),
    pytest.param("triton", torch.float32, id="triton-fp32",
                 marks=pytest.mark.skipif(_TRITON_WHY is not None, reason=f"triton backend: {_TRITON_WHY}")),
]
SHAPES = [pytest.param(7, 16, id="B7-D16"), pytest.param(33, 100, id="B33-D100")]
SCALES = [pytest.param(1 / 0.07, id="s14.3"), pytest.param(100.0, id="s100")]

TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (2e-5, 1e-6)}


# ---------------------------------------------------------------------------------------------
# helpers


def _gen(*key) -> torch.Generator:
    """A generator seeded from the test's parameters (stable across runs: crc32, not hash())."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def _unit(rows: int, dim: int, dtype, g: torch.Generator) -> torch.Tensor:
    x = torch.randn(rows, dim, generator=g, dtype=torch.float64)
    return (x / x.norm(dim=1, keepdim=True)).to(dtype)


def _upstream(g: torch.Generator) -> float:
    """A random upstream gradient: magnitude in [0.5, 2], random sign."""
    mag = 0.5 + 1.5 * torch.rand((), generator=g, dtype=torch.float64).item()
    return mag if torch.rand((), generator=g).item() < 0.5 else -mag


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def _scalar(value: float, dtype) -> torch.Tensor:
    return torch.tensor(value, dtype=dtype, requires_grad=True)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype, what: str) -> None:
    assert actual is not None, f"{what}: clipkern produced no gradient (open_clip did)"
    assert expected is not None, f"{what}: open_clip produced no gradient"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    rtol, atol = TOL[dtype]
    a, e = actual.detach().double(), expected.detach().double()
    assert torch.isfinite(a).all(), f"{what}: clipkern result is not finite: {a}"
    err = (a - e).abs().max().item()
    mag = e.abs().max().item()
    tol = rtol * mag + atol
    assert err <= tol, f"{what}: max abs error {err:.3e} > tolerance {tol:.3e} (max |expected| {mag:.3e})"


def _total(out, output_dict: bool, ref_out=None):
    """The scalar open_clip's training loop backprops: the sum of the dict's values."""
    if not output_dict:
        assert isinstance(out, torch.Tensor), f"expected a tensor, got {type(out).__name__}"
        return out
    assert isinstance(out, dict), f"output_dict=True must return a dict, got {type(out).__name__}"
    assert out, "output_dict=True returned an empty dict"
    bad = [k for k in out if not k.endswith("_loss")]
    assert not bad, f"output_dict keys must end in '_loss': {bad}"
    if ref_out is not None:
        assert set(out) == set(ref_out), f"keys {sorted(out)} != open_clip's {sorted(ref_out)}"
    return sum(out.values())


def _check_loss(loss, ref, dtype, what):
    assert loss.shape == (), f"{what}: loss must be 0-d, got shape {tuple(loss.shape)}"
    assert_close(loss, ref, dtype, what)


def _run(module, inputs, coef, output_dict, ref_out=None):
    """module(*inputs), checks the output form, backward of coef·total. Returns (total, raw output)."""
    out = module(*inputs, output_dict=output_dict)
    total = _total(out, output_dict, ref_out)
    (coef * total).backward()
    return total.detach(), out


# ---------------------------------------------------------------------------------------------
# ClipLoss


@pytest.mark.parametrize("cache_labels", [False, True], ids=["nocache", "cache"])
@pytest.mark.parametrize("output_dict", [False, True], ids=["tensor", "dict"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("B,D", SHAPES)
@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_clip_loss_matches_open_clip(backend, dtype, B, D, scale, with_bias, output_dict, cache_labels):
    g = _gen("clip", B, D, scale, with_bias)
    image, text = _unit(B, D, dtype, g), _unit(B, D, dtype, g)
    coef = _upstream(g)
    results = {}
    for name, module in (("open_clip", ocl.ClipLoss(cache_labels=cache_labels)),
                         ("clipkern", clipkern.ClipLoss(cache_labels=cache_labels, backend=backend))):
        i, t, s = _leaf(image), _leaf(text), _scalar(scale, dtype)
        b = _scalar(-2.5, dtype) if with_bias else None
        inputs = (i, t, s) if b is None else (i, t, s, b)
        total, out = _run(module, inputs, coef, output_dict, results.get("open_clip", {}).get("out"))
        results[name] = dict(loss=total, out=out, image=i.grad, text=t.grad, scale=s.grad,
                             bias=None if b is None else b.grad)

    ck, oc = results["clipkern"], results["open_clip"]
    _check_loss(ck["loss"], oc["loss"], dtype, "loss")
    for key in ("image", "text", "scale"):
        assert_close(ck[key], oc[key], dtype, f"d loss / d {key}")
    if with_bias:
        # The bias cancels in every softmax; it must still get a (zero) gradient so that DDP does
        # not see an unused parameter.
        assert_close(ck["bias"], oc["bias"], dtype, "d loss / d logit_bias")
        if backend == "triton":
            assert ck["bias"].item() == 0.0, f"fused backend: logit_bias gradient should be exactly 0, got {ck['bias'].item()}"


# ---------------------------------------------------------------------------------------------
# SigLipLoss


@pytest.mark.parametrize("cache_labels", [False, True], ids=["nocache", "cache"])
@pytest.mark.parametrize("output_dict", [False, True], ids=["tensor", "dict"])
@pytest.mark.parametrize("bias", [-10.0, None], ids=["bias-10", "nobias"])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("B,D", SHAPES)
@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_siglip_loss_matches_open_clip(backend, dtype, B, D, scale, bias, output_dict, cache_labels):
    g = _gen("siglip", B, D, scale, bias)
    image, text = _unit(B, D, dtype, g), _unit(B, D, dtype, g)
    coef = _upstream(g)
    results = {}
    for name, module in (("open_clip", ocl.SigLipLoss(cache_labels=cache_labels)),
                         ("clipkern", clipkern.SigLipLoss(cache_labels=cache_labels, backend=backend))):
        i, t, s = _leaf(image), _leaf(text), _scalar(scale, dtype)
        b = None if bias is None else _scalar(bias, dtype)
        total, out = _run(module, (i, t, s, b), coef, output_dict, results.get("open_clip", {}).get("out"))
        results[name] = dict(loss=total, image=i.grad, text=t.grad, scale=s.grad,
                             bias=None if b is None else b.grad)

    ck, oc = results["clipkern"], results["open_clip"]
    _check_loss(ck["loss"], oc["loss"], dtype, "loss")
    for key in ("image", "text", "scale") + (("bias",) if bias is not None else ()):
        assert_close(ck[key], oc[key], dtype, f"d loss / d {key}")


# ---------------------------------------------------------------------------------------------
# Several calls per optimiser step: gradients accumulate in the same leaves.


def _accum_inputs(kind, dtype, D, g):
    """Per-call (image, text) pairs built from leaves, and the leaves.

    kind="accum_freq": open_clip's --accum-freq 2 in train.py. Two micro-batches; call j re-runs
        micro-batch j with grad and concatenates it with the *cached, detached* features of the other
        micro-batch, so each call sees the full accumulated batch (same size: a cached-label hit).
    kind="two_batches": two unrelated batches of different sizes (7 then 33) through one module in
        one step (a cached-label miss on the second call when cache_labels=True).
    """
    if kind == "accum_freq":
        sizes = (7, 7)
    else:
        sizes = (7, 33)
    leaves = [(_unit(n, D, dtype, g), _unit(n, D, dtype, g)) for n in sizes]

    def build(leaf_pairs):
        if kind == "two_batches":
            return list(leaf_pairs)
        (i0, t0), (i1, t1) = leaf_pairs
        return [(torch.cat([i0, i1.detach()]), torch.cat([t0, t1.detach()])),
                (torch.cat([i0.detach(), i1]), torch.cat([t0.detach(), t1]))]

    return leaves, build


@pytest.mark.parametrize("cache_labels", [False, True], ids=["nocache", "cache"])
@pytest.mark.parametrize("kind", ["accum_freq", "two_batches"])
@pytest.mark.parametrize("loss_name", ["clip", "siglip"])
@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_two_calls_per_step_accumulate_like_open_clip(backend, dtype, loss_name, kind, cache_labels):
    D = 16
    g = _gen("accum", loss_name, kind)
    leaves, build = _accum_inputs(kind, dtype, D, g)
    coefs = [_upstream(g), _upstream(g)]
    scale, bias = (1 / 0.07, -2.5) if loss_name == "clip" else (10.0, -10.0)
    if loss_name == "clip":
        modules = (("open_clip", ocl.ClipLoss(cache_labels=cache_labels)),
                   ("clipkern", clipkern.ClipLoss(cache_labels=cache_labels, backend=backend)))
    else:
        modules = (("open_clip", ocl.SigLipLoss(cache_labels=cache_labels)),
                   ("clipkern", clipkern.SigLipLoss(cache_labels=cache_labels, backend=backend)))

    results = {}
    for name, module in modules:
        leaf_pairs = [(_leaf(i), _leaf(t)) for i, t in leaves]
        s, b = _scalar(scale, dtype), _scalar(bias, dtype)
        losses = []
        for (i, t), coef in zip(build(leaf_pairs), coefs):
            loss = module(i, t, s, b)
            (coef * loss).backward()  # grads accumulate in the leaves, as between optimiser steps
            losses.append(loss.detach())
        results[name] = dict(losses=losses, scale=s.grad, bias=b.grad,
                             image=[i.grad for i, _ in leaf_pairs], text=[t.grad for _, t in leaf_pairs])

    ck, oc = results["clipkern"], results["open_clip"]
    for k in range(2):
        _check_loss(ck["losses"][k], oc["losses"][k], dtype, f"loss of call {k}")
        assert_close(ck["image"][k], oc["image"][k], dtype, f"accumulated d / d image features of micro-batch {k}")
        assert_close(ck["text"][k], oc["text"][k], dtype, f"accumulated d / d text features of micro-batch {k}")
    assert_close(ck["scale"], oc["scale"], dtype, "accumulated d / d logit_scale")
    assert_close(ck["bias"], oc["bias"], dtype, "accumulated d / d logit_bias")
