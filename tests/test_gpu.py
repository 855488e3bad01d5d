"""GPU lane (`pytest -m gpu`): bf16/fp16/fp32 correctness of the compiled kernels up to B = 16384,
against the float64 reference and the 2× rule. Skipped where no CUDA GPU is visible."""
import pytest
import torch

import clipkern.functional as CF
from helpers import check_against_reference, features

pytestmark = pytest.mark.gpu
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@pytest.mark.parametrize("dtype", DTYPES, ids=list(DTYPES))
@pytest.mark.parametrize("B,D", [(1, 16), (257, 100), (1000, 768), (4096, 512), (16384, 768)],
                         ids=lambda v: str(v))
@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_gpu_matches_float64_reference(loss, B, D, dtype):
    dtype = DTYPES[dtype]
    inputs = dict(image_features=features(B, D, dtype, "cuda"), text_features=features(B, D, dtype, "cuda"),
                  logit_scale=torch.tensor(100.0, device="cuda"), logit_bias=torch.tensor(-10.0, device="cuda"))
    fn = CF.clip_loss if loss == "clip" else CF.siglip_loss
    grads = ["image_features", "text_features", "logit_scale"] + (["logit_bias"] if loss == "siglip" else [])
    check_against_reference(fn, inputs, dtype, grads)


def test_gpu_memory_is_linear_in_batch():
    """Extra memory of fwd+bwd at B=16384, D=768, bf16 stays far below one B×B fp32 matrix (1 GiB):
    the gradients, the backward's bounded dS workspace (ops/base.workspace_bytes) and 64 MiB."""
    from clipkern.ops.base import workspace_bytes

    B, D = 16384, 768
    a = features(B, D, torch.bfloat16, "cuda").requires_grad_()
    c = features(B, D, torch.bfloat16, "cuda").requires_grad_()
    s = torch.tensor(100.0, device="cuda", requires_grad=True)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    CF.clip_loss(a, c, s, backend="triton").backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    bound = 2 * a.numel() * a.element_size() + workspace_bytes(B, B, D, 2) + 64 * 2**20
    assert extra < bound < 2**30, f"extra memory {extra / 2**20:.0f} MiB > {bound / 2**20:.0f} MiB"
