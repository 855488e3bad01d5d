"""Fused sigmoid-contrastive (SigLIP) kernels against the float64 reference (DESIGN §1.2, §4)."""
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
