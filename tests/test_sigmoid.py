"""Fused sigmoid-contrastive (SigLIP) kernels against the float64 reference (docs/design.md §1.2, §4)."""
import pytest
import torch

import clipkern.functional as CF
from helpers import check_against_reference, features

F32, F16 = torch.float32, torch.float16
GRADS = ["image_features", "text_features", "logit_scale", "logit_bias"]

CASES = (
    [(B, B, D, 10.0, -10.0, F32) for B in (1, 2, 7, 64, 257) for D in (16, 100, 512)]
    + [(64, 64, 100, s, b, dt) for s in (1.0, 14.3, 100.0) for b in (0.0, -10.0) for dt in (F32, F16)]
    + [(B, B, D, 100.0, -10.0, F16) for B in (7, 257) for D in (16, 512)]
    + [(7, 33, 16, 10.0, -5.0, F32), (64, 257, 100, 100.0, -10.0, F32), (33, 130, 100, 14.3, -3.0, F16)]
)


def _case_id(c):
    B, N, D, s, b, dt = c
    return f"B{B}-N{N}-D{D}-s{s}-b{b}-{str(dt)[6:]}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_siglip_loss_matches_float64_reference(case):
    B, N, D, scale, bias, dtype = case
    inputs = dict(image_features=features(B, D, dtype), text_features=features(N, D, dtype),
                  logit_scale=torch.tensor(scale), logit_bias=torch.tensor(bias))
    if N != B:
        inputs["labels"] = torch.randperm(N)[:B]
    check_against_reference(CF.siglip_loss, inputs, dtype, GRADS)


def test_negative_only_columns_by_default():
    """More text rows than image rows and no labels: the extra columns are negatives only."""
    inputs = dict(image_features=features(10, 16), text_features=features(30, 16),
                  logit_scale=torch.tensor(10.0), logit_bias=torch.tensor(-10.0))
    check_against_reference(CF.siglip_loss, inputs, F32, GRADS)


def test_no_bias():
    inputs = dict(image_features=features(20, 16), text_features=features(20, 16),
                  logit_scale=torch.tensor(10.0), logit_bias=None)
    check_against_reference(CF.siglip_loss, inputs, F32, ["image_features", "text_features", "logit_scale"])


def test_confident_positives_keep_relative_accuracy():
    """Large positive logits: the positive term is computed inside the tile (no cancellation)."""
    a = features(40, 16)
    c = a + 0.01 * features(40, 16)
    s, b = torch.tensor(100.0), torch.tensor(-10.0)
    loss = CF.siglip_loss(a, c, s, b, backend="triton")
    ref = CF.siglip_loss(a.double(), c.double(), s.double(), b.double(), backend="reference")
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=0)


def _loss_and_grads(a, c, s, b, **kw):
    leaves = [t.detach().clone().requires_grad_() for t in (a, c, s, b)]
    loss = CF.siglip_loss(*leaves, backend="triton", **kw)
    (loss * 1.7).backward()
    return [loss.detach()] + [t.grad for t in leaves]


def test_several_workspace_chunks_equal_one(monkeypatch):
    """A tiny CLIPKERN_WORKSPACE_MB splits the backward into row chunks (dT accumulated over them):
    the loss and the other gradients are bit-identical, dT agrees to rounding."""
    a, c, s, b = features(150, 40), features(170, 40), torch.tensor(12.0), torch.tensor(-4.0)
    one = _loss_and_grads(a, c, s, b, labels=torch.randperm(170)[:150])
    torch.manual_seed(0)
    labels = torch.randperm(170)[:150]
    one = _loss_and_grads(a, c, s, b, labels=labels)
    monkeypatch.setenv("CLIPKERN_WORKSPACE_MB", str(64 * 170 * 4 / 2**20))  # 64-row chunks: 3 of them
    many = _loss_and_grads(a, c, s, b, labels=labels)
    for k in (0, 1, 3, 4):
        assert torch.equal(one[k], many[k])
    torch.testing.assert_close(many[2], one[2], rtol=1e-5, atol=1e-7)


def test_reruns_are_bit_identical():
    a, c, s, b = features(90, 33), features(90, 33), torch.tensor(30.0), torch.tensor(-7.0)
    first, second = _loss_and_grads(a, c, s, b), _loss_and_grads(a, c, s, b)
    assert all(torch.equal(u, v) for u, v in zip(first, second))


def test_small_loss_keeps_relative_precision():
    """Confident positives and easy negatives: a loss of ~1e-4 keeps fp32 relative accuracy (no
    log(1 + e) rounding to 0 for tiny e), within 2× torch's relative error."""
    a = features(32, 64)
    c = a.clone()
    s, b = torch.tensor(40.0), torch.tensor(-22.0)
    ref = CF.siglip_loss(a.double(), c.double(), s.double(), b.double(), backend="reference")
    assert 1e-6 < ref.item() < 1e-2
    got = CF.siglip_loss(a, c, s, b, backend="triton").double()
    same = CF.siglip_loss(a, c, s, b, backend="reference").double()
    rel, rel_torch = ((got - ref) / ref).abs().item(), ((same - ref) / ref).abs().item()
    assert rel <= 2 * rel_torch + 1e-6, (rel, rel_torch)


def test_gpu_launch_configuration_stays_correct(monkeypatch):
    """CLIPKERN_TARGET=sm90: the blocks, warps and splits an H100 launches, run by the interpreter."""
    monkeypatch.setenv("CLIPKERN_TARGET", "sm90")
    inputs = dict(image_features=features(140, 72), text_features=features(260, 72),
                  logit_scale=torch.tensor(20.0), logit_bias=torch.tensor(-5.0), labels=torch.randperm(260)[:140])
    check_against_reference(CF.siglip_loss, inputs, F32, GRADS)
