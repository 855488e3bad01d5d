"""The lean path on a CPU: the C++ SigLIP op (csrc/cpu/sigmoid.cpp), `auto` choosing the extension's C++
ops on CPU tensors, CLIPKERN_BACKEND=cuda on a CPU for every loss, and the chunked plain-torch
reference (checked against its plain, unchunked formula)."""
from __future__ import annotations

import warnings

import pytest
import torch

import clipkern
import clipkern.functional as CF
from clipkern import _backend, _extension
from clipkern.ops import dispatch
from clipkern.ops.contrastive import reference as contrastive_ref
from clipkern.ops.sigmoid import reference as sigmoid_ref
from helpers import check_against_reference, features

F32, F64 = torch.float32, torch.float64
CPU = torch.device("cpu")
needs_ext = pytest.mark.skipif(_extension.unavailable_reason() is not None,
                               reason=f"the csrc extension is not available: {_extension.unavailable_reason()}")


def _siglip_inputs(rows, cols, dim, dtype, bias=True, labels=False):
    inputs = {"image_features": features(rows, dim, dtype), "text_features": features(cols, dim, dtype),
              "logit_scale": torch.tensor(7.5), "logit_bias": torch.tensor(-3.0) if bias else None}
    if labels:
        inputs["labels"] = torch.randint(0, cols, (rows,))
    return inputs


# ------------------------------------------------------------------------------ the C++ SigLIP op
@needs_ext
@pytest.mark.parametrize("dtype", [F32, torch.bfloat16])
@pytest.mark.parametrize("rows,cols,dim,bias,labels", [(1, 1, 16, True, False), (7, 7, 45, True, False),
                                                       (300, 300, 16, False, False), (9, 23, 100, True, True),
                                                       (257, 520, 32, True, True)])
def test_cpu_siglip_op_matches_the_float64_reference(dtype, rows, cols, dim, bias, labels):
    inputs = _siglip_inputs(rows, cols, dim, dtype, bias, labels)
    grads = ["image_features", "text_features", "logit_scale"] + (["logit_bias"] if bias else [])
    check_against_reference(CF.siglip_loss, inputs, dtype, grads, kernel_backend="cuda")


@needs_ext
def test_cpu_siglip_op_float64_is_exact_and_bias_free_calls_get_no_bias_gradient():
    x, y = features(40, 12, F64).requires_grad_(), features(50, 12, F64).requires_grad_()
    s = torch.tensor(9.0, dtype=F64, requires_grad=True)
    labels = torch.randint(0, 50, (40,))
    for bias in (None, torch.tensor(-2.0, dtype=F64, requires_grad=True)):
        got = CF.siglip_loss(x, y, s, bias, labels=labels, backend="cuda")
        ref = sigmoid_ref.plain_sigmoid_loss(x, y, s, bias, labels)
        assert got.dtype == F64
        leaves = [t for t in (x, y, s, bias) if t is not None]
        for g, r in zip(torch.autograd.grad(got, leaves), torch.autograd.grad(ref, leaves)):
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


@needs_ext
def test_cpu_siglip_op_forms_the_gradient_only_when_autograd_can_use_it():
    import clipkern.ops.sigmoid.extension_ops  # noqa: F401  (fake + autograd registrations)

    x, y, s = features(6, 8), features(6, 8), torch.tensor(3.0)
    loss, dx, dy, dsb = torch.ops.clipkern.sigmoid_fwd(x, y, s, None, None, False)
    assert dx.numel() == dy.numel() == dsb.numel() == 0 and torch.isfinite(loss)
    loss2, dx, dy, dsb = torch.ops.clipkern.sigmoid_fwd(x, y, s, torch.tensor(0.0), None, True)
    assert dx.shape == x.shape and dy.shape == y.shape and dsb.shape == (2,)
    torch.testing.assert_close(loss, loss2)
    for with_grad in (False, True):
        torch.library.opcheck(torch.ops.clipkern.sigmoid_fwd.default,
                              (x.requires_grad_(with_grad), y, s, torch.tensor(-1.0), torch.arange(6), with_grad),
                              test_utils=("test_schema", "test_faketensor"))


@needs_ext
def test_cpu_siglip_op_refuses_a_second_derivative_clearly():
    x, y = features(5, 8).requires_grad_(), features(5, 8).requires_grad_()
    loss = CF.siglip_loss(x, y, 3.0, -1.0, backend="cuda")
    gx, gy = torch.autograd.grad(loss, (x, y), create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad((gx * torch.randn_like(gx)).sum() + gy.sum(), (x, y), allow_unused=True)


@needs_ext
def test_cpu_siglip_op_rejects_bad_arguments_by_name():
    x = features(4, 8)
    with pytest.raises(RuntimeError, match="labels must have shape"):
        torch.ops.clipkern.sigmoid_fwd(x, x, torch.tensor(1.0), None, torch.arange(3), False)
    with pytest.raises(RuntimeError, match="may not have more rows"):
        torch.ops.clipkern.sigmoid_fwd(x, x[:2], torch.tensor(1.0), None, None, False)
    with pytest.raises(RuntimeError, match="x has dim 8 but y has dim 4"):
        torch.ops.clipkern.sigmoid_fwd(x, x[:, :4], torch.tensor(1.0), None, None, False)


def test_the_cpu_siglip_op_is_not_offered_for_cuda_tensors():
    assert dispatch.implements("sigmoid", "cuda", "cpu") and not dispatch.implements("sigmoid", "cuda", "cuda")
    assert "for cuda tensors" in str(dispatch.missing("sigmoid", "cuda", "cuda"))


# ------------------------------------------------------------------------------ auto on a CPU
def test_auto_on_cpu_takes_the_cpp_ops_when_the_extension_is_built():
    built = _extension.unavailable_reason() is None
    for family in ("contrastive", "sigmoid"):
        for dtype in (F32, torch.bfloat16, F64):
            want = "cuda" if built else "reference"
            assert _backend.resolve("auto", CPU, dtype, family=family, rows=8192) == want
    assert _backend.resolve("auto", CPU, F32, family="imsep", rows=64) == "reference"
    assert _backend.resolve("auto", CPU, F32, family="ranking", rows=64) == "reference"


@needs_ext
def test_cuda_preference_on_a_cpu_runs_every_loss_forward_and_backward(monkeypatch):
    monkeypatch.setenv("CLIPKERN_BACKEND", "cuda")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # a CPU user's setting: IMSep falls back to reference
    monkeypatch.setattr(dispatch, "_WARNED", set())
    x, y = features(6, 16).requires_grad_(), features(6, 16).requires_grad_()
    s, b = torch.tensor(10.0, requires_grad=True), torch.tensor(-5.0, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses = [clipkern.ClipLoss()(x, y, s), clipkern.SigLipLoss()(x, y, s, b),
                  CF.imsep_loss(x, y, torch.randn(6, 5), s), CF.imsep_loss(x, y, torch.randn(6, 5), s)]
    for loss in losses:
        assert torch.isfinite(loss)
        loss.backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(b.grad)
    fallbacks = [w for w in caught if "CLIPKERN_BACKEND='cuda'" in str(w.message)]
    assert len(fallbacks) == 1 and "imsep" in str(fallbacks[0].message)  # one warning, IMSep only
    assert "using 'reference'" in str(fallbacks[0].message)


# ------------------------------------------------------------------------------ the chunked reference
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("rows,cols", [(7, 7), (9, 13), (1, 4)])
def test_chunked_references_equal_their_plain_formulas(monkeypatch, symmetric, rows, cols):
    monkeypatch.setattr(contrastive_ref, "CHUNK_ELEMENTS", 3 * cols)  # 3 rows per chunk: several chunks
    a = features(rows, 6, F64).requires_grad_()
    c = features(cols, 6, F64).requires_grad_()
    s, b = torch.tensor(4.0, dtype=F64, requires_grad=True), torch.tensor(-1.5, dtype=F64, requires_grad=True)
    labels = torch.randint(0, cols, (rows,))
    pairs = [(lambda *t: contrastive_ref.contrastive_loss(*t, labels, symmetric),
              lambda *t: contrastive_ref.plain_contrastive_loss(*t, labels, symmetric)),
             (lambda *t: sigmoid_ref.sigmoid_loss(*t, labels), lambda *t: sigmoid_ref.plain_sigmoid_loss(*t, labels))]
    for chunked, plain in pairs:
        got, ref = chunked(a, c, s, b), plain(a, c, s, b)
        torch.testing.assert_close(got, ref, rtol=1e-13, atol=1e-13)
        ref_grads = torch.autograd.grad(ref, (a, c, s, b), allow_unused=True)
        for g, r in zip(torch.autograd.grad(got, (a, c, s, b)), ref_grads):
            torch.testing.assert_close(g, torch.zeros_like(g) if r is None else r, rtol=1e-11, atol=1e-13)
        assert torch.autograd.gradgradcheck(lambda u, v: chunked(u, v, s, b), (a, c))


def test_chunked_reference_keeps_nan_visible():
    a, c = features(5, 4, F64), features(5, 4, F64)
    a[2, 1] = float("nan")
    labels = torch.arange(5)
    assert torch.isnan(contrastive_ref.contrastive_loss(a, c, torch.tensor(2.0, dtype=F64), None, labels, True))
    assert torch.isnan(sigmoid_ref.sigmoid_loss(a, c, torch.tensor(2.0, dtype=F64), None, labels))
    assert torch.isnan(contrastive_ref.contrastive_loss(c, c, torch.tensor(2.0, dtype=F64),
                                                        torch.tensor(float("inf"), dtype=F64), labels, True))


@needs_ext
@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_cpp_ops_give_the_same_result_in_many_row_chunks(monkeypatch, loss):
    """A tiny CLIPKERN_WORKSPACE_MB makes every chunk one row (the default is one chunk here): same loss
    and gradients as the one-chunk run, and both equal the float64 formula."""
    x, y = features(37, 24, F64).requires_grad_(), features(41, 24, F64).requires_grad_()
    s, b = torch.tensor(11.0, dtype=F64, requires_grad=True), torch.tensor(-2.0, dtype=F64, requires_grad=True)
    labels = torch.randint(0, 41, (37,))
    fn = CF.clip_loss if loss == "clip" else CF.siglip_loss
    plain = (lambda: contrastive_ref.plain_contrastive_loss(x, y, s, b, labels, True)) if loss == "clip" else \
        (lambda: sigmoid_ref.plain_sigmoid_loss(x, y, s, b, labels))
    results = []
    for budget in (None, "0.0001"):
        if budget is not None:
            monkeypatch.setenv("CLIPKERN_WORKSPACE_MB", budget)
        out = fn(x, y, s, b, labels=labels, backend="cuda")
        results.append((out, torch.autograd.grad(out, (x, y, s))))
    ref = plain()
    for out, grads in results + [(ref, torch.autograd.grad(ref, (x, y, s)))]:
        torch.testing.assert_close(out, results[0][0], rtol=1e-12, atol=1e-12)
        for g, g0 in zip(grads, results[0][1]):
            torch.testing.assert_close(g, g0, rtol=1e-10, atol=1e-12)
